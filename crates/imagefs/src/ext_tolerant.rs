//! ext2/3/4 read by amiforge's own reader, for the layouts the kernel reads and
//! `ext4-view` refuses: 128-byte inodes on a metadata_csum volume, directory entries
//! without a file type (ext2 made without `filetype`, old roots upgraded in place),
//! inline data, meta_bg, MMP, ea_inode and largedir, and a journal that needs a
//! replay `ext4-view` cannot do. [`crate::ext4`] routes a volume here only when
//! `ext4-view` would refuse it, so the common case keeps its checksum verification
//! and journal replay.
//!
//! This reader verifies no checksums and replays no journal; what it could not do
//! is said in [`TolerantExt::notes`]. Every count and offset read from the volume is
//! bounded before it is used: no hostile value makes it allocate without bound,
//! loop, or read outside the source.

use crate::{show, DirEntry, Error, FileKind, Filesystem, FsKind, Metadata, Result};
use blockio::BlockSource;
use std::io::{self, Read};
use std::sync::Arc;

/// Where the superblock lives, whatever the block size.
const SUPERBLOCK: u64 = 1024;
const MAGIC: u16 = 0xef53;
const ROOT_INODE: u32 = 2;

/// s_feature_compat: sparse_super2 keeps at most two backup superblocks.
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
/// s_feature_ro_compat: superblock backups only in groups 0, 1 and powers of 3, 5, 7.
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
/// s_feature_ro_compat: blocks allocated in clusters.
const RO_COMPAT_BIGALLOC: u32 = 0x200;
/// s_feature_ro_compat: CRC32C checksums on metadata (inodes, directory blocks...).
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// The tail a directory leaf block ends with on a metadata_csum volume: a 12-byte
/// entry of inode 0, name length 0 and file type 0xde, holding the block's checksum.
const DIR_TAIL_LEN: usize = 12;
const DIR_TAIL_FILE_TYPE: u8 = 0xde;

/// s_feature_incompat bits.
pub(crate) const INCOMPAT_COMPRESSION: u32 = 0x1;
pub(crate) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(crate) const INCOMPAT_RECOVER: u32 = 0x4;
pub(crate) const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub(crate) const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
pub(crate) const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(crate) const INCOMPAT_EA_INODE: u32 = 0x400;
pub(crate) const INCOMPAT_DIRDATA: u32 = 0x1000;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(crate) const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub(crate) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const INCOMPAT_ENCRYPT: u32 = 0x10000;
const INCOMPAT_CASEFOLD: u32 = 0x20000;
/// What this reader understands. Compression and Lustre's dirdata are refused, and a
/// journal device holds no files.
const INCOMPAT_READABLE: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;

/// i_flags bits.
const FLAG_ENCRYPT: u32 = 0x800;
const FLAG_EXTENTS: u32 = 0x80000;
const FLAG_INLINE_DATA: u32 = 0x1000_0000;

/// The inode's block map or extent root, and where inline data starts.
const I_BLOCK: usize = 0x28;
const I_BLOCK_LEN: usize = 60;
/// Fields past the 128-byte base inode start here.
const BASE_INODE: usize = 128;
const EXTENT_MAGIC: u16 = 0xf30a;
/// The kernel's limit on extent tree depth (EXT4_MAX_EXTENT_DEPTH).
const MAX_EXTENT_DEPTH: u16 = 5;
/// An extent longer than this is unwritten (preallocated): it reads as zeros.
const EXTENT_INIT_MAX: u16 = 32768;
/// In-inode extended attributes start with this magic.
const XATTR_MAGIC: u32 = 0xea02_0000;
/// Inline data beyond i_block lives in the "system.data" attribute.
const XATTR_INDEX_SYSTEM: u8 = 7;

/// Most runs a file may map to. A real file has few; a hostile one is refused
/// before its map outgrows memory.
const MAX_RUNS: usize = 1 << 22;
/// Largest directory read whole (a largedir of several million entries fits).
const MAX_DIR_BYTES: u64 = 256 << 20;
/// Largest group descriptor table loaded: 64 MiB holds a million groups.
const MAX_DESCRIPTOR_BYTES: u64 = 64 << 20;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The superblock fields this reader uses.
#[derive(Debug, Clone)]
pub(crate) struct Superblock {
    pub block_size: u64,
    pub blocks: u64,
    pub inodes: u64,
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    pub inodes_per_group: u64,
    pub inode_size: u64,
    pub desc_size: u64,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub first_meta_bg: u64,
    pub backup_groups: [u64; 2],
    /// The seed of every metadata checksum, on a metadata_csum volume.
    pub csum_seed: Option<u32>,
}

