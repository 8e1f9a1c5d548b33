//! Builds a disk image from a root filesystem tree, the way a build host needs it:
//! no root, no loop devices, nothing mounted, and the same bytes every time for
//! the same tree and seed.
//!
//! The disk is GPT, partitions aligned to 1 MiB, their type GUIDs those of the
//! Discoverable Partitions Specification:
//!
//! | # | name | size | type | holds |
//! |---|---|---|---|---|
//! | 1 | `bios` | 1 MiB | BIOS boot | GRUB's core image (legacy boot; the MBR holds GRUB's boot.img) |
//! | 2 | `esp` | 128 MiB | EFI system | FAT32 (written with `fatfs`): the EFI loader at the removable path |
//! | 3 | `root` | the rest | root (x86-64 or arm64) | ext4 made by `mkfs.ext4 -d` from the staged tree, in place; or XFS made by `mkfs.xfs -p` ([`xfs_root`]) |
//!
//! The BIOS boot partition is left out for `--boot uefi`.
//!
//! The root filesystem is made from a [`stage::Stage`]: the tree mirrored with
//! hard links, plus `/etc/fstab` (filesystems by UUID) and, when the tree has
//! GRUB's modules, `/boot/grub` ([`grub`]). The tree itself is never written.
//!
//! Every identifier (disk and partition GUIDs, the ext4 UUID and hash seed, the
//! FAT volume id, XFS inode generations) is derived from the seed; every timestamp
//! the tools would take from the clock is the seed's epoch, and file times are
//! clamped to it ([`ext4_times`], [`xfs_root`]), so two builds of one tree are
//! byte-identical.

pub mod archive;
pub mod ext4_times;
pub mod grub;
pub mod stage;
pub mod sysprep;
pub mod xfs_root;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Partitions start on 1 MiB boundaries (2048 sectors), as every partitioning tool
/// does by default.
const ALIGN: u64 = 1 << 20;
/// The sector of every disk this builds.
pub const SECTOR: u64 = 512;
/// GRUB's core image for a GPT disk lives in a partition of its own; 1 MiB holds it.
const BIOS_BOOT_SIZE: u64 = 1 << 20;
/// The ESP: FAT32 needs at least 65,525 clusters, so about 33 MiB with 512-byte
/// clusters; 128 MiB leaves room for a second loader and a kernel.
const ESP_SIZE: u64 = 128 << 20;
/// The GPT's two copies take 34 sectors at the start and 33 at the end; with the
/// alignment, the first partition starts at 1 MiB and the last ends 1 MiB early.
const GPT_RESERVE: u64 = ALIGN;

/// How the disk boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// UEFI only: no BIOS boot partition.
    Uefi,
    /// Legacy BIOS only (an ESP is still made: EC2 may boot it either way).
    Bios,
    /// Both: UEFI preferred.
    Hybrid,
}

/// The architecture the tree is for: it picks the root type GUID and the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86-64.
    X86_64,
    /// 64-bit Arm.
    Arm64,
}

/// Programs every Linux root has, one of which tells its architecture: the ELF
/// header's machine. Symlinks are not followed (one may point outside the tree).
const ARCH_WITNESSES: [&str; 8] = [
    "usr/bin/sh",
    "usr/bin/dash",
    "usr/bin/bash",
    "usr/bin/busybox",
    "usr/lib/systemd/systemd",
    "bin/sh",
    "bin/bash",
    "bin/busybox",
];
/// ELF e_machine values.
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

impl Arch {
    /// The architecture of the programs in `tree`, from the first of
    /// [`ARCH_WITNESSES`] that is a regular ELF file.
    pub fn of_tree(tree: &Path) -> Result<Arch, BuildError> {
        for rel in ARCH_WITNESSES {
            let path = tree.join(rel);
            let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            let mut header = [0u8; 20];
            if !regular
                || File::open(&path)
                    .and_then(|mut f| f.read_exact(&mut header))
                    .is_err()
                || &header[..4] != b"\x7fELF"
            {
                continue;
            }
            let machine = u16::from_le_bytes([header[18], header[19]]);
            return match machine {
                EM_X86_64 => Ok(Arch::X86_64),
                EM_AARCH64 => Ok(Arch::Arm64),
                other => Err(BuildError::Tree {
                    tree: tree.to_path_buf(),
                    reason: format!(
                        "{rel} is built for ELF machine {other}, neither x86_64 nor arm64"
                    ),
                }),
            };
        }
        Err(BuildError::Tree {
            tree: tree.to_path_buf(),
            reason: "no program (usr/bin/sh, bash, busybox, systemd) tells its architecture; give --arch".into(),
        })
    }

