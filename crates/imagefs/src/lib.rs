//! Read-only filesystems inside disk images.
//!
//! - [`probe`] names the filesystem on a partition by its on-disk magic, including the
//!   ones amiforge recognises but cannot read (LVM2, LUKS, swap, squashfs,
//!   erofs, NTFS, ISO9660).
//! - [`open`] gives a [`Filesystem`] for the readable kinds: ext2/3/4 through
//!   `ext4-view`, or through amiforge's own tolerant reader for the old and unusual
//!   layouts `ext4-view` refuses (128-byte inodes, no filetype, inline data...), and
//!   FAT12/16/32 through a reader of our own that follows the Linux kernel's rules,
//!   XFS v4/v5 and single-device btrfs (subvolumes, zlib/LZO/zstd extents) through
//!   readers of our own.
//!   Sources are read-only, and data past the end of the image is an error, never a
//!   short file.
//! - [`unallocated`] lists the bytes of an ext or FAT volume that no file owns, where
//!   deleted files' data survives.
//! - [`walk`] visits every entry of a filesystem, bounded in depth and count, and
//!   records every entry it could not read instead of skipping it.
//!
//! Paths inside images are bytes, not UTF-8. Symbolic links are resolved inside the
//! filesystem's own root: `..` at the root stays at the root, so no link can reach
//! outside the image.

mod btrfs;
mod ext4;
mod ext_tolerant;
mod fat;
mod probe;
pub mod raid;
mod unallocated;
mod walk;
mod xfs;
mod xfs_log;

use serde::Serialize;
use std::io::Read;
use std::sync::Arc;

pub use probe::{probe, probe_all, probe_bytes, FsKind};
pub use unallocated::{unallocated, usage, Usage};
pub use walk::{walk, WalkEntry, WalkLimits, WalkOutcome, WalkProblem};

