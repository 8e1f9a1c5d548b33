//! The EBS direct operations (restJson1), strictly.

use crate::{lock, Shared, Snapshot, State, Status, BLOCKS_PER_GIB, BLOCK_SIZE};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State as Axum};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use sha2::Digest;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// An error in the shape AWS sends: status, x-amzn-ErrorType, {"Message","Reason"}.
pub(crate) fn error(
    status: StatusCode,
    code: &str,
    reason: Option<&str>,
    message: &str,
) -> Response {
    let mut body = serde_json::json!({ "Message": message, "message": message });
    if let Some(r) = reason {
        body["Reason"] = r.into();
    }
    (
        status,
        [
            ("x-amzn-ErrorType", code),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn validation(st: &mut State, reason: &str, message: &str) -> Response {
    *st.stats.rejected.entry(reason.to_string()).or_default() += 1;
    error(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        Some(reason),
        message,
    )
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        Some("SNAPSHOT_NOT_FOUND"),
        &format!("The snapshot '{id}' does not exist."),
    )
}

fn count(st: &mut State, op: &str) {
    *st.stats.requests.entry(op.to_string()).or_default() += 1;
}

/// AccessDenied, or one of the transient faults, or nothing.
enum Fault {
    None,
    Now(Response),
    Slow(Duration),
    Reset,
}

fn roll_fault(st: &mut State, data_plane: bool) -> Fault {
    let f = st.config.faults.clone();
    if f.access_denied && data_plane {
        st.stats.access_denied += 1;
        return Fault::Now(error(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            Some("UNAUTHORIZED_ACCOUNT"),
            "User is not authorized to perform this operation",
        ));
    }
    if !data_plane || f.transient_rate <= 0.0 || st.rng.f64() >= f.transient_rate {
        if data_plane && f.put_delay_ms > 0 {
            return Fault::Slow(Duration::from_millis(f.put_delay_ms));
        }
        return Fault::None;
    }
    st.stats.faults_injected += 1;
    match st.rng.u8(..4) {
        0 => Fault::Now(error(
            StatusCode::BAD_REQUEST,
            "RequestThrottledException",
            Some("ACCOUNT_THROTTLED"),
            "The request was throttled",
        )),
        1 => Fault::Now(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            None,
            "An internal error occurred",
        )),
        2 => Fault::Reset,
        _ => Fault::Slow(Duration::from_millis(f.slow_ms)),
    }
}

/// A response whose body fails mid-way: the client sees the connection drop.
pub(crate) fn reset() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("injected connection reset"))
    });
    Response::builder()
        .status(StatusCode::CREATED)
        .header("content-length", "1000")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn apply(fault: Fault) -> Option<Response> {
    match fault {
        Fault::None => None,
        Fault::Now(r) => Some(r),
        Fault::Reset => Some(reset()),
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Tag {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StartBody {
    volume_size: Option<i64>,
    parent_snapshot_id: Option<String>,
    tags: Option<Vec<Tag>>,
    description: Option<String>,
    client_token: Option<String>,
    encrypted: Option<bool>,
    kms_key_arn: Option<String>,
    timeout: Option<i64>,
}

pub(crate) async fn start_snapshot(Axum(s): Axum<Shared>, body: Bytes) -> Response {
    let fault = {
        let mut st = lock(&s);
        count(&mut st, "StartSnapshot");
        roll_fault(&mut st, false)
    };
    if let Some(r) = apply(fault).await {
        return r;
    }
    let mut st = lock(&s);
    let Ok(b) = serde_json::from_slice::<StartBody>(&body) else {
        return validation(&mut st, "INVALID_PARAMETER", "malformed StartSnapshot body");
    };
    let volume = b.volume_size.unwrap_or(0);
    if !(1..=65_536).contains(&volume) {
        return validation(
            &mut st,
            "INVALID_VOLUME_SIZE",
            &format!("VolumeSize {volume} is not in 1..=65536"),
        );
    }
    let timeout = b.timeout.unwrap_or(60);
    if !(10..=4320).contains(&timeout) {
        return validation(
            &mut st,
            "INVALID_PARAMETER",
            &format!("Timeout {timeout} is not in 10..=4320 minutes"),
        );
    }
    let encrypted = b.encrypted.unwrap_or(false);
    if encrypted && b.parent_snapshot_id.is_some() {
        return validation(
            &mut st,
            "INVALID_PARAMETER",
            "ParentSnapshotId cannot be combined with Encrypted",
        );
    }
    if b.description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 255)
    {
        return validation(
            &mut st,
            "INVALID_PARAMETER",
            "Description is longer than 255 characters",
        );
    }
    let tags: Vec<(String, String)> = b
        .tags
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.value))
        .collect();
    if tags.len() > 50 {
        return validation(&mut st, "INVALID_PARAMETER", "more than 50 tags");
    }
    if let Some(parent) = &b.parent_snapshot_id {
        st.tick(parent);
        match st.snapshots.get(parent) {
            None => return not_found(parent),
            Some(p) if p.status != Status::Completed => {
                return validation(
                    &mut st,
                    "INVALID_PARENT_SNAPSHOT",
                    "the parent snapshot is not completed",
                )
            }
            Some(p) if p.volume_size_gib > volume as u64 => {
                return validation(
                    &mut st,
                    "INVALID_VOLUME_SIZE",
                    "VolumeSize is smaller than the parent's",
                )
            }
            _ => {}
        }
    }
    let fingerprint = format!(
        "{volume}|{:?}|{encrypted}|{:?}|{:?}|{tags:?}|{timeout}",
        b.parent_snapshot_id, b.kms_key_arn, b.description
    );
    if let Some(token) = &b.client_token {
        if let Some(existing) = st.client_tokens.get(token).cloned() {
            let same = st
                .snapshots
                .get(&existing)
                .is_some_and(|s| s.fingerprint == fingerprint);
            if !same {
                return error(
                    StatusCode::CONFLICT,
                    "ConflictException",
                    None,
                    "The ClientToken was used with other parameters",
                );
            }
            let snap = &st.snapshots[&existing];
            return (StatusCode::CREATED, axum::Json(describe_json(snap))).into_response();
        }
    }
    let id = format!("snap-{:017x}", st.next_id);
    st.next_id += 1;
    if let Some(token) = b.client_token {
        st.client_tokens.insert(token, id.clone());
    }
    let snap = Snapshot {
        id: id.clone(),
        volume_size_gib: volume as u64,
        parent: b.parent_snapshot_id,
        encrypted,
        description: b.description.unwrap_or_default(),
        tags,
        fingerprint,
        timeout_minutes: timeout as u64,
        last_activity: Instant::now(),
        blocks: HashMap::new(),
        status: Status::Pending,
        puts_refused_as_not_found: 0,
    };
    let json = describe_json(&snap);
    st.snapshots.insert(id, snap);
    (StatusCode::CREATED, axum::Json(json)).into_response()
}

