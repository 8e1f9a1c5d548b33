//! Registering AMIs from EBS snapshots.
//!
//! [`RegisterSpec::validate`] checks everything that can be checked before any call:
//! the name rules, arm64 needs UEFI, TPM needs UEFI, the device names. [`register`]
//! then waits for the snapshots to be completed. If an image with the same name
//! exists, it is returned after a check that it was made from the same root snapshot
//! with the same architecture: re-runs are idempotent, never duplicates. Otherwise
//! it calls RegisterImage, tags the image and its snapshots, and waits until the
//! image is available.

mod attempts;
/// The EC2 client every function here takes (made by [`client`]).
pub use aws_sdk_ec2::Client;
pub mod lifecycle;
pub mod parameters;
pub mod recycle_bin;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter,
    ImdsSupportValues, ResourceType, Tag, TagSpecification, TpmSupportValues, VolumeType,
};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What can go wrong registering an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid; nothing was called.
    #[error("{0}")]
    Invalid(String),
    /// An EC2 call failed.
    #[error("{op} failed for {resource}: {message}")]
    Api {
        /// The operation.
        op: &'static str,
        /// The image name, image id or snapshot id.
        resource: String,
        /// What EC2 said.
        message: String,
    },
    /// An image of that name exists but was made from something else.
    #[error(
        "an image named {name:?} already exists ({image_id}) but {reason}; choose another name"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The existing image.
        image_id: String,
        /// What differs.
        reason: String,
    },
    /// Waiting ran out.
    #[error("{resource} {what}")]
    Timeout {
        /// The resource.
        resource: String,
        /// What did not happen in time.
        what: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// CPU architecture of an AMI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// x86_64.
    X86_64,
    /// arm64 (aarch64).
    Arm64,
    /// 32-bit x86.
    I386,
}

impl Architecture {
    /// From the names `inspect` reports.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "x86_64" | "amd64" => Some(Self::X86_64),
            "arm64" | "aarch64" => Some(Self::Arm64),
            "i386" | "i686" => Some(Self::I386),
            _ => None,
        }
    }
    fn sdk(self) -> ArchitectureValues {
        match self {
            Self::X86_64 => ArchitectureValues::X8664,
            Self::Arm64 => ArchitectureValues::Arm64,
            Self::I386 => ArchitectureValues::I386,
        }
    }
    /// EC2's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
            Self::I386 => "i386",
        }
    }
}

/// Boot mode of an AMI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    /// UEFI only.
    Uefi,
    /// Legacy BIOS only.
    LegacyBios,
    /// UEFI where the instance type supports it, else BIOS.
    UefiPreferred,
}

impl BootMode {
    /// From "uefi", "legacy-bios" or "uefi-preferred".
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "uefi" => Some(Self::Uefi),
            "legacy-bios" => Some(Self::LegacyBios),
            "uefi-preferred" => Some(Self::UefiPreferred),
            _ => None,
        }
    }
    /// EC2's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uefi => "uefi",
            Self::LegacyBios => "legacy-bios",
            Self::UefiPreferred => "uefi-preferred",
        }
    }
    fn sdk(self) -> BootModeValues {
        match self {
            Self::Uefi => BootModeValues::Uefi,
            Self::LegacyBios => BootModeValues::LegacyBios,
            Self::UefiPreferred => BootModeValues::UefiPreferred,
        }
    }
}

/// Everything RegisterImage is asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterSpec {
    /// Unique per account and region; 3-128 characters.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Architecture.
    pub architecture: Architecture,
    /// Boot mode.
    pub boot_mode: BootMode,
    /// The root volume's snapshot.
    pub root_snapshot: String,
    /// Data volumes: (snapshot, device name).
    pub data_snapshots: Vec<(String, String)>,
    /// ENA networking.
    pub ena: bool,
    /// SR-IOV ("simple").
    pub sriov: bool,
    /// Require IMDSv2.
    pub imds_v2: bool,
    /// NitroTPM 2.0.
    pub tpm_v2: bool,
    /// The root device name.
    pub root_device: String,
    /// The volume type of every mapping.
    pub volume_type: String,
    /// Root volume size in GiB (default: the snapshot's).
    pub volume_size_gib: Option<u64>,
    /// Tags for the image and its snapshots.
    pub tags: Vec<(String, String)>,
}

/// Characters EC2 allows in AMI names.
fn allowed_in_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c)
}

