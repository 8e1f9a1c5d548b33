//! Bundles: image → bundle → extract is byte-identical; the signature is a real
//! ed25519 signature (openssl checks it); tampering of every kind is refused with a
//! precise message, and a tampered bundle sends nothing to the (strict) server.

mod common;
use common::*;
use ebs_testserver::{start_background, Config};
use std::path::{Path, PathBuf};

struct Keys {
    private: PathBuf,
    public: PathBuf,
    other_public: PathBuf,
}

fn keys(dir: &Scratch) -> Keys {
    let (private, public) = (dir.path("key.pem"), dir.path("pub.pem"));
    let (other, other_public) = (dir.path("other.pem"), dir.path("other-pub.pem"));
    for (k, p) in [(&private, &public), (&other, &other_public)] {
        tool_output(
            tool("openssl")
                .args(["genpkey", "-algorithm", "ed25519", "-out"])
                .arg(k),
        );
        tool_output(
            tool("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(k)
                .arg("-out")
                .arg(p),
        );
    }
    Keys {
        private,
        public,
        other_public,
    }
}

fn make_bundle(image: &Path, out: &Path, key: Option<&Path>) -> String {
    let mut cmd = amiforge();
    cmd.arg("bundle")
        .arg(image)
        .arg("--out")
        .arg(out)
        .args(["--format", "json"]);
    if let Some(k) = key {
        cmd.arg("--sign-key").arg(k);
    }
    let (code, stdout, stderr) = outcome(&mut cmd);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    v["manifest_sha256"].as_str().unwrap().to_string()
}

fn verify(bundle: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let (code, _, stderr) = outcome(
        amiforge()
            .args(["bundle", "verify"])
            .arg(bundle)
            .args(extra),
    );
    (code, stderr)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn manifest(bundle: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn image_to_bundle_to_image_is_byte_identical() {
    let dir = Scratch::new("bundle-roundtrip");
    for name in ["gpt-uefi.img", "mbr.img"] {
        let image = fixture(name);
        let bundle = dir.path(&format!("{name}.bundle"));
        make_bundle(&image, &bundle, None);
        let m = manifest(&bundle);
        assert_eq!(m["image_size"], std::fs::metadata(&image).unwrap().len());
        let out = dir.path(&format!("{name}.out"));
        let (code, _, stderr) = outcome(
            amiforge()
                .args(["bundle", "extract"])
                .arg(&bundle)
                .arg(&out),
        );
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(sha256_file(&out), sha256_file(&image), "{name}");
        // Only data blocks travel, compressed.
        let stored = std::fs::metadata(bundle.join("blocks.zst")).unwrap().len();
        let data = std::process::Command::new("du")
            .args(["-k"])
            .arg(&image)
            .output()
            .unwrap();
        let data_kib: u64 = String::from_utf8_lossy(&data.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            stored < data_kib * 1024,
            "{stored} bytes stored for {data_kib} KiB of data"
        );
    }
}

#[test]
fn the_signature_is_ed25519_over_the_manifest_as_openssl_checks_it() {
    let dir = Scratch::new("bundle-sign");
    let k = keys(&dir);
    let bundle = dir.path("b");
    let digest = make_bundle(&fixture("gpt-uefi.img"), &bundle, Some(&k.private));
    assert_eq!(digest, sha256_file(&bundle.join("manifest.json")));
    let sig_hex = std::fs::read_to_string(bundle.join("manifest.json.sig")).unwrap();
    let sig: Vec<u8> = (0..128)
        .step_by(2)
        .map(|i| u8::from_str_radix(&sig_hex.trim()[i..i + 2], 16).unwrap())
        .collect();
    std::fs::write(dir.path("sig.bin"), sig).unwrap();
    tool_output(
        tool("openssl")
            .args(["pkeyutl", "-verify", "-rawin", "-pubin", "-inkey"])
            .arg(&k.public)
            .arg("-in")
            .arg(bundle.join("manifest.json"))
            .arg("-sigfile")
            .arg(dir.path("sig.bin")),
    );
    let (code, stderr) = verify(
        &bundle,
        &[
            "--public-key",
            k.public.to_str().unwrap(),
            "--expect-manifest-sha256",
            &digest,
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn tampered_bundles_are_refused_precisely_and_upload_nothing() {
    let dir = Scratch::new("bundle-tamper");
    let k = keys(&dir);
    let good = dir.path("good");
    let digest = make_bundle(&fixture("gpt-uefi.img"), &good, Some(&k.private));
    let m = manifest(&good);
    let third = &m["blocks"][2];
    let (index, offset, length) = (
        third["index"].as_u64().unwrap(),
        third["offset"].as_u64().unwrap(),
        third["length"].as_u64().unwrap(),
    );
    let public = k.public.to_str().unwrap();

    // One byte flipped inside a block's frame.
    let flipped = dir.path("flipped-block");
    copy_dir(&good, &flipped);
    let mut blocks = std::fs::read(flipped.join("blocks.zst")).unwrap();
    blocks[(offset + length / 2) as usize] ^= 0x01;
    std::fs::write(flipped.join("blocks.zst"), &blocks).unwrap();
    let (code, stderr) = verify(&flipped, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("block {index} ")), "{stderr}");

    // One byte flipped in the manifest (its creation time): the signature and the
    // digest compared out of band both catch it.
    let edited = dir.path("flipped-manifest");
    copy_dir(&good, &edited);
    let mut text = std::fs::read(edited.join("manifest.json")).unwrap();
    let at = text.windows(9).position(|w| w == b"\"created\"").unwrap() + 13;
    text[at] = if text[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(edited.join("manifest.json"), &text).unwrap();
    let (code, stderr) = verify(&edited, &["--public-key", public]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("signature") && stderr.contains("manifest was changed"),
        "{stderr}"
    );
    let (code, stderr) = verify(&edited, &["--expect-manifest-sha256", &digest]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("manifest SHA-256"), "{stderr}");

    // A block removed from the store.
    let removed = dir.path("removed-block");
    copy_dir(&good, &removed);
    let mut blocks = std::fs::read(removed.join("blocks.zst")).unwrap();
    blocks.drain(offset as usize..(offset + length) as usize);
    std::fs::write(removed.join("blocks.zst"), &blocks).unwrap();
    let (code, stderr) = verify(&removed, &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains(&format!("block {index} ")), "{stderr}");

    // The wrong key.
    let (code, stderr) = verify(&good, &["--public-key", k.other_public.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("does not verify with this public key"),
        "{stderr}"
    );

    // None of them reaches the server.
    let server = start_background(Config::default()).unwrap();
    for (bad, extra) in [
        (&flipped, vec![]),
        (&edited, vec!["--public-key", public]),
        (&removed, vec![]),
        (
            &good,
            vec!["--public-key", k.other_public.to_str().unwrap()],
        ),
    ] {
        let (code, _, stderr) = outcome(
            amiforge_at(&server.endpoint())
                .arg("upload")
                .arg(bad)
                .arg("--no-progress")
                .args(&extra),
        );
        assert_eq!(code, Some(2), "{}: {stderr}", bad.display());
        assert!(stderr.contains("nothing was uploaded"), "{stderr}");
    }
    assert!(server.stats().requests.is_empty(), "{:?}", server.stats());

    // The good bundle uploads, and the snapshot holds the image.
    let (code, snap, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(&good)
            .args(["--no-progress", "--public-key", public]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let back = dir.path("back.img");
    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("download")
            .arg(snap.trim())
            .arg(&back),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_padded(&fixture("gpt-uefi.img"), &back);
}

#[test]
fn a_bundle_audited_with_a_vulnerability_database_carries_it_and_its_date() {
    let dir = Scratch::new("bundle-vulndb");
    let osv = dir.path("osv");
    std::fs::create_dir_all(&osv).unwrap();
    std::fs::write(
        osv.join("TEST-1.json"),
        r#"{"id":"TEST-1","modified":"2026-11-30T00:00:00Z","affected":[{"package":{"ecosystem":"Debian:12","name":"no-such-package"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}"#,
    )
    .unwrap();
    let db = dir.path("vuln.db");
    ok(&[
        "vulndb",
        "import",
        osv.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    let out = dir.path("b");
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("bundle")
            .arg(fixture("gpt-uefi.img"))
            .arg("--out")
            .arg(&out)
            .arg("--vulndb")
            .arg(&db)
            .args(["--max-db-age", "100years"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let m = manifest(&out);
    assert_eq!(
        m["files"]["vulndb.sqlite"].as_str().unwrap(),
        sha256_file(&db),
        "the manifest covers the database"
    );
    let audit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("audit.json")).unwrap()).unwrap();
    assert_eq!(
        audit["vulnerability_database"]["newest_advisory"],
        "2026-11-30T00:00:00Z"
    );
    let (code, stderr) = verify(&out, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    // A changed byte of the carried database is caught like any bundled file.
    let mut bytes = std::fs::read(out.join("vulndb.sqlite")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(out.join("vulndb.sqlite"), bytes).unwrap();
    let (code, stderr) = verify(&out, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("vulndb.sqlite"), "{stderr}");
}

#[test]
fn a_bundle_is_not_made_when_the_audit_gate_fails() {
    let dir = Scratch::new("bundle-gate");
    let out = dir.path("b");
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("bundle")
            .arg(fixture("gpt-containers.img"))
            .arg("--out")
            .arg(&out)
            .args(["--architecture", "x86_64", "--boot-mode", "uefi"]),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no bundle was written"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn publishing_a_bundle_registers_the_bundled_spec() {
    let dir = Scratch::new("bundle-publish");
    let bundle = dir.path("b");
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("bundle")
            .arg(fixture("gpt-uefi.img"))
            .arg("--out")
            .arg(&bundle)
            .args(["--name", "bundled-ami", "--imds-v2", "--tag", "team=infra"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let server = start_background(Config {
        completion_delay_ms: 100,
        ..Default::default()
    })
    .unwrap();
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("publish")
            .arg(&bundle)
            .args(["--no-progress", "--format", "json"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let reg = server.ec2_requests("RegisterImage");
    assert_eq!(reg.len(), 1);
    let field = |k: &str| {
        reg[0]
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field("Name").as_deref(), Some("bundled-ami"));
    assert_eq!(field("BootMode").as_deref(), Some("uefi"));
    assert_eq!(field("ImdsSupport").as_deref(), Some("v2.0"));
    assert_eq!(field("Architecture").as_deref(), Some("x86_64"));
    let tags = server.tags_of(r["image_id"].as_str().unwrap());
    assert!(
        tags.iter().any(|(k, v)| k == "team" && v == "infra"),
        "{tags:?}"
    );
    assert!(
        tags.iter().any(|(k, _)| k == "amiforge:bundle-sha256"),
        "{tags:?}"
    );
}

#[test]
fn a_killed_bundle_upload_resumes_and_completes_with_the_right_aggregate() {
    let dir = Scratch::new("bundle-resume");
    let image = dir.path("resume.img");
    make_image(&image, 24 << 20, 21);
    let bundle = dir.path("b");
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("bundle")
            .arg(&image)
            .arg("--out")
            .arg(&bundle)
            .args([
                "--fail-on",
                "none",
                "--architecture",
                "x86_64",
                "--boot-mode",
                "uefi",
            ]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let server = start_background(Config {
        faults: ebs_testserver::Faults {
            put_delay_ms: 40,
            ..Default::default()
        },
        completion_delay_ms: 100,
        ..Default::default()
    })
    .unwrap();
    let state = dir.path("state");
    let mut child = amiforge_at(&server.endpoint())
        .arg("upload")
        .arg(&bundle)
        .args(["--workers", "2", "--no-progress", "--state-dir"])
        .arg(&state)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.stats().blocks_stored < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    server.set_faults(ebs_testserver::Faults::default());
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(&bundle)
            .args([
                "--resume",
                "--format",
                "json",
                "--no-progress",
                "--state-dir",
            ])
            .arg(&state),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(r["blocks_resumed"].as_u64().unwrap() >= 4, "{r}");
    // CompleteSnapshot was accepted: the strict server checked the count and the
    // LINEAR aggregate, which is the bundle's own.
    let id = r["snapshot_id"].as_str().unwrap();
    assert_eq!(server.describe(id).unwrap().0, "completed");
    assert_eq!(r["checksum"], manifest(&bundle)["aggregate"]);
    let back = dir.path("back.img");
    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("download")
            .arg(id)
            .arg(&back),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_padded(&image, &back);
}
