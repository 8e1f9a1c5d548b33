//! Secrets in files: every regular file of every readable filesystem, compressed
//! ones decompressed, nothing skipped unless the configuration says so.

use crate::provenance::Check;
use crate::{Auditor, Category, Context, Finding, Gap, NotExamined, Output};
use imagefs::Filesystem;
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bytes read from a file at a time.
pub(crate) const CHUNK: usize = 8 << 20;
/// Bytes carried from one chunk into the next, so a secret split by a chunk boundary
/// is still seen whole: more than the largest PEM key (an RSA-8192 key is ~6.3 KB).
pub(crate) const OVERLAP: usize = 64 << 10;

/// Files at least this large are scanned first, largest first.
const BIG_FILE: u64 = 16 << 20;

pub(crate) struct SecretsAuditor;

impl Auditor for SecretsAuditor {
    fn id(&self) -> &'static str {
        "secrets"
    }
    fn version(&self) -> &'static str {
        "2"
    }
    fn run(&self, ctx: &Context<'_>) -> Result<Output, String> {
        let mut files: Vec<_> = ctx.files.scannable().collect();
        // Big files first, largest first, so that one does not finish last on its
        // own; the rest in walk order, which keeps reads near each other on disk (a
        // remote source's cache holds what the neighbours need next).
        files.sort_by_key(|f| std::cmp::Reverse(f.metadata.size.max(BIG_FILE) - BIG_FILE));
        let next = AtomicUsize::new(0);
        let out = Mutex::new(Output::default());
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let mut mine = Output::default();
                    let mut open: HashMap<u32, Option<Box<dyn Filesystem>>> = HashMap::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = files.get(i) else { break };
                        let fs = open
                            .entry(f.partition)
                            .or_insert_with(|| ctx.image.filesystem(f.partition).ok());
                        let Some(fs) = fs else {
                            mine.not_examined.push(NotExamined {
                                kind: Gap::File,
                                partition: Some(f.partition),
                                what: f.path.clone(),
                                reason: "its filesystem could not be opened again".into(),
                            });
                            continue;
                        };
                        let before = (mine.files_scanned, mine.bytes_scanned);
                        scan_file(ctx, &**fs, f.partition, &f.raw_path, &f.path, &mut mine);
                        let tally = mine.scanned.entry(f.partition).or_default();
                        tally.0 += mine.files_scanned - before.0;
                        tally.1 += mine.bytes_scanned - before.1;
                    }
                    let mut all = out.lock().unwrap_or_else(|p| p.into_inner());
                    all.findings.extend(mine.findings);
                    all.not_examined.extend(mine.not_examined);
                    all.files_scanned += mine.files_scanned;
                    all.bytes_scanned += mine.bytes_scanned;
                    for (partition, (files, bytes)) in mine.scanned {
                        let tally = all.scanned.entry(partition).or_default();
                        tally.0 += files;
                        tally.1 += bytes;
                    }
                });
            }
        });
        Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Scans one file; when a package ships it, also checks its bytes against the
/// package's digest (see [`Check`]), from the same reads.
fn scan_file(
    ctx: &Context<'_>,
    fs: &dyn Filesystem,
    partition: u32,
    raw: &[u8],
    path: &str,
    out: &mut Output,
) {
    let mut check = Check::of(ctx, partition, path);
    let mut found = Vec::new();
    let whole = read_and_scan(
        ctx,
        fs,
        partition,
        raw,
        path,
        out,
        &mut found,
        check.as_mut(),
    );
    if let (true, Some(check)) = (whole, check) {
        check.finish(ctx, partition, path, &mut found);
    }
    out.findings.extend(found);
}

