//! `amiforge upload`, `download` and `verify` against the strict EBS test server,
//! which checks what moto ignores (checksums, sizes, ChangedBlocksCount, the LINEAR
//! aggregate, parent inheritance, encryption) and injects faults.

mod common;
use common::*;
use ebs_testserver::{start_background, Config, Faults};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn upload_json(endpoint: &str, image: &Path, extra: &[&str]) -> Value {
    let (code, stdout, stderr) = outcome(
        amiforge_at(endpoint)
            .arg("upload")
            .arg(image)
            .args(["--format", "json", "--no-progress"])
            .args(extra),
    );
    assert_eq!(code, Some(0), "upload failed: {stderr}");
    assert!(
        stderr.contains("amiforge: snapshot snap-") && stderr.contains(" started"),
        "the id is announced at once: {stderr}"
    );
    serde_json::from_str(&stdout).expect("JSON on stdout")
}

fn download(endpoint: &str, snapshot: &str, out: &Path) {
    let (code, _, stderr) = outcome(amiforge_at(endpoint).arg("download").arg(snapshot).arg(out));
    assert_eq!(code, Some(0), "download failed: {stderr}");
}

fn quiet() -> Config {
    Config {
        completion_delay_ms: 200,
        ..Default::default()
    }
}

#[test]
fn a_fixture_image_round_trips_bit_identical_and_skips_holes_and_zeros() {
    let server = start_background(quiet()).unwrap();
    let dir = Scratch::new("strict-roundtrip");
    let image = fixture("gpt-uefi.img");
    let r = upload_json(
        &server.endpoint(),
        &image,
        &["--manifest", dir.path("m.json").to_str().unwrap()],
    );
    let id = r["snapshot_id"].as_str().unwrap();
    assert_eq!(r["volume_size_gib"], 1);
    assert_eq!(r["blocks_total"], 400); // 200 MiB
    let written = r["blocks_written"].as_u64().unwrap();
    assert!(
        written > 0 && written < 100,
        "a sparse image sends few blocks: {r}"
    );
    assert_eq!(
        r["blocks_written"].as_u64().unwrap() + r["blocks_skipped"].as_u64().unwrap(),
        400
    );
    assert_eq!(server.own_blocks(id).unwrap().len() as u64, written);
    assert_eq!(server.describe(id).unwrap().0, "completed");
    assert!(server.stats().rejected.is_empty(), "{:?}", server.stats());
    download(&server.endpoint(), id, &dir.path("back.img"));
    assert_same_padded(&image, &dir.path("back.img"));
    let m: Value = serde_json::from_slice(&std::fs::read(dir.path("m.json")).unwrap()).unwrap();
    assert_eq!(m["snapshot_id"], id);
    assert_eq!(m["blocks"].as_object().unwrap().len() as u64, written);
}

#[test]
fn an_upload_survives_ten_percent_transient_faults() {
    let faults = Faults {
        transient_rate: 0.10,
        slow_ms: 2_500,
        ..Default::default()
    };
    let server = start_background(Config { faults, ..quiet() }).unwrap();
    let dir = Scratch::new("strict-faults");
    let image = dir.path("faulty.img");
    make_image(&image, 48 << 20, 11);
    let r = upload_json(
        &server.endpoint(),
        &image,
        &["--attempt-timeout", "1", "--workers", "16"],
    );
    let id = r["snapshot_id"].as_str().unwrap();
    let stats = server.stats();
    assert!(
        stats.faults_injected >= 5,
        "faults were injected: {stats:?}"
    );
    server.set_faults(Faults::default());
    download(&server.endpoint(), id, &dir.path("back.img"));
    assert_same_padded(&image, &dir.path("back.img"));
}

#[test]
fn snapshot_not_found_right_after_start_is_retried() {
    let faults = Faults {
        not_found_first: 5,
        ..Default::default()
    };
    let server = start_background(Config { faults, ..quiet() }).unwrap();
    let dir = Scratch::new("strict-notfound");
    let image = dir.path("nf.img");
    make_image(&image, 8 << 20, 12);
    let r = upload_json(&server.endpoint(), &image, &[]);
    download(
        &server.endpoint(),
        r["snapshot_id"].as_str().unwrap(),
        &dir.path("back.img"),
    );
    assert_same_padded(&image, &dir.path("back.img"));
}

