//! Images read in place from S3 (`s3://bucket/key`), from moto's S3: an independent
//! implementation of the API, written to with boto3's multipart upload. The results
//! equal those of the local file.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

/// Puts `file` at `key` with boto3, returning the new version's id.
fn put(moto: &Moto, bucket: &str, key: &str, file: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/s3_put.py");
    let o = std::process::Command::new(venv().join("bin/python"))
        .arg(script)
        .args([&moto.endpoint, bucket, key])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "boto3 put failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn json_of(cmd: &mut std::process::Command) -> (Value, String) {
    let (code, stdout, stderr) = outcome(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    (serde_json::from_str(&stdout).unwrap(), stderr)
}

#[test]
fn an_image_in_s3_inspects_and_audits_like_the_local_file() {
    let moto = Moto::start();
    let image = fixture("gpt-uefi.img");
    put(&moto, "images", "nightly/gpt-uefi.img", &image);
    let url = "s3://images/nightly/gpt-uefi.img";

    let (local, _) = json_of(
        amiforge()
            .arg("inspect")
            .arg(&image)
            .args(["--format", "json"]),
    );
    let (remote, stderr) =
        json_of(amiforge_at(&moto.endpoint).args(["inspect", url, "--format", "json", "-v"]));
    for key in ["partitions", "os", "boot_mode", "kernels", "architecture"] {
        assert_eq!(remote[key], local[key], "{key}");
    }
    // Range reads: inspect of a 200 MiB image fetches a few MiB, not the object.
    let fetched: u64 = stderr
        .lines()
        .find_map(|l| l.split("bytes_fetched=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the source reports what it fetched: {stderr}"));
    assert!(fetched > 0 && fetched < 16 << 20, "fetched {fetched} bytes");

    let audit = |cmd: &mut std::process::Command| {
        comparable_audit(json_of(cmd.args(["--format", "json", "--fail-on", "none"])).0)
    };
    assert_eq!(
        audit(amiforge_at(&moto.endpoint).args(["audit", url])),
        audit(amiforge().arg("audit").arg(&image))
    );
    let (code, stdout, stderr) =
        outcome(amiforge_at(&moto.endpoint).args(["cat", url, "/etc/hostname"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "fixture-host\n");
    let components = |cmd: &mut std::process::Command| json_of(cmd).0["components"].clone();
    assert_eq!(
        components(amiforge_at(&moto.endpoint).args(["sbom", url])),
        components(amiforge().arg("sbom").arg(&image)),
        "the SBOM lists the same packages"
    );
}

#[test]
fn version_id_reads_an_earlier_version_of_the_object() {
    let moto = Moto::start();
    let first = put(&moto, "images", "nightly.img", &fixture("gpt-uefi.img"));
    put(&moto, "images", "nightly.img", &fixture("gpt-bios.img"));
    let url = "s3://images/nightly.img";
    let partitions = |cmd: &mut std::process::Command| {
        json_of(cmd.args(["--format", "json"])).0["partitions"].clone()
    };
    let local_first = partitions(amiforge().arg("inspect").arg(fixture("gpt-uefi.img")));
    let local_now = partitions(amiforge().arg("inspect").arg(fixture("gpt-bios.img")));
    assert_ne!(local_first, local_now, "the two versions differ");
    assert_eq!(
        partitions(amiforge_at(&moto.endpoint).args(["inspect", url])),
        local_now
    );
    assert_eq!(
        partitions(amiforge_at(&moto.endpoint).args(["inspect", url, "--version-id", &first])),
        local_first
    );

    let (code, _, stderr) = outcome(
        amiforge()
            .arg("inspect")
            .arg(fixture("gpt-uefi.img"))
            .args(["--version-id", &first]),
    );
    assert_eq!(code, Some(2), "a local file has no versions: {stderr}");
    assert!(stderr.contains("--version-id"), "{stderr}");
}

/// The bytes moto's request log says GetObject calls on `key` asked for: the
/// length of each Range, or the whole object for a GET without one.
fn bytes_requested(log: &Path, key: &str, object_size: u64) -> (u64, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut requests, mut bytes) = (0, 0);
    for line in text.lines() {
        let entry: Value = serde_json::from_str(line).unwrap();
        let url = entry["url"].as_str().unwrap_or_default();
        if entry["method"] != "GET" || !url.split('?').next().unwrap().ends_with(key) {
            continue;
        }
        requests += 1;
        let headers = entry["headers"].as_object().unwrap();
        let range = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("range"))
            .and_then(|(_, v)| v.as_str());
        bytes += match range.and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let a: u64 = a.parse().unwrap();
                let b: u64 = b
                    .parse::<u64>()
                    .unwrap_or(object_size - 1)
                    .min(object_size - 1);
                b + 1 - a
            }
            None => object_size,
        };
    }
    (requests, bytes)
}

