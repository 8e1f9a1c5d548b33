//! Where a filesystem's unallocated space is: the bytes no file owns, which still
//! hold whatever deleted files left there and ship with every snapshot.
//!
//! ext2/3/4: the block bitmaps named by the group descriptors. A group whose bitmap
//! was never initialised (BLOCK_UNINIT) counts as wholly unallocated.
//! FAT12/16/32: the clusters whose FAT entry is zero.
//! XFS: the records of each AG's by-block free-space btree, and its free list.
//! btrfs: the space of each chunk that the extent tree does not list, and the device
//! space outside every chunk.

use crate::{Error, FsKind, Result};
use blockio::BlockSource;
use std::ops::Range;
use std::sync::Arc;

/// ext superblock offset and magic.
const EXT_SUPERBLOCK: u64 = 1024;
const EXT_MAGIC: u16 = 0xef53;
/// Incompatible feature: 64-bit block numbers and descriptors.
const EXT_INCOMPAT_64BIT: u32 = 0x80;
/// Group descriptor flag: the block bitmap was never initialised.
const EXT_BG_BLOCK_UNINIT: u16 = 0x2;
/// Largest FAT read at once: a FAT32 volume of 2 TiB with 4 KiB clusters.
const FAT_TABLE_LIMIT: u64 = 512 << 20;

/// The unallocated byte ranges of the filesystem on `source`, relative to its start,
/// merged and in order. ext2/3/4, FAT, XFS and btrfs are understood.
pub fn unallocated(source: &Arc<dyn BlockSource>, kind: FsKind) -> Result<Vec<Range<u64>>> {
    let mut ranges = match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => ext(&**source, kind)?,
        FsKind::Vfat => fat(&**source)?,
        FsKind::Xfs => crate::xfs::Xfs::open(source.clone())?.free_space()?,
        FsKind::Btrfs => crate::btrfs::Btrfs::open(source.clone())?.free_space()?,
        other => {
            return Err(Error::Unsupported {
                kind: other.name(),
                reason: "unallocated space is read for ext2/3/4, FAT, XFS and btrfs only".into(),
            })
        }
    };
    ranges.sort_by_key(|r| r.start);
    let len = source.len();
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        let r = r.start.min(len)..r.end.min(len);
        if r.is_empty() {
            continue;
        }
        match merged.last_mut() {
            // Overlapping ranges (a damaged map) merge too.
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    Ok(merged)
}

/// How much a filesystem says it holds, as `df` and `dumpe2fs -h` or `fsck.vfat -n`
/// would put it: the audit sets what it examined against these figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Bytes in use: blocks or clusters allocated (ext counts its own metadata).
    pub bytes_used: u64,
    /// Bytes the filesystem can hold: all blocks, or all data clusters.
    pub bytes_total: u64,
    /// Inodes in use, where the filesystem counts them (ext; not FAT).
    pub inodes_used: Option<u64>,
    /// Bytes from the volume's start to the end of its last block or cluster: more
    /// than the volume's length when the image is truncated.
    pub span: u64,
}

/// What the filesystem on `source` says it holds: the ext superblock's counts, or
/// the FAT's free entries counted, the XFS or btrfs superblock's counts.
pub fn usage(source: &Arc<dyn BlockSource>, kind: FsKind) -> Result<Usage> {
    let source_arc = source;
    let source = &**source;
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
            let (sb, bs) = ext_superblock(source, kind)?;
            let is_64 = le32(&sb, 0x60) & EXT_INCOMPAT_64BIT != 0;
            let wide = |lo: usize, hi: usize| {
                let hi = if is_64 {
                    u64::from(le32(&sb, hi)) << 32
                } else {
                    0
                };
                u64::from(le32(&sb, lo)) | hi
            };
            let (blocks, free) = (wide(0x04, 0x150), wide(0x0c, 0x158));
            let (inodes, free_inodes) = (u64::from(le32(&sb, 0x00)), u64::from(le32(&sb, 0x10)));
            Ok(Usage {
                bytes_used: blocks.saturating_sub(free).saturating_mul(bs),
                bytes_total: blocks.saturating_mul(bs),
                inodes_used: Some(inodes.saturating_sub(free_inodes)),
                span: blocks.saturating_mul(bs),
            })
        }
        FsKind::Vfat => {
            let l = crate::fat::layout(source)?;
            let free: u64 = fat(source)?.iter().map(|r| r.end - r.start).sum();
            let total = l.clusters * l.cluster_bytes;
            Ok(Usage {
                bytes_used: total.saturating_sub(free),
                bytes_total: total,
                inodes_used: None,
                span: l.data_offset + total,
            })
        }
        FsKind::Xfs => {
            let (blocks, free, block) = crate::xfs::Xfs::open(source_arc.clone())?.counts();
            Ok(Usage {
                bytes_used: blocks.saturating_sub(free).saturating_mul(block),
                bytes_total: blocks.saturating_mul(block),
                inodes_used: None,
                span: blocks.saturating_mul(block),
            })
        }
        FsKind::Btrfs => {
            let (used, device) = crate::btrfs::Btrfs::open(source_arc.clone())?.counts();
            Ok(Usage {
                bytes_used: used,
                bytes_total: device,
                inodes_used: None,
                span: device,
            })
        }
        other => Err(Error::Unsupported {
            kind: other.name(),
            reason: "usage is read for ext2/3/4, FAT, XFS and btrfs only".into(),
        }),
    }
}