fn describe_json(s: &Snapshot) -> serde_json::Value {
    serde_json::json!({
        "SnapshotId": s.id,
        "OwnerId": "111122223333",
        "Status": "pending",
        "StartTime": 1.7e9,
        "VolumeSize": s.volume_size_gib,
        "BlockSize": BLOCK_SIZE,
        "ParentSnapshotId": s.parent,
        "Description": s.description,
        "Tags": s.tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
    })
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) async fn put_block(
    Axum(s): Axum<Shared>,
    Path((id, index)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = {
        let mut st = lock(&s);
        count(&mut st, "PutSnapshotBlock");
        roll_fault(&mut st, true)
    };
    if let Some(r) = apply(fault).await {
        return r;
    }
    // Hash outside the lock: this is the server's hot path.
    let digest: [u8; 32] = sha2::Sha256::digest(&body).into();
    let mut st = lock(&s);
    st.tick(&id);
    let not_found_first = st.config.faults.not_found_first;
    let Some(snap) = st.snapshots.get_mut(&id) else {
        return not_found(&id);
    };
    if snap.puts_refused_as_not_found < not_found_first {
        snap.puts_refused_as_not_found += 1;
        return not_found(&id);
    }
    if snap.status != Status::Pending {
        let msg = format!("snapshot {id} is not pending");
        return validation(&mut st, "INVALID_SNAPSHOT_STATE", &msg);
    }
    let volume_blocks = snap.volume_size_gib * BLOCKS_PER_GIB;
    let Ok(index) = index.parse::<u64>() else {
        return validation(&mut st, "INVALID_BLOCK", "bad block index");
    };
    if index >= volume_blocks {
        return validation(
            &mut st,
            "INVALID_BLOCK",
            &format!("block {index} is outside the {volume_blocks}-block volume"),
        );
    }
    if header(&headers, "x-amz-data-length") != Some(&BLOCK_SIZE.to_string())
        || body.len() != BLOCK_SIZE
    {
        let msg = format!(
            "block {index}: data length must be {BLOCK_SIZE}, got {} bytes",
            body.len()
        );
        return validation(&mut st, "INVALID_BLOCK", &msg);
    }
    if header(&headers, "x-amz-checksum-algorithm") != Some("SHA256") {
        return validation(
            &mut st,
            "INVALID_CHECKSUM",
            "x-amz-Checksum-Algorithm must be SHA256",
        );
    }
    let sent = header(&headers, "x-amz-checksum").unwrap_or("").to_string();
    let checksum = b64(&digest);
    if sent != checksum {
        let msg = format!("block {index}: checksum {sent} does not match the data ({checksum})");
        return validation(&mut st, "INVALID_CHECKSUM", &msg);
    }
    let Some(snap) = st.snapshots.get_mut(&id) else {
        return not_found(&id);
    };
    snap.blocks.insert(index, (body, digest));
    snap.last_activity = Instant::now();
    st.stats.blocks_stored += 1;
    (
        StatusCode::CREATED,
        [
            ("x-amz-Checksum", checksum.as_str()),
            ("x-amz-Checksum-Algorithm", "SHA256"),
        ],
        axum::Json(serde_json::json!({})),
    )
        .into_response()
}

pub(crate) async fn complete_snapshot(
    Axum(s): Axum<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut st = lock(&s);
    count(&mut st, "CompleteSnapshot");
    if let Fault::Now(r) = roll_fault(&mut st, false) {
        return r;
    }
    st.tick(&id);
    let Some(snap) = st.snapshots.get(&id) else {
        return not_found(&id);
    };
    if snap.status != Status::Pending {
        let msg = format!("snapshot {id} is not pending");
        return validation(&mut st, "INVALID_SNAPSHOT_STATE", &msg);
    }
    let written = snap.blocks.len() as u64;
    let Some(count) =
        header(&headers, "x-amz-changedblockscount").and_then(|c| c.parse::<u64>().ok())
    else {
        return validation(
            &mut st,
            "INVALID_PARAMETER",
            "x-amz-ChangedBlocksCount is required",
        );
    };
    if count != written {
        let msg = format!("ChangedBlocksCount {count} does not match the {written} blocks written");
        return validation(&mut st, "INVALID_CHANGED_BLOCKS_COUNT", &msg);
    }
    if let Some(sent) = header(&headers, "x-amz-checksum") {
        if header(&headers, "x-amz-checksum-aggregation-method") != Some("LINEAR")
            || header(&headers, "x-amz-checksum-algorithm") != Some("SHA256")
        {
            return validation(
                &mut st,
                "INVALID_CHECKSUM",
                "only SHA256 with the LINEAR aggregation is supported",
            );
        }
        let mut indices: Vec<&u64> = snap.blocks.keys().collect();
        indices.sort();
        let mut h = sha2::Sha256::new();
        for i in indices {
            h.update(snap.blocks[i].1);
        }
        let expected = b64(&h.finalize());
        if sent != expected {
            let msg = format!("aggregate checksum {sent} does not match {expected}");
            return validation(&mut st, "INVALID_CHECKSUM", &msg);
        }
    }
    let Some(snap) = st.snapshots.get_mut(&id) else {
        return not_found(&id);
    };
    snap.status = Status::Sealing(Instant::now());
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "Status": "pending" })),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "maxResults")]
    max_results: Option<usize>,
    #[serde(rename = "pageToken")]
    page_token: Option<String>,
    #[serde(rename = "startingBlockIndex")]
    starting_block_index: Option<u64>,
}

