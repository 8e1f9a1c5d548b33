//! FAT12/16/32, read by a reader of our own that accepts what the Linux kernel's
//! vfat driver accepts.
//!
//! The `fatfs` crate refuses volumes that Linux mounts: a FAT32 volume of fewer than
//! 65525 clusters (mkfs.fat makes them for small sizes), a 16-bit total-sectors field
//! on FAT32, a non-zero version field. The kernel decides FAT32 by the 16-bit FAT
//! size being zero, takes the 16-bit total when it is set, and clamps a cluster count
//! that the FAT cannot hold; [`Layout::parse`] does the same and records in
//! [`Layout::notes`] whatever was unusual. Every read goes through the source's
//! `read_exact_at`, so data past the end of the image is an error, never a short file.

use crate::{show, DirEntry, Error, FileKind, Filesystem, FsKind, Metadata, Result};
use blockio::BlockSource;
use std::cell::RefCell;
use std::io::{self, Read};
use std::sync::Arc;

/// A FAT directory holds at most 65536 32-byte slots (the FAT specification's limit);
/// a longer chain is a loop.
const MAX_DIR_SLOTS: u64 = 65_536;
/// Size of one directory slot.
const SLOT: usize = 32;
/// The largest cluster number of each FAT width, as the kernel bounds them
/// (MAX_FAT12, MAX_FAT16, MAX_FAT32 in fs/fat/fat.h).
const MAX_FAT12: u64 = 0xff4;
const MAX_FAT16: u64 = 0xfff4;
const MAX_FAT32: u64 = 0x0fff_fff6;
/// Microsoft's rule for the FAT width, by cluster count: fewer than this is FAT12...
const MS_FAT12_CLUSTERS: u64 = 4085;
/// ...and fewer than this is FAT16, else FAT32.
const MS_FAT16_CLUSTERS: u64 = 65525;
/// How much of a FAT is cached at once.
const FAT_CACHE: u64 = 64 * 1024;
/// Directory attribute bits.
const ATTR_READ_ONLY: u8 = 0x01;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_LFN: u8 = 0x0f;
/// Case flags of a short name (Windows NT's lowercase bits in byte 12).
const LOWER_BASE: u8 = 0x08;
const LOWER_EXT: u8 = 0x10;

/// Where a FAT volume keeps its root directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Root {
    /// FAT12/16: a fixed region, byte offset and length.
    Fixed { offset: u64, len: u64 },
    /// FAT32: a cluster chain.
    Cluster(u32),
}

/// The geometry of a FAT volume, from its boot sector.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Bytes per cluster.
    pub cluster_bytes: u64,
    /// Byte offset of the first FAT.
    pub fat_offset: u64,
    /// Bytes of one FAT.
    pub fat_bytes: u64,
    /// 12, 16 or 32.
    pub bits: u8,
    /// The root directory.
    pub root: Root,
    /// Byte offset of cluster 2.
    pub data_offset: u64,
    /// Data clusters: valid cluster numbers are `2..clusters + 2`.
    pub clusters: u64,
    /// What was unusual but accepted, as the kernel accepts it.
    pub notes: Vec<String>,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