impl Superblock {
    /// Parses and bounds the superblock (1024 bytes at byte 1024).
    pub(crate) fn parse(sb: &[u8]) -> std::result::Result<Self, String> {
        if sb.len() < 1024 || le16(sb, 0x38) != MAGIC {
            return Err("no ext superblock magic".into());
        }
        let log = le32(sb, 0x18);
        if log > 6 {
            return Err(format!("block size 2^(10+{log}) is impossible"));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(sb, 0x60);
        let is_64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks = u64::from(le32(sb, 0x04));
        if is_64 {
            blocks |= u64::from(le32(sb, 0x150)) << 32;
        }
        let rev = le32(sb, 0x4c);
        let inode_size = if rev == 0 {
            128
        } else {
            u64::from(le16(sb, 0x58))
        };
        if !inode_size.is_power_of_two() || inode_size < 128 || inode_size > block_size {
            return Err(format!("inode size {inode_size}"));
        }
        let desc_size = if is_64 { u64::from(le16(sb, 0xfe)) } else { 32 };
        if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return Err(format!("group descriptor size {desc_size}"));
        }
        let blocks_per_group = u64::from(le32(sb, 0x20));
        let inodes_per_group = u64::from(le32(sb, 0x28));
        if blocks_per_group == 0 || blocks_per_group > block_size * 8 {
            return Err(format!("{blocks_per_group} blocks per group"));
        }
        if inodes_per_group == 0 || inodes_per_group > block_size * 8 {
            return Err(format!("{inodes_per_group} inodes per group"));
        }
        let first_data_block = u64::from(le32(sb, 0x14));
        if first_data_block >= blocks {
            return Err(format!(
                "first data block {first_data_block} of {blocks} blocks"
            ));
        }
        Ok(Self {
            block_size,
            blocks,
            inodes: u64::from(le32(sb, 0x00)),
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inode_size,
            desc_size,
            compat: le32(sb, 0x5c),
            incompat,
            ro_compat: le32(sb, 0x64),
            first_meta_bg: u64::from(le32(sb, 0x104)),
            backup_groups: [u64::from(le32(sb, 0x24c)), u64::from(le32(sb, 0x250))],
            csum_seed: (le32(sb, 0x64) & RO_COMPAT_METADATA_CSUM != 0).then(|| {
                if incompat & INCOMPAT_CSUM_SEED != 0 {
                    le32(sb, 0x270)
                } else {
                    ext4_crc32c(!0, &[&sb[0x68..0x78]])
                }
            }),
        })
    }

    fn groups(&self) -> u64 {
        (self.blocks - self.first_data_block).div_ceil(self.blocks_per_group)
    }

    /// Whether group `g` holds a superblock backup (and so its descriptors follow it).
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return self.backup_groups.contains(&g);
        }
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g == 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut p = base;
            while p < g {
                p *= base;
            }
            p == g
        })
    }

    /// The block holding descriptor block `nr` (the kernel's descriptor_loc).
    fn descriptor_block(&self, nr: u64) -> u64 {
        if self.incompat & INCOMPAT_META_BG == 0 || nr < self.first_meta_bg {
            return self.first_data_block + 1 + nr;
        }
        let group = nr * (self.block_size / self.desc_size);
        self.first_data_block + group * self.blocks_per_group + u64::from(self.has_super(group))
    }
}

/// One inode, as far as reading needs it.
#[derive(Debug, Clone)]
struct Inode {
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    flags: u32,
    raw: Vec<u8>,
}

impl Inode {
    /// The seed of this inode's checksums (and its directory blocks'): the
    /// volume's seed, then the inode's number and generation.
    fn csum_seed(&self, volume_seed: u32, number: u32) -> u32 {
        let generation = &self.raw[0x64..0x68];
        ext4_crc32c(volume_seed, &[&number.to_le_bytes(), generation])
    }

    fn kind(&self) -> FileKind {
        match self.mode & 0xf000 {
            0x4000 => FileKind::Dir,
            0xa000 => FileKind::Symlink,
            0x2000 => FileKind::CharDevice,
            0x6000 => FileKind::BlockDevice,
            0x1000 => FileKind::Fifo,
            0xc000 => FileKind::Socket,
            _ => FileKind::File,
        }
    }

    fn metadata(&self) -> Metadata {
        Metadata {
            kind: self.kind(),
            mode: u32::from(self.mode) & 0o7777,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            mtime: self.mtime,
        }
    }

    fn i_block(&self) -> &[u8] {
        &self.raw[I_BLOCK..I_BLOCK + I_BLOCK_LEN]
    }
}

/// A mapped piece of a file: `len` blocks from logical block `logical` at physical
/// block `physical`; unwritten extents read as zeros.
#[derive(Debug, Clone, Copy)]
struct Run {
    logical: u64,
    physical: u64,
    len: u64,
    zeros: bool,
}

/// An ext2/3/4 volume read by amiforge's own reader.
pub(crate) struct TolerantExt {
    source: Arc<dyn BlockSource>,
    sb: Superblock,
    kind: FsKind,
    /// Each group's inode table block.
    inode_tables: Vec<u64>,
    notes: Vec<String>,
    /// The directories looked in last: inode number → name → inode number, so that
    /// opening the files of one directory in turn parses it once, not once a file.
    dirs: std::cell::RefCell<std::collections::VecDeque<(u32, Arc<Directory>)>>,
}

/// A directory's entries by name.
type Directory = std::collections::HashMap<Vec<u8>, u32>;

/// Directories kept parsed: enough for the components of the paths being opened.
const DIRS_KEPT: usize = 32;

fn corrupt(kind: FsKind, path: Option<&[u8]>, reason: String) -> Error {
    Error::Corrupt {
        kind: kind.name(),
        path: path.map(show),
        reason,
    }
}

