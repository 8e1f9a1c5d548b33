//! What amiforge writes to S3, read back by boto3 from moto's S3 (an independent
//! implementation of the API): reports and SBOMs given `--output s3://…`, and bundles
//! given `--out s3://…/`, which `bundle verify`, `upload` and `publish` then read in
//! place.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// One s3_object.py call; its stdout.
fn s3_object(moto: &Moto, args: &[&str]) -> String {
    s3_object_at(&moto.endpoint, args)
}

/// One s3_object.py call against the S3 endpoint `endpoint`; its stdout.
fn s3_object_at(endpoint: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/s3_object.py");
    let o = Command::new(venv().join("bin/python"))
        .arg(script)
        .arg(endpoint)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "boto3 {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The object's bytes and what HeadObject says of it.
fn get(moto: &Moto, dir: &Scratch, bucket: &str, key: &str) -> (Vec<u8>, Value) {
    let out = dir.path("object");
    let head = s3_object(moto, &["get", bucket, key, out.to_str().unwrap()]);
    (
        std::fs::read(out).unwrap(),
        serde_json::from_str(&head).unwrap(),
    )
}

fn make_bucket(moto: &Moto, bucket: &str) {
    make_bucket_at(&moto.endpoint, bucket)
}

fn make_bucket_at(endpoint: &str, bucket: &str) {
    let o = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket=sys.argv[2])",
            endpoint,
            bucket,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn audit_and_sbom_write_their_reports_to_s3_naming_the_image() {
    let moto = Moto::start();
    let dir = Scratch::new("s3-reports");
    make_bucket(&moto, "reports");
    let image = fixture("gpt-uefi.img");
    let (code, _, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .arg("audit")
            .arg(&image)
            .args(["--format", "json", "--fail-on", "none"])
            .args(["--output", "s3://reports/nightly/audit.json"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (bytes, head) = get(&moto, &dir, "reports", "nightly/audit.json");
    let (code, local, _) = outcome(amiforge().arg("audit").arg(&image).args([
        "--format",
        "json",
        "--fail-on",
        "none",
    ]));
    assert_eq!(code, Some(0));
    assert_eq!(
        comparable_audit(serde_json::from_slice(&bytes).unwrap()),
        comparable_audit(serde_json::from_str(&local).unwrap())
    );
    assert_eq!(
        head["metadata"]["amiforge-image"],
        image.display().to_string()
    );
    assert!(
        head["checksum_sha256"].is_string(),
        "S3 checked a SHA-256: {head}"
    );

    let (code, _, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .arg("sbom")
            .arg(&image)
            .args(["--output", "s3://reports/nightly/sbom.json"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (bytes, _) = get(&moto, &dir, "reports", "nightly/sbom.json");
    let sbom: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");
}

/// gpt-uefi.img with 40 MiB of random bytes in its root filesystem's free space, so
/// that the bundle's block store needs a multipart upload.
fn image_with_incompressible_data(dir: &Scratch) -> std::path::PathBuf {
    use std::os::unix::fs::FileExt;
    let image = dir.path("noisy.img");
    std::fs::copy(fixture("gpt-uefi.img"), &image).unwrap();
    let mut rng = fastrand::Rng::with_seed(15);
    let noise: Vec<u8> = (0..40 << 20).map(|_| rng.u8(..)).collect();
    let root_start = 100_352 * 512;
    std::fs::File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(&noise, root_start + (100 << 20))
        .unwrap();
    image
}

#[test]
fn a_bundle_written_to_s3_verifies_uploads_and_refuses_a_flipped_byte() {
    let moto = Moto::start();
    let dir = Scratch::new("s3-bundle");
    make_bucket(&moto, "bundles");
    let image = image_with_incompressible_data(&dir);
    let (code, stdout, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .args(["bundle"])
            .arg(&image)
            .args(["--out", "s3://bundles/nightly/web/", "--fail-on", "none"])
            .args(["--format", "json", "--no-progress"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    let keys: Vec<String> =
        serde_json::from_str(&s3_object(&moto, &["list", "bundles", "nightly/web/"])).unwrap();
    for name in [
        "manifest.json",
        "blocks.zst",
        "audit.json",
        "sbom.cdx.json",
        "register.json",
    ] {
        assert!(
            keys.contains(&format!("nightly/web/{name}")),
            "{name} in {keys:?}"
        );
    }
    let (_, head) = get(&moto, &dir, "bundles", "nightly/web/blocks.zst");
    assert!(
        head["parts"].as_u64().unwrap_or(0) > 1,
        "the block store went up in parts: {head}"
    );
    assert!(head["checksum_sha256"].is_string(), "{head}");
    assert_eq!(
        head["metadata"]["amiforge-manifest-sha256"],
        created["manifest_sha256"]
    );

    // Read in place: verify, then upload into a snapshot that reads back identical.
    let (code, stdout, stderr) = outcome(amiforge_at(&moto.endpoint).args([
        "bundle",
        "verify",
        "s3://bundles/nightly/web/",
        "--format",
        "json",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let verified: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(verified["manifest_sha256"], created["manifest_sha256"]);
    let (code, stdout, stderr) = outcome(amiforge_at(&moto.endpoint).args([
        "upload",
        "s3://bundles/nightly/web",
        "--format",
        "json",
        "--no-progress",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let snapshot = serde_json::from_str::<Value>(&stdout).unwrap()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .arg("verify")
            .arg(&image)
            .arg(&snapshot),
    );
    assert_eq!(code, Some(0), "the snapshot holds the image: {stderr}");
    let (code, stdout, stderr) = outcome(amiforge_at(&moto.endpoint).args([
        "publish",
        "s3://bundles/nightly/web/",
        "--format",
        "json",
        "--no-progress",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let published: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        published["image_id"].as_str().unwrap().starts_with("ami-"),
        "{published}"
    );

    // A flipped byte in the block store is refused, naming the block.
    s3_object(
        &moto,
        &["flip", "bundles", "nightly/web/blocks.zst", "5000000"],
    );
    let (code, _, stderr) = outcome(amiforge_at(&moto.endpoint).args([
        "bundle",
        "verify",
        "s3://bundles/nightly/web/",
    ]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("block "), "{stderr}");

    // A second bundle to the same prefix is refused.
    let (code, _, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .args(["bundle"])
            .arg(&image)
            .args(["--out", "s3://bundles/nightly/web/", "--fail-on", "none"]),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("holds a bundle already"), "{stderr}");
}

#[test]
fn a_bundle_goes_to_the_strict_s3_server_which_checks_every_parts_sha256() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s3 = runtime.block_on(ebs_testserver::start_s3_on(0)).unwrap();
    let endpoint = s3.endpoint();
    let dir = Scratch::new("strict-s3-bundle");
    make_bucket_at(&endpoint, "bundles");
    let image = image_with_incompressible_data(&dir);
    let (code, _, stderr) = outcome(amiforge_at(&endpoint).args(["bundle"]).arg(&image).args([
        "--out",
        "s3://bundles/web/",
        "--fail-on",
        "none",
        "--no-progress",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(s3.stats().rejected.is_empty(), "{:?}", s3.stats());
    let (code, _, stderr) =
        outcome(amiforge_at(&endpoint).args(["bundle", "verify", "s3://bundles/web/"]));
    assert_eq!(code, Some(0), "{stderr}");
    let stats = s3.stats();
    assert!(stats.gets > 1 && stats.bytes_sent > 40 << 20, "{stats:?}");

    // The server is strict: a part whose bytes do not match its SHA-256 is refused.
    let o = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='t', aws_secret_access_key='t').put_object(Bucket='bundles', Key='x', Body=b'data', ChecksumSHA256='AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=')",
            &endpoint,
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("BadDigest"));
}
