//! The one place that opens the image a command was given. `diskimage` tells the
//! format by magic (raw, qcow2, VMDK, VHD, VHDX) and reads the virtual disk; bundles
//! are recognised by `bundled::is_bundle` before this is reached. `--allow-backing`,
//! a global option, is set here once for the whole command.
//!
//! An argument of the form `snap-<hex>` that is not a local file is an EBS snapshot,
//! read in place through the EBS direct APIs (`ebs::SnapshotSource`) with the
//! command's AWS settings (`configure_aws`).

use anyhow::{Context, Result};
use blockio::BlockSource as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

static OPTIONS: OnceLock<diskimage::OpenOptions> = OnceLock::new();
static AWS: OnceLock<crate::cli::AwsArgs> = OnceLock::new();
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Blocks of a snapshot fetched at once when a read misses the cache.
const SNAPSHOT_READ_AHEAD: usize = 16;

/// Sets the AWS settings a snapshot source is read with.
pub fn configure_aws(aws: crate::cli::AwsArgs) {
    let _ = AWS.set(aws);
}

/// The snapshot id `arg` names: `snap-` and hex digits, when no such file exists.
pub fn snapshot_id(arg: &Path) -> Option<&str> {
    let s = arg.to_str()?;
    let hex = s.strip_prefix("snap-")?;
    (!hex.is_empty() && hex.bytes().all(|c| c.is_ascii_hexdigit()) && !arg.exists()).then_some(s)
}

/// The snapshot `id`, read in place.
fn snapshot(id: &str) -> Result<Arc<dyn blockio::BlockSource>> {
    let aws = AWS.get_or_init(crate::cli::AwsArgs::from_environment);
    let runtime = match RUNTIME.get() {
        Some(r) => r,
        None => {
            let built = crate::cli::runtime()?;
            RUNTIME.get_or_init(|| built)
        }
    };
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

/// Sets how images are opened: the directory backing files may be followed in.
pub fn configure(allow_backing: Option<PathBuf>) {
    let _ = OPTIONS.set(diskimage::OpenOptions { allow_backing });
}

fn options() -> &'static diskimage::OpenOptions {
    OPTIONS.get_or_init(diskimage::OpenOptions::default)
}

/// Opens the disk in the image file at `path`, read-only.
pub fn disk(path: &Path) -> Result<diskimage::Opened> {
    tracing::info!(image = %path.display(), "opening read-only");
    let opened = diskimage::open(path, options())
        .with_context(|| format!("cannot open {}", path.display()))?;
    tracing::info!(
        format = opened.info.format,
        virtual_size = opened.info.virtual_size,
        allocated = opened.info.allocated_bytes,
        "opened"
    );
    Ok(opened)
}

/// Opens the image file (or snapshot) at `path` for inspection: its partitions probed.
pub fn image(path: &Path) -> Result<inspect::Image> {
    if let Some(id) = snapshot_id(path) {
        return inspect::Image::from_source(snapshot(id)?)
            .with_context(|| format!("cannot inspect {id}"));
    }
    inspect::Image::from_opened(disk(path)?)
        .with_context(|| format!("cannot inspect {}", path.display()))
}
