//! Reading snapshots back: download to a sparse file, and block-by-block verification
//! against an image.

use crate::api::EbsApi;
use crate::{block_checksum, Error, Progress, Result, RetryPolicy, BLOCK_SIZE, GIB};
use blockio::BlockSource;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What a download did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DownloadOutcome {
    /// The snapshot.
    pub snapshot_id: String,
    /// Its volume size.
    pub volume_size_gib: u64,
    /// Blocks the snapshot lists (written blocks; the rest are zeros).
    pub blocks: u64,
    /// Bytes written to the file.
    pub bytes: u64,
}

/// What a verification found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyOutcome {
    /// The snapshot.
    pub snapshot_id: String,
    /// Blocks compared (every block of the image and every block the snapshot lists).
    pub blocks_compared: u64,
    /// Blocks that differ, ascending.
    pub mismatches: Vec<u64>,
}

/// Every block the snapshot lists, with its token, and its volume size.
pub(crate) async fn list_all<A: EbsApi>(
    api: &A,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<(BTreeMap<u64, String>, u64)> {
    let mut blocks = BTreeMap::new();
    let mut token = None;
    let mut volume = None;
    loop {
        let (r, attempts) = retry
            .run(None, &|| false, || {
                api.list_blocks(snapshot_id, token.clone())
            })
            .await;
        let page = r.map_err(|source| Error::Api {
            op: "ListSnapshotBlocks",
            snapshot_id: Some(snapshot_id.into()),
            block: None,
            attempts,
            source,
        })?;
        volume = volume.or(page.volume_size_gib);
        blocks.extend(page.blocks);
        match page.next_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    let volume = volume.ok_or_else(|| {
        Error::Invalid(format!(
            "snapshot {snapshot_id}: ListSnapshotBlocks gave no volume size"
        ))
    })?;
    Ok((blocks, volume))
}

/// The blocks of `second` that differ from `first` (ListChangedBlocks, every page),
/// ascending, and `second`'s volume size in GiB. The pages are bounded by what a
/// volume can hold, so a service that keeps answering with a next token cannot
/// keep the caller forever.
pub async fn changed_blocks<A: EbsApi>(
    api: &A,
    first: &str,
    second: &str,
    retry: &RetryPolicy,
) -> Result<(Vec<u64>, u64)> {
    // The fewest blocks a page holds (MaxResults' floor), and the most a volume has.
    const MIN_PAGE: u64 = 100;
    let max_blocks = crate::MAX_VOLUME_GIB * crate::BLOCKS_PER_GIB;
    let mut blocks = Vec::new();
    let mut token = None;
    let mut volume = None;
    for _ in 0..=max_blocks / MIN_PAGE {
        let (r, attempts) = retry
            .run(None, &|| false, || {
                api.list_changed_blocks(first, second, token.clone())
            })
            .await;
        let page = r.map_err(|source| Error::Api {
            op: "ListChangedBlocks",
            snapshot_id: Some(format!("{first} → {second}")),
            block: None,
            attempts,
            source,
        })?;
        volume = volume.or(page.volume_size_gib);
        if page.blocks.iter().any(|&b| b >= max_blocks) {
            return Err(Error::Invalid(format!(
                "ListChangedBlocks {first} → {second} names a block past any volume"
            )));
        }
        blocks.extend(page.blocks);
        match page.next_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => {
                blocks.sort_unstable();
                blocks.dedup();
                let volume = volume.ok_or_else(|| {
                    Error::Invalid(format!(
                        "ListChangedBlocks {first} → {second} gave no volume size"
                    ))
                })?;
                return Ok((blocks, volume));
            }
        }
    }
    Err(Error::Invalid(format!(
        "ListChangedBlocks {first} → {second}: more pages than any volume needs"
    )))
}

/// Fetches one block and checks it against the checksum the service sent.
pub(crate) async fn fetch<A: EbsApi>(
    api: &A,
    snapshot_id: &str,
    index: u64,
    token: &str,
    retry: &RetryPolicy,
) -> Result<bytes::Bytes> {
    let (r, attempts) = retry
        .run(None, &|| false, || api.get_block(snapshot_id, index, token))
        .await;
    let block = r.map_err(|source| Error::Api {
        op: "GetSnapshotBlock",
        snapshot_id: Some(snapshot_id.into()),
        block: Some(index),
        attempts,
        source,
    })?;
    if block.data.len() as u64 != BLOCK_SIZE {
        return Err(Error::Invalid(format!(
            "snapshot {snapshot_id} block {index}: {} bytes, not {BLOCK_SIZE}",
            block.data.len()
        )));
    }
    let data = block.data;
    let actual = tokio::task::spawn_blocking({
        let data = data.clone();
        move || block_checksum(&data)
    })
    .await
    .map_err(|e| Error::Invalid(e.to_string()))?;
    if let Some(expected) = block.checksum {
        if expected != actual {
            return Err(Error::Checksum {
                snapshot_id: snapshot_id.into(),
                block: index,
                expected,
                actual,
            });
        }
    }
    Ok(data)
}

/// Downloads a completed snapshot into `out`, a sparse file the size of the volume.
pub async fn download<A: EbsApi>(
    api: Arc<A>,
    snapshot_id: &str,
    out: &Path,
    workers: usize,
    retry: RetryPolicy,
    progress: Arc<dyn Progress>,
) -> Result<DownloadOutcome> {
    let (blocks, volume_size_gib) = list_all(&*api, snapshot_id, &retry).await?;
    progress.started(snapshot_id, blocks.len() as u64);
    let io = |e: std::io::Error| Error::State {
        path: out.into(),
        reason: e.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io)?;
    file.set_len(volume_size_gib * GIB).map_err(io)?;
    let file = Arc::new(file);
    let sem = Arc::new(Semaphore::new(workers.max(1)));
    let mut tasks = JoinSet::new();
    let count = blocks.len() as u64;
    for (index, token) in blocks {
        if index >= volume_size_gib * crate::BLOCKS_PER_GIB {
            return Err(Error::Invalid(format!("snapshot {snapshot_id} lists block {index} beyond its {volume_size_gib} GiB volume")));
        }
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let (api, file, id, out, progress) = (
            api.clone(),
            file.clone(),
            snapshot_id.to_string(),
            out.to_path_buf(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let data = fetch(&*api, &id, index, &token, &retry).await?;
            let bytes = data.len() as u64;
            tokio::task::spawn_blocking(move || file.write_all_at(&data, index * BLOCK_SIZE))
                .await
                .map_err(|e| Error::Invalid(e.to_string()))?
                .map_err(|e| Error::State {
                    path: out,
                    reason: format!("writing block {index}: {e}"),
                })?;
            progress.block(bytes);
            Ok::<_, Error>(())
        });
        if let Some(r) = tasks.try_join_next() {
            r.map_err(|e| Error::Invalid(e.to_string()))??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::Invalid(e.to_string()))??;
    }
    file.sync_all().map_err(io)?;
    Ok(DownloadOutcome {
        snapshot_id: snapshot_id.into(),
        volume_size_gib,
        blocks: count,
        bytes: count * BLOCK_SIZE,
    })
}

/// Compares every block of `image` with the snapshot. Blocks the snapshot does not
/// list read as zeros.
pub async fn verify<A: EbsApi>(
    api: Arc<A>,
    image: Arc<dyn BlockSource>,
    snapshot_id: &str,
    workers: usize,
    retry: RetryPolicy,
    progress: Arc<dyn Progress>,
) -> Result<VerifyOutcome> {
    let (blocks, _) = list_all(&*api, snapshot_id, &retry).await?;
    let image_blocks = image.len().div_ceil(BLOCK_SIZE);
    let last = blocks
        .keys()
        .next_back()
        .map_or(0, |l| l + 1)
        .max(image_blocks);
    progress.started(snapshot_id, last);
    let blocks = Arc::new(blocks);
    let sem = Arc::new(Semaphore::new(workers.max(1)));
    let zero = block_checksum(&vec![0u8; BLOCK_SIZE as usize]);
    let mut tasks = JoinSet::new();
    for index in 0..last {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let (api, image, blocks, id, zero, progress) = (
            api.clone(),
            image.clone(),
            blocks.clone(),
            snapshot_id.to_string(),
            zero.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let theirs = match blocks.get(&index) {
                Some(token) => {
                    let data = fetch(&*api, &id, index, token, &retry).await?;
                    tokio::task::spawn_blocking(move || block_checksum(&data))
                        .await
                        .map_err(|e| Error::Invalid(e.to_string()))?
                }
                None => zero,
            };
            let ours = tokio::task::spawn_blocking(move || -> Result<String> {
                let mut buf = vec![0u8; BLOCK_SIZE as usize];
                let start = index * BLOCK_SIZE;
                let n = image.len().saturating_sub(start).min(BLOCK_SIZE) as usize;
                if n > 0 {
                    image.read_exact_at(&mut buf[..n], start)?;
                }
                Ok(block_checksum(&buf))
            })
            .await
            .map_err(|e| Error::Invalid(e.to_string()))??;
            progress.block(if blocks.contains_key(&index) {
                BLOCK_SIZE
            } else {
                0
            });
            Ok::<_, Error>((index, ours == theirs))
        });
    }
    let mut mismatches = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (index, same) = r.map_err(|e| Error::Invalid(e.to_string()))??;
        if !same {
            mismatches.push(index);
        }
    }
    mismatches.sort_unstable();
    Ok(VerifyOutcome {
        snapshot_id: snapshot_id.into(),
        blocks_compared: last,
        mismatches,
    })
}
