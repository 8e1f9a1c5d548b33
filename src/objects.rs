//! S3 as a home for what amiforge writes, and for bundles: a report or SBOM given
//! `--output s3://bucket/key` is put as one object; a bundle given
//! `--out s3://bucket/prefix/` is made in a local staging directory and its files put
//! as objects under the prefix (multipart, each part carrying its SHA-256, so S3
//! checks every part), the manifest last so that a bundle cut short is not one; and a
//! bundle under an S3 prefix is read back in place, its files as `awsapi::S3Source`s.
//! Every object amiforge writes carries what it describes in its metadata.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

/// 1 MiB chunks of a bundled file fetched at once when reads go forward.
const BUNDLE_READ_AHEAD: usize = 8;

/// The S3 URL `path` spells, if it is one.
pub fn s3_url(path: &Path) -> Option<&str> {
    path.to_str().filter(|p| p.starts_with("s3://"))
}

/// Writes `bytes` (a report, an SBOM) to `output`: stdout when there is none, an
/// object when it is an S3 URL (its metadata naming `image`), else a file.
pub fn deliver(output: Option<&Path>, bytes: &[u8], image: &Path) -> Result<()> {
    use std::io::Write;
    match output {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()?;
        }
        Some(path) => match s3_url(path) {
            Some(url) => {
                let target = awsapi::ObjectTarget {
                    url: url.to_string(),
                    metadata: vec![("amiforge-image".into(), image.display().to_string())],
                };
                let (client, runtime, retry) = s3()?;
                runtime.block_on(awsapi::put_bytes(
                    &client,
                    &target,
                    bytes.to_vec().into(),
                    &retry,
                ))?;
                tracing::info!(object = url, bytes = bytes.len(), "report written");
            }
            None => std::fs::write(path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?,
        },
    }
    Ok(())
}

/// The S3 client, the runtime it runs on and the retry policy, from the command's
/// AWS settings.
fn s3() -> Result<(
    awsapi::S3Client,
    &'static tokio::runtime::Runtime,
    ebs::RetryPolicy,
)> {
    let (config, runtime, retry) = crate::input::aws_config()?;
    Ok((awsapi::s3_client(&config), runtime, retry))
}

/// The files of a bundle under an S3 prefix, read in place.
pub struct S3Store {
    prefix: String,
    config: awsapi::SdkConfig,
    runtime: tokio::runtime::Handle,
    retry: ebs::RetryPolicy,
}

impl S3Store {
    /// The bundle under `url` (`s3://bucket/prefix`, with or without the final `/`).
    pub fn new(url: &str) -> Result<Self> {
        let prefix = url.trim_end_matches('/').to_string();
        if awsapi::parse_s3_url(&format!("{prefix}/{}", bundle::MANIFEST)).is_none() {
            bail!("{url}: not an s3://bucket/prefix URL");
        }
        let (config, runtime, retry) = crate::input::aws_config()?;
        Ok(Self {
            prefix,
            config,
            runtime: runtime.handle().clone(),
            retry,
        })
    }
}

impl bundle::Store for S3Store {
    fn location(&self) -> String {
        self.prefix.clone()
    }

    fn open(
        &self,
        name: &str,
    ) -> std::result::Result<Option<Arc<dyn blockio::BlockSource>>, blockio::Error> {
        let url = format!("{}/{name}", self.prefix);
        match awsapi::S3Source::open(
            &self.config,
            self.runtime.clone(),
            &url,
            None,
            BUNDLE_READ_AHEAD,
            self.retry,
        ) {
            Ok(source) => Ok(Some(Arc::new(source))),
            Err(e) if e.kind == ebs::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(blockio::Error::Remote {
                name: url,
                offset: 0,
                len: 0,
                reason: e.to_string(),
            }),
        }
    }
}

/// Whether the S3 prefix `url` holds a bundle (its manifest).
pub fn is_bundle_in_s3(url: &str) -> bool {
    S3Store::new(url)
        .ok()
        .is_some_and(|store| matches!(bundle::Store::open(&store, bundle::MANIFEST), Ok(Some(_))))
}

