//! XFS, read-only: v4 and v5 superblocks, inodes v1 to v3 (bigtime, NREXT64), data
//! forks in local, extent and btree format, every directory format, symlinks inline
//! and remote, ftype; and what today's mkfs.xfs turns on by default (parent
//! pointers and exchange-range, neither of which changes what this reads).
//!
//! Inodes are found from their numbers (AG, block in the AG, slot), so sparse inode
//! chunks need nothing special. Directories in block, leaf, node or btree format all
//! keep their entries in data blocks below the 32 GiB logical offset where the leaf
//! and free-index blocks begin, so one reader of data blocks serves all four; short
//! form directories live in the inode. Reflinked files read like any other: their
//! extents point at shared blocks. A realtime device or an external log is refused as
//! unsupported rather than misread; a dirty log is said in the notes ([`crate::xfs_log`]). Every count is bounded: extents by the fork's
//! size or the btree's depth, btree depth by [`MAX_BTREE_DEPTH`], a directory by
//! [`MAX_DIR_BYTES`].

use std::io::{self, Read};
use std::sync::Arc;

use blockio::BlockSource;

use crate::{read_at, show, DirEntry, Error, FileKind, Filesystem, FsKind, Metadata, Result};

const KIND: &str = "xfs";
/// A bmap btree deeper than this is damage (XFS's own limit is 9 for 64-bit counts).
const MAX_BTREE_DEPTH: u16 = 10;
/// The most directory data read for one directory: some 600,000 short entries.
const MAX_DIR_BYTES: u64 = 32 << 20;
/// Directories whose entries are kept, so that looking up every file of a big
/// directory reads it once, not once per file.
const DIR_CACHE: usize = 64;
/// The most extents one file may have: far above real files, far below memory.
const MAX_EXTENTS: usize = 4 << 20;
/// The most bmap btree blocks read for one file (a million extents' worth).
const MAX_BTREE_BLOCKS: usize = 1 << 16;
/// Directory data blocks live below this logical byte offset.
const DIR_LEAF_OFFSET: u64 = 32 << 30;
/// More allocation groups than this is damage (a 64 TiB XFS has a few hundred).
const MAX_AGS: u64 = 1 << 16;
/// The most free-space btree blocks read for one volume.
const MAX_FREE_SPACE_BLOCKS: usize = 1 << 20;
/// Symlink targets are at most 1024 bytes.
const MAX_SYMLINK: u64 = 1024;

/// Incompatible features (v5) this reader understands.
const INCOMPAT_FTYPE: u32 = 1;
const INCOMPAT_SPINODES: u32 = 2;
const INCOMPAT_META_UUID: u32 = 4;
const INCOMPAT_BIGTIME: u32 = 8;
const INCOMPAT_NEEDSREPAIR: u32 = 16;
const INCOMPAT_NREXT64: u32 = 32;
/// File range exchanges may be logged: nothing a reader of a clean log sees.
const INCOMPAT_EXCHRANGE: u32 = 64;
/// Parent pointers: extended attributes of every inode naming its parents, in the
/// attribute fork this reader does not read. Directories are as before.
const INCOMPAT_PARENT: u32 = 128;
const KNOWN_INCOMPAT: u32 = INCOMPAT_FTYPE
    | INCOMPAT_SPINODES
    | INCOMPAT_META_UUID
    | INCOMPAT_BIGTIME
    | INCOMPAT_NREXT64
    | INCOMPAT_EXCHRANGE
    | INCOMPAT_PARENT;
/// v4: the ftype bit lives in features2.
const V4_FTYPE: u32 = 0x200;
/// Inode flags2 bits.
const DIFLAG2_BIGTIME: u64 = 1 << 3;
const DIFLAG2_NREXT64: u64 = 1 << 4;
/// Seconds between the bigtime epoch (1901-12-13) and the Unix epoch.
const BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;

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

fn corrupt(path: &[u8], reason: impl Into<String>) -> Error {
    Error::Corrupt {
        kind: KIND,
        path: Some(show(path)),
        reason: reason.into(),
    }
}

/// A mapped run of a file: logical block, disk byte offset, blocks, unwritten.
#[derive(Debug, Clone, Copy)]
struct Extent {
    logical: u64,
    disk: u64,
    len: u64,
    unwritten: bool,
}

