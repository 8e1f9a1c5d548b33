//! Shared helpers of the end-to-end tests: where the fixtures are, how to run the real
//! binary, and how to hash files.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The fixture directory: $AMIFORGE_FIXTURES, or fixtures/build made by
/// scripts/make-fixtures.sh. A missing fixture fails the test: nothing is skipped.
pub fn fixtures() -> PathBuf {
    std::env::var_os("AMIFORGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/build"))
}

pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures().join(name);
    assert!(
        p.exists(),
        "fixture {} is missing: run scripts/make-fixtures.sh",
        p.display()
    );
    p
}

/// Every image the fixture script builds.
pub const ALL_FIXTURES: [&str; 8] = [
    "gpt-uefi.img",
    "gpt-bios.img",
    "gpt-hybrid.img",
    "mbr.img",
    "bare-ext4.img",
    "gpt-4k.img",
    "gpt-corrupt-primary.img",
    "gpt-containers.img",
];

pub fn amiforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_amiforge"))
}

/// Runs amiforge with `args`, failing the test on a panic.
pub fn run(args: &[&std::ffi::OsStr]) -> Output {
    let out = amiforge().args(args).output().expect("amiforge runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "amiforge panicked on {args:?}: {stderr}"
    );
    out
}

/// Runs amiforge and expects success; returns stdout.
pub fn ok(args: &[&str]) -> Vec<u8> {
    let os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let out = run(&os);
    assert!(
        out.status.success(),
        "amiforge {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&ok(args)).expect("valid JSON on stdout")
}

/// Runs a command with a deadline; returns (exit code or None if killed by a signal,
/// stderr), or panics when the deadline passes.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.code(), reader.join().unwrap_or_default());
        }
        if started.elapsed() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("{cmd:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).expect("read");
    format!("{:x}", h.finalize())
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A tool from the system, required: tests never skip because a tool is missing.
pub fn tool(name: &str) -> Command {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Command::new(p);
        }
    }
    panic!("{name} is not installed: the README's test command installs it");
}

pub fn tool_output(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Shows bytes the way amiforge's JSON does: UTF-8 as is, other bytes as \xNN.
pub fn show(b: &[u8]) -> String {
    let mut out = String::new();
    for chunk in b.utf8_chunks() {
        out.push_str(chunk.valid());
        for x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02x}"));
        }
    }
    out
}
