//! An EBS snapshot read in place (`snap-…` as the image of inspect, ls, cat, audit and
//! sbom), from the strict server, which checks every request and injects faults:
//! the results equal those of the local image the snapshot was uploaded from.

mod common;
use common::*;
use ebs_testserver::{start_background, Config, Faults};
use serde_json::Value;
use std::path::Path;

fn quiet(faults: Faults) -> Config {
    Config {
        completion_delay_ms: 100,
        faults,
        ..Default::default()
    }
}

fn upload(endpoint: &str, image: &Path) -> String {
    upload_snapshot(endpoint, image, &[])
}

fn json_of(cmd: &mut std::process::Command) -> Value {
    let (code, stdout, stderr) = outcome(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn a_snapshot_reads_in_place_like_the_image_it_was_uploaded_from() {
    let server = start_background(quiet(Faults::default())).unwrap();
    let image = fixture("gpt-uefi.img");
    let id = upload(&server.endpoint(), &image);
    let before = server
        .stats()
        .requests
        .get("GetSnapshotBlock")
        .copied()
        .unwrap_or(0);
    assert_eq!(before, 0);

    let local = json_of(
        amiforge()
            .arg("inspect")
            .arg(&image)
            .args(["--format", "json"]),
    );
    let remote =
        json_of(amiforge_at(&server.endpoint()).args(["inspect", &id, "--format", "json"]));
    assert_eq!(remote["partitions"], local["partitions"]);
    assert_eq!(remote["os"], local["os"]);
    assert_eq!(remote["boot_mode"], local["boot_mode"]);
    assert_eq!(remote["kernels"], local["kernels"]);
    let listed = server.own_blocks(&id).unwrap().len() as u64;
    let fetched = server.stats().requests["GetSnapshotBlock"];
    assert!(
        fetched <= listed,
        "inspect fetched {fetched} of the {listed} written blocks, each at most once"
    );

    // ls and cat read files through it.
    let ls_local = ok(&["ls", image.to_str().unwrap(), "/etc", "--format", "json"]);
    let (code, ls_remote, stderr) =
        outcome(amiforge_at(&server.endpoint()).args(["ls", &id, "/etc", "--format", "json"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&ls_local), ls_remote);
    let cat_local = ok(&["cat", image.to_str().unwrap(), "/etc/hostname"]);
    let (code, cat_remote, stderr) =
        outcome(amiforge_at(&server.endpoint()).args(["cat", &id, "/etc/hostname"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&cat_local), cat_remote);

    // The whole audit: the same findings, packages and coverage.
    let audit_local = json_of(amiforge().arg("audit").arg(&image).args([
        "--format",
        "json",
        "--fail-on",
        "none",
    ]));
    let audit_remote = json_of(amiforge_at(&server.endpoint()).args([
        "audit",
        &id,
        "--format",
        "json",
        "--fail-on",
        "none",
    ]));
    assert_eq!(
        comparable_audit(audit_remote),
        comparable_audit(audit_local)
    );
    assert!(server.stats().rejected.is_empty(), "{:?}", server.stats());
}

#[test]
fn throttling_and_server_errors_while_reading_are_retried() {
    let server = start_background(quiet(Faults::default())).unwrap();
    let image = fixture("gpt-uefi.img");
    let id = upload(&server.endpoint(), &image);
    server.set_faults(Faults {
        transient_rate: 0.3,
        slow_ms: 50,
        ..Default::default()
    });
    let local = json_of(
        amiforge()
            .arg("inspect")
            .arg(&image)
            .args(["--format", "json"]),
    );
    let remote =
        json_of(amiforge_at(&server.endpoint()).args(["inspect", &id, "--format", "json"]));
    assert_eq!(remote["partitions"], local["partitions"]);
    assert!(server.stats().faults_injected > 0, "faults were injected");
}

#[test]
fn a_block_corrupted_in_transit_is_an_error_naming_the_snapshot_and_block() {
    let server = start_background(quiet(Faults::default())).unwrap();
    let id = upload(&server.endpoint(), &fixture("gpt-uefi.img"));
    server.set_faults(Faults {
        corrupt_block: Some(0),
        ..Default::default()
    });
    let (code, _, stderr) =
        outcome(amiforge_at(&server.endpoint()).args(["inspect", &id, "--format", "json"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&id) && stderr.contains("block 0"),
        "{stderr}"
    );
}

#[test]
fn a_snapshot_that_does_not_exist_is_an_error_naming_it() {
    let server = start_background(quiet(Faults::default())).unwrap();
    let (code, _, stderr) =
        outcome(amiforge_at(&server.endpoint()).args(["inspect", "snap-0123456789abcdef0"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("snap-0123456789abcdef0"), "{stderr}");
}

#[test]
fn an_ami_reads_as_its_root_snapshot() {
    let server = start_background(quiet(Faults::default())).unwrap();
    let image = fixture("gpt-uefi.img");
    let snap = upload(&server.endpoint(), &image);
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .args(["register", "--name", "read-in-place", "--snapshot", &snap])
            .arg("--image")
            .arg(&image)
            .args(["--format", "json"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let registered: Value = serde_json::from_str(&stdout).unwrap();
    let ami = registered["image_id"].as_str().unwrap().to_string();
    let local = json_of(
        amiforge()
            .arg("inspect")
            .arg(&image)
            .args(["--format", "json"]),
    );
    let remote =
        json_of(amiforge_at(&server.endpoint()).args(["inspect", &ami, "--format", "json"]));
    assert_eq!(remote["partitions"], local["partitions"]);
    assert_eq!(remote["os"], local["os"]);
    let (code, _, stderr) =
        outcome(amiforge_at(&server.endpoint()).args(["inspect", "ami-0123456789abcdef0"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("ami-0123456789abcdef0"), "{stderr}");
}

#[test]
fn an_amis_data_volumes_read_as_partitions_of_their_own() {
    let server = start_background(quiet(Faults::default())).unwrap();
    let root_image = fixture("gpt-uefi.img");
    let data_image = fixture("bare-ext4.img");
    let root = upload(&server.endpoint(), &root_image);
    let data = upload(&server.endpoint(), &data_image);
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .args(["register", "--name", "with-data", "--snapshot", &root])
            .args(["--data-snapshot", &format!("{data}:/dev/sdb")])
            .arg("--image")
            .arg(&root_image)
            .args(["--format", "json"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let ami = serde_json::from_str::<Value>(&stdout).unwrap()["image_id"]
        .as_str()
        .unwrap()
        .to_string();

    let report =
        json_of(amiforge_at(&server.endpoint()).args(["inspect", &ami, "--format", "json"]));
    let parts = report["partitions"].as_array().unwrap();
    let local = json_of(
        amiforge()
            .arg("inspect")
            .arg(&root_image)
            .args(["--format", "json"]),
    );
    let own = local["partitions"].as_array().unwrap();
    assert_eq!(
        &parts[..own.len()],
        &own[..],
        "the root disk's partitions come first"
    );
    let extra = &parts[own.len()..];
    assert_eq!(extra.len(), 1, "{report}");
    assert_eq!(extra[0]["number"], own.len() as u64 + 1);
    assert_eq!(extra[0]["disk"], format!("/dev/sdb ({data})"));
    assert_eq!(extra[0]["filesystem"]["kind"], "ext4");

    // Its files read like the local image's.
    let listing = |cmd: &mut std::process::Command| {
        let (code, stdout, stderr) = outcome(cmd.args(["--format", "json"]));
        assert_eq!(code, Some(0), "{stderr}");
        stdout
    };
    let number = (own.len() + 1).to_string();
    assert_eq!(
        listing(amiforge_at(&server.endpoint()).args(["ls", &ami, "/", "--partition", &number])),
        listing(
            amiforge()
                .arg("ls")
                .arg(&data_image)
                .args(["/", "--partition", "0"])
        )
    );
}