/// An inode, parsed.
struct Inode {
    number: u64,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    format: u8,
    /// The data fork's bytes (the literal area up to the attribute fork).
    fork: Vec<u8>,
    extents: u64,
}

impl Inode {
    fn kind(&self) -> FileKind {
        FileKind::from_mode(u32::from(self.mode))
    }
    fn metadata(&self) -> Metadata {
        Metadata {
            kind: self.kind(),
            mode: u32::from(self.mode & 0o7777),
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            mtime: self.mtime,
        }
    }
}

/// An XFS filesystem.
pub struct Xfs {
    source: Arc<dyn BlockSource>,
    block: u64,
    dir_block: u64,
    ag_blocks: u64,
    ag_count: u64,
    sector: u64,
    data_blocks: u64,
    free_blocks: u64,
    ag_block_log: u32,
    inode_size: u64,
    inodes_per_block_log: u32,
    root: u64,
    v5: bool,
    ftype: bool,
    notes: Vec<String>,
    /// The internal log: its first filesystem block and its length in blocks.
    log: (u64, u64),
    /// Directory inode number → its entries (or why they could not be read).
    dirs: std::cell::RefCell<Vec<(u64, DirEntries)>>,
}

/// A directory's entries, shared by the cache.
type DirEntries = std::rc::Rc<std::result::Result<Vec<(Vec<u8>, u64)>, String>>;

impl Xfs {
    /// Opens the XFS on `source`.
    pub fn open(source: Arc<dyn BlockSource>) -> Result<Self> {
        let mut sb = [0u8; 512];
        read_at(&*source, b"(superblock)", &mut sb, 0)?;
        let bad = |reason: String| corrupt(b"(superblock)", reason);
        let unsupported = |reason: String| Error::Unsupported { kind: KIND, reason };
        if &sb[..4] != b"XFSB" {
            return Err(bad("no XFSB magic".into()));
        }
        let block = u64::from(be32(&sb, 4));
        let version = be16(&sb, 100) & 0xf;
        let (inode_size, inodes_per_block) = (u64::from(be16(&sb, 104)), u64::from(be16(&sb, 106)));
        let (block_log, inode_log, inopb_log, agblk_log) = (sb[120], sb[122], sb[123], sb[124]);
        if !(512..=65536).contains(&block) || 1u64 << block_log != block {
            return Err(bad(format!("a block size of {block}")));
        }
        if !(256..=2048).contains(&inode_size)
            || 1u64 << inode_log != inode_size
            || inopb_log > 16
            || 1u64 << inopb_log != inodes_per_block
        {
            return Err(bad(format!(
                "inodes of {inode_size} bytes, {inodes_per_block} per block"
            )));
        }
        if !(4..=5).contains(&version) {
            return Err(unsupported(format!("version {version}")));
        }
        let v5 = version == 5;
        let ag_blocks = u64::from(be32(&sb, 84));
        if ag_blocks == 0 || agblk_log > 31 || ag_blocks > 1 << agblk_log {
            return Err(bad(format!("{ag_blocks} blocks per AG (log {agblk_log})")));
        }
        if be64(&sb, 16) != 0 || be64(&sb, 24) != 0 {
            return Err(unsupported("a realtime device".into()));
        }
        if be64(&sb, 48) == 0 {
            return Err(unsupported("an external log".into()));
        }
        let mut notes = Vec::new();
        let mut ftype = be32(&sb, 200) & V4_FTYPE != 0;
        if v5 {
            // The CRC covers the superblock's whole sector.
            let sect = u64::from(be16(&sb, 102)).clamp(512, 32768);
            let mut copy = vec![0u8; sect as usize];
            read_at(&*source, b"(superblock)", &mut copy, 0)?;
            let crc = u32::from_le_bytes([copy[224], copy[225], copy[226], copy[227]]);
            copy[224..228].fill(0);
            if crc32c(&copy) != crc {
                notes.push("the superblock's CRC does not match: read anyway".into());
            }
            let incompat = be32(&sb, 216);
            if incompat & !(KNOWN_INCOMPAT | INCOMPAT_NEEDSREPAIR) != 0 {
                return Err(unsupported(format!(
                    "incompatible features {:#x}",
                    incompat & !KNOWN_INCOMPAT
                )));
            }
            if incompat & INCOMPAT_NEEDSREPAIR != 0 {
                notes.push("marked as needing repair (xfs_repair)".into());
            }
            ftype = incompat & INCOMPAT_FTYPE != 0;
        }
        let dir_block = block << sb[192].min(16);
        Ok(Self {
            source,
            block,
            dir_block,
            ag_blocks,
            ag_count: u64::from(be32(&sb, 88)),
            sector: u64::from(be16(&sb, 102)).clamp(512, 32768),
            data_blocks: be64(&sb, 8),
            free_blocks: be64(&sb, 144),
            ag_block_log: u32::from(agblk_log),
            inode_size,
            inodes_per_block_log: u32::from(inopb_log),
            root: be64(&sb, 56),
            v5,
            ftype,
            notes,
            log: (be64(&sb, 48), u64::from(be32(&sb, 96))),
            dirs: std::cell::RefCell::new(Vec::new()),
        })
    }

