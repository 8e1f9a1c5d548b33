//! What is inside a disk image: partitions, filesystems, OS, architecture, boot mode,
//! kernels and the EC2 drivers, plus an explicit list of everything not examined.
//!
//! [`Image::open`] opens the image file through `diskimage` (raw, qcow2, VMDK, VHD,
//! VHDX), reads the partition table and probes every partition;
//! [`Image::report`] gathers the identity of the system on it. Only metadata and a few
//! small files are read, so inspecting a large image costs milliseconds.
//!
//! ```no_run
//! let image = inspect::Image::open("disk.img").unwrap();
//! let report = image.report();
//! println!("{:?} on {:?}", report.os, report.architecture);
//! ```

pub mod diff;
mod identity;
mod lvm_volumes;

use blockio::{BlockSource, Window};
use imagefs::raid::{RaidFormat, RaidMember};
use imagefs::{Filesystem, FsKind};
use partition::{Partition, PartitionTable, TableKind};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

pub use identity::{BootMode, Drivers, Kernel, OsRelease};

/// What stops an image from being inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be opened or read.
    #[error(transparent)]
    Source(#[from] blockio::Error),
    /// The image file could not be opened as a disk (a damaged or unsupported
    /// container, a refused backing file).
    #[error(transparent)]
    Open(#[from] diskimage::Error),
    /// The partition table is unusable.
    #[error("{path}: {source}")]
    Table {
        /// The image.
        path: String,
        /// What is wrong with the table.
        #[source]
        source: partition::Error,
    },
    /// A partition number that does not exist, or holds no readable filesystem.
    #[error("{0}")]
    NoFilesystem(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A disk image opened for inspection.
pub struct Image {
    source: Arc<dyn BlockSource>,
    /// The file the disk came from, when it was opened from one.
    container: Option<diskimage::SourceInfo>,
    table: PartitionTable,
    volumes: Vec<Volume>,
    /// RAID metadata that covers the whole disk (firmware RAID, or md on the disk).
    disk_raid: Option<RaidMember>,
}

/// One partition (or the whole image, when it has no table) and what is on it.
pub struct Volume {
    /// The partition, or a pseudo-partition numbered 0 for a bare filesystem.
    pub partition: Partition,
    /// The bytes of the partition, if it lies inside the image: for an md RAID1
    /// member, its data area.
    pub window: Option<Arc<dyn BlockSource>>,
    /// Where `window` starts in the image, in bytes.
    pub window_start: u64,
    /// What its first bytes say it holds.
    pub kind: Option<FsKind>,
    /// Why it could not be examined.
    pub problem: Option<String>,
    /// Every signature its first bytes carry, when there is more than one.
    pub signatures: Vec<FsKind>,
    /// Anything unusual about it: the reader's notes, RAID metadata, ambiguity.
    pub notes: Vec<String>,
    /// Signatures on it that were not read, each with the reason.
    pub unread_signatures: Vec<(FsKind, String)>,
    /// Parts of its filesystem that no path under `/` reaches: (what, why).
    pub unreachable: Vec<(String, String)>,
    /// The disk it is on, when that is not the image's own (an AMI's data volume:
    /// "/dev/sdb (snap-…)").
    pub disk: Option<String>,
}

/// The filesystem found on a partition.
#[derive(Debug, Clone, Serialize)]
pub struct FilesystemReport {
    /// "ext4", "vfat", "xfs", "lvm2", "luks", "swap", "unknown", ...
    pub kind: String,
    /// Whether amiforge read it.
    pub examined: bool,
    /// Every signature found, when there is more than one (blkid calls the volume
    /// ambiguous).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<String>,
    /// Anything unusual the reader or the probe saw.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A partition as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// The partition.
    #[serde(flatten)]
    pub partition: Partition,
    /// What it holds.
    pub filesystem: FilesystemReport,
    /// The disk it is on, when that is not the image's own (an AMI's data volume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

/// The partition table as reported.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// "gpt", "mbr" or "none".
    pub kind: TableKind,
    /// Logical sector size in bytes.
    pub sector_size: u32,
    /// Which GPT header was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpt_header: Option<&'static str>,
    /// GPT disk GUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<String>,
    /// Facts about sector 0.
    pub mbr: partition::MbrInfo,
    /// Anything unusual about the table.
    pub notes: Vec<String>,
}

/// What kind of thing was not examined. The audit turns each into a `coverage.*`
/// finding whose rule and default severity follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gap {
    /// A volume that holds files, or may (a container, an encrypted or RAID volume).
    Volume,
    /// A further filesystem signature on a volume read as another.
    AmbiguousSignature,
    /// A directory whose entries were not listed.
    Directory,
    /// One file.
    File,
    /// A compressed file not scanned whole (over its bound, or damaged).
    CompressedFile,
    /// A package database.
    PackageDatabase,
    /// Swap: no files, but what was in memory.
    Swap,
    /// Content with no known signature: it may be a filesystem amiforge does not know.
    UnknownContent,
    /// A volume that holds no files: zeros, an external journal, boot loader code.
    NoFiles,
    /// Unallocated space not scanned for deleted data.
    Unallocated,
    /// A RAID set that one disk cannot assemble.
    RaidSet,
    /// No filesystem with an OS on it.
    RootFilesystem,
    /// An auditor that failed.
    Auditor,
    /// Installed packages not matched against the vulnerability database (no
    /// advisory ecosystem for the distribution).
    Vulnerabilities,
}

impl Gap {
    /// The name of the coverage rule: `coverage.<rule>`.
    pub fn rule(self) -> &'static str {
        match self {
            Gap::Volume => "volume-not-read",
            Gap::AmbiguousSignature => "ambiguous-signature",
            Gap::Directory => "directory-not-read",
            Gap::File => "file-not-read",
            Gap::CompressedFile => "compressed-file-not-read",
            Gap::PackageDatabase => "package-database-not-read",
            Gap::Swap => "swap-not-read",
            Gap::UnknownContent => "unknown-content",
            Gap::NoFiles => "no-files",
            Gap::Unallocated => "unallocated-not-scanned",
            Gap::RaidSet => "raid-set-not-assembled",
            Gap::RootFilesystem => "no-root-filesystem",
            Gap::Auditor => "auditor-failed",
            Gap::Vulnerabilities => "vulnerabilities-not-matched",
        }
    }

    /// The kind of gap a volume of this content leaves when it is not read.
    pub fn of_volume(kind: Option<FsKind>) -> Self {
        match kind {
            Some(FsKind::Swap) => Gap::Swap,
            Some(FsKind::Unknown) => Gap::UnknownContent,
            Some(FsKind::Empty | FsKind::JournalDev) => Gap::NoFiles,
            _ => Gap::Volume,
        }
    }
}

/// Something that could not be examined, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NotExamined {
    /// What kind of gap it is.
    pub kind: Gap,
    /// The partition number (0 for a bare filesystem), if the gap is a partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// What was not examined ("partition 3 (xfs)", "/usr/bin/ls").
    pub what: String,
    /// Why.
    pub reason: String,
}

