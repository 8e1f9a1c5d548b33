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

/// The S3 client for `config`. Path-style addressing is used when an endpoint URL
/// is configured (test servers, S3-compatible stores).
pub fn client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let path_style =
        config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build(),
    )
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
    read_ahead: blockio::ReadAhead,
    cache: Mutex<blockio::PieceCache<Bytes>>,
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
        let client = client(config);
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
            read_ahead: blockio::ReadAhead::new(workers),
            cache: Mutex::new(blockio::PieceCache::new(CACHE_CHUNKS)),
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
        tracing::trace!(chunk = index, "GetObject");
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_fetched
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok((index, data))
    }

    /// Chunk `index`: from the cache, or fetched (with the chunks after it when the
    /// reads go forward).
    fn chunk(&self, index: u64) -> ApiResult<Bytes> {
        let forward = self.read_ahead.note(index);
        let last = (self.size.div_ceil(S3_CHUNK)).saturating_sub(1);
        let wanted: Vec<u64> = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(index) {
                return Ok(c);
            }
            let window = self.read_ahead.window(forward);
            let end = (index + window - 1).min(last);
            (index..=end).filter(|i| !cache.contains(*i)).collect()
        };
        let fetched = self.runtime.block_on(async {
            let calls = wanted.iter().map(|&i| self.get(i));
            futures_util::future::join_all(calls).await
        });
        let fetched = fetched.into_iter().collect::<ApiResult<Vec<_>>>()?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .insert_all(fetched, index)
            .ok_or_else(|| ApiError::new(ErrorKind::Other, None, "chunk not fetched".to_string()))
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

/// The largest object written with one PutObject, and the size of each part of a
/// multipart upload above it: 16 MiB bounds the memory one upload holds, and 10,000
/// parts (S3's limit) of it reach 160 GiB.
pub const PART_SIZE: u64 = 16 << 20;

/// S3's limit on the parts of one multipart upload.
const MAX_PARTS: u64 = 10_000;

/// Where an object is written: its URL, and the user metadata it carries
/// (`x-amz-meta-…`).
pub struct ObjectTarget {
    /// `s3://bucket/key`.
    pub url: String,
    /// User metadata, name to value.
    pub metadata: Vec<(String, String)>,
}

impl ObjectTarget {
    fn parts(&self) -> ApiResult<(String, String)> {
        parse_s3_url(&self.url).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Validation,
                None,
                format!("{}: not an s3://bucket/key URL", self.url),
            )
        })
    }

    fn metadata(&self) -> Option<std::collections::HashMap<String, String>> {
        (!self.metadata.is_empty()).then(|| self.metadata.iter().cloned().collect())
    }

    fn named(&self, call: &str) -> impl Fn(ApiError) -> ApiError + '_ {
        let call = call.to_string();
        move |e| {
            ApiError::new(
                e.kind,
                e.code.as_deref(),
                format!("{}: {call}: {}", self.url, e.message),
            )
        }
    }
}

/// Writes `bytes` to `target` with one PutObject carrying their SHA-256
/// (`x-amz-checksum-sha256`), which S3 checks before it stores the object.
pub async fn put_bytes(
    client: &aws_sdk_s3::Client,
    target: &ObjectTarget,
    bytes: Bytes,
    retry: &RetryPolicy,
) -> ApiResult<()> {
    let (bucket, key) = target.parts()?;
    let checksum = ebs::block_checksum(&bytes);
    let (r, _) = retry
        .run(None, &|| false, || async {
            client
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .set_metadata(target.metadata())
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
                .checksum_sha256(&checksum)
                .body(bytes.clone().into())
                .send()
                .await
                .map_err(classify)
        })
        .await;
    r.map(|_| ()).map_err(target.named("PutObject"))
}

/// Writes the file at `path` to `target`: one PutObject up to [`PART_SIZE`], else a
/// multipart upload of [`PART_SIZE`] parts, each sent with its SHA-256 so S3 checks
/// every part on arrival. A multipart upload that fails is aborted, leaving no
/// parts behind.
pub async fn put_file(
    client: &aws_sdk_s3::Client,
    target: &ObjectTarget,
    path: &std::path::Path,
    retry: &RetryPolicy,
) -> ApiResult<()> {
    use std::os::unix::fs::FileExt;
    let local = |e: std::io::Error| {
        ApiError::new(ErrorKind::Other, None, format!("{}: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(local)?;
    let size = file.metadata().map_err(local)?.len();
    let read = |offset: u64| -> ApiResult<Bytes> {
        let mut buf = vec![0u8; (size - offset).min(PART_SIZE) as usize];
        file.read_exact_at(&mut buf, offset).map_err(local)?;
        Ok(Bytes::from(buf))
    };
    if size <= PART_SIZE {
        return put_bytes(client, target, read(0)?, retry).await;
    }
    if size.div_ceil(PART_SIZE) > MAX_PARTS {
        return Err(ApiError::new(
            ErrorKind::Validation,
            None,
            format!(
                "{}: {size} bytes is more than {MAX_PARTS} parts of {PART_SIZE} bytes",
                path.display()
            ),
        ));
    }
    let (bucket, key) = target.parts()?;
    let (r, _) = retry
        .run(None, &|| false, || async {
            client
                .create_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .set_metadata(target.metadata())
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
                .send()
                .await
                .map_err(classify)
        })
        .await;
    let created = r.map_err(target.named("CreateMultipartUpload"))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let sent = async {
        let mut parts = Vec::new();
        for (n, offset) in (0..size).step_by(PART_SIZE as usize).enumerate() {
            let number = n as i32 + 1;
            let data = read(offset)?;
            let checksum = ebs::block_checksum(&data);
            let (r, _) = retry
                .run(None, &|| false, || async {
                    client
                        .upload_part()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
                        .checksum_sha256(&checksum)
                        .body(data.clone().into())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await;
            let part = r.map_err(target.named(&format!("UploadPart {number}")))?;
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .checksum_sha256(checksum)
                    .build(),
            );
        }
        let completed = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        let (r, _) = retry
            .run(None, &|| false, || async {
                client
                    .complete_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .multipart_upload(completed.clone())
                    .send()
                    .await
                    .map_err(classify)
            })
            .await;
        r.map(|_| ())
            .map_err(target.named("CompleteMultipartUpload"))
    };
    let result = sent.await;
    if result.is_err() {
        let _ = client
            .abort_multipart_upload()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&upload_id)
            .send()
            .await;
    }
    result
}

/// Deletes the object at `target` (a missing object is not an error: S3 answers
/// DeleteObject the same either way).
pub async fn delete_object(
    client: &aws_sdk_s3::Client,
    target: &ObjectTarget,
    retry: &RetryPolicy,
) -> ApiResult<()> {
    let (bucket, key) = target.parts()?;
    let (r, _) = retry
        .run(None, &|| false, || async {
            client
                .delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .map_err(classify)
        })
        .await;
    r.map(|_| ()).map_err(target.named("DeleteObject"))
}
