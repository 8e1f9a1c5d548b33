//! Naming a filesystem by its on-disk magic, reporting every signature found so that
//! an ambiguous volume is never taken for the first one alone (blkid's model).

use crate::raid::{self, RaidFormat};
use blockio::BlockSource;
use serde::Serialize;

/// A filesystem (or other content) recognised on a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// ext2 (no journal, no extents).
    Ext2,
    /// ext3 (journal, no extents).
    Ext3,
    /// ext4.
    Ext4,
    /// FAT12/16/32.
    Vfat,
    /// XFS.
    Xfs,
    /// btrfs.
    Btrfs,
    /// An LVM2 physical volume.
    Lvm2,
    /// A LUKS1 or LUKS2 encrypted container.
    Luks,
    /// Linux swap.
    Swap,
    /// squashfs.
    Squashfs,
    /// EROFS.
    Erofs,
    /// NTFS.
    Ntfs,
    /// ISO 9660.
    Iso9660,
    /// An external ext3/ext4 journal device: a jbd superblock, no files.
    JournalDev,
    /// A member of a software or firmware RAID set.
    Raid(RaidFormat),
    /// All zeros where a superblock would be.
    Empty,
    /// Nothing recognised.
    Unknown,
}

impl FsKind {
    /// The name used in reports ("ext4", "vfat", "lvm2"...).
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Vfat => "vfat",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Lvm2 => "lvm2",
            FsKind::Luks => "luks",
            FsKind::Swap => "swap",
            FsKind::Squashfs => "squashfs",
            FsKind::Erofs => "erofs",
            FsKind::Ntfs => "ntfs",
            FsKind::Iso9660 => "iso9660",
            FsKind::JournalDev => "jbd",
            FsKind::Raid(format) => format.name(),
            FsKind::Empty => "empty",
            FsKind::Unknown => "unknown",
        }
    }

    /// Can amiforge read files from it?
    pub fn readable(self) -> bool {
        matches!(
            self,
            FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 | FsKind::Vfat | FsKind::Xfs | FsKind::Btrfs
        )
    }

    /// Whether this kind holds files (a filesystem), as opposed to swap, a journal,
    /// a container or RAID metadata.
    pub fn holds_files(self) -> bool {
        !matches!(
            self,
            FsKind::Swap
                | FsKind::JournalDev
                | FsKind::Raid(_)
                | FsKind::Lvm2
                | FsKind::Luks
                | FsKind::Empty
                | FsKind::Unknown
        )
    }
}

/// How much of the start of a partition the probes look at: the ISO 9660 volume
/// descriptor at 32 KiB and the btrfs superblock at 64 KiB are the furthest.
const PROBE_LEN: usize = 0x10000 + 0x1000;

const EXT_SUPERBLOCK: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const EXT3_COMPAT_HAS_JOURNAL: u32 = 0x4;
/// An ext superblock with this incompat bit is an external journal (jbd), no files.
const EXT_INCOMPAT_JOURNAL_DEV: u32 = 0x8;
/// ext4-only incompat features: extents, 64bit, flex_bg, inline_data.
const EXT4_INCOMPAT: u32 = 0x40 | 0x80 | 0x200 | 0x8000;
/// ext4-only ro_compat features: huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum.
const EXT4_RO_COMPAT: u32 = 0x8 | 0x10 | 0x20 | 0x40 | 0x400;
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// Swap's signature ends the first page: the page sizes blkid tries, 4 to 64 KiB.
const SWAP_PAGE_SIZES: [usize; 5] = [4096, 8192, 16384, 32768, 65536];
/// The swap header's version word, after the 1024 bytes of boot block.
const SWAP_VERSION_OFFSET: usize = 1024;

/// Names the content of `source` by magic numbers: the first of [`probe_all`].
pub fn probe(source: &dyn BlockSource) -> blockio::Result<FsKind> {
    Ok(probe_all(source)?[0])
}

