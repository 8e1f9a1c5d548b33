//! The commands that move blocks: upload, download, verify.

use crate::Format;
use anyhow::{bail, Context, Result};
use blockio::{BlockSource, FileSource};
use ebs::{Manifest, Progress, RetryPolicy, UploadOptions};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The standard AWS settings every command that talks to AWS takes.
#[derive(clap::Args, Debug, Clone)]
pub struct AwsArgs {
    /// AWS region (default: AWS_REGION or the profile's region).
    #[arg(long)]
    pub region: Option<String>,
    /// Named profile from ~/.aws/config (default: AWS_PROFILE or "default").
    #[arg(long)]
    pub profile: Option<String>,
    /// Endpoint URL for every service (default: AWS_ENDPOINT_URL), e.g. a local test server.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Seconds before one attempt of one call is abandoned and retried.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub attempt_timeout: u64,
    /// Attempts per call, the first included.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
}

impl AwsArgs {
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            attempt_timeout: Duration::from_secs(self.attempt_timeout.max(1)),
            ..RetryPolicy::default()
        }
    }

    pub fn options(&self) -> awsapi::AwsOptions {
        awsapi::AwsOptions {
            region: self.region.clone(),
            profile: self.profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
        }
    }

    async fn client(&self) -> Result<Arc<awsapi::SdkEbs>> {
        let config = awsapi::load(&self.options()).await?;
        Ok(Arc::new(awsapi::SdkEbs::new(&config)))
    }

    /// These settings as command-line arguments, for the resume command.
    fn as_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (flag, v) in [
            ("--region", &self.region),
            ("--profile", &self.profile),
            ("--endpoint-url", &self.endpoint_url),
        ] {
            if let Some(v) = v {
                a.push(flag.to_string());
                a.push(v.clone());
            }
        }
        a
    }
}

/// `amiforge upload` arguments.
#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    /// The raw disk image, or a bundle directory made by `amiforge bundle`.
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
    /// Where the resume journal lives (default: beside the image).
    #[arg(long, value_name = "DIR", env = "AMIFORGE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// No progress bar or progress log lines.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

pub fn parse_tags(tags: &[String]) -> Result<Vec<(String, String)>> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--tag {t:?} is not KEY=VALUE"),
        })
        .collect()
}

/// Progress on stderr: a bar on a terminal, periodic log lines otherwise.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    total: AtomicU64,
    done: AtomicU64,
    sent: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
}

/// How often plain progress lines are printed when stderr is not a terminal.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

impl Reporter {
    fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} blocks {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Self {
            bar,
            quiet,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }

    fn rate(&self) -> f64 {
        self.sent.load(Ordering::Relaxed) as f64
            / (1 << 20) as f64
            / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for Reporter {
    fn started(&self, snapshot_id: &str, blocks: u64) {
        self.total.store(blocks, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(blocks);
        } else if !self.quiet {
            eprintln!("amiforge: {snapshot_id}: looking at {blocks} blocks");
        }
    }

    fn block(&self, bytes: u64) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.sent.fetch_add(bytes, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_position(done);
            b.set_message(format!("{:.1} MiB/s", self.rate()));
        } else if !self.quiet {
            let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= PROGRESS_LINE_EVERY {
                *last = Instant::now();
                eprintln!(
                    "amiforge: {done}/{} blocks, {:.1} MiB sent, {:.1} MiB/s",
                    self.total.load(Ordering::Relaxed),
                    self.sent.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
                    self.rate()
                );
            }
        }
    }

    fn sealing(&self) {
        self.finish();
        if !self.quiet {
            eprintln!("amiforge: all blocks sent; completing the snapshot");
        }
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
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

/// Runs an upload and reports the pending snapshot on failure; prints nothing else.
pub fn run_upload(
    args: &UploadArgs,
    extra_tags: &[(String, String)],
    rt: &tokio::runtime::Runtime,
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
    // A bundle is verified whole before anything is sent; its blocks are then checked
    // again against the manifest as they are read.
    let image: Arc<dyn BlockSource> = if crate::bundle::is_bundle(&args.image) {
        let b = crate::bundle::open_verified(&args.image, args.public_key.as_deref())?;
        Arc::new(bundle::BundleSource::new(b))
    } else {
        Arc::new(
            FileSource::open(&args.image)
                .with_context(|| format!("cannot upload {}", args.image.display()))?,
        )
    };
    let journal_path = ebs::Journal::path_for(&args.image, args.state_dir.as_deref());
    if let Some(d) = &args.state_dir {
        std::fs::create_dir_all(d)
            .with_context(|| format!("cannot create --state-dir {}", d.display()))?;
    }
    if !args.resume && journal_path.exists() {
        tracing::warn!(
            "{} records an unfinished upload; starting a new one (use --resume to continue it instead)",
            journal_path.display()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = Arc::new(Reporter::new(args.no_progress));
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
    };
    let result = rt.block_on(async {
        let api = args.aws.client().await?;
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

pub fn upload(args: UploadArgs) -> Result<()> {
    let rt = runtime()?;
    let outcome = run_upload(&args, &[], &rt)?;
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

pub fn download(args: DownloadArgs) -> Result<()> {
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        let api = args.aws.client().await?;
        Ok::<_, anyhow::Error>(
            ebs::download(
                api,
                &args.snapshot,
                &args.out,
                args.workers,
                args.aws.retry(),
            )
            .await?,
        )
    })?;
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
    /// The raw disk image.
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
pub fn verify(args: VerifyArgs) -> Result<bool> {
    let image: Arc<dyn BlockSource> = Arc::new(FileSource::open(&args.image)?);
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        let api = args.aws.client().await?;
        Ok::<_, anyhow::Error>(
            ebs::verify(api, image, &args.snapshot, args.workers, args.aws.retry()).await?,
        )
    })?;
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