/// Everything `amiforge inspect` says about an image.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The image path.
    pub image: String,
    /// The size of the disk in bytes.
    pub size: u64,
    /// The file the disk was read from: its format, virtual size, allocated bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<diskimage::SourceInfo>,
    /// The partition table.
    pub partition_table: TableReport,
    /// The partitions.
    pub partitions: Vec<PartitionReport>,
    /// The partition holding the root filesystem.
    pub root_partition: Option<u32>,
    /// The OS, from os-release or its fallbacks.
    pub os: Option<OsRelease>,
    /// The CPU architecture of the userland ("x86_64", "arm64", ...).
    pub architecture: Option<String>,
    /// The binary the architecture was read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture_source: Option<String>,
    /// "uefi", "legacy-bios", "uefi-preferred" or "unknown".
    pub boot_mode: BootMode,
    /// Why that boot mode.
    pub boot_evidence: Vec<String>,
    /// Kernels found under /boot and /lib/modules.
    pub kernels: Vec<Kernel>,
    /// Whether the newest kernel has the ENA and NVMe drivers.
    pub drivers: Drivers,
    /// Everything that could not be examined, each with a reason.
    pub not_examined: Vec<NotExamined>,
}

impl Image {
    /// Opens an image file read-only, whatever its format (backing files are not
    /// followed), reads its partition table and probes every partition.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_opened(diskimage::open(path, &diskimage::OpenOptions::default())?)
    }

    /// Like [`Image::open`], over an image file already opened by `diskimage`.
    pub fn from_opened(opened: diskimage::Opened) -> Result<Self> {
        let mut image = Self::from_source(opened.source)?;
        image.container = Some(opened.info);
        Ok(image)
    }

    /// Like [`Image::open`], over any source.
    pub fn from_source(source: Arc<dyn BlockSource>) -> Result<Self> {
        let (table, parts) = partitions_of(&*source)?;
        let mut volumes: Vec<Volume> = parts
            .into_iter()
            .map(|p| Volume::probe(&source, p))
            .collect();
        lvm_volumes::add(&mut volumes);
        // A bare md member is probed as volume 0; a table inside a RAID set is not.
        let disk_raid = match table.kind {
            TableKind::None => None,
            _ => imagefs::raid::md_member(&*source)
                .ok()
                .flatten()
                .or(imagefs::raid::firmware_member(&*source).ok().flatten()),
        };
        Ok(Self {
            source,
            container: None,
            table,
            volumes,
            disk_raid,
        })
    }

    /// Adds another disk of the same machine (an AMI's data volume) named `disk`:
    /// its partitions, or its bare filesystem, become volumes numbered on from the
    /// last one, each naming the disk, and are read like the image's own.
    pub fn add_disk(&mut self, source: Arc<dyn BlockSource>, disk: &str) -> Result<()> {
        let (_, parts) = partitions_of(&*source)?;
        let mut number = self
            .volumes
            .iter()
            .map(|v| v.partition.number)
            .max()
            .unwrap_or(0);
        let mut added: Vec<Volume> = parts
            .into_iter()
            .map(|mut p| {
                number += 1;
                p.number = number;
                Volume::probe(&source, p)
            })
            .collect();
        lvm_volumes::add(&mut added);
        for v in &mut added {
            v.disk = Some(disk.to_string());
        }
        self.volumes.extend(added);
        Ok(())
    }

    /// The partition table.
    pub fn table(&self) -> &PartitionTable {
        &self.table
    }

    /// The partitions and what they hold.
    pub fn volumes(&self) -> &[Volume] {
        &self.volumes
    }

    /// The whole image.
    pub fn source(&self) -> &Arc<dyn BlockSource> {
        &self.source
    }

    /// The file the disk was read from, when it was opened from one.
    pub fn container(&self) -> Option<&diskimage::SourceInfo> {
        self.container.as_ref()
    }

    /// The number of the partition or LVM logical volume `name` names: a number, or
    /// an LV as "vg/lv".
    pub fn volume_number(&self, name: &str) -> Option<u32> {
        if let Ok(n) = name.parse() {
            return Some(n);
        }
        self.volumes
            .iter()
            .find(|v| {
                v.partition.kind == partition::PartitionType::LogicalVolume
                    && v.partition.name.as_deref() == Some(name)
            })
            .map(|v| v.partition.number)
    }

    /// Opens the filesystem on partition `number` (0 for a bare filesystem).
    pub fn filesystem(&self, number: u32) -> Result<Box<dyn Filesystem>> {
        let v = self
            .volumes
            .iter()
            .find(|v| v.partition.number == number)
            .ok_or_else(|| {
                Error::NoFilesystem(format!("{}: no partition {number}", self.source.name()))
            })?;
        v.open().map_err(|why| {
            Error::NoFilesystem(format!("{}: partition {number}: {why}", self.source.name()))
        })
    }

    /// The partition holding the root filesystem: the first readable filesystem with
    /// an os-release file, else the first with an /etc directory.
    pub fn root_partition(&self) -> Option<u32> {
        let readable: Vec<(u32, Box<dyn Filesystem>)> = self
            .volumes
            .iter()
            .filter_map(|v| Some((v.partition.number, v.open().ok()?)))
            .collect();
        let has = |fs: &dyn Filesystem, p: &[u8]| fs.stat(p).is_ok();
        readable
            .iter()
            .find(|(_, fs)| identity::OS_RELEASE_PATHS.iter().any(|p| has(&**fs, p)))
            .or_else(|| readable.iter().find(|(_, fs)| has(&**fs, b"/etc")))
            .map(|(n, _)| *n)
    }

    /// Gathers the full report.
    pub fn report(&self) -> Report {
        let mut not_examined = Vec::new();
        let partitions = self
            .volumes
            .iter()
            .map(|v| {
                // An extended partition holds the logical partitions, each listed on its own.
                let kind = match v.kind {
                    Some(k) => k.name(),
                    None if v.partition.extended => "extended",
                    None => "none",
                }
                .to_string();
                let examined = v.problem.is_none();
                let label = v.label();
                if let Some(reason) = &v.problem {
                    // Boot loader code in a BIOS boot partition holds no files.
                    let gap = match v.kind {
                        Some(FsKind::Unknown) if v.partition.is_bios_boot() => Gap::NoFiles,
                        kind => Gap::of_volume(kind),
                    };
                    not_examined.push(NotExamined {
                        kind: gap,
                        partition: Some(v.partition.number),
                        what: format!("{label} ({kind})"),
                        reason: reason.clone(),
                    });
                }
                for (what, reason) in &v.unreachable {
                    not_examined.push(NotExamined {
                        kind: Gap::Directory,
                        partition: Some(v.partition.number),
                        what: format!("{label}: {what}"),
                        reason: reason.clone(),
                    });
                }
                for (other, reason) in &v.unread_signatures {
                    not_examined.push(NotExamined {
                        kind: Gap::AmbiguousSignature,
                        partition: Some(v.partition.number),
                        what: format!("{label} ({} signature)", other.name()),
                        reason: reason.clone(),
                    });
                }
                PartitionReport {
                    partition: v.partition.clone(),
                    filesystem: FilesystemReport {
                        kind,
                        examined,
                        signatures: v.signatures.iter().map(|k| k.name().to_string()).collect(),
                        notes: v.notes.clone(),
                    },
                    disk: v.disk.clone(),
                }
            })
            .collect();
        let table = &self.table;
        let mut table_notes = table.notes.clone();
        if let Some(raid) = &self.disk_raid {
            let what = describe_raid(raid);
            table_notes.push(format!(
                "the disk is a {what}: the partitions are read as this disk holds them"
            ));
            not_examined.push(NotExamined {
                kind: Gap::RaidSet,
                partition: None,
                what: format!("RAID set ({})", raid.format.name()),
                reason: format!(
                    "this disk is a {what}: a set is not assembled from one disk, so the \
                     partitions are right for a mirror and wrong for a stripe"
                ),
            });
        }
        let root_partition = self.root_partition();
        let mut found = identity::Identity::default();
        if let Some(n) = root_partition {
            if let Ok(fs) = self.filesystem(n) {
                found = identity::identify(&*fs);
            }
        }
        // A separate /boot partition holds kernels at its top level.
        for v in &self.volumes {
            if Some(v.partition.number) == root_partition {
                continue;
            }
            if let Ok(fs) = v.open() {
                identity::add_boot_kernels(&*fs, &mut found.kernels);
            }
        }
        found
            .kernels
            .sort_by(|a, b| identity::compare_versions(&a.version, &b.version));
        let drivers = found
            .kernels
            .last()
            .map(|k| Drivers {
                ena: k.ena,
                nvme: k.nvme,
            })
            .unwrap_or_default();
        let (boot_mode, boot_evidence) = identity::boot_mode(self);
        if root_partition.is_none() {
            not_examined.push(NotExamined {
                kind: Gap::RootFilesystem,
                partition: None,
                what: "root filesystem".into(),
                reason: "no readable filesystem holds an OS (os-release or /etc)".into(),
            });
        }
        for (path, reason) in found.problems {
            not_examined.push(NotExamined {
                kind: Gap::File,
                partition: root_partition,
                what: path,
                reason,
            });
        }
        Report {
            image: self.source.name(),
            size: self.source.len(),
            source: self.container.clone(),
            partition_table: TableReport {
                kind: table.kind,
                sector_size: table.sector_size,
                gpt_header: table.gpt_header,
                disk_guid: table.disk_guid.clone(),
                mbr: table.mbr.clone(),
                notes: table_notes,
            },
            partitions,
            root_partition,
            os: found.os,
            architecture: found.architecture.as_ref().map(|(a, _)| a.clone()),
            architecture_source: found.architecture.map(|(_, p)| p),
            boot_mode,
            boot_evidence,
            kernels: found.kernels,
            drivers,
            not_examined,
        }
    }
}