/// Why snapshot `id` cannot be read (it does not exist, or is not completed), as
/// the answer to send; `None` when it can.
fn unreadable(st: &mut State, id: &str) -> Option<Response> {
    match st.snapshots.get(id) {
        None => return Some(not_found(id)),
        Some(snap) if snap.status == Status::Completed => return None,
        Some(_) => {}
    }
    let msg = format!("snapshot {id} is not completed");
    Some(validation(st, "INVALID_SNAPSHOT_STATE", &msg))
}

/// One page of ascending block indices, as the List operations page them: from the
/// page token (the next index) or the starting index, MaxResults clamped to
/// 100..=10000; and the next page's token.
fn page_of(
    all: impl IntoIterator<Item = u64>,
    max_results: Option<usize>,
    page_token: Option<String>,
    starting_block_index: Option<u64>,
) -> (Vec<u64>, Option<String>) {
    let max = max_results.unwrap_or(10_000).clamp(100, 10_000);
    let from = page_token
        .and_then(|t| t.parse::<u64>().ok())
        .or(starting_block_index)
        .unwrap_or(0);
    let mut page: Vec<u64> = all
        .into_iter()
        .filter(|&i| i >= from)
        .take(max + 1)
        .collect();
    let next = (page.len() > max).then(|| page[max].to_string());
    page.truncate(max);
    (page, next)
}