    /// Its name, as `inspect` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The removable-media loader path UEFI firmware boots with no boot entries.
    pub fn removable_loader(self) -> &'static str {
        match self {
            Arch::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            Arch::Arm64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// Loaders looked for in the tree, in order: shim, GRUB's monolithic image,
    /// systemd-boot.
    fn loaders(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[
                "usr/lib/shim/shimx64.efi.signed",
                "usr/lib/shim/shimx64.efi",
                "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
                "usr/lib/grub/x86_64-efi/monolithic/grubx64.efi",
                "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            ],
            Arch::Arm64 => &[
                "usr/lib/shim/shimaa64.efi.signed",
                "usr/lib/shim/shimaa64.efi",
                "usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",
                "usr/lib/grub/arm64-efi/monolithic/grubaa64.efi",
                "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
            ],
        }
    }
}

/// The root filesystem's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFs {
    /// ext4, by `mkfs.ext4 -d`.
    Ext4,
    /// XFS, by `mkfs.xfs -p` (xfsprogs 6.17 or later).
    Xfs,
}

impl RootFs {
    /// Its name in fstab.
    pub fn name(self) -> &'static str {
        match self {
            RootFs::Ext4 => "ext4",
            RootFs::Xfs => "xfs",
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// The disk's size in bytes.
    pub size: u64,
    /// How it boots; by default hybrid on x86_64, UEFI on arm64.
    pub boot: Option<Boot>,
    /// The tree's architecture; by default what its programs are built for.
    pub arch: Option<Arch>,
    /// The root filesystem.
    pub root_fs: RootFs,
    /// Every identifier is derived from this.
    pub seed: String,
    /// The time every new timestamp gets (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
    /// Run [`sysprep`] on the staged tree.
    pub sysprep: bool,
}

/// One partition written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPartition {
    /// Its number in the GPT (1-based).
    pub number: u32,
    /// Its GPT name.
    pub name: String,
    /// Its type GUID.
    pub type_guid: String,
    /// Its unique GUID.
    pub guid: String,
    /// Its first byte.
    pub start: u64,
    /// Its length in bytes.
    pub size: u64,
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The tree's architecture.
    pub arch: Arch,
    /// How the disk boots.
    pub boot: Boot,
    /// The disk's GUID.
    pub disk_guid: String,
    /// The partitions, in order.
    pub partitions: Vec<BuiltPartition>,
    /// The root filesystem's UUID (for fstab and the bootloader).
    pub root_uuid: String,
    /// What the ESP's removable path holds, if the disk boots UEFI: GRUB
    /// assembled from the tree's modules, or the tree's own loader copied.
    pub loader: Option<String>,
    /// What boots the disk from legacy BIOS, if it does.
    pub bios_loader: Option<String>,
    /// The kernel GRUB's configuration boots (its version), when GRUB is installed.
    pub kernel: Option<String>,
    /// The ESP's FAT volume id as fstab writes it (`XXXX-XXXX`).
    pub esp_uuid: String,
    /// What the image holds that the tree does not: path and what was done.
    pub added: Vec<(String, String)>,
    /// What the tree holds that the image does not (besides sysprep's removals):
    /// path and why.
    pub left_out: Vec<(String, String)>,
    /// Files staged as hard links to the tree, and copied.
    pub staged: (u64, u64),
    /// Inodes whose times were clamped to the epoch (and, on XFS, whose
    /// generation was derived).
    pub clamped_inodes: u64,
    /// What sysprep removed (empty when it did not run).
    pub sysprep: Vec<sysprep::Removal>,
    /// For a tar archive: how many entries were unpacked.
    pub unpacked_entries: Option<u64>,
}

/// What puts the EFI loader on the ESP.
enum EfiLoader {
    /// GRUB assembled from the tree's modules in this directory.
    Grub(PathBuf),
    /// A prebuilt loader from the tree: its path there, and its bytes.
    Prebuilt(String, Vec<u8>),
}

