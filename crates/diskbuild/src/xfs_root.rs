//! The root filesystem as XFS, the filesystem of Amazon Linux and the RHEL family.
//!
//! `mkfs.xfs -p DIR` (xfsprogs 6.17 and later) populates a new XFS from a
//! directory: names of any bytes, hard links, extended attributes, and with
//! `SOURCE_DATE_EPOCH` set, that time as every access, change and creation time.
//! It cannot write at an offset, so the filesystem is made in a file of the root
//! partition's size beside the disk and copied into the partition, data extents
//! only.
//!
//! Two things still differ from one run to the next, and are set here
//! ([`finish`]): each inode's generation number, which mkfs draws at random, is
//! derived from the seed and the inode number; and each modification time is
//! clamped to the epoch, which also becomes the access, change and creation time,
//! as ext4's roots get ([`crate::ext4_times`]). Each changed inode's CRC is
//! recomputed. The inodes are found through each allocation group's inode btree.
//!
//! The features are those mkfs gave when Linux 6.1 LTS was released (xfsprogs'
//! own `lts_6.1.conf`), so that the kernels and GRUB of today's distributions can
//! mount and read the root: no parent pointers, no metadata directory, no
//! exchange-range, no 64-bit extent counts.
//!
//! mkfs.xfs opens every device node it copies, which would open the build host's
//! devices; device nodes are left out of the stage before it runs (systemd mounts
//! a devtmpfs on `/dev`), and the build lists each one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{derived_u32, run_tool, BuildError, BuiltPartition, Options};

/// The oldest xfsprogs whose mkfs populates a filesystem from a directory.
const POPULATE_SINCE: (u32, u32) = (6, 17);
/// Linux 6.1 LTS's mkfs defaults, feature by feature (xfsprogs' `lts_6.1.conf`).
const METADATA_FEATURES: &str =
    "crc=1,finobt=1,inobtcount=1,bigtime=1,reflink=1,rmapbt=0,metadir=0,autofsck=0";
const INODE_FEATURES: &str = "sparse=1,nrext64=0,exchange=0";
const NAMING_FEATURES: &str = "parent=0";

/// The mkfs.xfs to run: `AMIFORGE_MKFS_XFS`, or the one on the PATH.
pub fn mkfs_tool() -> PathBuf {
    std::env::var_os("AMIFORGE_MKFS_XFS").map_or_else(|| PathBuf::from("mkfs.xfs"), PathBuf::from)
}