/// The blocks a reader sees: written ones, and for encrypted snapshots every block
/// of the volume (unwritten ones hold garbage there, as on AWS).
fn readable(st: &State, id: &str) -> Vec<u64> {
    let snap = &st.snapshots[id];
    if snap.encrypted {
        return (0..snap.volume_size_gib * BLOCKS_PER_GIB).collect();
    }
    st.all_blocks(id).into_keys().collect()
}

pub(crate) async fn list_blocks(
    Axum(s): Axum<Shared>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let mut st = lock(&s);
    count(&mut st, "ListSnapshotBlocks");
    if let Fault::Now(r) = roll_fault(&mut st, false) {
        return r;
    }
    st.tick(&id);
    if let Some(refused) = unreadable(&mut st, &id) {
        return refused;
    }
    let snap = &st.snapshots[&id];
    let volume = snap.volume_size_gib;
    let (page, next) = page_of(
        readable(&st, &id),
        q.max_results,
        q.page_token,
        q.starting_block_index,
    );
    let blocks: Vec<serde_json::Value> = page
        .iter()
        .map(|i| serde_json::json!({ "BlockIndex": i, "BlockToken": format!("{id}:{i}") }))
        .collect();
    axum::Json(serde_json::json!({
        "Blocks": blocks,
        "NextToken": next,
        "VolumeSize": volume,
        "BlockSize": BLOCK_SIZE,
        "ExpiryTime": 1.9e9,
    }))
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ChangedQuery {
    #[serde(rename = "firstSnapshotId")]
    first_snapshot_id: Option<String>,
    #[serde(rename = "maxResults")]
    max_results: Option<usize>,
    #[serde(rename = "pageToken")]
    page_token: Option<String>,
    #[serde(rename = "startingBlockIndex")]
    starting_block_index: Option<u64>,
}

/// ListChangedBlocks as AWS documents it: the blocks written to `second` or to its
/// ancestors after `first`, which must be an earlier snapshot of the same lineage
/// (else ValidationException UNRELATED_SNAPSHOTS). A block counts as changed when it
/// was written, even with the same bytes: EBS tracks writes, not contents. With no
/// first snapshot, every block of `second` is listed.
pub(crate) async fn list_changed_blocks(
    Axum(s): Axum<Shared>,
    Path(second): Path<String>,
    Query(q): Query<ChangedQuery>,
) -> Response {
    let mut st = lock(&s);
    count(&mut st, "ListChangedBlocks");
    if let Fault::Now(r) = roll_fault(&mut st, false) {
        return r;
    }
    st.tick(&second);
    for id in std::iter::once(&second).chain(q.first_snapshot_id.as_ref()) {
        if let Some(refused) = unreadable(&mut st, id) {
            return refused;
        }
    }
    let changed: std::collections::BTreeSet<u64> = match &q.first_snapshot_id {
        None => st.all_blocks(&second).into_keys().collect(),
        Some(first) => {
            let mut written = std::collections::BTreeSet::new();
            let mut cur = Some(second.clone());
            let mut seen = Vec::new();
            loop {
                match cur {
                    Some(c) if &c == first => break,
                    Some(c) if !seen.contains(&c) => {
                        let snap = &st.snapshots[&c];
                        written.extend(snap.blocks.keys().copied());
                        cur = snap.parent.clone();
                        seen.push(c);
                    }
                    _ => {
                        let msg = format!(
                            "snapshot {first} is not an ancestor of {second}: the snapshots are unrelated"
                        );
                        return validation(&mut st, "UNRELATED_SNAPSHOTS", &msg);
                    }
                }
            }
            written
        }
    };
    let first_blocks = q
        .first_snapshot_id
        .as_ref()
        .map(|f| st.all_blocks(f))
        .unwrap_or_default();
    let volume = st.snapshots[&second].volume_size_gib;
    let (page, next) = page_of(changed, q.max_results, q.page_token, q.starting_block_index);
    let first = q.first_snapshot_id.unwrap_or_default();
    let blocks: Vec<serde_json::Value> = page
        .iter()
        .map(|i| {
            let mut b = serde_json::json!({
                "BlockIndex": i,
                "SecondBlockToken": format!("{second}:{i}"),
            });
            if first_blocks.contains_key(i) {
                b["FirstBlockToken"] = format!("{first}:{i}").into();
            }
            b
        })
        .collect();
    axum::Json(serde_json::json!({
        "ChangedBlocks": blocks,
        "NextToken": next,
        "VolumeSize": volume,
        "BlockSize": BLOCK_SIZE,
        "ExpiryTime": 1.9e9,
    }))
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct GetQuery {
    #[serde(rename = "blockToken")]
    block_token: Option<String>,
}

pub(crate) async fn get_block(
    Axum(s): Axum<Shared>,
    Path((id, index)): Path<(String, String)>,
    Query(q): Query<GetQuery>,
) -> Response {
    let fault = {
        let mut st = lock(&s);
        count(&mut st, "GetSnapshotBlock");
        roll_fault(&mut st, true)
    };
    if let Some(r) = apply(fault).await {
        return r;
    }
    let mut st = lock(&s);
    st.tick(&id);
    if let Some(refused) = unreadable(&mut st, &id) {
        return refused;
    }
    let encrypted = st.snapshots[&id].encrypted;
    let Ok(index) = index.parse::<u64>() else {
        return validation(&mut st, "INVALID_BLOCK", "bad block index");
    };
    if q.block_token.as_deref() != Some(format!("{id}:{index}").as_str()) {
        return validation(
            &mut st,
            "INVALID_BLOCK_TOKEN",
            "the block token does not match",
        );
    }
    let data = match st.all_blocks(&id).remove(&index) {
        Some((data, _)) => data,
        // An unwritten block of an encrypted snapshot: garbage, not zeros.
        None if encrypted => {
            let mut g = vec![0u8; BLOCK_SIZE];
            st.rng.fill(&mut g);
            Bytes::from(g)
        }
        None => {
            return validation(
                &mut st,
                "INVALID_BLOCK",
                &format!("block {index} was never written"),
            )
        }
    };
    let corrupt = st.config.faults.corrupt_block == Some(index);
    drop(st);
    let checksum = b64(&sha2::Sha256::digest(&data));
    let data = if corrupt {
        let mut d = data.to_vec();
        d[BLOCK_SIZE / 2] ^= 0x01;
        Bytes::from(d)
    } else {
        data
    };
    (
        StatusCode::OK,
        [
            ("x-amz-Data-Length", BLOCK_SIZE.to_string()),
            ("x-amz-Checksum", checksum),
            ("x-amz-Checksum-Algorithm", "SHA256".to_string()),
            ("content-type", "application/octet-stream".to_string()),
        ],
        data,
    )
        .into_response()
}
