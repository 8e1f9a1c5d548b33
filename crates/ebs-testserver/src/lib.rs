//! A strict EBS direct API test server, built from the documented AWS behaviour that
//! moto skips, with fault injection.
//!
//! It serves the six EBS direct operations (restJson1) and ec2:DescribeSnapshots
//! (the EC2 query protocol) on one loopback port, and it checks:
//! - block size (524288 bytes), index range and the per-block SHA-256;
//! - ChangedBlocksCount and the LINEAR aggregate checksum on CompleteSnapshot;
//! - ParentSnapshotId inheritance (children read their parent's blocks), and
//!   ListChangedBlocks over the lineage (unrelated snapshots refused);
//! - pending → completed after a configurable delay, and the idle Timeout;
//! - ClientToken idempotency (same token, other parameters: ConflictException);
//! - the encryption flag. Unwritten blocks of an encrypted snapshot read back as
//!   garbage, as AWS users report, so skipping zero blocks there is caught;
//! - every request's SigV4 signature, against
//!   [`Config::secret_access_key`](crate::Config::secret_access_key).
//!
//! Faults: throttling and 500s with the real error shapes, connection resets, slow
//! answers, "snapshot not found" for the first K puts of each snapshot, and
//! AccessDenied.
//!
//! ```no_run
//! # async fn demo() {
//! let server = ebs_testserver::start(ebs_testserver::Config::default()).await.unwrap();
//! println!("endpoint: http://{}", server.addr);
//! # }
//! ```

mod ebs;
mod ec2;
mod rbin;
mod s3;

pub use s3::{start_s3_on, S3Server, S3Stats};
mod sigv4;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The only block size EBS direct knows.
pub const BLOCK_SIZE: usize = 524_288;
/// Blocks per GiB.
pub const BLOCKS_PER_GIB: u64 = (1 << 30) / BLOCK_SIZE as u64;

/// Faults to inject into EBS data-plane calls and EC2 calls.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share (0..1) of PutSnapshotBlock and GetSnapshotBlock calls that fail
    /// transiently: throttled, 500, reset or slow, in equal parts.
    pub transient_rate: f64,
    /// How long a "slow" answer takes, in milliseconds.
    pub slow_ms: u64,
    /// The first K PutSnapshotBlock calls of each snapshot answer "snapshot not found".
    pub not_found_first: u32,
    /// Every data-plane call (put, get, list, complete) answers AccessDeniedException;
    /// StartSnapshot still works, so the refusal hits a block of a real snapshot.
    pub access_denied: bool,
    /// Every PutSnapshotBlock waits this many milliseconds (to interrupt uploads).
    pub put_delay_ms: u64,
    /// RegisterImage fails with an internal error (to test clean-up).
    pub fail_register: bool,
    /// Share (0..1) of EC2 requests answered 400 RequestLimitExceeded, as EC2
    /// throttles.
    pub ec2_throttle_rate: f64,
    /// Share (0..1) of EC2 requests answered 503 Unavailable.
    pub ec2_unavailable_rate: f64,
    /// Every EC2 request is answered 403 UnauthorizedOperation.
    pub ec2_unauthorized: bool,
    /// Every EC2 answer waits this many milliseconds first.
    pub ec2_delay_ms: u64,
    /// Share (0..1) of EC2 requests whose connection is closed without an answer.
    pub ec2_drop_rate: f64,
    /// EC2 actions whose next successful answer is lost: the action takes effect,
    /// then the connection drops (once per action named).
    pub ec2_lose_answer_of: std::collections::BTreeSet<String>,
    /// GetSnapshotBlock of this block index sends one byte changed, with the
    /// checksum of the true data: corruption in transit.
    pub corrupt_block: Option<u64>,
}

/// Server settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// How long a completed snapshot stays pending before it is "completed".
    pub completion_delay_ms: u64,
    /// How long one of StartSnapshot's Timeout minutes lasts here (tests shrink it).
    pub minute_ms: u64,
    /// Faults.
    pub faults: Faults,
    /// Seed for the fault dice.
    pub seed: u64,
    /// The account blocks public sharing of AMIs (GetImageBlockPublicAccessState).
    pub block_public_access: bool,
    /// The account's snapshot block public access state
    /// (GetSnapshotBlockPublicAccessState): "unblocked", "block-new-sharing" or
    /// "block-all-sharing".
    pub snapshot_block_public_access: String,
    /// The region's Recycle Bin retention rules (ListRules, GetRule).
    pub recycle_bin_rules: Vec<RecycleBinRule>,
    /// The secret key every request must be SigV4-signed with, whatever its access
    /// key id; `None` accepts unsigned requests.
    pub secret_access_key: Option<String>,
}

/// A Recycle Bin retention rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecycleBinRule {
    /// Its identifier.
    pub id: String,
    /// "EC2_IMAGE" or "EBS_SNAPSHOT".
    pub resource_type: String,
    /// How many days it keeps what is deleted.
    pub retention_days: u32,
    /// The tags a resource needs for the rule to apply (none: every resource).
    pub resource_tags: Vec<(String, String)>,
}

