//! The commands that move blocks: upload, download, verify.

use crate::cli::{parse_tags, runtime, AwsArgs, Format};
use crate::progress::Reporter;
use anyhow::{bail, Context, Result};
use blockio::BlockSource;
use ebs::{Manifest, UploadOptions};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `amiforge upload` arguments.
#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    /// The disk image (raw, qcow2, VMDK, VHD or VHDX), or a bundle directory made by
    /// `amiforge bundle`.
    pub image: PathBuf,
    /// For a bundle: the ed25519 public key (PEM) its manifest must be signed with.
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// Blocks in flight at once (each holds one 512 KiB buffer).
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    /// Snapshot description.
    #[arg(long)]
    pub description: Option<String>,
    /// Snapshot tag, KEY=VALUE; repeat for more.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Encrypt the snapshot. Every block is then written, zero blocks included:
    /// unwritten blocks of encrypted snapshots do not read back as zeros.
    #[arg(long)]
    pub encrypted: bool,
    /// KMS key ARN for encryption (implies --encrypted).
    #[arg(long, value_name = "ARN")]
    pub kms_key: Option<String>,
    /// Upload incrementally on top of this completed snapshot: only changed blocks
    /// are sent. Needs the parent's manifest (--parent-manifest, or --manifest).
    #[arg(long, value_name = "SNAPSHOT_ID")]
    pub parent_snapshot: Option<String>,
    /// The parent snapshot's manifest (default: the --manifest file, which is then
    /// replaced by the new one).
    #[arg(long, value_name = "FILE")]
    pub parent_manifest: Option<PathBuf>,
    /// After a successful upload, write the block manifest (index → SHA-256) here.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// The snapshot is cancelled by AWS after this many idle minutes (10-4320).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(10..=4320))]
    pub timeout_minutes: u32,
    /// Minutes to wait for the snapshot to become "completed".
    #[arg(long, default_value_t = 60)]
    pub completion_timeout_minutes: u64,
    /// Continue the interrupted upload recorded in the journal.
    #[arg(long)]
    pub resume: bool,
    /// Where the resume journal lives (default: beside the image). An S3 prefix
    /// (`s3://bucket/prefix/`) keeps it there, copied every few seconds, so that an
    /// upload interrupted on one CI runner resumes on another.
    #[arg(long, value_name = "DIR", env = "AMIFORGE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Quotes an argument for a POSIX shell, when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn resume_command(args: &UploadArgs) -> String {
    let exe = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("amiforge"));
    let mut parts = vec![
        exe.to_string_lossy().into_owned(),
        "upload".into(),
        args.image.display().to_string(),
        "--resume".into(),
    ];
    if let Some(d) = &args.state_dir {
        parts.push("--state-dir".into());
        parts.push(d.display().to_string());
    }
    if let Some(m) = &args.manifest {
        parts.push("--manifest".into());
        parts.push(m.display().to_string());
    }
    parts.push("--workers".into());
    parts.push(args.workers.to_string());
    parts.extend(args.aws.as_args());
    parts
        .iter()
        .map(|p| shell_quote(p))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens what `upload` and `publish` send: a bundle, verified whole before anything
/// is sent (its blocks are then checked again against the manifest as they are
/// read), or a disk image of any format.
pub fn upload_source(args: &UploadArgs, show_progress: bool) -> Result<Arc<dyn BlockSource>> {
    if crate::bundled::is_bundle(&args.image) {
        let b =
            crate::bundled::open_verified(&args.image, args.public_key.as_deref(), show_progress)?;
        return Ok(Arc::new(bundle::BundleSource::new(b)));
    }
    Ok(crate::input::disk(&args.image)
        .with_context(|| format!("cannot upload {}", args.image.display()))?
        .source)
}

