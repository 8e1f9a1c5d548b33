//! btrfs, read-only, on one device: the superblock (checksum checked), the system
//! chunk array and the chunk tree (logical to physical addresses), the root tree,
//! and the filesystem trees of the subvolumes. `/` is the default subvolume; other
//! subvolumes below it appear as the directories that name them.
//!
//! Files are read through their EXTENT_DATA items: inline, regular and preallocated
//! extents, holes (explicit, or implied by NO_HOLES), and zlib, LZO and zstd
//! compressed extents. Every tree block's checksum (CRC-32C), its own address and
//! its level are checked before it is trusted, so a loop in a tree cannot form:
//! each step goes one level down. Every count is bounded: tree depth by the format's
//! [`MAX_LEVEL`], the blocks one search may read by [`MAX_SEARCH_NODES`], a file's
//! extents by [`MAX_EXTENTS`], a directory by [`MAX_DIR_ENTRIES`], and what one
//! compressed extent may expand to by [`MAX_UNCOMPRESSED`].
//!
//! Multi-device filesystems, striped or parity chunk profiles, and the features that
//! change the layout of the trees read here (extent tree v2, the RAID stripe tree)
//! are refused as unsupported rather than misread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::Arc;

use blockio::BlockSource;

use crate::{read_at, show, DirEntry, Error, FileKind, Filesystem, FsKind, Metadata, Result};

const KIND: &str = "btrfs";
/// The primary superblock lies 64 KiB into the device.
const SUPERBLOCK_AT: u64 = 64 << 10;
const SUPERBLOCK_SIZE: usize = 4096;
/// Checksums take the first 32 bytes of a superblock or tree block.
const CSUM_SIZE: usize = 32;
/// The tree block header: checksum, fsid, bytenr, flags, chunk tree uuid,
/// generation, owner, item count, level.
const HEADER_SIZE: usize = 101;
/// A key: objectid (8), type (1), offset (8).
const KEY_SIZE: usize = 17;
/// A leaf's item: key, data offset, data size.
const LEAF_ITEM_SIZE: usize = KEY_SIZE + 8;
/// An internal node's pointer: key, child block, generation.
const KEY_PTR_SIZE: usize = KEY_SIZE + 16;
/// A tree is at most 8 levels deep (BTRFS_MAX_LEVEL).
const MAX_LEVEL: u8 = 8;
/// The most tree blocks one search reads: a directory or file of some
/// million items.
const MAX_SEARCH_NODES: usize = 1 << 16;
/// The most extents one file may have.
const MAX_EXTENTS: usize = 1 << 20;
/// The most entries one directory may have.
const MAX_DIR_ENTRIES: usize = 1 << 20;
/// A compressed extent holds at most 128 KiB of file data (BTRFS_MAX_UNCOMPRESSED).
const MAX_UNCOMPRESSED: u64 = 128 << 10;
/// Tree blocks kept in memory (at a 16 KiB nodesize, 4 MiB).
const NODE_CACHE: usize = 256;
/// Directories whose entries are kept, so that a walk reads each directory once.
const DIR_CACHE: usize = 64;
/// The chunk tree and system chunk array describe at most this many chunks.
const MAX_CHUNKS: usize = 1 << 20;
/// Symlink targets are at most a page.
const MAX_SYMLINK: u64 = 4096;

/// Item types.
const INODE_ITEM: u8 = 1;
const DIR_ITEM: u8 = 84;
const DIR_INDEX: u8 = 96;
const EXTENT_DATA: u8 = 108;
const ROOT_ITEM: u8 = 132;
const CHUNK_ITEM: u8 = 228;

/// Well-known object ids.
const FS_TREE: u64 = 5;
const ROOT_TREE_DIR: u64 = 6;
const FIRST_CHUNK_TREE: u64 = 256;

/// Chunk type bits that spread data over several stripes.
const BLOCK_GROUP_RAID0: u64 = 1 << 3;
const BLOCK_GROUP_RAID10: u64 = 1 << 6;
const BLOCK_GROUP_RAID5: u64 = 1 << 7;
const BLOCK_GROUP_RAID6: u64 = 1 << 8;
const STRIPED: u64 = BLOCK_GROUP_RAID0 | BLOCK_GROUP_RAID10 | BLOCK_GROUP_RAID5 | BLOCK_GROUP_RAID6;

/// Incompatible features that change what this reader reads.
const INCOMPAT_EXTENT_TREE_V2: u64 = 1 << 13;
const INCOMPAT_RAID_STRIPE_TREE: u64 = 1 << 14;
/// Every incompatible feature known when this reader was written.
const KNOWN_INCOMPAT: u64 = (1 << 17) - 1;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn corrupt(path: &[u8], reason: impl Into<String>) -> Error {
    Error::Corrupt {
        kind: KIND,
        path: Some(show(path)),
        reason: reason.into(),
    }
}

fn unsupported(reason: impl Into<String>) -> Error {
    Error::Unsupported {
        kind: KIND,
        reason: reason.into(),
    }
}

/// A key, ordered as the trees order it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    objectid: u64,
    kind: u8,
    offset: u64,
}

impl Key {
    fn parse(b: &[u8]) -> Self {
        Key {
            objectid: le64(b, 0),
            kind: b[8],
            offset: le64(b, 9),
        }
    }
    fn first(objectid: u64, kind: u8) -> Self {
        Key {
            objectid,
            kind,
            offset: 0,
        }
    }
    fn last(objectid: u64, kind: u8) -> Self {
        Key {
            objectid,
            kind,
            offset: u64::MAX,
        }
    }
}

/// A chunk: `length` bytes of logical space from `logical`, stored at `physical`
/// on this device, and (DUP) again at `copy`.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    logical: u64,
    length: u64,
    physical: u64,
    copy: Option<u64>,
}

/// Where a tree's root block is.
#[derive(Debug, Clone, Copy)]
struct TreeRoot {
    bytenr: u64,
    level: u8,
}

/// An inode: the subvolume (tree) it lives in and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ino {
    tree: u64,
    number: u64,
}

/// An inode item, parsed.
struct Inode {
    ino: Ino,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
}