/// Volume types RegisterImage accepts for EBS mappings.
const VOLUME_TYPES: [&str; 7] = ["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

impl RegisterSpec {
    /// Checks everything that can be checked without AWS.
    pub fn validate(&self) -> Result<()> {
        let n = self.name.chars().count();
        if !(3..=128).contains(&n) {
            return Err(Error::Invalid(format!(
                "AMI name {:?} must be 3 to 128 characters long (it has {n})",
                self.name
            )));
        }
        if let Some(c) = self.name.chars().find(|&c| !allowed_in_name(c)) {
            return Err(Error::Invalid(format!(
                "AMI name {:?} holds {c:?}; allowed are letters, digits and ( ) [ ] space . / - ' @ _",
                self.name
            )));
        }
        if self.architecture == Architecture::Arm64 && self.boot_mode != BootMode::Uefi {
            return Err(Error::Invalid(
                "arm64 AMIs must boot with UEFI (--boot-mode uefi)".into(),
            ));
        }
        if self.tpm_v2 && self.boot_mode != BootMode::Uefi {
            return Err(Error::Invalid(
                "NitroTPM (--tpm-v2) needs --boot-mode uefi".into(),
            ));
        }
        if !self.root_device.starts_with("/dev/") {
            return Err(Error::Invalid(format!(
                "root device {:?} must be a /dev/ name like /dev/xvda",
                self.root_device
            )));
        }
        if !VOLUME_TYPES.contains(&self.volume_type.as_str()) {
            return Err(Error::Invalid(format!(
                "volume type {:?} is not one of {VOLUME_TYPES:?}",
                self.volume_type
            )));
        }
        if !self.root_snapshot.starts_with("snap-") {
            return Err(Error::Invalid(format!(
                "{:?} is not a snapshot id",
                self.root_snapshot
            )));
        }
        let mut devices = vec![self.root_device.as_str()];
        for (snap, dev) in &self.data_snapshots {
            if !snap.starts_with("snap-") || !dev.starts_with("/dev/") {
                return Err(Error::Invalid(format!(
                    "data snapshot {snap}:{dev} needs a snapshot id and a /dev/ name"
                )));
            }
            if devices.contains(&dev.as_str()) {
                return Err(Error::Invalid(format!("device {dev} is mapped twice")));
            }
            devices.push(dev);
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 255)
        {
            return Err(Error::Invalid(
                "the description is longer than 255 characters".into(),
            ));
        }
        if self.tags.len() > 50 {
            return Err(Error::Invalid("at most 50 tags".into()));
        }
        Ok(())
    }
}

/// What [`register`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    /// The AMI.
    pub image_id: String,
    /// The name.
    pub name: String,
    /// True when an image of this name already existed and was returned.
    pub existing: bool,
    /// Its state when we stopped waiting ("available").
    pub state: String,
    /// The snapshots it uses.
    pub snapshots: Vec<String>,
}

pub(crate) fn sdk_message<E>(
    e: &aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> String
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let what = match e.as_service_error() {
        Some(se) => format!(
            "{}: {}",
            se.code().unwrap_or("error"),
            se.message().unwrap_or("")
        ),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(x) = src {
                s.push_str(": ");
                s.push_str(&x.to_string());
                src = x.source();
            }
            s
        }
    };
    what + &attempts::describe_last()
}

/// How soon a wait asks EC2 again, at first; each wait then backs off by half
/// again, up to [`POLL_MAX`], and never past its deadline.
const POLL_FIRST: Duration = Duration::from_secs(2);
/// The longest pause between two questions of a wait.
const POLL_MAX: Duration = Duration::from_secs(15);

/// Polling with backoff until a total deadline.
struct Poll {
    deadline: Instant,
    next: Duration,
}

impl Poll {
    fn new(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            next: POLL_FIRST,
        }
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    async fn pause(&mut self) {
        let left = self.deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(self.next.min(left)).await;
        self.next = (self.next * 3 / 2).min(POLL_MAX);
    }
}