/// Uploads `image` (opened from `args.image`) and reports the pending snapshot on
/// failure; prints nothing else.
pub fn run_upload(
    args: &UploadArgs,
    image: Arc<dyn BlockSource>,
    extra_tags: &[(String, String)],
    rt: &tokio::runtime::Runtime,
    show_progress: bool,
) -> Result<ebs::UploadOutcome> {
    let mut tags = parse_tags(&args.tags)?;
    tags.extend(extra_tags.iter().cloned());
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let encrypted = args.encrypted || args.kms_key.is_some();
    let parent = match (&args.parent_snapshot, &args.parent_manifest, &args.manifest) {
        (None, Some(_), _) => bail!("--parent-manifest needs --parent-snapshot"),
        (None, None, _) => None,
        (Some(id), given, fallback) => {
            let path = given.clone().or_else(|| fallback.clone()).context(
                "--parent-snapshot needs the parent's block manifest: --parent-manifest FILE (or --manifest FILE)",
            )?;
            let m = Manifest::load(&path)?;
            if &m.snapshot_id != id {
                bail!(
                    "{}: this manifest belongs to snapshot {}, not to the parent {id}",
                    path.display(),
                    m.snapshot_id
                );
            }
            Some((m, path))
        }
    };
    // An image read in place from S3 has no directory to journal beside: the journal
    // goes to --state-dir, else the current directory.
    // A --state-dir in S3 holds the journal as an object; the uploader works on a
    // local copy in a staging directory (crate::objects::JournalMirror).
    let remote = args.image.to_str().is_some_and(|p| p.starts_with("s3://"));
    let state_in_s3 = args
        .state_dir
        .as_deref()
        .and_then(crate::objects::s3_url)
        .map(str::to_string);
    let staging = match &state_in_s3 {
        Some(_) => Some(tempfile::tempdir().context("cannot make a staging directory")?),
        None => None,
    };
    let state_dir = match (&staging, &args.state_dir, remote) {
        (Some(t), _, _) => Some(t.path().to_path_buf()),
        (None, Some(d), _) => Some(d.clone()),
        (None, None, true) => Some(PathBuf::from(".")),
        (None, None, false) => None,
    };
    let journal_path = ebs::Journal::path_for(&args.image, state_dir.as_deref());
    if let (Some(d), None) = (&args.state_dir, &staging) {
        std::fs::create_dir_all(d)
            .with_context(|| format!("cannot create --state-dir {}", d.display()))?;
    }
    let mirror = match &state_in_s3 {
        Some(prefix) => Some(crate::objects::JournalMirror::start(
            prefix,
            &journal_path,
            args.resume,
        )?),
        None => None,
    };
    if !args.resume && journal_path.exists() {
        tracing::warn!(
            "{} records an unfinished upload; starting a new one (use --resume to continue it instead)",
            journal_path.display()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = Reporter::new(show_progress, "blocks");
    let opts = UploadOptions {
        workers: args.workers,
        description: args.description.clone(),
        tags,
        encrypted,
        kms_key_arn: args.kms_key.clone(),
        parent_manifest_path: parent.as_ref().map(|(_, p)| p.clone()),
        parent: parent.map(|(m, _)| m),
        timeout_minutes: args.timeout_minutes,
        journal_path,
        resume: args.resume,
        retry: args.aws.retry(),
        completion_timeout: Duration::from_secs(args.completion_timeout_minutes * 60),
        poll_interval: Duration::from_secs(2),
        stop: stop.clone(),
        on_started: Box::new(|id| eprintln!("amiforge: snapshot {id} started")),
        // An object's size is all that is checked on resume (its ETag is not kept).
        identity: remote.then(|| ebs::ImageIdentity {
            size: image.len(),
            mtime_ns: 0,
            inode: 0,
        }),
    };
    let result = rt.block_on(async {
        let api = args.aws.ebs_client().await?;
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("amiforge: interrupted; finishing the blocks in flight");
                stop.store(true, Ordering::SeqCst);
            }
        });
        Ok::<_, anyhow::Error>(ebs::upload(api, image, &args.image, opts, reporter.clone()).await)
    })?;
    reporter.finish();
    if let Some(m) = mirror {
        m.finish()?;
    }
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            if let Some(id) = e.pending_snapshot() {
                eprintln!(
                    "amiforge: snapshot {id} is still pending. Resume the upload with:\n  {}",
                    resume_command(args)
                );
            }
            return Err(e.into());
        }
    };
    if let Some(path) = &args.manifest {
        outcome.manifest.save(path)?;
    }
    if encrypted {
        eprintln!(
            "amiforge: encrypted snapshot: wrote all {} blocks, {} of them all zeros (unwritten blocks of encrypted snapshots do not read back as zeros)",
            outcome.blocks_written, outcome.zero_blocks_written
        );
    }
    Ok(outcome)
}