/// The partition table of a disk and its partitions; a disk without a table is one
/// pseudo-partition numbered 0, the whole disk.
fn partitions_of(source: &dyn BlockSource) -> Result<(PartitionTable, Vec<Partition>)> {
    let table = partition::read_table(source).map_err(|e| Error::Table {
        path: source.name(),
        source: e,
    })?;
    let parts = if table.kind == TableKind::None {
        vec![Partition {
            number: 0,
            start: 0,
            size: source.len(),
            kind: partition::PartitionType::Mbr(0),
            name: None,
            guid: None,
            bootable: false,
            extended: false,
            logical: false,
        }]
    } else {
        table.partitions.clone()
    };
    Ok((table, parts))
}

impl Volume {
    /// How reports name it: "partition 2", or "logical volume vg0/root (partition 5)".
    pub fn label(&self) -> String {
        let base = match (&self.partition.kind, &self.partition.name) {
            (partition::PartitionType::LogicalVolume, Some(name)) => {
                format!(
                    "logical volume {name} (partition {})",
                    self.partition.number
                )
            }
            _ => format!("partition {}", self.partition.number),
        };
        match &self.disk {
            Some(disk) => format!("{base} on {disk}"),
            None => base,
        }
    }

    /// A volume that is not a window of the disk (an LVM logical volume): probed
    /// and opened like a partition.
    fn probe_source(source: Arc<dyn BlockSource>, partition: Partition) -> Self {
        let mut volume = Self::unread(partition, None);
        volume.window = Some(source.clone());
        volume.classify(source);
        volume
    }

