//! `amiforge diff`: what changed between two images of the same disk. The second
//! image is the fixture with files added, removed and rewritten by debugfs (e2fsprogs,
//! an independent writer); the diff names exactly those files, whether the two are
//! local files (compared by reading) or a snapshot and its incremental child on the
//! strict server (compared with ListChangedBlocks).

mod common;
use common::*;
use ebs_testserver::{start_background, Config};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The root partition of gpt-uefi.img, in 512-byte sectors (sfdisk -d).
const ROOT_START: u64 = 100_352;
const ROOT_SECTORS: u64 = 309_215;

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// gpt-uefi.img with /etc/added.conf added, /etc/hostname removed and /etc/passwd
/// rewritten with one byte changed (same size, so only its bytes tell).
fn changed_image(dir: &Scratch) -> PathBuf {
    let image = dir.path("changed.img");
    std::fs::copy(fixture("gpt-uefi.img"), &image).unwrap();
    let root = dir.path("root.ext4");
    let dd = |args: &[String]| run(Command::new("dd").args(args).arg("status=none"));
    dd(&[
        format!("if={}", image.display()),
        format!("of={}", root.display()),
        "bs=512".into(),
        format!("skip={ROOT_START}"),
        format!("count={ROOT_SECTORS}"),
    ]);
    let o = Command::new("debugfs")
        .args(["-R", "cat /etc/passwd"])
        .arg(&root)
        .output()
        .unwrap();
    let mut passwd = o.stdout;
    assert!(!passwd.is_empty());
    passwd[0] ^= 0x20; // "root" → "Root"
    std::fs::write(dir.path("passwd"), &passwd).unwrap();
    std::fs::write(dir.path("added.conf"), "added = true\n").unwrap();
    let script = dir.path("debugfs.cmd");
    std::fs::write(
        &script,
        format!(
            "rm /etc/hostname\nrm /etc/passwd\nwrite {} /etc/passwd\nwrite {} /etc/added.conf\n",
            dir.path("passwd").display(),
            dir.path("added.conf").display()
        ),
    )
    .unwrap();
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(&root));
    dd(&[
        format!("if={}", root.display()),
        format!("of={}", image.display()),
        "bs=512".into(),
        format!("seek={ROOT_START}"),
        "conv=notrunc".into(),
    ]);
    image
}

fn diff_json(cmd: &mut Command) -> Value {
    let (code, stdout, stderr) = outcome(cmd.args(["--format", "json"]));
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// The diff names exactly the three changes, all in the root partition.
fn assert_names_exactly_the_changes(d: &Value) {
    let parts = d["partitions"].as_array().unwrap();
    let esp = parts.iter().find(|p| p["number"] == 1).unwrap();
    assert_eq!(esp["changed_blocks"], 0, "{esp}");
    let root = parts.iter().find(|p| p["number"] == 2).unwrap();
    assert!(root["changed_blocks"].as_u64().unwrap() > 0, "{root}");
    assert_eq!(
        root["files"],
        serde_json::json!({
            "added": ["/etc/added.conf"],
            "removed": ["/etc/hostname"],
            "modified": ["/etc/passwd"],
        }),
        "{root}"
    );
    assert!(d["table_changes"].is_null(), "{d}");
}

#[test]
fn two_image_files_differ_in_exactly_the_files_debugfs_changed() {
    let dir = Scratch::new("diff-files");
    let changed = changed_image(&dir);
    let d = diff_json(
        amiforge()
            .arg("diff")
            .arg(fixture("gpt-uefi.img"))
            .arg(&changed),
    );
    assert_eq!(d["method"], "compared");
    assert_names_exactly_the_changes(&d);

    let same = diff_json(amiforge().arg("diff").arg(&changed).arg(&changed));
    assert_eq!(same["changed_blocks"], 0);
}

#[test]
fn a_snapshot_and_its_incremental_child_differ_in_exactly_the_changed_files() {
    let server = start_background(Config {
        completion_delay_ms: 100,
        ..Default::default()
    })
    .unwrap();
    let endpoint = server.endpoint();
    let dir = Scratch::new("diff-snapshots");
    let changed = changed_image(&dir);
    let manifest = dir.path("blocks.json");
    let manifest = manifest.to_str().unwrap();
    let parent = upload_snapshot(
        &endpoint,
        &fixture("gpt-uefi.img"),
        &["--manifest", manifest],
    );
    let child = upload_snapshot(
        &endpoint,
        &changed,
        &["--parent-snapshot", &parent, "--manifest", manifest],
    );

    let d = diff_json(amiforge_at(&endpoint).args(["diff", &parent, &child]));
    assert_eq!(d["method"], "ListChangedBlocks");
    assert_names_exactly_the_changes(&d);
    let listed = server.stats().requests.get("ListChangedBlocks").copied();
    assert!(listed.unwrap_or(0) >= 1, "the server was asked");

    // Snapshots of different lineages cannot be compared by their changed blocks.
    let stranger = upload_snapshot(&endpoint, &changed, &[]);
    let (code, _, stderr) = outcome(amiforge_at(&endpoint).args(["diff", &parent, &stranger]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("UNRELATED_SNAPSHOTS") || stderr.contains("unrelated"),
        "{stderr}"
    );
}