impl Inode {
    fn kind(&self) -> FileKind {
        FileKind::from_mode(self.mode)
    }
    fn metadata(&self) -> Metadata {
        Metadata {
            kind: self.kind(),
            mode: self.mode & 0o7777,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            mtime: self.mtime,
        }
    }
}

/// How a file extent stores its bytes.
#[derive(Debug, Clone)]
enum Stored {
    /// Bytes in the tree item itself (compressed or not).
    Inline { data: Rc<Vec<u8>>, compression: u8 },
    /// A run of a disk extent: `offset` bytes into what the extent holds
    /// (after decompression, when compressed).
    Disk {
        bytenr: u64,
        disk_len: u64,
        offset: u64,
        compression: u8,
        ram_len: u64,
    },
    /// Reads as zeros: a hole, or space preallocated and never written.
    Zeros,
}

/// One EXTENT_DATA item: `len` bytes of the file from `file_offset`.
#[derive(Debug, Clone)]
struct FileExtent {
    file_offset: u64,
    len: u64,
    stored: Stored,
}

/// A directory entry: its name and the inode it names.
type Entries = Rc<std::result::Result<Vec<(Vec<u8>, Ino)>, String>>;

/// A btrfs filesystem on one device.
pub struct Btrfs {
    source: Arc<dyn BlockSource>,
    nodesize: u64,
    sectorsize: u64,
    bytes_used: u64,
    device_bytes: u64,
    chunks: Vec<Chunk>,
    root_tree: TreeRoot,
    /// The root directory of the subvolume that is `/`.
    top: Ino,
    /// Subvolumes mounted below `/` by its /etc/fstab: mount point → root directory.
    grafts: Vec<(Vec<u8>, Ino)>,
    /// Subvolumes that no path under `/` reaches, and why.
    unreachable: Vec<(String, String)>,
    notes: Vec<String>,
    nodes: RefCell<HashMap<u64, Rc<Vec<u8>>>>,
    trees: RefCell<HashMap<u64, TreeRoot>>,
    dirs: RefCell<Vec<(Ino, Entries)>>,
}

