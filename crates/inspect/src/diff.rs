//! What changed between two images of the same disk: the blocks that differ (from
//! the caller: ListChangedBlocks for two snapshots, or a comparison of the bytes),
//! the partitions they fall in, and, for every changed partition whose filesystem
//! both images can read, the files added, removed and modified, by path.
//!
//! A partition with no changed block is not read at all: its bytes are the same in
//! both images. In a changed one both trees are walked; entries present in only one
//! are added or removed; an entry in both is modified when its type, permissions,
//! owner, size or link target differ, or, for regular files of the same size, when
//! their contents differ (compared byte for byte, both read in step). A directory is
//! not called modified because its entries or its times changed: the entries that
//! changed are listed themselves.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;

use imagefs::{FileKind, Filesystem, Metadata, WalkLimits};
use serde::Serialize;

use crate::Image;

/// The files that changed in one filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileChanges {
    /// Paths only in the second image.
    pub added: Vec<String>,
    /// Paths only in the first image.
    pub removed: Vec<String>,
    /// Paths in both whose type, metadata or content differ.
    pub modified: Vec<String>,
}

impl FileChanges {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }
}

/// One partition (or logical volume) of the second image.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionDiff {
    /// Its number.
    pub number: u32,
    /// How reports name it ("partition 2", "logical volume vg/root (partition 5)").
    pub label: String,
    /// The filesystem on it, when one was recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<String>,
    /// Changed blocks inside it; `None` for a logical volume, whose blocks are not
    /// one range of the disk (it is compared whenever any block changed).
    pub changed_blocks: Option<u64>,
    /// The files that changed, when both images' filesystems were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<FileChanges>,
    /// Why its files were not compared, when they were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_examined: Option<String>,
}

/// What changed between two images.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// Blocks that differ.
    pub changed_blocks: u64,
    /// Their size in bytes.
    pub changed_bytes: u64,
    /// Changed blocks that lie in no partition (the partition table, gaps).
    pub changed_outside_partitions: u64,
    /// Every partition of the second image, changed or not.
    pub partitions: Vec<PartitionDiff>,
    /// Differences in the partition tables themselves.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub table_changes: Vec<String>,
}

/// Compares `first` and `second`, given the blocks of `block_size` bytes that differ
/// (ascending indices).
pub fn compare(first: &Image, second: &Image, changed: &[u64], block_size: u64) -> Diff {
    let ranges: Vec<Range<u64>> = changed
        .iter()
        .map(|&i| i.saturating_mul(block_size)..i.saturating_add(1).saturating_mul(block_size))
        .collect();
    let mut inside_any = vec![false; ranges.len()];
    let mut table_changes = Vec::new();
    let mut partitions = Vec::new();
    for volume in second.volumes() {
        let p = &volume.partition;
        if let Some(disk) = &volume.disk {
            partitions.push(PartitionDiff {
                number: p.number,
                label: volume.label(),
                filesystem: volume.kind.map(|k| k.name().to_string()),
                changed_blocks: None,
                files: None,
                not_examined: Some(format!(
                    "it is on {disk}, a data volume: diff compares the root disks"
                )),
            });
            continue;
        }
        let logical = p.kind == partition::PartitionType::LogicalVolume;
        let counted = (!logical).then(|| {
            let mut n = 0;
            for (k, r) in ranges.iter().enumerate() {
                if r.start < p.end() && p.start < r.end {
                    n += 1;
                    inside_any[k] = true;
                }
            }
            n
        });
        let before = first
            .volumes()
            .iter()
            .find(|v| v.partition.number == p.number);
        match before {
            None => table_changes.push(format!("{} was added", volume.label())),
            Some(b) if !logical && (b.partition.start, b.partition.size) != (p.start, p.size) => {
                table_changes.push(format!(
                    "{} moved or was resized: {}+{} bytes, now {}+{}",
                    volume.label(),
                    b.partition.start,
                    b.partition.size,
                    p.start,
                    p.size
                ))
            }
            Some(_) => {}
        }
        let mut entry = PartitionDiff {
            number: p.number,
            label: volume.label(),
            filesystem: volume.kind.map(|k| k.name().to_string()),
            changed_blocks: counted,
            files: None,
            not_examined: None,
        };
        if counted == Some(0) || changed.is_empty() {
            entry.files = Some(FileChanges::default());
        } else if before.is_none() {
            entry.not_examined = Some("the first image has no such partition".into());
        } else {
            match (first.filesystem(p.number), second.filesystem(p.number)) {
                (Ok(a), Ok(b)) => match files(&*a, &*b) {
                    Ok(f) => entry.files = Some(f),
                    Err(why) => entry.not_examined = Some(why),
                },
                (Err(e), _) | (_, Err(e)) => entry.not_examined = Some(e.to_string()),
            }
        }
        partitions.push(entry);
    }
    for v in first.volumes().iter().filter(|v| v.disk.is_none()) {
        if !second
            .volumes()
            .iter()
            .any(|w| w.partition.number == v.partition.number)
        {
            table_changes.push(format!("{} was removed", v.label()));
        }
    }
    Diff {
        changed_blocks: changed.len() as u64,
        changed_bytes: changed.len() as u64 * block_size,
        changed_outside_partitions: inside_any.iter().filter(|&&x| !x).count() as u64,
        partitions,
        table_changes,
    }
}