/// Appends `r`, extending the last range when they touch, so a volume of free
/// clusters costs one range, not millions.
fn push_merged(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    match out.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => out.push(r),
    }
}

fn read(source: &dyn BlockSource, kind: FsKind, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    source
        .read_exact_at(&mut buf, offset)
        .map_err(|e| Error::Read {
            path: format!("({} metadata at byte {offset})", kind.name()),
            source: Box::new(e),
        })?;
    Ok(buf)
}

fn corrupt(kind: FsKind, reason: String) -> Error {
    Error::Corrupt {
        kind: kind.name(),
        path: None,
        reason,
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The ext superblock, with its magic checked, and the block size it gives.
fn ext_superblock(source: &dyn BlockSource, kind: FsKind) -> Result<(Vec<u8>, u64)> {
    let sb = read(source, kind, EXT_SUPERBLOCK, 1024)?;
    if le16(&sb, 0x38) != EXT_MAGIC {
        return Err(corrupt(kind, "no ext superblock magic".into()));
    }
    let log = le32(&sb, 0x18);
    if log > 6 {
        return Err(corrupt(
            kind,
            format!("block size 2^(10+{log}) is impossible"),
        ));
    }
    let bs = 1024u64 << log;
    Ok((sb, bs))
}

fn ext(source: &dyn BlockSource, kind: FsKind) -> Result<Vec<Range<u64>>> {
    let (sb, bs) = ext_superblock(source, kind)?;
    let first_data_block = u64::from(le32(&sb, 0x14));
    let per_group = u64::from(le32(&sb, 0x20));
    let is_64 = le32(&sb, 0x60) & EXT_INCOMPAT_64BIT != 0;
    let mut blocks = u64::from(le32(&sb, 0x04));
    let desc_size = if is_64 {
        blocks |= u64::from(le32(&sb, 0x150)) << 32;
        u64::from(le16(&sb, 0xfe))
    } else {
        32
    };
    if per_group == 0 || per_group > bs * 8 {
        return Err(corrupt(kind, format!("{per_group} blocks per group")));
    }
    if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
        return Err(corrupt(kind, format!("group descriptor size {desc_size}")));
    }
    // Never trust the block count beyond what the source can hold.
    let blocks = blocks.min(source.len() / bs);
    let groups = blocks.saturating_sub(first_data_block).div_ceil(per_group);
    let gdt_offset = (first_data_block + 1) * bs;
    let gdt_len = groups
        .checked_mul(desc_size)
        .filter(|&l| gdt_offset + l <= source.len())
        .ok_or_else(|| {
            corrupt(
                kind,
                format!("{groups} group descriptors overrun the volume"),
            )
        })?;
    let gdt = read(source, kind, gdt_offset, gdt_len as usize)?;
    let mut out = Vec::new();
    let mut bitmap = vec![0u8; bs as usize];
    for g in 0..groups {
        let d = &gdt[(g * desc_size) as usize..((g + 1) * desc_size) as usize];
        let first = first_data_block + g * per_group;
        let count = per_group.min(blocks - first);
        let flags = le16(d, 0x12);
        if flags & EXT_BG_BLOCK_UNINIT != 0 {
            push_merged(&mut out, first * bs..(first + count) * bs);
            continue;
        }
        let mut at = u64::from(le32(d, 0));
        if desc_size >= 64 {
            at |= u64::from(le32(d, 0x20)) << 32;
        }
        if at == 0 || at >= blocks {
            return Err(corrupt(
                kind,
                format!("group {g}'s block bitmap is at block {at}, outside the volume"),
            ));
        }
        source
            .read_exact_at(&mut bitmap, at * bs)
            .map_err(|e| Error::Read {
                path: format!("(block bitmap of group {g})"),
                source: Box::new(e),
            })?;
        let mut run: Option<u64> = None;
        for i in 0..count {
            let used = bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;
            match (used, run) {
                (false, None) => run = Some(i),
                (true, Some(s)) => {
                    push_merged(&mut out, (first + s) * bs..(first + i) * bs);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            push_merged(&mut out, (first + s) * bs..(first + count) * bs);
        }
    }
    Ok(out)
}

fn fat(source: &dyn BlockSource) -> Result<Vec<Range<u64>>> {
    let kind = FsKind::Vfat;
    let l = crate::fat::layout(source)?;
    let table_len = l
        .fat_bytes
        .min((l.clusters + 2) * u64::from(l.bits) / 8 + 2);
    if table_len > FAT_TABLE_LIMIT {
        return Err(corrupt(kind, format!("a FAT of {table_len} bytes")));
    }
    let table = read(source, kind, l.fat_offset, table_len as usize)?;
    let mut out = Vec::new();
    // A hostile cluster count cannot outrun the FAT: clusters past its end have no
    // entry and cannot be told apart, so they count as allocated and are not visited.
    for c in 2..l.clusters + 2 {
        match l.entry_in(&table, c) {
            Some(0) => {
                let start = l.cluster_offset(c);
                push_merged(&mut out, start..start + l.cluster_bytes);
            }
            Some(_) => {}
            None => break,
        }
    }
    Ok(out)
}
