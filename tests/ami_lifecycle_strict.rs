//! The AMI lifecycle calls as they reach the wire, recorded by the strict test server:
//! sharing (and block public access), deprecation, copies, disabling, deregistration
//! protection, pruning, retries under EC2 faults, and --dry-run sending nothing.

mod common;
use common::*;
use ebs_testserver::{start_background, Config};

fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A server whose snapshots complete and images become available within 50 ms.
fn quick() -> Config {
    Config {
        completion_delay_ms: 50,
        ..Default::default()
    }
}

fn published(server: &ebs_testserver::Server) -> (String, String) {
    published_as(server, "amiforge-lifecycle", &[])
}

/// Publishes the bare ext4 fixture as `name` in family "web"; (image, snapshot).
fn published_as(server: &ebs_testserver::Server, name: &str, extra: &[&str]) -> (String, String) {
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("publish")
            .arg(fixture("bare-ext4.img"))
            .args(extra)
            .args([
                "--name",
                name,
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
    let server = start_background(quick()).unwrap();
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
        block_public_access: true,
        ..quick()
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
    let server = start_background(quick()).unwrap();
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
fn ec2_throttling_503s_and_dropped_connections_are_retried_by_every_lifecycle_command() {
    let server = start_background(Config {
        faults: ebs_testserver::Faults {
            ec2_throttle_rate: 0.25,
            ec2_unavailable_rate: 0.05,
            ec2_drop_rate: 0.05,
            ..Default::default()
        },
        ..quick()
    })
    .unwrap();
    let (ami, _) = published(&server);
    for args in [
        vec!["ami", "share", &ami, "--account", "111111111111"],
        vec!["ami", "deprecate", &ami, "--at", "2027-01-31T00:00:00Z"],
        vec!["ami", "copy", &ami, "--to-region", "us-west-2"],
        vec!["ami", "disable", &ami],
        vec!["ami", "enable", &ami],
        // The copy is the family's newest: the original goes.
        vec!["ami", "prune", "--family", "web", "--keep", "1"],
    ] {
        let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args(&args));
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    let stats = server.stats();
    let refused: u64 = ["throttled", "unavailable", "dropped"]
        .iter()
        .map(|k| stats.requests.get(*k).copied().unwrap_or(0))
        .sum();
    assert!(refused > 0, "some EC2 requests were refused: {stats:?}");
    for call in [
        "EnableImageDeprecation",
        "CopyImage",
        "DisableImage",
        "EnableImage",
        "DeregisterImage",
    ] {
        assert!(!server.ec2_requests(call).is_empty(), "{call} was made");
    }
    assert!(
        server.image_state(&ami).is_none(),
        "the original was pruned"
    );
}

#[test]
fn prune_never_touches_protected_or_recently_launched_images() {
    let server = start_background(quick()).unwrap();
    let (protected, _) = published_as(&server, "web-1", &["--protect"]);
    let (launched, _) = published_as(&server, "web-2", &[]);
    let (unused, _) = published_as(&server, "web-3", &[]);
    let (_newest, _) = published_as(&server, "web-4", &[]);
    assert_eq!(
        server.image_state(&protected).unwrap().1,
        "enabled",
        "publish --protect"
    );
    // Launched a moment ago; the other old one never was.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let recent = aws_like_time(now - 3600);
    server.set_last_launched(&launched, &recent);
    server.set_last_launched(&unused, "2020-01-01T00:00:00Z");
    let prune = |extra: &[&str]| {
        let (code, stdout, stderr) = outcome(
            amiforge_at(&server.endpoint())
                .args(["ami", "prune", "--family", "web", "--keep", "1"])
                .args(["--unused-for", "30", "--format", "json"])
                .args(extra),
        );
        assert_eq!(code, Some(0), "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let planned = prune(&["--dry-run"]);
    let spared: Vec<(&str, &str)> = planned["spared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["image_id"].as_str().unwrap(),
                s["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        spared
            .iter()
            .any(|(id, why)| *id == protected && why.contains("protection is enabled")),
        "{spared:?}"
    );
    assert!(
        spared
            .iter()
            .any(|(id, why)| *id == launched && why.contains("within 30 days")),
        "{spared:?}"
    );
    let removed: Vec<&str> = planned["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["image_id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [unused.as_str()]);
    assert!(server.ec2_requests("DeregisterImage").is_empty(), "dry run");
    prune(&[]);
    assert!(server.image_state(&unused).is_none());
    assert!(server.image_state(&protected).is_some());
    assert!(server.image_state(&launched).is_some());
    // Unprotected, it goes; protection with a cooldown outlasts `unprotect`.
    let ami = |args: &[&str]| {
        let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).arg("ami").args(args));
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    };
    ami(&["unprotect", &protected]);
    ami(&["protect", &launched, "--cooldown"]);
    ami(&["unprotect", &launched]);
    let after = prune(&[]);
    assert!(server.image_state(&protected).is_none(), "{after}");
    assert!(
        server
            .image_state(&launched)
            .unwrap()
            .1
            .starts_with("disabled-until"),
        "still protected during the cooldown"
    );
    let cooldown = &server.ec2_requests("EnableImageDeregistrationProtection");
    assert_eq!(
        field(cooldown.last().unwrap(), "WithCooldown"),
        Some("true")
    );
}

#[test]
fn prune_with_require_recycle_bin_removes_only_what_a_region_wide_rule_keeps() {
    use ebs_testserver::RecycleBinRule;
    let server = start_background(quick()).unwrap();
    let (old, _) = published_as(&server, "bin-1", &[]);
    published_as(&server, "bin-2", &[]);
    let rule = |id: &str, kind: &str, tags: &[(&str, &str)]| RecycleBinRule {
        id: id.into(),
        resource_type: kind.into(),
        retention_days: 7,
        resource_tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let prune = || {
        outcome(amiforge_at(&server.endpoint()).args([
            "ami",
            "prune",
            "--family",
            "web",
            "--keep",
            "1",
            "--require-recycle-bin",
            "--format",
            "json",
        ]))
    };
    // No rule; a rule for images only; a snapshot rule that depends on tags.
    for (rules, missing) in [
        (vec![], "EC2_IMAGE"),
        (vec![rule("img", "EC2_IMAGE", &[])], "EBS_SNAPSHOT"),
        (
            vec![
                rule("img", "EC2_IMAGE", &[]),
                rule("snap", "EBS_SNAPSHOT", &[("team", "web")]),
            ],
            "EBS_SNAPSHOT",
        ),
    ] {
        server.set_recycle_bin_rules(rules);
        let (code, _, stderr) = prune();
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("no Recycle Bin rule retains every {missing}")),
            "{stderr}"
        );
        assert!(server.ec2_requests("DeregisterImage").is_empty());
    }
    server.set_recycle_bin_rules(vec![
        rule("img", "EC2_IMAGE", &[]),
        rule("snap", "EBS_SNAPSHOT", &[]),
    ]);
    let (code, stdout, stderr) = prune();
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["removed"][0]["image_id"], old.as_str());
    assert_eq!(
        v["retained_by"],
        serde_json::json!([
            ["EC2_IMAGE", { "rule_id": "img", "keeps_for": "7 DAYS" }],
            ["EBS_SNAPSHOT", { "rule_id": "snap", "keeps_for": "7 DAYS" }]
        ])
    );
    assert!(server.image_state(&old).is_none());
}

#[test]
fn disable_and_enable_change_the_image_state() {
    let server = start_background(quick()).unwrap();
    let (ami, _) = published(&server);
    let run = |cmd: &str| {
        let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args(["ami", cmd, &ami]));
        assert_eq!(code, Some(0), "{cmd}: {stderr}");
        server.image_state(&ami).unwrap().0
    };
    assert_eq!(run("disable"), "disabled");
    assert_eq!(run("enable"), "available");
}

#[test]
fn public_sharing_reports_the_snapshot_block_public_access_state() {
    let server = start_background(Config {
        snapshot_block_public_access: "block-all-sharing".into(),
        ..quick()
    })
    .unwrap();
    let (ami, _) = published(&server);
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .args(["ami", "share", &ami, "--public", "--format", "json"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["result"]["snapshot_block_public_access"],
        "block-all-sharing"
    );
    let img = &server.ec2_requests("ModifyImageAttribute")[0];
    assert_eq!(
        field(img, "LaunchPermission.Add.1.Group"),
        Some("all"),
        "{img:?}"
    );
    assert!(
        server.ec2_requests("ModifySnapshotAttribute").is_empty(),
        "EC2 would refuse public snapshots: none are asked for"
    );
}

/// An RFC 3339 UTC time from seconds since the epoch.
fn aws_like_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn unauthorized_operation_fails_every_command_after_one_attempt_and_names_the_call() {
    let server = start_background(Config {
        faults: ebs_testserver::Faults {
            ec2_unauthorized: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let image = fixture("bare-ext4.img");
    let image = image.to_str().unwrap();
    let ami = "ami-0123456789abcdef0";
    for (args, call) in [
        (
            vec!["ami", "deprecate", ami, "--at", "2027-01-31T00:00:00Z"],
            "EnableImageDeprecation",
        ),
        (
            vec!["ami", "share", ami, "--account", "111111111111"],
            "DescribeImages",
        ),
        (
            vec!["ami", "copy", ami, "--to-region", "us-west-2"],
            "DescribeImages",
        ),
        (
            vec!["ami", "prune", "--family", "web", "--keep", "1"],
            "DescribeImages",
        ),
        (vec!["ami", "disable", ami], "DisableImage"),
        (
            vec!["ami", "protect", ami],
            "EnableImageDeregistrationProtection",
        ),
        (
            vec![
                "publish",
                image,
                "--name",
                "x-1",
                "--boot-mode",
                "uefi",
                "--fail-on",
                "critical",
            ],
            "DescribeImages",
        ),
    ] {
        let before: u64 = server.stats().requests.values().sum();
        let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args(&args));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("UnauthorizedOperation"), "{stderr}");
        assert!(
            stderr.contains(call),
            "{args:?}: the call is named: {stderr}"
        );
        assert!(
            stderr.contains("attempt 1 of up to 10: not retried"),
            "{args:?}: the attempt is named: {stderr}"
        );
        let after: u64 = server.stats().requests.values().sum();
        assert_eq!(after - before, 1, "{args:?}: exactly one attempt");
    }
}

#[test]
fn a_dropped_ec2_connection_is_retried() {
    let server = start_background(quick()).unwrap();
    let (ami, _) = published(&server);
    server.set_faults(ebs_testserver::Faults {
        ec2_drop_rate: 0.75,
        ..Default::default()
    });
    for _ in 0..4 {
        let (code, _, stderr) = outcome(amiforge_at(&server.endpoint()).args([
            "ami",
            "deprecate",
            &ami,
            "--at",
            "2027-01-31T00:00:00Z",
        ]));
        assert_eq!(code, Some(0), "{stderr}");
    }
    let dropped = server.stats().requests.get("dropped").copied().unwrap_or(0);
    assert!(
        dropped > 0,
        "connections were dropped and retried: {:?}",
        server.stats()
    );
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