impl Layout {
    /// Reads the BIOS parameter block with the kernel's rules (fat_read_bpb and
    /// fat_fill_super). `volume_len` is the size of the partition, for notes only:
    /// data past it is found when it is read.
    pub(crate) fn parse(b: &[u8], volume_len: u64) -> std::result::Result<Self, String> {
        if b.len() < 512 {
            return Err("boot sector shorter than 512 bytes".into());
        }
        let bytes_per_sector = le16(b, 11);
        let sectors_per_cluster = u64::from(b[13]);
        let reserved = le16(b, 14);
        let fats = u64::from(b[16]);
        let root_entries = le16(b, 17);
        let total16 = le16(b, 19);
        let media = b[21];
        let fat16_len = le16(b, 22);
        let total32 = le32(b, 32);
        let fat32_len = le32(b, 36);
        if !bytes_per_sector.is_power_of_two() || !(512..=4096).contains(&bytes_per_sector) {
            return Err(format!(
                "bytes per sector {bytes_per_sector} is not a power of two in 512..=4096"
            ));
        }
        if !sectors_per_cluster.is_power_of_two() {
            return Err(format!(
                "sectors per cluster {sectors_per_cluster} is not a power of two"
            ));
        }
        if reserved == 0 {
            return Err("no reserved sectors".into());
        }
        if fats == 0 {
            return Err("no FAT".into());
        }
        if media != 0xf0 && media < 0xf8 {
            return Err(format!("media descriptor {media:#04x} is invalid"));
        }
        let is_fat32 = fat16_len == 0;
        let fat_sectors = if is_fat32 { fat32_len } else { fat16_len };
        if fat_sectors == 0 {
            return Err("the FAT has no sectors".into());
        }
        let mut notes = Vec::new();
        let total = if total16 != 0 { total16 } else { total32 };
        if is_fat32 && total16 != 0 {
            notes.push(format!(
                "FAT32 with its total sectors ({total16}) in the 16-bit field"
            ));
        }
        if is_fat32 && root_entries != 0 {
            notes.push(format!(
                "FAT32 with {root_entries} root entries in the BPB (read as the kernel does)"
            ));
        }
        let root_sectors = (root_entries * SLOT as u64).div_ceil(bytes_per_sector);
        let root_offset = (reserved + fats * fat_sectors) * bytes_per_sector;
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        if total <= data_sector {
            return Err(format!(
                "total sectors {total} leave no data area after sector {data_sector}"
            ));
        }
        let mut clusters = (total - data_sector) / sectors_per_cluster;
        let bits: u8 = if is_fat32 {
            32
        } else if clusters > MAX_FAT12 {
            16
        } else {
            12
        };
        let max = match bits {
            12 => MAX_FAT12,
            16 => MAX_FAT16,
            _ => MAX_FAT32,
        };
        if clusters > max {
            return Err(format!(
                "{clusters} clusters are too many for FAT{bits} (at most {max})"
            ));
        }
        let ms_bits = if clusters < MS_FAT12_CLUSTERS {
            12
        } else if clusters < MS_FAT16_CLUSTERS {
            16
        } else {
            32
        };
        if ms_bits != bits {
            notes.push(format!(
                "FAT{bits} with {clusters} clusters (Microsoft's rule would say FAT{ms_bits}; Linux reads it as FAT{bits})"
            ));
        }
        let fat_bytes = fat_sectors * bytes_per_sector;
        let fat_entries = fat_bytes * 8 / u64::from(bits);
        if clusters + 2 > fat_entries {
            let held = fat_entries.saturating_sub(2);
            notes.push(format!(
                "the FAT holds entries for {held} of {clusters} clusters; the rest are not used"
            ));
            clusters = held;
        }
        let volume_bytes = total * bytes_per_sector;
        if volume_bytes > volume_len {
            notes.push(format!(
                "the volume claims {volume_bytes} bytes but {volume_len} are present: it is truncated"
            ));
        }
        let root = if is_fat32 {
            let cluster = le32(b, 44);
            if cluster < 2 || cluster >= clusters + 2 {
                return Err(format!(
                    "the root directory starts at cluster {cluster}, outside 2..{}",
                    clusters + 2
                ));
            }
            Root::Cluster(cluster as u32)
        } else {
            Root::Fixed {
                offset: root_offset,
                len: root_entries * SLOT as u64,
            }
        };
        Ok(Self {
            cluster_bytes: sectors_per_cluster * bytes_per_sector,
            fat_offset: reserved * bytes_per_sector,
            fat_bytes,
            bits,
            root,
            data_offset: data_sector * bytes_per_sector,
            clusters,
            notes,
        })
    }