#[test]
fn inspect_of_a_4_gib_image_in_s3_fetches_less_than_16_mib_by_the_servers_log() {
    let dir = Scratch::new("s3-4gib");
    let log = dir.path("requests.jsonl");
    let moto = Moto::start_recording_to(&log);
    let image = dir.path("big.img");
    let size: u64 = 4 << 30;
    std::fs::copy(fixture("gpt-uefi.img"), &image).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(size)
        .unwrap();
    // The backup GPT moves to the new end of the disk.
    let o = std::process::Command::new("sgdisk")
        .arg("-e")
        .arg(&image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    put(&moto, "images", "big.img", &image);

    moto.record(true);
    let (remote, _) = json_of(amiforge_at(&moto.endpoint).args([
        "inspect",
        "s3://images/big.img",
        "--format",
        "json",
    ]));
    moto.record(false);
    let (local, _) = json_of(
        amiforge()
            .arg("inspect")
            .arg(&image)
            .args(["--format", "json"]),
    );
    assert_eq!(remote["partitions"], local["partitions"]);
    assert_eq!(remote["os"], local["os"]);

    let (requests, bytes) = bytes_requested(&log, "big.img", size);
    eprintln!("inspect: {requests} GetObject calls, {bytes} bytes");
    assert!(requests > 0, "the log recorded the GetObject calls");
    assert!(
        bytes < 16 << 20,
        "{requests} GetObject calls asked for {bytes} bytes of a {size}-byte object"
    );
}

#[test]
fn a_missing_object_stops_at_once_naming_bucket_and_key() {
    let moto = Moto::start();
    put(&moto, "images", "present.img", &fixture("gpt-uefi.img"));
    let (code, _, stderr) =
        outcome(amiforge_at(&moto.endpoint).args(["inspect", "s3://images/absent.img"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("s3://images/absent.img"), "{stderr}");
    assert!(!stderr.contains("attempt 2"), "not retried: {stderr}");
}

#[test]
fn container_images_in_s3_read_like_the_local_file() {
    let moto = Moto::start();
    let dir = Scratch::new("s3-containers");
    let raw = fixture("gpt-uefi.img");
    let (local, _) = json_of(
        amiforge()
            .arg("inspect")
            .arg(&raw)
            .args(["--format", "json"]),
    );
    for (name, args) in [
        ("disk.qcow2", &["-O", "qcow2", "-c"][..]),
        (
            "disk.vmdk",
            &["-O", "vmdk", "-o", "subformat=streamOptimized"][..],
        ),
        ("disk.vhdx", &["-O", "vhdx"][..]),
    ] {
        let file = dir.path(name);
        qemu_convert(&raw, &file, args);
        put(&moto, "images", name, &file);
        let url = format!("s3://images/{name}");
        let (remote, _) =
            json_of(amiforge_at(&moto.endpoint).args(["inspect", &url, "--format", "json"]));
        for key in ["partitions", "os", "boot_mode", "kernels", "architecture"] {
            assert_eq!(remote[key], local[key], "{name}: {key}");
        }
        let (code, stdout, stderr) =
            outcome(amiforge_at(&moto.endpoint).args(["cat", &url, "/etc/hostname"]));
        assert_eq!(code, Some(0), "{name}: {stderr}");
        assert_eq!(stdout, "fixture-host\n", "{name}");
    }
}

#[test]
fn an_image_in_s3_naming_a_backing_file_is_refused_with_the_reason() {
    let moto = Moto::start();
    let dir = Scratch::new("s3-backing");
    let base = dir.path("base.qcow2");
    qemu_convert(&fixture("gpt-uefi.img"), &base, &["-O", "qcow2"]);
    let child = dir.path("child.qcow2");
    let o = std::process::Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&child)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    put(&moto, "images", "child.qcow2", &child);
    let (code, _, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .args(["inspect", "s3://images/child.qcow2", "--allow-backing"])
            .arg(dir.path("")),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("s3://images/child.qcow2") && stderr.contains("not a local file"),
        "{stderr}"
    );
}
