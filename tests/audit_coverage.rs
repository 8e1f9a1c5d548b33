//! What the audit could not read counts against the gate: every `not_examined` entry
//! has its `coverage.*` finding, with the documented default severity, and the
//! per-volume coverage figures agree with the filesystems' own tools (dumpe2fs -h,
//! fsck.vfat -n).

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn foreign(name: &str) -> PathBuf {
    fixture(&format!("foreign/{name}"))
}

/// Runs `audit --format json` with extra arguments; returns (exit code, report).
fn audit(path: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let (code, out, err) = outcome(
        amiforge()
            .arg("audit")
            .arg(path)
            .args(["--format", "json"])
            .args(extra),
    );
    assert!(matches!(code, Some(0) | Some(1)), "{err}");
    (code, serde_json::from_str(&out).expect("audit JSON"))
}

/// (rule, severity, partition, path) of every coverage finding.
fn coverage(report: &Value) -> BTreeSet<(String, String, Option<u64>, Option<String>)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["category"] == "coverage")
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["partition"].as_u64(),
                f["path"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn gap(
    rule: &str,
    severity: &str,
    partition: u64,
    path: Option<&str>,
) -> (String, String, Option<u64>, Option<String>) {
    (
        rule.to_string(),
        severity.to_string(),
        Some(partition),
        path.map(str::to_string),
    )
}

#[test]
fn every_not_examined_entry_has_exactly_one_coverage_finding_of_its_kind() {
    let images = [
        fixture("gpt-containers.img"),
        fixture("mbr.img"),
        foreign("ext4-dirdata.img"),
        foreign("ext4-encrypted-dir.img"),
        foreign("fat32-small-truncated.img"),
        foreign("ambiguous-ntfs-ext2.img"),
        foreign("md-1.2-raid5.img"),
        foreign("isw-member.img"),
        foreign("ext-journal-dev.img"),
    ];
    for path in images {
        let (_, r) = audit(&path, &["--fail-on", "none"]);
        let gaps = r["not_examined"].as_array().unwrap();
        let findings: Vec<&Value> = r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["category"] == "coverage")
            .collect();
        assert_eq!(gaps.len(), findings.len(), "{}: {r:#}", path.display());
        for g in gaps {
            let rule = format!("coverage.{}", rule_of(g["kind"].as_str().unwrap()));
            assert!(
                findings
                    .iter()
                    .any(|f| f["rule"] == rule.as_str() && f["partition"] == g["partition"]),
                "{}: no {rule} for {g}",
                path.display()
            );
        }
    }
}

/// The rule of each kind of gap, as the README documents it.
fn rule_of(kind: &str) -> &'static str {
    match kind {
        "volume" => "volume-not-read",
        "ambiguous-signature" => "ambiguous-signature",
        "directory" => "directory-not-read",
        "file" => "file-not-read",
        "compressed-file" => "compressed-file-not-read",
        "package-database" => "package-database-not-read",
        "swap" => "swap-not-read",
        "unknown-content" => "unknown-content",
        "no-files" => "no-files",
        "unallocated" => "unallocated-not-scanned",
        "raid-set" => "raid-set-not-assembled",
        "root-filesystem" => "no-root-filesystem",
        "auditor" => "auditor-failed",
        other => panic!("undocumented gap kind {other}"),
    }
}

#[test]
fn a_volume_with_a_refused_ext4_feature_fails_the_default_gate() {
    let (code, r) = audit(&foreign("ext4-dirdata.img"), &[]);
    assert_eq!(code, Some(1));
    let mut want = BTreeSet::new();
    want.insert(gap("coverage.volume-not-read", "high", 0, None));
    want.insert((
        "coverage.no-root-filesystem".to_string(),
        "medium".to_string(),
        None,
        None,
    ));
    assert_eq!(coverage(&r), want);
}

#[test]
fn an_encrypted_directory_and_a_compressed_file_over_its_bound_are_findings() {
    let scratch = Scratch::new("coverage-config");
    let config = scratch.path("audit.toml");
    std::fs::write(&config, "[limits]\nmax_decompressed_bytes = 1000\n").unwrap();
    let path = foreign("ext4-encrypted-dir.img");
    let (_, r) = audit(
        &path,
        &["--config", config.to_str().unwrap(), "--fail-on", "none"],
    );
    let mut want = BTreeSet::new();
    want.insert(gap(
        "coverage.directory-not-read",
        "high",
        0,
        Some("/locked"),
    ));
    want.insert(gap(
        "coverage.compressed-file-not-read",
        "medium",
        0,
        Some("/zeros.log.gz"),
    ));
    assert_eq!(coverage(&r), want);
    // Lowered per rule by the configuration, the directory no longer fails the gate
    // on its own account.
    std::fs::write(
        &config,
        "[severity]\n\"coverage.directory-not-read\" = \"low\"\n",
    )
    .unwrap();
    let (_, r) = audit(
        &path,
        &["--config", config.to_str().unwrap(), "--fail-on", "none"],
    );
    assert!(coverage(&r).contains(&gap(
        "coverage.directory-not-read",
        "low",
        0,
        Some("/locked")
    )));
}