    /// Byte offset of a data cluster.
    pub(crate) fn cluster_offset(&self, cluster: u64) -> u64 {
        self.data_offset + (cluster - 2) * self.cluster_bytes
    }

    /// The first value that marks the end of a chain.
    fn end_of_chain(&self) -> u64 {
        match self.bits {
            12 => 0xff8,
            16 => 0xfff8,
            _ => 0x0fff_fff8,
        }
    }

    /// Decodes entry `cluster` from a FAT held in `table`, or None past its end.
    pub(crate) fn entry_in(&self, table: &[u8], cluster: u64) -> Option<u64> {
        match self.bits {
            12 => {
                let at = (cluster * 3 / 2) as usize;
                let v = le16(table.get(at..at + 2)?, 0);
                Some(if cluster.is_multiple_of(2) {
                    v & 0xfff
                } else {
                    v >> 4
                })
            }
            16 => Some(le16(table.get((cluster * 2) as usize..)?.get(..2)?, 0)),
            _ => Some(le32(table.get((cluster * 4) as usize..)?.get(..4)?, 0) & 0x0fff_ffff),
        }
    }
}

/// Reads the boot sector of `source` and parses it.
pub(crate) fn layout(source: &dyn BlockSource) -> Result<Layout> {
    let mut boot = [0u8; 512];
    source
        .read_exact_at(&mut boot, 0)
        .map_err(|e| Error::Read {
            path: "(boot sector)".into(),
            source: Box::new(e),
        })?;
    Layout::parse(&boot, source.len()).map_err(|reason| Error::Corrupt {
        kind: "vfat",
        path: None,
        reason: format!("boot sector: {reason}"),
    })
}

/// Contiguous runs of a file's clusters: (byte offset in the volume, length).
type Runs = Vec<(u64, u64)>;

/// How much of a chain to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A file's clusters: exactly this many, whatever follows.
    Exactly(u64),
    /// A directory's: to the end of the chain, which must come within `max`.
    ToEnd { max: u64 },
}

/// A FAT filesystem.
pub(crate) struct FatFs {
    source: Arc<dyn BlockSource>,
    layout: Layout,
    /// A window of the first FAT: (its byte offset in the FAT, its bytes).
    cache: RefCell<(u64, Vec<u8>)>,
}

/// One directory entry as stored.
#[derive(Debug, Clone)]
struct Slot {
    name: Vec<u8>,
    short: Vec<u8>,
    attr: u8,
    cluster: u64,
    size: u64,
    time: u64,
    date: u64,
}

