//! The input layer: opens a disk image file of any format builders emit and hands
//! back the virtual disk as a [`BlockSource`].
//!
//! [`open`] reads the file's magic, not its name, and picks a reader:
//! - raw: the file is the disk ([`blockio::FileSource`]);
//! - [`qcow2`]: versions 2 and 3, zero clusters, zlib and zstd compressed clusters,
//!   extended L2 entries (subclusters), backing files;
//! - [`vmdk`]: monolithicSparse, streamOptimized (compressed grains) and
//!   monolithicFlat with its descriptor;
//! - [`vhd`]: fixed and dynamic;
//! - [`vhdx`]: fixed and dynamic, header and region table checksums checked.
//!
//! Every reader loads and bounds its tables when it opens, so a read never fails on a
//! table, only on the file; each has a data map ([`BlockSource::data_ranges`]) built
//! from those tables: the clusters, grains or blocks the container stores, minus what
//! it marks as zeros. Upload, bundle and the deleted-data scan skip the rest without
//! reading it.
//!
//! Backing files are a security boundary: a container may name any path as its
//! parent. None is ever opened unless [`OpenOptions::allow_backing`] names a
//! directory, and then only files inside it, with the chain's depth bounded and loops
//! refused.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockio::BlockSource;
use serde::Serialize;

mod backing;
pub mod qcow2;
mod sparse;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

/// What went wrong while opening an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] blockio::Error),
    /// A structure of the container is damaged or hostile.
    #[error("{path}: {format} {structure} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The container format.
        format: &'static str,
        /// The structure ("header", "L1 table", "grain directory", ...).
        structure: &'static str,
        /// Where the structure is in the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The container uses a feature amiforge does not read.
    #[error("{path}: not supported in a {format} image: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The container format.
        format: &'static str,
        /// The feature.
        what: String,
    },
    /// The container names a backing (parent) file that may not be opened.
    #[error("{path} names the backing file {backing:?}, which was not opened: {reason}")]
    Backing {
        /// The file naming the backing file.
        path: PathBuf,
        /// The name, as the container spells it.
        backing: String,
        /// Why it was not opened.
        reason: String,
    },
}

/// The bytes of a container: a local file, or an object read in place.
pub(crate) type Container = Arc<dyn BlockSource>;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The largest virtual disk any reader accepts: 64 TiB, the largest EBS volume.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// The most table memory (L2 tables, grain tables, block allocation tables) one
/// image may make a reader load: enough for a fully allocated 2 TiB qcow2 with
/// 64 KiB clusters, and far from what a machine with a few GiB can hold.
pub const MAX_TABLE_BYTES: u64 = 1 << 30;

/// How an image is opened.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The directory inside which backing files may be followed. `None`: a backing
    /// file is never opened, and an image naming one is refused.
    pub allow_backing: Option<PathBuf>,
}

/// What the input file is, besides the disk it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceInfo {
    /// "raw", "qcow2", "vmdk", "vhd" or "vhdx".
    pub format: &'static str,
    /// The variant ("v3", "streamOptimized", "dynamic", ...), if the format has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subformat: Option<String>,
    /// The size of the file.
    pub file_size: u64,
    /// The size of the disk it holds.
    pub virtual_size: u64,
    /// How many bytes of the disk the file stores (its data map's total).
    pub allocated_bytes: u64,
    /// The backing files followed, nearest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backing: Vec<String>,
    /// What was seen and deliberately not read (internal snapshots, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// An opened image: the virtual disk and what the file is.
#[derive(Clone)]
pub struct Opened {
    /// The virtual disk.
    pub source: Arc<dyn BlockSource>,
    /// The container.
    pub info: SourceInfo,
}

/// The formats [`open`] tells apart by their magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// No container magic: the file is the disk.
    Raw,
    /// "QFI\xfb" at offset 0.
    Qcow2,
    /// "KDMV" at offset 0 (a sparse extent), or a text descriptor.
    Vmdk,
    /// "conectix" in the last 512 bytes (and, for a dynamic disk, the first).
    Vhd,
    /// "vhdxfile" at offset 0.
    Vhdx,
}

/// The unit in which container magics are placed.
const SECTOR: u64 = 512;

/// Tells the format from the first and last bytes of a file.
pub fn detect(head: &[u8], tail: &[u8]) -> Format {
    if head.starts_with(b"QFI\xfb") {
        Format::Qcow2
    } else if head.starts_with(b"KDMV") || head.starts_with(vmdk::DESCRIPTOR_MAGIC) {
        Format::Vmdk
    } else if head.starts_with(b"vhdxfile") {
        Format::Vhdx
    } else if head.starts_with(b"conectix") || tail.starts_with(b"conectix") {
        Format::Vhd
    } else {
        Format::Raw
    }
}

