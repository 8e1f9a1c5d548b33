//! The uploader: plan, stream, journal, complete, wait.

use crate::api::{EbsApi, SnapshotState, StartRequest};
use crate::journal::{ImageIdentity, Journal, JournalHeader};
use crate::{
    is_zero, linear_aggregate, plan, Error, Manifest, Result, RetryPolicy, BLOCK_SIZE,
    MAX_VOLUME_GIB,
};
use blockio::BlockSource;
use bytes::Bytes;
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Progress callbacks, for a bar or log lines.
pub trait Progress: Send + Sync {
    /// `blocks` blocks of `what` (a snapshot id, a bundle) will be looked at.
    fn started(&self, what: &str, blocks: u64);
    /// One block is done: moved (`bytes` > 0) or skipped.
    fn block(&self, bytes: u64);
    /// Everything is sent; the snapshot is being sealed.
    fn sealing(&self) {}
}

/// Progress that is not shown.
pub struct NoProgress;

impl Progress for NoProgress {
    fn started(&self, _: &str, _: u64) {}
    fn block(&self, _: u64) {}
}

/// How to upload.
pub struct UploadOptions {
    /// Blocks in flight at once; also the number of 512 KiB buffers.
    pub workers: usize,
    /// Snapshot description.
    pub description: Option<String>,
    /// Snapshot tags.
    pub tags: Vec<(String, String)>,
    /// Encrypt: every block of the volume is written, zeros included.
    pub encrypted: bool,
    /// KMS key for encryption.
    pub kms_key_arn: Option<String>,
    /// The parent snapshot's manifest, for an incremental upload.
    pub parent: Option<Manifest>,
    /// Where that manifest was read from (recorded in the journal).
    pub parent_manifest_path: Option<PathBuf>,
    /// StartSnapshot's idle timeout in minutes.
    pub timeout_minutes: u32,
    /// The journal file.
    pub journal_path: PathBuf,
    /// Continue the journal's pending snapshot instead of starting one.
    pub resume: bool,
    /// Retry policy for every call.
    pub retry: RetryPolicy,
    /// How long to wait for the snapshot to be completed.
    pub completion_timeout: Duration,
    /// How often to ask.
    pub poll_interval: Duration,
    /// Set from outside (Ctrl-C) to stop after the blocks in flight.
    pub stop: Arc<AtomicBool>,
    /// Called with the snapshot id the moment it exists.
    pub on_started: Box<dyn Fn(&str) + Send + Sync>,
    /// The image's identity for the journal, when it is not a local file (an object
    /// read in place); `None`: the file's size, modification time and inode.
    pub identity: Option<crate::journal::ImageIdentity>,
}

/// What an upload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UploadOutcome {
    /// The snapshot.
    pub snapshot_id: String,
    /// Its volume size.
    pub volume_size_gib: u64,
    /// Blocks covering the image.
    pub blocks_total: u64,
    /// Blocks written to the snapshot (in this run and, when resumed, before).
    pub blocks_written: u64,
    /// Blocks not sent: holes, zeros, or unchanged from the parent.
    pub blocks_skipped: u64,
    /// All-zero blocks written (encrypted snapshots, or zeroed since the parent).
    pub zero_blocks_written: u64,
    /// Blocks confirmed by an earlier, interrupted run.
    pub blocks_resumed: u64,
    /// Bytes sent in this run.
    pub bytes_sent: u64,
    /// Seconds this run took.
    pub seconds: f64,
    /// The LINEAR aggregate checksum CompleteSnapshot got.
    pub checksum: String,
    /// The disk's content identity (see [`crate::digest`]).
    pub disk_sha256: String,
    /// The parent snapshot, if incremental.
    pub parent_snapshot_id: Option<String>,
    /// The blocks, for `--manifest`.
    #[serde(skip)]
    pub manifest: Manifest,
}

/// What the pipeline learns about a block.
struct Done {
    index: u64,
    digest: [u8; 32],
    zero: bool,
    written: bool,
}

#[derive(Default)]
struct Counters {
    sent_bytes: AtomicU64,
    zero_written: AtomicU64,
}

/// The most block confirmations written to the journal in one write.
const JOURNAL_BATCH: usize = 1024;
/// How often the journal writer collects confirmations.
const JOURNAL_INTERVAL: Duration = Duration::from_millis(20);