#[test]
fn access_denied_stops_at_once_without_retries_and_names_snapshot_and_block() {
    let faults = Faults {
        access_denied: true,
        ..Default::default()
    };
    let server = start_background(Config { faults, ..quiet() }).unwrap();
    let dir = Scratch::new("strict-denied");
    let image = dir.path("denied.img");
    make_image(&image, 64 << 20, 13);
    let started = Instant::now();
    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(&image)
            .args(["--workers", "4", "--no-progress"]),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no backoff loop"
    );
    assert!(stderr.contains("AccessDeniedException"), "{stderr}");
    assert!(
        stderr.contains("for snapshot snap-") && stderr.contains("at block "),
        "{stderr}"
    );
    assert!(stderr.contains("after 1 attempt(s)"), "{stderr}");
    assert!(
        stderr.contains("--resume"),
        "the resume command is printed: {stderr}"
    );
    let stats = server.stats();
    let puts = stats.requests.get("PutSnapshotBlock").copied().unwrap_or(0);
    assert!(
        puts <= 4,
        "at most the blocks already in flight were tried, once each: {stats:?}"
    );
    assert_eq!(stats.access_denied, puts);
}

#[test]
fn every_request_is_sigv4_signed_and_a_wrong_secret_key_stops_at_once() {
    let server = start_background(quiet()).unwrap();
    let dir = Scratch::new("strict-signed");
    let image = dir.path("signed.img");
    make_image(&image, 16 << 20, 21);

    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(&image)
            .args(["--workers", "8", "--no-progress"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let stats = server.stats();
    assert!(stats.requests.get("PutSnapshotBlock").copied().unwrap_or(0) > 8);
    assert_eq!(stats.rejected.get("signature"), None, "{stats:?}");

    let started = Instant::now();
    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .env("AWS_SECRET_ACCESS_KEY", "not-the-key")
            .arg("upload")
            .arg(&image)
            .args(["--no-progress"]),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("InvalidSignatureException"), "{stderr}");
    assert!(stderr.contains("after 1 attempt(s)"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no backoff loop"
    );
    assert_eq!(server.stats().rejected.get("signature"), Some(&1));
}

#[test]
fn an_interrupted_upload_prints_the_resume_command_and_resumes_after_a_kill() {
    let faults = Faults {
        put_delay_ms: 40,
        ..Default::default()
    };
    let server = start_background(Config { faults, ..quiet() }).unwrap();
    let dir = Scratch::new("strict-resume");
    let image = dir.path("resume.img");
    make_image(&image, 40 << 20, 14);
    let state = dir.path("state");

    // Ctrl-C: the upload stops cleanly and says how to resume.
    let child = amiforge_at(&server.endpoint())
        .arg("upload")
        .arg(&image)
        .args(["--workers", "2", "--no-progress", "--state-dir"])
        .arg(&state)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| server.stats().blocks_stored >= 6);
    unsafe_kill(child.id(), 2); // SIGINT
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is still pending. Resume the upload with:") && stderr.contains("--resume"),
        "{stderr}"
    );

    // SIGKILL in the middle of the resumed upload: only the journal survives.
    let mut child = amiforge_at(&server.endpoint())
        .arg("upload")
        .arg(&image)
        .args(["--resume", "--workers", "2", "--no-progress", "--state-dir"])
        .arg(&state)
        .spawn()
        .unwrap();
    let before = server.stats().blocks_stored;
    wait_for(|| server.stats().blocks_stored >= before + 6);
    child.kill().unwrap();
    child.wait().unwrap();
    let stored_before_resume = server.stats().blocks_stored;

    server.set_faults(Faults::default());
    let r = upload_json(
        &server.endpoint(),
        &image,
        &["--resume", "--state-dir", state.to_str().unwrap()],
    );
    let id = r["snapshot_id"].as_str().unwrap();
    assert!(r["blocks_resumed"].as_u64().unwrap() >= 12, "{r}");
    // CompleteSnapshot was accepted: the server checked count and LINEAR aggregate.
    assert_eq!(server.describe(id).unwrap().0, "completed");
    // Only the blocks not yet confirmed (plus at most those in flight) were sent again.
    let resent = server.stats().blocks_stored - stored_before_resume;
    let written = r["blocks_written"].as_u64().unwrap();
    assert!(
        resent + r["blocks_resumed"].as_u64().unwrap() <= written + 4,
        "resent {resent}: {r}"
    );
    assert!(
        !Path::new(&state)
            .join("resume.img.amiforge-upload")
            .exists(),
        "the journal is removed"
    );
    download(&server.endpoint(), id, &dir.path("back.img"));
    assert_same_padded(&image, &dir.path("back.img"));
}

