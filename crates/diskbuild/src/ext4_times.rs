//! Clamps the timestamps of a freshly made ext4, so that the same tree gives the
//! same bytes.
//!
//! `mkfs.ext4 -d` copies each file's access, change and modification times from
//! the staged tree. The change time cannot be set from user space and moves
//! whenever a file is linked or copied, and the access time moves when the file
//! is read, so neither is reproducible. As `SOURCE_DATE_EPOCH` asks, every
//! in-use inode gets its modification time clamped to the epoch, and that time as
//! its access, change and creation times; the inode checksum is recomputed.
//! Nothing else in the filesystem changes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::BuildError;

const SUPERBLOCK: u64 = 1024;
const EXT4_MAGIC: u16 = 0xef53;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_UNINIT: u16 = 0x1;
/// The classic inode; the extra fields (nanoseconds, creation time) follow it.
const BASE_INODE: usize = 128;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// ext4's metadata checksum: CRC32C from `seed`, no final inversion.
fn crc32c(seed: u32, parts: &[&[u8]]) -> u32 {
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut digest = CASTAGNOLI.digest_with_initial(seed.reverse_bits());
    for part in parts {
        digest.update(part);
    }
    !digest.finalize()
}

/// Clamps the times of every in-use inode of the ext4 at `offset` in `file`;
/// returns how many inodes changed.
pub fn clamp_times(file: &File, path: &Path, offset: u64, epoch: u64) -> Result<u64, BuildError> {
    let bad = |reason: String| BuildError::Tool {
        tool: "mkfs.ext4",
        status: "wrote".into(),
        stderr: format!("a filesystem amiforge cannot finish: {reason}"),
    };
    let read = |buf: &mut [u8], at: u64| {
        file.read_exact_at(buf, offset + at)
            .map_err(|source| BuildError::Io {
                what: "read",
                path: path.to_path_buf(),
                source,
            })
    };
    let mut sb = vec![0u8; 1024];
    read(&mut sb, SUPERBLOCK)?;
    if le16(&sb, 0x38) != EXT4_MAGIC {
        return Err(bad("no ext4 superblock".into()));
    }
    let incompat = le32(&sb, 0x60);
    let ro_compat = le32(&sb, 0x64);
    if incompat & INCOMPAT_META_BG != 0 {
        return Err(bad("meta_bg group descriptors".into()));
    }
    let log_block = le32(&sb, 0x18);
    if log_block > 6 {
        return Err(bad(format!("block size 2^{}", 10 + log_block)));
    }
    let block_size = 1024u64 << log_block;
    let blocks = u64::from(le32(&sb, 0x04))
        | if incompat & INCOMPAT_64BIT != 0 {
            u64::from(le32(&sb, 0x150)) << 32
        } else {
            0
        };
    let first_data_block = u64::from(le32(&sb, 0x14));
    let blocks_per_group = u64::from(le32(&sb, 0x20));
    let inodes_per_group = u64::from(le32(&sb, 0x28));
    let inode_size = usize::from(le16(&sb, 0x58));
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        u64::from(le16(&sb, 0xfe))
    } else {
        32
    };
    if blocks_per_group == 0
        || inodes_per_group == 0
        || inodes_per_group > block_size * 8
        || !(BASE_INODE..=4096).contains(&inode_size)
        || !(32..=1024).contains(&desc_size)
        || blocks <= first_data_block
    {
        return Err(bad("an inconsistent superblock".into()));
    }
    let csum_seed = (ro_compat & RO_COMPAT_METADATA_CSUM != 0).then(|| {
        if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(&sb, 0x270)
        } else {
            crc32c(!0, &[&sb[0x68..0x78]])
        }
    });
    let has_unused = ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0;
    let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
    let mut gdt = vec![0u8; (groups * desc_size) as usize];
    read(&mut gdt, (first_data_block + 1) * block_size)?;

    let mut changed = 0;
    for g in 0..groups {
        let d = &gdt[(g * desc_size) as usize..((g + 1) * desc_size) as usize];
        if le16(d, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let mut table = u64::from(le32(d, 0x08));
        let mut unused = u64::from(le16(d, 0x1c));
        if desc_size >= 64 {
            table |= u64::from(le32(d, 0x28)) << 32;
            unused |= u64::from(le16(d, 0x32)) << 16;
        }
        let used = if has_unused {
            inodes_per_group.saturating_sub(unused)
        } else {
            inodes_per_group
        };
        if used == 0 {
            continue;
        }
        if table >= blocks {
            return Err(bad(format!("group {g}'s inode table at block {table}")));
        }
        let mut buf = vec![0u8; used as usize * inode_size];
        read(&mut buf, table * block_size)?;
        let mut dirty = false;
        for (i, raw) in buf.chunks_exact_mut(inode_size).enumerate() {
            let number = (g * inodes_per_group + i as u64 + 1) as u32;
            if clamp_inode(raw, number, epoch, csum_seed) {
                dirty = true;
                changed += 1;
            }
        }
        if dirty {
            file.write_all_at(&buf, offset + table * block_size)
                .map_err(|source| BuildError::Io {
                    what: "write",
                    path: path.to_path_buf(),
                    source,
                })?;
        }
    }
    Ok(changed)
}