/// Why a disk could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The options cannot make a disk.
    #[error("{0}")]
    Options(String),
    /// The tree lacks what the disk needs.
    #[error("{tree}: {reason}")]
    Tree {
        /// The tree.
        tree: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The partition table could not be written.
    #[error("writing the GPT of {path}: {reason}")]
    Gpt {
        /// The image.
        path: PathBuf,
        /// gpt's error.
        reason: String,
    },
    /// The ESP could not be written.
    #[error("writing the ESP of {path}: {source}")]
    Esp {
        /// The image.
        path: PathBuf,
        /// fatfs's error.
        source: std::io::Error,
    },
    /// An external tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
}

/// A UUID derived from the seed and what it names: SHA-256 of both, with the
/// version (4, random-like) and variant bits set, as `uuidgen` would.
pub fn derived_uuid(seed: &str, what: &str) -> uuid::Uuid {
    let mut h = Sha256::new();
    h.update(b"amiforge build\0");
    h.update(seed.as_bytes());
    h.update([0]);
    h.update(what.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A 32-bit id derived like [`derived_uuid`] (a FAT volume id, a VMDK content id).
fn derived_u32(seed: &str, what: &str) -> u32 {
    let b = derived_uuid(seed, what).into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Builds the disk image `out` from `tree`. The disk is written beside `out` and
/// renamed to it when done: a failed build leaves no partial image, and whatever
/// was at `out` before stays until the new disk replaces it. `out` may not be the
/// tree, nor lie inside it.
pub fn build(tree: &Path, out: &Path, opts: &Options) -> Result<Built, BuildError> {
    let name = out
        .file_name()
        .ok_or_else(|| BuildError::Options(format!("{}: not a file name", out.display())))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let canonical = |p: &Path| {
        p.canonicalize().map_err(|source| BuildError::Io {
            what: "resolve",
            path: p.to_path_buf(),
            source,
        })
    };
    let (tree_at, out_at) = (canonical(tree)?, canonical(dir)?.join(name));
    if out_at == tree_at || (tree_at.is_dir() && out_at.starts_with(&tree_at)) {
        return Err(BuildError::Options(format!(
            "{}: the output may not be the tree or lie inside it ({})",
            out.display(),
            tree.display()
        )));
    }
    let partial = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let built = build_at(tree, &partial, dir, opts).and_then(|built| {
        std::fs::rename(&partial, out).map_err(|source| BuildError::Io {
            what: "rename the built disk to",
            path: out.to_path_buf(),
            source,
        })?;
        Ok(built)
    });
    if built.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    built
}

/// Builds the disk at `out`; `near` is its directory, where the stage (and an
/// archive's tree) are made.
fn build_at(tree: &Path, out: &Path, near: &Path, opts: &Options) -> Result<Built, BuildError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { what, path, source }
    };
    // Until the tree says its architecture, the default boot may be hybrid.
    let bios = opts.boot != Some(Boot::Uefi);
    let fixed = ESP_SIZE + if bios { BIOS_BOOT_SIZE } else { 0 };
    let min = fixed + 2 * GPT_RESERVE + (64 << 20);
    if opts.size < min || !opts.size.is_multiple_of(ALIGN) {
        return Err(BuildError::Options(format!(
            "the disk size must be a multiple of 1 MiB and at least {} MiB (got {} bytes)",
            min >> 20,
            opts.size
        )));
    }
    // A tar archive is unpacked first; its tree is removed with `unpacked`.
    let unpacked = if tree.is_file() {
        Some(archive::unpack(tree, near, opts.size)?)
    } else if tree.is_dir() {
        None
    } else {
        return Err(BuildError::Tree {
            tree: tree.to_path_buf(),
            reason: "neither a directory nor a tar archive".into(),
        });
    };
    let tree = unpacked.as_ref().map_or(tree, |u| u.path());
    let arch = match opts.arch {
        Some(arch) => arch,
        None => Arch::of_tree(tree)?,
    };
    let boot = opts.boot.unwrap_or(match arch {
        Arch::X86_64 => Boot::Hybrid,
        Arch::Arm64 => Boot::Uefi,
    });
    let bios = boot != Boot::Uefi;
    if bios && arch != Arch::X86_64 {
        return Err(BuildError::Options(format!(
            "{} has no legacy BIOS boot: build it with --boot uefi",
            arch.name()
        )));
    }
    let efi = match boot {
        Boot::Bios => None,
        _ => Some(match grub::modules_dir(tree, grub::efi_platform(arch)) {
            Some(dir) => EfiLoader::Grub(dir),
            None => {
                let (from, bytes) = find_loader(tree, arch)?;
                EfiLoader::Prebuilt(from, bytes)
            }
        }),
    };
    let bios_modules = match boot {
        Boot::Uefi => None,
        _ => Some(grub::modules_dir(tree, grub::BIOS_PLATFORM).ok_or_else(|| BuildError::Tree {
            tree: tree.to_path_buf(),
            reason: "no GRUB modules for legacy BIOS boot in usr/lib/grub/i386-pc (install grub-pc-bin in the tree), or build with --boot uefi".into(),
        })?),
    };
    let uses_grub = bios_modules.is_some() || matches!(efi, Some(EfiLoader::Grub(_)));
    let kernel = if uses_grub {
        Some(grub::newest_kernel(tree)?.ok_or_else(|| BuildError::Tree {
            tree: tree.to_path_buf(),
            reason: "no kernel in boot/ (vmlinuz-VERSION) for GRUB to boot".into(),
        })?)
    } else {
        None
    };

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io("create", out))?;
    file.set_len(opts.size).map_err(io("size", out))?;

    // The GPT, and the protective MBR gpt does not write.
    let gpt_err = |e: gpt::GptError| BuildError::Gpt {
        path: out.to_path_buf(),
        reason: e.to_string(),
    };
    let mut file = file;
    let disk_guid = derived_uuid(&opts.seed, "disk");
    let sectors = opts.size / SECTOR;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut file).map_err(|e| BuildError::Gpt {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(disk_guid))
        .map_err(gpt_err)?;
    let root_type = match arch {
        Arch::X86_64 => gpt::partition_types::LINUX_ROOT_X64,
        Arch::Arm64 => gpt::partition_types::LINUX_ROOT_ARM_64,
    };
    let root_size = opts.size - fixed - 2 * GPT_RESERVE;
    let mut layout: Vec<(&str, u64, gpt::partition_types::Type)> = Vec::new();
    if bios {
        layout.push(("bios", BIOS_BOOT_SIZE, gpt::partition_types::BIOS));
    }
    layout.push(("esp", ESP_SIZE, gpt::partition_types::EFI));
    layout.push(("root", root_size, root_type));
    let align = Some(ALIGN / SECTOR);
    for (name, size, kind) in &layout {
        disk.add_partition(name, *size, kind.clone(), 0, align)
            .map_err(gpt_err)?;
    }
    let mut parts = disk.take_partitions();
    for p in parts.values_mut() {
        p.part_guid = derived_uuid(&opts.seed, &format!("partition {}", p.name));
    }
    disk.update_partitions(parts).map_err(gpt_err)?;
    let partitions: Vec<BuiltPartition> = disk
        .partitions()
        .iter()
        .map(|(&number, p)| BuiltPartition {
            number,
            name: p.name.clone(),
            type_guid: p.part_type_guid.guid.to_string(),
            guid: p.part_guid.to_string(),
            start: p.first_lba * SECTOR,
            size: (p.last_lba + 1 - p.first_lba) * SECTOR,
        })
        .collect();
    let mut file = disk.write().map_err(gpt_err)?;
    file.flush().map_err(io("write", out))?;

    let part = |name: &str| partitions.iter().find(|p| p.name == name);
    let (Some(esp), Some(root)) = (part("esp"), part("root")) else {
        return Err(BuildError::Options("the layout lost a partition".into()));
    };
    let root_uuid = derived_uuid(&opts.seed, "root filesystem").to_string();
    let esp_volume_id = derived_u32(&opts.seed, "esp volume id");
    let esp_uuid = format!("{:04X}-{:04X}", esp_volume_id >> 16, esp_volume_id & 0xffff);

    // The root filesystem's content: the tree, and what the image adds to it.
    let mut staged = stage::Stage::mirror(tree, near)?;
    let sysprep = if opts.sysprep {
        sysprep::run(&mut staged)?
    } else {
        Vec::new()
    };
    let mut added = Vec::new();
    let mut left_out = Vec::new();
    if opts.root_fs == RootFs::Xfs {
        for node in staged.devices.clone() {
            staged.remove(&node)?;
            left_out.push((
                format!("/{node}"),
                "a device node: mkfs.xfs would open the build host's device to copy it \
                 (systemd mounts a devtmpfs on /dev)"
                    .to_string(),
            ));
        }
    }
    // ext4 is checked at boot; xfs_repair is never run from fstab.
    let root_line = match opts.root_fs {
        RootFs::Ext4 => "ext4 defaults,errors=remount-ro 0 1",
        RootFs::Xfs => "xfs defaults 0 0",
    };
    let fstab = format!(
        "# Written by amiforge build: the filesystems of this image, by UUID.\n\
         UUID={root_uuid} / {root_line}\n\
         UUID={esp_uuid} /boot/efi vfat umask=0077 0 1\n"
    );
    let replaced = staged.exists("etc/fstab")?;
    staged.put("etc/fstab", fstab.as_bytes(), 0o644)?;
    added.push((
        "/etc/fstab".to_string(),
        if replaced { "replaced" } else { "written" }.to_string(),
    ));
    staged.make_dir("boot/efi")?;
    let work = tempfile::tempdir().map_err(io("create a temporary directory for", out))?;
    if let Some(kernel) = &kernel {
        let cfg = grub::config(&root_uuid, kernel, &os_name(tree)?, arch);
        staged.put("boot/grub/grub.cfg", cfg.as_bytes(), 0o644)?;
        added.push((
            "/boot/grub/grub.cfg".to_string(),
            format!("boots {}", kernel.image),
        ));
    }
    let loader_bytes = match &efi {
        None => None,
        Some(EfiLoader::Prebuilt(_, bytes)) => Some(bytes.clone()),
        Some(EfiLoader::Grub(modules)) => {
            let platform = grub::efi_platform(arch);
            let n = staged.mirror_files(
                tree,
                &format!("usr/lib/grub/{platform}"),
                &format!("boot/grub/{platform}"),
            )?;
            added.push((format!("/boot/grub/{platform}/"), format!("{n} GRUB files")));
            Some(grub::mkimage(modules, platform, &root_uuid, work.path())?)
        }
    };
    write_esp(
        &mut file,
        out,
        esp,
        loader_bytes.as_deref(),
        esp_volume_id,
        arch,
    )?;
    let bios_loader = match (&bios_modules, part("bios")) {
        (Some(modules), Some(bios)) => {
            let n = staged.mirror_files(
                tree,
                &format!("usr/lib/grub/{}", grub::BIOS_PLATFORM),
                &format!("boot/grub/{}", grub::BIOS_PLATFORM),
            )?;
            added.push((
                format!("/boot/grub/{}/", grub::BIOS_PLATFORM),
                format!("{n} GRUB files"),
            ));
            let core = grub::mkimage(modules, grub::BIOS_PLATFORM, &root_uuid, work.path())?;
            let boot_img = modules.join("boot.img");
            let boot_img = std::fs::read(&boot_img).map_err(io("read", &boot_img))?;
            grub::install_bios(&file, out, bios, &boot_img, &core)?;
            Some(format!(
                "GRUB i386-pc: boot.img in the MBR, a {}-byte core image in partition {}",
                core.len(),
                bios.number
            ))
        }
        _ => None,
    };
    drop(file);
    staged.seal()?;
    let staged_counts = (staged.linked, staged.copied);
    // The disk, open again for what follows the root's mkfs and for the final sync.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .map_err(io("open", out))?;
    let clamped_inodes = match opts.root_fs {
        RootFs::Ext4 => {
            make_ext4_root(staged.root(), out, root, &root_uuid, opts)?;
            // The stage (thousands of links) is removed while the times are clamped.
            let removal = std::thread::spawn(move || drop(staged));
            let clamped = ext4_times::clamp_times(&file, out, root.start, opts.epoch)?;
            let _ = removal.join();
            clamped
        }
        RootFs::Xfs => xfs_root::make(staged.root(), (&file, out), near, root, &root_uuid, opts)?,
    };
    file.sync_all().map_err(io("write", out))?;
    Ok(Built {
        arch,
        boot,
        disk_guid: disk_guid.to_string(),
        root_uuid,
        loader: efi.map(|l| match l {
            EfiLoader::Grub(_) => format!(
                "GRUB {} assembled from the tree's modules -> {}",
                grub::efi_platform(arch),
                arch.removable_loader()
            ),
            EfiLoader::Prebuilt(from, _) => format!("{from} -> {}", arch.removable_loader()),
        }),
        bios_loader,
        kernel: kernel.map(|k| k.version),
        esp_uuid,
        added,
        left_out,
        staged: staged_counts,
        clamped_inodes,
        sysprep,
        unpacked_entries: unpacked.as_ref().map(|u| u.entries),
        partitions,
    })
}

