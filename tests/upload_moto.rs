//! `amiforge upload`, `download` and `verify` against moto, an independent
//! implementation of the EBS and EC2 APIs, with every block read back by boto3, an
//! independent client, and compared byte for byte with the zero-padded image.

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

/// One EC2 call through boto3; its response as JSON.
pub fn ec2_call(endpoint: &str, region: &str, op: &str, args: Value) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ec2_call.py");
    let o = Command::new(venv().join("bin/python"))
        .arg(script)
        .args([endpoint, region, op])
        .arg(args.to_string())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "boto3 {op} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn readback_with_boto3(endpoint: &str, snapshot: &str, out: &std::path::Path) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ebs_readback.py");
    let o = Command::new(venv().join("bin/python"))
        .arg(script)
        .arg(endpoint)
        .arg(snapshot)
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "boto3 readback failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_fixture_image_uploads_to_moto_and_reads_back_identical_with_boto3_and_amiforge() {
    let moto = Moto::start();
    let dir = Scratch::new("moto-roundtrip");
    let image = fixture("gpt-uefi.img");
    let (code, stdout, stderr) =
        outcome(amiforge_at(&moto.endpoint).arg("upload").arg(&image).args([
            "--format",
            "json",
            "--no-progress",
        ]));
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let id = r["snapshot_id"].as_str().unwrap();
    assert!(id.starts_with("snap-"));
    readback_with_boto3(&moto.endpoint, id, &dir.path("boto3.img"));
    assert_same_padded(&image, &dir.path("boto3.img"));
    let (code, _, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .arg("download")
            .arg(id)
            .arg(dir.path("amiforge.img")),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_padded(&image, &dir.path("amiforge.img"));
    let (code, stdout, _) = outcome(
        amiforge_at(&moto.endpoint)
            .arg("verify")
            .arg(&image)
            .arg(id),
    );
    assert_eq!(code, Some(0), "{stdout}");
    // Read in place, the snapshot inspects like the image.
    let inspect = |cmd: &mut Command| -> Value {
        let (code, stdout, stderr) = outcome(cmd.args(["--format", "json"]));
        assert_eq!(code, Some(0), "{stderr}");
        serde_json::from_str(&stdout).unwrap()
    };
    let local = inspect(amiforge().arg("inspect").arg(&image));
    let remote = inspect(amiforge_at(&moto.endpoint).arg("inspect").arg(id));
    for key in ["partitions", "os", "boot_mode", "kernels", "architecture"] {
        assert_eq!(remote[key], local[key], "{key}");
    }
    // And audits like it.
    let audit = |cmd: &mut Command| {
        let (code, stdout, stderr) = outcome(cmd.args(["--format", "json", "--fail-on", "none"]));
        assert_eq!(code, Some(0), "{stderr}");
        comparable_audit(serde_json::from_str(&stdout).unwrap())
    };
    assert_eq!(
        audit(amiforge_at(&moto.endpoint).arg("audit").arg(id)),
        audit(amiforge().arg("audit").arg(&image))
    );
}

#[test]
fn a_synthetic_image_with_zeros_and_holes_round_trips_through_moto() {
    let moto = Moto::start();
    let dir = Scratch::new("moto-synthetic");
    let image = dir.path("s.img");
    make_image(&image, (20 << 20) + 12345, 21); // a partial last block
    let (code, stdout, stderr) =
        outcome(amiforge_at(&moto.endpoint).arg("upload").arg(&image).args([
            "--format",
            "json",
            "--no-progress",
            "--tag",
            "purpose=test",
        ]));
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["blocks_total"], 41);
    readback_with_boto3(
        &moto.endpoint,
        r["snapshot_id"].as_str().unwrap(),
        &dir.path("back.img"),
    );
    assert_same_padded(&image, &dir.path("back.img"));
}

