//! AWS configuration and the SDK-backed [`ebs::EbsApi`].
//!
//! [`load`] builds the SDK configuration the standard way (credential chain, region,
//! profile, `AWS_ENDPOINT_URL` or an explicit endpoint), with the SDK's own retries
//! turned off: the `ebs` crate retries with its own classified policy, and stacking
//! the two is how uploads end up hanging for minutes.
//! [`SdkEbs`] makes exactly one attempt per call and classifies every failure. Its
//! PutSnapshotBlock skips the SDK's per-call machinery once the SDK has shown it the
//! way (see [`direct_put`]).

mod direct_put;
mod s3;

pub use aws_config::SdkConfig;
pub use aws_sdk_s3::Client as S3Client;
pub use s3::{
    client as s3_client, delete_object, parse_s3_url, put_bytes, put_file, ObjectTarget, S3Source,
    PART_SIZE, S3_CHUNK,
};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ebs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use ebs::{
    ApiError, ApiResult, BlockPage, EbsApi, ErrorKind, FetchedBlock, SnapshotState, StartRequest,
    StartedSnapshot,
};
use std::time::Duration;

/// Where and as whom to talk to AWS.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// Region; else AWS_REGION or the profile's.
    pub region: Option<String>,
    /// Named profile; else AWS_PROFILE or "default".
    pub profile: Option<String>,
    /// Endpoint override; else AWS_ENDPOINT_URL (read by the SDK).
    pub endpoint_url: Option<String>,
}

/// Configuration problems found before any call is made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No region anywhere.
    #[error("no AWS region: pass --region, set AWS_REGION, or set one in the profile")]
    NoRegion,
}

/// How long to wait for a TCP connection before calling the attempt failed.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads the SDK configuration with SDK retries disabled.
pub async fn load(opts: &AwsOptions) -> Result<SdkConfig, Error> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        );
    if let Some(r) = &opts.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(p) = &opts.profile {
        loader = loader.profile_name(p);
    }
    if let Some(e) = &opts.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(Error::NoRegion);
    }
    tracing::info!(region = ?config.region(), endpoint = ?config.endpoint_url(), "AWS configuration loaded");
    Ok(config)
}

/// EBS direct (and ec2:DescribeSnapshots) through the AWS SDK.
#[derive(Clone)]
pub struct SdkEbs {
    ebs: aws_sdk_ebs::Client,
    ec2: aws_sdk_ec2::Client,
    transport: direct_put::TransportRecorder,
    direct: std::sync::Arc<direct_put::DirectPut>,
}

impl SdkEbs {
    /// Clients from a loaded configuration.
    pub fn new(config: &SdkConfig) -> Self {
        let transport = direct_put::TransportRecorder::default();
        let ebs_config = aws_sdk_ebs::config::Builder::from(config)
            .interceptor(transport.clone())
            .build();
        let direct = direct_put::DirectPut::new(
            config.credentials_provider(),
            config.region().map(|r| r.to_string()).unwrap_or_default(),
        );
        Self {
            ebs: aws_sdk_ebs::Client::from_conf(ebs_config),
            ec2: aws_sdk_ec2::Client::new(config),
            transport,
            direct: std::sync::Arc::new(direct),
        }
    }
}

/// Classifies an error code (and HTTP status) the way the retry policy needs.
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    match code.unwrap_or("") {
        "RequestThrottledException"
        | "ConcurrentLimitExceededException"
        | "ThrottlingException"
        | "Throttling"
        | "RequestLimitExceeded"
        | "SlowDown"
        | "TooManyRequestsException" => ErrorKind::Throttled,
        "InternalServerException"
        | "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "Unavailable" => ErrorKind::Server,
        "AccessDeniedException"
        | "UnauthorizedOperation"
        | "AuthFailure"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "InvalidSignatureException"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "AccessDenied"
        | "InvalidAccessKeyId" => ErrorKind::AccessDenied,
        "ResourceNotFoundException"
        | "InvalidSnapshot.NotFound"
        | "NoSuchKey"
        | "NoSuchBucket"
        | "NoSuchVersion" => ErrorKind::NotFound,
        "ValidationException" | "InvalidParameterValue" | "InvalidParameter" => {
            ErrorKind::Validation
        }
        "ServiceQuotaExceededException" => ErrorKind::Quota,
        "ConflictException" => ErrorKind::Conflict,
        _ => match status {
            Some(429) => ErrorKind::Throttled,
            Some(s) if s >= 500 => ErrorKind::Server,
            Some(403) => ErrorKind::AccessDenied,
            Some(404) => ErrorKind::NotFound,
            Some(400..=499) => ErrorKind::Validation,
            _ => ErrorKind::Other,
        },
    }
}