/// Checks a directory leaf block's checksum, kept in the 12-byte entry it ends
/// with; a block without one (an htree index block) is left to the parser.
fn verify_dir_block(kind: FsKind, path: &[u8], block: &[u8], seed: u32) -> Result<()> {
    let Some(tail_at) = block.len().checked_sub(DIR_TAIL_LEN) else {
        return Ok(());
    };
    let tail = &block[tail_at..];
    let is_tail = le32(tail, 0) == 0
        && usize::from(le16(tail, 4)) == DIR_TAIL_LEN
        && tail[6] == 0
        && tail[7] == DIR_TAIL_FILE_TYPE;
    if !is_tail {
        return Ok(());
    }
    let stored = le32(tail, 8);
    let csum = ext4_crc32c(seed, &[&block[..tail_at]]);
    if csum != stored {
        return Err(corrupt(
            kind,
            Some(path),
            format!("directory block checksum {stored:#x} is not {csum:#x}"),
        ));
    }
    Ok(())
}

/// ext4's metadata checksum: CRC32C (Castagnoli) of `parts` from `seed`, with no
/// final inversion (the kernel's `ext4_chksum`).
fn ext4_crc32c(seed: u32, parts: &[&[u8]]) -> u32 {
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    // The crc crate takes the register reflected and inverts the result.
    let mut digest = CASTAGNOLI.digest_with_initial(seed.reverse_bits());
    for part in parts {
        digest.update(part);
    }
    !digest.finalize()
}

impl TolerantExt {
    /// Opens the volume; `why` says why `ext4-view` was not used, for the notes.
    pub(crate) fn open(source: Arc<dyn BlockSource>, kind: FsKind, why: String) -> Result<Self> {
        let mut raw = vec![0u8; 1024];
        source
            .read_exact_at(&mut raw, SUPERBLOCK)
            .map_err(|e| Error::Read {
                path: "(superblock)".into(),
                source: Box::new(e),
            })?;
        let sb = Superblock::parse(&raw).map_err(|r| corrupt(kind, None, r))?;
        let refused = sb.incompat & !INCOMPAT_READABLE;
        if refused != 0 {
            let named = [
                (INCOMPAT_COMPRESSION, "compression"),
                (
                    INCOMPAT_JOURNAL_DEV,
                    "journal_dev (an external journal, no files)",
                ),
                (INCOMPAT_DIRDATA, "dirdata"),
            ];
            let mut names: Vec<String> = named
                .iter()
                .filter(|(bit, _)| refused & bit != 0)
                .map(|(_, n)| n.to_string())
                .collect();
            let unknown = named.iter().fold(refused, |left, (bit, _)| left & !bit);
            if unknown != 0 {
                names.push(format!("unknown incompatible features {unknown:#x}"));
            }
            return Err(Error::Unsupported {
                kind: kind.name(),
                reason: names.join(", "),
            });
        }
        let groups = sb.groups();
        let table_bytes = groups.saturating_mul(sb.desc_size);
        if table_bytes > MAX_DESCRIPTOR_BYTES {
            return Err(corrupt(
                kind,
                None,
                format!("{groups} block groups (a descriptor table of {table_bytes} bytes)"),
            ));
        }
        let per_block = sb.block_size / sb.desc_size;
        let mut inode_tables = Vec::with_capacity(groups as usize);
        let mut block = vec![0u8; sb.block_size as usize];
        for nr in 0..groups.div_ceil(per_block) {
            let at = sb.descriptor_block(nr);
            source
                .read_exact_at(&mut block, at * sb.block_size)
                .map_err(|e| Error::Read {
                    path: format!("(group descriptors at block {at})"),
                    source: Box::new(e),
                })?;
            for d in block.chunks_exact(sb.desc_size as usize) {
                if inode_tables.len() as u64 == groups {
                    break;
                }
                let mut table = u64::from(le32(d, 0x8));
                if sb.desc_size >= 64 {
                    table |= u64::from(le32(d, 0x28)) << 32;
                }
                inode_tables.push(table);
            }
        }
        let mut notes = vec![format!("read by amiforge's own ext reader: {why}")];
        if sb.incompat & INCOMPAT_RECOVER != 0 {
            notes.push(
                "the journal needs recovery and was not replayed: the newest changes may be missing"
                    .into(),
            );
        }
        notes.push("metadata checksums are not verified by this reader".into());
        Ok(Self {
            source,
            sb,
            kind,
            inode_tables,
            notes,
            dirs: Default::default(),
        })
    }

    /// Whether this reader gives the bytes ext4-view would for every file of the
    /// volume, so that it may stand in for it: no journal to replay, no bigalloc.
    pub(crate) fn reads_like_ext4_view(&self) -> bool {
        self.sb.incompat & INCOMPAT_RECOVER == 0 && self.sb.ro_compat & RO_COMPAT_BIGALLOC == 0
    }