#[test]
fn resume_refuses_an_image_that_changed() {
    let faults = Faults {
        put_delay_ms: 40,
        ..Default::default()
    };
    let server = start_background(Config { faults, ..quiet() }).unwrap();
    let dir = Scratch::new("strict-changed");
    let image = dir.path("changed.img");
    make_image(&image, 16 << 20, 15);
    let state = dir.path("state");
    let mut child = amiforge_at(&server.endpoint())
        .arg("upload")
        .arg(&image)
        .args(["--workers", "2", "--no-progress", "--state-dir"])
        .arg(&state)
        .spawn()
        .unwrap();
    wait_for(|| server.stats().blocks_stored >= 4);
    child.kill().unwrap();
    child.wait().unwrap();
    make_image(&image, 16 << 20, 16);
    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(&image)
            .args(["--resume", "--no-progress", "--state-dir"])
            .arg(&state),
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("the image changed since the interrupted upload"),
        "{stderr}"
    );
}

#[test]
fn an_incremental_upload_sends_only_changed_blocks_and_reads_back_identical() {
    use std::os::unix::fs::FileExt;
    let server = start_background(quiet()).unwrap();
    let dir = Scratch::new("strict-incremental");
    let image = dir.path("base.img");
    make_image(&image, 200 << 20, 17); // 400 blocks, about 240 holding data
    let manifest = dir.path("manifest.json");
    let base = upload_json(
        &server.endpoint(),
        &image,
        &["--manifest", manifest.to_str().unwrap()],
    );
    let base_id = base["snapshot_id"].as_str().unwrap().to_string();

    // Change 1% of the blocks: three get new bytes, one data block becomes zeros.
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let data_blocks: Vec<u64> = m["blocks"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    for &b in &data_blocks[..3] {
        f.write_all_at(b"changed!", b * BLOCK + 100).unwrap();
    }
    f.write_all_at(&vec![0u8; BLOCK as usize], data_blocks[10] * BLOCK)
        .unwrap();
    drop(f);

    let child = upload_json(
        &server.endpoint(),
        &image,
        &[
            "--parent-snapshot",
            &base_id,
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    );
    let child_id = child["snapshot_id"].as_str().unwrap();
    assert_eq!(child["parent_snapshot_id"], base_id.as_str());
    assert_eq!(
        child["blocks_written"], 4,
        "three changed blocks and one zeroed block: {child}"
    );
    assert_eq!(child["zero_blocks_written"], 1);
    assert_eq!(server.own_blocks(child_id).unwrap().len(), 4);
    assert_eq!(
        server.describe(child_id).unwrap().2.as_deref(),
        Some(base_id.as_str())
    );
    // The manifest now describes the child.
    let m2: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m2["snapshot_id"], child_id);
    download(&server.endpoint(), child_id, &dir.path("back.img"));
    assert_same_padded(&image, &dir.path("back.img"));
}

#[test]
fn an_encrypted_upload_writes_the_zero_blocks() {
    let server = start_background(quiet()).unwrap();
    let dir = Scratch::new("strict-encrypted");
    let image = dir.path("enc.img");
    make_image(&image, 24 << 20, 18);
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(&image)
            .args(["--encrypted", "--format", "json", "--no-progress"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    // Every block of the 1 GiB volume is written, holes and zeros included.
    assert_eq!(r["blocks_written"], 2048, "{r}");
    assert!(r["zero_blocks_written"].as_u64().unwrap() > 2000);
    assert!(
        stderr.contains("encrypted snapshot: wrote all"),
        "the output says so: {stderr}"
    );
    let id = r["snapshot_id"].as_str().unwrap();
    assert!(server.describe(id).unwrap().1, "the snapshot is encrypted");
    // Unwritten blocks of an encrypted snapshot read back as garbage here, as on AWS:
    // the download is identical only because every block was written.
    download(&server.endpoint(), id, &dir.path("back.img"));
    assert_same_padded(&image, &dir.path("back.img"));
}

#[test]
fn verify_compares_every_block_and_names_the_ones_that_differ() {
    use std::os::unix::fs::FileExt;
    let server = start_background(quiet()).unwrap();
    let dir = Scratch::new("strict-verify");
    let image = dir.path("v.img");
    make_image(&image, 16 << 20, 19);
    let id = upload_json(&server.endpoint(), &image, &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, stdout, _) = outcome(
        amiforge_at(&server.endpoint())
            .arg("verify")
            .arg(&image)
            .arg(&id),
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("all 32 blocks match"), "{stdout}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.write_all_at(b"x", 5 * BLOCK + 7).unwrap();
    let (code, stdout, _) = outcome(
        amiforge_at(&server.endpoint())
            .arg("verify")
            .arg(&image)
            .arg(&id)
            .args(["--format", "json"]),
    );
    assert_eq!(code, Some(1));
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["mismatches"], serde_json::json!([5]));
}

#[test]
fn two_uploads_of_one_image_never_share_a_journal() {
    let faults = Faults {
        put_delay_ms: 100,
        ..Default::default()
    };
    let server = start_background(Config { faults, ..quiet() }).unwrap();
    let dir = Scratch::new("strict-lock");
    let image = dir.path("locked.img");
    make_image(&image, 16 << 20, 20);
    let state = dir.path("state");
    let mut first = amiforge_at(&server.endpoint())
        .arg("upload")
        .arg(&image)
        .args(["--workers", "1", "--no-progress", "--state-dir"])
        .arg(&state)
        .spawn()
        .unwrap();
    wait_for(|| server.stats().blocks_stored >= 1);
    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(&image)
            .args(["--no-progress", "--state-dir"])
            .arg(&state),
    );
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("another amiforge upload of this image is running"),
        "{stderr}"
    );
}

#[test]
fn a_parent_without_its_manifest_is_refused_before_any_call() {
    let server = start_background(quiet()).unwrap();
    let image = fixture("bare-ext4.img");
    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(&image)
            .args(["--parent-snapshot", "snap-1"]),
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("needs the parent's block manifest"),
        "{stderr}"
    );
    assert!(server.stats().requests.is_empty());
}

