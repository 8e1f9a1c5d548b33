//! The seam between the uploader and whatever serves the EBS direct APIs: AWS through
//! the SDK, moto, the strict test server, or a fake in unit tests.

use bytes::Bytes;
use std::fmt;
use std::future::Future;

/// What StartSnapshot is asked for.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// Volume size in GiB (1..=65536).
    pub volume_size_gib: u64,
    /// Parent for an incremental snapshot.
    pub parent_snapshot_id: Option<String>,
    /// Encrypt the snapshot.
    pub encrypted: bool,
    /// KMS key ARN for encryption.
    pub kms_key_arn: Option<String>,
    /// Description (at most 255 characters).
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// Idempotency token.
    pub client_token: String,
    /// Idle timeout in minutes (10..=4320).
    pub timeout_minutes: u32,
}

/// StartSnapshot's answer.
#[derive(Debug, Clone)]
pub struct StartedSnapshot {
    /// The new snapshot's id.
    pub snapshot_id: String,
    /// The block size the service reports (moto says 512; we always use 524288).
    pub block_size: Option<u64>,
}

/// A snapshot's lifecycle state, from ec2:DescribeSnapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// Being written or sealed.
    Pending,
    /// Sealed and readable.
    Completed,
    /// Failed.
    Error,
    /// Not (yet, or any more) visible.
    NotFound,
}

/// One page of ListSnapshotBlocks.
#[derive(Debug, Clone, Default)]
pub struct BlockPage {
    /// (block index, block token), ascending.
    pub blocks: Vec<(u64, String)>,
    /// Token for the next page.
    pub next_token: Option<String>,
    /// The snapshot's volume size in GiB.
    pub volume_size_gib: Option<u64>,
}

/// One page of ListChangedBlocks.
#[derive(Debug, Clone)]
pub struct ChangedPage {
    /// The indices of the blocks that differ between the two snapshots, ascending.
    pub blocks: Vec<u64>,
    /// Token for the next page.
    pub next_token: Option<String>,
    /// The second snapshot's volume size in GiB.
    pub volume_size_gib: Option<u64>,
}

/// A block read back: its bytes and the service's base64 SHA-256.
#[derive(Debug, Clone)]
pub struct FetchedBlock {
    /// The bytes.
    pub data: Bytes,
    /// The checksum the service sent, if any.
    pub checksum: Option<String>,
}

/// How an API call failed, classified for the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Throttling (RequestThrottledException, ConcurrentLimitExceededException).
    Throttled,
    /// 5xx / InternalServerException.
    Server,
    /// Connection reset, refused, DNS, broken response.
    Network,
    /// The attempt did not finish in time.
    Timeout,
    /// The snapshot or block does not exist (possibly not yet: eventual consistency).
    NotFound,
    /// AccessDeniedException or missing credentials.
    AccessDenied,
    /// ValidationException (bad checksum, bad block, conflicting update...).
    Validation,
    /// ServiceQuotaExceededException.
    Quota,
    /// ConflictException (client token reused with other parameters).
    Conflict,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Whether a later attempt can succeed. `NotFound` is retryable only shortly
    /// after StartSnapshot; the uploader decides that.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Server | ErrorKind::Network | ErrorKind::Timeout
        )
    }
}

/// A failed API call.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ApiError {
    /// Classification.
    pub kind: ErrorKind,
    /// The service's error code ("AccessDeniedException"), when it sent one.
    pub code: Option<String>,
    /// What it said.
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl ApiError {
    /// A new error.
    pub fn new(kind: ErrorKind, code: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.map(str::to_string),
            message: message.into(),
        }
    }
}

/// Result of an API call.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// The EBS direct operations amiforge uses, plus the snapshot state from EC2.
///
/// Implementations make exactly one attempt per call: retries, backoff and
/// timeouts belong to the caller, so they are never stacked.
pub trait EbsApi: Send + Sync + 'static {
    /// StartSnapshot.
    fn start_snapshot(
        &self,
        req: StartRequest,
    ) -> impl Future<Output = ApiResult<StartedSnapshot>> + Send;
    /// PutSnapshotBlock with a base64 SHA-256.
    fn put_block(
        &self,
        snapshot_id: &str,
        index: u64,
        data: Bytes,
        checksum_b64: &str,
        progress: Option<u8>,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// CompleteSnapshot with the LINEAR aggregate checksum.
    fn complete_snapshot(
        &self,
        snapshot_id: &str,
        changed_blocks: u64,
        aggregate_b64: &str,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// The snapshot's state (ec2:DescribeSnapshots).
    fn snapshot_state(
        &self,
        snapshot_id: &str,
    ) -> impl Future<Output = ApiResult<SnapshotState>> + Send;
    /// One page of ListSnapshotBlocks.
    fn list_blocks(
        &self,
        snapshot_id: &str,
        next_token: Option<String>,
    ) -> impl Future<Output = ApiResult<BlockPage>> + Send;
    /// One page of ListChangedBlocks: the blocks of `second` that differ from
    /// `first`, an earlier snapshot of the same lineage.
    fn list_changed_blocks(
        &self,
        first: &str,
        second: &str,
        next_token: Option<String>,
    ) -> impl Future<Output = ApiResult<ChangedPage>> + Send;
    /// GetSnapshotBlock.
    fn get_block(
        &self,
        snapshot_id: &str,
        index: u64,
        token: &str,
    ) -> impl Future<Output = ApiResult<FetchedBlock>> + Send;
}