/// Every signature found on `source`, most specific first: RAID metadata (which
/// owns the whole volume), then filesystems and containers. Never empty: `Empty`
/// or `Unknown` when nothing is recognised. Reads at most 68 KiB at the start and
/// the md superblock locations at the end.
pub fn probe_all(source: &dyn BlockSource) -> blockio::Result<Vec<FsKind>> {
    let len = (source.len() as usize).min(PROBE_LEN);
    let mut b = vec![0u8; len];
    source.read_exact_at(&mut b, 0)?;
    let mut found = Vec::new();
    if raid::md_member(source)?.is_some() {
        found.push(FsKind::Raid(RaidFormat::LinuxMd));
    }
    found.extend(signatures(&b));
    if found.is_empty() {
        found.push(empty_or_unknown(&b));
    }
    Ok(found)
}

fn empty_or_unknown(b: &[u8]) -> FsKind {
    if b.iter().all(|&x| x == 0) {
        FsKind::Empty
    } else {
        FsKind::Unknown
    }
}

fn has(b: &[u8], at: usize, magic: &[u8]) -> bool {
    b.get(at..at + magic.len()) == Some(magic)
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Names content from its first bytes (up to [`PROBE_LEN`]): the first signature,
/// or `Empty`/`Unknown`.
pub fn probe_bytes(b: &[u8]) -> FsKind {
    signatures(b)
        .first()
        .copied()
        .unwrap_or_else(|| empty_or_unknown(b))
}

/// Every signature in the first bytes, in order of priority.
fn signatures(b: &[u8]) -> Vec<FsKind> {
    let mut found = Vec::new();
    if has(b, 0, b"LUKS\xba\xbe") || has(b, 0, b"SKUL\xba\xbe") {
        found.push(FsKind::Luks);
    }
    if has(b, 0, b"XFSB") {
        found.push(FsKind::Xfs);
    }
    if has(b, 0, b"hsqs") {
        found.push(FsKind::Squashfs);
    }
    if has(b, 3, b"NTFS    ") {
        found.push(FsKind::Ntfs);
    }
    // LVM2's label sits in one of the first four sectors.
    if (0..4).any(|s| has(b, s * 512, b"LABELONE") && has(b, s * 512 + 24, b"LVM2 001")) {
        found.push(FsKind::Lvm2);
    }
    if le16(b, EXT_SUPERBLOCK + 56) == Some(EXT_MAGIC) {
        let compat = le32(b, EXT_SUPERBLOCK + 92).unwrap_or(0);
        let incompat = le32(b, EXT_SUPERBLOCK + 96).unwrap_or(0);
        let ro_compat = le32(b, EXT_SUPERBLOCK + 100).unwrap_or(0);
        found.push(if incompat & EXT_INCOMPAT_JOURNAL_DEV != 0 {
            FsKind::JournalDev
        } else if incompat & EXT4_INCOMPAT != 0 || ro_compat & EXT4_RO_COMPAT != 0 {
            FsKind::Ext4
        } else if compat & EXT3_COMPAT_HAS_JOURNAL != 0 {
            FsKind::Ext3
        } else {
            FsKind::Ext2
        });
    }
    if le32(b, 1024) == Some(EROFS_MAGIC) {
        found.push(FsKind::Erofs);
    }
    if has(b, 0x10040, b"_BHRfS_M") {
        found.push(FsKind::Btrfs);
    }
    if has(b, 0x8001, b"CD001") {
        found.push(FsKind::Iso9660);
    }
    if is_swap(b) {
        found.push(FsKind::Swap);
    }
    if is_fat(b) {
        found.push(FsKind::Vfat);
    }
    found
}

/// Swap: the signature at the end of the first page, for any page size. Version 1
/// needs its version word (1, in either byte order: swap made on a big-endian host)
/// and a non-zero last page, as blkid checks.
fn is_swap(b: &[u8]) -> bool {
    SWAP_PAGE_SIZES.iter().any(|&p| {
        if has(b, p - 10, b"SWAP-SPACE") {
            return true;
        }
        if !has(b, p - 10, b"SWAPSPACE2") {
            return false;
        }
        let version = le32(b, SWAP_VERSION_OFFSET).unwrap_or(0);
        let last_page = le32(b, SWAP_VERSION_OFFSET + 4).unwrap_or(0);
        (version == 1 || version.swap_bytes() == 1) && last_page != 0
    })
}

/// A FAT boot sector: the 0x55AA signature and a sane BIOS parameter block.
fn is_fat(b: &[u8]) -> bool {
    if b.len() < 512 || b[510] != 0x55 || b[511] != 0xaa {
        return false;
    }
    let bytes_per_sector = le16(b, 11).unwrap_or(0);
    let sectors_per_cluster = b[13];
    let reserved = le16(b, 14).unwrap_or(0);
    let fats = b[16];
    let named = has(b, 54, b"FAT") || has(b, 82, b"FAT");
    named
        && bytes_per_sector.is_power_of_two()
        && (512..=4096).contains(&bytes_per_sector)
        && sectors_per_cluster.is_power_of_two()
        && reserved >= 1
        && fats >= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_LEN];
        b[offset..offset + magic.len()].copy_from_slice(magic);
        b
    }

    #[test]
    fn each_magic_names_its_kind() {
        assert_eq!(probe_bytes(&at(0, b"XFSB")), FsKind::Xfs);
        assert_eq!(probe_bytes(&at(0x10040, b"_BHRfS_M")), FsKind::Btrfs);
        assert_eq!(probe_bytes(&at(0, b"LUKS\xba\xbe\x00\x02")), FsKind::Luks);
        let mut swap = at(4086, b"SWAPSPACE2");
        swap[1024] = 1;
        swap[1028] = 9;
        assert_eq!(probe_bytes(&swap), FsKind::Swap);
        assert_eq!(probe_bytes(&at(0, b"hsqs")), FsKind::Squashfs);
        assert_eq!(
            probe_bytes(&at(1024, &EROFS_MAGIC.to_le_bytes())),
            FsKind::Erofs
        );
        assert_eq!(probe_bytes(&at(3, b"NTFS    ")), FsKind::Ntfs);
        assert_eq!(probe_bytes(&at(0x8001, b"CD001")), FsKind::Iso9660);
        assert_eq!(
            probe_bytes(&at(1024 + 56, &EXT_MAGIC.to_le_bytes())),
            FsKind::Ext2
        );
        assert_eq!(probe_bytes(&vec![0u8; 4096]), FsKind::Empty);
        assert_eq!(probe_bytes(&at(7, b"junk")), FsKind::Unknown);
        let mut lvm = at(512, b"LABELONE");
        lvm[512 + 24..512 + 32].copy_from_slice(b"LVM2 001");
        assert_eq!(probe_bytes(&lvm), FsKind::Lvm2);
    }

    #[test]
    fn swap_of_either_byte_order_and_any_page_size_is_swap() {
        for page in SWAP_PAGE_SIZES {
            for big_endian in [false, true] {
                let mut b = at(page - 10, b"SWAPSPACE2");
                let (v, last) = if big_endian {
                    (1u32.to_be_bytes(), 100u32.to_be_bytes())
                } else {
                    (1u32.to_le_bytes(), 100u32.to_le_bytes())
                };
                b[1024..1028].copy_from_slice(&v);
                b[1028..1032].copy_from_slice(&last);
                assert_eq!(probe_bytes(&b), FsKind::Swap, "page {page} be {big_endian}");
            }
        }
        // Version 2 is no swap header blkid or the kernel knows.
        let mut b = at(4086, b"SWAPSPACE2");
        b[1024] = 2;
        b[1028] = 1;
        assert_eq!(probe_bytes(&b), FsKind::Unknown);
    }

    #[test]
    fn two_signatures_are_both_reported() {
        let mut b = at(3, b"NTFS    ");
        b[1024 + 56..1024 + 58].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        assert_eq!(signatures(&b), [FsKind::Ntfs, FsKind::Ext2]);
    }

    #[test]
    fn short_partitions_do_not_panic() {
        for n in 0..2048 {
            let _ = probe_bytes(&vec![0x55u8; n]);
        }
    }
}
