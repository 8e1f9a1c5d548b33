//! The one place that opens the image a command was given. `diskimage` tells the
//! format by magic (raw, qcow2, VMDK, VHD, VHDX) and reads the virtual disk; bundles
//! are recognised by `bundled::is_bundle` before this is reached. `--allow-backing`,
//! a global option, is set here once for the whole command.
//!
//! An argument of the form `snap-<hex>` that is not a local file is an EBS snapshot,
//! read in place through the EBS direct APIs (`ebs::SnapshotSource`) with the
//! command's AWS settings (`configure_aws`), and `ami-<hex>` is an AMI, read as its
//! root snapshot; an `s3://bucket/key` argument is an
//! object in S3, read in place with ranged GetObject calls (`awsapi::S3Source`).

use anyhow::{Context, Result};
use blockio::BlockSource as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

static OPTIONS: OnceLock<diskimage::OpenOptions> = OnceLock::new();
static VERSION_ID: OnceLock<Option<String>> = OnceLock::new();
static AWS: OnceLock<crate::cli::AwsArgs> = OnceLock::new();
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Blocks of a snapshot fetched at once when a read misses the cache.
const SNAPSHOT_READ_AHEAD: usize = 16;
/// 1 MiB chunks of an S3 object fetched at once when reads go forward.
const S3_READ_AHEAD: usize = 8;

/// Sets the AWS settings a snapshot source is read with.
pub fn configure_aws(aws: crate::cli::AwsArgs) {
    let _ = AWS.set(aws);
}

/// The AWS resource id `arg` names: `prefix` (`snap-`, `ami-`) and hex digits, when
/// no such file exists.
fn aws_id<'a>(arg: &'a Path, prefix: &str) -> Option<&'a str> {
    let s = arg.to_str()?;
    let hex = s.strip_prefix(prefix)?;
    (!hex.is_empty() && hex.bytes().all(|c| c.is_ascii_hexdigit()) && !arg.exists()).then_some(s)
}

/// The root snapshot of the AMI `id` (ec2:DescribeImages).
fn root_snapshot_of(id: &str) -> Result<String> {
    let aws = AWS.get_or_init(crate::cli::AwsArgs::from_environment);
    let runtime = runtime()?;
    let snapshot = runtime.block_on(async {
        let client = ami::client(&aws.options(), &aws.retry()).await?;
        Ok::<_, anyhow::Error>(ami::root_snapshot(&client, id).await?)
    })?;
    tracing::info!(image = id, snapshot, "reading the image's root snapshot");
    Ok(snapshot)
}

/// The snapshots of the AMI `id`'s data volumes: (device, snapshot).
fn data_snapshots_of(id: &str) -> Result<Vec<(String, String)>> {
    let aws = AWS.get_or_init(crate::cli::AwsArgs::from_environment);
    runtime()?.block_on(async {
        let client = ami::client(&aws.options(), &aws.retry()).await?;
        Ok(ami::data_snapshots(&client, id).await?)
    })
}

/// The snapshot `id`, read in place.
fn snapshot(id: &str) -> Result<Arc<dyn blockio::BlockSource>> {
    let aws = AWS.get_or_init(crate::cli::AwsArgs::from_environment);
    let runtime = runtime()?;
    tracing::info!(snapshot = id, "reading the snapshot in place");
    let api = runtime.block_on(aws.ebs_client())?;
    let source = ebs::SnapshotSource::open(
        api,
        runtime.handle().clone(),
        id,
        SNAPSHOT_READ_AHEAD,
        aws.retry(),
    )
    .with_context(|| format!("cannot read snapshot {id}"))?;
    tracing::info!(
        snapshot = id,
        blocks = source.blocks_listed(),
        size = source.len(),
        "listed"
    );
    Ok(Arc::new(source))
}

/// The blocks that differ between two snapshots (`snap-…`, or `ami-…` for its
/// root snapshot), from ListChangedBlocks; `None` unless both arguments name one.
pub fn changed_blocks(first: &Path, second: &Path) -> Result<Option<Vec<u64>>> {
    let snapshot_of = |arg: &Path| -> Result<Option<String>> {
        if let Some(id) = aws_id(arg, "snap-") {
            return Ok(Some(id.to_string()));
        }
        aws_id(arg, "ami-").map(root_snapshot_of).transpose()
    };
    let (Some(a), Some(b)) = (snapshot_of(first)?, snapshot_of(second)?) else {
        return Ok(None);
    };
    let aws = AWS.get_or_init(crate::cli::AwsArgs::from_environment);
    let runtime = runtime()?;
    let api = runtime.block_on(aws.ebs_client())?;
    let (blocks, _) = runtime
        .block_on(ebs::changed_blocks(&*api, &a, &b, &aws.retry()))
        .with_context(|| format!("cannot list the blocks changed from {a} to {b}"))?;
    tracing::info!(
        first = a,
        second = b,
        blocks = blocks.len(),
        "ListChangedBlocks"
    );
    Ok(Some(blocks))
}

