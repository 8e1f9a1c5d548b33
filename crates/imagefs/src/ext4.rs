//! ext2/3/4 through `ext4-view`, reading through a positional source, and the
//! routing of the layouts it refuses to [`crate::ext_tolerant`].

use crate::ext_tolerant::{self as tolerant, TolerantExt};
use crate::{show, DirEntry, Error, FileKind, Filesystem, FsKind, Metadata, Result};
use blockio::BlockSource;
use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType, Path};
use std::sync::Arc;

struct Reader(Arc<dyn BlockSource>);

impl Ext4Read for Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.read_exact_at(dst, start_byte)?)
    }
}

/// ro_compat metadata_csum: with 128-byte inodes, ext4-view wants a checksum field
/// that only larger inodes have.
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// Why ext4-view would refuse a volume the kernel reads, from its superblock.
fn refused_by_ext4_view(sb: &[u8]) -> Option<String> {
    let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    let incompat = le32(0x60);
    let ro_compat = le32(0x64);
    let inode_size = if le32(0x4c) == 0 {
        128
    } else {
        u16::from_le_bytes([sb[0x58], sb[0x59]])
    };
    let mut why = Vec::new();
    if incompat & tolerant::INCOMPAT_FILETYPE == 0 {
        why.push("its directory entries carry no file type (no filetype feature)".to_string());
    }
    if inode_size == 128 && ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        why.push("128-byte inodes on a metadata_csum volume".into());
    }
    let features = [
        (tolerant::INCOMPAT_META_BG, "meta_bg"),
        (tolerant::INCOMPAT_MMP, "mmp"),
        (tolerant::INCOMPAT_EA_INODE, "ea_inode"),
        (tolerant::INCOMPAT_LARGEDIR, "largedir"),
        (tolerant::INCOMPAT_INLINE_DATA, "inline_data"),
    ];
    let used: Vec<&str> = features
        .iter()
        .filter(|(bit, _)| incompat & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if !used.is_empty() {
        why.push(format!("it uses {}", used.join(", ")));
    }
    (!why.is_empty()).then(|| format!("ext4-view does not read {}", why.join("; ")))
}

/// Opens an ext2/3/4 volume with ext4-view, or with amiforge's own reader where
/// ext4-view refuses what the kernel reads.
pub(crate) fn open(source: Arc<dyn BlockSource>, kind: FsKind) -> Result<Box<dyn Filesystem>> {
    let mut sb = vec![0u8; 1024];
    source
        .read_exact_at(&mut sb, 1024)
        .map_err(|e| Error::Read {
            path: "(superblock)".into(),
            source: Box::new(e),
        })?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return Err(Error::Corrupt {
            kind: kind.name(),
            path: None,
            reason: "no ext superblock magic".into(),
        });
    }
    if let Some(why) = refused_by_ext4_view(&sb) {
        return Ok(Box::new(TolerantExt::open(source, kind, why)?));
    }
    match Ext4Fs::open(source.clone(), kind) {
        Ok(fs) => Ok(Box::new(fs)),
        Err(Error::Unsupported { reason, .. }) => Ok(Box::new(TolerantExt::open(
            source,
            kind,
            format!("ext4-view refused it: {reason}"),
        )?)),
        Err(e) => Err(e),
    }
}

/// An ext2/3/4 filesystem read by ext4-view.
pub(crate) struct Ext4Fs {
    fs: Ext4,
    kind: FsKind,
    source: Arc<dyn BlockSource>,
    /// amiforge's own reader of the same volume, made on first use, for
    /// [`Filesystem::open_walked`]: ext4-view opens only by path, and each open
    /// scans every directory on the way, which in the unindexed directories
    /// `mkfs.ext4 -d` writes (`/var/lib/dpkg/info`) made the audit quadratic. `None`
    /// when that reader would not give the same bytes (a journal to replay).
    by_inode: std::cell::OnceCell<Option<TolerantExt>>,
}

fn convert(kind: FsKind, path: &[u8], e: Ext4Error) -> Error {
    let p = show(path);
    match e {
        Ext4Error::NotFound => Error::NotFound { path: p },
        Ext4Error::IsADirectory => Error::WrongType {
            path: p,
            reason: "is a directory",
        },
        Ext4Error::NotADirectory => Error::WrongType {
            path: p,
            reason: "not a directory",
        },
        Ext4Error::NotASymlink => Error::WrongType {
            path: p,
            reason: "not a symlink",
        },
        Ext4Error::IsASpecialFile => Error::WrongType {
            path: p,
            reason: "is a special file",
        },
        Ext4Error::Io(source) => Error::Read { path: p, source },
        Ext4Error::Incompatible(i) => Error::Unsupported {
            kind: kind.name(),
            reason: i.to_string(),
        },
        Ext4Error::Encrypted => Error::Unsupported {
            kind: kind.name(),
            reason: format!("{p} is encrypted"),
        },
        other => Error::Corrupt {
            kind: kind.name(),
            path: Some(p),
            reason: other.to_string(),
        },
    }
}