    /// A volume that cannot be read, and why (`problem`), or not yet probed.
    fn unread(partition: Partition, problem: Option<String>) -> Self {
        Self {
            partition,
            window: None,
            window_start: 0,
            kind: None,
            problem,
            signatures: Vec::new(),
            notes: Vec::new(),
            unread_signatures: Vec::new(),
            unreachable: Vec::new(),
            disk: None,
        }
    }

    fn probe(disk: &Arc<dyn BlockSource>, partition: Partition) -> Self {
        let number = partition.number;
        let window_start = partition.start;
        let mut volume = Self {
            partition,
            window: None,
            window_start,
            kind: None,
            problem: None,
            signatures: Vec::new(),
            notes: Vec::new(),
            unread_signatures: Vec::new(),
            unreachable: Vec::new(),
            disk: None,
        };
        if volume.partition.extended {
            return volume;
        }
        let p = &volume.partition;
        let window = match Window::new(disk.clone(), p.start, p.size) {
            Ok(w) => Arc::new(w.with_label(format!("partition {number}"))) as Arc<dyn BlockSource>,
            Err(e) => {
                volume.problem = Some(format!("partition lies outside the image: {e}"));
                return volume;
            }
        };
        volume.window = Some(window.clone());
        match imagefs::raid::md_member(&*window) {
            Err(e) => volume.problem = Some(format!("could not read its RAID superblocks: {e}")),
            Ok(Some(member)) => volume.probe_md(window, &member),
            Ok(None) => volume.classify(window),
        }
        volume
    }