/// Waits until every snapshot is "completed".
pub async fn wait_snapshots(
    client: &aws_sdk_ec2::Client,
    ids: &[String],
    timeout: Duration,
) -> Result<()> {
    let mut poll = Poll::new(timeout);
    loop {
        let out = client
            .describe_snapshots()
            .set_snapshot_ids(Some(ids.to_vec()))
            .send()
            .await;
        let mut pending = Vec::new();
        match out {
            Ok(o) => {
                for s in o.snapshots() {
                    use aws_sdk_ec2::types::SnapshotState as S;
                    let id = s.snapshot_id().unwrap_or("?").to_string();
                    match s.state() {
                        Some(S::Completed) => {}
                        Some(S::Error) => {
                            return Err(Error::Api {
                                op: "DescribeSnapshots",
                                resource: id,
                                message: "the snapshot is in the error state".into(),
                            })
                        }
                        _ => pending.push(id),
                    }
                }
            }
            Err(e) => {
                if !is_not_found(&e) {
                    let msg = sdk_message(&e);
                    return Err(Error::Api {
                        op: "DescribeSnapshots",
                        resource: ids.join(","),
                        message: msg,
                    });
                }
                pending.extend(ids.iter().cloned());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if poll.expired() {
            return Err(Error::Timeout {
                resource: pending.join(", "),
                what: format!("not completed within {timeout:?}"),
            });
        }
        poll.pause().await;
    }
}

/// The image of this name owned by this account, if any.
pub async fn find_by_name(
    client: &aws_sdk_ec2::Client,
    name: &str,
) -> Result<Option<aws_sdk_ec2::types::Image>> {
    let out = client
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(|e| Error::Api {
            op: "DescribeImages",
            resource: name.into(),
            message: sdk_message(&e),
        })?;
    Ok(out
        .images()
        .iter()
        .find(|i| i.name() == Some(name))
        .cloned())
}

/// The snapshot behind the root device of the image `image_id`.
pub async fn root_snapshot(client: &aws_sdk_ec2::Client, image_id: &str) -> Result<String> {
    let image = lifecycle::describe(client, image_id).await?;
    root_snapshot_of(&image).ok_or_else(|| Error::Api {
        op: "DescribeImages",
        resource: image_id.into(),
        message: "the image's root device is not backed by an EBS snapshot".into(),
    })
}

/// The EBS snapshots of an AMI's data volumes, as (device name, snapshot id), in
/// the order DescribeImages lists them: every block device mapping with a snapshot
/// other than the root device's.
pub async fn data_snapshots(
    client: &aws_sdk_ec2::Client,
    image_id: &str,
) -> Result<Vec<(String, String)>> {
    let image = lifecycle::describe(client, image_id).await?;
    let root = image.root_device_name().unwrap_or_default();
    Ok(image
        .block_device_mappings()
        .iter()
        .filter(|m| m.device_name() != Some(root))
        .filter_map(|m| {
            let snapshot = m.ebs()?.snapshot_id()?;
            Some((m.device_name()?.to_string(), snapshot.to_string()))
        })
        .collect())
}

fn root_snapshot_of(image: &aws_sdk_ec2::types::Image) -> Option<String> {
    let root = image.root_device_name()?;
    image
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root))
        .and_then(|m| m.ebs())
        .and_then(|e| e.snapshot_id())
        .map(str::to_string)
}