#[test]
fn publish_registers_an_ami_on_moto_that_boto3_can_describe_and_whose_snapshot_holds_the_image() {
    let moto = Moto::start();
    let dir = Scratch::new("moto-publish");
    let image = fixture("gpt-uefi.img");
    let run = || {
        outcome(
            amiforge_at(&moto.endpoint)
                .arg("publish")
                .arg(&image)
                .args([
                    "--name",
                    "amiforge-moto-publish",
                    "--format",
                    "json",
                    "--no-progress",
                ]),
        )
    };
    let (code, stdout, stderr) = run();
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let ami = r["image_id"].as_str().unwrap();
    let snap = r["snapshot_id"].as_str().unwrap();
    let described = &ec2_call(
        &moto.endpoint,
        "us-east-1",
        "describe_images",
        serde_json::json!({ "ImageIds": [ami] }),
    )["Images"][0];
    assert_eq!(described["Name"], "amiforge-moto-publish");
    assert_eq!(described["State"], "available");
    readback_with_boto3(&moto.endpoint, snap, &dir.path("root.img"));
    assert_same_padded(&image, &dir.path("root.img"));
    // A re-run finds the AMI by name and its image tag, and uploads nothing.
    let (code, stdout, stderr) = run();
    assert_eq!(code, Some(0), "{stderr}");
    let again: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(again["image_id"], ami);
    assert_eq!(again["existing"], true);
}