    /// An md member: RAID1 holds a whole copy of the data, read as any volume.
    fn probe_md(&mut self, member_window: Arc<dyn BlockSource>, member: &RaidMember) {
        let what = describe_raid(member);
        let Some(data) = member.data.clone() else {
            self.kind = Some(FsKind::Raid(member.format));
            self.problem = Some(format!(
                "{what}: only a RAID1 member holds a whole copy of the data; this set is not assembled from one volume"
            ));
            return;
        };
        let label = format!("partition {} (md data)", self.partition.number);
        match Window::new(member_window, data.start, data.end - data.start) {
            Ok(w) => {
                self.notes.push(format!(
                    "{what}: its data area (bytes {}..{} of the partition) is read as the filesystem",
                    data.start, data.end
                ));
                let inner = Arc::new(w.with_label(label)) as Arc<dyn BlockSource>;
                self.window = Some(inner.clone());
                self.window_start += data.start;
                self.classify(inner);
            }
            Err(e) => {
                self.kind = Some(FsKind::Raid(member.format));
                self.problem = Some(format!("{what}: its data area is unreadable: {e}"));
            }
        }
    }

    /// Names what the window holds and opens it. With more than one signature, every
    /// readable candidate is tried; the others are listed as unread.
    fn classify(&mut self, window: Arc<dyn BlockSource>) {
        let found = match imagefs::probe_all(&*window) {
            Ok(found) => found,
            Err(e) => {
                self.problem = Some(format!("could not read its first bytes: {e}"));
                return;
            }
        };
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|k| k.name()).collect();
            self.notes.push(format!(
                "{} signatures on one volume ({}): blkid calls this ambiguous; each readable one is tried",
                found.len(),
                names.join(", ")
            ));
            self.signatures = found.clone();
        }
        let mut failures: Vec<(FsKind, String)> = Vec::new();
        let mut chosen = None;
        for &kind in found.iter().filter(|k| k.readable()) {
            match imagefs::open(window.clone(), kind) {
                Ok(fs) => {
                    self.notes.extend(fs.notes());
                    self.unreachable = fs.unreachable();
                    chosen = Some(kind);
                    break;
                }
                Err(e) => failures.push((kind, e.to_string())),
            }
        }
        let kind = chosen.unwrap_or(found[0]);
        self.kind = Some(kind);
        if chosen.is_none() {
            self.problem = Some(match failures.iter().find(|(k, _)| *k == kind) {
                Some((_, why)) => why.clone(),
                None => unreadable_reason(&self.partition, kind),
            });
        }
        for &other in found.iter().filter(|&&k| k != kind) {
            let why = match failures.iter().find(|(k, _)| *k == other) {
                Some((_, why)) => why.clone(),
                None => unreadable_reason(&self.partition, other),
            };
            self.unread_signatures.push((other, why));
        }
    }

    /// Opens its filesystem, or says why not.
    pub fn open(&self) -> std::result::Result<Box<dyn Filesystem>, String> {
        if let Some(p) = &self.problem {
            return Err(p.clone());
        }
        match (&self.window, self.kind) {
            (Some(w), Some(kind)) => imagefs::open(w.clone(), kind).map_err(|e| e.to_string()),
            _ => Err("an extended partition: a container for logical partitions".into()),
        }
    }
}