/// The secret key the tests and benchmarks sign with.
pub const TEST_SECRET_ACCESS_KEY: &str = "testing";

impl Default for Config {
    fn default() -> Self {
        Self {
            completion_delay_ms: 300,
            minute_ms: 60_000,
            faults: Faults::default(),
            seed: 1,
            block_public_access: false,
            snapshot_block_public_access: "unblocked".into(),
            recycle_bin_rules: Vec::new(),
            secret_access_key: Some(TEST_SECRET_ACCESS_KEY.to_string()),
        }
    }
}

/// Counters, for tests to check what happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Requests per operation.
    pub requests: BTreeMap<String, u64>,
    /// PutSnapshotBlock calls that stored a block.
    pub blocks_stored: u64,
    /// Faults injected.
    pub faults_injected: u64,
    /// AccessDenied answers.
    pub access_denied: u64,
    /// Requests refused by validation, by reason.
    pub rejected: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Pending,
    Sealing(Instant),
    Completed,
    Error,
}

pub(crate) struct Snapshot {
    pub id: String,
    pub volume_size_gib: u64,
    pub parent: Option<String>,
    pub encrypted: bool,
    pub description: String,
    pub tags: Vec<(String, String)>,
    pub fingerprint: String,
    pub timeout_minutes: u64,
    pub last_activity: Instant,
    pub blocks: HashMap<u64, (bytes::Bytes, [u8; 32])>,
    pub status: Status,
    pub puts_refused_as_not_found: u32,
}

/// An image registered through RegisterImage.
pub(crate) struct Image {
    pub id: String,
    pub name: String,
    pub registered: Instant,
    /// creationDate, RFC 3339; later registrations have later dates.
    pub created: String,
    pub fields: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    /// deregistrationProtection: "disabled", "enabled", "enabled-with-cooldown", or
    /// "disabled-until TIME" after protection with cooldown was turned off.
    pub protection: String,
    /// DisableImage was called (and EnableImage not since).
    pub disabled: bool,
    /// lastLaunchedTime, as DescribeImageAttribute reports it.
    pub last_launched: Option<String>,
}

pub(crate) struct State {
    pub config: Config,
    pub images: HashMap<String, Image>,
    pub ec2_requests: Vec<(String, Vec<(String, String)>)>,
    pub snapshots: HashMap<String, Snapshot>,
    pub client_tokens: HashMap<String, String>,
    pub next_id: u64,
    pub stats: Stats,
    pub rng: fastrand::Rng,
}

impl State {
    /// Applies the lazy clocks: sealing → completed, idle pending → error.
    pub fn tick(&mut self, id: &str) {
        let delay = Duration::from_millis(self.config.completion_delay_ms);
        let minute = Duration::from_millis(self.config.minute_ms);
        if let Some(s) = self.snapshots.get_mut(id) {
            match s.status {
                Status::Sealing(at) if at.elapsed() >= delay => s.status = Status::Completed,
                Status::Pending
                    if s.last_activity.elapsed() > minute * s.timeout_minutes as u32 =>
                {
                    s.status = Status::Error
                }
                _ => {}
            }
        }
    }

    /// Every block a snapshot holds, its own over its ancestors'.
    pub fn all_blocks(&self, id: &str) -> BTreeMap<u64, (bytes::Bytes, [u8; 32])> {
        let mut chain = Vec::new();
        let mut cur = Some(id.to_string());
        while let Some(c) = cur {
            if chain.contains(&c) {
                break;
            }
            cur = self.snapshots.get(&c).and_then(|s| s.parent.clone());
            chain.push(c);
        }
        let mut out = BTreeMap::new();
        for c in chain.iter().rev() {
            if let Some(s) = self.snapshots.get(c) {
                out.extend(s.blocks.iter().map(|(k, v)| (*k, v.clone())));
            }
        }
        out
    }
}

pub(crate) type Shared = Arc<Mutex<State>>;

pub(crate) fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running server.
pub struct Server {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    state: Shared,
}