    /// The inode number of `name` in the directory `number` (`dir`), parsing the
    /// directory once for the next lookups in it.
    fn child(&self, path: &[u8], number: u32, dir: &Inode, name: &[u8]) -> Result<u32> {
        let kept = self
            .dirs
            .borrow()
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, d)| d.clone());
        let entries = match kept {
            Some(d) => d,
            None => {
                let d: Arc<Directory> =
                    Arc::new(self.entries(path, dir, None)?.into_iter().collect());
                let mut dirs = self.dirs.borrow_mut();
                if dirs.len() == DIRS_KEPT {
                    dirs.pop_front();
                }
                dirs.push_back((number, d.clone()));
                d
            }
        };
        entries
            .get(name)
            .copied()
            .ok_or_else(|| Error::NotFound { path: show(path) })
    }

    fn read(&self, path: &[u8], buf: &mut [u8], offset: u64) -> Result<()> {
        crate::read_at(&*self.source, path, buf, offset)
    }

    fn inode(&self, path: &[u8], number: u32) -> Result<Inode> {
        let n = u64::from(number);
        if n == 0 || n > self.sb.inodes {
            return Err(corrupt(
                self.kind,
                Some(path),
                format!("inode {number} is outside 1..={}", self.sb.inodes),
            ));
        }
        let group = (n - 1) / self.sb.inodes_per_group;
        let index = (n - 1) % self.sb.inodes_per_group;
        let table = *self.inode_tables.get(group as usize).ok_or_else(|| {
            corrupt(
                self.kind,
                Some(path),
                format!("inode {number} is in group {group}, past the last group"),
            )
        })?;
        let mut raw = vec![0u8; self.sb.inode_size as usize];
        let offset = table
            .checked_mul(self.sb.block_size)
            .and_then(|o| o.checked_add(index * self.sb.inode_size))
            .ok_or_else(|| {
                corrupt(
                    self.kind,
                    Some(path),
                    format!("inode table of group {group}"),
                )
            })?;
        self.read(path, &mut raw, offset)?;
        let extra = if raw.len() > BASE_INODE {
            usize::from(le16(&raw, 0x80))
        } else {
            0
        };
        let mut mtime = i64::from(le32(&raw, 0x10) as i32);
        // i_mtime_extra's two low bits extend the seconds past 2038.
        if extra >= 0x0c && raw.len() >= 0x8c {
            mtime += i64::from(le32(&raw, 0x88) & 3) << 32;
        }
        Ok(Inode {
            mode: le16(&raw, 0x00),
            uid: u32::from(le16(&raw, 0x02)) | u32::from(le16(&raw, 0x78)) << 16,
            gid: u32::from(le16(&raw, 0x18)) | u32::from(le16(&raw, 0x7a)) << 16,
            size: u64::from(le32(&raw, 0x04)) | u64::from(le32(&raw, 0x6c)) << 32,
            mtime,
            flags: le32(&raw, 0x20),
            raw,
        })
    }

    /// The value of the in-inode "system.data" attribute: inline data past i_block.
    fn inline_tail<'a>(&self, inode: &'a Inode) -> &'a [u8] {
        let raw = &inode.raw;
        if raw.len() <= BASE_INODE + 4 {
            return &[];
        }
        let start = BASE_INODE + usize::from(le16(raw, 0x80));
        if start + 4 > raw.len() || le32(raw, start) != XATTR_MAGIC {
            return &[];
        }
        let entries = start + 4;
        let mut at = entries;
        while at + 16 <= raw.len() && le32(raw, at) != 0 {
            let name_len = usize::from(raw[at]);
            let index = raw[at + 1];
            let value_offs = usize::from(le16(raw, at + 2));
            let value_size = le32(raw, at + 8) as usize;
            let name = raw.get(at + 16..at + 16 + name_len).unwrap_or(&[]);
            if index == XATTR_INDEX_SYSTEM && name == b"data" {
                return raw
                    .get(entries + value_offs..entries + value_offs + value_size)
                    .unwrap_or(&[]);
            }
            at += (16 + name_len).div_ceil(4) * 4;
        }
        &[]
    }

    /// The whole content of an inline-data inode.
    fn inline_data(&self, inode: &Inode) -> Vec<u8> {
        let mut data = inode.i_block().to_vec();
        data.extend_from_slice(self.inline_tail(inode));
        data.truncate(inode.size.min(data.len() as u64) as usize);
        data
    }

    /// The block map of a file, sorted by logical block.
    fn runs(&self, path: &[u8], inode: &Inode) -> Result<Vec<Run>> {
        let file_blocks = inode.size.div_ceil(self.sb.block_size);
        let mut runs = Vec::new();
        if inode.flags & FLAG_EXTENTS != 0 {
            self.extent_node(path, inode.i_block(), None, &mut runs)?;
            runs.sort_by_key(|r: &Run| r.logical);
        } else {
            self.indirect(path, inode, file_blocks, &mut runs)?;
        }
        for r in &runs {
            if r.physical
                .checked_add(r.len)
                .is_none_or(|end| end > self.sb.blocks)
            {
                return Err(corrupt(
                    self.kind,
                    Some(path),
                    format!(
                        "blocks {}..+{} lie outside the volume's {} blocks",
                        r.physical, r.len, self.sb.blocks
                    ),
                ));
            }
        }
        Ok(runs)
    }

    fn push(&self, path: &[u8], runs: &mut Vec<Run>, run: Run) -> Result<()> {
        if let Some(last) = runs.last_mut() {
            if !last.zeros
                && !run.zeros
                && last.logical + last.len == run.logical
                && last.physical + last.len == run.physical
            {
                last.len += run.len;
                return Ok(());
            }
        }
        if runs.len() >= MAX_RUNS {
            return Err(corrupt(
                self.kind,
                Some(path),
                format!("the file maps to more than {MAX_RUNS} runs"),
            ));
        }
        runs.push(run);
        Ok(())
    }

    /// One mapped block of the classic block map.
    fn push_block(
        &self,
        path: &[u8],
        runs: &mut Vec<Run>,
        logical: u64,
        physical: u64,
    ) -> Result<()> {
        let run = Run {
            logical,
            physical,
            len: 1,
            zeros: false,
        };
        self.push(path, runs, run)
    }

    fn extent_node(
        &self,
        path: &[u8],
        node: &[u8],
        depth_expected: Option<u16>,
        runs: &mut Vec<Run>,
    ) -> Result<()> {
        let bad = |why: String| corrupt(self.kind, Some(path), format!("extent tree: {why}"));
        if node.len() < 12 || le16(node, 0) != EXTENT_MAGIC {
            return Err(bad("bad node magic".into()));
        }
        let entries = usize::from(le16(node, 2));
        let depth = le16(node, 6);
        if depth > MAX_EXTENT_DEPTH || depth_expected.is_some_and(|d| d != depth) {
            return Err(bad(format!("node of depth {depth}")));
        }
        if 12 + entries * 12 > node.len() {
            return Err(bad(format!("{entries} entries overflow the node")));
        }
        for e in node[12..12 + entries * 12].chunks_exact(12) {
            let logical = u64::from(le32(e, 0));
            if depth == 0 {
                let raw_len = le16(e, 4);
                let (len, zeros) = if raw_len > EXTENT_INIT_MAX {
                    (raw_len - EXTENT_INIT_MAX, true)
                } else {
                    (raw_len, false)
                };
                let physical = u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8));
                if len > 0 {
                    self.push(
                        path,
                        runs,
                        Run {
                            logical,
                            physical,
                            len: u64::from(len),
                            zeros,
                        },
                    )?;
                }
            } else {
                let child = u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32;
                if child >= self.sb.blocks {
                    return Err(bad(format!(
                        "child node at block {child}, outside the volume"
                    )));
                }
                let mut block = vec![0u8; self.sb.block_size as usize];
                self.read(path, &mut block, child * self.sb.block_size)?;
                self.extent_node(path, &block, Some(depth - 1), runs)?;
            }
        }
        Ok(())
    }

    /// The classic block map: 12 direct blocks, then single, double and triple
    /// indirect blocks. Zero pointers are holes.
    fn indirect(
        &self,
        path: &[u8],
        inode: &Inode,
        file_blocks: u64,
        runs: &mut Vec<Run>,
    ) -> Result<()> {
        let per_block = self.sb.block_size / 4;
        let ptrs: Vec<u64> = inode
            .i_block()
            .chunks_exact(4)
            .map(|c| u64::from(le32(c, 0)))
            .collect();
        let mut logical = 0u64;
        for &p in &ptrs[..12] {
            if logical >= file_blocks {
                return Ok(());
            }
            if p != 0 {
                self.push_block(path, runs, logical, p)?;
            }
            logical += 1;
        }
        for (level, &p) in ptrs[12..15].iter().enumerate() {
            let span = per_block.pow(level as u32 + 1);
            if logical >= file_blocks {
                return Ok(());
            }
            self.indirect_block(path, p, level as u32 + 1, logical, file_blocks, runs)?;
            logical += span;
        }
        Ok(())
    }

    fn indirect_block(
        &self,
        path: &[u8],
        block: u64,
        level: u32,
        first: u64,
        file_blocks: u64,
        runs: &mut Vec<Run>,
    ) -> Result<()> {
        if block == 0 || first >= file_blocks {
            return Ok(());
        }
        if block >= self.sb.blocks {
            return Err(corrupt(
                self.kind,
                Some(path),
                format!("indirect block {block} lies outside the volume"),
            ));
        }
        let per_block = self.sb.block_size / 4;
        let span = per_block.pow(level - 1);
        let mut buf = vec![0u8; self.sb.block_size as usize];
        self.read(path, &mut buf, block * self.sb.block_size)?;
        for (i, c) in buf.chunks_exact(4).enumerate() {
            let logical = first + i as u64 * span;
            if logical >= file_blocks {
                break;
            }
            let p = u64::from(le32(c, 0));
            if level == 1 {
                if p != 0 {
                    self.push_block(path, runs, logical, p)?;
                }
            } else {
                self.indirect_block(path, p, level - 1, logical, file_blocks, runs)?;
            }
        }
        Ok(())
    }

    /// Reads a whole small file or directory, bounded by `limit`.
    fn content(&self, path: &[u8], inode: &Inode, limit: u64) -> Result<Vec<u8>> {
        if inode.size > limit {
            return Err(Error::TooLarge {
                path: show(path),
                size: inode.size,
                limit,
            });
        }
        let mut out = Vec::with_capacity(inode.size as usize);
        self.reader(path, inode)?
            .read_to_end(&mut out)
            .map_err(|e| Error::Read {
                path: show(path),
                source: Box::new(e),
            })?;
        Ok(out)
    }

    fn reader<'a>(&'a self, path: &[u8], inode: &Inode) -> Result<Box<dyn Read + 'a>> {
        if inode.flags & FLAG_ENCRYPT != 0 {
            return Err(Error::Unsupported {
                kind: self.kind.name(),
                reason: format!("{} is encrypted", show(path)),
            });
        }
        if inode.flags & FLAG_INLINE_DATA != 0 {
            return Ok(Box::new(io::Cursor::new(self.inline_data(inode))));
        }
        Ok(Box::new(ExtFile {
            fs: self,
            path: path.to_vec(),
            runs: self.runs(path, inode)?,
            size: inode.size,
            pos: 0,
        }))
    }

    /// The entries of a directory inode: (name, inode number), without `.` and `..`.
    /// Given the directory's inode number on a metadata_csum volume, each leaf
    /// block's checksum is verified.
    fn entries(
        &self,
        path: &[u8],
        dir: &Inode,
        number: Option<u32>,
    ) -> Result<Vec<(Vec<u8>, u32)>> {
        if dir.kind() != FileKind::Dir {
            return Err(Error::WrongType {
                path: show(path),
                reason: "not a directory",
            });
        }
        if dir.flags & FLAG_ENCRYPT != 0 {
            return Err(Error::Unsupported {
                kind: self.kind.name(),
                reason: format!("{} is an encrypted directory", show(path)),
            });
        }
        let with_type = self.sb.incompat & INCOMPAT_FILETYPE != 0;
        let mut out = Vec::new();
        if dir.flags & FLAG_INLINE_DATA != 0 {
            // Inline directories: the parent's inode number, then entries, then more
            // entries in the system.data attribute.
            let body = &dir.i_block()[4..];
            self.parse_block(path, body, with_type, &mut out)?;
            self.parse_block(path, self.inline_tail(dir), with_type, &mut out)?;
            return Ok(out);
        }
        let data = self.content(path, dir, MAX_DIR_BYTES)?;
        let seed = number
            .zip(self.sb.csum_seed)
            .map(|(n, seed)| dir.csum_seed(seed, n));
        for block in data.chunks(self.sb.block_size as usize) {
            if let Some(seed) = seed {
                verify_dir_block(self.kind, path, block, seed)?;
            }
            self.parse_block(path, block, with_type, &mut out)?;
        }
        Ok(out)
    }

    /// The entries of the directory at `path`, a path a walk produced, with the
    /// checksums `ext4-view` would verify verified: the directory's inode and leaf
    /// blocks, and each entry's inode. `Ok(None)` when a component of `path` is a
    /// symlink after all.
    pub(crate) fn read_dir_walked(&self, path: &[u8]) -> Result<Option<Vec<DirEntry>>> {
        let Some((number, dir)) = self.lookup_numbered(path)? else {
            return Ok(None);
        };
        self.verify_inode(path, number, &dir)?;
        self.listing(path, &dir, Some(number)).map(Some)
    }

    /// The entries of directory `dir` at `path`, with their inodes' metadata.
    /// Given the directory's inode number, every checksum is verified (its leaf
    /// blocks', each entry's inode's), as ext4-view does.
    fn listing(&self, path: &[u8], dir: &Inode, number: Option<u32>) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for (name, n) in self.entries(path, dir, number)? {
            let mut child = path.to_vec();
            if !child.ends_with(b"/") {
                child.push(b'/');
            }
            child.extend_from_slice(&name);
            let inode = self.inode(&child, n)?;
            if number.is_some() {
                self.verify_inode(&child, n, &inode)?;
            }
            out.push(DirEntry {
                name,
                metadata: inode.metadata(),
            });
        }
        Ok(out)
    }

    /// On a metadata_csum volume, checks inode `number`'s checksum.
    fn verify_inode(&self, path: &[u8], number: u32, inode: &Inode) -> Result<()> {
        let Some(seed) = self.sb.csum_seed else {
            return Ok(());
        };
        let raw = &inode.raw;
        // i_checksum_lo at 0x7c; i_checksum_hi at 0x82 when the extra fields reach it.
        let has_hi = raw.len() > BASE_INODE && usize::from(le16(raw, 0x80)) >= 4;
        let zero = [0u8; 2];
        let mut parts: Vec<&[u8]> = vec![&raw[..0x7c], &zero, &raw[0x7e..BASE_INODE]];
        let mut stored = u32::from(le16(raw, 0x7c));
        if raw.len() > BASE_INODE {
            if has_hi {
                parts.extend([&raw[BASE_INODE..0x82], &zero[..], &raw[0x84..]]);
                stored |= u32::from(le16(raw, 0x82)) << 16;
            } else {
                parts.push(&raw[BASE_INODE..]);
            }
        }
        let mut csum = ext4_crc32c(inode.csum_seed(seed, number), &parts);
        if !has_hi {
            csum &= 0xffff;
        }
        if csum != stored {
            return Err(corrupt(
                self.kind,
                Some(path),
                format!("inode {number} checksum {stored:#x} is not {csum:#x}"),
            ));
        }
        Ok(())
    }

    fn parse_block(
        &self,
        path: &[u8],
        block: &[u8],
        with_type: bool,
        out: &mut Vec<(Vec<u8>, u32)>,
    ) -> Result<()> {
        let mut at = 0usize;
        while at + 8 <= block.len() {
            let inode = le32(block, at);
            let rec_len = usize::from(le16(block, at + 4));
            let name_len = if with_type {
                usize::from(block[at + 6])
            } else {
                usize::from(le16(block, at + 6))
            };
            if rec_len < 8
                || rec_len % 4 != 0
                || at + rec_len > block.len()
                || 8 + name_len > rec_len
            {
                return Err(corrupt(
                    self.kind,
                    Some(path),
                    format!("directory entry at byte {at} of a block has record length {rec_len} and name length {name_len}"),
                ));
            }
            let name = &block[at + 8..at + 8 + name_len];
            if inode != 0 && name_len > 0 && name != b"." && name != b".." {
                out.push((name.to_vec(), inode));
            }
            at += rec_len;
        }
        Ok(())
    }

    /// Looks `path` up component by component, following no symlink. `Ok(None)`
    /// when a component before the last is a symlink.
    fn lookup(&self, path: &[u8]) -> Result<Option<Inode>> {
        Ok(self.lookup_numbered(path)?.map(|(_, inode)| inode))
    }

    /// [`Self::lookup`], with the inode's number.
    fn lookup_numbered(&self, path: &[u8]) -> Result<Option<(u32, Inode)>> {
        let mut number = ROOT_INODE;
        let mut inode = self.inode(path, number)?;
        let parts: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        for part in parts {
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
                return Ok(None); // let the resolver handle it inside the root
            }
            number = self.child(path, number, &inode, part)?;
            inode = self.inode(path, number)?;
        }
        Ok(Some((number, inode)))
    }

    /// The inode of `path`, following symlinks before its last component only.
    fn lstat(&self, path: &[u8]) -> Result<Inode> {
        crate::lstat_with(self, path, |p| self.lookup(p))
    }
}