fn unreadable_reason(p: &Partition, kind: FsKind) -> String {
    match kind {
        FsKind::Lvm2 => "LVM2 physical volume: its volume group was not read".into(),
        FsKind::Luks => {
            "LUKS encrypted container: its content cannot be read without the key".into()
        }
        FsKind::Swap => "Linux swap: no files; swap can hold secrets from memory".into(),
        FsKind::JournalDev => {
            "external ext3/ext4 journal (jbd): no files; the filesystem it serves is on another device"
                .into()
        }
        FsKind::Raid(format) => format!(
            "{} RAID member: a set is not assembled from one volume",
            raid_format_description(format)
        ),
        FsKind::Empty if p.is_bios_boot() => {
            "BIOS boot partition: empty (no boot loader installed)".into()
        }
        FsKind::Unknown if p.is_bios_boot() => {
            "BIOS boot partition: raw boot loader code, no filesystem".into()
        }
        FsKind::Empty => "holds only zeros where a filesystem would start".into(),
        FsKind::Unknown => "no known filesystem signature".into(),
        other => format!("{}: no reader for this filesystem yet", other.name()),
    }
}

/// The RAID metadata, as a reader would say it: "Linux md RAID1 member (metadata 1.2)",
/// "Intel Matrix Storage RAID member (metadata 1.0.00)".
fn describe_raid(member: &RaidMember) -> String {
    let mut what = format!("{} ", raid_format_description(member.format));
    match member.level {
        Some(-1) => what.push_str("linear "),
        Some(level) => what.push_str(&format!("RAID{level} ")),
        None => what.push_str("RAID "),
    }
    what.push_str("member");
    if let Some(v) = &member.version {
        what.push_str(&format!(" (metadata {v})"));
    }
    what
}

fn raid_format_description(format: RaidFormat) -> &'static str {
    match format {
        RaidFormat::LinuxMd => "Linux md",
        RaidFormat::Ddf => "SNIA DDF",
        RaidFormat::IntelIsw => "Intel Matrix Storage",
        RaidFormat::LsiMega => "LSI MegaRAID",
        RaidFormat::Nvidia => "NVIDIA",
        RaidFormat::Promise => "Promise FastTrak",
        RaidFormat::SiliconImage => "Silicon Image Medley",
        RaidFormat::Jmicron => "JMicron",
        RaidFormat::HighPoint45x => "HighPoint 45x",
        RaidFormat::HighPoint37x => "HighPoint 37x",
        RaidFormat::Adaptec => "Adaptec",
        RaidFormat::Via => "VIA",
    }
}