/// What went wrong inside a filesystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such file or directory.
    #[error("{path}: not found")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// A file operation on a directory, or the reverse.
    #[error("{path}: {reason}")]
    WrongType {
        /// The path asked for.
        path: String,
        /// "is a directory", "not a directory", "not a symlink"...
        reason: &'static str,
    },
    /// The filesystem cannot be read by this tool (an unsupported feature).
    #[error("{kind} filesystem uses something amiforge cannot read: {reason}")]
    Unsupported {
        /// The filesystem kind.
        kind: &'static str,
        /// The feature or reason.
        reason: String,
    },
    /// The filesystem's structures are damaged.
    #[error("{kind} filesystem is corrupt{}: {reason}", at(path))]
    Corrupt {
        /// The filesystem kind.
        kind: &'static str,
        /// The path being read, if any.
        path: Option<String>,
        /// What the reader said.
        reason: String,
    },
    /// Symbolic links that lead around in a loop (or further than Linux follows).
    #[error("{path}: a symbolic link loop (more than {hops} links followed)")]
    Loop {
        /// The path being resolved.
        path: String,
        /// How many links were followed before giving up.
        hops: usize,
    },
    /// A file is larger than the caller's bound.
    #[error("{path}: {size} bytes exceeds the {limit}-byte limit for reading it whole")]
    TooLarge {
        /// The path.
        path: String,
        /// The file's size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// Reading the underlying image failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The path being read ("(superblock)" for the filesystem itself).
        path: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn at(path: &Option<String>) -> String {
    path.as_ref()
        .map(|p| format!(" at {p}"))
        .unwrap_or_default()
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The type of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileKind {
    /// The type an inode's st_mode gives (its top four bits).
    pub fn from_mode(mode: u32) -> Self {
        match mode & 0o170000 {
            0o040000 => FileKind::Dir,
            0o100000 => FileKind::File,
            0o120000 => FileKind::Symlink,
            0o020000 => FileKind::CharDevice,
            0o060000 => FileKind::BlockDevice,
            0o010000 => FileKind::Fifo,
            _ => FileKind::Socket,
        }
    }

    /// The `ls -l` type letter.
    pub fn letter(self) -> char {
        match self {
            FileKind::File => '-',
            FileKind::Dir => 'd',
            FileKind::Symlink => 'l',
            FileKind::CharDevice => 'c',
            FileKind::BlockDevice => 'b',
            FileKind::Fifo => 'p',
            FileKind::Socket => 's',
        }
    }
}

/// What `lstat` would say about an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// Entry type.
    pub kind: FileKind,
    /// Permission bits (the low 12 bits of st_mode).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// One name in a directory.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The name, as stored: bytes.
    pub name: Vec<u8>,
    /// Its metadata (not following symlinks).
    pub metadata: Metadata,
}

/// A read-only view of one filesystem. Paths are absolute byte strings.
///
/// Implementations are not `Send`: open one per thread.
pub trait Filesystem {
    /// The filesystem kind.
    fn kind(&self) -> FsKind;
    /// Metadata of `path`, not following a final symlink.
    fn metadata(&self, path: &[u8]) -> Result<Metadata>;
    /// The entries of a directory, without `.` and `..`, in on-disk order.
    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>>;
    /// The target of a symlink.
    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>>;
    /// Opens a regular file for reading, following symlinks inside the image.
    fn open(&self, path: &[u8]) -> Result<Box<dyn std::io::Read + '_>>;

    /// Lists a directory at a path a [`walk`] produced (no component of it is a
    /// symlink), as [`Filesystem::read_dir`] does: a reader may skip resolving it.
    fn read_dir_walked(&self, path: &[u8]) -> Result<Vec<DirEntry>> {
        self.read_dir(path)
    }

    /// Opens a regular file at a path a [`walk`] produced: no component of it is
    /// a symlink, so the in-image resolution [`Filesystem::open`] does first
    /// (a lookup from the root for every component) is skipped. Only for such paths.
    fn open_walked(&self, path: &[u8]) -> Result<Box<dyn std::io::Read + '_>> {
        self.open(path)
    }

    /// What was unusual about the volume but did not stop it being read: a layout
    /// another reader would refuse, a journal not replayed.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Parts of the volume that no path under `/` reaches, so that a walk does not
    /// read them, each with the reason: (what, why). A btrfs subvolume that the
    /// chosen root's /etc/fstab mounts nowhere, say.
    fn unreachable(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Streams a regular file into `out`; returns the bytes copied. A file whose
    /// data ends before its recorded size is an error, never a short copy.
    fn copy_to(&self, path: &[u8], out: &mut dyn std::io::Write) -> Result<u64> {
        let size = self.stat(path)?.size;
        let mut file = self.open(path)?;
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| read_error(path, e))?;
            if n == 0 {
                if total != size {
                    return Err(Error::Corrupt {
                        kind: self.kind().name(),
                        path: Some(show(path)),
                        reason: format!("file data ends after {total} of {size} bytes"),
                    });
                }
                return Ok(total);
            }
            out.write_all(&buf[..n]).map_err(|e| Error::Read {
                path: "(output)".into(),
                source: Box::new(e),
            })?;
            total += n as u64;
        }
    }

    /// Reads at most the first `n` bytes of a regular file.
    fn read_head(&self, path: &[u8], n: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(path)?
            .take(n)
            .read_to_end(&mut buf)
            .map_err(|e| read_error(path, e))?;
        Ok(buf)
    }

    /// Reads a whole regular file, refusing files larger than `limit`.
    fn read_file(&self, path: &[u8], limit: u64) -> Result<Vec<u8>> {
        let size = self.stat(path)?.size;
        if size > limit {
            return Err(Error::TooLarge {
                path: show(path),
                size,
                limit,
            });
        }
        let data = self.read_head(path, size)?;
        if data.len() as u64 != size {
            return Err(Error::Corrupt {
                kind: self.kind().name(),
                path: Some(show(path)),
                reason: format!("file data ends after {} of {size} bytes", data.len()),
            });
        }
        Ok(data)
    }

    /// Metadata of `path`, following symlinks inside the image.
    fn stat(&self, path: &[u8]) -> Result<Metadata> {
        let resolved = resolve(self, path)?;
        self.metadata(&resolved)
    }
}

/// Size of each read when streaming a file out.
const COPY_CHUNK: usize = 256 * 1024;

