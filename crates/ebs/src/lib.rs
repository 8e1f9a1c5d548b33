//! Streams disk images into EBS snapshots through the EBS direct APIs, and reads them
//! back.
//!
//! - [`plan`] maps an image onto 512 KiB blocks and finds which may hold data
//!   (SEEK_DATA/SEEK_HOLE), without reading the holes.
//! - [`upload`] streams the blocks with bounded concurrency and a bounded buffer pool.
//!   It hashes off the async runtime, retries what can be retried (with timeouts,
//!   backoff and jitter) and stops at once on what cannot. It journals every confirmed
//!   block so that an interrupted upload resumes, and it completes the snapshot with
//!   the LINEAR aggregate checksum.
//! - [`Manifest`] records block index → SHA-256. An upload against a parent snapshot
//!   and its manifest sends only the blocks that changed.
//! - [`download`] and [`verify`] read a snapshot back with verified checksums.
//! - [`digest`]: a disk's content identity, which every upload computes in passing.
//!
//! Everything talks to the service through the [`EbsApi`] trait. One uploader serves
//! AWS, moto, the strict test server and fakes.

mod api;
pub mod digest;
mod download;
mod journal;
mod manifest;
mod plan;
mod retry;
mod source;
mod upload;

pub use api::{
    ApiError, ApiResult, BlockPage, ChangedPage, EbsApi, ErrorKind, FetchedBlock, SnapshotState,
    StartRequest, StartedSnapshot,
};
pub use download::{changed_blocks, download, verify, DownloadOutcome, VerifyOutcome};
pub use journal::{ImageIdentity, Journal, JournalHeader};
pub use manifest::{linear_aggregate, Manifest};
pub use plan::{plan, Plan};
pub use retry::RetryPolicy;
pub use source::{SnapshotSource, CACHE_BLOCKS};
pub use upload::{upload, NoProgress, Progress, UploadOptions, UploadOutcome};

use std::path::PathBuf;

/// The EBS direct block size. Always this, whatever a service reports (moto says 512).
pub const BLOCK_SIZE: u64 = 524_288;
/// Volume sizes are whole GiB.
pub const GIB: u64 = 1 << 30;
/// Blocks per GiB.
pub const BLOCKS_PER_GIB: u64 = GIB / BLOCK_SIZE;
/// The largest EBS snapshot: 64 TiB.
pub const MAX_VOLUME_GIB: u64 = 65_536;

/// What can go wrong moving blocks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the image failed.
    #[error("reading the image: {0}")]
    Image(#[from] blockio::Error),
    /// An API call failed for good.
    #[error("{op} failed{}{} after {attempts} attempt(s): {source}", on_snapshot(.snapshot_id), on_block(.block))]
    Api {
        /// The operation.
        op: &'static str,
        /// The snapshot.
        snapshot_id: Option<String>,
        /// The block index.
        block: Option<u64>,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: ApiError,
    },
    /// A block read back does not match its checksum.
    #[error("snapshot {snapshot_id} block {block}: checksum {actual} does not match the {expected} the service sent")]
    Checksum {
        /// The snapshot.
        snapshot_id: String,
        /// The block index.
        block: u64,
        /// What the service said.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The image changed since the journal or manifest was written.
    #[error("{path}: the image changed since {what}: {reason}")]
    ImageChanged {
        /// The image.
        path: PathBuf,
        /// "the interrupted upload" or "the parent manifest".
        what: &'static str,
        /// What differs.
        reason: String,
    },
    /// A journal or manifest file could not be used.
    #[error("{path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The upload was interrupted (Ctrl-C); the snapshot is still pending.
    #[error("interrupted; snapshot {snapshot_id} is still pending")]
    Interrupted {
        /// The pending snapshot.
        snapshot_id: String,
    },
    /// The snapshot did not reach "completed".
    #[error("snapshot {snapshot_id} {state}")]
    NotCompleted {
        /// The snapshot.
        snapshot_id: String,
        /// What happened instead.
        state: String,
    },
    /// Bad parameters.
    #[error("{0}")]
    Invalid(String),
}

fn on_snapshot(id: &Option<String>) -> String {
    id.as_ref()
        .map(|s| format!(" for snapshot {s}"))
        .unwrap_or_default()
}
fn on_block(b: &Option<u64>) -> String {
    b.map(|b| format!(" at block {b} (byte offset {})", b * BLOCK_SIZE))
        .unwrap_or_default()
}

impl Error {
    /// The snapshot this error leaves pending, if any.
    pub fn pending_snapshot(&self) -> Option<&str> {
        match self {
            Error::Api {
                snapshot_id: Some(s),
                op,
                ..
            } if *op != "StartSnapshot" => Some(s),
            Error::Interrupted { snapshot_id } => Some(snapshot_id),
            _ => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Base64 of a SHA-256 digest, as the EBS APIs carry checksums.
pub fn b64(digest: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// SHA-256 of a block, base64.
pub fn block_checksum(data: &[u8]) -> String {
    use sha2::Digest;
    b64(&sha2::Sha256::digest(data))
}

/// True when every byte is zero. Compares 16 bytes at a time.
pub fn is_zero(buf: &[u8]) -> bool {
    let (chunks, rest) = buf.split_at(buf.len() - buf.len() % 16);
    chunks
        .chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && rest.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_a_single_set_byte_anywhere() {
        let mut b = vec![0u8; BLOCK_SIZE as usize + 3];
        assert!(is_zero(&b));
        for at in [
            0,
            15,
            16,
            4095,
            BLOCK_SIZE as usize,
            BLOCK_SIZE as usize + 2,
        ] {
            b[at] = 1;
            assert!(!is_zero(&b), "byte {at}");
            b[at] = 0;
        }
    }

    #[test]
    fn checksums_are_base64_sha256() {
        // SHA-256 of the empty string.
        assert_eq!(
            block_checksum(b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }
}