/// The tree's operating system name (os-release's PRETTY_NAME), for the boot menu.
fn os_name(tree: &Path) -> Result<String, BuildError> {
    for path in ["etc/os-release", "usr/lib/os-release"] {
        if let Some(bytes) = read_in_tree(tree, path)? {
            let text = String::from_utf8_lossy(&bytes);
            if let Some(name) = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")) {
                return Ok(name.trim_matches('"').to_string());
            }
        }
    }
    Ok("Linux".to_string())
}

/// The first loader of [`Arch::loaders`] present in the tree: its path in the
/// tree, and its bytes.
fn find_loader(tree: &Path, arch: Arch) -> Result<(String, Vec<u8>), BuildError> {
    for candidate in arch.loaders() {
        if let Some(bytes) = read_in_tree(tree, candidate)? {
            return Ok(((*candidate).to_string(), bytes));
        }
    }
    Err(BuildError::Tree {
        tree: tree.to_path_buf(),
        reason: format!(
            "no EFI loader for UEFI boot (looked for {}); install shim, grub-efi or systemd-boot in the tree, or build with --boot bios",
            arch.loaders().join(", ")
        ),
    })
}

/// Reads `rel` inside `tree`, following symlinks only while they stay inside it
/// (an absolute link target is taken relative to the tree). `None` when absent.
fn read_in_tree(tree: &Path, rel: &str) -> Result<Option<Vec<u8>>, BuildError> {
    const MAX_HOPS: usize = 40;
    let mut path = tree.join(rel);
    for _ in 0..MAX_HOPS {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(BuildError::Io {
                    what: "stat",
                    path,
                    source,
                })
            }
        };
        if !meta.file_type().is_symlink() {
            return std::fs::read(&path)
                .map(Some)
                .map_err(|source| BuildError::Io {
                    what: "read",
                    path,
                    source,
                });
        }
        let target = std::fs::read_link(&path).map_err(|source| BuildError::Io {
            what: "read link",
            path: path.clone(),
            source,
        })?;
        path = match target.strip_prefix("/") {
            Ok(inside) => tree.join(inside),
            Err(_) => path.parent().unwrap_or(tree).join(target),
        };
        // `..` may not climb out of the tree.
        let normal = path.components().fold(PathBuf::new(), |mut acc, c| {
            match c {
                std::path::Component::ParentDir => {
                    acc.pop();
                }
                other => acc.push(other),
            }
            acc
        });
        if !normal.starts_with(tree) {
            return Ok(None);
        }
        path = normal;
    }
    Ok(None)
}