/// Waits until the image is "available".
pub async fn wait_available(
    client: &aws_sdk_ec2::Client,
    image_id: &str,
    timeout: Duration,
) -> Result<String> {
    let mut poll = Poll::new(timeout);
    loop {
        let out = client.describe_images().image_ids(image_id).send().await;
        match out {
            Ok(o) => {
                if let Some(state) = o.images().first().and_then(|i| i.state()) {
                    use aws_sdk_ec2::types::ImageState as S;
                    match state {
                        S::Available => return Ok("available".into()),
                        S::Failed | S::Error | S::Invalid | S::Deregistered => {
                            return Err(Error::Api {
                                op: "DescribeImages",
                                resource: image_id.into(),
                                message: format!("the image is {}", state.as_str()),
                            })
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                if !is_not_found(&e) {
                    let msg = sdk_message(&e);
                    return Err(Error::Api {
                        op: "DescribeImages",
                        resource: image_id.into(),
                        message: msg,
                    });
                }
            }
        }
        if poll.expired() {
            return Err(Error::Timeout {
                resource: image_id.into(),
                what: format!("not available within {timeout:?}"),
            });
        }
        poll.pause().await;
    }
}

fn tags(spec: &RegisterSpec) -> Vec<Tag> {
    spec.tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// Returns the existing image of the spec's name after checking that it was made from
/// the same root snapshot with the same architecture, once it is available.
async fn reuse(
    client: &aws_sdk_ec2::Client,
    spec: &RegisterSpec,
    existing: &aws_sdk_ec2::types::Image,
    snapshots: Vec<String>,
    timeout: Duration,
) -> Result<Registered> {
    let image_id = existing.image_id().unwrap_or("?").to_string();
    let root = root_snapshot_of(existing);
    if root.as_deref().is_some_and(|r| r != spec.root_snapshot) {
        return Err(Error::NameTaken {
            name: spec.name.clone(),
            image_id,
            reason: format!(
                "its root snapshot is {}, not {}",
                root.unwrap_or_default(),
                spec.root_snapshot
            ),
        });
    }
    if let Some(arch) = existing.architecture().map(|a| a.as_str().to_string()) {
        if arch != spec.architecture.name() {
            return Err(Error::NameTaken {
                name: spec.name.clone(),
                image_id,
                reason: format!("it is {arch}, not {}", spec.architecture.name()),
            });
        }
    }
    tracing::info!(%image_id, "an image of this name exists and matches; reusing it");
    let state = wait_available(client, &image_id, timeout).await?;
    Ok(Registered {
        image_id,
        name: spec.name.clone(),
        existing: true,
        state,
        snapshots,
    })
}

/// Registers the image, or returns the existing one of the same name after checking it.
pub async fn register(
    client: &aws_sdk_ec2::Client,
    spec: &RegisterSpec,
    timeout: Duration,
) -> Result<Registered> {
    spec.validate()?;
    let mut snapshots = vec![spec.root_snapshot.clone()];
    snapshots.extend(spec.data_snapshots.iter().map(|(s, _)| s.clone()));
    wait_snapshots(client, &snapshots, timeout).await?;

    if let Some(existing) = find_by_name(client, &spec.name).await? {
        return reuse(client, spec, &existing, snapshots, timeout).await;
    }

    let mut mappings = vec![BlockDeviceMapping::builder()
        .device_name(&spec.root_device)
        .ebs(
            EbsBlockDevice::builder()
                .snapshot_id(&spec.root_snapshot)
                .volume_type(VolumeType::from(spec.volume_type.as_str()))
                .set_volume_size(spec.volume_size_gib.map(|v| v as i32))
                .delete_on_termination(true)
                .build(),
        )
        .build()];
    for (snap, dev) in &spec.data_snapshots {
        mappings.push(
            BlockDeviceMapping::builder()
                .device_name(dev)
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snap)
                        .volume_type(VolumeType::from(spec.volume_type.as_str()))
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        );
    }
    let mut req = client
        .register_image()
        .name(&spec.name)
        .set_description(spec.description.clone())
        .architecture(spec.architecture.sdk())
        .virtualization_type("hvm")
        .root_device_name(&spec.root_device)
        .set_block_device_mappings(Some(mappings))
        .ena_support(spec.ena)
        .boot_mode(spec.boot_mode.sdk());
    if spec.sriov {
        req = req.sriov_net_support("simple");
    }
    if spec.imds_v2 {
        req = req.imds_support(ImdsSupportValues::V20);
    }
    if spec.tpm_v2 {
        req = req.tpm_support(TpmSupportValues::V20);
    }
    if !spec.tags.is_empty() {
        req = req.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Image)
                .set_tags(Some(tags(spec)))
                .build(),
        );
    }
    let out = match req.send().await {
        Ok(out) => out,
        // An earlier attempt of this call registered the image but its answer was
        // lost (or another run got there first): the name is taken by what may well
        // be this very image, so it is checked and reused like any existing one.
        Err(e)
            if e.as_service_error()
                .and_then(|s| s.meta().code())
                .is_some_and(|c| c == "InvalidAMIName.Duplicate") =>
        {
            let message = sdk_message(&e);
            return match find_by_name(client, &spec.name).await? {
                Some(existing) => {
                    tracing::info!("RegisterImage: {message}; checking the image of that name");
                    reuse(client, spec, &existing, snapshots, timeout).await
                }
                None => Err(Error::Api {
                    op: "RegisterImage",
                    resource: spec.name.clone(),
                    message,
                }),
            };
        }
        Err(e) => {
            return Err(Error::Api {
                op: "RegisterImage",
                resource: spec.name.clone(),
                message: sdk_message(&e),
            })
        }
    };
    let image_id = out
        .image_id()
        .ok_or_else(|| Error::Api {
            op: "RegisterImage",
            resource: spec.name.clone(),
            message: "no image id returned".into(),
        })?
        .to_string();
    if !spec.tags.is_empty() {
        // The image gets its tags again here: some implementations (moto) drop
        // RegisterImage's TagSpecifications, and re-runs find the image by its tags.
        let mut resources = snapshots.clone();
        resources.push(image_id.clone());
        client
            .create_tags()
            .set_resources(Some(resources))
            .set_tags(Some(tags(spec)))
            .send()
            .await
            .map_err(|e| Error::Api {
                op: "CreateTags",
                resource: snapshots.join(","),
                message: sdk_message(&e),
            })?;
    }
    let state = wait_available(client, &image_id, timeout).await?;
    Ok(Registered {
        image_id,
        name: spec.name.clone(),
        existing: false,
        state,
        snapshots,
    })
}

/// Deletes a snapshot (clean-up after a failed publish).
pub async fn delete_snapshot(client: &aws_sdk_ec2::Client, id: &str) -> Result<()> {
    client
        .delete_snapshot()
        .snapshot_id(id)
        .send()
        .await
        .map_err(|e| Error::Api {
            op: "DeleteSnapshot",
            resource: id.into(),
            message: sdk_message(&e),
        })?;
    Ok(())
}

/// A client of one AWS SDK crate (`aws_sdk_ec2`, `aws_sdk_ssm`...) from the standard
/// configuration, with the retries, timeouts and attempt counting of [`client`]. A
/// macro, because each SDK crate has its own config builder type.
macro_rules! retried_client {
    ($sdk:ident, $opts:expr, $retry:expr) => {{
        let shared = awsapi::load($opts).await?;
        let config = $sdk::config::Builder::from(&shared)
            .retry_config($crate::retry_config($retry))
            .timeout_config($crate::timeout_config($retry))
            .interceptor($crate::attempts::AttemptCounter {
                max: $retry.max_attempts.max(1),
            })
            .build();
        Ok($sdk::Client::from_conf(config))
    }};
}
pub(crate) use retried_client;

/// How long to wait for a TCP connection to EC2.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An EC2 client from the standard configuration, with `retry` applied to every call
/// by the SDK's standard retry strategy: throttling (`RequestLimitExceeded`,
/// `Throttling`...), 5xx answers, timeouts and dropped connections are retried with
/// exponential backoff and jitter, classified by the SDK from the error codes; other
/// errors (`UnauthorizedOperation`, `InvalidParameterValue`...) are not. Each attempt
/// is abandoned after `retry.attempt_timeout`.
pub async fn client(
    opts: &awsapi::AwsOptions,
    retry: &ebs::RetryPolicy,
) -> std::result::Result<aws_sdk_ec2::Client, awsapi::Error> {
    retried_client!(aws_sdk_ec2, opts, retry)
}

/// The SDK's standard retry strategy, set from `retry`.
pub(crate) fn retry_config(retry: &ebs::RetryPolicy) -> aws_config::retry::RetryConfig {
    aws_config::retry::RetryConfig::standard()
        .with_max_attempts(retry.max_attempts.max(1))
        .with_initial_backoff(retry.base_delay)
        .with_max_backoff(retry.max_delay)
}

/// The connect timeout and `retry`'s per-attempt timeout.
pub(crate) fn timeout_config(retry: &ebs::RetryPolicy) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(retry.attempt_timeout)
        .build()
}