/// The first wait before asking again whether the snapshot is completed.
const FIRST_POLL: Duration = Duration::from_millis(100);

/// SHA-256 of an all-zero block.
pub(crate) fn zero_digest() -> [u8; 32] {
    sha2::Sha256::digest(vec![0u8; BLOCK_SIZE as usize]).into()
}

/// Reads block `index` of the image into `buf`, zero-padding past the end.
pub(crate) fn read_block(
    image: &dyn BlockSource,
    index: u64,
    buf: &mut [u8],
) -> blockio::Result<()> {
    let start = index * BLOCK_SIZE;
    let len = image.len();
    let n = len.saturating_sub(start).min(BLOCK_SIZE) as usize;
    if n > 0 {
        image.read_exact_at(&mut buf[..n], start)?;
    }
    buf[n..].fill(0);
    Ok(())
}

/// Uploads `image` into a new snapshot (or resumes the journal's).
pub async fn upload<A: EbsApi>(
    api: Arc<A>,
    image: Arc<dyn BlockSource>,
    image_path: &Path,
    opts: UploadOptions,
    progress: Arc<dyn Progress>,
) -> Result<UploadOutcome> {
    let started = Instant::now();
    let p = plan(&*image)?;
    let identity = match &opts.identity {
        Some(id) => id.clone(),
        None => ImageIdentity::of(image_path)?,
    };
    let stop = Stop {
        user: opts.stop.clone(),
        fatal: Arc::new(AtomicBool::new(false)),
    };
    let stopped = || stop.now();

    // 1. The snapshot: resumed from the journal, or started now.
    let (mut journal, parent, snapshot_started) = if opts.resume {
        let journal = Journal::open(&opts.journal_path)?;
        let h = &journal.header;
        if h.image != identity {
            return Err(Error::ImageChanged {
                path: image_path.into(),
                what: "the interrupted upload",
                reason: format!(
                    "size, modification time or inode differ (journal {:?}, now {:?})",
                    h.image, identity
                ),
            });
        }
        let parent = match &h.parent_manifest {
            Some(path) => Some(Manifest::load(path)?),
            None => None,
        };
        let id = h.snapshot_id.clone();
        let (state, _) = opts
            .retry
            .run(None, &stopped, || api.snapshot_state(&id))
            .await;
        match state {
            Ok(SnapshotState::Pending) => {}
            Ok(other) => {
                return Err(Error::NotCompleted {
                    snapshot_id: id,
                    state: format!(
                        "is {other:?}, not pending: it cannot be resumed; start a new upload"
                    ),
                })
            }
            Err(source) => {
                return Err(Error::Api {
                    op: "DescribeSnapshots",
                    snapshot_id: Some(id),
                    block: None,
                    attempts: 1,
                    source,
                })
            }
        }
        check_confirmed_blocks(&image, &journal, image_path).await?;
        tracing::info!(snapshot_id = %id, confirmed = journal.confirmed.len(), "resuming");
        (journal, parent, None)
    } else {
        if opts.parent.is_some() && opts.encrypted {
            return Err(Error::Invalid(
                "a parent snapshot cannot be combined with encryption (EBS refuses it)".into(),
            ));
        }
        let volume_size_gib = p
            .volume_size_gib
            .max(opts.parent.as_ref().map_or(0, |m| m.volume_size_gib));
        if volume_size_gib > MAX_VOLUME_GIB {
            return Err(Error::Invalid(format!(
                "{volume_size_gib} GiB exceeds the {MAX_VOLUME_GIB} GiB EBS limit"
            )));
        }
        let req = StartRequest {
            volume_size_gib,
            parent_snapshot_id: opts.parent.as_ref().map(|m| m.snapshot_id.clone()),
            encrypted: opts.encrypted,
            kms_key_arn: opts.kms_key_arn.clone(),
            description: opts.description.clone(),
            tags: opts.tags.clone(),
            client_token: format!(
                "amiforge-{:016x}{:016x}",
                fastrand::u64(..),
                fastrand::u64(..)
            ),
            timeout_minutes: opts.timeout_minutes,
        };
        // The same client token on every attempt makes StartSnapshot idempotent.
        let (r, attempts) = opts
            .retry
            .run(None, &stopped, || api.start_snapshot(req.clone()))
            .await;
        let snap = r.map_err(|source| Error::Api {
            op: "StartSnapshot",
            snapshot_id: None,
            block: None,
            attempts,
            source,
        })?;
        let mut header = JournalHeader::new(
            &snap.snapshot_id,
            image_path,
            identity,
            volume_size_gib,
            opts.encrypted,
        );
        header.parent_snapshot_id = req.parent_snapshot_id.clone();
        header.parent_manifest = opts.parent_manifest_path.clone();
        let journal = Journal::create(&opts.journal_path, header)?;
        (journal, opts.parent.clone(), Some(Instant::now()))
    };
    let snapshot_id = journal.header.snapshot_id.clone();
    let volume_size_gib = journal.header.volume_size_gib;
    let volume_blocks = volume_size_gib * crate::BLOCKS_PER_GIB;
    let encrypted = journal.header.encrypted;
    (opts.on_started)(&snapshot_id);

    // 2. Which blocks to look at.
    let mut visit: BTreeSet<u64> = if encrypted {
        (0..volume_blocks).collect()
    } else {
        p.data_blocks.iter().copied().collect()
    };
    if let Some(parent) = &parent {
        visit.extend(parent.blocks.keys().copied().filter(|&i| i < volume_blocks));
    }
    let resumed: BTreeMap<u64, [u8; 32]> = journal.confirmed.clone();
    let to_visit: Vec<u64> = visit
        .iter()
        .copied()
        .filter(|i| !resumed.contains_key(i))
        .collect();
    progress.started(&snapshot_id, to_visit.len() as u64);

    // 3. Stream. Hasher threads read, check for zeros and hash blocks ahead, off the
    // async runtime, into a short channel; this task decides what to send and starts
    // one put per block. A block holds a pool buffer from its read until its put
    // ends, so at most `workers` blocks are being read, queued or sent at once.
    let parent_blocks: Arc<BTreeMap<u64, String>> = Arc::new(
        parent
            .as_ref()
            .map(|m| m.blocks.clone())
            .unwrap_or_default(),
    );
    let workers = opts.workers.max(1);
    let hashers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(workers);
    let pool = Arc::new(BufferPool::new(workers));
    let counters = Arc::new(Counters::default());
    let fatal: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let total_to_visit = to_visit.len().max(1) as u64;
    let mut visited = 0u64;

    // The journal writer: confirmations go to disk as they arrive.
    let journal_task = tokio::task::spawn_blocking({
        let progress = progress.clone();
        move || -> Result<(Journal, BTreeMap<u64, [u8; 32]>, u64)> {
            let mut seen = BTreeMap::new();
            let mut skipped = 0;
            let mut last_sync = Instant::now();
            let mut batch = Vec::with_capacity(JOURNAL_BATCH);
            let mut confirmed = Vec::with_capacity(JOURNAL_BATCH);
            let mut open = true;
            while open {
                // Confirmations are collected every JOURNAL_INTERVAL rather than one
                // wake-up per block.
                std::thread::sleep(JOURNAL_INTERVAL);
                while batch.len() < JOURNAL_BATCH {
                    match done_rx.try_recv() {
                        Ok(d) => batch.push(d),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
                confirmed.extend(
                    batch
                        .iter()
                        .filter(|d| d.written)
                        .map(|d| (d.index, d.digest)),
                );
                journal.record_all(&confirmed)?;
                confirmed.clear();
                for d in batch.drain(..) {
                    if d.written {
                        progress.block(BLOCK_SIZE);
                    } else {
                        skipped += 1;
                        progress.block(0);
                    }
                    if !d.zero {
                        seen.insert(d.index, d.digest);
                    }
                }
                if last_sync.elapsed() > Duration::from_secs(1) {
                    journal.sync()?;
                    last_sync = Instant::now();
                }
            }
            journal.sync()?;
            Ok((journal, seen, skipped))
        }
    });

    let (hashed_tx, mut hashed_rx) = tokio::sync::mpsc::channel::<Result<Hashed>>(2 * hashers);
    let to_visit = Arc::new(to_visit);
    let next = Arc::new(AtomicUsize::new(0));
    let hasher_tasks: Vec<_> = (0..hashers)
        .map(|_| {
            let (image, pool, stop) = (image.clone(), pool.clone(), stop.clone());
            let (to_visit, next, tx) = (to_visit.clone(), next.clone(), hashed_tx.clone());
            tokio::task::spawn_blocking(move || {
                while let Some(&index) = to_visit.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let Some(buf) = pool.take(&stop) else {
                        break;
                    };
                    if tx.blocking_send(Hashed::read(&*image, index, buf)).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(hashed_tx);

    let record_fatal = {
        let (fatal, stop) = (fatal.clone(), stop.clone());
        move |e: Error| {
            stop.fatal.store(true, Ordering::SeqCst);
            let mut f = fatal.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(e);
            }
        }
    };
    let mut tasks = JoinSet::new();
    while let Some(hashed) = hashed_rx.recv().await {
        let block = match hashed {
            Ok(block) => block,
            Err(e) => {
                record_fatal(e);
                break;
            }
        };
        // Ctrl-C or another block's fatal error: start nothing new.
        if stop.now() {
            pool.give_back(block.buf);
            break;
        }
        visited += 1;
        let digest_b64 = crate::b64(&block.digest);
        let in_parent = parent_blocks.get(&block.index);
        let send = if encrypted {
            true
        } else if block.zero {
            // Zeros need writing only where the parent had data.
            in_parent.is_some()
        } else {
            in_parent != Some(&digest_b64)
        };
        if !send {
            let _ = done_tx.send(Done {
                index: block.index,
                digest: block.digest,
                zero: block.zero,
                written: false,
            });
            pool.give_back(block.buf);
            continue;
        }
        let put = BlockPut {
            api: api.clone(),
            snapshot_id: snapshot_id.clone(),
            pool: pool.clone(),
            retry: opts.retry,
            since: snapshot_started,
            counters: counters.clone(),
            done: done_tx.clone(),
            progress_pct: (visited * 100 / total_to_visit).min(100) as u8,
        };
        let (stop, record_fatal) = (stop.clone(), record_fatal.clone());
        tasks.spawn(async move {
            put.run(block, digest_b64, &|| stop.now(), &record_fatal)
                .await;
        });
        while tasks.try_join_next().is_some() {}
    }
    // Hashers blocked on the channel see it closed; those waiting for a buffer see
    // the stop.
    drop(hashed_rx);
    while tasks.join_next().await.is_some() {}
    for hasher in hasher_tasks {
        let _ = hasher.await;
    }
    drop(done_tx);
    let (journal, seen, skipped) = journal_task
        .await
        .map_err(|e| Error::Invalid(format!("journal writer failed: {e}")))??;

    if let Some(e) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    if stop.user.load(Ordering::SeqCst) {
        return Err(Error::Interrupted { snapshot_id });
    }

    // 4. Complete with the count and the LINEAR aggregate of every written block.
    progress.sealing();
    let written = journal.confirmed.clone();
    let aggregate = linear_aggregate(written.values());
    let count = written.len() as u64;
    let (r, attempts) = opts
        .retry
        .run(snapshot_started, &|| false, || {
            api.complete_snapshot(&snapshot_id, count, &aggregate)
        })
        .await;
    r.map_err(|source| Error::Api {
        op: "CompleteSnapshot",
        snapshot_id: Some(snapshot_id.clone()),
        block: None,
        attempts,
        source,
    })?;
    wait_completed(&*api, &snapshot_id, &opts).await?;
    journal.remove()?;

    // 5. The manifest: every non-zero block of the image.
    let zero = zero_digest();
    let mut manifest = Manifest::new(&snapshot_id, p.image_size, volume_size_gib);
    let mut non_zero = BTreeMap::new();
    for (index, digest) in seen.iter().chain(resumed.iter()) {
        if *digest != zero && *index < p.image_blocks {
            manifest.blocks.insert(*index, crate::b64(digest));
            non_zero.insert(*index, *digest);
        }
    }
    let disk_sha256 = crate::digest::of_blocks(p.image_blocks, &non_zero);
    let zero_resumed = resumed.values().filter(|d| **d == zero).count() as u64;
    Ok(UploadOutcome {
        snapshot_id,
        volume_size_gib,
        blocks_total: p.image_blocks,
        blocks_written: count,
        blocks_skipped: skipped + (p.image_blocks.saturating_sub(visit.len() as u64)),
        zero_blocks_written: counters.zero_written.load(Ordering::Relaxed) + zero_resumed,
        blocks_resumed: resumed.len() as u64,
        bytes_sent: counters.sent_bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        checksum: aggregate,
        disk_sha256,
        parent_snapshot_id: journal_parent(&parent),
        manifest,
    })
}

fn journal_parent(parent: &Option<Manifest>) -> Option<String> {
    parent.as_ref().map(|m| m.snapshot_id.clone())
}

/// Before resuming, the blocks the journal confirmed must still hash the same.
async fn check_confirmed_blocks(
    image: &Arc<dyn BlockSource>,
    journal: &Journal,
    path: &Path,
) -> Result<()> {
    let image = image.clone();
    let confirmed = journal.confirmed.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        for (index, digest) in confirmed {
            read_block(&*image, index, &mut buf)?;
            let now: [u8; 32] = sha2::Sha256::digest(&buf).into();
            if now != digest {
                return Err(Error::ImageChanged {
                    path,
                    what: "the interrupted upload",
                    reason: format!(
                        "block {index} (byte offset {}) no longer matches what was uploaded",
                        index * BLOCK_SIZE
                    ),
                });
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Invalid(format!("checking the image failed: {e}")))?
}

async fn wait_completed<A: EbsApi>(api: &A, snapshot_id: &str, opts: &UploadOptions) -> Result<()> {
    let deadline = Instant::now() + opts.completion_timeout;
    let sealed_at = Instant::now();
    let mut wait = FIRST_POLL;
    loop {
        let (r, attempts) = opts
            .retry
            .run(Some(sealed_at), &|| false, || {
                api.snapshot_state(snapshot_id)
            })
            .await;
        match r {
            Ok(SnapshotState::Completed) => return Ok(()),
            Ok(SnapshotState::Error) => {
                return Err(Error::NotCompleted {
                    snapshot_id: snapshot_id.into(),
                    state: "ended in the error state".into(),
                })
            }
            // Just after completion, DescribeSnapshots may not see it yet.
            Ok(SnapshotState::Pending | SnapshotState::NotFound) => {}
            Err(source) => {
                return Err(Error::Api {
                    op: "DescribeSnapshots",
                    snapshot_id: Some(snapshot_id.into()),
                    block: None,
                    attempts,
                    source,
                })
            }
        }
        if Instant::now() > deadline {
            return Err(Error::NotCompleted {
                snapshot_id: snapshot_id.into(),
                state: format!("was not completed within {:?}", opts.completion_timeout),
            });
        }
        // Small snapshots seal in moments: ask soon, then back off to the interval.
        tokio::time::sleep(wait.min(opts.poll_interval)).await;
        wait = wait.saturating_mul(2);
    }
}

/// Ctrl-C, or a fatal error of any block.
#[derive(Clone)]
struct Stop {
    user: Arc<AtomicBool>,
    fatal: Arc<AtomicBool>,
}

impl Stop {
    fn now(&self) -> bool {
        self.user.load(Ordering::SeqCst) || self.fatal.load(Ordering::SeqCst)
    }
}

/// How long a hasher waits for a free buffer before looking at the stop flags again.
const BUFFER_WAIT: Duration = Duration::from_millis(50);

/// A waiting hasher is woken when 1/WAKE_FRACTION of the buffers are free.
const WAKE_FRACTION: usize = 16;

/// At most `capacity` block buffers, made on first use and then reused.
struct BufferPool {
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    free: Vec<Vec<u8>>,
    /// Buffers that exist: free, being read, queued or being sent.
    made: usize,
    capacity: usize,
    /// Hashers waiting for a buffer (so that returning one wakes only when needed).
    waiting: usize,
}

impl BufferPool {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(PoolState {
                free: Vec::with_capacity(capacity),
                made: 0,
                capacity,
                waiting: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer, waiting for one if all are in use; `None` once the upload stops.
    fn take(&self, stop: &Stop) -> Option<Vec<u8>> {
        let mut st = self.lock();
        loop {
            if stop.now() {
                return None;
            }
            if let Some(buf) = st.free.pop() {
                return Some(buf);
            }
            if st.made < st.capacity {
                st.made += 1;
                return Some(vec![0u8; BLOCK_SIZE as usize]);
            }
            st.waiting += 1;
            st = self
                .freed
                .wait_timeout(st, BUFFER_WAIT)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.waiting -= 1;
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut st = self.lock();
        if buf.len() == BLOCK_SIZE as usize {
            st.free.push(buf);
        } else {
            st.made -= 1;
        }
        // Wake a waiting hasher once a few buffers are free, so that it reads several
        // blocks per wake-up instead of one.
        if st.waiting > 0 && st.free.len() >= st.capacity.div_ceil(WAKE_FRACTION) {
            self.freed.notify_one();
        }
    }

    /// A buffer that could not be taken back (still shared): another may be made.
    fn forget_one(&self) {
        let mut st = self.lock();
        st.made -= 1;
        if st.waiting > 0 {
            self.freed.notify_one();
        }
    }
}

/// A block read and hashed, in its pool buffer.
struct Hashed {
    index: u64,
    buf: Vec<u8>,
    zero: bool,
    digest: [u8; 32],
}

impl Hashed {
    fn read(image: &dyn BlockSource, index: u64, mut buf: Vec<u8>) -> Result<Self> {
        read_block(image, index, &mut buf)?;
        let zero = is_zero(&buf);
        let digest = sha2::Sha256::digest(&buf).into();
        Ok(Self {
            index,
            buf,
            zero,
            digest,
        })
    }
}

/// Everything one block's put needs.
struct BlockPut<A> {
    api: Arc<A>,
    snapshot_id: String,
    pool: Arc<BufferPool>,
    retry: RetryPolicy,
    since: Option<Instant>,
    counters: Arc<Counters>,
    done: tokio::sync::mpsc::UnboundedSender<Done>,
    progress_pct: u8,
}

impl<A: EbsApi> BlockPut<A> {
    async fn run(
        self,
        block: Hashed,
        digest_b64: String,
        stopped: &(dyn Fn() -> bool + Sync),
        record_fatal: &(dyn Fn(Error) + Sync),
    ) {
        let Hashed {
            index,
            buf,
            zero,
            digest,
        } = block;
        let body = Bytes::from(buf);
        let (r, attempts) = self
            .retry
            .run(self.since, stopped, || {
                self.api.put_block(
                    &self.snapshot_id,
                    index,
                    body.clone(),
                    &digest_b64,
                    Some(self.progress_pct),
                )
            })
            .await;
        match r {
            Ok(()) => {
                self.counters
                    .sent_bytes
                    .fetch_add(BLOCK_SIZE, Ordering::Relaxed);
                if zero {
                    self.counters.zero_written.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self.done.send(Done {
                    index,
                    digest,
                    zero,
                    written: true,
                });
            }
            // Stopped by Ctrl-C or another block's fatal error: not this block's fault.
            Err(_) if stopped() => {}
            Err(source) => record_fatal(Error::Api {
                op: "PutSnapshotBlock",
                snapshot_id: Some(self.snapshot_id.clone()),
                block: Some(index),
                attempts,
                source,
            }),
        }
        // The buffer goes back only now: after a fatal error the stop is already set,
        // so no hasher can take it to start one more block.
        match body.try_into_mut() {
            Ok(back) => self.pool.give_back(back.into()),
            Err(_) => self.pool.forget_one(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiError, ApiResult, BlockPage, ErrorKind, FetchedBlock, StartedSnapshot};

    /// An EBS that keeps what it is sent and counts the puts in flight.
    #[derive(Default)]
    struct CountingEbs {
        in_flight: AtomicUsize,
        peak: AtomicUsize,
        stored: Mutex<BTreeMap<u64, Bytes>>,
    }

    impl EbsApi for CountingEbs {
        async fn list_changed_blocks(
            &self,
            _: &str,
            _: &str,
            _: Option<String>,
        ) -> ApiResult<crate::ChangedPage> {
            Err(ApiError::new(ErrorKind::Other, None, "not used by uploads"))
        }
        async fn start_snapshot(&self, _: StartRequest) -> ApiResult<StartedSnapshot> {
            Ok(StartedSnapshot {
                snapshot_id: "snap-1".into(),
                block_size: Some(BLOCK_SIZE),
            })
        }
        async fn put_block(
            &self,
            _: &str,
            index: u64,
            data: Bytes,
            checksum_b64: &str,
            _: Option<u8>,
        ) -> ApiResult<()> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            let ok = crate::block_checksum(&data) == checksum_b64;
            self.stored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(index, data);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if ok {
                Ok(())
            } else {
                Err(ApiError::new(ErrorKind::Validation, None, "bad checksum"))
            }
        }
        async fn complete_snapshot(&self, _: &str, _: u64, _: &str) -> ApiResult<()> {
            Ok(())
        }
        async fn snapshot_state(&self, _: &str) -> ApiResult<SnapshotState> {
            Ok(SnapshotState::Completed)
        }
        async fn list_blocks(&self, _: &str, _: Option<String>) -> ApiResult<BlockPage> {
            Err(ApiError::new(ErrorKind::Other, None, "not used"))
        }
        async fn get_block(&self, _: &str, _: u64, _: &str) -> ApiResult<FetchedBlock> {
            Err(ApiError::new(ErrorKind::Other, None, "not used"))
        }
    }

    fn options(workers: usize, journal_path: PathBuf) -> UploadOptions {
        UploadOptions {
            workers,
            description: None,
            tags: Vec::new(),
            encrypted: false,
            kms_key_arn: None,
            parent: None,
            parent_manifest_path: None,
            timeout_minutes: 60,
            journal_path,
            resume: false,
            retry: RetryPolicy::default(),
            completion_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(10),
            stop: Arc::new(AtomicBool::new(false)),
            on_started: Box::new(|_| {}),
            identity: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_blocks_than_workers_are_in_flight_and_every_block_arrives_intact() {
        const BLOCKS: u64 = 48;
        const WORKERS: usize = 3;
        let dir = std::env::temp_dir().join(format!(
            "ebs-upload-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("image.raw");
        let mut rng = fastrand::Rng::with_seed(5);
        let bytes: Vec<u8> = (0..BLOCKS * BLOCK_SIZE).map(|_| rng.u8(1..)).collect();
        std::fs::write(&path, &bytes).unwrap();

        let api = Arc::new(CountingEbs::default());
        let image: Arc<dyn BlockSource> = Arc::new(blockio::FileSource::open(&path).unwrap());
        let outcome = upload(
            api.clone(),
            image,
            &path,
            options(WORKERS, dir.join("journal")),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();

        assert_eq!(outcome.blocks_written, BLOCKS);
        let peak = api.peak.load(Ordering::SeqCst);
        assert!(
            (1..=WORKERS).contains(&peak),
            "{peak} puts in flight with {WORKERS} workers"
        );
        let stored = api.stored.lock().unwrap();
        assert_eq!(stored.len() as u64, BLOCKS);
        for (index, data) in stored.iter() {
            let at = (*index * BLOCK_SIZE) as usize;
            assert!(
                data[..] == bytes[at..at + BLOCK_SIZE as usize],
                "block {index}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_pool_makes_at_most_its_capacity_and_reuses_what_comes_back() {
        let pool = BufferPool::new(2);
        let stop = Stop {
            user: Arc::new(AtomicBool::new(false)),
            fatal: Arc::new(AtomicBool::new(false)),
        };
        let a = pool.take(&stop).unwrap();
        let _b = pool.take(&stop).unwrap();
        assert_eq!(pool.lock().made, 2);
        let ptr = a.as_ptr();
        pool.give_back(a);
        let again = pool.take(&stop).unwrap();
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(pool.lock().made, 2);
    }

    #[test]
    fn a_hasher_waiting_for_a_buffer_gives_up_when_the_upload_stops() {
        let pool = Arc::new(BufferPool::new(1));
        let stop = Stop {
            user: Arc::new(AtomicBool::new(false)),
            fatal: Arc::new(AtomicBool::new(false)),
        };
        let _held = pool.take(&stop).unwrap();
        let waiter = std::thread::spawn({
            let (pool, stop) = (pool.clone(), stop.clone());
            move || pool.take(&stop).is_none()
        });
        std::thread::sleep(BUFFER_WAIT);
        stop.fatal.store(true, Ordering::SeqCst);
        assert!(waiter.join().unwrap(), "the waiter got no buffer");
    }
}