pub fn upload(args: UploadArgs, show_progress: bool) -> Result<()> {
    let rt = runtime()?;
    let image = upload_source(&args, show_progress)?;
    let outcome = run_upload(&args, image, &[], &rt, show_progress)?;
    match args.format {
        Format::Json => {
            let mut v = serde_json::to_value(&outcome)?;
            if let Some(m) = &args.manifest {
                v["manifest"] = m.display().to_string().into();
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => {
            eprintln!(
                "amiforge: {}: {} of {} blocks written, {} skipped, {:.1} MiB in {:.1} s",
                outcome.snapshot_id,
                outcome.blocks_written,
                outcome.blocks_total,
                outcome.blocks_skipped,
                outcome.bytes_sent as f64 / (1 << 20) as f64,
                outcome.seconds
            );
            println!("{}", outcome.snapshot_id);
        }
    }
    Ok(())
}

/// `amiforge download` arguments.
#[derive(clap::Args, Debug)]
pub struct DownloadArgs {
    /// The completed snapshot.
    pub snapshot: String,
    /// The file to write (sparse, the size of the volume).
    pub out: PathBuf,
    /// Blocks fetched at once.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub aws: AwsArgs,
}

pub fn download(args: DownloadArgs, show_progress: bool) -> Result<()> {
    let rt = runtime()?;
    let reporter = Reporter::new(show_progress, "blocks");
    let outcome = rt.block_on(async {
        let api = args.aws.ebs_client().await?;
        Ok::<_, anyhow::Error>(
            ebs::download(
                api,
                &args.snapshot,
                &args.out,
                args.workers,
                args.aws.retry(),
                reporter.clone(),
            )
            .await?,
        )
    })?;
    reporter.finish();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
        Format::Text => println!(
            "{}: {} blocks ({} GiB volume) written to {}",
            outcome.snapshot_id,
            outcome.blocks,
            outcome.volume_size_gib,
            args.out.display()
        ),
    }
    Ok(())
}

/// `amiforge verify` arguments.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The disk image: raw, qcow2, VMDK, VHD or VHDX.
    pub image: PathBuf,
    /// The completed snapshot to compare it with.
    pub snapshot: String,
    /// Blocks compared at once.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Returns whether every block matched.
pub fn verify(args: VerifyArgs, show_progress: bool) -> Result<bool> {
    let image = crate::input::disk(&args.image)?.source;
    let rt = runtime()?;
    let reporter = Reporter::new(show_progress, "blocks");
    let outcome = rt.block_on(async {
        let api = args.aws.ebs_client().await?;
        Ok::<_, anyhow::Error>(
            ebs::verify(
                api,
                image,
                &args.snapshot,
                args.workers,
                args.aws.retry(),
                reporter.clone(),
            )
            .await?,
        )
    })?;
    reporter.finish();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
        Format::Text => {
            if outcome.mismatches.is_empty() {
                println!(
                    "{}: all {} blocks match {}",
                    args.snapshot,
                    outcome.blocks_compared,
                    show(&args.image)
                );
            } else {
                println!(
                    "{}: {} of {} blocks differ from {}:",
                    args.snapshot,
                    outcome.mismatches.len(),
                    outcome.blocks_compared,
                    show(&args.image)
                );
                for b in &outcome.mismatches {
                    println!("  block {b} (byte offset {})", b * ebs::BLOCK_SIZE);
                }
            }
        }
    }
    Ok(outcome.mismatches.is_empty())
}

fn show(p: &Path) -> String {
    p.display().to_string()
}