fn ami_cmd(moto: &Moto, args: &[&str]) -> Value {
    let (code, stdout, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .arg("ami")
            .args(args)
            .args(["--format", "json"]),
    );
    assert_eq!(code, Some(0), "ami {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// Uploads the bare ext4 fixture once and registers it under `names`, in a family.
fn registered_family(moto: &Moto, family: &str, names: &[&str]) -> (String, Vec<String>) {
    let (code, snap, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .arg("upload")
            .arg(fixture("bare-ext4.img"))
            .arg("--no-progress"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let snap = snap.trim().to_string();
    let mut ids = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (code, id, stderr) = outcome(amiforge_at(&moto.endpoint).args([
            "register",
            "--name",
            name,
            "--snapshot",
            &snap,
            "--architecture",
            "x86_64",
            "--boot-mode",
            "uefi",
            "--tag",
            &format!("amiforge:family={family}"),
            "--tag",
            &format!("amiforge:image-version={i}"),
        ]));
        assert_eq!(code, Some(0), "{stderr}");
        ids.push(id.trim().to_string());
    }
    (snap, ids)
}

#[test]
fn publish_and_promote_point_an_ssm_parameter_at_the_ami_as_boto3_reads_it() {
    let moto = Moto::start();
    let image = fixture("bare-ext4.img");
    let publish = |name: &str| {
        let (code, stdout, stderr) = outcome(
            amiforge_at(&moto.endpoint)
                .arg("publish")
                .arg(&image)
                .args([
                    "--name",
                    name,
                    "--boot-mode",
                    "uefi",
                    "--fail-on",
                    "critical",
                ])
                .args(["--ssm-parameter", "/images/web/latest", "--no-progress"]),
        );
        assert_eq!(code, Some(0), "{stderr}");
        stdout.trim().to_string()
    };
    let parameter = || {
        ec2_call(
            &moto.endpoint,
            "us-east-1",
            "ssm:get_parameter",
            serde_json::json!({ "Name": "/images/web/latest" }),
        )["Parameter"]
            .clone()
    };
    let first = publish("amiforge-ssm-1");
    let p = parameter();
    assert_eq!(p["Value"], first.as_str());
    assert_eq!(p["DataType"], "aws:ec2:image");
    assert_eq!(p["Version"], 1);
    let second = publish("amiforge-ssm-2");
    assert_eq!(parameter()["Value"], second.as_str());
    // Rolling back is a promote of the earlier image.
    let moved = ami_cmd(
        &moto,
        &["promote", &first, "--ssm-parameter", "/images/web/latest"],
    );
    assert_eq!(moved[0]["previous"], second.as_str(), "{moved}");
    let p = parameter();
    assert_eq!(
        (p["Value"].as_str(), p["Version"].as_i64()),
        (Some(first.as_str()), Some(3))
    );
    let listed = ami_cmd(&moto, &["list", "--ssm-path", "/images"]);
    let names_of = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["image_id"] == id)
            .map(|i| i["ssm_parameters"].clone())
            .unwrap()
    };
    assert_eq!(names_of(&first), serde_json::json!(["/images/web/latest"]));
    assert_eq!(names_of(&second), serde_json::json!([]));
}

#[test]
fn share_sets_launch_permissions_that_boto3_sees() {
    let moto = Moto::start();
    let (_, ids) = registered_family(&moto, "share-fam", &["amiforge-share"]);
    ami_cmd(&moto, &["share", &ids[0], "--account", "123456789012"]);
    let perms = ec2_call(
        &moto.endpoint,
        "us-east-1",
        "describe_image_attribute",
        serde_json::json!({ "ImageId": ids[0], "Attribute": "launchPermission" }),
    );
    assert_eq!(
        perms["LaunchPermissions"],
        serde_json::json!([{ "UserId": "123456789012" }]),
        "{perms}"
    );
    // moto drops RegisterImage's block device mappings and invents a snapshot for the
    // image, so the snapshot's createVolumePermission is checked on the strict server
    // (tests/ami_lifecycle_strict.rs) instead.
    ami_cmd(&moto, &["unshare", &ids[0], "--account", "123456789012"]);
    let perms = ec2_call(
        &moto.endpoint,
        "us-east-1",
        "describe_image_attribute",
        serde_json::json!({ "ImageId": ids[0], "Attribute": "launchPermission" }),
    );
    assert_eq!(perms["LaunchPermissions"], serde_json::json!([]), "{perms}");
}

#[test]
fn copy_makes_an_available_image_in_each_region() {
    let moto = Moto::start();
    let (_, ids) = registered_family(&moto, "copy-fam", &["amiforge-copy"]);
    let copies = ami_cmd(
        &moto,
        &[
            "copy",
            &ids[0],
            "--to-region",
            "us-west-2",
            "--to-region",
            "eu-west-1",
        ],
    );
    let copies = copies.as_array().unwrap();
    assert_eq!(copies.len(), 2);
    for c in copies {
        let region = c["region"].as_str().unwrap();
        let id = c["image_id"].as_str().unwrap();
        let d = ec2_call(
            &moto.endpoint,
            region,
            "describe_images",
            serde_json::json!({ "ImageIds": [id] }),
        );
        assert_eq!(d["Images"][0]["State"], "available", "{region}: {d}");
        assert_eq!(d["Images"][0]["Name"], "amiforge-copy");
    }
}

#[test]
fn list_and_prune_keep_the_newest_of_a_family_and_dry_run_changes_nothing() {
    let moto = Moto::start();
    let (snap, ids) = registered_family(
        &moto,
        "prune-fam",
        &["amiforge-prune-1", "amiforge-prune-2", "amiforge-prune-3"],
    );
    let listed = ami_cmd(&moto, &["list", "--family", "prune-fam"]);
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let dry = ami_cmd(
        &moto,
        &["prune", "--family", "prune-fam", "--keep", "1", "--dry-run"],
    );
    assert_eq!(dry["removed"].as_array().unwrap().len(), 2, "{dry}");
    let still = ec2_call(
        &moto.endpoint,
        "us-east-1",
        "describe_images",
        serde_json::json!({ "ImageIds": ids }),
    );
    assert_eq!(
        still["Images"].as_array().unwrap().len(),
        3,
        "dry run removed nothing"
    );
    let done = ami_cmd(&moto, &["prune", "--family", "prune-fam", "--keep", "1"]);
    let kept = done["kept"].as_array().unwrap();
    assert_eq!(kept.len(), 1);
    let left = ec2_call(
        &moto.endpoint,
        "us-east-1",
        "describe_images",
        serde_json::json!({ "Owners": ["self"] }),
    );
    let left: Vec<&str> = left["Images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ImageId"].as_str().unwrap())
        .collect();
    assert_eq!(left, vec![kept[0].as_str().unwrap()]);
    // The snapshot is shared with the kept image, so it stays.
    let snaps = ec2_call(
        &moto.endpoint,
        "us-east-1",
        "describe_snapshots",
        serde_json::json!({ "SnapshotIds": [snap] }),
    );
    assert_eq!(snaps["Snapshots"].as_array().unwrap().len(), 1);
}