    /// The byte offset of filesystem block `fsblock` (AG number, block in AG).
    fn block_offset(&self, fsblock: u64) -> Option<u64> {
        let ag = fsblock >> self.ag_block_log;
        let in_ag = fsblock & ((1 << self.ag_block_log) - 1);
        if in_ag >= self.ag_blocks {
            return None;
        }
        ag.checked_mul(self.ag_blocks)?
            .checked_add(in_ag)?
            .checked_mul(self.block)
    }

    fn inode(&self, path: &[u8], number: u64) -> Result<Inode> {
        let fsblock = number >> self.inodes_per_block_log;
        let slot = number & ((1 << self.inodes_per_block_log) - 1);
        let at = self
            .block_offset(fsblock)
            .and_then(|b| b.checked_add(slot * self.inode_size))
            .ok_or_else(|| corrupt(path, format!("inode {number} lies outside the filesystem")))?;
        let mut b = vec![0u8; self.inode_size as usize];
        read_at(&*self.source, path, &mut b, at)?;
        if &b[..2] != b"IN" {
            return Err(corrupt(path, format!("inode {number} has no IN magic")));
        }
        let version = b[4];
        let literal = if version == 3 { 176 } else { 100 };
        if version == 3 && self.inode_size < 512 || literal >= b.len() {
            return Err(corrupt(
                path,
                format!(
                    "inode {number}: version {version} in {} bytes",
                    self.inode_size
                ),
            ));
        }
        if version == 3 {
            // A v3 inode checksums itself (CRC-32C with its CRC field as zeros).
            let stored = u32::from_le_bytes([b[100], b[101], b[102], b[103]]);
            let mut copy = b.clone();
            copy[100..104].fill(0);
            if crc32c(&copy) != stored {
                return Err(corrupt(
                    path,
                    format!("inode {number}: its CRC does not match"),
                ));
            }
        }
        let flags2 = if version == 3 { be64(&b, 120) } else { 0 };
        let time = be64(&b, 40);
        let mtime = if flags2 & DIFLAG2_BIGTIME != 0 {
            (time / 1_000_000_000) as i64 - BIGTIME_EPOCH_OFFSET
        } else {
            i64::from(be32(&b, 40) as i32)
        };
        let extents = if flags2 & DIFLAG2_NREXT64 != 0 {
            be64(&b, 24)
        } else {
            u64::from(be32(&b, 76))
        };
        let forkoff = usize::from(b[82]) * 8;
        let end = if forkoff == 0 {
            b.len()
        } else {
            (literal + forkoff).min(b.len())
        };
        Ok(Inode {
            number,
            mode: be16(&b, 2),
            uid: be32(&b, 8),
            gid: be32(&b, 12),
            size: be64(&b, 56),
            mtime,
            format: b[5],
            fork: b[literal..end].to_vec(),
            extents,
        })
    }

