//! The AMI lifecycle calls as they reach the wire, recorded by the strict test server:
//! sharing (and block public access), deprecation, and --dry-run sending nothing.

mod common;
use common::*;
use ebs_testserver::{start_background, Config};

fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn published(server: &ebs_testserver::Server) -> (String, String) {
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("publish")
            .arg(fixture("bare-ext4.img"))
            .args([
                "--name",
                "amiforge-lifecycle",
                "--boot-mode",
                "uefi",
                "--fail-on",
                "critical",
                "--family",
                "web",
                "--image-version",
                "7",
                "--format",
                "json",
                "--no-progress",
            ]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    (
        v["image_id"].as_str().unwrap().to_string(),
        v["snapshot_id"].as_str().unwrap().to_string(),
    )
}

#[test]
fn share_modifies_the_image_and_its_snapshots_and_publish_tags_the_family() {
    let server = start_background(Config {
        completion_delay_ms: 50,
        ..Default::default()
    })
    .unwrap();
    let (ami, snap) = published(&server);
    let tags = server.tags_of(&ami);
    assert!(
        tags.contains(&("amiforge:family".into(), "web".into()))
            && tags.contains(&("amiforge:image-version".into(), "7".into())),
        "{tags:?}"
    );
    let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args([
        "ami",
        "share",
        &ami,
        "--account",
        "111111111111",
        "--org",
        "arn:aws:organizations::1:organization/o-abc",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let img = &server.ec2_requests("ModifyImageAttribute")[0];
    assert_eq!(
        field(img, "LaunchPermission.Add.1.UserId"),
        Some("111111111111"),
        "{img:?}"
    );
    assert_eq!(
        field(img, "LaunchPermission.Add.2.OrganizationArn"),
        Some("arn:aws:organizations::1:organization/o-abc")
    );
    let vol = &server.ec2_requests("ModifySnapshotAttribute")[0];
    assert_eq!(field(vol, "SnapshotId"), Some(snap.as_str()));
    assert_eq!(
        field(vol, "Attribute"),
        Some("createVolumePermission"),
        "{vol:?}"
    );
    assert_eq!(field(vol, "OperationType"), Some("add"), "{vol:?}");
    assert_eq!(field(vol, "UserId.1"), Some("111111111111"), "{vol:?}");
}

#[test]
fn public_sharing_is_refused_when_the_account_blocks_it() {
    let server = start_background(Config {
        completion_delay_ms: 50,
        block_public_access: true,
        ..Default::default()
    })
    .unwrap();
    let (ami, _) = published(&server);
    let (code, _, stderr) =
        outcome(amiforge_at(&server.endpoint()).args(["ami", "share", &ami, "--public"]));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("blocks public access"), "{stderr}");
    assert!(server.ec2_requests("ModifyImageAttribute").is_empty());
}

#[test]
fn deprecate_sends_the_time_and_dry_run_sends_nothing() {
    let server = start_background(Config {
        completion_delay_ms: 50,
        ..Default::default()
    })
    .unwrap();
    let (ami, _) = published(&server);
    let (code, _, _) = outcome(amiforge_at(&server.endpoint()).args([
        "ami",
        "deprecate",
        &ami,
        "--at",
        "2027-01-31T00:00:00Z",
        "--dry-run",
    ]));
    assert_eq!(code, Some(0));
    assert!(server.ec2_requests("EnableImageDeprecation").is_empty());
    let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args([
        "ami",
        "deprecate",
        &ami,
        "--at",
        "2027-01-31T00:00:00Z",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let r = &server.ec2_requests("EnableImageDeprecation")[0];
    assert_eq!(field(r, "ImageId"), Some(ami.as_str()));
    assert!(
        field(r, "DeprecateAt")
            .unwrap()
            .starts_with("2027-01-31T00:00:00"),
        "{r:?}"
    );
    let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args([
        "ami",
        "deprecate",
        &ami,
        "--at",
        "next tuesday",
    ]));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("RFC 3339"), "{stderr}");
    let (code, _, _) =
        outcome(amiforge_at(&server.endpoint()).args(["ami", "deprecate", &ami, "--cancel"]));
    assert_eq!(code, Some(0));
    assert_eq!(server.ec2_requests("DisableImageDeprecation").len(), 1);
}

#[test]
fn ec2_throttling_and_503s_are_retried_by_publish_share_and_deprecate() {
    let server = start_background(Config {
        completion_delay_ms: 50,
        faults: ebs_testserver::Faults {
            ec2_throttle_rate: 0.25,
            ec2_unavailable_rate: 0.05,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let (ami, _) = published(&server);
    for args in [
        vec!["ami", "share", &ami, "--account", "111111111111"],
        vec!["ami", "deprecate", &ami, "--at", "2027-01-31T00:00:00Z"],
    ] {
        let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args(&args));
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    let stats = server.stats();
    let retried = stats.requests.get("throttled").copied().unwrap_or(0)
        + stats.requests.get("unavailable").copied().unwrap_or(0);
    assert!(retried > 0, "some EC2 requests were refused: {stats:?}");
    assert!(!server.ec2_requests("EnableImageDeprecation").is_empty());
}

#[test]
fn unauthorized_operation_fails_after_one_attempt_and_names_the_call() {
    let server = start_background(Config {
        faults: ebs_testserver::Faults {
            ec2_unauthorized: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args([
        "ami",
        "deprecate",
        "ami-0123456789abcdef0",
        "--at",
        "2027-01-31T00:00:00Z",
    ]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("UnauthorizedOperation"), "{stderr}");
    assert!(
        stderr.contains("EnableImageDeprecation"),
        "the call is named: {stderr}"
    );
    let stats = server.stats();
    let calls: u64 = stats.requests.values().sum();
    assert_eq!(calls, 1, "exactly one attempt: {stats:?}");
}

#[test]
fn a_stalled_ec2_answer_is_abandoned_after_the_attempt_timeout_and_retried() {
    let server = start_background(Config {
        faults: ebs_testserver::Faults {
            ec2_delay_ms: 5000,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args([
        "ami",
        "deprecate",
        "ami-0123456789abcdef0",
        "--at",
        "2027-01-31T00:00:00Z",
        "--attempt-timeout",
        "1",
        "--max-attempts",
        "2",
    ]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "two 1 s attempts, not a 5 s wait"
    );
    assert_eq!(
        server
            .stats()
            .requests
            .get("EnableImageDeprecation")
            .copied(),
        Some(2),
        "the stalled attempt was retried once"
    );
}
