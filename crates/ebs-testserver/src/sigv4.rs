//! SigV4 checking, as AWS does it and moto does not.
//!
//! Every request must carry an `AWS4-HMAC-SHA256` Authorization header whose
//! signature matches the one the server computes with the configured secret key over
//! the headers the client says it signed, the method, the path and query, the
//! credential scope and `x-amz-date` (at most 15 minutes off, as AWS allows). The
//! payload hash is what `x-amz-content-sha256` declares (`UNSIGNED-PAYLOAD`, as the
//! SDK sends for PutSnapshotBlock, or the body's SHA-256), and the body's SHA-256
//! when that header is absent: a request signed as unsigned without saying so is
//! refused, as AWS refuses it.
//!
//! The server recomputes with `aws-sigv4`, the signer the SDK uses, so this catches a
//! request that was changed after signing or signed with the wrong scope, headers or
//! key; it does not check `aws-sigv4` against itself.

use axum::http::HeaderMap;
use std::time::{Duration, SystemTime};

/// The declared payload hash of a request whose body is not signed.
const UNSIGNED: &str = "UNSIGNED-PAYLOAD";

/// How far x-amz-date may be from the server's clock.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request's signature was refused.
#[derive(Debug)]
pub(crate) struct Refused(pub String);

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
/// Signature=...`.
struct Authorization<'a> {
    access_key: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, Refused> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| Refused("the Authorization header is not AWS4-HMAC-SHA256".into()))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |what: &str| Refused(format!("the Authorization header has no {what}"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, _date, region, service, "aws4_request"] = scope[..] else {
        return Err(Refused(format!(
            "malformed credential scope {credential:?}"
        )));
    };
    Ok(Authorization {
        access_key,
        region,
        service,
        signed_headers: signed
            .ok_or_else(|| missing("SignedHeaders"))?
            .split(';')
            .collect(),
        signature: signature.ok_or_else(|| missing("Signature"))?,
    })
}

