//! Positional, thread-safe byte sources for disk images.
//!
//! Everything amiforge reads goes through [`BlockSource`]: a length and a
//! `read_exact_at(buf, offset)` with `pread` semantics (no cursor, `&self`, shareable
//! across threads). Reading past the end is an error, never silent padding, so a
//! truncated image is always reported.
//!
//! Implementations:
//! - [`FileSource`]: a file, opened read-only, read with `pread`, with hole
//!   discovery through `SEEK_DATA`/`SEEK_HOLE`. It reads the file's bytes as they
//!   are: telling a raw disk from a container (qcow2, VMDK, ...) is the `diskimage`
//!   crate's job;
//! - [`Window`]: a byte range of another source (a partition);
//! - [`MemorySource`]: bytes in memory, for tests.
//!
//! ```
//! use blockio::{BlockSource, MemorySource, Window};
//! use std::sync::Arc;
//!
//! let disk = Arc::new(MemorySource::new(b"....hello....".to_vec()));
//! let part = Window::new(disk, 4, 5).unwrap();
//! let mut buf = [0u8; 5];
//! part.read_exact_at(&mut buf, 0).unwrap();
//! assert_eq!(&buf, b"hello");
//! assert!(part.read_exact_at(&mut buf, 1).is_err());
//! ```

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What went wrong while reading a source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused or failed an operation.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation ("open", "read", "seek data").
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A read reached past the end of the source.
    #[error("read of {len} bytes at offset {offset} runs past the end of {name} ({size} bytes): the image is truncated or a structure points outside it")]
    OutOfBounds {
        /// A short name for the source.
        name: String,
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: usize,
        /// The source's size.
        size: u64,
    },
    /// A structure inside the source is damaged (found while reading, such as a
    /// compressed cluster that does not unpack).
    #[error("{name}: {structure} at offset {offset}: {reason}")]
    Corrupt {
        /// A short name for the source.
        name: String,
        /// The structure.
        structure: &'static str,
        /// Where it is.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A remote source (an EBS snapshot, an object) could not give the bytes: the
    /// service refused, failed after its retries, or sent data that fails its check.
    #[error("{name}: reading {len} bytes at offset {offset}: {reason}")]
    Remote {
        /// A short name for the source ("snap-0abc").
        name: String,
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: usize,
        /// Why, naming the block or range.
        reason: String,
    },
    /// A window was asked for that does not fit inside its parent.
    #[error("window [{offset}, +{len}) does not fit inside a source of {size} bytes")]
    BadWindow {
        /// Start of the window.
        offset: u64,
        /// Length of the window.
        len: u64,
        /// Size of the parent.
        size: u64,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Fills `buf` with the bytes at `offset` of a source of `size` bytes stored in
/// pieces of `piece_len` bytes (the last may be shorter): `piece(index)` gives piece
/// `index`, `None` for one that reads as zeros, or why it cannot be had. What remote
/// sources (a snapshot's blocks, an object's ranges) share.
pub fn read_pieces<T: AsRef<[u8]>>(
    name: impl Fn() -> String,
    size: u64,
    piece_len: u64,
    buf: &mut [u8],
    offset: u64,
    piece: impl Fn(u64) -> std::result::Result<Option<T>, String>,
) -> Result<()> {
    check_bounds(&name, offset, buf.len(), size)?;
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset + done as u64;
        let index = at / piece_len;
        let within = (at % piece_len) as usize;
        let n = (piece_len as usize - within).min(buf.len() - done);
        let data = piece(index).map_err(|reason| Error::Remote {
            name: name(),
            offset,
            len: buf.len(),
            reason,
        })?;
        match data {
            Some(d) => buf[done..done + n].copy_from_slice(&d.as_ref()[within..within + n]),
            None => buf[done..done + n].fill(0),
        }
        done += n;
    }
    Ok(())
}

/// How many pieces a remote source fetches on a miss: while reads go forward (a
/// miss on the piece after the one read last) the window doubles, up to `max`; any
/// other read resets it to one piece, so random reads (a filesystem's metadata)
/// fetch only what they need.
#[derive(Debug)]
pub struct ReadAhead {
    last: std::sync::atomic::AtomicU64,
    window: std::sync::atomic::AtomicU64,
    max: u64,
}

impl ReadAhead {
    /// A window of at most `max` pieces.
    pub fn new(max: usize) -> Self {
        Self {
            last: std::sync::atomic::AtomicU64::new(u64::MAX),
            window: std::sync::atomic::AtomicU64::new(1),
            max: (max as u64).max(1),
        }
    }

    /// Notes a read of piece `index` (hit or miss); says whether it follows the
    /// previous one.
    pub fn note(&self, index: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.last.swap(index, Relaxed).wrapping_add(1) == index
    }

    /// The pieces to fetch on a miss: doubled after a forward read, else one.
    pub fn window(&self, forward: bool) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let w = if forward {
            (self.window.load(Relaxed) * 2).min(self.max)
        } else {
            1
        };
        self.window.store(w, Relaxed);
        w
    }
}