/// Every entry of `fs`, by path. A walk that could not read everything is an
/// error: a partial tree would report what it missed as added or removed.
fn tree(fs: &dyn Filesystem, which: &str) -> Result<BTreeMap<Vec<u8>, Metadata>, String> {
    let mut entries = BTreeMap::new();
    let outcome = imagefs::walk(fs, b"/", WalkLimits::default(), |e| {
        entries.insert(e.path.clone(), e.metadata.clone());
    });
    if let Some(p) = outcome.problems.first() {
        return Err(format!(
            "the {which} image's tree could not be read whole ({} problems; first: {}: {})",
            outcome.problems.len(),
            p.path,
            p.reason
        ));
    }
    Ok(entries)
}

/// The files added, removed and modified from `a` to `b`.
pub fn files(a: &dyn Filesystem, b: &dyn Filesystem) -> Result<FileChanges, String> {
    let before = tree(a, "first")?;
    let after = tree(b, "second")?;
    let mut out = FileChanges::default();
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        out.removed.push(imagefs::show(path));
    }
    for (path, m) in &after {
        match before.get(path) {
            None => out.added.push(imagefs::show(path)),
            Some(old) if modified(a, b, path, old, m)? => out.modified.push(imagefs::show(path)),
            Some(_) => {}
        }
    }
    Ok(out)
}

fn modified(
    a: &dyn Filesystem,
    b: &dyn Filesystem,
    path: &[u8],
    old: &Metadata,
    new: &Metadata,
) -> Result<bool, String> {
    let same_owner =
        (old.kind, old.mode, old.uid, old.gid) == (new.kind, new.mode, new.uid, new.gid);
    if !same_owner {
        return Ok(true);
    }
    let read = |what: &str, e: imagefs::Error| format!("{what} {}: {e}", imagefs::show(path));
    match new.kind {
        FileKind::Dir => Ok(false),
        FileKind::Symlink => Ok(a.read_link(path).map_err(|e| read("first", e))?
            != b.read_link(path).map_err(|e| read("second", e))?),
        FileKind::File if old.size != new.size => Ok(true),
        FileKind::File => {
            let mut x = a.open(path).map_err(|e| read("first", e))?;
            let mut y = b.open(path).map_err(|e| read("second", e))?;
            same_bytes(&mut *x, &mut *y, new.size)
                .map(|same| !same)
                .map_err(|e| format!("{}: {e}", imagefs::show(path)))
        }
        _ => Ok(old.size != new.size),
    }
}

/// Whether two readers give the same `size` bytes, read in step.
fn same_bytes(x: &mut dyn Read, y: &mut dyn Read, size: u64) -> std::io::Result<bool> {
    const CHUNK: usize = 256 * 1024;
    let (mut p, mut q) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        x.read_exact(&mut p[..n])?;
        y.read_exact(&mut q[..n])?;
        if p[..n] != q[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}