impl Btrfs {
    /// Opens the btrfs on `source`.
    pub fn open(source: Arc<dyn BlockSource>) -> Result<Self> {
        let sb_path = b"(superblock)";
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        read_at(&*source, sb_path, &mut sb, SUPERBLOCK_AT)?;
        let bad = |reason: String| corrupt(sb_path, reason);
        if &sb[0x40..0x48] != b"_BHRfS_M" {
            return Err(bad("no _BHRfS_M magic".into()));
        }
        let csum_type = le16(&sb, 0xc4);
        let mut notes = Vec::new();
        if csum_type == 0 {
            if le32(&sb, 0) != crc32c(&sb[CSUM_SIZE..]) {
                return Err(bad("its CRC-32C does not match".into()));
            }
        } else {
            notes.push(format!(
                "checksums of type {} are not verified",
                csum_name(csum_type)
            ));
        }
        let (sectorsize, nodesize) = (u64::from(le32(&sb, 0x90)), u64::from(le32(&sb, 0x94)));
        if !(4096..=65536).contains(&sectorsize) || !sectorsize.is_power_of_two() {
            return Err(bad(format!("a sector size of {sectorsize}")));
        }
        if !(sectorsize..=65536).contains(&nodesize) || !nodesize.is_power_of_two() {
            return Err(bad(format!("a node size of {nodesize}")));
        }
        let devices = le64(&sb, 0x88);
        if devices != 1 {
            return Err(unsupported(format!(
                "a filesystem over {devices} devices (only single-device btrfs is read)"
            )));
        }
        let incompat = le64(&sb, 0xbc);
        for (bit, what) in [
            (INCOMPAT_EXTENT_TREE_V2, "extent tree v2"),
            (INCOMPAT_RAID_STRIPE_TREE, "the RAID stripe tree"),
        ] {
            if incompat & bit != 0 {
                return Err(unsupported(what));
            }
        }
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(unsupported(format!(
                "incompatible features {:#x}",
                incompat & !KNOWN_INCOMPAT
            )));
        }
        if le64(&sb, 0x60) != 0 {
            notes.push(
                "a log tree (writes fsynced before an unclean shutdown) is not replayed".into(),
            );
        }
        let devid = le64(&sb, 0xc9);
        let mut fs = Self {
            source,
            nodesize,
            sectorsize,
            bytes_used: le64(&sb, 0x78),
            device_bytes: le64(&sb, 0xc9 + 8),
            chunks: Vec::new(),
            root_tree: TreeRoot {
                bytenr: le64(&sb, 0x50),
                level: sb[0xc6],
            },
            top: Ino {
                tree: FS_TREE,
                number: 0,
            },
            grafts: Vec::new(),
            unreachable: Vec::new(),
            notes,
            nodes: RefCell::new(HashMap::new()),
            trees: RefCell::new(HashMap::new()),
            dirs: RefCell::new(Vec::new()),
        };
        // The system chunk array maps the chunk tree; the chunk tree maps the rest.
        let array_len = le32(&sb, 0xa0) as usize;
        let array = sb
            .get(0x32b..0x32b + array_len)
            .filter(|_| array_len <= 2048)
            .ok_or_else(|| bad(format!("a system chunk array of {array_len} bytes")))?;
        let mut pos = 0;
        while pos < array.len() {
            let key = array
                .get(pos..pos + KEY_SIZE)
                .map(Key::parse)
                .ok_or_else(|| bad("a system chunk array cut short".into()))?;
            if key.kind != CHUNK_ITEM {
                return Err(bad(format!(
                    "an item of type {} in the system chunk array",
                    key.kind
                )));
            }
            pos += KEY_SIZE;
            let (chunk, used) = parse_chunk(&array[pos..], key.offset, devid)
                .map_err(|why| bad(format!("system chunk at {}: {why}", key.offset)))?;
            if let Some(c) = chunk {
                fs.chunks.push(c);
            }
            pos += used;
        }
        fs.chunks.sort_by_key(|c| c.logical);
        let chunk_root = TreeRoot {
            bytenr: le64(&sb, 0x58),
            level: sb[0xc7],
        };
        let mut chunks = Vec::new();
        fs.search(
            b"(chunk tree)",
            chunk_root,
            Key::first(FIRST_CHUNK_TREE, CHUNK_ITEM),
            Key::last(FIRST_CHUNK_TREE, CHUNK_ITEM),
            &mut |key, data| {
                if key.kind != CHUNK_ITEM {
                    return Ok(());
                }
                if chunks.len() == MAX_CHUNKS {
                    return Err(corrupt(
                        b"(chunk tree)",
                        format!("more than {MAX_CHUNKS} chunks"),
                    ));
                }
                let (chunk, _) = parse_chunk(data, key.offset, devid).map_err(|why| {
                    corrupt(b"(chunk tree)", format!("chunk at {}: {why}", key.offset))
                })?;
                chunks.extend(chunk);
                Ok(())
            },
        )?;
        chunks.sort_by_key(|c| c.logical);
        fs.chunks = chunks;
        // The default subvolume is named by the "default" entry of the root tree's
        // directory; without one it is the top level.
        let mut default = FS_TREE;
        let root_tree = fs.root_tree;
        fs.search(
            b"(root tree)",
            root_tree,
            Key::first(ROOT_TREE_DIR, DIR_ITEM),
            Key::last(ROOT_TREE_DIR, DIR_ITEM),
            &mut |_, data| {
                for (name, location, _) in dir_items(data) {
                    if name == b"default" && location.kind == ROOT_ITEM {
                        default = location.objectid;
                    }
                }
                Ok(())
            },
        )?;
        fs.top = fs.subvolume_root(b"/", default)?;
        if default != FS_TREE {
            fs.notes
                .push(format!("/ is the default subvolume, id {default}"));
        }
        fs.find_root_subvolume()?;
        Ok(fs)
    }

    /// Distributions that keep the root in a subvolume of the top level (Fedora's
    /// `root`, Ubuntu's and openSUSE's `@`) leave the default subvolume at the top
    /// level and name the root in /etc/fstab. When `/` holds no /etc but such a
    /// subvolume does, that subvolume becomes `/`, and the other subvolumes that its
    /// /etc/fstab mounts appear at their mount points. Subvolumes of the top level
    /// that end up nowhere under `/` are listed as unreachable.
    fn find_root_subvolume(&mut self) -> Result<()> {
        let top = self.inode(b"/", self.top)?;
        let entries = self.entries(b"/", &top)?;
        if entries.iter().any(|(name, _)| name == b"etc") {
            return Ok(());
        }
        let is_subvolume = |t: &Ino| t.number == 0;
        let root = ROOT_SUBVOLUME_NAMES.iter().find_map(|want| {
            let (name, target) = entries
                .iter()
                .find(|(name, t)| name == want && is_subvolume(t))?;
            let dir = self.entry_inode(b"/", *target).ok()?;
            let has_etc = self
                .entries(b"/", &dir)
                .ok()?
                .iter()
                .any(|(n, _)| n == b"etc");
            has_etc.then(|| (name.clone(), dir.ino))
        });
        let Some((name, root)) = root else {
            return Ok(());
        };
        self.top = root;
        self.notes.push(format!(
            "/ is subvolume {} (id {}) of the top level, which holds no /etc",
            show(&name),
            root.tree
        ));
        let fstab = self.read_file(b"/etc/fstab", MAX_FSTAB).unwrap_or_default();
        for (mount_point, subvolume) in fstab_subvolumes(&fstab) {
            let Some((_, target)) = entries
                .iter()
                .find(|(n, t)| *n == subvolume && is_subvolume(t))
            else {
                continue;
            };
            if let Ok(dir) = self.entry_inode(b"/", *target) {
                self.notes.push(format!(
                    "{} is subvolume {} (id {}), as /etc/fstab mounts it",
                    show(&mount_point),
                    show(&subvolume),
                    dir.ino.tree
                ));
                self.grafts.push((mount_point, dir.ino));
            }
        }
        for (name, target) in entries.iter().filter(|(_, t)| is_subvolume(t)) {
            let placed =
                target.tree == root.tree || self.grafts.iter().any(|(_, g)| g.tree == target.tree);
            if !placed {
                self.unreachable.push((
                    format!("btrfs subvolume {} (id {})", show(name), target.tree),
                    "a subvolume of the top level that /etc/fstab mounts nowhere under /".into(),
                ));
            }
        }
        Ok(())
    }

    /// The root directory of subvolume `id`.
    fn subvolume_root(&self, path: &[u8], id: u64) -> Result<Ino> {
        let mut item: Option<Vec<u8>> = None;
        self.search(
            path,
            self.root_tree,
            Key::first(id, ROOT_ITEM),
            Key::last(id, ROOT_ITEM),
            &mut |key, data| {
                if key.kind == ROOT_ITEM {
                    item = Some(data.to_vec());
                }
                Ok(())
            },
        )?;
        let item = item.ok_or_else(|| corrupt(path, format!("subvolume {id} has no root item")))?;
        if item.len() < 239 {
            return Err(corrupt(
                path,
                format!("subvolume {id}: a root item of {} bytes", item.len()),
            ));
        }
        self.trees.borrow_mut().insert(
            id,
            TreeRoot {
                bytenr: le64(&item, 176),
                level: item[238],
            },
        );
        Ok(Ino {
            tree: id,
            number: le64(&item, 168),
        })
    }

    fn tree(&self, path: &[u8], id: u64) -> Result<TreeRoot> {
        if let Some(t) = self.trees.borrow().get(&id) {
            return Ok(*t);
        }
        self.subvolume_root(path, id)?;
        self.trees
            .borrow()
            .get(&id)
            .copied()
            .ok_or_else(|| corrupt(path, format!("subvolume {id} has no tree")))
    }

    /// The physical offset of `len` bytes at logical address `logical`, and how many
    /// of them lie in the same chunk.
    fn map(&self, path: &[u8], logical: u64, len: u64) -> Result<(u64, u64)> {
        let i = self.chunks.partition_point(|c| c.logical <= logical);
        let chunk = i
            .checked_sub(1)
            .map(|i| self.chunks[i])
            .filter(|c| logical - c.logical < c.length)
            .ok_or_else(|| corrupt(path, format!("logical address {logical} is in no chunk")))?;
        let within = logical - chunk.logical;
        let physical = chunk
            .physical
            .checked_add(within)
            .ok_or_else(|| corrupt(path, format!("logical address {logical} maps past 2^64")))?;
        Ok((physical, len.min(chunk.length - within)))
    }

    /// Reads `buf.len()` bytes of logical space at `logical`.
    fn read_logical(&self, path: &[u8], buf: &mut [u8], logical: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = logical
                .checked_add(done as u64)
                .ok_or_else(|| corrupt(path, "a logical address past 2^64"))?;
            let (physical, n) = self.map(path, at, (buf.len() - done) as u64)?;
            let n = n as usize;
            read_at(&*self.source, path, &mut buf[done..done + n], physical)?;
            done += n;
        }
        Ok(())
    }

    /// A tree block at `bytenr`, checked: checksum, own address, level.
    fn node(&self, path: &[u8], bytenr: u64, level: u8) -> Result<Rc<Vec<u8>>> {
        if let Some(n) = self.nodes.borrow().get(&bytenr) {
            if n[0x64] == level {
                return Ok(n.clone());
            }
        }
        let mut b = vec![0u8; self.nodesize as usize];
        self.read_logical(path, &mut b, bytenr)?;
        if le32(&b, 0) != crc32c(&b[CSUM_SIZE..]) && self.crc_checked() {
            return Err(corrupt(
                path,
                format!("tree block {bytenr}: its CRC-32C does not match"),
            ));
        }
        if le64(&b, 0x30) != bytenr {
            return Err(corrupt(
                path,
                format!("tree block {bytenr} says it is at {}", le64(&b, 0x30)),
            ));
        }
        if b[0x64] != level {
            return Err(corrupt(
                path,
                format!("tree block {bytenr} is at level {}, not {level}", b[0x64]),
            ));
        }
        let node = Rc::new(b);
        let mut nodes = self.nodes.borrow_mut();
        if nodes.len() >= NODE_CACHE {
            nodes.clear();
        }
        nodes.insert(bytenr, node.clone());
        Ok(node)
    }

    fn crc_checked(&self) -> bool {
        !self
            .notes
            .iter()
            .any(|n| n.starts_with("checksums of type"))
    }

    /// Calls `visit` with every item of the tree at `root` whose key lies in
    /// `lo..=hi`, in key order.
    fn search(
        &self,
        path: &[u8],
        root: TreeRoot,
        lo: Key,
        hi: Key,
        visit: &mut dyn FnMut(Key, &[u8]) -> Result<()>,
    ) -> Result<()> {
        if root.level >= MAX_LEVEL {
            return Err(corrupt(path, format!("a tree of level {}", root.level)));
        }
        let mut budget = MAX_SEARCH_NODES;
        self.search_node(path, root.bytenr, root.level, lo, hi, visit, &mut budget)
    }

    #[allow(clippy::too_many_arguments)]
    fn search_node(
        &self,
        path: &[u8],
        bytenr: u64,
        level: u8,
        lo: Key,
        hi: Key,
        visit: &mut dyn FnMut(Key, &[u8]) -> Result<()>,
        budget: &mut usize,
    ) -> Result<()> {
        *budget = budget.checked_sub(1).ok_or_else(|| {
            corrupt(
                path,
                format!("a search of more than {MAX_SEARCH_NODES} tree blocks"),
            )
        })?;
        let node = self.node(path, bytenr, level)?;
        let count = le32(&node, 0x60) as usize;
        let body = &node[HEADER_SIZE..];
        if level == 0 {
            if count > body.len() / LEAF_ITEM_SIZE {
                return Err(corrupt(path, format!("leaf {bytenr} claims {count} items")));
            }
            for i in 0..count {
                let item = &body[i * LEAF_ITEM_SIZE..];
                let key = Key::parse(item);
                if key < lo {
                    continue;
                }
                if key > hi {
                    break;
                }
                let (at, size) = (
                    le32(item, KEY_SIZE) as usize,
                    le32(item, KEY_SIZE + 4) as usize,
                );
                let data = body.get(at..at + size).ok_or_else(|| {
                    corrupt(
                        path,
                        format!("leaf {bytenr}: item {i} lies outside the block"),
                    )
                })?;
                visit(key, data)?;
            }
            return Ok(());
        }
        if count > body.len() / KEY_PTR_SIZE {
            return Err(corrupt(
                path,
                format!("node {bytenr} claims {count} pointers"),
            ));
        }
        let ptr = |i: usize| &body[i * KEY_PTR_SIZE..(i + 1) * KEY_PTR_SIZE];
        for i in 0..count {
            let key = Key::parse(ptr(i));
            if key > hi {
                break;
            }
            // Child i holds the keys from its own up to the next child's.
            if i + 1 < count && Key::parse(ptr(i + 1)) <= lo {
                continue;
            }
            let child = le64(ptr(i), KEY_SIZE);
            self.search_node(path, child, level - 1, lo, hi, visit, budget)?;
        }
        Ok(())
    }

    fn inode(&self, path: &[u8], ino: Ino) -> Result<Inode> {
        let tree = self.tree(path, ino.tree)?;
        let mut found: Option<Inode> = None;
        self.search(
            path,
            tree,
            Key::first(ino.number, INODE_ITEM),
            Key::last(ino.number, INODE_ITEM),
            &mut |_, d| {
                if d.len() < 160 {
                    return Err(corrupt(path, format!("an inode item of {} bytes", d.len())));
                }
                found = Some(Inode {
                    ino,
                    size: le64(d, 16),
                    uid: le32(d, 44),
                    gid: le32(d, 48),
                    mode: le32(d, 52),
                    mtime: le64(d, 136) as i64,
                });
                Ok(())
            },
        )?;
        found.ok_or_else(|| {
            corrupt(
                path,
                format!("inode {} of subvolume {} is missing", ino.number, ino.tree),
            )
        })
    }

    /// A directory's entries, from its DIR_INDEX items (in creation order).
    fn entries(&self, path: &[u8], dir: &Inode) -> Result<Vec<(Vec<u8>, Ino)>> {
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
            .find(|(i, _)| *i == dir.ino)
            .map(|(_, e)| e.clone());
        let entries = match cached {
            Some(e) => e,
            None => {
                let e = Rc::new(self.read_entries(path, dir.ino).map_err(|e| e.to_string()));
                let mut dirs = self.dirs.borrow_mut();
                if dirs.len() == DIR_CACHE {
                    dirs.remove(0);
                }
                dirs.push((dir.ino, e.clone()));
                e
            }
        };
        match &*entries {
            Ok(list) => Ok(list.clone()),
            Err(why) => Err(corrupt(path, why.clone())),
        }
    }

    fn read_entries(&self, path: &[u8], dir: Ino) -> Result<Vec<(Vec<u8>, Ino)>> {
        let tree = self.tree(path, dir.tree)?;
        let mut out = Vec::new();
        self.search(
            path,
            tree,
            Key::first(dir.number, DIR_INDEX),
            Key::last(dir.number, DIR_INDEX),
            &mut |_, data| {
                for (name, location, _) in dir_items(data) {
                    if out.len() == MAX_DIR_ENTRIES {
                        return Err(corrupt(
                            path,
                            format!("a directory of more than {MAX_DIR_ENTRIES} entries"),
                        ));
                    }
                    let target = match location.kind {
                        INODE_ITEM => Ino {
                            tree: dir.tree,
                            number: location.objectid,
                        },
                        // A subvolume: its tree's root directory, found when entered.
                        ROOT_ITEM => Ino {
                            tree: location.objectid,
                            number: 0,
                        },
                        other => {
                            return Err(corrupt(
                                path,
                                format!("a directory entry pointing at an item of type {other}"),
                            ))
                        }
                    };
                    out.push((name.to_vec(), target));
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// The inode an entry names, entering a subvolume at its root directory.
    fn entry_inode(&self, path: &[u8], target: Ino) -> Result<Inode> {
        let ino = if target.number == 0 {
            self.subvolume_root(path, target.tree)?
        } else {
            target
        };
        self.inode(path, ino)
    }

    /// The inode at `path`, following no symlink; `None` when a component on the way
    /// is a symlink or "..", which the resolver handles.
    fn walk(&self, path: &[u8]) -> Result<Option<Inode>> {
        let mut inode = self.inode(path, self.top)?;
        let mut so_far = Vec::new();
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
            let target = self
                .entries(path, &inode)?
                .into_iter()
                .find(|(name, _)| name == part)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::NotFound { path: show(path) })?;
            inode = self.entry_inode(path, target)?;
            so_far.push(b'/');
            so_far.extend_from_slice(part);
            if let Some((_, graft)) = self.grafts.iter().find(|(at, _)| *at == so_far) {
                inode = self.inode(path, *graft)?;
            }
        }
        Ok(Some(inode))
    }

    fn lstat(&self, path: &[u8]) -> Result<Inode> {
        crate::lstat_with(self, path, |p| self.walk(p))
    }

    /// A file's extents, in file order.
    fn extents(&self, path: &[u8], ino: Ino) -> Result<Vec<FileExtent>> {
        let tree = self.tree(path, ino.tree)?;
        let mut out: Vec<FileExtent> = Vec::new();
        self.search(
            path,
            tree,
            Key::first(ino.number, EXTENT_DATA),
            Key::last(ino.number, EXTENT_DATA),
            &mut |key, d| {
                if out.len() == MAX_EXTENTS {
                    return Err(corrupt(path, format!("more than {MAX_EXTENTS} extents")));
                }
                let extent = parse_extent(path, key.offset, d)?;
                if extent.len > 0 {
                    out.push(extent);
                }
                Ok(())
            },
        )?;
        // Items come in key order, so by file offset; overlapping extents are damage
        // (and would make the reader's search ambiguous).
        for pair in out.windows(2) {
            if pair[0].file_offset.saturating_add(pair[0].len) > pair[1].file_offset {
                return Err(corrupt(
                    path,
                    format!(
                        "file extents at {} and {} overlap",
                        pair[0].file_offset, pair[1].file_offset
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// What a stored extent holds, decompressed: the bytes of file data it gives,
    /// starting at its own start (not at the file extent's offset into it).
    fn unpack(&self, path: &[u8], stored: &Stored) -> Result<Vec<u8>> {
        match stored {
            Stored::Inline { data, compression } => {
                if *compression == 0 {
                    return Ok(data.to_vec());
                }
                decompress(path, *compression, data, MAX_UNCOMPRESSED, self.sectorsize)
            }
            Stored::Disk {
                bytenr,
                disk_len,
                compression,
                ram_len,
                ..
            } => {
                if *disk_len > MAX_UNCOMPRESSED || *ram_len > MAX_UNCOMPRESSED {
                    return Err(corrupt(
                        path,
                        format!(
                            "a compressed extent of {disk_len} bytes holding {ram_len} (at most {MAX_UNCOMPRESSED})"
                        ),
                    ));
                }
                let mut raw = vec![0u8; *disk_len as usize];
                self.read_logical(path, &mut raw, *bytenr)?;
                decompress(path, *compression, &raw, *ram_len, self.sectorsize)
            }
            Stored::Zeros => Ok(Vec::new()),
        }
    }
}

/// The names distributions give the subvolume that holds the root, in the order
/// they are tried.
const ROOT_SUBVOLUME_NAMES: [&[u8]; 3] = [b"root", b"@", b"@rootfs"];
/// The most of /etc/fstab read to find the subvolumes it mounts.
const MAX_FSTAB: u64 = 1 << 20;

/// The btrfs subvolumes an fstab mounts below `/`: (mount point, subvolume name
/// relative to the top level), from `subvol=` options.
fn fstab_subvolumes(fstab: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for line in fstab.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty())
            .collect();
        let [spec, mount_point, kind, options, ..] = fields[..] else {
            continue;
        };
        if spec.starts_with(b"#") || kind != b"btrfs" || !mount_point.starts_with(b"/") {
            continue;
        }
        let mount_point = mount_point.strip_suffix(b"/").unwrap_or(mount_point);
        if mount_point.is_empty() {
            continue;
        }
        let subvolume = options
            .split(|&b| b == b',')
            .find_map(|o| o.strip_prefix(b"subvol="))
            .map(|s| s.strip_prefix(b"/").unwrap_or(s));
        if let Some(subvolume) = subvolume.filter(|s| !s.is_empty() && !s.contains(&b'/')) {
            out.push((mount_point.to_vec(), subvolume.to_vec()));
        }
    }
    out
}

/// The first MiB of a btrfs device is never allocated: it holds the boot area and
/// the primary superblock.
const RESERVED_START: u64 = 1 << 20;
/// Extent tree items: a data or metadata extent (key offset: its length), and a
/// metadata extent of the skinny kind (key offset: its level; length: a node).
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
/// The extent tree's object id in the root tree.
const EXTENT_TREE: u64 = 2;
/// The most extents the free-space reading keeps (64 MiB of ranges).
const MAX_EXTENTS_LISTED: usize = 1 << 22;

impl Btrfs {
    /// What the superblock counts: (bytes used, device bytes).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.bytes_used, self.device_bytes)
    }

    /// The bytes of the device no file or tree owns, as ranges from the device's
    /// start: the space of each chunk (both copies of a DUP chunk) that the extent
    /// tree does not list, and the device space outside every chunk, past the
    /// reserved first MiB.
    pub(crate) fn free_space(&self) -> Result<Vec<std::ops::Range<u64>>> {
        let path = b"(extent tree)";
        let extent_tree = self.tree(path, EXTENT_TREE)?;
        let mut used: Vec<std::ops::Range<u64>> = Vec::new();
        let nodesize = self.nodesize;
        self.search(
            path,
            extent_tree,
            Key::first(0, 0),
            Key::last(u64::MAX, u8::MAX),
            &mut |key, _| {
                let len = match key.kind {
                    EXTENT_ITEM => key.offset,
                    METADATA_ITEM => nodesize,
                    _ => return Ok(()),
                };
                let end = key.objectid.checked_add(len).ok_or_else(|| {
                    corrupt(
                        path,
                        format!("an extent at {} of {len} bytes", key.objectid),
                    )
                })?;
                if used.len() == MAX_EXTENTS_LISTED {
                    return Err(corrupt(
                        path,
                        format!("more than {MAX_EXTENTS_LISTED} extents"),
                    ));
                }
                used.push(key.objectid..end);
                Ok(())
            },
        )?;
        used.sort_by_key(|r| r.start);
        let mut out = Vec::new();
        let mut in_chunks = Vec::new();
        for c in &self.chunks {
            let copies = std::iter::once(c.physical).chain(c.copy);
            let free = subtract(c.logical..c.logical + c.length, &used);
            for physical in copies {
                in_chunks.push(physical..physical.saturating_add(c.length));
                let at = |l: u64| physical.saturating_add(l - c.logical);
                out.extend(free.iter().map(|r| at(r.start)..at(r.end)));
            }
        }
        in_chunks.sort_by_key(|r| r.start);
        let device = RESERVED_START..self.device_bytes.min(self.source.len());
        if device.start < device.end {
            out.extend(subtract(device, &in_chunks));
        }
        out.sort_by_key(|r| r.start);
        Ok(out)
    }
}

/// The parts of `whole` that no range of `taken` (sorted by start) covers.
fn subtract(
    whole: std::ops::Range<u64>,
    taken: &[std::ops::Range<u64>],
) -> Vec<std::ops::Range<u64>> {
    let mut out = Vec::new();
    let mut at = whole.start;
    let first = taken.partition_point(|r| r.end <= whole.start);
    for r in &taken[first..] {
        if r.start >= whole.end {
            break;
        }
        if r.start > at {
            out.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < whole.end {
        out.push(at..whole.end);
    }
    out
}

/// The chunk described at the start of `b` (its stripe on device `devid`, if it
/// has one there) and the bytes the description takes.
fn parse_chunk(
    b: &[u8],
    logical: u64,
    devid: u64,
) -> std::result::Result<(Option<Chunk>, usize), String> {
    const CHUNK_HEADER: usize = 48;
    const STRIPE_SIZE: usize = 32;
    if b.len() < CHUNK_HEADER {
        return Err("a chunk item cut short".into());
    }
    let (length, kind, stripes) = (le64(b, 0), le64(b, 24), usize::from(le16(b, 44)));
    let used = CHUNK_HEADER + stripes * STRIPE_SIZE;
    if stripes == 0 || b.len() < used {
        return Err(format!("{stripes} stripes in {} bytes", b.len()));
    }
    if length == 0 || logical.checked_add(length).is_none() {
        return Err(format!("a length of {length}"));
    }
    if kind & STRIPED != 0 && stripes > 1 {
        return Err(format!(
            "profile {kind:#x} stripes data over {stripes} stripes (not read)"
        ));
    }
    // Single, DUP and the mirrored profiles keep whole copies: any stripe on this
    // device will do. DUP keeps two on the one device.
    let mut here = (0..stripes)
        .map(|i| &b[CHUNK_HEADER + i * STRIPE_SIZE..])
        .filter(|s| le64(s, 0) == devid)
        .map(|s| le64(s, 8));
    Ok((
        here.next().map(|physical| Chunk {
            logical,
            length,
            physical,
            copy: here.next(),
        }),
        used,
    ))
}

/// The (name, location, type) entries packed in a DIR_ITEM or DIR_INDEX item.
/// A damaged entry ends the list.
fn dir_items(mut b: &[u8]) -> impl Iterator<Item = (&[u8], Key, u8)> {
    const DIR_ITEM_HEADER: usize = 30;
    std::iter::from_fn(move || {
        if b.len() < DIR_ITEM_HEADER {
            return None;
        }
        let location = Key::parse(b);
        let (data_len, name_len) = (usize::from(le16(b, 25)), usize::from(le16(b, 27)));
        let kind = b[29];
        let end = DIR_ITEM_HEADER + name_len + data_len;
        let name = b.get(DIR_ITEM_HEADER..DIR_ITEM_HEADER + name_len)?;
        let rest = b.get(end..)?;
        b = rest;
        Some((name, location, kind))
    })
}

fn parse_extent(path: &[u8], file_offset: u64, d: &[u8]) -> Result<FileExtent> {
    const INLINE_DATA: usize = 21;
    const REGULAR_SIZE: usize = 53;
    if d.len() < INLINE_DATA {
        return Err(corrupt(
            path,
            format!("a file extent item of {} bytes", d.len()),
        ));
    }
    let (ram_len, compression, encryption, kind) = (le64(d, 8), d[16], d[17], d[20]);
    if encryption != 0 || le16(d, 18) != 0 {
        return Err(unsupported(format!(
            "an encrypted or encoded extent at {} offset {file_offset}",
            show(path)
        )));
    }
    if compression > 3 {
        return Err(corrupt(path, format!("compression type {compression}")));
    }
    match kind {
        0 => Ok(FileExtent {
            file_offset,
            len: ram_len,
            stored: Stored::Inline {
                data: Rc::new(d[INLINE_DATA..].to_vec()),
                compression,
            },
        }),
        1 | 2 => {
            if d.len() < REGULAR_SIZE {
                return Err(corrupt(
                    path,
                    format!("a file extent item of {} bytes", d.len()),
                ));
            }
            let (bytenr, disk_len, offset, len) =
                (le64(d, 21), le64(d, 29), le64(d, 37), le64(d, 45));
            let stored = if bytenr == 0 || kind == 2 {
                Stored::Zeros
            } else {
                Stored::Disk {
                    bytenr,
                    disk_len,
                    offset,
                    compression,
                    ram_len,
                }
            };
            Ok(FileExtent {
                file_offset,
                len,
                stored,
            })
        }
        other => Err(corrupt(path, format!("a file extent of type {other}"))),
    }
}

/// Decompresses one extent: btrfs's zlib (1), LZO (2) or zstd (3) framing, into at
/// most `limit` bytes. Bytes the stream does not give read as zeros, as the kernel
/// reads them.
fn decompress(
    path: &[u8],
    compression: u8,
    data: &[u8],
    limit: u64,
    sector: u64,
) -> Result<Vec<u8>> {
    let bad = |what: &str, e: String| corrupt(path, format!("a {what} extent: {e}"));
    let mut out = Vec::new();
    match compression {
        1 => {
            flate2::read::ZlibDecoder::new(data)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| bad("zlib", e.to_string()))?;
        }
        3 => {
            let decoder = zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| bad("zstd", e.to_string()))?;
            decoder
                .single_frame()
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| bad("zstd", e.to_string()))?;
        }
        2 => lzo_extent(data, limit, sector, &mut out).map_err(|e| bad("LZO", e))?,
        other => return Err(corrupt(path, format!("compression type {other}"))),
    }
    Ok(out)
}

/// btrfs's LZO framing: the total length (4 bytes), then segments of a length (4
/// bytes) and LZO1X data for one sector each; a segment's length never straddles a
/// sector boundary (the bytes before the boundary are padding).
fn lzo_extent(
    data: &[u8],
    limit: u64,
    sector: u64,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let sector = sector as usize;
    let total = data
        .get(..4)
        .map(|b| le32(b, 0) as usize)
        .ok_or("no length")?;
    if total > data.len() || total < 4 {
        return Err(format!("a total length of {total} in {} bytes", data.len()));
    }
    let mut pos = 4;
    let mut page = vec![0u8; sector];
    while pos < total && (out.len() as u64) < limit {
        if sector - pos % sector < 4 {
            pos = pos.next_multiple_of(sector);
            if pos >= total {
                break;
            }
        }
        let len = data
            .get(pos..pos + 4)
            .map(|b| le32(b, 0) as usize)
            .ok_or("a segment length past the end")?;
        pos += 4;
        let seg = data
            .get(pos..pos + len)
            .filter(|_| pos + len <= total)
            .ok_or_else(|| format!("a segment of {len} bytes past the end"))?;
        let n = lzo::decompress_into(seg, &mut page).map_err(|e| format!("{e:?}"))?;
        let keep = n.min((limit - out.len() as u64) as usize);
        out.extend_from_slice(&page[..keep]);
        pos += len;
    }
    Ok(())
}

fn csum_name(kind: u16) -> String {
    match kind {
        1 => "xxhash64".into(),
        2 => "sha256".into(),
        3 => "blake2b".into(),
        other => format!("{other}"),
    }
}

impl Filesystem for Btrfs {
    fn kind(&self) -> FsKind {
        FsKind::Btrfs
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn unreachable(&self) -> Vec<(String, String)> {
        self.unreachable.clone()
    }

    fn metadata(&self, path: &[u8]) -> Result<Metadata> {
        Ok(self.lstat(path)?.metadata())
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>> {
        let resolved = crate::resolve(self, path)?;
        let dir = self.lstat(&resolved)?;
        self.entries(path, &dir)?
            .into_iter()
            .map(|(name, target)| {
                Ok(DirEntry {
                    metadata: self.entry_inode(path, target)?.metadata(),
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
        let mut target = Vec::new();
        self.open_inode(path, &inode)?
            .read_to_end(&mut target)
            .map_err(|e| corrupt(path, e.to_string()))?;
        Ok(target)
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        let resolved = crate::resolve(self, path)?;
        self.open_walked(&resolved)
    }

    fn open_walked(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        let inode = self.lstat(path)?;
        match inode.kind() {
            FileKind::File => Ok(Box::new(self.open_inode(path, &inode)?)),
            FileKind::Dir => Err(Error::WrongType {
                path: show(path),
                reason: "is a directory",
            }),
            _ => Err(Error::WrongType {
                path: show(path),
                reason: "not a regular file",
            }),
        }
    }
}

impl Btrfs {
    fn open_inode(&self, path: &[u8], inode: &Inode) -> Result<BtrfsFile<'_>> {
        Ok(BtrfsFile {
            fs: self,
            path: path.to_vec(),
            extents: self.extents(path, inode.ino)?,
            size: inode.size,
            pos: 0,
            unpacked: None,
        })
    }
}

/// A regular file's (or a symlink's) bytes.
struct BtrfsFile<'a> {
    fs: &'a Btrfs,
    path: Vec<u8>,
    extents: Vec<FileExtent>,
    size: u64,
    pos: u64,
    /// The last extent decompressed: its index and its bytes.
    unpacked: Option<(usize, Vec<u8>)>,
}

impl BtrfsFile<'_> {
    /// Fills `buf` from file offset `self.pos`; `buf` does not reach past the size.
    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        let fs = self.fs;
        let path = &self.path;
        let mut done = 0usize;
        while done < buf.len() {
            let at = self.pos + done as u64;
            let left = buf.len() - done;
            let i = self
                .extents
                .partition_point(|e| e.file_offset.saturating_add(e.len) <= at);
            let Some(e) = self.extents.get(i).filter(|e| e.file_offset <= at) else {
                // A hole (NO_HOLES leaves no item for it): zeros up to the next extent.
                let next = self.extents.get(i).map_or(u64::MAX, |e| e.file_offset);
                let n = (next - at).min(left as u64) as usize;
                buf[done..done + n].fill(0);
                done += n;
                continue;
            };
            let within = at - e.file_offset;
            let n = (e.len - within).min(left as u64) as usize;
            let out = &mut buf[done..done + n];
            match &e.stored {
                Stored::Zeros => out.fill(0),
                Stored::Disk {
                    bytenr,
                    offset,
                    compression: 0,
                    ..
                } => {
                    let disk = offset
                        .checked_add(within)
                        .and_then(|o| bytenr.checked_add(o))
                        .ok_or_else(|| corrupt(path, "an extent past 2^64"))?;
                    fs.read_logical(path, out, disk)?;
                }
                stored => {
                    if self.unpacked.as_ref().is_none_or(|(k, _)| *k != i) {
                        self.unpacked = Some((i, fs.unpack(path, stored)?));
                    }
                    let skip = match stored {
                        Stored::Disk { offset, .. } => *offset,
                        _ => 0,
                    };
                    let bytes = self.unpacked.as_ref().map_or(&[][..], |(_, b)| b);
                    let from = skip.saturating_add(within).min(bytes.len() as u64) as usize;
                    let have = (bytes.len() - from).min(n);
                    out[..have].copy_from_slice(&bytes[from..from + have]);
                    out[have..].fill(0);
                }
            }
            done += n;
        }
        Ok(())
    }
}

impl Read for BtrfsFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.fill(&mut buf[..n]).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// CRC-32C (Castagnoli), as btrfs checksums its metadata by default.
fn crc32c(bytes: &[u8]) -> u32 {
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    CASTAGNOLI.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_objectid_then_type_then_offset() {
        let a = Key::first(256, INODE_ITEM);
        let b = Key::last(256, INODE_ITEM);
        let c = Key::first(256, DIR_INDEX);
        let d = Key::first(257, INODE_ITEM);
        assert!(a < b && b < c && c < d);
    }

    #[test]
    fn a_striped_chunk_over_two_stripes_is_refused() {
        let mut b = vec![0u8; 48 + 64];
        b[0..8].copy_from_slice(&(1u64 << 20).to_le_bytes());
        b[24..32].copy_from_slice(&(1u64 | BLOCK_GROUP_RAID0).to_le_bytes());
        b[44..46].copy_from_slice(&2u16.to_le_bytes());
        assert!(parse_chunk(&b, 0, 1).is_err());
    }

    #[test]
    fn a_dup_chunk_maps_to_its_first_stripe_on_this_device() {
        let mut b = vec![0u8; 48 + 64];
        b[0..8].copy_from_slice(&(1u64 << 20).to_le_bytes());
        b[24..32].copy_from_slice(&(4u64 | 1 << 5).to_le_bytes());
        b[44..46].copy_from_slice(&2u16.to_le_bytes());
        for (i, at) in [(0usize, 7u64 << 20), (1, 9 << 20)] {
            let s = 48 + i * 32;
            b[s..s + 8].copy_from_slice(&1u64.to_le_bytes());
            b[s + 8..s + 16].copy_from_slice(&at.to_le_bytes());
        }
        let (chunk, used) = parse_chunk(&b, 1 << 30, 1).expect("a valid chunk");
        assert_eq!(used, 48 + 64);
        let chunk = chunk.expect("a stripe on device 1");
        assert_eq!((chunk.logical, chunk.physical), (1 << 30, 7 << 20));
        assert_eq!(chunk.copy, Some(9 << 20), "the DUP copy is known too");
    }

    #[test]
    fn free_space_is_what_the_taken_ranges_leave() {
        let taken = [0..5, 20..30, 25..40, 90..200];
        assert_eq!(subtract(10..100, &taken), [10..20, 40..90]);
        assert_eq!(subtract(10..20, &taken[..0]).len(), 1, "nothing taken");
        assert!(subtract(22..28, &taken).is_empty(), "all taken");
    }

    #[test]
    fn fstab_names_the_subvolumes_mounted_below_the_root() {
        let fstab = b"# /etc/fstab\n\
UUID=1 / btrfs subvol=root,compress=zstd:1 0 0\n\
UUID=2 /boot ext4 defaults 1 2\n\
UUID=1 /home btrfs subvol=/home,compress=zstd:1 0 0\n\
UUID=1 /var/log btrfs defaults 0 0\n";
        assert_eq!(
            fstab_subvolumes(fstab),
            vec![(b"/home".to_vec(), b"home".to_vec())],
            "the root itself and mounts without subvol= are not grafts"
        );
    }

    #[test]
    fn an_lzo_length_past_the_data_is_an_error_not_a_panic() {
        let mut data = vec![0u8; 64];
        data[..4].copy_from_slice(&64u32.to_le_bytes());
        data[4..8].copy_from_slice(&4000u32.to_le_bytes());
        let mut out = Vec::new();
        assert!(lzo_extent(&data, 4096, 4096, &mut out).is_err());
    }
}
