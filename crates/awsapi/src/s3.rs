//! An object in S3 read in place, as a [`BlockSource`]: HeadObject gives its size and
//! ETag, ranged GetObject calls (each pinned to that ETag with If-Match, so an object
//! replaced while it is read is an error, not a mix of two) fetch 1 MiB chunks. A
//! miss that continues the previous read fetches the next chunks too, in parallel,
//! the window doubling with each such miss up to the worker count (read-ahead for
//! sequential scans); a random read fetches one chunk and resets the window. At most
//! [`CACHE_CHUNKS`] chunks are kept. Calls are retried with the `ebs` crate's
//! classified policy, so throttling (SlowDown) backs off and AccessDenied or NoSuchKey
//! stop at once.

use crate::classify;
use blockio::BlockSource;
use bytes::Bytes;
use ebs::{ApiError, ApiResult, ErrorKind, RetryPolicy};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes per ranged GetObject.
pub const S3_CHUNK: u64 = 1 << 20;
/// Chunks kept in memory (64 MiB).
pub const CACHE_CHUNKS: usize = 64;

/// `s3://bucket/key` → (bucket, key).
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then(|| (bucket.to_string(), key.to_string()))
}

/// An S3 object as a byte source.
pub struct S3Source {
    client: aws_sdk_s3::Client,
    runtime: tokio::runtime::Handle,
    bucket: String,
    key: String,
    version_id: Option<String>,
    etag: Option<String>,
    size: u64,
    retry: RetryPolicy,
    read_ahead: u64,
    cache: Mutex<blockio::PieceCache<Bytes>>,
    last_chunk: AtomicU64,
    window: AtomicU64,
    requests: AtomicU64,
    bytes_fetched: AtomicU64,
}

impl S3Source {
    /// Opens `s3://bucket/key` (at `version_id`, when given). Path-style addressing
    /// is used when an endpoint URL is configured (test servers, S3-compatible
    /// stores). Must not be called from inside the runtime `runtime` belongs to.
    pub fn open(
        config: &aws_config::SdkConfig,
        runtime: tokio::runtime::Handle,
        url: &str,
        version_id: Option<String>,
        workers: usize,
        retry: RetryPolicy,
    ) -> ApiResult<Self> {
        let (bucket, key) = parse_s3_url(url).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Validation,
                None,
                format!("{url}: not an s3://bucket/key URL"),
            )
        })?;
        let path_style =
            config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(config)
                .force_path_style(path_style)
                .build(),
        );
        let head = runtime.block_on(async {
            let (r, _) = retry
                .run(None, &|| false, || async {
                    client
                        .head_object()
                        .bucket(&bucket)
                        .key(&key)
                        .set_version_id(version_id.clone())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await;
            r
        });
        let head = head.map_err(|e| {
            ApiError::new(
                e.kind,
                e.code.as_deref(),
                format!("{url}: HeadObject: {}", e.message),
            )
        })?;
        let size = head
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Other,
                    None,
                    format!("{url}: HeadObject gave no size"),
                )
            })?;
        Ok(Self {
            client,
            runtime,
            bucket,
            key,
            version_id,
            etag: head.e_tag().map(str::to_string),
            size,
            retry,
            read_ahead: workers.max(1) as u64,
            cache: Mutex::new(blockio::PieceCache::new(CACHE_CHUNKS)),
            last_chunk: AtomicU64::new(u64::MAX),
            window: AtomicU64::new(1),
            requests: AtomicU64::new(0),
            bytes_fetched: AtomicU64::new(0),
        })
    }

    /// GetObject requests made for data so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bytes fetched so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_fetched.load(Ordering::Relaxed)
    }

    fn chunk_range(&self, index: u64) -> Range<u64> {
        let start = index * S3_CHUNK;
        start..(start + S3_CHUNK).min(self.size)
    }

    async fn get(&self, index: u64) -> ApiResult<(u64, Bytes)> {
        let range = self.chunk_range(index);
        let (r, _) = self
            .retry
            .run(None, &|| false, || async {
                let out = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .set_version_id(self.version_id.clone())
                    .set_if_match(self.etag.clone())
                    .range(format!("bytes={}-{}", range.start, range.end - 1))
                    .send()
                    .await
                    .map_err(classify)?;
                let body = out.body.collect().await.map_err(|e| {
                    ApiError::new(ErrorKind::Network, None, format!("reading the body: {e}"))
                })?;
                Ok(body.into_bytes())
            })
            .await;
        let data = r?;
        if data.len() as u64 != range.end - range.start {
            return Err(ApiError::new(
                ErrorKind::Other,
                None,
                format!(
                    "bytes {}-{}: {} bytes came back",
                    range.start,
                    range.end - 1,
                    data.len()
                ),
            ));
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_fetched
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok((index, data))
    }

    /// Chunk `index`: from the cache, or fetched (with the chunks after it when the
    /// reads go forward).
    fn chunk(&self, index: u64) -> ApiResult<Bytes> {
        let sequential = self
            .last_chunk
            .swap(index, Ordering::Relaxed)
            .wrapping_add(1)
            == index;
        let last = (self.size.div_ceil(S3_CHUNK)).saturating_sub(1);
        let wanted: Vec<u64> = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(index) {
                return Ok(c);
            }
            let window = if sequential {
                (self.window.load(Ordering::Relaxed) * 2).min(self.read_ahead)
            } else {
                1
            };
            self.window.store(window, Ordering::Relaxed);
            let end = (index + window - 1).min(last);
            (index..=end).filter(|i| !cache.contains(*i)).collect()
        };
        let fetched = self.runtime.block_on(async {
            let calls = wanted.iter().map(|&i| self.get(i));
            futures_util::future::join_all(calls).await
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for r in fetched {
            let (i, data) = r?;
            if i == index {
                found = Some(data.clone());
            }
            cache.insert(i, data);
        }
        found.ok_or_else(|| ApiError::new(ErrorKind::Other, None, "chunk not fetched".to_string()))
    }
}

impl BlockSource for S3Source {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> blockio::Result<()> {
        blockio::read_pieces(
            || self.name(),
            self.size,
            S3_CHUNK,
            buf,
            offset,
            |i| {
                self.chunk(i)
                    .map(Some)
                    .map_err(|e| format!("chunk at byte {}: {e}", i * S3_CHUNK))
            },
        )
    }

    fn name(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

impl Drop for S3Source {
    fn drop(&mut self) {
        tracing::info!(
            object = %self.name(),
            requests = self.requests(),
            bytes_fetched = self.bytes_fetched(),
            "done reading"
        );
    }
}
