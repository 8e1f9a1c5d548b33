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

/// An audit report as two reads of the same disk must agree on it: without what
/// names the input or measures time, and without the count of unallocated bytes
/// looked at. That count follows the source's data map (a file's 4 KiB holes, a
/// snapshot's whole 512 KiB blocks, an object's none), so more of the same free space
/// may be read, and found empty.
pub fn comparable_audit(mut v: serde_json::Value) -> serde_json::Value {
    for key in ["image", "auditors"] {
        v.as_object_mut().unwrap().remove(key);
    }
    v["summary"]
        .as_object_mut()
        .unwrap()
        .remove("unallocated_bytes_scanned");
    v
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

/// A tool of the private tool directory scripts/install-deps.sh fills
/// ($AMIFORGE_TOOLS, by default under ~/.cache/amiforge/tools), such as
/// `xfsprogs/bin/mkfs.xfs` (xfsprogs new enough to populate from a directory) or
/// `btrfs-progs/bin/btrfs`; required like any other tool.
pub fn private_tool(rel: &str) -> PathBuf {
    let tools = std::env::var_os("AMIFORGE_TOOLS").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap()).join(".cache/amiforge/tools"),
        PathBuf::from,
    );
    let p = tools.join(rel);
    assert!(
        p.exists(),
        "{} is not installed: the README's test command installs it",
        p.display()
    );
    p
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

/// Writes every file of the ext filesystem in `image` under `into` with debugfs's
/// rdump (an independent reader). debugfs exits 0 even when it could not write some
/// files (a full disk), so anything it says besides its version fails the test: a
/// partial tree would otherwise show up as a wrong comparison further on.
pub fn debugfs_rdump(image: &Path, into: &Path) {
    let dumped = tool("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", into.display()))
        .arg(image)
        .output()
        .expect("tool runs");
    let complaints: Vec<_> = String::from_utf8_lossy(&dumped.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs "))
        .map(str::to_string)
        .collect();
    assert!(
        dumped.status.success() && complaints.is_empty(),
        "debugfs rdump did not write the whole tree: {complaints:?}"
    );
}