/// A regular file's bytes, with holes and unwritten extents as zeros.
struct ExtFile<'a> {
    fs: &'a TolerantExt,
    path: Vec<u8>,
    runs: Vec<Run>,
    size: u64,
    pos: u64,
}

impl Read for ExtFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let bs = self.fs.sb.block_size;
        let block = self.pos / bs;
        let within = self.pos % bs;
        let left = self.size - self.pos;
        // The run holding this block, or the next one (everything before it is a hole).
        let i = self.runs.partition_point(|r| r.logical + r.len <= block);
        let n = match self.runs.get(i) {
            Some(r) if r.logical <= block => {
                let n = ((r.logical + r.len - block) * bs - within)
                    .min(left)
                    .min(buf.len() as u64) as usize;
                if r.zeros {
                    buf[..n].fill(0);
                } else {
                    let offset = (r.physical + block - r.logical) * bs + within;
                    self.fs
                        .read(&self.path, &mut buf[..n], offset)
                        .map_err(io::Error::other)?;
                }
                n
            }
            next => {
                let hole_end = next.map_or(u64::MAX, |r| r.logical * bs);
                let n = (hole_end - self.pos).min(left).min(buf.len() as u64) as usize;
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Filesystem for TolerantExt {
    fn kind(&self) -> FsKind {
        self.kind
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn metadata(&self, path: &[u8]) -> Result<Metadata> {
        if !path.starts_with(b"/") {
            return Err(Error::NotFound { path: show(path) });
        }
        Ok(self.lstat(path)?.metadata())
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>> {
        let resolved = crate::resolve(self, path)?;
        let dir = self.lstat(&resolved)?;
        self.listing(&resolved, &dir, None)
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        let inode = self.lstat(path)?;
        if inode.kind() != FileKind::Symlink {
            return Err(Error::WrongType {
                path: show(path),
                reason: "not a symlink",
            });
        }
        if inode.size > crate::MAX_PATH_LEN as u64 {
            return Err(corrupt(
                self.kind,
                Some(path),
                format!("symlink target of {} bytes", inode.size),
            ));
        }
        if inode.flags & (FLAG_INLINE_DATA | FLAG_EXTENTS) == 0 && inode.size < I_BLOCK_LEN as u64 {
            return Ok(inode.i_block()[..inode.size as usize].to_vec());
        }
        self.content(path, &inode, crate::MAX_PATH_LEN as u64)
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        let resolved = crate::resolve(self, path)?;
        self.open_walked(&resolved)
    }

    fn open_walked(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        let inode = self.lstat(path)?;
        match inode.kind() {
            FileKind::File => self.reader(path, &inode),
            FileKind::Dir => Err(Error::WrongType {
                path: show(path),
                reason: "is a directory",
            }),
            _ => Err(Error::WrongType {
                path: show(path),
                reason: "is a special file",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_backups_follow_sparse_super() {
        let mut raw = vec![0u8; 1024];
        raw[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        raw[0x04..0x08].copy_from_slice(&100_000u32.to_le_bytes());
        raw[0x20..0x24].copy_from_slice(&8192u32.to_le_bytes());
        raw[0x28..0x2c].copy_from_slice(&2048u32.to_le_bytes());
        raw[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        raw[0x64..0x68].copy_from_slice(&RO_COMPAT_SPARSE_SUPER.to_le_bytes());
        let sb = Superblock::parse(&raw).unwrap();
        let with: Vec<u64> = (0..60).filter(|&g| sb.has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
        assert_eq!(sb.inode_size, 128); // revision 0
    }

    #[test]
    fn hostile_superblocks_are_refused_not_trusted() {
        let mut raw = vec![0u8; 1024];
        raw[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        raw[0x18] = 9;
        assert!(Superblock::parse(&raw).unwrap_err().contains("block size"));
        raw[0x18] = 0;
        raw[0x04] = 10;
        raw[0x20] = 8;
        raw[0x28] = 0;
        assert!(Superblock::parse(&raw)
            .unwrap_err()
            .contains("inodes per group"));
    }

    /// A metadata_csum ext4 image of a small tree, made by mkfs.ext4 -d.
    fn mkfs_image(dir: &std::path::Path) -> std::path::PathBuf {
        let tree = dir.join("tree");
        for d in ["etc/ssh", "usr/share/doc/pkg", "var/lib/dpkg/info"] {
            std::fs::create_dir_all(tree.join(d)).unwrap();
        }
        for i in 0..300 {
            std::fs::write(tree.join(format!("var/lib/dpkg/info/p{i}.list")), "/x\n").unwrap();
        }
        std::fs::write(tree.join("etc/ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
        std::fs::write(tree.join("etc/hostname"), "build\n").unwrap();
        std::os::unix::fs::symlink("usr/share", tree.join("share")).unwrap();
        let image = dir.join("ext4.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "metadata_csum", "-d"])
            .arg(&tree)
            .arg(&image)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfs.ext4");
        image
    }

    /// What debugfs says of `request` (`bmap DIR 0`, `imap PATH`).
    fn debugfs(image: &std::path::Path, request: &str) -> String {
        let out = std::process::Command::new("debugfs")
            .args(["-R", request])
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn open(image: &std::path::Path) -> (TolerantExt, crate::ext4::Ext4Fs) {
        let source: Arc<dyn BlockSource> = Arc::new(blockio::FileSource::open(image).unwrap());
        (
            TolerantExt::open(source.clone(), FsKind::Ext4, String::new()).unwrap(),
            crate::ext4::Ext4Fs::open(source, FsKind::Ext4).unwrap(),
        )
    }

    fn flip(image: &std::path::Path, offset: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], offset).unwrap();
    }

    /// The walk lists directories through this reader: it must list what ext4-view
    /// lists, and refuse what ext4-view's checksums refuse.
    #[test]
    fn walked_directories_list_as_ext4_view_and_checksums_are_verified() {
        let dir = std::env::temp_dir().join(format!("amiforge-walked-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = mkfs_image(&dir);
        let (fast, view) = open(&image);
        assert!(fast.sb.csum_seed.is_some());
        for path in [
            "/",
            "/etc",
            "/etc/ssh",
            "/usr/share/doc",
            "/var/lib/dpkg/info",
        ] {
            let listed = |entries: Vec<DirEntry>| {
                let mut v: Vec<_> = entries.into_iter().map(|e| (e.name, e.metadata)).collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            };
            let ours = listed(fast.read_dir_walked(path.as_bytes()).unwrap().unwrap());
            let theirs = listed(view.read_dir(path.as_bytes()).unwrap());
            assert_eq!(ours, theirs, "{path}");
        }
        // Through a symlink it is not a walked path: the caller falls back.
        assert!(fast.read_dir_walked(b"/share/doc").unwrap().is_none());

        // One changed byte in a directory block's entries.
        let block: u64 = debugfs(&image, "bmap /etc/ssh 0").trim().parse().unwrap();
        flip(&image, block * fast.sb.block_size + 12 + 8);
        let (fast, view) = open(&image);
        let e = fast.read_dir_walked(b"/etc/ssh").unwrap_err().to_string();
        assert!(e.contains("directory block checksum"), "{e}");
        assert!(
            view.read_dir(b"/etc/ssh").is_err(),
            "ext4-view refuses it too"
        );

        // One changed byte in a file's inode (its uid): the directory holding it
        // can no longer be listed, the one above still can.
        let imap = debugfs(&image, "imap /etc/hostname");
        let words: Vec<&str> = imap.split_whitespace().collect();
        let after = |label: &str| {
            words
                .iter()
                .rposition(|w| *w == label)
                .map(|i| words[i + 1])
        };
        let block: u64 = after("block")
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap();
        let offset =
            u64::from_str_radix(after("offset").unwrap().trim_start_matches("0x"), 16).unwrap();
        flip(&image, block * fast.sb.block_size + offset + 2);
        let (fast, view) = open(&image);
        assert!(fast.read_dir_walked(b"/").unwrap().is_some());
        let e = fast.read_dir_walked(b"/etc").unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        assert!(view.read_dir(b"/etc").is_err(), "ext4-view refuses it too");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
