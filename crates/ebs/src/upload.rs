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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Progress callbacks, for a bar or log lines.
pub trait Progress: Send + Sync {
    /// The snapshot exists and `blocks` blocks will be looked at.
    fn started(&self, snapshot_id: &str, blocks: u64);
    /// One block is done: sent (`bytes` > 0) or skipped.
    fn block(&self, bytes: u64);
    /// Everything is sent; the snapshot is being sealed.
    fn sealing(&self);
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

/// The first wait before asking again whether the snapshot is completed.
const FIRST_POLL: Duration = Duration::from_millis(100);

/// SHA-256 of an all-zero block.
fn zero_digest() -> [u8; 32] {
    sha2::Sha256::digest(vec![0u8; BLOCK_SIZE as usize]).into()
}

/// Reads block `index` of the image into `buf`, zero-padding past the end.
fn read_block(image: &dyn BlockSource, index: u64, buf: &mut [u8]) -> blockio::Result<()> {
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
    let identity = ImageIdentity::of(image_path)?;
    let stop_flag = opts.stop.clone();
    let abort = Arc::new(AtomicBool::new(false));
    let stopped = {
        let (s, a) = (stop_flag.clone(), abort.clone());
        move || s.load(Ordering::SeqCst) || a.load(Ordering::SeqCst)
    };

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

    // 3. Stream.
    let parent_blocks: Arc<BTreeMap<u64, String>> = Arc::new(
        parent
            .as_ref()
            .map(|m| m.blocks.clone())
            .unwrap_or_default(),
    );
    let workers = opts.workers.max(1);
    let in_flight = Arc::new(Semaphore::new(workers));
    let hashers = Arc::new(Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ));
    let pool: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::with_capacity(workers)));
    let counters = Arc::new(Counters::default());
    let fatal: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let total_to_visit = to_visit.len().max(1) as u64;
    let visited = Arc::new(AtomicU64::new(0));

    // The journal writer: confirmations go to disk as they arrive.
    let journal_task = tokio::task::spawn_blocking({
        let progress = progress.clone();
        move || -> Result<(Journal, BTreeMap<u64, [u8; 32]>, u64)> {
            let mut seen = BTreeMap::new();
            let mut skipped = 0;
            let mut last_sync = Instant::now();
            while let Some(d) = done_rx.blocking_recv() {
                if d.written {
                    journal.record(d.index, &d.digest)?;
                    progress.block(BLOCK_SIZE);
                } else {
                    skipped += 1;
                    progress.block(0);
                }
                if !d.zero {
                    seen.insert(d.index, d.digest);
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

    let mut tasks = JoinSet::new();
    for index in to_visit {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        // Checked after the wait: a block that just failed for good frees its permit
        // only after raising the abort flag, so no new block starts after a fatal error.
        if stopped() {
            break;
        }
        let ctx = BlockContext {
            api: api.clone(),
            image: image.clone(),
            snapshot_id: snapshot_id.clone(),
            hashers: hashers.clone(),
            pool: pool.clone(),
            parent_blocks: parent_blocks.clone(),
            encrypted,
            retry: opts.retry,
            since: snapshot_started,
            counters: counters.clone(),
            done: done_tx.clone(),
            progress_pct: (visited.fetch_add(1, Ordering::Relaxed) * 100 / total_to_visit).min(100)
                as u8,
        };
        let (fatal, abort, stop_flag) = (fatal.clone(), abort.clone(), stop_flag.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let stopped = {
                let abort = abort.clone();
                move || stop_flag.load(Ordering::SeqCst) || abort.load(Ordering::SeqCst)
            };
            if let Err(e) = ctx.run(index, &stopped).await {
                abort.store(true, Ordering::SeqCst);
                let mut f = fatal.lock().unwrap_or_else(|p| p.into_inner());
                if f.is_none() {
                    *f = Some(e);
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    drop(done_tx);
    let (journal, seen, skipped) = journal_task
        .await
        .map_err(|e| Error::Invalid(format!("journal writer failed: {e}")))??;

    if let Some(e) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    if stop_flag.load(Ordering::SeqCst) {
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
    for (index, digest) in seen.iter().chain(resumed.iter()) {
        if *digest != zero && *index < p.image_blocks {
            manifest.blocks.insert(*index, crate::b64(digest));
        }
    }
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

/// Everything one block's task needs.
struct BlockContext<A> {
    api: Arc<A>,
    image: Arc<dyn BlockSource>,
    snapshot_id: String,
    hashers: Arc<Semaphore>,
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
    parent_blocks: Arc<BTreeMap<u64, String>>,
    encrypted: bool,
    retry: RetryPolicy,
    since: Option<Instant>,
    counters: Arc<Counters>,
    done: tokio::sync::mpsc::UnboundedSender<Done>,
    progress_pct: u8,
}

impl<A: EbsApi> BlockContext<A> {
    fn take_buffer(&self) -> Vec<u8> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.pop().unwrap_or_else(|| vec![0u8; BLOCK_SIZE as usize])
    }

    fn give_back(&self, buf: Vec<u8>) {
        if buf.len() == BLOCK_SIZE as usize {
            self.pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(buf);
        }
    }

    async fn run(self, index: u64, stopped: &(dyn Fn() -> bool + Sync)) -> Result<()> {
        // Read, check for zeros and hash, off the async runtime.
        let buf = self.take_buffer();
        let permit = self
            .hashers
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let image = self.image.clone();
        let (buf, zero, digest) =
            tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, bool, [u8; 32])> {
                let _permit = permit;
                let mut buf = buf;
                read_block(&*image, index, &mut buf)?;
                let zero = is_zero(&buf);
                let digest: [u8; 32] = sha2::Sha256::digest(&buf).into();
                Ok((buf, zero, digest))
            })
            .await
            .map_err(|e| Error::Invalid(format!("reading block {index} failed: {e}")))??;

        let digest_b64 = crate::b64(&digest);
        let in_parent = self.parent_blocks.get(&index);
        let send = if self.encrypted {
            true
        } else if zero {
            // Zeros need writing only where the parent had data.
            in_parent.is_some()
        } else {
            in_parent != Some(&digest_b64)
        };
        if !send {
            self.give_back(buf);
            let _ = self.done.send(Done {
                index,
                digest,
                zero,
                written: false,
            });
            return Ok(());
        }

        if stopped() {
            // Ctrl-C or another block's fatal error: leave this block unconfirmed.
            self.give_back(buf);
            return Ok(());
        }
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
        if let Ok(back) = body.try_into_mut() {
            self.give_back(back.into());
        }
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
                Ok(())
            }
            // Stopped by Ctrl-C or another block's fatal error: not this block's fault.
            Err(_) if stopped() => Ok(()),
            Err(source) => Err(Error::Api {
                op: "PutSnapshotBlock",
                snapshot_id: Some(self.snapshot_id.clone()),
                block: Some(index),
                attempts,
                source,
            }),
        }
    }
}