/// Whether EC2 answered that the resource does not exist (`InvalidAMIID.NotFound`,
/// `InvalidSnapshot.NotFound`...), by the error code, not the message.
pub(crate) fn is_not_found<E, R>(e: &aws_sdk_ec2::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|code| code.ends_with(".NotFound"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RegisterSpec {
        RegisterSpec {
            name: "debian-12-amd64 (2026-11-27)".into(),
            description: None,
            architecture: Architecture::X86_64,
            boot_mode: BootMode::Uefi,
            root_snapshot: "snap-0123".into(),
            data_snapshots: vec![],
            ena: true,
            sriov: true,
            imds_v2: true,
            tpm_v2: false,
            root_device: "/dev/xvda".into(),
            volume_type: "gp3".into(),
            volume_size_gib: None,
            tags: vec![],
        }
    }

    #[test]
    fn a_sensible_spec_is_valid() {
        spec().validate().unwrap();
    }

    #[test]
    fn names_follow_the_ec2_rules() {
        for bad in ["ab", "has:colon", "x".repeat(129).as_str(), "ümlaut"] {
            let s = RegisterSpec {
                name: bad.to_string(),
                ..spec()
            };
            assert!(s.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arm64_and_tpm_need_uefi() {
        let arm = RegisterSpec {
            architecture: Architecture::Arm64,
            boot_mode: BootMode::LegacyBios,
            ..spec()
        };
        assert!(arm.validate().unwrap_err().to_string().contains("arm64"));
        let tpm = RegisterSpec {
            tpm_v2: true,
            boot_mode: BootMode::UefiPreferred,
            ..spec()
        };
        assert!(tpm.validate().unwrap_err().to_string().contains("TPM"));
    }

    #[test]
    fn devices_must_not_repeat() {
        let s = RegisterSpec {
            data_snapshots: vec![("snap-1".into(), "/dev/xvda".into())],
            ..spec()
        };
        assert!(s.validate().is_err());
    }
}
