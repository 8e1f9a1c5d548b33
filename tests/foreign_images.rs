//! Images in the layouts other tools and older systems leave behind
//! (scripts/make-foreign-fixtures.sh): what amiforge says of each must agree with the
//! independent readers (blkid, mdadm --examine, sfdisk, mmls, fsck.vfat, debugfs), and
//! what it cannot read is named, never passed off as empty or read short.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn foreign(name: &str) -> PathBuf {
    fixture(&format!("foreign/{name}"))
}

fn inspect(path: &Path) -> Value {
    json(&["inspect", path.to_str().unwrap(), "--format", "json"])
}

fn partition(report: &Value, number: u64) -> &Value {
    report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"] == number)
        .unwrap_or_else(|| panic!("no partition {number} in {report:#}"))
}

fn notes(p: &Value) -> String {
    p["filesystem"]["notes"].to_string()
}

/// `blkid -p` (low-level probing, no cache): TYPE and VERSION.
fn blkid(path: &Path) -> (String, String) {
    let out = String::from_utf8(tool_output(
        tool("blkid").args(["-p", "-o", "export"]).arg(path),
    ))
    .unwrap();
    let get = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_string()
    };
    (get("TYPE"), get("VERSION"))
}

fn cat(path: &Path, file: &str) -> (Option<i32>, String, String) {
    outcome(amiforge().arg("cat").arg(path).arg(file))
}

/// `cat` reads the fixtures' tree: /etc/hostname, exactly.
fn assert_reads_the_tree(path: &Path) {
    let (code, out, err) = cat(path, "/etc/hostname");
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "foreign-host\n"),
        "{}: {err}",
        path.display()
    );
}

#[test]
fn a_small_fat32_with_its_total_in_the_16_bit_field_is_read_with_a_note() {
    let path = foreign("fat32-small.img");
    // fsck.vfat (dosfstools) finds it consistent.
    tool_output(tool("fsck.vfat").arg("-n").arg(&path));
    assert_eq!(blkid(&path), ("vfat".into(), "FAT32".into()));
    let r = inspect(&path);
    let p = partition(&r, 0);
    assert_eq!(p["filesystem"]["kind"], "vfat");
    assert_eq!(p["filesystem"]["examined"], true, "{r:#}");
    assert!(notes(p).contains("16-bit field"), "{}", notes(p));
    assert_reads_the_tree(&path);
}

#[test]
fn large_sectors_and_fat12_are_read() {
    for (name, version) in [("fat16-sector4k.img", "FAT16"), ("fat12-tiny.img", "FAT12")] {
        let path = foreign(name);
        assert_eq!(blkid(&path), ("vfat".into(), version.into()), "{name}");
        let p = inspect(&path);
        assert_eq!(partition(&p, 0)["filesystem"]["examined"], true, "{name}");
    }
}

#[test]
fn ext_layouts_strict_readers_refuse_are_read_and_say_which_reader() {
    for name in ["ext4-inode128.img", "ext2-nofiletype.img"] {
        let path = foreign(name);
        let r = inspect(&path);
        let p = partition(&r, 0);
        assert_eq!(p["filesystem"]["examined"], true, "{name}: {r:#}");
        assert!(notes(p).contains("own ext reader"), "{name}: {}", notes(p));
        assert_reads_the_tree(&path);
    }
}

#[test]
fn an_external_journal_is_named_as_one_and_not_examined() {
    let path = foreign("ext-journal-dev.img");
    assert_eq!(blkid(&path).0, "jbd");
    let r = inspect(&path);
    assert_eq!(partition(&r, 0)["filesystem"]["kind"], "jbd");
    assert_eq!(partition(&r, 0)["filesystem"]["examined"], false);
    let gap = &r["not_examined"][0];
    assert!(
        gap["reason"]
            .as_str()
            .unwrap()
            .contains("external ext3/ext4 journal"),
        "{gap}"
    );
}

#[test]
fn big_endian_swap_with_8k_pages_is_swap() {
    let path = foreign("swap-be-8k.img");
    assert_eq!(blkid(&path).0, "swap");
    assert_eq!(partition(&inspect(&path), 0)["filesystem"]["kind"], "swap");
}

#[test]
fn a_recursive_listing_goes_on_past_an_encrypted_directory_and_names_it() {
    let path = foreign("ext4-encrypted-dir.img");
    let (code, out, err) = outcome(amiforge().arg("ls").arg(&path).args(["/", "-R"]));
    assert_eq!(code, Some(0), "{err}");
    for listed in ["/outside.txt", "/etc/hostname", "/locked"] {
        assert!(out.lines().any(|l| l == listed), "{listed} in {out}");
    }
    assert!(!out.contains("inside.txt"), "{out}");
    assert!(
        err.contains("/locked") && err.contains("not listed"),
        "{err}"
    );
    let (code, _, err) = cat(&path, "/locked/inside.txt");
    assert_eq!(code, Some(2), "{err}");
}

/// (start, size) in bytes of the partitions amiforge lists that `keep` keeps, in its
/// order.
fn spans(report: &Value, keep: impl Fn(&Value) -> bool) -> Vec<(u64, u64)> {
    report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| keep(p))
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect()
}

fn sfdisk(path: &Path) -> Vec<(u64, u64)> {
    let v: Value =
        serde_json::from_slice(&tool_output(tool("sfdisk").arg("--json").arg(path))).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect()
}