fn wait_for(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unsafe_kill(pid: u32, signal: i32) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn uploads_from_qcow2_and_stream_optimized_vmdk_send_the_virtual_disk_and_verify_against_it() {
    let server = start_background(quiet()).unwrap();
    let dir = Scratch::new("strict-containers");
    let raw = fixture("gpt-uefi.img");
    let raw_upload = upload_json(&server.endpoint(), &raw, &[]);
    for (name, options) in [
        ("disk.qcow2", &["-O", "qcow2"][..]),
        ("disk-zlib.qcow2", &["-c", "-O", "qcow2"][..]),
        (
            "disk.vmdk",
            &["-O", "vmdk", "-o", "subformat=streamOptimized"][..],
        ),
    ] {
        let container = dir.path(name);
        qemu_convert(&raw, &container, options);
        let r = upload_json(&server.endpoint(), &container, &[]);
        let id = r["snapshot_id"].as_str().unwrap();
        assert_eq!(r["blocks_total"], raw_upload["blocks_total"], "{name}");
        assert_eq!(
            r["blocks_written"], raw_upload["blocks_written"],
            "{name}: the same blocks as the raw image"
        );
        assert_eq!(
            r["disk_sha256"], raw_upload["disk_sha256"],
            "{name}: the same content identity"
        );
        assert_eq!(
            r["disk_sha256"].as_str(),
            Some(disk_identity(&raw).as_str())
        );
        download(&server.endpoint(), id, &dir.path("back.img"));
        assert_same_padded(&raw, &dir.path("back.img"));
        let (code, stdout, stderr) = outcome(
            amiforge_at(&server.endpoint())
                .arg("verify")
                .arg(&container)
                .arg(id),
        );
        assert_eq!(code, Some(0), "{name}: {stdout} {stderr}");
    }
    assert!(server.stats().rejected.is_empty(), "{:?}", server.stats());
}

/// The keys under `prefix` in moto's bucket, listed by boto3.
fn s3_keys(moto: &Moto, bucket: &str, prefix: &str) -> Vec<String> {
    let o = std::process::Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import sys, boto3; c = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='t', aws_secret_access_key='t')\n\
             try: c.create_bucket(Bucket=sys.argv[2])\n\
             except c.exceptions.BucketAlreadyOwnedByYou: pass\n\
             print('\\n'.join(o['Key'] for o in c.list_objects_v2(Bucket=sys.argv[2], Prefix=sys.argv[3]).get('Contents', [])))",
            &moto.endpoint,
            bucket,
            prefix,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn an_upload_interrupted_on_one_runner_resumes_on_another_from_a_journal_in_s3() {
    let faults = Faults {
        put_delay_ms: 40,
        ..Default::default()
    };
    let server = start_background(Config { faults, ..quiet() }).unwrap();
    let moto = Moto::start();
    assert!(s3_keys(&moto, "ci-state", "").is_empty());
    let dir = Scratch::new("strict-resume-s3");
    let image = dir.path("nightly.img");
    make_image(&image, 40 << 20, 15);
    let state = "s3://ci-state/runs/nightly/";
    // The EBS and EC2 calls go to the strict server, the S3 calls to moto.
    let runner = |workdir: &Path| {
        let mut cmd = amiforge_at(&server.endpoint());
        cmd.env("AWS_ENDPOINT_URL_S3", &moto.endpoint)
            .env_remove("AMIFORGE_STATE_DIR")
            .current_dir(workdir);
        cmd
    };
    let first_runner = dir.path("runner-1");
    std::fs::create_dir_all(&first_runner).unwrap();
    let child = runner(&first_runner)
        .arg("upload")
        .arg(&image)
        .args(["--workers", "2", "--no-progress", "--state-dir", state])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| server.stats().blocks_stored >= 8);
    unsafe_kill(child.id(), 2); // SIGINT: the runner stops cleanly
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("--state-dir {state}")), "{stderr}");
    assert_eq!(
        s3_keys(&moto, "ci-state", "runs/nightly/"),
        ["runs/nightly/nightly.img.amiforge-upload"],
        "the journal is in S3"
    );
    std::fs::remove_dir_all(&first_runner).unwrap();

    // Another runner, another directory, the same image and state prefix.
    server.set_faults(Faults::default());
    let second_runner = dir.path("runner-2");
    std::fs::create_dir_all(&second_runner).unwrap();
    let (code, stdout, stderr) = outcome(runner(&second_runner).arg("upload").arg(&image).args([
        "--resume",
        "--state-dir",
        state,
        "--format",
        "json",
        "--no-progress",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert!(r["blocks_resumed"].as_u64().unwrap() >= 8, "{r}");
    let id = r["snapshot_id"].as_str().unwrap();
    assert_eq!(server.describe(id).unwrap().0, "completed");
    assert!(
        s3_keys(&moto, "ci-state", "runs/nightly/").is_empty(),
        "the journal object is deleted once the upload completed"
    );
    download(&server.endpoint(), id, &dir.path("back.img"));
    assert_same_padded(&image, &dir.path("back.img"));
}