/// Sets how images are opened: the directory backing files may be followed in, and
/// the version of an S3 object to read.
pub fn configure(allow_backing: Option<PathBuf>, version_id: Option<String>) {
    let _ = OPTIONS.set(diskimage::OpenOptions { allow_backing });
    let _ = VERSION_ID.set(version_id);
}

/// The `--version-id` given, refused for an image that is not in S3.
fn version_id(path: &Path, in_s3: bool) -> Result<Option<String>> {
    let version = VERSION_ID.get().cloned().flatten();
    if version.is_some() && !in_s3 {
        anyhow::bail!(
            "--version-id names a version of an s3:// object, and {} is not one",
            path.display()
        );
    }
    Ok(version)
}

fn options() -> &'static diskimage::OpenOptions {
    OPTIONS.get_or_init(diskimage::OpenOptions::default)
}

/// Opens the disk in the image file at `path` (or in the S3 object `s3://…`),
/// read-only.
pub fn disk(path: &Path) -> Result<diskimage::Opened> {
    let in_s3 = path.to_str().filter(|p| p.starts_with("s3://"));
    let version = version_id(path, in_s3.is_some())?;
    let opened = if let Some(url) = in_s3 {
        let mut opened = diskimage::open_source(s3_object(url, version)?)
            .with_context(|| format!("cannot open {url}"))?;
        opened.info.notes.push("read in place from S3".into());
        opened
    } else {
        tracing::info!(image = %path.display(), "opening read-only");
        diskimage::open(path, options())
            .with_context(|| format!("cannot open {}", path.display()))?
    };
    tracing::info!(
        format = opened.info.format,
        virtual_size = opened.info.virtual_size,
        allocated = opened.info.allocated_bytes,
        "opened"
    );
    Ok(opened)
}

/// The object `url` names in S3, read in place.
fn s3_object(url: &str, version_id: Option<String>) -> Result<Arc<dyn blockio::BlockSource>> {
    let (config, runtime, retry) = aws_config()?;
    tracing::info!(
        object = url,
        version = version_id.as_deref(),
        "reading the object in place"
    );
    let source = awsapi::S3Source::open(
        &config,
        runtime.handle().clone(),
        url,
        version_id,
        S3_READ_AHEAD,
        retry,
    )
    .with_context(|| format!("cannot read {url}"))?;
    Ok(Arc::new(source))
}

/// The AWS configuration, runtime and retry policy of the command's AWS settings,
/// for what reads or writes S3 objects.
pub fn aws_config() -> Result<(
    awsapi::SdkConfig,
    &'static tokio::runtime::Runtime,
    ebs::RetryPolicy,
)> {
    let aws = AWS.get_or_init(crate::cli::AwsArgs::from_environment);
    let runtime = runtime()?;
    let config = runtime.block_on(awsapi::load(&aws.options()))?;
    Ok((config, runtime, aws.retry()))
}

/// The runtime remote sources fetch on, made once.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    if let Some(r) = RUNTIME.get() {
        return Ok(r);
    }
    let built = crate::cli::runtime()?;
    Ok(RUNTIME.get_or_init(|| built))
}

/// Opens the image file (or snapshot, or S3 object) at `path` for inspection: its
/// partitions probed.
pub fn image(path: &Path) -> Result<inspect::Image> {
    let remote = |what: &str| -> Result<()> {
        version_id(path, false)
            .map(|_| ())
            .with_context(|| format!("{what} has no versions"))
    };
    if let Some(id) = aws_id(path, "snap-") {
        remote("a snapshot")?;
        return inspect::Image::from_source(snapshot(id)?)
            .with_context(|| format!("cannot inspect {id}"));
    }
    if let Some(id) = aws_id(path, "ami-") {
        remote("an AMI")?;
        let snap = root_snapshot_of(id)?;
        let mut image = inspect::Image::from_source(snapshot(&snap)?)
            .with_context(|| format!("cannot inspect {id} (its root snapshot {snap})"))?;
        for (device, data) in data_snapshots_of(id)? {
            tracing::info!(image = id, device, snapshot = data, "reading a data volume");
            image
                .add_disk(snapshot(&data)?, &format!("{device} ({data})"))
                .with_context(|| format!("cannot inspect {id}'s data volume {device} ({data})"))?;
        }
        return Ok(image);
    }
    inspect::Image::from_opened(disk(path)?)
        .with_context(|| format!("cannot inspect {}", path.display()))
}