/// Checks that `tool` is an mkfs.xfs that populates from a directory; its version.
pub fn check_tool(tool: &Path) -> Result<String, BuildError> {
    let output = Command::new(tool)
        .arg("-V")
        .output()
        .map_err(|source| BuildError::Io {
            what: "run (an XFS root needs xfsprogs 6.17 or later; AMIFORGE_MKFS_XFS names its mkfs.xfs)",
            path: tool.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or("")
        .to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < POPULATE_SINCE {
        return Err(BuildError::Options(format!(
            "{} is xfsprogs {}: an XFS root needs xfsprogs {}.{} or later, whose mkfs.xfs populates \
             a filesystem from a directory (set AMIFORGE_MKFS_XFS to one)",
            tool.display(),
            if version.is_empty() { "of unknown version" } else { &version },
            POPULATE_SINCE.0,
            POPULATE_SINCE.1
        )));
    }
    Ok(version)
}

/// Makes the root XFS from `stage` into the partition `root` of the disk (open,
/// and its path); `near` is where the filesystem is made before it is copied.
/// Returns how many inodes [`finish`] changed.
pub fn make(
    stage: &Path,
    (disk, out): (&File, &Path),
    near: &Path,
    root: &BuiltPartition,
    uuid: &str,
    opts: &Options,
) -> Result<u64, BuildError> {
    let tool = mkfs_tool();
    check_tool(&tool)?;
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { what, path, source }
    };
    let fs = tempfile::Builder::new()
        .prefix(".amiforge-root-xfs-")
        .tempfile_in(near)
        .map_err(io("create a file for the root XFS in", near))?;
    fs.as_file()
        .set_len(root.size)
        .map_err(io("size", fs.path()))?;
    let mut cmd = Command::new(&tool);
    cmd.env("SOURCE_DATE_EPOCH", opts.epoch.to_string())
        .args(["-q", "-f", "-L", "root"])
        .arg("-m")
        .arg(format!("uuid={uuid},{METADATA_FEATURES}"))
        .args(["-i", INODE_FEATURES, "-n", NAMING_FEATURES, "-p"])
        .arg(stage)
        .arg(fs.path());
    run_tool("mkfs.xfs", &mut cmd)?;
    let changed = finish(fs.as_file(), fs.path(), &opts.seed, opts.epoch)?;
    copy_data(fs.as_file(), fs.path(), disk, out, root.start)?;
    Ok(changed)
}

/// Copies the data extents of `from` into `to` at `offset`; holes stay holes.
fn copy_data(
    from: &File,
    from_path: &Path,
    to: &File,
    to_path: &Path,
    offset: u64,
) -> Result<(), BuildError> {
    use rustix::fs::SeekFrom;
    let len = from
        .metadata()
        .map_err(|source| BuildError::Io {
            what: "stat",
            path: from_path.to_path_buf(),
            source,
        })?
        .len();
    let failed = |what, path: &Path| {
        let path = path.to_path_buf();
        move |e: rustix::io::Errno| BuildError::Io {
            what,
            path,
            source: e.into(),
        }
    };
    let mut at = 0u64;
    while at < len {
        let start = match rustix::fs::seek(from, SeekFrom::Data(at)) {
            Ok(s) => s,
            // No data after `at`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(failed("find data in", from_path)(e)),
        };
        let end = rustix::fs::seek(from, SeekFrom::Hole(start))
            .map_err(failed("find a hole in", from_path))?
            .min(len);
        let mut src = start;
        let mut dst = offset + start;
        while src < end {
            let want = usize::try_from(end - src).unwrap_or(usize::MAX);
            let n = rustix::fs::copy_file_range(from, Some(&mut src), to, Some(&mut dst), want)
                .map_err(failed("copy the root XFS into", to_path))?;
            if n == 0 {
                return Err(BuildError::Io {
                    what: "copy the root XFS (it ended early) into",
                    path: to_path.to_path_buf(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
        }
        at = end;
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Inodes per inode btree record (a chunk).
const CHUNK_INODES: u64 = 64;
/// Inodes per bit of a sparse chunk's hole mask.
const INODES_PER_HOLE_BIT: u64 = 4;
/// The inode btree of a filesystem mkfs just made is shallow; deeper is damage.
const MAX_INOBT_DEPTH: u32 = 8;
/// v5's short-form btree block header (magic, level, count, siblings, block
/// number, LSN, UUID, owner, CRC); v4's is the first 16 bytes of it.
const BTREE_HEADER_V5: usize = 56;
const BTREE_HEADER_V4: usize = 16;
/// Inode fields (v3 inode core): times, flags2, generation, CRC, creation time.
const DI_ATIME: usize = 0x20;
const DI_MTIME: usize = 0x28;
const DI_CTIME: usize = 0x30;
const DI_GEN: usize = 0x5c;
const DI_CRC: usize = 0x64;
const DI_FLAGS2: usize = 0x78;
const DI_CRTIME: usize = 0x90;
const DIFLAG2_BIGTIME: u64 = 1 << 3;
/// Seconds from the bigtime epoch (1901-12-13) to the Unix epoch.
const BIGTIME_OFFSET: i64 = 1 << 31;

/// The geometry [`finish`] needs.
struct Geometry {
    block: u64,
    sector: u64,
    ag_blocks: u64,
    ag_count: u64,
    inode_size: usize,
    inopb_log: u32,
    agblk_log: u32,
    v5: bool,
}

/// Gives every inode of the XFS in `file` a generation number derived
/// from `seed` and its number, and its times clamped to `epoch` as
/// [`crate::ext4_times`] does; returns how many inodes changed.
pub fn finish(file: &File, path: &Path, seed: &str, epoch: u64) -> Result<u64, BuildError> {
    let read = |buf: &mut [u8], at: u64| read_at(file, path, buf, at);
    let mut sb = [0u8; 512];
    read(&mut sb, 0)?;
    if &sb[..4] != b"XFSB" {
        return Err(bad("no XFS superblock".into()));
    }
    let g = Geometry {
        block: u64::from(be32(&sb, 4)),
        sector: u64::from(be16(&sb, 102)),
        ag_blocks: u64::from(be32(&sb, 84)),
        ag_count: u64::from(be32(&sb, 88)),
        inode_size: usize::from(be16(&sb, 104)),
        inopb_log: u32::from(sb[123]),
        agblk_log: u32::from(sb[124]),
        v5: be16(&sb, 100) & 0xf == 5,
    };
    if !(512..=65536).contains(&g.block)
        || !(512..=32768).contains(&g.sector)
        || !(256..=2048).contains(&g.inode_size)
        || g.inopb_log > 8
        || (g.inode_size as u64) << g.inopb_log != g.block
        || g.agblk_log > 31
        || g.ag_blocks == 0
        || g.ag_blocks > 1 << g.agblk_log
        || !(1..=1 << 16).contains(&g.ag_count)
    {
        return Err(bad("an inconsistent superblock".into()));
    }
    let mut changed = 0;
    for ag in 0..g.ag_count {
        let ag_start = ag * g.ag_blocks * g.block;
        let mut agi = vec![0u8; g.sector as usize];
        read(&mut agi, ag_start + 2 * g.sector)?;
        if &agi[..4] != b"XAGI" {
            return Err(bad(format!("AG {ag} has no AGI")));
        }
        let (root, levels) = (u64::from(be32(&agi, 20)), be32(&agi, 24));
        if levels == 0 || levels > MAX_INOBT_DEPTH {
            return Err(bad(format!("AG {ag}'s inode btree has {levels} levels")));
        }
        let mut chunks = Vec::new();
        inobt(&g, (file, path), ag_start, root, levels, &mut chunks)?;
        for (start, holes) in chunks {
            let first_block = start >> g.inopb_log;
            let blocks = (CHUNK_INODES >> g.inopb_log).max(1);
            if first_block + blocks > g.ag_blocks {
                return Err(bad(format!("AG {ag}: an inode chunk past the AG's end")));
            }
            let at = ag_start + first_block * g.block;
            let mut buf = vec![0u8; (blocks * g.block) as usize];
            read(&mut buf, at)?;
            let mut dirty = false;
            // Free inodes of a chunk got a random generation too, when the chunk
            // was made; only a sparse chunk's holes hold no inodes.
            for i in 0..CHUNK_INODES {
                if holes & (1 << (i / INODES_PER_HOLE_BIT)) != 0 {
                    continue;
                }
                let agino = start + i;
                let number = (ag << (g.agblk_log + g.inopb_log)) | agino;
                let slot = (agino - (first_block << g.inopb_log)) as usize * g.inode_size;
                let Some(raw) = buf.get_mut(slot..slot + g.inode_size) else {
                    continue;
                };
                let generation = derived_u32(seed, &format!("xfs inode {number} generation"));
                if finish_inode(raw, generation, epoch, g.v5) {
                    dirty = true;
                    changed += 1;
                }
            }
            if dirty {
                file.write_all_at(&buf, at)
                    .map_err(|source| BuildError::Io {
                        what: "write",
                        path: path.to_path_buf(),
                        source,
                    })?;
            }
        }
    }
    Ok(changed)
}

/// What mkfs.xfs made that this cannot finish.
fn bad(reason: String) -> BuildError {
    BuildError::Tool {
        tool: "mkfs.xfs",
        status: "wrote".into(),
        stderr: format!("a filesystem amiforge cannot finish: {reason}"),
    }
}

fn read_at(file: &File, path: &Path, buf: &mut [u8], at: u64) -> Result<(), BuildError> {
    file.read_exact_at(buf, at)
        .map_err(|source| BuildError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        })
}

/// The inode chunks under the inode btree block `block` of the AG at byte
/// `ag_start`: (first AG inode, hole mask by 4 inodes).
fn inobt(
    g: &Geometry,
    (file, path): (&File, &Path),
    ag_start: u64,
    block: u64,
    levels: u32,
    out: &mut Vec<(u64, u16)>,
) -> Result<(), BuildError> {
    if block == 0 || block >= g.ag_blocks {
        return Err(bad(format!("an inode btree block at {block}")));
    }
    let mut b = vec![0u8; g.block as usize];
    read_at(file, path, &mut b, ag_start + block * g.block)?;
    let (magic, header) = if g.v5 {
        (b"IAB3", BTREE_HEADER_V5)
    } else {
        (b"IABT", BTREE_HEADER_V4)
    };
    let level = u32::from(be16(&b, 4));
    let count = usize::from(be16(&b, 6));
    if &b[..4] != magic || level + 1 != levels {
        return Err(bad(format!(
            "inode btree block {block} is not level {}",
            levels - 1
        )));
    }
    if level == 0 {
        if header + count * 16 > b.len() {
            return Err(bad(format!(
                "inode btree block {block} holds {count} records"
            )));
        }
        for r in b[header..header + count * 16].chunks_exact(16) {
            // Sparse chunks keep a hole mask where v4 kept a 32-bit free count.
            let holes = if g.v5 { be16(r, 4) } else { 0 };
            out.push((u64::from(be32(r, 0)), holes));
        }
        return Ok(());
    }
    let max = (b.len() - header) / 8;
    if count > max {
        return Err(bad(format!("inode btree block {block} holds {count} keys")));
    }
    for i in 0..count {
        let child = u64::from(be32(&b, header + max * 4 + i * 4));
        inobt(g, (file, path), ag_start, child, levels - 1, out)?;
    }
    Ok(())
}

/// One inode's times (seconds and nanoseconds) as stored: bigtime is a single
/// count of nanoseconds since 1901-12-13, the classic form two 32-bit words.
fn get_time(raw: &[u8], at: usize, bigtime: bool) -> (i64, u32) {
    if bigtime {
        let ns = be64(raw, at);
        (
            (ns / 1_000_000_000) as i64 - BIGTIME_OFFSET,
            (ns % 1_000_000_000) as u32,
        )
    } else {
        (i64::from(be32(raw, at) as i32), be32(raw, at + 4))
    }
}

fn put_time(raw: &mut [u8], at: usize, bigtime: bool, (seconds, nanos): (i64, u32)) {
    if bigtime {
        let ns = (seconds + BIGTIME_OFFSET).max(0) as u64 * 1_000_000_000 + u64::from(nanos);
        raw[at..at + 8].copy_from_slice(&ns.to_be_bytes());
    } else {
        raw[at..at + 4].copy_from_slice(&(seconds as i32).to_be_bytes());
        raw[at + 4..at + 8].copy_from_slice(&nanos.to_be_bytes());
    }
}

/// Sets one inode's generation and clamps its times; whether it changed.
fn finish_inode(raw: &mut [u8], generation: u32, epoch: u64, v5: bool) -> bool {
    if &raw[..2] != b"IN" {
        return false;
    }
    let v3 = v5 && raw[4] == 3;
    let bigtime = v3 && be64(raw, DI_FLAGS2) & DIFLAG2_BIGTIME != 0;
    let epoch = (i64::try_from(epoch).unwrap_or(i64::MAX), 0);
    let mtime = get_time(raw, DI_MTIME, bigtime).min(epoch);
    let before = raw.to_vec();
    raw[DI_GEN..DI_GEN + 4].copy_from_slice(&generation.to_be_bytes());
    for at in [DI_ATIME, DI_MTIME, DI_CTIME] {
        put_time(raw, at, bigtime, mtime);
    }
    if v3 {
        put_time(raw, DI_CRTIME, bigtime, mtime);
    }
    if raw == before.as_slice() {
        return false;
    }
    if v3 {
        // XFS's CRC32C over the whole inode with the CRC field zeroed, stored
        // little-endian.
        raw[DI_CRC..DI_CRC + 4].fill(0);
        const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let crc = CASTAGNOLI.checksum(raw);
        raw[DI_CRC..DI_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_both_forms() {
        let mut raw = vec![0u8; 512];
        for bigtime in [false, true] {
            put_time(&mut raw, DI_MTIME, bigtime, (1_700_000_000, 123));
            assert_eq!(get_time(&raw, DI_MTIME, bigtime), (1_700_000_000, 123));
            put_time(&mut raw, DI_MTIME, bigtime, (-5, 0));
            assert_eq!(get_time(&raw, DI_MTIME, bigtime), (-5, 0));
        }
    }

    #[test]
    fn an_inode_gets_its_generation_and_clamped_times_and_a_valid_crc() {
        let mut raw = vec![0u8; 512];
        raw[..2].copy_from_slice(b"IN");
        raw[4] = 3;
        raw[DI_FLAGS2..DI_FLAGS2 + 8].copy_from_slice(&DIFLAG2_BIGTIME.to_be_bytes());
        put_time(&mut raw, DI_MTIME, true, (2_000_000_000, 5));
        put_time(&mut raw, DI_ATIME, true, (1, 0));
        assert!(finish_inode(&mut raw, 0xdead_beef, 1_700_000_000, true));
        assert_eq!(be32(&raw, DI_GEN), 0xdead_beef);
        for at in [DI_ATIME, DI_MTIME, DI_CTIME, DI_CRTIME] {
            assert_eq!(get_time(&raw, at, true), (1_700_000_000, 0));
        }
        let stored = u32::from_le_bytes(raw[DI_CRC..DI_CRC + 4].try_into().unwrap());
        let mut zeroed = raw.clone();
        zeroed[DI_CRC..DI_CRC + 4].fill(0);
        const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        assert_eq!(CASTAGNOLI.checksum(&zeroed), stored);
        // Done once, nothing changes the second time.
        assert!(!finish_inode(&mut raw, 0xdead_beef, 1_700_000_000, true));
    }
}
