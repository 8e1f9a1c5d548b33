//! Secrets in files: every regular file of every readable filesystem, compressed
//! ones decompressed, nothing skipped unless the configuration says so.

use crate::provenance::{Batch, Check};
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
                    let mut batch = Batch::new();
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
                        scan_file(ctx, &**fs, f, &mut batch, &mut mine);
                        let tally = mine.scanned.entry(f.partition).or_default();
                        tally.0 += mine.files_scanned - before.0;
                        tally.1 += mine.bytes_scanned - before.1;
                    }
                    batch.hash(ctx, &mut mine);
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
fn scan_file<'a>(
    ctx: &Context<'a>,
    fs: &dyn Filesystem,
    f: &crate::files::IndexedFile,
    batch: &mut Batch<'a>,
    out: &mut Output,
) {
    let mut check = Check::of(ctx, f.partition, &f.path, f.metadata.size);
    let mut found = Vec::new();
    out.files_scanned += 1;
    let whole = read_and_scan(ctx, fs, f, out, &mut found, check.as_mut(), true);
    match (whole, check) {
        (true, Some(check)) => check.finish(ctx, (f.partition, &f.path), found, batch, out),
        _ => out.findings.extend(found),
    }
}

/// Scans one file into `found`, feeding `check` every byte read (a file read in
/// one go is handed over whole, not copied); says whether the whole file was read.
/// With `decompress`, a compressed file's contents are scanned, not its bytes.
fn read_and_scan(
    ctx: &Context<'_>,
    fs: &dyn Filesystem,
    f: &crate::files::IndexedFile,
    out: &mut Output,
    found: &mut Vec<Finding>,
    mut check: Option<&mut Check<'_>>,
    decompress: bool,
) -> bool {
    let (partition, path) = (f.partition, f.path.as_str());
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
    let mut file = match fs.open_walked(&f.raw_path) {
        Ok(f) => f,
        Err(e) => return not_read(out, e.to_string()),
    };
    // Room for the whole file when it fits in one window (and one byte more, to
    // see its end without growing).
    let capacity = usize::try_from(f.metadata.size.saturating_add(1)).unwrap_or(usize::MAX);
    let mut windows = Windows::new(Vec::with_capacity(capacity.min(CHUNK + OVERLAP)));
    let mut first = true;
    loop {
        let want = windows.room();
        let got = match (&mut file).take(want as u64).read_to_end(&mut windows.buf) {
            Ok(n) => n,
            Err(e) => {
                let at = windows.scanned;
                return not_read(out, format!("read failed after {at} bytes: {e}"));
            }
        };
        let eof = got < want;
        let whole_at_once = first && eof;
        if first {
            first = false;
            match secrets::Compression::detect(&windows.buf) {
                Some(format) if decompress => {
                    let head = std::mem::take(&mut windows.buf);
                    let opened = Opened {
                        format,
                        head,
                        head_is_whole: eof,
                        rest: file,
                    };
                    return scan_compressed(ctx, fs, f, opened, out, found, check);
                }
                _ => {}
            }
        }
        if let (false, Some(c)) = (whole_at_once, check.as_deref_mut()) {
            c.update(&windows.buf[windows.buf.len() - got..]);
        }
        windows.scan(ctx, eof, |m, lines_before| {
            found.push(secret_finding(m, partition, path, lines_before));
        });
        if eof {
            out.bytes_scanned += windows.scanned;
            if let (true, Some(c)) = (whole_at_once, check) {
                c.whole(windows.buf);
            }
            return true;
        }
    }
}

/// A stream scanned in windows of [`CHUNK`] bytes, each with the [`OVERLAP`]
/// bytes before it, so that a secret across two windows is seen whole.
struct Windows {
    /// The window: the overlap carried over, then what was read since.
    buf: Vec<u8>,
    /// Newlines before `buf[0]`.
    lines_before: u64,
    /// Bytes scanned and passed (the stream offset of `buf[0]`).
    scanned: u64,
}

impl Windows {
    fn new(buf: Vec<u8>) -> Self {
        Windows {
            buf,
            lines_before: 0,
            scanned: 0,
        }
    }

    /// Bytes to read to fill the window.
    fn room(&self) -> usize {
        CHUNK + OVERLAP - self.buf.len()
    }

    /// Scans the window. Unless it is the `last`, matches starting in its last
    /// [`OVERLAP`] bytes are left for the next window, which sees them whole and
    /// starts with those bytes.
    fn scan(
        &mut self,
        ctx: &Context<'_>,
        last: bool,
        mut report: impl FnMut(&secrets::Match, u64),
    ) {
        let report_below = if last {
            self.buf.len()
        } else {
            self.buf.len().saturating_sub(OVERLAP)
        };
        for m in ctx.scanner.scan(&self.buf) {
            if (m.offset as usize) < report_below {
                report(&m, self.lines_before);
            }
        }
        self.scanned += report_below as u64;
        if !last {
            let passed = &self.buf[..report_below];
            self.lines_before += memchr::memchr_iter(b'\n', passed).count() as u64;
            self.buf.drain(..report_below);
        }
    }
}