impl Slot {
    fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }

    fn metadata(&self) -> Metadata {
        let (kind, mode) = if self.is_dir() {
            (FileKind::Dir, 0o755)
        } else {
            (FileKind::File, 0o644)
        };
        Metadata {
            kind,
            mode: if self.attr & ATTR_READ_ONLY != 0 {
                mode & 0o555
            } else {
                mode
            },
            uid: 0,
            gid: 0,
            size: if self.is_dir() { 0 } else { self.size },
            mtime: dos_time(self.date, self.time),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A DOS date and time (UTC, as the kernel reads them with tz=UTC) in Unix seconds.
fn dos_time(date: u64, time: u64) -> i64 {
    let year = 1980 + (date >> 9) as i64;
    let month = ((date >> 5) & 0xf).clamp(1, 12) as i64;
    let day = (date & 0x1f).max(1) as i64;
    let days = days_from_civil(year, month, day);
    days * 86_400 + ((time >> 11) * 3600 + ((time >> 5) & 0x3f) * 60 + (time & 0x1f) * 2) as i64
}

/// The checksum of a short name that its long-name entries carry.
fn short_name_checksum(name: &[u8]) -> u8 {
    name.iter()
        .fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// The display form of an 8.3 name: base and extension trimmed, lowercased where the
/// entry's case flags say so.
fn short_name(raw: &[u8], case: u8) -> Vec<u8> {
    let mut base: Vec<u8> = raw[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xe5; // 0x05 stands for a name starting with 0xE5
    }
    let trim = |v: &mut Vec<u8>| {
        while v.last() == Some(&b' ') {
            v.pop();
        }
    };
    trim(&mut base);
    let mut ext = raw[8..11].to_vec();
    trim(&mut ext);
    if case & LOWER_BASE != 0 {
        base.make_ascii_lowercase();
    }
    if case & LOWER_EXT != 0 {
        ext.make_ascii_lowercase();
    }
    if !ext.is_empty() {
        base.push(b'.');
        base.extend_from_slice(&ext);
    }
    base
}

/// The 13 UTF-16 units of a long-name slot.
fn lfn_units(slot: &[u8]) -> impl Iterator<Item = u16> + '_ {
    (1..11)
        .step_by(2)
        .chain((14..26).step_by(2))
        .chain((28..32).step_by(2))
        .map(move |i| u16::from_le_bytes([slot[i], slot[i + 1]]))
}

/// Long-name slots collected so far, waiting for their short entry.
struct LongName {
    checksum: u8,
    /// The sequence number the next slot must carry.
    next: u8,
    /// Parts by sequence number, 13 units each.
    units: Vec<u16>,
}

/// Parses the slots of one directory.
fn parse_dir(data: &[u8], fat32: bool) -> Vec<Slot> {
    let mut out = Vec::new();
    let mut long: Option<LongName> = None;
    for slot in data.chunks_exact(SLOT) {
        match slot[0] {
            0 => break,
            0xe5 => {
                long = None;
                continue;
            }
            _ => {}
        }
        let attr = slot[11];
        if attr & 0x3f == ATTR_LFN {
            let seq = slot[0] & 0x1f;
            if slot[0] & 0x40 != 0 && seq > 0 {
                let mut units = vec![0xffffu16; usize::from(seq) * 13];
                units[usize::from(seq - 1) * 13..][..13]
                    .iter_mut()
                    .zip(lfn_units(slot))
                    .for_each(|(d, s)| *d = s);
                long = Some(LongName {
                    checksum: slot[13],
                    next: seq - 1,
                    units,
                });
            } else if let Some(l) = long.as_mut().filter(|l| l.next == seq && seq > 0) {
                if l.checksum == slot[13] {
                    l.units[usize::from(seq - 1) * 13..][..13]
                        .iter_mut()
                        .zip(lfn_units(slot))
                        .for_each(|(d, s)| *d = s);
                    l.next = seq - 1;
                } else {
                    long = None;
                }
            } else {
                long = None;
            }
            continue;
        }
        let pending = long.take();
        if attr & ATTR_VOLUME != 0 {
            continue;
        }
        let raw = &slot[..11];
        if raw == b".          " || raw == b"..         " {
            continue;
        }
        let short = short_name(raw, slot[12]);
        let name = match pending {
            Some(l) if l.next == 0 && l.checksum == short_name_checksum(raw) => {
                let units: Vec<u16> = l.units.into_iter().take_while(|&u| u != 0).collect();
                String::from_utf16_lossy(&units).into_bytes()
            }
            _ => short.clone(),
        };
        let hi = if fat32 { le16(slot, 20) } else { 0 };
        out.push(Slot {
            name,
            short,
            attr,
            cluster: (hi << 16) | le16(slot, 26),
            size: le32(slot, 28),
            time: le16(slot, 22),
            date: le16(slot, 24),
        });
    }
    out
}

fn corrupt(path: &[u8], reason: String) -> Error {
    Error::Corrupt {
        kind: "vfat",
        path: Some(show(path)),
        reason,
    }
}

impl FatFs {
    pub(crate) fn open(source: Arc<dyn BlockSource>) -> Result<Self> {
        let layout = layout(&*source)?;
        Ok(Self {
            source,
            layout,
            cache: RefCell::new((0, Vec::new())),
        })
    }

    fn read(&self, path: &[u8], buf: &mut [u8], offset: u64) -> Result<()> {
        crate::read_at(&*self.source, path, buf, offset)
    }

    /// The FAT entry of `cluster`, from the first FAT.
    fn entry(&self, path: &[u8], cluster: u64) -> Result<u64> {
        let l = &self.layout;
        let (at, width) = match l.bits {
            12 => (cluster * 3 / 2, 2),
            16 => (cluster * 2, 2),
            _ => (cluster * 4, 4),
        };
        if at + width > l.fat_bytes {
            return Err(corrupt(path, format!("cluster {cluster} has no FAT entry")));
        }
        let mut cache = self.cache.borrow_mut();
        let (start, bytes) = &mut *cache;
        if at < *start || at + width > *start + bytes.len() as u64 {
            // The window reaches a few bytes past FAT_CACHE, so an entry that
            // straddles a window boundary is whole in one of them.
            let from = at - at % FAT_CACHE;
            let len = (FAT_CACHE + 4).min(l.fat_bytes - from);
            bytes.resize(len as usize, 0);
            self.read(path, bytes, l.fat_offset + from)?;
            *start = from;
        }
        let b = &bytes[(at - *start) as usize..];
        Ok(match l.bits {
            12 if cluster.is_multiple_of(2) => le16(b, 0) & 0xfff,
            12 => le16(b, 0) >> 4,
            16 => le16(b, 0),
            _ => le32(b, 0) & 0x0fff_ffff,
        })
    }

    /// Follows a cluster chain from `first`, as runs of contiguous clusters.
    fn chain(&self, path: &[u8], first: u64, want: Want) -> Result<Runs> {
        let l = &self.layout;
        let mut runs: Runs = Vec::new();
        let mut cluster = first;
        let mut count = 0u64;
        loop {
            if cluster < 2 || cluster >= l.clusters + 2 {
                return Err(corrupt(
                    path,
                    format!(
                        "cluster chain reaches cluster {cluster}, outside 2..{}",
                        l.clusters + 2
                    ),
                ));
            }
            let offset = l.cluster_offset(cluster);
            match runs.last_mut() {
                Some((o, len)) if *o + *len == offset => *len += l.cluster_bytes,
                _ => runs.push((offset, l.cluster_bytes)),
            }
            count += 1;
            if want == Want::Exactly(count) {
                return Ok(runs);
            }
            let next = self.entry(path, cluster)?;
            if next >= l.end_of_chain() {
                return match want {
                    Want::Exactly(need) => Err(corrupt(
                        path,
                        format!("cluster chain ends after {count} of {need} clusters"),
                    )),
                    Want::ToEnd { .. } => Ok(runs),
                };
            }
            if next == 0 {
                return Err(corrupt(
                    path,
                    format!("cluster chain reaches a free cluster after cluster {cluster}"),
                ));
            }
            if want == (Want::ToEnd { max: count }) {
                return Err(corrupt(
                    path,
                    format!("directory is longer than {count} clusters (a looping chain?)"),
                ));
            }
            cluster = next;
        }
    }

    /// The bytes of a directory (None: the root), bounded by [`MAX_DIR_SLOTS`].
    fn dir_bytes(&self, path: &[u8], cluster: Option<u64>) -> Result<Vec<u8>> {
        let l = &self.layout;
        let first = match (cluster, l.root) {
            (Some(c), _) => c,
            (None, Root::Cluster(c)) => u64::from(c),
            (None, Root::Fixed { offset, len }) => {
                let mut data = vec![0u8; len as usize];
                self.read(path, &mut data, offset)?;
                return Ok(data);
            }
        };
        let max = (MAX_DIR_SLOTS * SLOT as u64).div_ceil(l.cluster_bytes);
        let runs = self.chain(path, first, Want::ToEnd { max })?;
        let total: u64 = runs.iter().map(|r| r.1).sum();
        let mut data = vec![0u8; total as usize];
        let mut at = 0usize;
        for (offset, len) in runs {
            self.read(path, &mut data[at..at + len as usize], offset)?;
            at += len as usize;
        }
        Ok(data)
    }

    fn list(&self, path: &[u8], cluster: Option<u64>) -> Result<Vec<Slot>> {
        let fat32 = self.layout.bits == 32;
        Ok(parse_dir(&self.dir_bytes(path, cluster)?, fat32))
    }

    /// Finds the entry for `path` (None for the root). Names match case-insensitively,
    /// long or short.
    fn lookup(&self, path: &[u8]) -> Result<Option<Slot>> {
        let parts: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        let mut dir: Option<u64> = None;
        let mut found = None;
        for (i, part) in parts.iter().enumerate() {
            let entry = self
                .list(path, dir)?
                .into_iter()
                .find(|e| e.name.eq_ignore_ascii_case(part) || e.short.eq_ignore_ascii_case(part))
                .ok_or_else(|| Error::NotFound { path: show(path) })?;
            if i + 1 < parts.len() {
                if !entry.is_dir() {
                    return Err(Error::WrongType {
                        path: show(path),
                        reason: "not a directory",
                    });
                }
                // A directory entry with cluster 0 is the root (FAT's ".." convention).
                dir = (entry.cluster != 0).then_some(entry.cluster);
            }
            found = Some(entry);
        }
        Ok(found)
    }
}

/// A regular file's bytes, read run by run.
struct FatFile<'a> {
    fs: &'a FatFs,
    path: Vec<u8>,
    runs: Runs,
    size: u64,
    pos: u64,
    run: usize,
    run_start: u64,
}

impl Read for FatFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        while self.pos >= self.run_start + self.runs[self.run].1 {
            self.run_start += self.runs[self.run].1;
            self.run += 1;
        }
        let (offset, len) = self.runs[self.run];
        let within = self.pos - self.run_start;
        let n = (buf.len() as u64)
            .min(len - within)
            .min(self.size - self.pos) as usize;
        self.fs
            .read(&self.path, &mut buf[..n], offset + within)
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Filesystem for FatFs {
    fn kind(&self) -> FsKind {
        FsKind::Vfat
    }

    fn notes(&self) -> Vec<String> {
        self.layout.notes.clone()
    }

    fn metadata(&self, path: &[u8]) -> Result<Metadata> {
        Ok(match self.lookup(path)? {
            Some(e) => e.metadata(),
            None => Metadata {
                kind: FileKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: 0,
            },
        })
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>> {
        let cluster = match self.lookup(path)? {
            None => None,
            Some(e) if e.is_dir() => (e.cluster != 0).then_some(e.cluster),
            Some(_) => {
                return Err(Error::WrongType {
                    path: show(path),
                    reason: "not a directory",
                })
            }
        };
        Ok(self
            .list(path, cluster)?
            .into_iter()
            .map(|e| DirEntry {
                metadata: e.metadata(),
                name: e.name,
            })
            .collect())
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        self.lookup(path)?;
        Err(Error::WrongType {
            path: show(path),
            reason: "not a symlink (FAT has none)",
        })
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        let entry = match self.lookup(path)? {
            Some(e) if !e.is_dir() => e,
            _ => {
                return Err(Error::WrongType {
                    path: show(path),
                    reason: "is a directory",
                })
            }
        };
        let need = entry.size.div_ceil(self.layout.cluster_bytes);
        if need > self.layout.clusters {
            return Err(corrupt(
                path,
                format!(
                    "its size {} needs {need} clusters; the volume has {}",
                    entry.size, self.layout.clusters
                ),
            ));
        }
        let runs = if need == 0 {
            Vec::new()
        } else {
            self.chain(path, entry.cluster, Want::Exactly(need))?
        };
        Ok(Box::new(FatFile {
            fs: self,
            path: path.to_vec(),
            runs,
            size: entry.size,
            pos: 0,
            run: 0,
            run_start: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_convert_to_unix_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1980, 1, 1), 3_652);
    }

    /// A FAT32 boot sector of `total` sectors, 512 bytes each, one sector per cluster.
    fn fat32_boot(total: u32, in_16_bit_field: bool) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0] = 0xeb;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 1;
        b[14..16].copy_from_slice(&32u16.to_le_bytes());
        b[16] = 2;
        b[21] = 0xf8;
        if in_16_bit_field {
            b[19..21].copy_from_slice(&(total as u16).to_le_bytes());
        } else {
            b[32..36].copy_from_slice(&total.to_le_bytes());
        }
        b[36..40].copy_from_slice(&160u32.to_le_bytes());
        b[44..48].copy_from_slice(&2u32.to_le_bytes());
        b[82..87].copy_from_slice(b"FAT32");
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn a_small_fat32_is_read_as_fat32_as_linux_does_with_a_note() {
        let l = Layout::parse(&fat32_boot(20_000, true), 20_000 * 512).unwrap();
        assert_eq!(l.bits, 32);
        assert_eq!(l.root, Root::Cluster(2));
        assert_eq!(l.clusters, 20_000 - 32 - 320);
        assert!(
            l.notes.iter().any(|n| n.contains("16-bit field")),
            "{:?}",
            l.notes
        );
        assert!(
            l.notes.iter().any(|n| n.contains("Microsoft's rule")),
            "{:?}",
            l.notes
        );
    }

    #[test]
    fn a_truncated_volume_is_noted_not_refused() {
        let l = Layout::parse(&fat32_boot(20_000, false), 4096).unwrap();
        assert!(
            l.notes.iter().any(|n| n.contains("truncated")),
            "{:?}",
            l.notes
        );
    }

    #[test]
    fn impossible_geometry_is_refused_with_the_field_named() {
        let mut b = fat32_boot(20_000, false);
        b[13] = 3;
        assert!(Layout::parse(&b, 1 << 30)
            .unwrap_err()
            .contains("sectors per cluster"));
        let mut b = fat32_boot(20_000, false);
        b[21] = 0x12;
        assert!(Layout::parse(&b, 1 << 30).unwrap_err().contains("media"));
        let mut b = fat32_boot(100, false);
        b[16] = 2;
        assert!(Layout::parse(&b, 1 << 30)
            .unwrap_err()
            .contains("no data area"));
    }

    #[test]
    fn hostile_boot_sectors_never_panic() {
        let mut rng = 0x1234_5678u64;
        for _ in 0..20_000 {
            let mut b = fat32_boot(20_000, false);
            for _ in 0..4 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                b[(rng % 64) as usize] = (rng >> 32) as u8;
            }
            let _ = Layout::parse(&b, 1 << 30);
        }
    }

    #[test]
    fn long_names_need_a_matching_checksum_and_complete_sequence() {
        let mut short = [b' '; 11];
        short[..4].copy_from_slice(b"LONG");
        short[8..11].copy_from_slice(b"TXT");
        let mut lfn = [0u8; 32];
        lfn[0] = 0x41;
        lfn[11] = ATTR_LFN;
        lfn[13] = short_name_checksum(&short);
        let name: Vec<u16> = "long name.txt".encode_utf16().collect();
        let slots: Vec<usize> = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2))
            .collect();
        for (i, at) in slots.iter().enumerate() {
            let u = name.get(i).copied().unwrap_or(0);
            lfn[*at..*at + 2].copy_from_slice(&u.to_le_bytes());
        }
        let mut entry = [0u8; 32];
        entry[..11].copy_from_slice(&short);
        entry[12] = LOWER_EXT;
        let mut dir = lfn.to_vec();
        dir.extend_from_slice(&entry);
        let slots = parse_dir(&dir, true);
        assert_eq!(slots[0].name, b"long name.txt");
        assert_eq!(slots[0].short, b"LONG.txt");
        dir[13] ^= 1; // wrong checksum: the short name stands
        assert_eq!(parse_dir(&dir, true)[0].name, b"LONG.txt");
    }
}