/// Scans one file into `found`, feeding `check` every byte read; says whether the
/// whole file was read.
#[allow(clippy::too_many_arguments)]
fn read_and_scan(
    ctx: &Context<'_>,
    fs: &dyn Filesystem,
    partition: u32,
    raw: &[u8],
    path: &str,
    out: &mut Output,
    found: &mut Vec<Finding>,
    mut check: Option<&mut Check<'_>>,
) -> bool {
    // Records why the file was not read whole, and says so (false).
    let not_read = |out: &mut Output, reason: String| {
        out.not_examined.push(NotExamined {
            kind: Gap::File,
            partition: Some(partition),
            what: path.to_string(),
            reason,
        });
        false
    };
    let mut file = match fs.open_walked(raw) {
        Ok(f) => f,
        Err(e) => return not_read(out, e.to_string()),
    };
    let limits = ctx.config.limits;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + OVERLAP);
    let mut base = 0u64; // file offset of buf[0]
    let mut lines_before = 0u64; // newlines before buf[0]
    let mut first = true;
    out.files_scanned += 1;
    loop {
        let want = CHUNK + OVERLAP - buf.len();
        let got = match (&mut file).take(want as u64).read_to_end(&mut buf) {
            Ok(n) => n,
            Err(e) => return not_read(out, format!("read failed after {base} bytes: {e}")),
        };
        if let Some(c) = check.as_deref_mut() {
            c.update(&buf[buf.len() - got..]);
        }
        let eof = got < want;
        if first {
            first = false;
            if secrets::Compression::detect(&buf).is_some() {
                return scan_compressed(ctx, file, buf, partition, path, out, found, check, limits);
            }
        }
        // Matches starting in the carried-over tail are left for the next round,
        // where they are seen whole.
        let report_below = if eof { buf.len() } else { buf.len() - OVERLAP };
        for m in ctx.scanner.scan(&buf) {
            if (m.offset as usize) < report_below {
                found.push(secret_finding(&m, partition, path, lines_before));
            }
        }
        out.bytes_scanned += (report_below) as u64;
        if eof {
            return true;
        }
        lines_before += memchr::memchr_iter(b'\n', &buf[..report_below]).count() as u64;
        buf.drain(..report_below);
        base += report_below as u64;
    }
}

/// Reads the rest of a compressed file (feeding `check`) and scans what it
/// decompresses to; says whether the whole file was read.
#[allow(clippy::too_many_arguments)]
fn scan_compressed(
    ctx: &Context<'_>,
    mut rest: Box<dyn Read + '_>,
    mut head: Vec<u8>,
    partition: u32,
    path: &str,
    out: &mut Output,
    found: &mut Vec<Finding>,
    check: Option<&mut Check<'_>>,
    limits: crate::config::Limits,
) -> bool {
    // Records what was not read, and says the file was not read whole (false).
    let not_read = |out: &mut Output, reason: String| {
        out.not_examined.push(NotExamined {
            kind: Gap::CompressedFile,
            partition: Some(partition),
            what: path.to_string(),
            reason,
        });
        false
    };
    let room = limits
        .max_compressed_bytes
        .saturating_sub(head.len() as u64);
    let hashed = head.len();
    if let Err(e) = (&mut rest).take(room + 1).read_to_end(&mut head) {
        return not_read(out, format!("read failed: {e}"));
    }
    if head.len() as u64 > limits.max_compressed_bytes {
        return not_read(
            out,
            format!(
                "compressed file larger than {} bytes (limits.max_compressed_bytes)",
                limits.max_compressed_bytes
            ),
        );
    }
    if let Some(c) = check {
        c.update(&head[hashed..]);
    }
    match secrets::decompress(&head, limits.max_decompressed_bytes) {
        Ok(Some(d)) => {
            out.bytes_scanned += d.data.len() as u64;
            for m in ctx.scanner.scan(&d.data) {
                let mut f = secret_finding(&m, partition, path, 0);
                f.title = format!("{} (in {} data)", f.title, d.format.name());
                found.push(f);
            }
            if d.truncated {
                not_read(
                    out,
                    format!(
                        "{} data scanned only up to {} bytes (limits.max_decompressed_bytes)",
                        d.format.name(),
                        limits.max_decompressed_bytes
                    ),
                );
            }
        }
        Ok(None) => {}
        // A corrupt stream still gets its raw bytes scanned.
        Err(e) => {
            not_read(out, e.to_string());
            for m in ctx.scanner.scan(&head) {
                found.push(secret_finding(&m, partition, path, 0));
            }
        }
    }
    true
}

pub(crate) fn secret_finding(
    m: &secrets::Match,
    partition: u32,
    path: &str,
    lines_before: u64,
) -> Finding {
    Finding {
        rule: format!("secret.{}", m.rule.id),
        title: m.rule.title.to_string(),
        category: Category::Secret,
        severity: m.rule.severity,
        partition: Some(partition),
        path: Some(path.to_string()),
        line: Some(lines_before + m.line),
        offset: None,
        excerpt: Some(m.excerpt.clone()),
        fingerprint: m.fingerprint.clone(),
        allowed_by: None,
        vulnerability: None,
    }
}