impl Server {
    /// The endpoint URL for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).config.faults = faults;
    }

    /// Replaces the region's Recycle Bin rules.
    pub fn set_recycle_bin_rules(&self, rules: Vec<RecycleBinRule>) {
        lock(&self.state).config.recycle_bin_rules = rules;
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        lock(&self.state).stats.clone()
    }

    /// The blocks written to one snapshot itself (not inherited): index → bytes.
    pub fn own_blocks(&self, id: &str) -> Option<BTreeMap<u64, bytes::Bytes>> {
        let st = lock(&self.state);
        st.snapshots
            .get(id)
            .map(|s| s.blocks.iter().map(|(k, (b, _))| (*k, b.clone())).collect())
    }

    /// Every EC2 request of this action received so far, as its form fields.
    pub fn ec2_requests(&self, action: &str) -> Vec<Vec<(String, String)>> {
        lock(&self.state)
            .ec2_requests
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// The tags of an image or snapshot, as set by RegisterImage's TagSpecification
    /// and CreateTags.
    pub fn tags_of(&self, resource: &str) -> Vec<(String, String)> {
        let st = lock(&self.state);
        if let Some(i) = st.images.get(resource) {
            return i.tags.clone();
        }
        st.snapshots
            .get(resource)
            .map(|s| s.tags.clone())
            .unwrap_or_default()
    }

    /// Records that an instance was launched from the image at `time` (RFC 3339), as
    /// DescribeImageAttribute lastLaunchedTime then reports.
    pub fn set_last_launched(&self, image_id: &str, time: &str) {
        if let Some(i) = lock(&self.state).images.get_mut(image_id) {
            i.last_launched = Some(time.to_string());
        }
    }

    /// The image's (state, deregistration protection), or None when it is gone.
    pub fn image_state(&self, image_id: &str) -> Option<(String, String)> {
        let st = lock(&self.state);
        st.images.get(image_id).map(|i| {
            let state = if i.disabled { "disabled" } else { "available" };
            (state.to_string(), i.protection.clone())
        })
    }

    /// A snapshot's status ("pending", "completed", "error"), its encryption flag
    /// and its parent.
    pub fn describe(&self, id: &str) -> Option<(String, bool, Option<String>)> {
        let mut st = lock(&self.state);
        st.tick(id);
        st.snapshots.get(id).map(|s| {
            (
                ec2::status_name(s.status).to_string(),
                s.encrypted,
                s.parent.clone(),
            )
        })
    }
}

fn router(state: Shared) -> axum::Router {
    use axum::routing::{get, post, put};
    axum::Router::new()
        .route("/snapshots", post(ebs::start_snapshot))
        .route(
            "/snapshots/{id}/blocks/{index}",
            put(ebs::put_block).get(ebs::get_block),
        )
        .route("/snapshots/{id}/blocks", get(ebs::list_blocks))
        .route(
            "/snapshots/{id}/changedblocks",
            get(ebs::list_changed_blocks),
        )
        .route("/snapshots/completion/{id}", post(ebs::complete_snapshot))
        .route("/", post(ec2::query))
        .route("/list-rules", post(rbin::list_rules))
        .route("/rules/{id}", get(rbin::get_rule))
        .route("/__stats", get(stats))
        .route("/__faults", post(set_faults))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_signature,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(2 * BLOCK_SIZE))
        .with_state(state)
}

/// Refuses requests without a valid SigV4 signature, in the protocol's error shape:
/// `InvalidSignatureException` for EBS, `SignatureDoesNotMatch` for EC2. The test
/// controls (`/__stats`, `/__faults`) are not signed.
async fn require_signature(
    axum::extract::State(s): axum::extract::State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let secret = lock(&s).config.secret_access_key.clone();
    let Some(secret) = secret.filter(|_| !request.uri().path().starts_with("/__")) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 2 * BLOCK_SIZE).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let checked = sigv4::check(
        &secret,
        parts.method.as_str(),
        path_and_query,
        &parts.headers,
        &body,
    );
    if let Err(sigv4::Refused(why)) = checked {
        *lock(&s)
            .stats
            .rejected
            .entry("signature".into())
            .or_default() += 1;
        return if parts.uri.path() == "/" {
            ec2::ec2_error_with_status(StatusCode::FORBIDDEN, "SignatureDoesNotMatch", &why)
        } else {
            ebs::error(
                StatusCode::FORBIDDEN,
                "InvalidSignatureException",
                None,
                &why,
            )
        };
    }
    next.run(axum::extract::Request::from_parts(parts, body.into()))
        .await
}

async fn stats(axum::extract::State(s): axum::extract::State<Shared>) -> axum::Json<Stats> {
    axum::Json(lock(&s).stats.clone())
}

async fn set_faults(
    axum::extract::State(s): axum::extract::State<Shared>,
    axum::Json(f): axum::Json<Faults>,
) -> &'static str {
    lock(&s).config.faults = f;
    "ok"
}

/// Starts a server on 127.0.0.1 on a free port (or `port`), in the current runtime.
pub async fn start_on(config: Config, port: u16) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let seed = config.seed;
    let state = Arc::new(Mutex::new(State {
        config,
        snapshots: HashMap::new(),
        images: HashMap::new(),
        ec2_requests: Vec::new(),
        client_tokens: HashMap::new(),
        next_id: 1,
        stats: Stats::default(),
        rng: fastrand::Rng::with_seed(seed),
    }));
    let app = router(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Server { addr, state })
}

/// Starts a server on a free loopback port.
pub async fn start(config: Config) -> std::io::Result<Server> {
    start_on(config, 0).await
}

/// A server running on its own thread and runtime, for synchronous tests.
pub struct BackgroundServer {
    /// The server.
    pub server: Server,
    _runtime: tokio::runtime::Runtime,
}

impl std::ops::Deref for BackgroundServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

/// Starts a server with its own runtime, for tests that are not async.
pub fn start_background(config: Config) -> std::io::Result<BackgroundServer> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = runtime.block_on(start(config))?;
    Ok(BackgroundServer {
        server,
        _runtime: runtime,
    })
}