/// The pieces of a remote source kept in memory: at most `capacity` of them, the
/// least recently used dropped first (a filesystem's metadata is read again and
/// again between streams of file data).
#[derive(Debug)]
pub struct PieceCache<T> {
    pieces: std::collections::HashMap<u64, T>,
    order: std::collections::VecDeque<u64>,
    capacity: usize,
}

impl<T: Clone> PieceCache<T> {
    /// An empty cache of `capacity` pieces.
    pub fn new(capacity: usize) -> Self {
        Self {
            pieces: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Piece `index`, when held; it becomes the most recently used.
    pub fn get(&mut self, index: u64) -> Option<T> {
        let piece = self.pieces.get(&index).cloned()?;
        if let Some(at) = self.order.iter().rposition(|&i| i == index) {
            self.order.remove(at);
            self.order.push_back(index);
        }
        Some(piece)
    }

    /// Whether piece `index` is held.
    pub fn contains(&self, index: u64) -> bool {
        self.pieces.contains_key(&index)
    }

    /// Keeps every fetched `(index, piece)`, and gives back piece `wanted` among them.
    pub fn insert_all(&mut self, fetched: Vec<(u64, T)>, wanted: u64) -> Option<T> {
        let mut found = None;
        for (i, piece) in fetched {
            if i == wanted {
                found = Some(piece.clone());
            }
            self.insert(i, piece);
        }
        found
    }

    /// Keeps piece `index`, dropping the least recently used past the capacity.
    pub fn insert(&mut self, index: u64, piece: T) {
        if self.pieces.insert(index, piece).is_none() {
            self.order.push_back(index);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.pieces.remove(&old);
            }
        }
    }
}

/// A positional, read-only, thread-safe byte source.
pub trait BlockSource: Send + Sync {
    /// Total size in bytes.
    fn len(&self) -> u64;

    /// True when the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`. Fails if any of them lie past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// The byte ranges that may hold data, in order. Everything outside them reads as
    /// zeros. The default claims the whole source holds data.
    fn data_ranges(&self) -> Result<Vec<Range<u64>>> {
        #[allow(clippy::single_range_in_vec_init)] // one range: the whole source
        Ok(vec![0..self.len()])
    }

    /// A short human name for messages ("disk.img", "disk.img partition 2").
    fn name(&self) -> String;
}

impl<T: BlockSource + ?Sized> BlockSource for Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn data_ranges(&self) -> Result<Vec<Range<u64>>> {
        (**self).data_ranges()
    }
    fn name(&self) -> String {
        (**self).name()
    }
}

/// Checks that `[offset, offset + len)` lies inside a source of `size` bytes: what
/// every [`BlockSource::read_exact_at`] checks first.
pub fn check_bounds(
    name: impl FnOnce() -> String,
    offset: u64,
    len: usize,
    size: u64,
) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfBounds {
            name: name(),
            offset,
            len,
            size,
        }),
    }
}

/// A file opened read-only.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileSource {
    /// Opens `path` read-only. The file is never written through this handle.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io_err = |what, source| Error::Io {
            what,
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(|e| io_err("open", e))?;
        let meta = file.metadata().map_err(|e| io_err("stat", e))?;
        if meta.is_dir() {
            return Err(io_err(
                "open",
                io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
            ));
        }
        let len = if meta.file_type().is_file() {
            meta.len()
        } else {
            // Block devices report 0 in metadata; seek to the end instead.
            use std::io::Seek;
            (&file)
                .seek(io::SeekFrom::End(0))
                .map_err(|e| io_err("seek", e))?
        };
        Ok(Self { file, path, len })
    }

    /// The path this source was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lseek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        use std::os::fd::AsRawFd;
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Ok(None);
        };
        // SAFETY: lseek on a file descriptor we own; it touches no memory of ours.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r < 0 {
            let err = io::Error::last_os_error();
            // ENXIO: no data (or hole) at or after `offset`.
            if err.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(err);
        }
        Ok(Some(r as u64))
    }
}

impl BlockSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_bounds(|| self.name(), offset, buf.len(), self.len)?;
        self.file.read_exact_at(buf, offset).map_err(|source| {
            if source.kind() == io::ErrorKind::UnexpectedEof {
                // The file shrank under us.
                Error::OutOfBounds {
                    name: self.name(),
                    offset,
                    len: buf.len(),
                    size: self.len,
                }
            } else {
                Error::Io {
                    what: "read",
                    path: self.path.clone(),
                    source,
                }
            }
        })
    }

    /// Walks SEEK_DATA/SEEK_HOLE. Filesystems without support report the whole file
    /// as data, which is correct, only slower to upload.
    fn data_ranges(&self) -> Result<Vec<Range<u64>>> {
        let io_err = |source| Error::Io {
            what: "seek data in",
            path: self.path.clone(),
            source,
        };
        let mut ranges = Vec::new();
        let mut pos = 0;
        while pos < self.len {
            let Some(start) = self.lseek(pos, libc::SEEK_DATA).map_err(io_err)? else {
                break;
            };
            if start >= self.len {
                break;
            }
            let end = self
                .lseek(start, libc::SEEK_HOLE)
                .map_err(io_err)?
                .unwrap_or(self.len)
                .min(self.len);
            if end <= start {
                // A filesystem that answers nonsense: treat the rest as data.
                ranges.push(start..self.len);
                break;
            }
            ranges.push(start..end);
            pos = end;
        }
        Ok(ranges)
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// Bytes held in memory. Used by tests and fuzz targets.
#[derive(Debug, Clone)]
pub struct MemorySource {
    bytes: Vec<u8>,
}

impl MemorySource {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }
}

