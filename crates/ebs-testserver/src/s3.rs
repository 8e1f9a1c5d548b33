//! A strict S3 test server (path-style addressing), built from the documented
//! behaviour, for what moto's S3 cannot do: moto reads a whole object for every
//! ranged GET, so reading a GiB-sized object in 1 MiB ranges takes it hours. Here
//! objects are kept in memory and a range costs its own length.
//!
//! It serves CreateBucket, PutObject, CreateMultipartUpload, UploadPart,
//! CompleteMultipartUpload, AbortMultipartUpload, HeadObject, GetObject and
//! DeleteObject, ListObjectsV2 (first page), and it checks:
//! - `x-amz-checksum-sha256` (a header, or an `aws-chunked` trailer) against the
//!   bytes: BadDigest on a mismatch;
//! - multipart completion: parts in ascending order (InvalidPartOrder), each listed
//!   part uploaded with that ETag (InvalidPart) and checksum, every part but the
//!   last at least 5 MiB (EntityTooSmall); the ETag is the MD5 of the parts' MD5s
//!   with `-N`, the checksum the SHA-256 of their SHA-256s with `-N`;
//! - `Range` (206 with Content-Range; 416 InvalidRange past the end) and `If-Match`
//!   (412 PreconditionFailed when the object changed).
//!
//! It does not check SigV4 signatures (neither does moto's S3). Every GetObject is
//! counted with the bytes it sent ([`S3Stats`]).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use md5::Digest as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The smallest part of a multipart upload but the last, as S3 enforces.
const MIN_PART: usize = 5 << 20;
/// The largest request body accepted: S3's largest part.
const MAX_BODY: usize = 5 << 30;

/// What the S3 server was asked.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct S3Stats {
    /// GetObject calls.
    pub gets: u64,
    /// Bytes GetObject calls sent.
    pub bytes_sent: u64,
    /// Requests refused, by error code.
    pub rejected: BTreeMap<String, u64>,
}

struct Object {
    data: Bytes,
    etag: String,
    checksum_sha256: Option<String>,
    metadata: Vec<(String, String)>,
}

struct Upload {
    bucket: String,
    key: String,
    metadata: Vec<(String, String)>,
    parts: BTreeMap<u32, (Bytes, String, String)>,
}

#[derive(Default)]
struct S3State {
    buckets: BTreeMap<String, BTreeMap<String, Object>>,
    uploads: HashMap<String, Upload>,
    next_upload: u64,
    stats: S3Stats,
}

type Shared = Arc<Mutex<S3State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, S3State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn error(st: &mut S3State, status: StatusCode, code: &str, message: &str) -> Response {
    *st.stats.rejected.entry(code.to_string()).or_default() += 1;
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [("content-type", "application/xml")], body).into_response()
}