#[test]
fn a_bundle_publishes_on_moto_with_its_bundled_spec_and_reads_back_identical() {
    let moto = Moto::start();
    let dir = Scratch::new("moto-bundle");
    let image = fixture("gpt-uefi.img");
    let bundle = dir.path("bundle");
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("bundle")
            .arg(&image)
            .arg("--out")
            .arg(&bundle)
            .args(["--name", "amiforge-from-bundle", "--imds-v2"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    // The other side of the gap: no image, only the bundle.
    let (code, stdout, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .arg("publish")
            .arg(&bundle)
            .args(["--format", "json", "--no-progress"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("bundle verified"), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let (ami, snap) = (
        r["image_id"].as_str().unwrap(),
        r["snapshot_id"].as_str().unwrap(),
    );
    let described = &ec2_call(
        &moto.endpoint,
        "us-east-1",
        "describe_images",
        serde_json::json!({ "ImageIds": [ami] }),
    )["Images"][0];
    assert_eq!(described["Name"], "amiforge-from-bundle");
    readback_with_boto3(&moto.endpoint, snap, &dir.path("root.img"));
    assert_same_padded(&image, &dir.path("root.img"));
}

#[test]
fn uploads_from_qcow2_and_stream_optimized_vmdk_read_back_from_moto_as_the_raw_image() {
    let moto = Moto::start();
    let dir = Scratch::new("moto-containers");
    let raw = fixture("gpt-uefi.img");
    for (name, options) in [
        ("disk.qcow2", &["-O", "qcow2"][..]),
        (
            "disk.vmdk",
            &["-O", "vmdk", "-o", "subformat=streamOptimized"][..],
        ),
    ] {
        let container = dir.path(name);
        qemu_convert(&raw, &container, options);
        let (code, stdout, stderr) = outcome(
            amiforge_at(&moto.endpoint)
                .arg("upload")
                .arg(&container)
                .args(["--format", "json", "--no-progress"]),
        );
        assert_eq!(code, Some(0), "{name}: {stderr}");
        let r: Value = serde_json::from_str(&stdout).unwrap();
        let back = dir.path(&format!("{name}.back"));
        readback_with_boto3(&moto.endpoint, r["snapshot_id"].as_str().unwrap(), &back);
        assert_same_padded(&raw, &back);
    }
}

#[test]
fn an_image_in_s3_uploads_to_a_snapshot_without_touching_local_disk() {
    let moto = Moto::start();
    let dir = Scratch::new("moto-s3-upload");
    let image = fixture("gpt-uefi.img");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/s3_put.py");
    let o = Command::new(venv().join("bin/python"))
        .arg(script)
        .args([&moto.endpoint, "images", "web.img"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, stdout, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .args([
                "upload",
                "s3://images/web.img",
                "--format",
                "json",
                "--no-progress",
            ])
            .env("AMIFORGE_STATE_DIR", dir.path("state")),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let id = r["snapshot_id"].as_str().unwrap();
    readback_with_boto3(&moto.endpoint, id, &dir.path("boto3.img"));
    assert_same_padded(&image, &dir.path("boto3.img"));

    // publish: gated on the audit of the object read in place, registered in moto,
    // and its snapshot reads back identical with boto3.
    let (code, stdout, stderr) = outcome(
        amiforge_at(&moto.endpoint)
            .args(["publish", "s3://images/web.img", "--name", "web-from-s3"])
            .args(["--fail-on", "none", "--format", "json", "--no-progress"])
            .env("AMIFORGE_STATE_DIR", dir.path("state")),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let p: Value = serde_json::from_str(&stdout).unwrap();
    assert!(p["image_id"].as_str().unwrap().starts_with("ami-"), "{p}");
    let snapshot = p["snapshot_id"].as_str().unwrap();
    readback_with_boto3(&moto.endpoint, snapshot, &dir.path("published.img"));
    assert_same_padded(&image, &dir.path("published.img"));
}