/// A reader that shows each byte it passes on to a package file's check.
struct Tee<'r, 'c, 'a> {
    inner: &'r mut dyn Read,
    check: Option<&'c mut Check<'a>>,
}

impl Read for Tee<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = self.check.as_deref_mut() {
            c.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A compressed file, opened: its format, the bytes already read and the rest.
struct Opened<'f> {
    format: secrets::Compression,
    head: Vec<u8>,
    /// The bytes already read are the whole file.
    head_is_whole: bool,
    rest: Box<dyn Read + 'f>,
}

/// Scans what a compressed file decompresses to, window by window as it is
/// decompressed (never the whole of it in memory), up to
/// `limits.max_decompressed_bytes`. Every byte of the file goes to `check`, those
/// the decoder did not need too: a file read whole at once is handed over whole
/// afterwards, without a copy, and a larger one as it is read. Damaged data is
/// scanned as it is, after what could be decompressed. Says whether the whole
/// file was read.
fn scan_compressed(
    ctx: &Context<'_>,
    fs: &dyn Filesystem,
    f: &crate::files::IndexedFile,
    opened: Opened<'_>,
    out: &mut Output,
    found: &mut Vec<Finding>,
    check: Option<&mut Check<'_>>,
) -> bool {
    let Opened {
        format,
        head,
        head_is_whole,
        rest,
    } = opened;
    let (mut check, whole_check) = if head_is_whole {
        (None, check)
    } else {
        (check, None)
    };
    let limits = ctx.config.limits;
    let (partition, path) = (f.partition, f.path.as_str());
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
    let too_large = format!(
        "compressed file larger than {} bytes (limits.max_compressed_bytes)",
        limits.max_compressed_bytes
    );
    if f.metadata.size > limits.max_compressed_bytes {
        return not_read(out, too_large);
    }
    let mut input = std::io::Cursor::new(head)
        .chain(rest)
        .take(limits.max_compressed_bytes + 1);
    let mut windows = Windows::new(Vec::new());
    let decoded = {
        let tee = Tee {
            inner: &mut input,
            check: check.as_deref_mut(),
        };
        secrets::decoder(format, tee).and_then(|mut decoder| {
            decode_and_scan(
                ctx,
                &mut decoder,
                format,
                &mut windows,
                partition,
                path,
                found,
            )
        })
    };
    out.bytes_scanned += windows.scanned;
    // What the decoder did not read (past the limit, or after damage) is hashed too.
    let mut tee = Tee {
        inner: &mut input,
        check,
    };
    if let Err(e) = std::io::copy(&mut tee, &mut std::io::sink()) {
        return not_read(out, format!("read failed: {e}"));
    }
    if input.limit() == 0 {
        return not_read(out, too_large);
    }
    if let Some(c) = whole_check {
        c.whole(input.into_inner().into_inner().0.into_inner());
    }
    match decoded {
        Ok(false) => {}
        Ok(true) => {
            not_read(
                out,
                format!(
                    "{} data scanned only up to {} bytes (limits.max_decompressed_bytes)",
                    format.name(),
                    limits.max_decompressed_bytes
                ),
            );
        }
        // A damaged stream still gets its raw bytes scanned.
        Err(e) => {
            not_read(out, e.to_string());
            read_and_scan(ctx, fs, f, out, found, None, false);
        }
    }
    true
}

/// Reads `decoder` to its end, or to `limits.max_decompressed_bytes`, scanning it
/// in `windows`; says whether the limit cut it.
fn decode_and_scan(
    ctx: &Context<'_>,
    decoder: &mut dyn Read,
    format: secrets::Compression,
    windows: &mut Windows,
    partition: u32,
    path: &str,
    found: &mut Vec<Finding>,
) -> Result<bool, secrets::DecompressError> {
    let limit = ctx.config.limits.max_decompressed_bytes;
    let mut report = |m: &secrets::Match, lines_before: u64| {
        let mut f = secret_finding(m, partition, path, lines_before);
        f.title = format!("{} (in {} data)", f.title, format.name());
        found.push(f);
    };
    let mut total = 0u64; // decompressed bytes read
    loop {
        // One byte past the limit, to know whether the data goes on.
        let want = (windows.room() as u64).min((limit + 1).saturating_sub(total));
        let read = decoder.take(want).read_to_end(&mut windows.buf);
        let got = match read {
            Ok(n) => n as u64,
            Err(source) => {
                // What was decompressed before the damage is scanned.
                windows.scan(ctx, true, &mut report);
                return Err(secrets::DecompressError::Corrupt {
                    format: format.name(),
                    source,
                });
            }
        };
        total += got;
        let cut = total > limit;
        if cut {
            windows.buf.pop();
        }
        let last = got < want || cut;
        windows.scan(ctx, last, &mut report);
        if last {
            return Ok(cut);
        }
    }
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
        shipped_by: None,
        allowed_by: None,
        vulnerability: None,
    }
}
