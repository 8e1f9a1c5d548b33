//! PutSnapshotBlock without the SDK's per-call orchestration.
//!
//! An upload makes one PutSnapshotBlock call per 512 KiB block, thousands a minute.
//! Through the SDK each call builds a config bag, runs a dozen interceptors, resolves
//! the endpoint and identity and wraps the body; measured on a 2 GiB upload that was
//! about a second of CPU, a fifth of the whole upload. This module sends the same
//! request with the same parts the SDK uses, and nothing else:
//!
//! - the endpoint and the HTTP connector (TLS, connection pool, proxy, connect
//!   timeout) are the ones the SDK itself used for an earlier EBS call, recorded by
//!   [`TransportRecorder`], so endpoint rules, `AWS_ENDPOINT_URL(_EBS)` and the TLS
//!   setup are never re-implemented here;
//! - the request is signed with `aws-sigv4` with the settings the SDK's generated
//!   code uses for this operation (SigV4, service `ebs`, `x-amz-content-sha256:
//!   UNSIGNED-PAYLOAD`), with credentials from the same provider chain, cached until
//!   shortly before they expire;
//! - errors are classified from the restJson1 error type and the HTTP status, like
//!   the SDK path's.
//!
//! Until an EBS call has gone through the SDK there is nothing recorded, and
//! [`crate::SdkEbs`] sends PutSnapshotBlock through the SDK instead.

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use aws_smithy_types::config_bag::ConfigBag;
use ebs::{ApiError, ApiResult, ErrorKind};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// Credentials this close to expiring are fetched again before signing.
const CREDENTIALS_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The most of an error body that is parsed: EBS error documents are a few hundred
/// bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where EBS requests go and how they get there, as the SDK resolved it.
#[derive(Debug)]
pub(crate) struct Transport {
    /// Everything of the request URI before `/snapshots`: scheme, host, port and
    /// any path prefix of a custom endpoint.
    prefix: String,
    /// The SDK's connector for this client's settings.
    connector: SharedHttpConnector,
}

/// An interceptor on the EBS client that records the first request's [`Transport`].
#[derive(Debug, Default, Clone)]
pub(crate) struct TransportRecorder {
    slot: Arc<OnceLock<Transport>>,
}

impl TransportRecorder {
    /// The recorded transport, once an EBS call has been sent.
    pub(crate) fn get(&self) -> Option<&Transport> {
        self.slot.get()
    }
}

/// The connector settings the SDK derives from our timeout configuration.
fn connector_settings() -> HttpConnectorSettings {
    HttpConnectorSettings::builder()
        .connect_timeout(crate::CONNECT_TIMEOUT)
        .build()
}

impl Intercept for TransportRecorder {
    fn name(&self) -> &'static str {
        "amiforge::TransportRecorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.slot.get().is_some() {
            return Ok(());
        }
        let uri = context.request().uri();
        // Every EBS direct operation's path starts with /snapshots.
        let (Some(at), Some(client)) = (uri.find("/snapshots"), runtime_components.http_client())
        else {
            return Ok(());
        };
        let connector = client.http_connector(&connector_settings(), runtime_components);
        let _ = self.slot.set(Transport {
            prefix: uri[..at].to_string(),
            connector,
        });
        Ok(())
    }
}

/// Signs and sends PutSnapshotBlock requests.
#[derive(Debug)]
pub(crate) struct DirectPut {
    credentials: Option<SharedCredentialsProvider>,
    region: String,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

/// One block to put.
pub(crate) struct BlockPut<'a> {
    pub snapshot_id: &'a str,
    pub index: u64,
    pub data: bytes::Bytes,
    pub checksum_b64: &'a str,
    pub progress: Option<u8>,
}