/// The body, `aws-chunked` framing removed, and the trailing headers it carried.
fn decode_body(headers: &HeaderMap, body: Bytes) -> Result<(Bytes, Vec<(String, String)>), String> {
    let chunked = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("aws-chunked"))
        || headers
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("STREAMING-"));
    if !chunked {
        return Ok((body, Vec::new()));
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = &body[..];
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("an aws-chunked chunk header without CRLF")?;
        let header =
            std::str::from_utf8(&rest[..line_end]).map_err(|_| "a chunk header is not text")?;
        let size_hex = header.split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_hex.trim(), 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        if rest.len() < size + 2 {
            return Err("an aws-chunked chunk is cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    let trailers = std::str::from_utf8(rest)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((Bytes::from(out), trailers))
}

/// The body of an object or part, checked against the SHA-256 the client sent (a
/// header or a trailer), if it sent one; with its MD5 ETag and base64 SHA-256.
fn received(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Bytes, String, String), (&'static str, String)> {
    let (data, trailers) = decode_body(headers, body).map_err(|e| ("IncompleteBody", e))?;
    let sha = b64(&sha2::Sha256::digest(&data));
    let sent = headers
        .get("x-amz-checksum-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            trailers
                .iter()
                .find(|(k, _)| k == "x-amz-checksum-sha256")
                .map(|(_, v)| v.clone())
        });
    if let Some(sent) = sent {
        if sent != sha {
            return Err((
                "BadDigest",
                format!(
                    "the SHA-256 you specified ({sent}) did not match what we received ({sha})"
                ),
            ));
        }
    }
    let etag = format!("\"{}\"", hex(&md5::Md5::digest(&data)));
    Ok((data, etag, sha))
}

fn user_metadata(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-amz-meta-")?;
            Some((name.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect()
}

async fn bucket(
    State(s): State<Shared>,
    Path(bucket): Path<String>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut st = lock(&s);
    match method {
        Method::PUT => {
            if st.buckets.contains_key(&bucket) {
                return error(
                    &mut st,
                    StatusCode::CONFLICT,
                    "BucketAlreadyOwnedByYou",
                    &bucket,
                );
            }
            st.buckets.insert(bucket, BTreeMap::new());
            StatusCode::OK.into_response()
        }
        Method::GET => {
            let Some(objects) = st.buckets.get(&bucket) else {
                return error(&mut st, StatusCode::NOT_FOUND, "NoSuchBucket", &bucket);
            };
            let prefix = q.get("prefix").cloned().unwrap_or_default();
            let items: String = objects
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .take(1000)
                .map(|(k, o)| {
                    format!(
                        "<Contents><Key>{k}</Key><Size>{}</Size><ETag>{}</ETag></Contents>",
                        o.data.len(),
                        o.etag.replace('"', "&quot;")
                    )
                })
                .collect();
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>{bucket}</Name><Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>{items}</ListBucketResult>"
            );
            (StatusCode::OK, [("content-type", "application/xml")], body).into_response()
        }
        _ => error(
            &mut st,
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "bucket",
        ),
    }
}

async fn object(
    State(s): State<Shared>,
    Path((bucket, key)): Path<(String, String)>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match method {
        Method::PUT => put(&s, bucket, key, &q, &headers, body),
        Method::POST if q.contains_key("uploads") => create_upload(&s, bucket, key, &headers),
        Method::POST => complete(&s, bucket, key, &q, &body),
        Method::HEAD | Method::GET => get(&s, &bucket, &key, &headers, method == Method::HEAD),
        Method::DELETE => {
            let mut st = lock(&s);
            match q.get("uploadId") {
                Some(id) => {
                    st.uploads.remove(id);
                }
                None => {
                    if let Some(b) = st.buckets.get_mut(&bucket) {
                        b.remove(&key);
                    }
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(
            &mut lock(&s),
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &key,
        ),
    }
}

fn put(
    s: &Shared,
    bucket: String,
    key: String,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let (data, etag, sha) = match received(headers, body) {
        Ok(r) => r,
        Err((code, why)) => return error(&mut lock(s), StatusCode::BAD_REQUEST, code, &why),
    };
    let mut st = lock(s);
    if let (Some(id), Some(number)) = (q.get("uploadId"), q.get("partNumber")) {
        let Ok(number) = number.parse::<u32>() else {
            return error(
                &mut st,
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "partNumber",
            );
        };
        if !(1..=10_000).contains(&number) {
            return error(
                &mut st,
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "partNumber",
            );
        }
        let Some(upload) = st.uploads.get_mut(id) else {
            return error(&mut st, StatusCode::NOT_FOUND, "NoSuchUpload", id);
        };
        upload
            .parts
            .insert(number, (data, etag.clone(), sha.clone()));
        return (
            StatusCode::OK,
            [("etag", etag), ("x-amz-checksum-sha256", sha)],
        )
            .into_response();
    }
    let Some(objects) = st.buckets.get_mut(&bucket) else {
        return error(&mut st, StatusCode::NOT_FOUND, "NoSuchBucket", &bucket);
    };
    objects.insert(
        key,
        Object {
            data,
            etag: etag.clone(),
            checksum_sha256: Some(sha.clone()),
            metadata: user_metadata(headers),
        },
    );
    (
        StatusCode::OK,
        [("etag", etag), ("x-amz-checksum-sha256", sha)],
    )
        .into_response()
}

fn create_upload(s: &Shared, bucket: String, key: String, headers: &HeaderMap) -> Response {
    let mut st = lock(s);
    if !st.buckets.contains_key(&bucket) {
        return error(&mut st, StatusCode::NOT_FOUND, "NoSuchBucket", &bucket);
    }
    st.next_upload += 1;
    let id = format!("upload-{}", st.next_upload);
    st.uploads.insert(
        id.clone(),
        Upload {
            bucket: bucket.clone(),
            key: key.clone(),
            metadata: user_metadata(headers),
            parts: BTreeMap::new(),
        },
    );
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
    );
    (StatusCode::OK, [("content-type", "application/xml")], body).into_response()
}

/// The text between `<tag>` and `</tag>` in `xml`, from `from`.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + end])
}

fn complete(
    s: &Shared,
    bucket: String,
    key: String,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Response {
    let mut st = lock(s);
    let Some(id) = q.get("uploadId") else {
        return error(
            &mut st,
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "no uploadId",
        );
    };
    let Some(upload) = st.uploads.get(id) else {
        return error(&mut st, StatusCode::NOT_FOUND, "NoSuchUpload", id);
    };
    if upload.bucket != bucket || upload.key != key {
        return error(&mut st, StatusCode::NOT_FOUND, "NoSuchUpload", id);
    }
    let xml = String::from_utf8_lossy(body);
    let mut listed = Vec::new();
    for part in xml.split("<Part>").skip(1) {
        let number = element(part, "PartNumber").and_then(|n| n.trim().parse::<u32>().ok());
        let etag = element(part, "ETag").map(|e| e.replace("&quot;", "\"").trim().to_string());
        let (Some(number), Some(etag)) = (number, etag) else {
            return error(
                &mut st,
                StatusCode::BAD_REQUEST,
                "MalformedXML",
                "a Part without PartNumber or ETag",
            );
        };
        listed.push((
            number,
            etag,
            element(part, "ChecksumSHA256").map(str::to_string),
        ));
    }
    if listed.is_empty() {
        return error(&mut st, StatusCode::BAD_REQUEST, "MalformedXML", "no parts");
    }
    if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
        return error(
            &mut st,
            StatusCode::BAD_REQUEST,
            "InvalidPartOrder",
            "parts must ascend",
        );
    }
    let mut data = Vec::new();
    let (mut md5s, mut shas) = (Vec::new(), Vec::new());
    for (i, (number, etag, checksum)) in listed.iter().enumerate() {
        let Some((bytes, stored_etag, sha)) = upload.parts.get(number) else {
            let msg = format!("part {number} was not uploaded");
            return error(&mut st, StatusCode::BAD_REQUEST, "InvalidPart", &msg);
        };
        let etag = if etag.starts_with('"') {
            etag.clone()
        } else {
            format!("\"{etag}\"")
        };
        if &etag != stored_etag || checksum.as_ref().is_some_and(|c| c != sha) {
            let msg = format!("part {number}'s ETag or checksum does not match the uploaded part");
            return error(&mut st, StatusCode::BAD_REQUEST, "InvalidPart", &msg);
        }
        if i + 1 < listed.len() && bytes.len() < MIN_PART {
            let msg = format!(
                "part {number} is {} bytes, under the 5 MiB minimum",
                bytes.len()
            );
            return error(&mut st, StatusCode::BAD_REQUEST, "EntityTooSmall", &msg);
        }
        data.extend_from_slice(bytes);
        md5s.extend_from_slice(&md5::Md5::digest(bytes));
        use base64::Engine;
        shas.extend(
            base64::engine::general_purpose::STANDARD
                .decode(sha)
                .unwrap_or_default(),
        );
    }
    let n = listed.len();
    let etag = format!("\"{}-{n}\"", hex(&md5::Md5::digest(&md5s)));
    let checksum = format!("{}-{n}", b64(&sha2::Sha256::digest(&shas)));
    let metadata = upload.metadata.clone();
    st.uploads.remove(id);
    let Some(objects) = st.buckets.get_mut(&bucket) else {
        return error(&mut st, StatusCode::NOT_FOUND, "NoSuchBucket", &bucket);
    };
    objects.insert(
        key.clone(),
        Object {
            data: Bytes::from(data),
            etag: etag.clone(),
            checksum_sha256: Some(checksum.clone()),
            metadata,
        },
    );
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key><ETag>{}</ETag><ChecksumSHA256>{checksum}</ChecksumSHA256></CompleteMultipartUploadResult>",
        etag.replace('"', "&quot;")
    );
    (StatusCode::OK, [("content-type", "application/xml")], body).into_response()
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` over an object of `len` bytes.
fn range(spec: &str, len: u64) -> Option<std::ops::Range<u64>> {
    let (a, b) = spec.strip_prefix("bytes=")?.split_once('-')?;
    let r = match (a.trim(), b.trim()) {
        ("", n) => len.saturating_sub(n.parse().ok()?)..len,
        (a, "") => a.parse().ok()?..len,
        (a, b) => a.parse().ok()?..(b.parse::<u64>().ok()?.saturating_add(1)).min(len),
    };
    (r.start < r.end && r.start < len).then_some(r)
}

fn get(s: &Shared, bucket: &str, key: &str, headers: &HeaderMap, head_only: bool) -> Response {
    let mut st = lock(s);
    let Some(objects) = st.buckets.get(bucket) else {
        return error(&mut st, StatusCode::NOT_FOUND, "NoSuchBucket", bucket);
    };
    let Some(o) = objects.get(key) else {
        return if head_only {
            StatusCode::NOT_FOUND.into_response()
        } else {
            error(&mut st, StatusCode::NOT_FOUND, "NoSuchKey", key)
        };
    };
    let (data, etag, checksum) = (o.data.clone(), o.etag.clone(), o.checksum_sha256.clone());
    let meta = o.metadata.clone();
    if let Some(want) = headers.get("if-match").and_then(|v| v.to_str().ok()) {
        if want != etag && want != "*" {
            return error(
                &mut st,
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "If-Match",
            );
        }
    }
    let len = data.len() as u64;
    let mut h = HeaderMap::new();
    let mut set = |k: &str, v: String| {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k),
            axum::http::HeaderValue::try_from(v),
        ) {
            h.insert(k, v);
        }
    };
    set("etag", etag);
    set("accept-ranges", "bytes".into());
    set("last-modified", "Sat, 05 Dec 2026 00:00:00 GMT".into());
    // The object's checksum is sent when asked for (x-amz-checksum-mode: ENABLED),
    // and never with a range, which it does not describe.
    let asked = headers
        .get("x-amz-checksum-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enabled"));
    if let Some(c) = checksum.filter(|_| asked && !headers.contains_key("range")) {
        set("x-amz-checksum-sha256", c);
    }
    for (k, v) in meta {
        set(&format!("x-amz-meta-{k}"), v);
    }
    if head_only {
        set("content-length", len.to_string());
        return (StatusCode::OK, h).into_response();
    }
    let wanted = headers.get("range").and_then(|v| v.to_str().ok());
    let (status, slice) = match wanted {
        None => (StatusCode::OK, data),
        Some(spec) => match range(spec, len) {
            Some(r) => {
                set(
                    "content-range",
                    format!("bytes {}-{}/{len}", r.start, r.end - 1),
                );
                (
                    StatusCode::PARTIAL_CONTENT,
                    data.slice(r.start as usize..r.end as usize),
                )
            }
            None => {
                return error(
                    &mut st,
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    spec,
                )
            }
        },
    };
    st.stats.gets += 1;
    st.stats.bytes_sent += slice.len() as u64;
    (status, h, slice).into_response()
}

/// A running S3 server.
pub struct S3Server {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    state: Shared,
}

impl S3Server {
    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it was asked so far.
    pub fn stats(&self) -> S3Stats {
        lock(&self.state).stats.clone()
    }
}

/// Starts the S3 server on 127.0.0.1 (`port` 0: a free one), in the current runtime.
pub async fn start_s3_on(port: u16) -> std::io::Result<S3Server> {
    use axum::routing::any;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let state: Shared = Arc::new(Mutex::new(S3State::default()));
    let app = axum::Router::new()
        .route("/{bucket}", any(bucket))
        .route("/{bucket}/", any(bucket))
        .route("/{bucket}/{*key}", any(object))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(S3Server { addr, state })
}