    /// The data fork's extents, in logical order.
    fn extents(&self, path: &[u8], inode: &Inode) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        match inode.format {
            2 => {
                let n = inode.extents as usize;
                if n * 16 > inode.fork.len() {
                    return Err(corrupt(
                        path,
                        format!("{n} extents do not fit the inode's fork"),
                    ));
                }
                for rec in inode.fork[..n * 16].chunks_exact(16) {
                    out.push(self.record(rec));
                }
            }
            3 => {
                let f = &inode.fork;
                if f.len() < 4 {
                    return Err(corrupt(path, "a btree root without a header"));
                }
                let (level, count) = (be16(f, 0), usize::from(be16(f, 2)));
                let max = (f.len() - 4) / 16;
                if level == 0 || level > MAX_BTREE_DEPTH || count > max {
                    return Err(corrupt(
                        path,
                        format!("a btree root of level {level} with {count} of {max} pointers"),
                    ));
                }
                let ptrs = 4 + max * 8;
                let mut budget = MAX_BTREE_BLOCKS;
                for i in 0..count {
                    self.btree_block(
                        path,
                        be64(f, ptrs + i * 8),
                        level - 1,
                        &mut out,
                        &mut budget,
                    )?;
                }
            }
            f => {
                return Err(corrupt(
                    path,
                    format!("inode {} has data fork format {f}", inode.number),
                ))
            }
        }
        out.sort_by_key(|e| e.logical);
        Ok(out)
    }

    fn record(&self, rec: &[u8]) -> Extent {
        let hi = be64(rec, 0);
        let lo = be64(rec, 8);
        let logical = (hi & ((1 << 63) - 1)) >> 9;
        let fsblock = ((hi & 0x1ff) << 43) | (lo >> 21);
        Extent {
            logical,
            disk: self.block_offset(fsblock).unwrap_or(u64::MAX),
            len: lo & ((1 << 21) - 1),
            unwritten: hi >> 63 != 0,
        }
    }

    fn btree_block(
        &self,
        path: &[u8],
        fsblock: u64,
        level: u16,
        out: &mut Vec<Extent>,
        budget: &mut usize,
    ) -> Result<()> {
        *budget = budget.checked_sub(1).ok_or_else(|| {
            corrupt(
                path,
                format!("a bmap btree of more than {MAX_BTREE_BLOCKS} blocks"),
            )
        })?;
        let at = self.block_offset(fsblock).ok_or_else(|| {
            corrupt(
                path,
                format!("a btree block {fsblock} outside the filesystem"),
            )
        })?;
        let mut b = vec![0u8; self.block as usize];
        read_at(&*self.source, path, &mut b, at)?;
        let (magic, header) = if self.v5 {
            (b"BMA3", 72)
        } else {
            (b"BMAP", 24)
        };
        if &b[..4] != magic || be16(&b, 4) != level {
            return Err(corrupt(
                path,
                format!("btree block {fsblock} is not a level-{level} bmap block"),
            ));
        }
        if self.v5 && !crc_matches(&b, BMBT_CRC) {
            return Err(corrupt(
                path,
                format!("bmap btree block {fsblock}: its CRC does not match"),
            ));
        }
        let count = usize::from(be16(&b, 6));
        let max = (b.len() - header) / 16;
        if count > max {
            return Err(corrupt(
                path,
                format!("btree block {fsblock} claims {count} records"),
            ));
        }
        if level == 0 {
            for rec in b[header..header + count * 16].chunks_exact(16) {
                if out.len() == MAX_EXTENTS {
                    return Err(corrupt(path, format!("more than {MAX_EXTENTS} extents")));
                }
                out.push(self.record(rec));
            }
        } else {
            let ptrs = header + max * 8;
            for i in 0..count {
                self.btree_block(path, be64(&b, ptrs + i * 8), level - 1, out, budget)?;
            }
        }
        Ok(())
    }

    /// Reads `len` bytes at logical byte `pos` of a file with `extents` into `buf`
    /// (holes and unwritten extents as zeros).
    fn read_mapped(&self, path: &[u8], extents: &[Extent], pos: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = pos + done as u64;
            let block = at / self.block;
            let within = at % self.block;
            let left = buf.len() - done;
            let i = extents.partition_point(|e| e.logical + e.len <= block);
            let n = match extents.get(i) {
                Some(e) if e.logical <= block => {
                    let n =
                        (((e.logical + e.len - block) * self.block - within) as usize).min(left);
                    if e.unwritten {
                        buf[done..done + n].fill(0);
                    } else {
                        let disk = e
                            .disk
                            .checked_add((block - e.logical) * self.block + within);
                        let disk =
                            disk.ok_or_else(|| corrupt(path, "an extent outside the filesystem"))?;
                        read_at(&*self.source, path, &mut buf[done..done + n], disk)?;
                    }
                    n
                }
                next => {
                    let gap = next.map_or(u64::MAX, |e| (e.logical - block) * self.block - within);
                    let n = gap.min(left as u64) as usize;
                    buf[done..done + n].fill(0);
                    n
                }
            };
            done += n;
        }
        Ok(())
    }

    /// A directory's entries: (name, inode number).
    fn entries(&self, path: &[u8], dir: &Inode) -> Result<Vec<(Vec<u8>, u64)>> {
        if dir.kind() != FileKind::Dir {
            return Err(Error::WrongType {
                path: show(path),
                reason: "not a directory",
            });
        }
        let cached = self
            .dirs
            .borrow()
            .iter()
            .find(|(n, _)| *n == dir.number)
            .map(|(_, e)| e.clone());
        let entries = match cached {
            Some(e) => e,
            None => {
                let e = std::rc::Rc::new(self.read_entries(path, dir).map_err(|e| e.to_string()));
                let mut dirs = self.dirs.borrow_mut();
                if dirs.len() == DIR_CACHE {
                    dirs.remove(0);
                }
                dirs.push((dir.number, e.clone()));
                e
            }
        };
        match &*entries {
            Ok(list) => Ok(list.clone()),
            Err(why) => Err(corrupt(path, why.clone())),
        }
    }

    fn read_entries(&self, path: &[u8], dir: &Inode) -> Result<Vec<(Vec<u8>, u64)>> {
        if dir.format == 1 {
            return self.short_form(path, &dir.fork);
        }
        let extents = self.extents(path, dir)?;
        let mut out = Vec::new();
        let mut read = 0u64;
        let per_dir_block = (self.dir_block / self.block).max(1);
        let mut last: Option<u64> = None;
        'extents: for e in &extents {
            let first = e.logical / per_dir_block;
            let final_ = (e.logical + e.len.max(1) - 1) / per_dir_block;
            for d in first..=final_ {
                if last.is_some_and(|l| d <= l) {
                    continue;
                }
                last = Some(d);
                let at = d * self.dir_block;
                if at >= DIR_LEAF_OFFSET {
                    break 'extents;
                }
                read += self.dir_block;
                if read > MAX_DIR_BYTES {
                    return Err(corrupt(
                        path,
                        format!("a directory of more than {MAX_DIR_BYTES} bytes"),
                    ));
                }
                let mut b = vec![0u8; self.dir_block as usize];
                self.read_mapped(path, &extents, at, &mut b)?;
                self.data_block(path, &b, &mut out)?;
            }
        }
        Ok(out)
    }

    fn short_form(&self, path: &[u8], f: &[u8]) -> Result<Vec<(Vec<u8>, u64)>> {
        let short = || corrupt(path, "a short-form directory cut short");
        let (count, i8) = (*f.first().ok_or_else(short)?, *f.get(1).ok_or_else(short)?);
        let ino_len = if i8 > 0 { 8 } else { 4 };
        let mut pos = 2 + ino_len;
        let mut out = Vec::new();
        for _ in 0..count.max(i8) {
            let namelen = usize::from(*f.get(pos).ok_or_else(short)?);
            let name_at = pos + 3;
            let ino_at = name_at + namelen + usize::from(self.ftype);
            let ino = f.get(ino_at..ino_at + ino_len).ok_or_else(short)?;
            let number = if ino_len == 8 {
                be64(ino, 0)
            } else {
                u64::from(be32(ino, 0))
            };
            out.push((f[name_at..name_at + namelen].to_vec(), number));
            pos = ino_at + ino_len;
        }
        Ok(out)
    }

    fn data_block(&self, path: &[u8], b: &[u8], out: &mut Vec<(Vec<u8>, u64)>) -> Result<()> {
        let magic = &b[..4];
        let (single, header) = match magic {
            b"XD2B" => (true, 16),
            b"XD2D" => (false, 16),
            b"XDB3" => (true, 64),
            b"XDD3" => (false, 64),
            // A free-index or leaf block below the leaf offset would be damage; a
            // block of zeros is a hole in the directory.
            _ if b.iter().all(|&x| x == 0) => return Ok(()),
            _ => {
                return Err(corrupt(
                    path,
                    format!("a directory block with magic {magic:02x?}"),
                ))
            }
        };
        if header == 64 && !crc_matches(b, DIR3_CRC) {
            return Err(corrupt(
                path,
                "a directory data block whose CRC does not match",
            ));
        }
        let end = if single {
            // The block tail: the leaf entries' count, then the stale count.
            let count = be32(b, b.len() - 8) as usize;
            b.len()
                .checked_sub(8 + count * 8)
                .filter(|&e| e >= header)
                .ok_or_else(|| corrupt(path, "a directory block whose leaf fills it"))?
        } else {
            b.len()
        };
        let mut pos = header;
        while pos + 8 <= end {
            if be16(b, pos) == 0xffff {
                let len = usize::from(be16(b, pos + 2));
                if len < 8 || len % 8 != 0 {
                    return Err(corrupt(
                        path,
                        format!("a free directory entry of {len} bytes"),
                    ));
                }
                pos += len;
                continue;
            }
            let number = be64(b, pos);
            let namelen = usize::from(
                *b.get(pos + 8)
                    .ok_or_else(|| corrupt(path, "an entry past the block"))?,
            );
            let name = b
                .get(pos + 9..pos + 9 + namelen)
                .ok_or_else(|| corrupt(path, "a name past the block"))?;
            if name != b"." && name != b".." {
                out.push((name.to_vec(), number));
            }
            pos += (8 + 1 + namelen + usize::from(self.ftype) + 2).next_multiple_of(8);
        }
        Ok(())
    }

    /// The inode at `path`, following no symlink; `None` when a component on the way
    /// is a symlink or "..", which the resolver handles.
    fn walk(&self, path: &[u8]) -> Result<Option<Inode>> {
        let mut inode = self.inode(path, self.root)?;
        for part in path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            match inode.kind() {
                FileKind::Dir => {}
                FileKind::Symlink => return Ok(None),
                _ => {
                    return Err(Error::WrongType {
                        path: show(path),
                        reason: "not a directory",
                    })
                }
            }
            if part == b".." {
                return Ok(None);
            }
            let number = self
                .entries(path, &inode)?
                .into_iter()
                .find(|(name, _)| name == part)
                .map(|(_, n)| n)
                .ok_or_else(|| Error::NotFound { path: show(path) })?;
            inode = self.inode(path, number)?;
        }
        Ok(Some(inode))
    }

    fn lstat(&self, path: &[u8]) -> Result<Inode> {
        crate::lstat_with(self, path, |p| self.walk(p))
    }

    /// What the superblock counts: (data blocks, free blocks, block size).
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (self.data_blocks, self.free_blocks, self.block)
    }

    /// The free space of every AG, as byte ranges from the volume's start: the
    /// records of each AG's by-block free-space btree (the AGF's bnobt), and the
    /// blocks on its free list.
    pub(crate) fn free_space(&self) -> Result<Vec<std::ops::Range<u64>>> {
        let path = b"(free space btree)";
        if self.ag_count == 0 || self.ag_count > MAX_AGS {
            return Err(corrupt(
                path,
                format!("{} allocation groups", self.ag_count),
            ));
        }
        let mut out = Vec::new();
        let mut budget = MAX_FREE_SPACE_BLOCKS;
        for ag in 0..self.ag_count {
            let ag_start = ag * self.ag_blocks * self.block;
            let mut agf = vec![0u8; self.sector as usize];
            read_at(&*self.source, path, &mut agf, ag_start + self.sector)?;
            if &agf[..4] != b"XAGF" {
                return Err(corrupt(path, format!("AG {ag}'s AGF has no XAGF magic")));
            }
            let length = u64::from(be32(&agf, 12)).min(self.ag_blocks);
            let (root, levels) = (u64::from(be32(&agf, 16)), be32(&agf, 28));
            if levels == 0 || levels > u32::from(MAX_BTREE_DEPTH) {
                return Err(corrupt(
                    path,
                    format!("AG {ag}: a bnobt of {levels} levels"),
                ));
            }
            self.free_block(ag, length, root, levels as u16 - 1, &mut out, &mut budget)?;
            self.free_list(ag, length, &agf, &mut out)?;
        }
        out.sort_by_key(|r| r.start);
        Ok(out)
    }

    /// The AG's free list (AGFL): free blocks set aside for the btrees to grow
    /// into, counted as free as xfs_db's freesp counts them.
    fn free_list(
        &self,
        ag: u64,
        length: u64,
        agf: &[u8],
        out: &mut Vec<std::ops::Range<u64>>,
    ) -> Result<()> {
        let path = b"(free list)";
        let (first, count) = (u64::from(be32(agf, 40)), u64::from(be32(agf, 48)));
        if count == 0 {
            return Ok(());
        }
        let ag_start = ag * self.ag_blocks;
        let mut agfl = vec![0u8; self.sector as usize];
        read_at(
            &*self.source,
            path,
            &mut agfl,
            ag_start * self.block + 3 * self.sector,
        )?;
        let header = if self.v5 {
            if &agfl[..4] != b"XAFL" {
                return Err(corrupt(path, format!("AG {ag}'s AGFL has no XAFL magic")));
            }
            36
        } else {
            0
        };
        let slots = (agfl.len() - header) as u64 / 4;
        if first >= slots || count > slots {
            return Err(corrupt(
                path,
                format!("AG {ag}: {count} free-list blocks from slot {first} of {slots}"),
            ));
        }
        for i in 0..count {
            let slot = ((first + i) % slots) as usize;
            let agbno = u64::from(be32(&agfl, header + slot * 4));
            if agbno >= length {
                return Err(corrupt(
                    path,
                    format!("AG {ag}: a free-list block at {agbno}"),
                ));
            }
            out.push((ag_start + agbno) * self.block..(ag_start + agbno + 1) * self.block);
        }
        Ok(())
    }

    fn free_block(
        &self,
        ag: u64,
        length: u64,
        agbno: u64,
        level: u16,
        out: &mut Vec<std::ops::Range<u64>>,
        budget: &mut usize,
    ) -> Result<()> {
        let path = b"(free space btree)";
        *budget = budget.checked_sub(1).ok_or_else(|| {
            corrupt(
                path,
                format!("free-space btrees of more than {MAX_FREE_SPACE_BLOCKS} blocks"),
            )
        })?;
        if agbno >= length {
            return Err(corrupt(path, format!("AG {ag}: a bnobt block at {agbno}")));
        }
        let ag_start = ag * self.ag_blocks;
        let mut b = vec![0u8; self.block as usize];
        read_at(&*self.source, path, &mut b, (ag_start + agbno) * self.block)?;
        let (magic, header) = if self.v5 {
            (b"AB3B", 56)
        } else {
            (b"ABTB", 16)
        };
        if &b[..4] != magic || be16(&b, 4) != level {
            return Err(corrupt(
                path,
                format!("AG {ag}: block {agbno} is not a level-{level} bnobt block"),
            ));
        }
        let count = usize::from(be16(&b, 6));
        let max = (b.len() - header) / if level == 0 { 8 } else { 12 };
        if count > max {
            return Err(corrupt(
                path,
                format!("AG {ag}: bnobt block {agbno} claims {count} records"),
            ));
        }
        if level == 0 {
            for rec in b[header..header + count * 8].chunks_exact(8) {
                let (start, len) = (u64::from(be32(rec, 0)), u64::from(be32(rec, 4)));
                if start + len > length {
                    return Err(corrupt(
                        path,
                        format!("AG {ag}: free extent {start}+{len} past the AG's {length} blocks"),
                    ));
                }
                out.push((ag_start + start) * self.block..(ag_start + start + len) * self.block);
            }
            return Ok(());
        }
        let ptrs = header + max * 8;
        for i in 0..count {
            let child = u64::from(be32(&b, ptrs + i * 4));
            self.free_block(ag, length, child, level - 1, out, budget)?;
        }
        Ok(())
    }
}

