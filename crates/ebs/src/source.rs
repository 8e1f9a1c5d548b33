//! An EBS snapshot read in place, as a [`BlockSource`]: ListSnapshotBlocks gives the
//! blocks it holds (the others read as zeros), GetSnapshotBlock fetches them, each
//! checked against the checksum the service sends. A read that misses the cache
//! fetches its block, and, while reads go forward, the next listed blocks after it
//! in parallel (a read-ahead window that doubles up to the worker count; a random
//! read fetches one block); the cache holds a bounded number of blocks. Throttling and
//! other transient failures are retried with backoff ([`RetryPolicy`]).

use crate::api::EbsApi;
use crate::download::{fetch, list_all};
use crate::{Error, RetryPolicy, BLOCKS_PER_GIB, BLOCK_SIZE, GIB};
use blockio::BlockSource;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Blocks kept in memory: 128 × 512 KiB = 64 MiB, whatever the snapshot's size.
pub const CACHE_BLOCKS: usize = 128;

/// A completed snapshot as a byte source.
pub struct SnapshotSource<A: EbsApi> {
    api: Arc<A>,
    runtime: tokio::runtime::Handle,
    snapshot_id: String,
    blocks: BTreeMap<u64, String>,
    size: u64,
    retry: RetryPolicy,
    read_ahead: blockio::ReadAhead,
    cache: Mutex<blockio::PieceCache<Bytes>>,
    fetched: AtomicU64,
}

impl<A: EbsApi> SnapshotSource<A> {
    /// Lists the snapshot's blocks. `workers` blocks are fetched at once on a miss.
    /// Must not be called from inside the runtime `runtime` belongs to.
    pub fn open(
        api: Arc<A>,
        runtime: tokio::runtime::Handle,
        snapshot_id: &str,
        workers: usize,
        retry: RetryPolicy,
    ) -> crate::Result<Self> {
        let (blocks, volume_gib) = runtime.block_on(list_all(&*api, snapshot_id, &retry))?;
        if let Some((&last, _)) = blocks.iter().next_back() {
            if last >= volume_gib * BLOCKS_PER_GIB {
                return Err(Error::Invalid(format!(
                    "snapshot {snapshot_id} lists block {last} beyond its {volume_gib} GiB volume"
                )));
            }
        }
        Ok(Self {
            api,
            runtime,
            snapshot_id: snapshot_id.to_string(),
            blocks,
            size: volume_gib * GIB,
            retry,
            read_ahead: blockio::ReadAhead::new(workers),
            cache: Mutex::new(blockio::PieceCache::new(CACHE_BLOCKS)),
            fetched: AtomicU64::new(0),
        })
    }

    /// Blocks fetched from the service so far.
    pub fn blocks_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Blocks the snapshot lists.
    pub fn blocks_listed(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Block `index`: from the cache, or fetched with the listed blocks after it.
    fn block(&self, index: u64) -> crate::Result<Option<Bytes>> {
        if !self.blocks.contains_key(&index) {
            return Ok(None);
        }
        let forward = self.read_ahead.note(index);
        let wanted: Vec<(u64, String)> = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = cache.get(index) {
                return Ok(Some(b));
            }
            let window = self.read_ahead.window(forward) as usize;
            self.blocks
                .range(index..)
                .take(window)
                .filter(|(i, _)| !cache.contains(**i))
                .map(|(i, t)| (*i, t.clone()))
                .collect()
        };
        let fetched = self.runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, token) in wanted {
                let (api, id, retry) = (self.api.clone(), self.snapshot_id.clone(), self.retry);
                tasks.spawn(async move {
                    fetch(&*api, &id, i, &token, &retry)
                        .await
                        .map(|data| (i, data))
                });
            }
            let mut out = Vec::new();
            while let Some(r) = tasks.join_next().await {
                out.push(r.map_err(|e| Error::Invalid(e.to_string()))??);
            }
            Ok::<_, Error>(out)
        })?;
        self.fetched
            .fetch_add(fetched.len() as u64, Ordering::Relaxed);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        Ok(cache.insert_all(fetched, index))
    }
}

impl<A: EbsApi> BlockSource for SnapshotSource<A> {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> blockio::Result<()> {
        blockio::read_pieces(
            || self.name(),
            self.size,
            BLOCK_SIZE,
            buf,
            offset,
            |i| self.block(i).map_err(|e| e.to_string()),
        )
    }

    fn data_ranges(&self) -> blockio::Result<Vec<Range<u64>>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for &i in self.blocks.keys() {
            let r = i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE;
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        Ok(out)
    }

    fn name(&self) -> String {
        self.snapshot_id.clone()
    }
}