/// A whole response body; a connection that breaks while it is read is a network
/// error (retryable).
pub(crate) async fn read_body(body: ByteStream, what: &str) -> ApiResult<bytes::Bytes> {
    body.collect()
        .await
        .map(|b| b.into_bytes())
        .map_err(|e| ApiError::new(ErrorKind::Network, None, format!("reading {what}: {e}")))
}

/// An error and its sources, joined by ": ".
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

pub(crate) fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    err: SdkError<E, aws_smithy_runtime_api_http::HttpResponse>,
) -> ApiError {
    let chain = error_chain(&err);
    match &err {
        SdkError::TimeoutError(_) => ApiError::new(ErrorKind::Timeout, None, chain),
        SdkError::DispatchFailure(d) => {
            let kind = if d.is_timeout() {
                ErrorKind::Timeout
            } else if chain.contains("credential") {
                ErrorKind::AccessDenied
            } else {
                ErrorKind::Network
            };
            ApiError::new(kind, None, chain)
        }
        SdkError::ResponseError(_) => ApiError::new(ErrorKind::Network, None, chain),
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code();
            let message = se
                .err()
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            ApiError::new(classify_code(code, Some(status)), code, message)
        }
        SdkError::ConstructionFailure(_) => {
            let kind = if chain.contains("credential") {
                ErrorKind::AccessDenied
            } else {
                ErrorKind::Other
            };
            ApiError::new(kind, None, chain)
        }
        _ => ApiError::new(ErrorKind::Other, None, chain),
    }
}

mod aws_smithy_runtime_api_http {
    pub use aws_sdk_ebs::config::http::HttpResponse;
}

fn i32_of(v: u64, what: &str) -> ApiResult<i32> {
    i32::try_from(v).map_err(|_| {
        ApiError::new(
            ErrorKind::Validation,
            None,
            format!("{what} {v} does not fit the API"),
        )
    })
}

