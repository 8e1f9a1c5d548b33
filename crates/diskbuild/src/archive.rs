//! A root tree from a tar archive (plain, gzip, xz or zstd, told apart by their
//! magic), unpacked into a temporary directory beside the output with the entries'
//! modes, owners, times, extended attributes, links and device nodes.
//!
//! Hostile archives: an entry whose path is absolute or climbs out with `..` is an
//! error naming it, never a silent skip; the unpacked bytes are bounded by the
//! disk's size (an archive that holds more cannot fit anyway).

use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::BuildError;

/// A tree unpacked from an archive; removed when dropped.
pub struct Unpacked {
    dir: tempfile::TempDir,
    /// Entries unpacked.
    pub entries: u64,
}

impl Unpacked {
    /// The tree's root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Stops with an error once more than `left` bytes have been read.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the archive unpacks to more than the disk holds",
            )
        })?;
        Ok(n)
    }
}

/// The archive's decompressor, chosen by the first bytes.
fn decompressed(path: &Path) -> Result<Box<dyn Read>, BuildError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { what, path, source }
    };
    let mut file = BufReader::new(std::fs::File::open(path).map_err(io("open"))?);
    let mut magic = [0u8; 6];
    let n = {
        use std::io::BufRead;
        let head = file.fill_buf().map_err(io("read"))?;
        let n = head.len().min(magic.len());
        magic[..n].copy_from_slice(&head[..n]);
        n
    };
    let magic = &magic[..n];
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::read::XzDecoder::new(file))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io("read"))?)
    } else {
        Box::new(file)
    })
}

/// Unpacks `archive` into a new directory inside `near`; at most `limit` bytes of
/// tar stream are read.
pub fn unpack(archive: &Path, near: &Path, limit: u64) -> Result<Unpacked, BuildError> {
    let bad = |reason: String| BuildError::Tree {
        tree: archive.to_path_buf(),
        reason,
    };
    let dir = tempfile::Builder::new()
        .prefix(".amiforge-tree-")
        .tempdir_in(near)
        .map_err(|source| BuildError::Io {
            what: "create a directory for the archive in",
            path: near.to_path_buf(),
            source,
        })?;
    // The root of a tree is world-readable unless the archive says otherwise.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|source| BuildError::Io {
        what: "set the mode of",
        path: dir.path().to_path_buf(),
        source,
    })?;
    let reader = Bounded {
        inner: decompressed(archive)?,
        left: limit,
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(true);
    tar.set_overwrite(true);
    let mut entries = 0;
    // Directories' times are set again at the end: their entries moved them.
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let list = tar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in list {
        let mut entry = entry.map_err(|e| bad(format!("entry {}: {e}", entries + 1)))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("entry {}: {e}", entries + 1)))?
            .into_owned();
        let inside = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(bad(format!(
                "entry {} ({}) is not inside the archive's tree",
                entries + 1,
                path.display()
            )));
        }
        if entry.header().entry_type().is_dir() {
            if let Ok(mtime) = entry.header().mtime() {
                dir_times.push((dir.path().join(&path), mtime));
            }
        }
        let unpacked = entry
            .unpack_in(dir.path())
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if !unpacked {
            return Err(bad(format!(
                "{}: refused by the unpacker (outside the tree)",
                path.display()
            )));
        }
        entries += 1;
    }
    for (path, mtime) in dir_times.iter().rev() {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(*mtime);
        std::fs::File::open(path)
            .and_then(|f| f.set_modified(time))
            .map_err(|source| BuildError::Io {
                what: "set the time of",
                path: path.clone(),
                source,
            })?;
    }
    Ok(Unpacked { dir, entries })
}