/// The allocated slots `mmls` lists ("002:  000:000  0000002048  ..."), sorted by start.
fn mmls(path: &Path) -> Vec<(u64, u64)> {
    let out = String::from_utf8(tool_output(tool("mmls").arg(path))).unwrap();
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || !f[1].contains(':') {
                return None;
            }
            Some((
                f[2].parse::<u64>().ok()? * 512,
                f[4].parse::<u64>().ok()? * 512,
            ))
        })
        .collect()
}

#[test]
fn ebr_chains_long_backwards_and_in_odd_slots_agree_with_sfdisk_and_mmls() {
    for (name, logicals) in [
        ("mbr-long-chain.img", 11),
        ("mbr-backwards-chain.img", 4),
        ("mbr-odd-slots.img", 11),
    ] {
        let path = foreign(name);
        let r = inspect(&path);
        let mine = spans(&r, |_| true);
        // sfdisk numbers the logical partitions in chain order, as amiforge does.
        assert_eq!(mine, sfdisk(&path), "{name}");
        let logical = spans(&r, |p| p["logical"] == true);
        assert_eq!(logical.len(), logicals, "{name}");
        // mmls lists the data partitions sorted by start.
        let mut data = spans(&r, |p| p["extended"] == false);
        data.sort();
        let theirs: Vec<(u64, u64)> = mmls(&path)
            .into_iter()
            .filter(|&(start, _)| start != 0 && mine.iter().any(|&(s, _)| s == start))
            .collect();
        let extended = spans(&r, |p| p["extended"] == true);
        let theirs: Vec<(u64, u64)> = theirs
            .into_iter()
            .filter(|p| !extended.contains(p))
            .collect();
        assert_eq!(data, theirs, "{name}");
    }
}

/// `mdadm --examine`: the metadata version and RAID level.
fn mdadm_examine(path: &Path) -> (String, String) {
    let out = String::from_utf8(tool_output(tool("mdadm").arg("--examine").arg(path))).unwrap();
    let get = |key: &str| {
        out.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(" : ")?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    (get("Version"), get("Raid Level"))
}

#[test]
fn md_raid1_members_of_every_superblock_version_are_read_through_their_data_area() {
    for (name, version) in [
        ("md-0.90-raid1.img", "0.90"),
        ("md-1.0-raid1.img", "1.0"),
        ("md-1.1-raid1.img", "1.1"),
        ("md-1.2-raid1.img", "1.2"),
    ] {
        let path = foreign(name);
        let (blkid_type, blkid_version) = blkid(&path);
        assert_eq!(blkid_type, "linux_raid_member", "{name}");
        assert!(
            blkid_version.starts_with(version),
            "{name}: {blkid_version}"
        );
        let (md_version, level) = mdadm_examine(&path);
        assert!(md_version.starts_with(version), "{name}: {md_version}");
        assert_eq!(level, "raid1", "{name}");
        let r = inspect(&path);
        let p = partition(&r, 0);
        assert_eq!(p["filesystem"]["kind"], "ext4", "{name}: {r:#}");
        assert_eq!(p["filesystem"]["examined"], true, "{name}");
        assert!(
            notes(p).contains(&format!("Linux md RAID1 member (metadata {version}")),
            "{name}: {}",
            notes(p)
        );
        assert_reads_the_tree(&path);
    }
}

#[test]
fn an_md_raid5_member_is_named_and_listed_as_not_examined() {
    let path = foreign("md-1.2-raid5.img");
    assert_eq!(mdadm_examine(&path).1, "raid5");
    let r = inspect(&path);
    let p = partition(&r, 0);
    assert_eq!(p["filesystem"]["kind"], "linux_raid_member");
    assert_eq!(p["filesystem"]["examined"], false);
    let reasons = r["not_examined"].to_string();
    assert!(
        reasons.contains("Linux md RAID5 member (metadata 1.2)"),
        "{reasons}"
    );
}

#[test]
fn firmware_raid_members_are_named_and_their_partitions_still_read() {
    for (name, kind) in [
        ("isw-member.img", "isw_raid_member"),
        ("ddf-member.img", "ddf_raid_member"),
    ] {
        let path = foreign(name);
        assert_eq!(blkid(&path).0, kind, "{name}");
        let r = inspect(&path);
        let gaps = r["not_examined"].as_array().unwrap();
        assert!(
            gaps.iter()
                .any(|g| g["what"] == format!("RAID set ({kind})")),
            "{name}: {gaps:#?}"
        );
        assert!(
            r["partition_table"]["notes"].to_string().contains("RAID"),
            "{name}"
        );
        assert_eq!(partition(&r, 1)["filesystem"]["examined"], true, "{name}");
    }
}

#[test]
fn a_file_cut_off_by_a_truncated_image_is_an_error_naming_it_never_a_short_read() {
    for name in [
        "fat32-small-truncated.img",
        "ext4-inode128-truncated.img",
        "ext2-nofiletype-truncated.img",
    ] {
        let path = foreign(name);
        let file = "/sub dir/forty-thousand.bin";
        let listing = json(&[
            "ls",
            path.to_str().unwrap(),
            "/sub dir",
            "-l",
            "--format",
            "json",
        ]);
        assert_eq!(
            listing[0]["size"], 40000,
            "{name}: ls -l keeps the recorded size"
        );
        let (code, out, err) = cat(&path, file);
        assert_eq!(code, Some(2), "{name}: {} bytes printed, {err}", out.len());
        assert!(err.contains("forty-thousand.bin"), "{name}: {err}");
    }
}