impl Filesystem for Xfs {
    fn kind(&self) -> FsKind {
        FsKind::Xfs
    }

    /// The notes of opening, and whether the log is clean: looked at here, when a
    /// report asks, not at every open (the audit opens a volume once per worker).
    fn notes(&self) -> Vec<String> {
        let mut notes = self.notes.clone();
        let (start, blocks) = self.log;
        let Some(at) = self.block_offset(start) else {
            notes.push(format!("the log's start (block {start}) is out of range"));
            return notes;
        };
        match crate::xfs_log::state(&*self.source, at, blocks * self.block / 512) {
            crate::xfs_log::LogState::Clean => {}
            crate::xfs_log::LogState::Dirty => notes.push(
                "the log is dirty (not unmounted cleanly): changes still in it are not \
                 seen; mounting the filesystem or xfs_repair would replay them"
                    .into(),
            ),
            crate::xfs_log::LogState::Unknown(why) => {
                notes.push(format!("whether the log is clean is unknown: {why}"))
            }
        }
        notes
    }

    fn metadata(&self, path: &[u8]) -> Result<Metadata> {
        Ok(self.lstat(path)?.metadata())
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>> {
        let resolved = crate::resolve(self, path)?;
        let dir = self.lstat(&resolved)?;
        self.entries(path, &dir)?
            .into_iter()
            .map(|(name, number)| {
                Ok(DirEntry {
                    metadata: self.inode(path, number)?.metadata(),
                    name,
                })
            })
            .collect()
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        let inode = self.lstat(path)?;
        if inode.kind() != FileKind::Symlink {
            return Err(Error::WrongType {
                path: show(path),
                reason: "not a symlink",
            });
        }
        if inode.size > MAX_SYMLINK {
            return Err(corrupt(path, format!("a symlink of {} bytes", inode.size)));
        }
        let n = inode.size as usize;
        if inode.format == 1 {
            return inode
                .fork
                .get(..n)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| corrupt(path, "an inline symlink past its fork"));
        }
        // Remote: on v5 each block starts with a header ("XSLM"). mkfs.xfs -p of
        // xfsprogs 6.1 writes the target without one; it is read as it is.
        let extents = self.extents(path, &inode)?;
        let mut out = Vec::with_capacity(n);
        let mut block = 0u64;
        while out.len() < n {
            let mut b = vec![0u8; self.block as usize];
            self.read_mapped(path, &extents, block * self.block, &mut b)?;
            let header = if self.v5 && &b[..4] == b"XSLM" { 56 } else { 0 };
            let take = (self.block as usize - header).min(n - out.len());
            out.extend_from_slice(&b[header..header + take]);
            block += 1;
        }
        Ok(out)
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        let resolved = crate::resolve(self, path)?;
        self.open_walked(&resolved)
    }