/// A byte range of a file, as a volume for fatfs.
struct Slice<'f> {
    file: &'f mut File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Slice<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        if left == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "past the end of the partition",
            ));
        }
        let n = (buf.len() as u64).min(left) as usize;
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Slice<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        match pos {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// Formats the ESP as FAT32 and puts the loader at the removable path.
fn write_esp(
    file: &mut File,
    out: &Path,
    esp: &BuiltPartition,
    loader: Option<&[u8]>,
    volume_id: u32,
    arch: Arch,
) -> Result<(), BuildError> {
    let err = |source| BuildError::Esp {
        path: out.to_path_buf(),
        source,
    };
    let mut slice = Slice {
        file,
        start: esp.start,
        len: esp.size,
        pos: 0,
    };
    fatfs::format_volume(
        &mut slice,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(*b"ESP        "),
    )
    .map_err(err)?;
    slice.seek(SeekFrom::Start(0)).map_err(err)?;
    let fs = fatfs::FileSystem::new(&mut slice, fatfs::FsOptions::new()).map_err(err)?;
    if let Some(bytes) = loader {
        let root = fs.root_dir();
        let mut dir = root.create_dir("EFI").map_err(err)?;
        dir = dir.create_dir("BOOT").map_err(err)?;
        let name = arch
            .removable_loader()
            .rsplit('/')
            .next()
            .unwrap_or("BOOTX64.EFI");
        let mut f = dir.create_file(name).map_err(err)?;
        f.truncate().map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.flush().map_err(err)?;
    }
    fs.unmount().map_err(err)?;
    Ok(())
}

/// Makes the root ext4 in place at the root partition's offset with `mkfs.ext4 -d`
/// (no mount, no loop device), its UUID and hash seed derived from the seed and its
/// clock set to the epoch.
fn make_ext4_root(
    tree: &Path,
    out: &Path,
    root: &BuiltPartition,
    uuid: &str,
    opts: &Options,
) -> Result<(), BuildError> {
    let hash_seed = derived_uuid(&opts.seed, "root filesystem hash seed");
    let mut cmd = Command::new("mkfs.ext4");
    cmd.env("E2FSPROGS_FAKE_TIME", opts.epoch.to_string())
        .args(["-q", "-F", "-L", "root", "-U"])
        .arg(uuid)
        .arg("-E")
        .arg(format!(
            "offset={},hash_seed={hash_seed},nodiscard,root_owner=0:0",
            root.start
        ))
        .arg("-d")
        .arg(tree)
        .arg(out)
        .arg(format!("{}k", root.size / 1024));
    run_tool("mkfs.ext4", &mut cmd)
}

/// Runs an external tool; its failure is an error with what it said.
pub(crate) fn run_tool(tool: &'static str, cmd: &mut Command) -> Result<(), BuildError> {
    let output = cmd.output().map_err(|source| BuildError::Io {
        what: "run",
        path: PathBuf::from(tool),
        source,
    })?;
    if !output.status.success() {
        return Err(BuildError::Tool {
            tool,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A container format a built disk can be converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// qcow2 (version 3).
    Qcow2,
    /// VMDK, streamOptimized: what VM Import and OVA files take.
    VmdkStreamOptimized,
}

/// Converts the raw disk `raw` into `out` with `qemu-img convert`. qemu-img picks
/// a VMDK's content id (`CID=` in its descriptor) at random; it is replaced by one
/// derived from `seed`, so that the container is as reproducible as the disk.
pub fn convert(raw: &Path, out: &Path, to: Container, seed: &str) -> Result<(), BuildError> {
    let (format, options) = match to {
        Container::Qcow2 => ("qcow2", "compat=1.1"),
        Container::VmdkStreamOptimized => ("vmdk", "subformat=streamOptimized"),
    };
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-f", "raw", "-O", format, "-o", options])
        .arg(raw)
        .arg(out);
    run_tool("qemu-img", &mut cmd)?;
    if to == Container::VmdkStreamOptimized {
        set_vmdk_cid(out, derived_u32(seed, "vmdk content id"))?;
    }
    Ok(())
}

/// A VMDK's embedded descriptor: where its sector offset and size live in the
/// sparse extent header, and the most this reads (qemu-img gives it 20 sectors).
const VMDK_DESCRIPTOR_OFFSET: usize = 28;
const VMDK_DESCRIPTOR_SIZE: usize = 36;
const VMDK_DESCRIPTOR_MAX: u64 = 1 << 20;

/// Rewrites the `CID=` line of a VMDK's embedded descriptor, in place: the
/// descriptor is text padded with zeros to its sectors. qemu-img writes the CID
/// in hex without leading zeros, so the line's length varies by a digit or more.
fn set_vmdk_cid(path: &Path, cid: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::FileExt;
    let io = |what| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { what, path, source }
    };
    let bad = |reason: &str| BuildError::Tool {
        tool: "qemu-img",
        status: "wrote".into(),
        stderr: format!("{}: {reason}", path.display()),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("open"))?;
    let mut header = [0u8; 512];
    file.read_exact_at(&mut header, 0).map_err(io("read"))?;
    let sectors = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (offset, size) = (
        sectors(VMDK_DESCRIPTOR_OFFSET) * SECTOR,
        sectors(VMDK_DESCRIPTOR_SIZE) * SECTOR,
    );
    if &header[..4] != b"KDMV" || offset == 0 || size == 0 || size > VMDK_DESCRIPTOR_MAX {
        return Err(bad("no embedded VMDK descriptor"));
    }
    let mut area = vec![0u8; size as usize];
    file.read_exact_at(&mut area, offset).map_err(io("read"))?;
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    let text =
        std::str::from_utf8(&area[..end]).map_err(|_| bad("a descriptor that is not text"))?;
    let mut found = false;
    let mut rewritten = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive('\n') {
        if line.starts_with("CID=") && !found {
            found = true;
            rewritten.push_str(&format!("CID={cid:08x}\n"));
        } else {
            rewritten.push_str(line);
        }
    }
    if !found {
        return Err(bad("no CID line in the VMDK descriptor"));
    }
    if rewritten.len() >= area.len() {
        return Err(bad("no room in the VMDK descriptor for its CID"));
    }
    area.fill(0);
    area[..rewritten.len()].copy_from_slice(rewritten.as_bytes());
    file.write_all_at(&area, offset).map_err(io("write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VMDK's first sectors as qemu-img writes them: the header, then the
    /// descriptor at sector 1, its CID in hex without leading zeros.
    fn vmdk_with_cid(cid: &str) -> tempfile::NamedTempFile {
        let mut bytes = vec![0u8; 21 * SECTOR as usize];
        bytes[..4].copy_from_slice(b"KDMV");
        bytes[VMDK_DESCRIPTOR_OFFSET..VMDK_DESCRIPTOR_OFFSET + 8]
            .copy_from_slice(&1u64.to_le_bytes());
        bytes[VMDK_DESCRIPTOR_SIZE..VMDK_DESCRIPTOR_SIZE + 8].copy_from_slice(&20u64.to_le_bytes());
        let text = format!(
            "# Disk DescriptorFile\nversion=1\nCID={cid}\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n"
        );
        bytes[512..512 + text.len()].copy_from_slice(text.as_bytes());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    fn descriptor(path: &Path) -> String {
        let bytes = std::fs::read(path).unwrap();
        let area = &bytes[512..];
        String::from_utf8(area[..area.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
    }

    #[test]
    fn the_vmdk_cid_is_replaced_whatever_its_length() {
        for qemu_cid in ["7b3c2a19", "b3c2a19", "0"] {
            let vmdk = vmdk_with_cid(qemu_cid);
            set_vmdk_cid(vmdk.path(), 0x0012_abcd).unwrap();
            assert_eq!(
                descriptor(vmdk.path()),
                "# Disk DescriptorFile\nversion=1\nCID=0012abcd\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n"
            );
        }
    }

    /// An ELF header for `machine`, padded as a tiny program.
    fn elf(machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn the_trees_architecture_is_told_by_its_programs_not_by_symlinks() {
        let tree = tempfile::tempdir().unwrap();
        let bin = tree.path().join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        assert!(Arch::of_tree(tree.path())
            .unwrap_err()
            .to_string()
            .contains("give --arch"));
        // A symlink is not followed (it could point at the build host's /bin/sh).
        std::os::unix::fs::symlink("/bin/sh", bin.join("sh")).unwrap();
        assert!(Arch::of_tree(tree.path()).is_err());
        std::fs::write(bin.join("dash"), elf(EM_AARCH64)).unwrap();
        assert_eq!(Arch::of_tree(tree.path()).unwrap(), Arch::Arm64);
        std::fs::write(bin.join("dash"), elf(EM_X86_64)).unwrap();
        assert_eq!(Arch::of_tree(tree.path()).unwrap(), Arch::X86_64);
        std::fs::write(bin.join("dash"), elf(8)).unwrap();
        assert!(Arch::of_tree(tree.path())
            .unwrap_err()
            .to_string()
            .contains("ELF machine 8"));
    }

    #[test]
    fn a_vmdk_without_a_descriptor_is_an_error() {
        let vmdk = vmdk_with_cid("1");
        std::fs::write(vmdk.path(), [0u8; 1024]).unwrap();
        let e = set_vmdk_cid(vmdk.path(), 1).unwrap_err();
        assert!(e.to_string().contains("no embedded VMDK descriptor"), "{e}");
    }
}