impl EbsApi for SdkEbs {
    async fn start_snapshot(&self, req: StartRequest) -> ApiResult<StartedSnapshot> {
        let tags = req
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Vec<_>>();
        let out = self
            .ebs
            .start_snapshot()
            .volume_size(req.volume_size_gib as i64)
            .set_parent_snapshot_id(req.parent_snapshot_id)
            .encrypted(req.encrypted)
            .set_kms_key_arn(req.kms_key_arn)
            .set_description(req.description)
            .set_tags((!tags.is_empty()).then_some(tags))
            .client_token(req.client_token)
            .timeout(i32_of(u64::from(req.timeout_minutes), "timeout")?)
            .send()
            .await
            .map_err(classify)?;
        let snapshot_id = out
            .snapshot_id()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Other,
                    None,
                    "StartSnapshot returned no snapshot id",
                )
            })?
            .to_string();
        Ok(StartedSnapshot {
            snapshot_id,
            block_size: out.block_size().map(|b| b as u64),
        })
    }

    async fn put_block(
        &self,
        snapshot_id: &str,
        index: u64,
        data: bytes::Bytes,
        checksum_b64: &str,
        progress: Option<u8>,
    ) -> ApiResult<()> {
        let len = i32_of(data.len() as u64, "data length")?;
        if let Some(transport) = self.transport.get() {
            if direct_put::DirectPut::path_safe(snapshot_id) {
                let block = direct_put::BlockPut {
                    snapshot_id,
                    index,
                    data,
                    checksum_b64,
                    progress,
                };
                return self.direct.put(transport, block).await;
            }
        }
        self.ebs
            .put_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(i32_of(index, "block index")?)
            .block_data(ByteStream::from(data))
            .data_length(len)
            .checksum(checksum_b64)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .set_progress(progress.map(i32::from))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn complete_snapshot(
        &self,
        snapshot_id: &str,
        changed_blocks: u64,
        aggregate_b64: &str,
    ) -> ApiResult<()> {
        self.ebs
            .complete_snapshot()
            .snapshot_id(snapshot_id)
            .changed_blocks_count(i32_of(changed_blocks, "changed blocks count")?)
            .checksum(aggregate_b64)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn snapshot_state(&self, snapshot_id: &str) -> ApiResult<SnapshotState> {
        match self
            .ec2
            .describe_snapshots()
            .snapshot_ids(snapshot_id)
            .send()
            .await
        {
            Ok(out) => {
                use aws_sdk_ec2::types::SnapshotState as S;
                Ok(match out.snapshots().first().and_then(|s| s.state()) {
                    Some(S::Completed) => SnapshotState::Completed,
                    Some(S::Error) => SnapshotState::Error,
                    Some(_) => SnapshotState::Pending,
                    None => SnapshotState::NotFound,
                })
            }
            Err(e) => {
                let e = classify(e);
                if e.kind == ErrorKind::NotFound {
                    Ok(SnapshotState::NotFound)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn list_blocks(
        &self,
        snapshot_id: &str,
        next_token: Option<String>,
    ) -> ApiResult<BlockPage> {
        let out = self
            .ebs
            .list_snapshot_blocks()
            .snapshot_id(snapshot_id)
            .set_next_token(next_token)
            .max_results(10_000)
            .send()
            .await
            .map_err(classify)?;
        let mut blocks = Vec::with_capacity(out.blocks().len());
        for b in out.blocks() {
            let (Some(i), Some(t)) = (b.block_index(), b.block_token()) else {
                continue;
            };
            let index = u64::try_from(i).map_err(|_| {
                ApiError::new(ErrorKind::Other, None, format!("negative block index {i}"))
            })?;
            blocks.push((index, t.to_string()));
        }
        Ok(BlockPage {
            blocks,
            next_token: out.next_token().map(str::to_string),
            volume_size_gib: out.volume_size().and_then(|v| u64::try_from(v).ok()),
        })
    }

    async fn list_changed_blocks(
        &self,
        first: &str,
        second: &str,
        next_token: Option<String>,
    ) -> ApiResult<ebs::ChangedPage> {
        let out = self
            .ebs
            .list_changed_blocks()
            .first_snapshot_id(first)
            .second_snapshot_id(second)
            .set_next_token(next_token)
            .max_results(10_000)
            .send()
            .await
            .map_err(classify)?;
        let mut blocks = Vec::with_capacity(out.changed_blocks().len());
        for b in out.changed_blocks() {
            let Some(i) = b.block_index() else { continue };
            blocks.push(u64::try_from(i).map_err(|_| {
                ApiError::new(ErrorKind::Other, None, format!("negative block index {i}"))
            })?);
        }
        Ok(ebs::ChangedPage {
            blocks,
            next_token: out.next_token().map(str::to_string),
            volume_size_gib: out.volume_size().and_then(|v| u64::try_from(v).ok()),
        })
    }

    async fn get_block(
        &self,
        snapshot_id: &str,
        index: u64,
        token: &str,
    ) -> ApiResult<FetchedBlock> {
        let out = self
            .ebs
            .get_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(i32_of(index, "block index")?)
            .block_token(token)
            .send()
            .await
            .map_err(classify)?;
        let checksum = out.checksum().map(str::to_string);
        let data = read_body(out.block_data, &format!("block {index}")).await?;
        Ok(FetchedBlock { data, checksum })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_retry_classes() {
        assert_eq!(
            classify_code(Some("RequestThrottledException"), Some(400)),
            ErrorKind::Throttled
        );
        assert_eq!(
            classify_code(Some("AccessDeniedException"), Some(403)),
            ErrorKind::AccessDenied
        );
        assert_eq!(
            classify_code(Some("ValidationException"), Some(400)),
            ErrorKind::Validation
        );
        assert_eq!(
            classify_code(Some("ServiceQuotaExceededException"), Some(402)),
            ErrorKind::Quota
        );
        assert_eq!(
            classify_code(Some("ConflictException"), Some(409)),
            ErrorKind::Conflict
        );
        assert_eq!(
            classify_code(Some("InvalidSnapshot.NotFound"), Some(400)),
            ErrorKind::NotFound
        );
        // moto answers unknown ids with a bare 500.
        assert_eq!(classify_code(None, Some(500)), ErrorKind::Server);
        assert!(classify_code(None, Some(503)).is_transient());
    }
}