    fn open_walked(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        let inode = self.lstat(path)?;
        match inode.kind() {
            FileKind::File => {}
            FileKind::Dir => {
                return Err(Error::WrongType {
                    path: show(path),
                    reason: "is a directory",
                })
            }
            _ => {
                return Err(Error::WrongType {
                    path: show(path),
                    reason: "not a regular file",
                })
            }
        }
        let extents = if inode.format == 1 {
            Vec::new()
        } else {
            self.extents(path, &inode)?
        };
        Ok(Box::new(XfsFile {
            fs: self,
            path: path.to_vec(),
            inline: (inode.format == 1).then(|| inode.fork.clone()),
            extents,
            size: inode.size,
            pos: 0,
        }))
    }
}

/// A regular file's bytes.
struct XfsFile<'a> {
    fs: &'a Xfs,
    path: Vec<u8>,
    inline: Option<Vec<u8>>,
    extents: Vec<Extent>,
    size: u64,
    pos: u64,
}

impl Read for XfsFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        if let Some(data) = &self.inline {
            let from = self.pos as usize;
            let part = data.get(from..from + n).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "inline data past the fork")
            })?;
            buf[..n].copy_from_slice(part);
        } else {
            self.fs
                .read_mapped(&self.path, &self.extents, self.pos, &mut buf[..n])
                .map_err(io::Error::other)?;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// CRC-32C (Castagnoli), as XFS checksums its v5 metadata.
/// Where v5 metadata blocks keep their CRC: a bmap btree block's long-form header,
/// and a directory block's header.
const BMBT_CRC: usize = 64;
const DIR3_CRC: usize = 4;

/// Whether the CRC-32C stored little-endian at `at` in `b` is that of `b` with
/// those four bytes as zeros, as every v5 metadata block is checksummed.
fn crc_matches(b: &[u8], at: usize) -> bool {
    let Some(stored) = b.get(at..at + 4) else {
        return false;
    };
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut digest = CASTAGNOLI.digest();
    digest.update(&b[..at]);
    digest.update(&[0; 4]);
    digest.update(&b[at + 4..]);
    digest.finalize() == stored
}

fn crc32c(bytes: &[u8]) -> u32 {
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    CASTAGNOLI.checksum(bytes)
}