impl BlockSource for MemorySource {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_bounds(|| self.name(), offset, buf.len(), self.len())?;
        let start = offset as usize;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }
    fn name(&self) -> String {
        "memory".to_string()
    }
}

/// A byte range of another source, such as a partition.
#[derive(Clone)]
pub struct Window {
    parent: Arc<dyn BlockSource>,
    offset: u64,
    len: u64,
    label: Option<String>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("parent", &self.parent.name())
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl Window {
    /// A window of `len` bytes starting at `offset` in `parent`. It must fit.
    pub fn new(parent: Arc<dyn BlockSource>, offset: u64, len: u64) -> Result<Self> {
        let size = parent.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::BadWindow { offset, len, size });
        }
        Ok(Self {
            parent,
            offset,
            len,
            label: None,
        })
    }

    /// Names the window for messages, such as "partition 2".
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Where the window starts in its parent.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl BlockSource for Window {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_bounds(|| self.name(), offset, buf.len(), self.len)?;
        self.parent.read_exact_at(buf, self.offset + offset)
    }
    fn data_ranges(&self) -> Result<Vec<Range<u64>>> {
        let end = self.offset + self.len;
        Ok(self
            .parent
            .data_ranges()?
            .into_iter()
            .filter(|r| r.end > self.offset && r.start < end)
            .map(|r| r.start.max(self.offset) - self.offset..r.end.min(end) - self.offset)
            .collect())
    }
    fn name(&self) -> String {
        match &self.label {
            Some(l) => format!("{} {}", self.parent.name(), l),
            None => format!("{} [{}, +{})", self.parent.name(), self.offset, self.len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(n: usize) -> Arc<dyn BlockSource> {
        Arc::new(MemorySource::new((0..n).map(|i| i as u8).collect()))
    }

    #[test]
    fn a_piece_cache_keeps_at_most_its_capacity_and_drops_the_least_recently_used() {
        let mut c = PieceCache::new(2);
        c.insert(1, "a");
        c.insert(2, "b");
        c.insert(1, "a again");
        assert_eq!(c.get(2), Some("b"), "2 is now the most recently used");
        c.insert(3, "c");
        assert!(!c.contains(1), "the least recently used went first");
        assert_eq!((c.get(2), c.get(3)), (Some("b"), Some("c")));
    }

    #[test]
    fn read_ahead_grows_while_reads_go_forward_and_resets_on_a_jump() {
        let r = ReadAhead::new(8);
        assert!(!r.note(10));
        assert_eq!(r.window(false), 1);
        let grown: Vec<u64> = (11..15).map(|i| r.window(r.note(i))).collect();
        assert_eq!(grown, [2, 4, 8, 8], "doubles up to the maximum");
        assert_eq!(r.window(r.note(100)), 1, "a jump fetches one piece");
    }

    #[test]
    fn reading_past_the_end_is_an_error_not_padding() {
        let src = mem(10);
        let mut buf = [0u8; 4];
        assert!(src.read_exact_at(&mut buf, 6).is_ok());
        assert!(matches!(
            src.read_exact_at(&mut buf, 7),
            Err(Error::OutOfBounds { offset: 7, .. })
        ));
        assert!(src.read_exact_at(&mut buf, u64::MAX).is_err());
    }

    #[test]
    fn a_window_reads_its_parent_shifted_and_stays_inside() {
        let w = Window::new(mem(100), 10, 20).unwrap();
        let mut buf = [0u8; 3];
        w.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [10, 11, 12]);
        assert!(w.read_exact_at(&mut buf, 18).is_err());
        assert!(Window::new(mem(100), 90, 11).is_err());
        assert!(Window::new(mem(100), u64::MAX, 2).is_err());
    }

    #[test]
    fn a_window_clips_its_parents_data_ranges() {
        let w = Window::new(mem(100), 10, 20).unwrap();
        assert_eq!(w.data_ranges().unwrap(), vec![0..20]);
    }

    #[test]
    fn holes_of_a_sparse_file_are_not_data() {
        let dir = std::env::temp_dir().join(format!("blockio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sparse.img");
        let f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 32 << 20).unwrap();
        drop(f);
        let src = FileSource::open(&path).unwrap();
        let ranges = src.data_ranges().unwrap();
        let data: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(ranges.iter().any(|r| r.contains(&(32 << 20))), "{ranges:?}");
        assert!(data < 16 << 20, "most of the file is a hole: {ranges:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