/// One time field: its seconds, and where its extra word (two epoch bits and
/// the nanoseconds) lives, if the inode has room for it.
const TIMES: [(usize, usize); 4] = [
    (0x08, 0x8c), // access
    (0x0c, 0x84), // change
    (0x10, 0x88), // modification
    (0x90, 0x94), // creation (extra fields only)
];

/// Clamps one inode's times; whether it changed.
fn clamp_inode(raw: &mut [u8], number: u32, epoch: u64, csum_seed: Option<u32>) -> bool {
    let links = le16(raw, 0x1a);
    let mode = le16(raw, 0x00);
    if links == 0 || mode == 0 {
        return false;
    }
    let extra = if raw.len() > BASE_INODE {
        usize::from(le16(raw, 0x80))
    } else {
        0
    };
    let len = raw.len();
    let fits = move |at: usize| at + 4 <= BASE_INODE + extra && at + 4 <= len;
    let mtime_extra = if fits(0x88) { le32(raw, 0x88) } else { 0 };
    // Seconds are a signed 32-bit value plus two epoch bits from the extra word.
    let mtime = i64::from(le32(raw, 0x10) as i32) + (i64::from(mtime_extra & 3) << 32);
    let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
    let (seconds, extra_word) = if mtime > epoch {
        let lo = epoch as u32;
        let epoch_bits = ((epoch - i64::from(lo as i32)) >> 32) as u32 & 3;
        (lo, epoch_bits)
    } else {
        (le32(raw, 0x10), mtime_extra)
    };
    let before = raw.to_vec();
    for (at, extra_at) in TIMES {
        if at < BASE_INODE || fits(at) {
            put32(raw, at, seconds);
        }
        if fits(extra_at) {
            put32(raw, extra_at, extra_word);
        }
    }
    if raw == before.as_slice() {
        return false;
    }
    if let Some(seed) = csum_seed {
        // i_checksum_lo at 0x7c; i_checksum_hi at 0x82 when the extra fields hold it.
        let has_hi = extra >= 4 && raw.len() >= 0x84;
        raw[0x7c..0x7e].fill(0);
        if has_hi {
            raw[0x82..0x84].fill(0);
        }
        let inode_seed = crc32c(seed, &[&number.to_le_bytes(), &raw[0x64..0x68]]);
        let csum = crc32c(inode_seed, &[raw]);
        raw[0x7c..0x7e].copy_from_slice(&(csum as u16).to_le_bytes());
        if has_hi {
            raw[0x82..0x84].copy_from_slice(&((csum >> 16) as u16).to_le_bytes());
        }
    }
    true
}
