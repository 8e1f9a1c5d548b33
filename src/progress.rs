//! Progress of long work on stderr: a bar on a terminal, a log line every few seconds
//! otherwise (CI logs), nothing with `--no-progress`. One reporter serves the block
//! transfers (upload, download, verify), the bundle commands, the audit and the waits.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often plain progress lines are printed when stderr is not a terminal.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);
/// How often a terminal bar redraws on its own, so elapsed time moves during waits.
const BAR_TICK: Duration = Duration::from_millis(200);

/// Progress of one piece of work: `total` units (blocks, auditors, copies), of which
/// `done` are done and `bytes` bytes moved.
pub struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    show: bool,
    unit: &'static str,
    what: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
    running: Mutex<BTreeSet<String>>,
}

impl Reporter {
    /// A reporter counting `unit`s; `show` false (--no-progress) makes it silent.
    pub fn new(show: bool, unit: &'static str) -> Arc<Self> {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(0);
            let template = format!(
                "{{spinner}} [{{elapsed_precise}}] {{prefix}} {{wide_bar}} {{pos}}/{{len}} {unit} {{msg}}"
            );
            b.set_style(
                indicatif::ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(BAR_TICK);
            b
        });
        Arc::new(Self {
            bar,
            show,
            unit,
            what: Mutex::new(String::new()),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
            running: Mutex::new(BTreeSet::new()),
        })
    }

    /// The work is `what`, `total` units long.
    pub fn start(&self, what: &str, total: u64) {
        *lock(&self.what) = what.to_string();
        self.total.store(total, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_prefix(what.to_string());
            b.set_length(total);
        } else if self.show {
            eprintln!("amiforge: {what}: 0/{total} {}", self.unit);
        }
    }

    /// Names the work before its length is known.
    pub fn label(&self, what: &str) {
        *lock(&self.what) = what.to_string();
        if let Some(b) = &self.bar {
            b.set_prefix(what.to_string());
        }
    }

    /// One unit is done, having moved `bytes` bytes.
    pub fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.update(done);
    }

    fn update(&self, done: u64) {
        let detail = self.detail();
        if let Some(b) = &self.bar {
            b.set_position(done);
            b.set_message(detail);
        } else if self.show {
            let mut last = lock(&self.last_line);
            let total = self.total.load(Ordering::Relaxed);
            if last.elapsed() >= PROGRESS_LINE_EVERY || done == total {
                *last = Instant::now();
                let line = format!(
                    "amiforge: {}: {done}/{total} {} {detail}",
                    lock(&self.what),
                    self.unit
                );
                eprintln!("{}", line.trim_end());
            }
        }
    }

    /// The rate, or what is still running.
    fn detail(&self) -> String {
        let running = lock(&self.running);
        if !running.is_empty() {
            return format!(
                "(running: {})",
                running.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let bytes = self.bytes.load(Ordering::Relaxed);
        if bytes == 0 {
            return String::new();
        }
        let mib = bytes as f64 / (1 << 20) as f64;
        format!(
            "{mib:.1} MiB, {:.1} MiB/s",
            mib / self.started.elapsed().as_secs_f64().max(1e-3)
        )
    }

    /// Prints a line without breaking the bar.
    pub fn say(&self, line: &str) {
        if !self.show {
            return;
        }
        match &self.bar {
            Some(b) => b.println(format!("amiforge: {line}")),
            None => eprintln!("amiforge: {line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ebs::Progress for Reporter {
    fn started(&self, what: &str, blocks: u64) {
        self.start(what, blocks);
    }

    fn block(&self, bytes: u64) {
        self.advance(bytes);
    }

    fn sealing(&self) {
        self.finish();
        self.say("all blocks sent; completing the snapshot");
    }
}

impl audit::Progress for Reporter {
    fn planned(&self, auditors: usize) {
        let what = lock(&self.what).clone();
        self.start(&what, auditors as u64);
    }

    fn started(&self, id: &str) {
        tracing::info!(auditor = id, "started");
        lock(&self.running).insert(id.to_string());
        self.update(self.done.load(Ordering::Relaxed));
    }

    fn finished(&self, id: &str, seconds: f64) {
        tracing::info!(auditor = id, seconds = format!("{seconds:.2}"), "finished");
        lock(&self.running).remove(id);
        self.advance(0);
    }
}