impl Ext4Fs {
    /// amiforge's own reader of the volume, made on first use; `None` when it would
    /// not read what ext4-view reads.
    fn by_inode(&self) -> Option<&TolerantExt> {
        self.by_inode
            .get_or_init(|| {
                TolerantExt::open(self.source.clone(), self.kind, String::new())
                    .ok()
                    .filter(TolerantExt::reads_like_ext4_view)
            })
            .as_ref()
    }

    pub(crate) fn open(source: Arc<dyn BlockSource>, kind: FsKind) -> Result<Self> {
        let fs = Ext4::load(Box::new(Reader(source.clone()))).map_err(|e| {
            match convert(kind, b"", e) {
                Error::Corrupt { kind, reason, .. } => Error::Corrupt {
                    kind,
                    path: None,
                    reason,
                },
                Error::Read { source, .. } => Error::Read {
                    path: "(superblock)".into(),
                    source,
                },
                other => other,
            }
        })?;
        Ok(Self {
            fs,
            kind,
            source,
            by_inode: std::cell::OnceCell::new(),
        })
    }

    fn err(&self, path: &[u8]) -> impl Fn(Ext4Error) -> Error + '_ {
        let path = path.to_vec();
        move |e| convert(self.kind, &path, e)
    }
}

/// A path ext4-view accepts: no NUL bytes and components of at most 255 bytes.
fn path(p: &[u8]) -> Result<Path<'_>> {
    Path::try_from(p).map_err(|_| Error::NotFound { path: show(p) })
}

fn file_kind(t: FileType) -> FileKind {
    match t {
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        _ => FileKind::File,
    }
}

fn metadata(m: &ext4_view::Metadata) -> Metadata {
    Metadata {
        kind: file_kind(m.file_type()),
        mode: u32::from(m.mode()) & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: m.len(),
        mtime: m.modified().seconds(),
    }
}

impl Filesystem for Ext4Fs {
    fn kind(&self) -> FsKind {
        self.kind
    }

    fn metadata(&self, p: &[u8]) -> Result<Metadata> {
        if !p.starts_with(b"/") {
            return Err(Error::NotFound { path: show(p) });
        }
        let m = self.fs.symlink_metadata(path(p)?).map_err(self.err(p))?;
        Ok(metadata(&m))
    }

    fn read_dir(&self, p: &[u8]) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let dir = self.fs.read_dir(path(p)?).map_err(self.err(p))?;
        for entry in dir {
            let entry = entry.map_err(self.err(p))?;
            let name = entry.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let m = entry.metadata().map_err(|e| {
                let mut child = p.to_vec();
                if !child.ends_with(b"/") {
                    child.push(b'/');
                }
                child.extend_from_slice(&name);
                convert(self.kind, &child, e)
            })?;
            out.push(DirEntry {
                name,
                metadata: metadata(&m),
            });
        }
        Ok(out)
    }

    fn read_link(&self, p: &[u8]) -> Result<Vec<u8>> {
        let target = self.fs.read_link(path(p)?).map_err(self.err(p))?;
        Ok(target.as_ref().to_vec())
    }

    fn open(&self, p: &[u8]) -> Result<Box<dyn std::io::Read + '_>> {
        // Resolve inside the image ourselves, so that `..` never climbs above the root.
        let resolved = crate::resolve(self, p)?;
        self.open_walked(&resolved)
    }

    fn read_dir_walked(&self, p: &[u8]) -> Result<Vec<DirEntry>> {
        // ext4-view resolves every path from the root, scanning each directory on
        // the way: listing every directory of a volume that way is quadratic.
        // Anything the fast reader cannot list (a checksum that does not match, a
        // symlink on the way) goes to ext4-view, whose answer stands.
        if let Some(Ok(Some(entries))) = self.by_inode().map(|t| t.read_dir_walked(p)) {
            return Ok(entries);
        }
        self.read_dir(p)
    }

    fn open_walked(&self, p: &[u8]) -> Result<Box<dyn std::io::Read + '_>> {
        // Anything the fast reader cannot open (encrypted, unusual) goes to
        // ext4-view, whose answer stands.
        if let Some(file) = self.by_inode().and_then(|t| t.open_walked(p).ok()) {
            return Ok(file);
        }
        let file = self.fs.open(path(p)?).map_err(self.err(p))?;
        Ok(Box::new(file))
    }
}