/// Reads `buf.len()` bytes at `offset` of `source` for the file or structure `path`.
pub(crate) fn read_at(
    source: &dyn blockio::BlockSource,
    path: &[u8],
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    source.read_exact_at(buf, offset).map_err(|e| Error::Read {
        path: show(path),
        source: Box::new(e),
    })
}

fn read_error(path: &[u8], e: std::io::Error) -> Error {
    Error::Read {
        path: show(path),
        source: Box::new(e),
    }
}

/// Shows a byte path for messages and reports: UTF-8 as it is, every byte that is
/// not valid UTF-8 as `\xNN`.
pub fn show(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for chunk in path.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Linux's limit on symlinks followed while resolving one path (MAXSYMLINKS).
pub const MAX_SYMLINK_HOPS: usize = 40;
/// Looks `path` up without following its last component. `walk` finds it directly,
/// or answers `None` when a component on the way is a symlink or `..`; then the
/// parent is resolved (inside the image) and the name walked from there.
pub(crate) fn lstat_with<F: Filesystem + ?Sized, T>(
    fs: &F,
    path: &[u8],
    walk: impl Fn(&[u8]) -> Result<Option<T>>,
) -> Result<T> {
    if let Some(found) = walk(path)? {
        return Ok(found);
    }
    let cut = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
    let (parent, name) = path.split_at(cut);
    let mut resolved = resolve(fs, if parent.is_empty() { b"/" } else { parent })?;
    if !resolved.ends_with(b"/") {
        resolved.push(b'/');
    }
    resolved.extend_from_slice(name.strip_prefix(b"/").unwrap_or(name));
    walk(&resolved)?.ok_or_else(|| Error::NotFound { path: show(path) })
}

/// Linux's PATH_MAX.
pub const MAX_PATH_LEN: usize = 4096;

/// Resolves `path` inside `fs`, following symlinks, so that the result names no
/// symlink. Absolute targets restart at the filesystem's root and `..` at the root
/// stays there: the result is always inside the image.
pub fn resolve<F: Filesystem + ?Sized>(fs: &F, path: &[u8]) -> Result<Vec<u8>> {
    let mut pending: Vec<Vec<u8>> = components(path).rev().map(<[u8]>::to_vec).collect();
    let mut resolved: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_slice() {
            b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        resolved.push(c);
        let here = join(&resolved);
        let meta = fs.metadata(&here).map_err(|e| match e {
            Error::NotFound { .. } if here != path => {
                let how = if hops > 0 { "resolved to" } else { "no" };
                Error::NotFound {
                    path: format!("{} ({how} {})", show(path), show(&here)),
                }
            }
            other => other,
        })?;
        if meta.kind == FileKind::Symlink {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(Error::Loop {
                    path: show(path),
                    hops: MAX_SYMLINK_HOPS,
                });
            }
            let target = fs.read_link(&here)?;
            resolved.pop();
            if target.starts_with(b"/") {
                resolved.clear();
            }
            pending.extend(components(&target).rev().map(<[u8]>::to_vec));
            if pending.iter().map(Vec::len).sum::<usize>() > MAX_PATH_LEN {
                return Err(Error::Corrupt {
                    kind: fs.kind().name(),
                    path: Some(show(path)),
                    reason: format!("resolving it exceeds {MAX_PATH_LEN} bytes"),
                });
            }
        }
    }
    Ok(join(&resolved))
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

/// Joins components into an absolute path.
pub fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    out
}

/// Opens a readable filesystem on `source`. `kind` comes from [`probe`].
pub fn open(source: Arc<dyn blockio::BlockSource>, kind: FsKind) -> Result<Box<dyn Filesystem>> {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => ext4::open(source, kind),
        FsKind::Vfat => Ok(Box::new(fat::FatFs::open(source)?)),
        FsKind::Xfs => Ok(Box::new(xfs::Xfs::open(source)?)),
        FsKind::Btrfs => Ok(Box::new(btrfs::Btrfs::open(source)?)),
        other => Err(Error::Unsupported {
            kind: other.name(),
            reason: "no reader for this filesystem".into(),
        }),
    }
}