/// `20261127T133700Z` as a time.
fn parse_amz_date(value: &str) -> Result<SystemTime, Refused> {
    let bad = || Refused(format!("x-amz-date {value:?} is not YYYYMMDDTHHMMSSZ"));
    if value.len() != 16 || !value.is_ascii() {
        return Err(bad());
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &value[0..4],
        &value[4..6],
        &value[6..8],
        &value[9..11],
        &value[11..13],
        &value[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).map_err(|_| bad())
}

/// Checks one request's signature against `secret_key`.
pub(crate) fn check(
    secret_key: &str,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refused> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use sha2::Digest;

    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = parse_authorization(
        header("authorization").ok_or_else(|| Refused("the request is not signed".into()))?,
    )?;
    let time =
        parse_amz_date(header("x-amz-date").ok_or_else(|| Refused("no x-amz-date".into()))?)?;
    let now = SystemTime::now();
    let skew = now
        .duration_since(time)
        .or_else(|_| time.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_CLOCK_SKEW {
        return Err(Refused(format!(
            "x-amz-date is {} s from the server's clock",
            skew.as_secs()
        )));
    }
    let mut signed = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let value =
            header(name).ok_or_else(|| Refused(format!("signed header {name} is missing")))?;
        signed.push((*name, value));
    }
    let host = header("host").unwrap_or("localhost");
    let uri = format!("http://{host}{path_and_query}");
    let identity = aws_credential_types::Credentials::new(
        auth.access_key,
        secret_key,
        None,
        None,
        "ebs-testserver",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(auth.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| Refused(format!("signing parameters: {e}")))?
        .into();
    // As AWS does: the payload hash is the one x-amz-content-sha256 declares
    // (UNSIGNED-PAYLOAD included), which must then be the body's; without that header
    // it is the body's SHA-256.
    let body_hash = hex(&sha2::Sha256::digest(body));
    let payload = match header("x-amz-content-sha256") {
        Some(UNSIGNED) => SignableBody::UnsignedPayload,
        Some(declared) if declared == body_hash => SignableBody::Precomputed(body_hash),
        Some(declared) => {
            return Err(Refused(format!(
                "x-amz-content-sha256 {declared} is not the SHA-256 of the body"
            )))
        }
        None => SignableBody::Precomputed(body_hash),
    };
    let request = SignableRequest::new(method, uri.as_str(), signed.iter().copied(), payload)
        .map_err(|e| Refused(format!("unsignable request: {e}")))?;
    let (_, signature) = sign(request, &params)
        .map_err(|e| Refused(format!("signing: {e}")))?
        .into_parts();
    if signature == auth.signature {
        return Ok(());
    }
    Err(Refused(format!(
        "the signature does not match what {} signs for {method} {path_and_query} with headers {}",
        auth.access_key,
        auth.signed_headers.join(";")
    )))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorization_header_is_split_into_its_scope() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20261127/us-east-1/ebs/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .unwrap();
        assert_eq!(
            (a.access_key, a.region, a.service, a.signature),
            ("AKID", "us-east-1", "ebs", "abc")
        );
        assert_eq!(a.signed_headers, ["host", "x-amz-date"]);
        assert!(parse_authorization("Basic dXNlcg==").is_err());
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=AKID/x, Signature=a").is_err());
    }

    /// Signs a PutSnapshotBlock-like request as a client would; returns its headers.
    fn signed_headers(secret: &str, path: &str, body: SignableBodyKind) -> HeaderMap {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let identity =
            aws_credential_types::Credentials::new("AKID", secret, None, None, "test").into();
        let mut settings = SigningSettings::default();
        if matches!(body, SignableBodyKind::Unsigned) {
            // As the SDK signs PutSnapshotBlock: x-amz-content-sha256 says so.
            settings.payload_checksum_kind =
                aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
        }
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("ebs")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:9".parse().unwrap());
        headers.insert("x-amz-checksum", "abc=".parse().unwrap());
        let hash;
        let body = match body {
            SignableBodyKind::Unsigned | SignableBodyKind::UnsignedUndeclared => {
                SignableBody::UnsignedPayload
            }
            SignableBodyKind::Hashed(b) => {
                use sha2::Digest;
                hash = hex(&sha2::Sha256::digest(b));
                SignableBody::Precomputed(hash)
            }
        };
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        let uri = format!("http://127.0.0.1:9{path}");
        let request = SignableRequest::new("PUT", uri, pairs.into_iter(), body).unwrap();
        let (instructions, _) = sign(request, &params).unwrap().into_parts();
        for (name, value) in instructions.headers() {
            headers.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    enum SignableBodyKind {
        /// Not signed, and `x-amz-content-sha256: UNSIGNED-PAYLOAD` says so.
        Unsigned,
        /// Not signed, without saying so.
        UnsignedUndeclared,
        Hashed(&'static [u8]),
    }

    #[test]
    fn a_correctly_signed_request_passes_and_any_change_to_it_is_refused() {
        let path = "/snapshots/snap-1/blocks/7";
        let h = signed_headers("testing", path, SignableBodyKind::Unsigned);
        assert!(check("testing", "PUT", path, &h, b"any body").is_ok());
        assert!(check("other-secret", "PUT", path, &h, b"").is_err());
        assert!(check("testing", "POST", path, &h, b"").is_err());
        assert!(check("testing", "PUT", "/snapshots/snap-1/blocks/8", &h, b"").is_err());
        let mut changed = h.clone();
        changed.insert("x-amz-checksum", "abd=".parse().unwrap());
        assert!(check("testing", "PUT", path, &changed, b"").is_err());
        let mut unsigned = h;
        unsigned.remove("authorization");
        assert!(check("testing", "PUT", path, &unsigned, b"").is_err());
    }

    #[test]
    fn an_unsigned_body_must_be_declared_unsigned() {
        let path = "/snapshots/snap-1/blocks/7";
        let h = signed_headers("testing", path, SignableBodyKind::UnsignedUndeclared);
        assert!(check("testing", "PUT", path, &h, b"block").is_err());
    }

    #[test]
    fn a_body_signed_by_its_hash_must_be_that_body() {
        let path = "/snapshots";
        let h = signed_headers(
            "testing",
            path,
            SignableBodyKind::Hashed(b"{\"VolumeSize\":1}"),
        );
        assert!(check("testing", "PUT", path, &h, b"{\"VolumeSize\":1}").is_ok());
        assert!(check("testing", "PUT", path, &h, b"{\"VolumeSize\":2}").is_err());
    }

    #[test]
    fn amz_dates_parse_and_garbage_does_not() {
        let t = parse_amz_date("20261127T133700Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_795_786_620
        );
        assert!(parse_amz_date("2026-11-27").is_err());
        assert!(parse_amz_date("20261127T1337ééZ").is_err());
    }
}