/// Puts the bundle made in `dir` under the S3 prefix `url`, the manifest last; every
/// object's metadata carries the manifest's SHA-256 and the image's block aggregate.
pub fn put_bundle(dir: &Path, url: &str, created: &bundle::Created) -> Result<()> {
    let prefix = url.trim_end_matches('/');
    let (client, runtime, retry) = s3()?;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    // The manifest goes last: until it is there, the prefix is not a bundle.
    names.sort_by_key(|n| (n == bundle::MANIFEST, n.clone()));
    for name in names {
        let target = awsapi::ObjectTarget {
            url: format!("{prefix}/{name}"),
            metadata: vec![
                (
                    "amiforge-manifest-sha256".into(),
                    created.manifest_sha256.clone(),
                ),
                ("amiforge-image-aggregate".into(), created.aggregate.clone()),
            ],
        };
        tracing::info!(object = %target.url, "writing");
        runtime.block_on(awsapi::put_file(&client, &target, &dir.join(&name), &retry))?;
    }
    Ok(())
}

/// How often an upload journal kept in S3 is copied there while the upload runs:
/// a runner killed outright loses at most this much of its confirmations (those
/// blocks are sent again on resume).
const JOURNAL_SYNC: std::time::Duration = std::time::Duration::from_secs(5);

/// An upload journal that lives in S3 (`--state-dir s3://bucket/prefix/`), so that
/// an upload interrupted on one CI runner resumes on another. The uploader keeps
/// its journal in a local working copy; this copies it to the object every
/// [`JOURNAL_SYNC`] while it changes, and once more at the end (or deletes the
/// object when the upload completed and the journal is gone).
pub struct JournalMirror {
    target: awsapi::ObjectTarget,
    local: std::path::PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JournalMirror {
    /// Mirrors the journal at `local` to the object named like it under `prefix`;
    /// when resuming, fetches that object to `local` first.
    pub fn start(prefix: &str, local: &Path, resume: bool) -> Result<Self> {
        let name = local
            .file_name()
            .context("the journal has no file name")?
            .to_string_lossy();
        let target = awsapi::ObjectTarget {
            url: format!("{}/{name}", prefix.trim_end_matches('/')),
            metadata: Vec::new(),
        };
        if resume {
            fetch(&target.url, local)?;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (stop, local, url) = (stop.clone(), local.to_path_buf(), target.url.clone());
            move || {
                let mut last = None;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::park_timeout(JOURNAL_SYNC);
                    let now = std::fs::metadata(&local)
                        .ok()
                        .map(|m| (m.len(), m.modified().ok()));
                    if now.is_some() && now != last {
                        match put_journal(&url, &local) {
                            Ok(()) => last = now,
                            Err(e) => {
                                tracing::warn!("the journal could not be copied to {url}: {e:#}")
                            }
                        }
                    }
                }
            }
        });
        tracing::info!(journal = %target.url, "the upload journal is kept in S3");
        Ok(Self {
            target,
            local: local.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops copying; leaves the object holding the final journal, or deletes it
    /// when the upload completed (the uploader removed the journal).
    pub fn finish(mut self) -> Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        if self.local.exists() {
            put_journal(&self.target.url, &self.local)
        } else {
            let (client, runtime, retry) = s3()?;
            runtime.block_on(awsapi::delete_object(&client, &self.target, &retry))?;
            Ok(())
        }
    }
}

fn put_journal(url: &str, local: &Path) -> Result<()> {
    let (client, runtime, retry) = s3()?;
    let target = awsapi::ObjectTarget {
        url: url.to_string(),
        metadata: Vec::new(),
    };
    runtime.block_on(awsapi::put_file(&client, &target, local, &retry))?;
    Ok(())
}

/// Copies the object `url` to the file `out`, 1 MiB at a time.
fn fetch(url: &str, out: &Path) -> Result<()> {
    use std::io::Write;
    let (config, runtime, retry) = crate::input::aws_config()?;
    let source = awsapi::S3Source::open(&config, runtime.handle().clone(), url, None, 4, retry)
        .with_context(|| format!("no upload journal to resume from at {url}"))?;
    let mut file =
        std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut buf = vec![0u8; awsapi::S3_CHUNK as usize];
    let mut at = 0;
    while at < blockio::BlockSource::len(&source) {
        let n = (blockio::BlockSource::len(&source) - at).min(buf.len() as u64) as usize;
        blockio::BlockSource::read_exact_at(&source, &mut buf[..n], at)?;
        file.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}
