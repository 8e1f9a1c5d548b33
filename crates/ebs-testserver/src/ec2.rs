//! The EC2 query-protocol calls the uploader needs: DescribeSnapshots and
//! DeleteSnapshot.

use crate::{lock, Shared, Status};
use axum::body::Bytes;
use axum::extract::State as Axum;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

pub(crate) fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pending | Status::Sealing(_) => "pending",
        Status::Completed => "completed",
        Status::Error => "error",
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ec2_error(code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>req-1</RequestID></Response>",
        xml_escape(message)
    );
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "text/xml")],
        body,
    )
        .into_response()
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let s = s.replace('+', " ");
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (decode(k), decode(v))))
        .collect()
}

pub(crate) async fn query(Axum(s): Axum<Shared>, body: Bytes) -> Response {
    let form = parse_form(&body);
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let action = get("Action").unwrap_or_default();
    let mut st = lock(&s);
    *st.stats.requests.entry(action.clone()).or_default() += 1;
    match action.as_str() {
        "DescribeSnapshots" => {
            let ids: Vec<String> = form
                .iter()
                .filter(|(k, _)| k.starts_with("SnapshotId."))
                .map(|(_, v)| v.clone())
                .collect();
            let mut items = String::new();
            for id in &ids {
                st.tick(id);
                let Some(snap) = st.snapshots.get(id) else {
                    return ec2_error(
                        "InvalidSnapshot.NotFound",
                        &format!("The snapshot '{id}' does not exist."),
                    );
                };
                let status = status_name(snap.status);
                let progress = if status == "completed" { "100%" } else { "0%" };
                items.push_str(&format!(
                    "<item><snapshotId>{id}</snapshotId><volumeId>vol-ffffffff</volumeId><status>{status}</status>\
                     <startTime>2026-01-01T00:00:00.000Z</startTime><progress>{progress}</progress><ownerId>111122223333</ownerId>\
                     <volumeSize>{}</volumeSize><description>{}</description><encrypted>{}</encrypted></item>",
                    snap.volume_size_gib,
                    xml_escape(&snap.description),
                    snap.encrypted
                ));
            }
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSnapshotsResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><snapshotSet>{items}</snapshotSet></DescribeSnapshotsResponse>"
            );
            (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
        }
        "DeleteSnapshot" => {
            let id = get("SnapshotId").unwrap_or_default();
            if st.snapshots.remove(&id).is_none() {
                return ec2_error(
                    "InvalidSnapshot.NotFound",
                    &format!("The snapshot '{id}' does not exist."),
                );
            }
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteSnapshotResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><return>true</return></DeleteSnapshotResponse>");
            (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
        }
        other => ec2_error(
            "InvalidAction",
            &format!("The action {other} is not valid for this web service."),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_values_are_percent_decoded() {
        let f = super::parse_form(b"Action=DescribeSnapshots&SnapshotId.1=snap-1%2Fx&A=b+c");
        assert_eq!(f[1], ("SnapshotId.1".to_string(), "snap-1/x".to_string()));
        assert_eq!(f[2].1, "b c");
    }
}