#[test]
fn files_cut_off_by_a_truncated_image_are_medium_findings_and_its_lost_free_space_low() {
    let (code, r) = audit(
        &foreign("fat32-small-truncated.img"),
        &["--fail-on", "medium"],
    );
    assert_eq!(code, Some(1));
    let found = coverage(&r);
    assert!(
        found.contains(&gap(
            "coverage.file-not-read",
            "medium",
            0,
            Some("/sub dir/forty-thousand.bin")
        )),
        "{found:#?}"
    );
    assert!(
        found.contains(&gap("coverage.unallocated-not-scanned", "low", 0, None)),
        "{found:#?}"
    );
}

#[test]
fn two_signatures_on_one_volume_are_a_note_a_high_finding_and_both_are_tried() {
    let path = foreign("ambiguous-ntfs-ext2.img");
    // wipefs (util-linux) sees both signatures; blkid -p refuses to choose (exit 8).
    let wipefs = String::from_utf8(tool_output(tool("wipefs").arg(&path))).unwrap();
    assert!(
        wipefs.contains("ext2") && wipefs.contains("ntfs"),
        "{wipefs}"
    );
    let status = tool("blkid").arg("-p").arg(&path).output().unwrap().status;
    assert_eq!(status.code(), Some(8), "blkid calls it ambivalent");
    let inspect = json(&["inspect", path.to_str().unwrap(), "--format", "json"]);
    let fs = &inspect["partitions"][0]["filesystem"];
    assert_eq!(fs["kind"], "ext2", "the readable candidate is read");
    let mut signatures: Vec<&str> = fs["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    signatures.sort();
    assert_eq!(signatures, ["ext2", "ntfs"]);
    assert!(fs["notes"].to_string().contains("ambiguous"), "{fs}");
    let (code, r) = audit(&path, &[]);
    assert_eq!(code, Some(1));
    assert!(coverage(&r).contains(&gap("coverage.ambiguous-signature", "high", 0, None)));
}

/// `dumpe2fs -h`'s counts: (bytes used, bytes total, inodes used).
fn dumpe2fs(spec: &str) -> (u64, u64, u64) {
    let out = String::from_utf8(tool_output(tool("dumpe2fs").arg("-h").arg(spec))).unwrap();
    let get = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_prefix(':')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{key} in {out}"))
    };
    let bs = get("Block size");
    (
        (get("Block count") - get("Free blocks")) * bs,
        get("Block count") * bs,
        get("Inode count") - get("Free inodes"),
    )
}

/// `fsck.vfat -n`'s "N files, USED/TOTAL clusters", in bytes with the cluster size
/// from the boot sector.
fn fsck_vfat(path: &Path) -> (u64, u64) {
    let out = String::from_utf8(tool_output(tool("fsck.vfat").arg("-n").arg(path))).unwrap();
    let line = out
        .lines()
        .find(|l| l.contains(" clusters"))
        .expect("summary line");
    let counts = line
        .rsplit(", ")
        .next()
        .unwrap()
        .trim_end_matches(" clusters");
    let (used, total) = counts.split_once('/').unwrap();
    let boot = std::fs::read(path).unwrap();
    let cluster = u64::from(u16::from_le_bytes([boot[11], boot[12]])) * u64::from(boot[13]);
    (
        used.parse::<u64>().unwrap() * cluster,
        total.parse::<u64>().unwrap() * cluster,
    )
}

fn holds(report: &Value, partition: u64) -> &Value {
    let c = report["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["partition"] == partition)
        .expect("coverage entry");
    &c["holds"]
}

#[test]
fn coverage_figures_agree_with_dumpe2fs_and_fsck_vfat() {
    for name in [
        "ext4-inode128.img",
        "ext2-nofiletype.img",
        "ambiguous-ntfs-ext2.img",
    ] {
        let path = foreign(name);
        let (_, r) = audit(&path, &["--fail-on", "none"]);
        let h = holds(&r, 0);
        let (used, total, inodes) = dumpe2fs(path.to_str().unwrap());
        assert_eq!(h["bytes_used"], used, "{name}");
        assert_eq!(h["bytes_total"], total, "{name}");
        assert_eq!(h["inodes_used"], inodes, "{name}");
    }
    // A partition of a disk: dumpe2fs reads it at its offset.
    let disk = fixture("gpt-uefi.img");
    let (_, r) = audit(&disk, &["--fail-on", "none"]);
    let inspect = json(&["inspect", disk.to_str().unwrap(), "--format", "json"]);
    let offset = inspect["partitions"][1]["start"].as_u64().unwrap();
    let (used, _, inodes) = dumpe2fs(&format!("{}?offset={offset}", disk.display()));
    assert_eq!(holds(&r, 2)["bytes_used"], used);
    assert_eq!(holds(&r, 2)["inodes_used"], inodes);
    for name in ["fat32-small.img", "fat16-sector4k.img", "fat12-tiny.img"] {
        let path = foreign(name);
        let (_, r) = audit(&path, &["--fail-on", "none"]);
        let (used, total) = fsck_vfat(&path);
        assert_eq!(holds(&r, 0)["bytes_used"], used, "{name}");
        assert_eq!(holds(&r, 0)["bytes_total"], total, "{name}");
    }
}

#[test]
fn the_text_report_shows_what_was_seen_per_volume() {
    let path = foreign("ext4-inode128.img");
    let (code, out, _) = outcome(
        amiforge()
            .arg("audit")
            .arg(&path)
            .args(["--fail-on", "none"]),
    );
    assert_eq!(code, Some(0));
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("p0 ext4:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("entries listed") && line.contains("inodes in use"),
        "{line}"
    );
    assert!(
        out.contains(", boot unknown"),
        "boot mode named as in the JSON: {out}"
    );
}