/// A copy of `from` at `to` that keeps its holes (`cp --sparse=always`), for tests
/// that damage or plant bytes in an image without touching the fixture.
pub fn sparse_copy(from: &Path, to: &Path) {
    tool_output(tool("cp").arg("--sparse=always").arg(from).arg(to));
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

/// amiforge with dummy credentials and every AWS call sent to `endpoint`.
pub fn amiforge_at(endpoint: &str) -> Command {
    let mut cmd = amiforge();
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    // Tests upload the same fixtures in parallel: each command journals in its own
    // directory (tests of resume pass --state-dir themselves).
    let state = std::env::temp_dir().join(format!(
        "amiforge-state-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    cmd.env("AMIFORGE_STATE_DIR", state);
    cmd
}

/// Uploads `image` (with `extra` arguments) to the service at `endpoint`; the new
/// snapshot's id.
pub fn upload_snapshot(endpoint: &str, image: &Path, extra: &[&str]) -> String {
    let (code, stdout, stderr) = outcome(
        amiforge_at(endpoint)
            .arg("upload")
            .arg(image)
            .args(["--format", "json", "--no-progress"])
            .args(extra),
    );
    assert_eq!(code, Some(0), "upload failed: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    v["snapshot_id"].as_str().unwrap().to_string()
}

/// Runs a prepared command; returns (exit code, stdout, stderr), failing on a panic.
pub fn outcome(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("amiforge runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "amiforge panicked: {stderr}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "amiforge-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const BLOCK: u64 = 524_288;

/// A sparse image of `size` bytes: random data in about half the blocks, explicit
/// zero blocks (allocated, not holes) in some, and holes elsewhere.
pub fn make_image(path: &Path, size: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    let mut rng = fastrand::Rng::with_seed(seed);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let blocks = size.div_ceil(BLOCK);
    let mut buf = vec![0u8; BLOCK as usize];
    for b in 0..blocks {
        let len = (size - b * BLOCK).min(BLOCK) as usize;
        match rng.u8(..10) {
            0..=4 => {
                rng.fill(&mut buf[..len]);
                f.write_all_at(&buf[..len], b * BLOCK).unwrap();
            }
            5 => {
                // A few bytes of data in an otherwise zero block.
                buf[..len].fill(0);
                buf[rng.usize(..len)] = rng.u8(1..);
                f.write_all_at(&buf[..len], b * BLOCK).unwrap();
            }
            6 => f.write_all_at(&vec![0u8; len], b * BLOCK).unwrap(),
            _ => {}
        }
    }
}

/// Asserts that `downloaded` (a whole volume) equals `image` followed by zeros.
pub fn assert_same_padded(image: &Path, downloaded: &Path) {
    use std::io::Read;
    let mut a = std::fs::File::open(image).unwrap();
    let mut b = std::fs::File::open(downloaded).unwrap();
    let image_len = a.metadata().unwrap().len();
    let volume_len = b.metadata().unwrap().len();
    assert!(
        volume_len >= image_len && volume_len.is_multiple_of(1 << 30),
        "volume {volume_len} for image {image_len}"
    );
    let mut x = vec![0u8; 1 << 20];
    let mut y = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < volume_len {
        let n = ((volume_len - at) as usize).min(x.len());
        let from_image = (image_len.saturating_sub(at) as usize).min(n);
        a.read_exact(&mut x[..from_image]).unwrap();
        x[from_image..n].fill(0);
        b.read_exact(&mut y[..n]).unwrap();
        if x[..n] != y[..n] {
            let off = (0..n).find(|&i| x[i] != y[i]).unwrap_or(0) as u64 + at;
            panic!(
                "{} differs from {} at byte {off} (block {})",
                downloaded.display(),
                image.display(),
                off / BLOCK
            );
        }
        at += n as u64;
    }
}

/// A disk's content identity by its definition (the `amiforge:disk-sha256` tag): the
/// SHA-256 of the SHA-256 of each 512 KiB block of the raw disk, the last one
/// zero-padded.
pub fn disk_identity(raw: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(raw).expect("open");
    let mut outer = Sha256::new();
    let mut block = vec![0u8; BLOCK as usize];
    loop {
        block.fill(0);
        let mut n = 0;
        while n < block.len() {
            match f.read(&mut block[n..]).expect("read") {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        outer.update(Sha256::digest(&block));
    }
    format!("{:x}", outer.finalize())
}

/// Converts the raw image `raw` into `out` with qemu-img and `options` (the output
/// format and its options, e.g. `["-O", "qcow2", "-c"]`).
pub fn qemu_convert(raw: &Path, out: &Path, options: &[&str]) {
    tool_output(
        tool("qemu-img")
            .args(["convert", "-f", "raw"])
            .args(options)
            .arg(raw)
            .arg(out),
    );
}

/// A moto server on a free loopback port, stopped on drop.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

pub fn venv() -> PathBuf {
    std::env::var_os("AMIFORGE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/amiforge/venv")
        })
}

impl Moto {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A moto server whose request recorder writes to `log` once
    /// [`Moto::record`] turns it on: moto's own log of every request it served,
    /// headers included.
    pub fn start_recording_to(log: &Path) -> Self {
        Self::start_with(&[("MOTO_RECORDER_FILEPATH", log.as_os_str())])
    }

    /// Turns moto's request recorder on or off.
    pub fn record(&self, on: bool) {
        let action = if on {
            "start-recording"
        } else {
            "stop-recording"
        };
        let url = format!("{}/moto-api/recorder/{action}", self.endpoint);
        let o = Command::new(venv().join("bin/python"))
            .args([
                "-c",
                "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method='POST'))",
                &url,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    fn start_with(env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let server = venv().join("bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: scripts/install-deps.sh installs moto",
            server.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