/// Opens the image at `path`, whatever its format, read-only.
pub fn open(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Opened> {
    backing::Chain::new(options).open(path.as_ref())
}

/// Opens the image whose bytes `container` holds (an object read in place, say),
/// whatever its format. Nothing outside it is ever opened: an image that names a
/// backing file or keeps its data in extent files beside it is refused, since
/// "beside it" means nothing for a remote object.
pub fn open_source(container: Arc<dyn BlockSource>) -> Result<Opened> {
    backing::Chain::sealed().open_container(container)
}

/// Reads the format of an already opened file.
fn format_of(file: &dyn BlockSource) -> Result<Format> {
    let len = file.len();
    let mut head = [0u8; SECTOR as usize];
    let n = len.min(SECTOR) as usize;
    file.read_exact_at(&mut head[..n], 0)?;
    let mut tail = [0u8; SECTOR as usize];
    if len >= 2 * SECTOR {
        file.read_exact_at(&mut tail, len - SECTOR)?;
    }
    Ok(detect(&head[..n], &tail))
}

/// Where errors of one container file come from: its path and format.
pub(crate) struct Site {
    path: PathBuf,
    format: &'static str,
}

impl Site {
    pub fn new(file: &dyn BlockSource, format: &'static str) -> Self {
        Self {
            path: PathBuf::from(file.name()),
            format,
        }
    }

    /// A damaged `structure` at `offset`.
    pub fn corrupt(&self, structure: &'static str, offset: u64, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            format: self.format,
            structure,
            offset,
            reason,
        }
    }

    /// A feature not read.
    pub fn unsupported(&self, what: String) -> Error {
        Error::Unsupported {
            path: self.path.clone(),
            format: self.format,
            what,
        }
    }

    /// The opened disk, its data map totalled.
    pub fn opened(
        &self,
        source: Arc<dyn BlockSource>,
        subformat: String,
        file_size: u64,
        backing: Vec<String>,
        notes: Vec<String>,
    ) -> Result<Opened> {
        let allocated_bytes = total(&source.data_ranges()?);
        Ok(Opened {
            info: SourceInfo {
                format: self.format,
                subformat: Some(subformat),
                file_size,
                virtual_size: source.len(),
                allocated_bytes,
                backing,
                notes,
            },
            source,
        })
    }
}

/// The total length of `ranges`.
fn total(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

/// Raw files: the disk is the file.
fn raw(file: Container) -> Result<Opened> {
    let ranges = file.data_ranges()?;
    let size = file.len();
    Ok(Opened {
        info: SourceInfo {
            format: "raw",
            subformat: None,
            file_size: size,
            virtual_size: size,
            allocated_bytes: total(&ranges),
            backing: Vec::new(),
            notes: Vec::new(),
        },
        source: file,
    })
}

/// Decompresses the zstd frame at the start of `packed` into `out`, ignoring what
/// follows the frame (containers pad compressed units to whole sectors). Returns
/// how many bytes it wrote; never more than `out` holds.
pub(crate) fn unzstd(packed: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut decoder = Decoder::new().map_err(|e| format!("zstd: {e}"))?;
    let mut input = InBuffer::around(packed);
    let mut output = OutBuffer::around(out);
    loop {
        let hint = decoder
            .run(&mut input, &mut output)
            .map_err(|e| format!("zstd: {e}"))?;
        if hint == 0 || output.pos() == output.capacity() {
            return Ok(output.pos());
        }
        if input.pos() == packed.len() {
            return Err("zstd: the frame is cut short".into());
        }
    }
}

/// Little- and big-endian field readers over a header buffer whose length the
/// caller has checked.
pub(crate) mod field {
    /// A little-endian u16 at `at`.
    pub fn le16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    /// A little-endian u32 at `at`.
    pub fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    /// A little-endian u64 at `at`.
    pub fn le64(b: &[u8], at: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    }
    /// A big-endian u32 at `at`.
    pub fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    /// A big-endian u64 at `at`.
    pub fn be64(b: &[u8], at: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_magic_not_by_name() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03", &[]), Format::Qcow2);
        assert_eq!(detect(b"KDMV\x01", &[]), Format::Vmdk);
        assert_eq!(detect(b"# Disk DescriptorFile\n", &[]), Format::Vmdk);
        assert_eq!(detect(b"vhdxfile", &[]), Format::Vhdx);
        assert_eq!(detect(b"conectix", &[]), Format::Vhd);
        assert_eq!(detect(&[0u8; 512], b"conectix"), Format::Vhd);
        assert_eq!(detect(&[0u8; 512], &[0u8; 512]), Format::Raw);
    }
}