impl DirectPut {
    pub(crate) fn new(credentials: Option<SharedCredentialsProvider>, region: String) -> Self {
        Self {
            credentials,
            region,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// True when a snapshot id can go into the path as it is (the SDK would
    /// percent-encode anything else; ids are `snap-` and hex digits).
    pub(crate) fn path_safe(snapshot_id: &str) -> bool {
        !snapshot_id.is_empty()
            && snapshot_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    async fn credentials(&self) -> ApiResult<Credentials> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c.expiry().is_none_or(|at| {
                at.duration_since(SystemTime::now())
                    .is_ok_and(|left| left > CREDENTIALS_REFRESH_MARGIN)
            });
            if fresh {
                return Ok(c.clone());
            }
        }
        let provider = self.credentials.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorKind::AccessDenied,
                None,
                "no credentials provider is configured",
            )
        })?;
        let c = provider.provide_credentials().await.map_err(|e| {
            ApiError::new(
                ErrorKind::AccessDenied,
                None,
                format!("loading credentials: {e}"),
            )
        })?;
        *cached = Some(c.clone());
        Ok(c)
    }

    /// Sends one block through `transport`.
    pub(crate) async fn put(&self, transport: &Transport, block: BlockPut<'_>) -> ApiResult<()> {
        let uri = format!(
            "{}/snapshots/{}/blocks/{}",
            transport.prefix, block.snapshot_id, block.index
        );
        let mut builder = http::Request::builder()
            .method("PUT")
            .uri(&uri)
            .header("content-type", "application/octet-stream")
            .header("x-amz-data-length", block.data.len())
            .header("x-amz-checksum", block.checksum_b64)
            .header("x-amz-checksum-algorithm", "SHA256")
            .header(
                "user-agent",
                concat!("amiforge/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(p) = block.progress {
            builder = builder.header("x-amz-progress", u32::from(p));
        }
        let mut request = builder
            .body(SdkBody::from(block.data))
            .map_err(|e| invalid(format!("building the request: {e}")))?;
        self.sign(&mut request).await?;
        let request = HttpRequest::try_from(request)
            .map_err(|e| invalid(format!("building the request: {e}")))?;

        let response = transport
            .connector
            .call(request)
            .await
            .map_err(connector_error)?;
        let status = response.status().as_u16();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .map(str::to_string);
        let body = crate::read_body(ByteStream::new(response.into_body()), "the response").await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(service_error(status, error_type.as_deref(), &body))
    }

    async fn sign(&self, request: &mut http::Request<SdkBody>) -> ApiResult<()> {
        let identity = self.credentials().await?.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ebs")
            .time(SystemTime::now())
            .settings(signing_settings())
            .build()
            .map_err(|e| invalid(format!("signing: {e}")))?
            .into();
        let headers = request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable = SignableRequest::new(
            request.method().as_str(),
            request.uri().to_string(),
            headers,
            // The body is not part of the signature; `x-amz-content-sha256:
            // UNSIGNED-PAYLOAD` tells the service so.
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| invalid(format!("signing: {e}")))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| invalid(format!("signing: {e}")))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

/// The settings the SDK signs PutSnapshotBlock with (its generated operation sets
/// `double_uri_encode`, `normalize_uri_path` and `content_sha256_header`). The last
/// one adds a signed `x-amz-content-sha256` header: without it the service hashes the
/// body itself and the `UNSIGNED-PAYLOAD` signature does not match.
fn signing_settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Double;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorKind::Other, None, message)
}

fn connector_error(e: ConnectorError) -> ApiError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_user() {
        ErrorKind::Other
    } else {
        ErrorKind::Network
    };
    ApiError::new(kind, None, crate::error_chain(&e))
}

/// A restJson1 error: the type from `x-amzn-ErrorType` or the body's `__type`/`code`,
/// trimmed of any namespace (`aws.ebs#`) and URL suffix (`:http://...`).
fn service_error(status: u16, header_type: Option<&str>, body: &[u8]) -> ApiError {
    let doc: serde_json::Value =
        serde_json::from_slice(&body[..body.len().min(MAX_ERROR_BODY)]).unwrap_or_default();
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| doc.get(n).and_then(|v| v.as_str()).map(str::to_string))
    };
    let code = header_type
        .map(str::to_string)
        .or_else(|| field(&["__type", "code", "Code"]))
        .map(|t| {
            let t = t.split(':').next().unwrap_or(&t);
            t.rsplit('#').next().unwrap_or(t).to_string()
        })
        .filter(|t| !t.is_empty());
    let message = field(&["message", "Message"]).unwrap_or_else(|| format!("HTTP {status}"));
    ApiError::new(
        crate::classify_code(code.as_deref(), Some(status)),
        code.as_deref(),
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_type_comes_from_the_header_first_then_the_body() {
        let e = service_error(
            400,
            Some("RequestThrottledException:http://internal.amazon.com/coral/com.amazon.coral.service/"),
            br#"{"message":"slow down","__type":"ValidationException"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert_eq!(e.code.as_deref(), Some("RequestThrottledException"));
        assert_eq!(e.message, "slow down");

        let e = service_error(
            403,
            None,
            br#"{"__type":"aws.ebs#AccessDeniedException","Message":"no"}"#,
        );
        assert_eq!(e.kind, ErrorKind::AccessDenied);
        assert_eq!(e.code.as_deref(), Some("AccessDeniedException"));
        assert_eq!(e.message, "no");
    }

    #[test]
    fn a_bare_status_is_classified_by_the_status() {
        let e = service_error(503, None, b"<html>busy</html>");
        assert_eq!(e.kind, ErrorKind::Server);
        assert_eq!(e.message, "HTTP 503");
        assert_eq!(service_error(404, None, b"").kind, ErrorKind::NotFound);
    }

    #[test]
    fn only_plain_snapshot_ids_go_into_the_path_unencoded() {
        assert!(DirectPut::path_safe("snap-0123456789abcdef0"));
        assert!(!DirectPut::path_safe("snap/../x"));
        assert!(!DirectPut::path_safe("snap 1"));
        assert!(!DirectPut::path_safe(""));
    }
}
