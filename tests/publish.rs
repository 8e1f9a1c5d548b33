//! `amiforge register` and `amiforge publish`: the exact RegisterImage request (checked
//! on the strict server, which records it, because moto drops most parameters),
//! idempotent re-runs, validation before any call, the gate, clean-up after a failed
//! registration, and the whole pipeline against moto with boto3 checking the result.

mod common;
use common::*;
use ebs_testserver::{start_background, Config, Faults};
use serde_json::Value;
use std::path::Path;

fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn publish(
    endpoint: &str,
    image: &Path,
    name: &str,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    outcome(
        amiforge_at(endpoint)
            .arg("publish")
            .arg(image)
            .args(["--name", name, "--format", "json", "--no-progress"])
            .args(extra),
    )
}

fn quiet() -> Config {
    Config {
        completion_delay_ms: 100,
        ..Default::default()
    }
}

#[test]
fn publish_sends_the_parameters_the_image_implies_and_the_snapshot_reads_back_equal() {
    let server = start_background(quiet()).unwrap();
    let image = fixture("gpt-uefi.img");
    let (code, stdout, stderr) = publish(
        &server.endpoint(),
        &image,
        "amiforge-uefi-test",
        &["--imds-v2", "--tpm-v2", "--tag", "team=infra"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let (ami, snap) = (
        r["image_id"].as_str().unwrap(),
        r["snapshot_id"].as_str().unwrap(),
    );
    assert!(ami.starts_with("ami-"));
    assert_eq!(r["existing"], false);
    let reg = server.ec2_requests("RegisterImage");
    assert_eq!(reg.len(), 1);
    let f = &reg[0];
    for (k, v) in [
        ("Name", "amiforge-uefi-test"),
        ("Architecture", "x86_64"),
        ("BootMode", "uefi"),
        ("EnaSupport", "true"),
        ("SriovNetSupport", "simple"),
        ("ImdsSupport", "v2.0"),
        ("TpmSupport", "v2.0"),
        ("VirtualizationType", "hvm"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snap),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ("TagSpecification.1.ResourceType", "image"),
    ] {
        assert_eq!(field(f, k), Some(v), "{k} in {f:?}");
    }
    let tags = server.tags_of(ami);
    let tag = |k: &str| {
        tags.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(tag("team").as_deref(), Some("infra"));
    assert_eq!(tag("amiforge:disk-sha256"), Some(disk_identity(&image)));
    assert_eq!(
        tag("amiforge:version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(
        tag("amiforge:audit").unwrap().contains("Debian"),
        "{tags:?}"
    );
    assert!(
        server
            .tags_of(snap)
            .iter()
            .any(|(k, _)| k == "amiforge:disk-sha256"),
        "the snapshot is tagged too"
    );
    // The AMI's snapshot holds the image.
    let dir = Scratch::new("publish-readback");
    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("download")
            .arg(snap)
            .arg(dir.path("back.img")),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_padded(&image, &dir.path("back.img"));
}

#[test]
fn a_registration_whose_answer_was_lost_is_found_and_reused_not_duplicated() {
    let server = start_background(Config {
        faults: Faults {
            ec2_lose_answer_of: ["RegisterImage".to_string()].into(),
            ..Default::default()
        },
        ..quiet()
    })
    .unwrap();
    let (code, stdout, stderr) = publish(
        &server.endpoint(),
        &fixture("gpt-uefi.img"),
        "amiforge-lost-answer",
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let stats = server.stats();
    assert_eq!(stats.requests.get("lost"), Some(&1), "{stats:?}");
    // The retry met InvalidAMIName.Duplicate and took the image it had made.
    assert_eq!(server.ec2_requests("RegisterImage").len(), 2);
    assert!(server
        .image_state(r["image_id"].as_str().unwrap())
        .is_some());
}

#[test]
fn publishing_again_returns_the_same_ami_without_uploading() {
    let server = start_background(quiet()).unwrap();
    let image = fixture("gpt-bios.img");
    let (code, first, stderr) = publish(&server.endpoint(), &image, "amiforge-rerun", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        field(&server.ec2_requests("RegisterImage")[0], "BootMode"),
        Some("legacy-bios")
    );
    let starts = server.stats().requests["StartSnapshot"];
    let (code, again, stderr) = publish(&server.endpoint(), &image, "amiforge-rerun", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["image_id"], first["image_id"]);
    assert_eq!(again["existing"], true);
    assert_eq!(
        server.stats().requests["StartSnapshot"],
        starts,
        "nothing uploaded"
    );
    assert_eq!(
        server.ec2_requests("RegisterImage").len(),
        1,
        "nothing registered"
    );
    // The same name for another image is refused.
    let (code, _, stderr) = publish(
        &server.endpoint(),
        &fixture("gpt-uefi.img"),
        "amiforge-rerun",
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("already exists") && stderr.contains(first["image_id"].as_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn invalid_registrations_are_refused_before_any_call() {
    let server = start_background(quiet()).unwrap();
    let image = fixture("gpt-uefi.img");
    for (args, why) in [
        (
            vec!["--architecture", "arm64", "--boot-mode", "legacy-bios"],
            "arm64",
        ),
        (vec!["--tpm-v2", "--boot-mode", "uefi-preferred"], "TPM"),
    ] {
        let (code, _, stderr) = publish(&server.endpoint(), &image, "amiforge-invalid", &args);
        assert_eq!(code, Some(2), "{args:?}");
        assert!(stderr.contains(why), "{stderr}");
    }
    let (code, _, stderr) = publish(&server.endpoint(), &image, "no", &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("3 to 128 characters"), "{stderr}");
    let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args([
        "register",
        "--name",
        "x:y",
        "--snapshot",
        "snap-1",
        "--architecture",
        "x86_64",
        "--boot-mode",
        "uefi",
    ]));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("holds ':'"), "{stderr}");
    assert!(
        server.stats().requests.is_empty(),
        "no call was made: {:?}",
        server.stats()
    );
}

#[test]
fn the_gate_stops_an_image_without_a_readable_root_before_uploading() {
    let server = start_background(quiet()).unwrap();
    let (code, _, stderr) = publish(
        &server.endpoint(),
        &fixture("gpt-containers.img"),
        "amiforge-gated",
        &["--architecture", "x86_64", "--boot-mode", "uefi"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("gate failed"), "{stderr}");
    assert!(server.stats().requests.is_empty());
}

#[test]
fn a_failed_registration_deletes_the_snapshot_unless_asked_to_keep_it() {
    let server = start_background(Config {
        faults: Faults {
            fail_register: true,
            ..Default::default()
        },
        ..quiet()
    })
    .unwrap();
    let image = fixture("bare-ext4.img");
    // A bare filesystem has no boot path: the audit's high finding is accepted here.
    let args = ["--boot-mode", "uefi", "--fail-on", "critical"];
    let (code, _, stderr) = publish(&server.endpoint(), &image, "amiforge-fails", &args);
    assert_eq!(code, Some(2), "{stderr}");
    let snap = stderr
        .split_whitespace()
        .find(|w| w.starts_with("snap-"))
        .unwrap()
        .trim_end_matches(|c: char| !c.is_alphanumeric());
    assert!(
        stderr.contains(&format!("deleted snapshot {snap}")),
        "{stderr}"
    );
    assert!(server.describe(snap).is_none(), "the snapshot is gone");
    let (code, _, stderr) = publish(
        &server.endpoint(),
        &image,
        "amiforge-fails",
        &[&args[..], &["--keep-on-failure"]].concat(),
    );
    assert_eq!(code, Some(2));
    let kept = stderr
        .split_whitespace()
        .find(|w| w.starts_with("snap-"))
        .unwrap()
        .trim_end_matches(|c: char| !c.is_alphanumeric());
    assert!(stderr.contains("keeping snapshot"), "{stderr}");
    assert_eq!(server.describe(kept).unwrap().0, "completed");
}

#[test]
fn register_detects_parameters_from_the_image_and_maps_data_snapshots() {
    let server = start_background(quiet()).unwrap();
    let image = fixture("gpt-hybrid.img");
    let (code, snap, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(&image)
            .arg("--no-progress"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let snap = snap.trim();
    let (code, data, _) = outcome(
        amiforge_at(&server.endpoint())
            .arg("upload")
            .arg(fixture("bare-ext4.img"))
            .arg("--no-progress"),
    );
    assert_eq!(code, Some(0));
    let data = data.trim();
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .args([
                "register",
                "--name",
                "amiforge-register-test",
                "--snapshot",
                snap,
                "--data-snapshot",
                data,
                "--image",
            ])
            .arg(&image)
            .args(["--format", "json"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["spec"]["boot_mode"], "uefi-preferred");
    let f = &server.ec2_requests("RegisterImage")[0];
    assert_eq!(field(f, "BootMode"), Some("uefi-preferred"));
    assert_eq!(
        field(f, "BlockDeviceMapping.2.DeviceName"),
        Some("/dev/xvdb")
    );
    assert_eq!(field(f, "BlockDeviceMapping.2.Ebs.SnapshotId"), Some(data));
}
