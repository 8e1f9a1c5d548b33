//! ext2/3/4 through `ext4-view`, reading through a positional source.

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

/// An ext2/3/4 filesystem.
pub(crate) struct Ext4Fs {
    fs: Ext4,
    kind: FsKind,
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
    pub(crate) fn open(source: Arc<dyn BlockSource>, kind: FsKind) -> Result<Self> {
        let fs = Ext4::load(Box::new(Reader(source))).map_err(|e| match convert(kind, b"", e) {
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
        })?;
        Ok(Self { fs, kind })
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
        let file = self.fs.open(path(&resolved)?).map_err(self.err(p))?;
        Ok(Box::new(file))
    }
}
