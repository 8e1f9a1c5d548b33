//! Volumes made by their own tools (scripts/make-volume-fixtures.sh).
//!
//! - LVM2: a GPT image with an ext4 /boot and two PVs of one VG holding a linear LV
//!   in two segments (the root, on both PVs), a striped LV and a swap LV. LVM's own
//!   account of the layout (`lvs -o seg_pe_ranges`, saved beside the image) and the
//!   trees the filesystems were made from are the independent ground truth.
//! - XFS v4 and v5 made by `mkfs.xfs -p`, checked against their tree and `xfs_db`;
//!   a default XFS of xfsprogs 7 populated from a directory (bmap btrees, parent
//!   pointers), checked against `xfs_db rdump`.
//! - btrfs made by `mkfs.btrfs --rootdir`, uncompressed and with each compression,
//!   with a subvolume, and a Fedora-shaped disk; checked against their trees and
//!   against `btrfs restore`, btrfs-progs' own reader.
//! - A RHEL-shaped disk: ESP, /boot on XFS, and an LVM PV with the root (XFS, an rpm
//!   sqlite database) and swap LVs; checked against `rpm -qa` and `lvs`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

const EXTENT: u64 = 4 << 20;

fn lvm_image() -> std::path::PathBuf {
    fixture("volumes/lvm.img")
}

/// LV name → extents, from LVM's `lvs` account.
fn lvm_account() -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(fixture("volumes/lvm.segments")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(';').collect();
        let extents: u64 = fields[2]
            .split_whitespace()
            .map(|r| {
                let (a, b) = r.split_once(':').unwrap().1.split_once('-').unwrap();
                b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1
            })
            .sum();
        *out.entry(fields[0].to_string()).or_default() += extents;
    }
    out
}

/// Every regular file under `tree`, relative path → SHA-256.
fn tree_files(tree: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(tree)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                out.insert(format!("/{rel}"), sha256_file(&e.path()));
            }
        }
    }
    out
}

#[test]
fn logical_volumes_are_listed_after_the_partitions_with_the_sizes_lvm_gives_them() {
    let r = json(&["inspect", lvm_image().to_str().unwrap(), "--format", "json"]);
    let parts = r["partitions"].as_array().unwrap();
    let lvs: BTreeMap<String, &Value> = parts
        .iter()
        .filter(|p| p["type"] == "lvm-logical-volume")
        .map(|p| (p["name"].as_str().unwrap().to_string(), p))
        .collect();
    let account = lvm_account();
    assert_eq!(
        lvs.keys().cloned().collect::<Vec<_>>(),
        ["vg0/data", "vg0/root", "vg0/swap"]
    );
    for (name, extents) in &account {
        let p = lvs[&format!("vg0/{name}")];
        assert_eq!(p["size"].as_u64(), Some(extents * EXTENT), "{name}");
        assert!(
            p["number"].as_u64().unwrap() > 3,
            "numbered after the partitions"
        );
    }
    assert_eq!(lvs["vg0/root"]["filesystem"]["kind"], "ext4");
    assert_eq!(lvs["vg0/data"]["filesystem"]["kind"], "ext4");
    assert_eq!(lvs["vg0/swap"]["filesystem"]["kind"], "swap");
    // The PVs are examined: their content is the LVs.
    for n in [2, 3] {
        let pv = &parts[n - 1];
        assert_eq!(pv["filesystem"]["kind"], "lvm2");
        assert_eq!(pv["filesystem"]["examined"], true, "{pv}");
        assert!(
            pv["filesystem"]["notes"][0]
                .as_str()
                .unwrap()
                .contains("vg0/root"),
            "{pv}"
        );
    }
    // The root is the LV, found by its os-release.
    assert_eq!(r["root_partition"], lvs["vg0/root"]["number"]);
    assert_eq!(r["os"]["id"], "rocky");
    let not_examined = r["not_examined"].to_string();
    assert!(!not_examined.contains("lvm2"), "{not_examined}");
    assert!(
        not_examined.contains("vg0/swap"),
        "swap is listed as swap: {not_examined}"
    );
}

#[test]
fn the_files_on_a_linear_lv_in_two_segments_and_on_a_striped_lv_match_their_trees() {
    let image = lvm_image();
    let image = image.to_str().unwrap();
    for (lv, tree) in [
        ("vg0/root", "volumes/lvm-root.tree"),
        ("vg0/data", "volumes/lvm-data.tree"),
    ] {
        for (path, sha) in tree_files(&fixture(tree)) {
            let bytes = ok(&["cat", image, &path, "--partition", lv]);
            assert_eq!(sha256(&bytes), sha, "{lv}:{path}");
        }
        let listed = json(&[
            "ls",
            image,
            "/",
            "-R",
            "--partition",
            lv,
            "--format",
            "json",
        ]);
        assert!(listed.as_array().unwrap().len() > 1, "{lv}: {listed}");
    }
    // By default, cat reads the root filesystem: the LV.
    assert_eq!(ok(&["cat", image, "/etc/hostname"]), b"lvm-host\n");
}

#[test]
fn the_audit_reads_inside_the_logical_volumes() {
    let image = lvm_image();
    let (code, stdout, stderr) = outcome(
        amiforge()
            .args([
                "audit",
                image.to_str().unwrap(),
                "--format",
                "json",
                "--fail-on",
                "none",
            ])
            .env("AWS_EC2_METADATA_DISABLED", "true"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let findings = r["findings"].to_string();
    assert!(
        findings.contains("/home/user/.aws-credentials"),
        "{findings}"
    );
}

#[test]
fn a_missing_pv_is_named_for_the_lvs_that_need_it_and_the_rest_are_read() {
    let dir = Scratch::new("lvm-missing-pv");
    let image = dir.path("lvm.img");
    sparse_copy(&lvm_image(), &image);
    // Partition 3 (pv1) starts at 125 MiB: its label gone, the PV is not in the image.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.write_all_at(&[0u8; 2048], 125 << 20).unwrap();
    let r = json(&["inspect", image.to_str().unwrap(), "--format", "json"]);
    let not_examined = r["not_examined"].to_string();
    for lv in ["vg0/root", "vg0/data"] {
        assert!(
            not_examined.contains(&format!("LVM logical volume {lv}: its PV pv1")),
            "{lv}: {not_examined}"
        );
    }
    let swap = r["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "vg0/swap")
        .unwrap();
    assert_eq!(
        swap["filesystem"]["kind"], "swap",
        "the LV on pv0 alone is read"
    );
}

/// Every entry under `tree`: relative path → (kind letter, size or link target).
fn tree_entries(tree: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let rel = format!(
                "/{}",
                e.path().strip_prefix(tree).unwrap().to_str().unwrap()
            );
            let what = if t.is_dir() {
                stack.push(e.path());
                "dir".to_string()
            } else if t.is_symlink() {
                format!("link {}", std::fs::read_link(e.path()).unwrap().display())
            } else {
                format!("file {}", e.metadata().unwrap().len())
            };
            out.insert(rel, what);
        }
    }
    out
}

#[test]
fn xfs_v5_and_v4_trees_read_as_mkfs_wrote_them_in_every_directory_format() {
    let tree = fixture("volumes/xfs.tree");
    let expected = tree_entries(&tree);
    for name in ["volumes/xfs-v5.img", "volumes/xfs-v4.img"] {
        let image = fixture(name);
        let image = image.to_str().unwrap();
        let r = json(&["inspect", image, "--format", "json"]);
        assert_eq!(r["partitions"][0]["filesystem"]["kind"], "xfs", "{name}");
        assert_eq!(
            r["partitions"][0]["filesystem"]["examined"], true,
            "{name}: {r}"
        );
        assert_eq!(r["os"]["id"], "rocky", "{name}");
        assert_eq!(
            listed_entries(image, &[]),
            expected,
            "{name}: names, kinds, sizes and link targets"
        );
        // Every file outside the big directories, and a sample of those (their
        // names and sizes are compared above).
        for (i, (path, sha)) in tree_files(&tree).into_iter().enumerate() {
            let big_dir = path.starts_with("/node/") || path.starts_with("/leaf/");
            if !big_dir || i % 97 == 0 {
                assert_eq!(sha256(&ok(&["cat", image, &path])), sha, "{name}:{path}");
            }
        }
    }
}

#[test]
fn a_default_xfs_of_todays_mkfs_reads_as_xfs_db_rdump_writes_it_out() {
    let image = fixture("volumes/xfs-modern.img");
    let image = image.to_str().unwrap();
    // What the fixture is for, as xfs_db sees it: a file and a directory whose
    // extents live in a bmap btree, and parent pointers and exchange-range on.
    let xfs_db = private_tool("xfsprogs/bin/xfs_db");
    let seen = String::from_utf8(tool_output(
        std::process::Command::new(&xfs_db)
            .args([
                "-r",
                "-c",
                "path /usr/lib/sparse.bin",
                "-c",
                "print core.format",
            ])
            .args([
                "-c",
                "path /big",
                "-c",
                "print core.format",
                "-c",
                "version",
            ])
            .arg(image),
    ))
    .unwrap();
    assert_eq!(seen.matches("core.format = 3 (btree)").count(), 2, "{seen}");
    assert!(
        seen.contains("PARENT") && seen.contains("EXCHANGE"),
        "{seen}"
    );

    let r = json(&["inspect", image, "--format", "json"]);
    assert_eq!(r["partitions"][0]["filesystem"]["kind"], "xfs");
    assert_eq!(r["partitions"][0]["filesystem"]["examined"], true, "{r}");
    // Names (colons and 30,000 entries of one directory), kinds, sizes and link
    // targets agree with xfs_db's rdump; so does every byte of every file, the
    // sparse one's holes included.
    let rdump = fixture("volumes/xfs-modern.rdump");
    assert_eq!(listed_entries(image, &[]), tree_entries(&rdump));
    for (path, sha) in tree_files(&rdump) {
        if !path.starts_with("/big/") {
            assert_eq!(sha256(&ok(&["cat", image, &path])), sha, "{path}");
        }
    }
}

/// A sparse copy of `from` at `to`, with the bits of `mask` flipped in the byte at
/// offset `at`.
fn copy_with_bits_flipped(from: &Path, to: &Path, at: u64, mask: u8) {
    sparse_copy(from, to);
    let mut byte = [0u8; 1];
    std::fs::File::open(from)
        .unwrap()
        .read_exact_at(&mut byte, at)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .unwrap()
        .write_all_at(&[byte[0] ^ mask], at)
        .unwrap();
}

/// The byte offset of XFS filesystem block `fsblock`, as xfs_db converts it.
fn xfs_byte_offset(image: &Path, fsblock: u64) -> u64 {
    let out = tool_output(
        tool("xfs_db")
            .args(["-r", "-c", &format!("convert fsblock {fsblock} byte")])
            .arg(image),
    );
    let text = String::from_utf8(out).unwrap();
    // "0x1400f000 (335605760)"
    text.split(['(', ')']).nth(1).unwrap().parse().unwrap()
}

#[test]
fn v5_metadata_blocks_whose_crc_does_not_match_are_errors_not_misreads() {
    let scratch = Scratch::new("xfs-crc");
    // A block-format directory's only block, one byte of an entry changed.
    let v5 = fixture("volumes/xfs-v5.img");
    let bmap = String::from_utf8(tool_output(
        tool("xfs_db")
            .args(["-r", "-c", "path /block", "-c", "bmap"])
            .arg(&v5),
    ))
    .unwrap();
    // "data offset 0 startblock 32807 (1/39) count 1 flag 0"
    let block: u64 = bmap.split_whitespace().nth(4).unwrap().parse().unwrap();
    let damaged = scratch.path("dir.img");
    copy_with_bits_flipped(&v5, &damaged, xfs_byte_offset(&v5, block) + 100, 0x20);
    let (code, _, stderr) = outcome(amiforge().arg("ls").arg(&damaged).arg("/block"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("CRC does not match"), "{stderr}");

    // A bmap btree block of the sparse file of xfsprogs 7's image.
    let modern = fixture("volumes/xfs-modern.img");
    let ptrs = String::from_utf8(tool_output(
        std::process::Command::new(private_tool("xfsprogs/bin/xfs_db"))
            .args([
                "-r",
                "-c",
                "path /usr/lib/sparse.bin",
                "-c",
                "print u3.bmbt.ptrs",
            ])
            .arg(&modern),
    ))
    .unwrap();
    // "u3.bmbt.ptrs[1-3] = 1:98329 2:98331 3:98339"
    let block: u64 = ptrs
        .split_whitespace()
        .nth(2)
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let damaged = scratch.path("bmbt.img");
    copy_with_bits_flipped(
        &modern,
        &damaged,
        xfs_byte_offset(&modern, block) + 200,
        0x01,
    );
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("cat")
            .arg(&damaged)
            .arg("/usr/lib/sparse.bin"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("CRC does not match"), "{stderr}");
}

#[test]
fn an_xfs_directory_in_node_format_lists_what_xfs_db_lists() {
    let image = fixture("volumes/xfs-v5.img");
    let out = tool_output(tool("xfs_db").args(["-r", "-c", "ls /node"]).arg(&image));
    let xfs_db: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(xfs_db.len(), 3000);
    let listed = json(&["ls", image.to_str().unwrap(), "/node", "--format", "json"]);
    let mut ours: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .trim_start_matches("/node/")
                .to_string()
        })
        .collect();
    let mut theirs = xfs_db;
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
}

/// `ls -R -l` of an image's filesystem: path → (kind letter, size or link target),
/// as [`tree_entries`] gives them for a directory tree.
fn listed_entries(image: &str, extra: &[&str]) -> BTreeMap<String, String> {
    let mut args = vec!["ls", image, "/", "-R", "-l", "--format", "json"];
    args.extend_from_slice(extra);
    let mut seen = BTreeMap::new();
    for e in json(&args).as_array().unwrap() {
        let path = e["path"].as_str().unwrap().to_string();
        let what = match e["kind"].as_str().unwrap() {
            "dir" => "dir".to_string(),
            "symlink" => format!("link {}", e["target"].as_str().unwrap()),
            _ => format!("file {}", e["size"]),
        };
        seen.insert(path, what);
    }
    seen.remove("/");
    seen
}

#[test]
fn btrfs_trees_read_as_mkfs_wrote_them_uncompressed_and_with_zlib_lzo_and_zstd() {
    let tree = fixture("volumes/btrfs.tree");
    let expected = tree_entries(&tree);
    let files = tree_files(&tree);
    for compression in ["no", "zlib", "lzo", "zstd"] {
        let name = format!("btrfs-{compression}");
        let image = fixture(&format!("volumes/{name}.img"));
        let image = image.to_str().unwrap();
        // btrfs-progs' own reader agrees with the source tree...
        let restored = tree_files(&fixture(&format!("volumes/{name}.restored")));
        assert_eq!(restored, files, "{name}: btrfs restore");
        // ...and so does amiforge, in names, kinds, sizes, link targets and bytes.
        let r = json(&["inspect", image, "--format", "json"]);
        let fs = &r["partitions"][0]["filesystem"];
        assert_eq!(fs["kind"], "btrfs", "{name}");
        assert_eq!(fs["examined"], true, "{name}: {r}");
        assert_eq!(r["os"]["id"], "rocky", "{name}");
        assert_eq!(listed_entries(image, &[]), expected, "{name}");
        for (i, (path, sha)) in files.iter().enumerate() {
            if !path.starts_with("/many/") || i % 97 == 0 {
                assert_eq!(&sha256(&ok(&["cat", image, path])), sha, "{name}:{path}");
            }
        }
        // The subvolume is a directory like any other.
        assert_eq!(ok(&["cat", image, "/srv/data.txt"]), b"in a subvolume\n");
    }
}

#[test]
fn a_fedora_layout_reads_the_root_subvolume_and_mounts_home_where_fstab_says() {
    let image = fixture("volumes/fedora-btrfs.img");
    let image = image.to_str().unwrap();
    let r = json(&["inspect", image, "--format", "json"]);
    assert_eq!(r["os"]["id"], "fedora", "{r}");
    assert_eq!(r["root_partition"], 3, "{r}");
    assert_eq!(r["architecture"], "x86_64", "{r}");
    assert_eq!(r["boot_mode"], "uefi", "{r}");
    assert_eq!(r["kernels"][0]["version"], "6.8.5-301.fc40.x86_64", "{r}");
    let notes = r["partitions"][2]["filesystem"]["notes"].to_string();
    assert!(notes.contains("/ is subvolume root"), "{notes}");
    assert!(notes.contains("/home is subvolume home"), "{notes}");
    let not_examined = r["not_examined"].to_string();
    assert!(
        not_examined.contains("partition 3: btrfs subvolume snapshots"),
        "the subvolume mounted nowhere is listed: {not_examined}"
    );
    // What btrfs restore wrote out of the top level: root/ and home/ (and
    // snapshots/, which is not under /).
    let restored = fixture("volumes/fedora-btrfs.restored");
    let mut expected = tree_entries(&restored.join("root"));
    for (path, what) in tree_entries(&restored.join("home")) {
        expected.insert(format!("/home{path}"), what);
    }
    assert_eq!(listed_entries(image, &["--partition", "3"]), expected);
    let home = tree_files(&restored.join("home"));
    for (path, sha) in &home {
        let path = format!("/home{path}");
        assert_eq!(&sha256(&ok(&["cat", image, &path])), sha, "{path}");
    }
    // The audit reads inside the grafted subvolume.
    let (code, stdout, stderr) =
        outcome(amiforge().args(["audit", image, "--format", "json", "--fail-on", "none"]));
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        secret_at(&report, "/home/user/.aws-credentials"),
        "{:#}",
        report["findings"]
    );
    // Its free space was read (no coverage entry for it), and the live key in a
    // DUP metadata chunk is not taken for deleted data.
    let findings = report["findings"].to_string();
    assert!(!findings.contains("unallocated space of"), "{findings}");
    assert!(!findings.contains("<unallocated>"), "{findings}");
}

#[test]
fn a_rhel_layout_is_read_through_its_xfs_boot_and_its_xfs_root_lv() {
    let image = fixture("volumes/rhel.img");
    let image = image.to_str().unwrap();
    let r = json(&["inspect", image, "--format", "json"]);
    assert_eq!(r["os"]["id"], "rocky", "{r}");
    assert_eq!(r["architecture"], "x86_64", "{r}");
    assert_eq!(r["boot_mode"], "uefi", "{r}");
    assert_eq!(
        r["kernels"][0]["version"], "5.14.0-362.8.1.el9_3.x86_64",
        "the kernel on the XFS /boot partition: {r}"
    );
    let parts = r["partitions"].as_array().unwrap();
    let kinds: Vec<(String, String)> = parts
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["filesystem"]["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (name, kind) in [("rl/root", "xfs"), ("rl/swap", "swap")] {
        assert!(
            kinds.iter().any(|(n, k)| n == name && k == kind),
            "{name} ({kind}) in {kinds:?}"
        );
    }
    assert_eq!(parts[1]["filesystem"]["kind"], "xfs", "/boot");
    // The thin pool and its thin LV are named, with the segment type, not read.
    let not_examined = r["not_examined"].to_string();
    for (lv, kind) in [("rl/pool", "thin-pool"), ("rl/thin1", "thin")] {
        assert!(
            not_examined.contains(&format!("LVM logical volume {lv}"))
                && not_examined.contains(&format!("of type \\\"{kind}\\\"")),
            "{lv}: {not_examined}"
        );
    }
    let root = parts.iter().find(|p| p["name"] == "rl/root").unwrap();
    assert_eq!(r["root_partition"], root["number"], "the root is the LV");
    // LVM's account: the root LV's 80 extents of 4 MiB.
    let segments = std::fs::read_to_string(fixture("volumes/rhel.segments")).unwrap();
    assert!(segments.contains("root;pv0:0-79"), "{segments}");
    assert_eq!(root["size"].as_u64(), Some(80 * EXTENT), "{root}");

    let (code, stdout, stderr) =
        outcome(amiforge().args(["audit", image, "--format", "json", "--fail-on", "none"]));
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    // The packages are what rpm -qa says of the same database.
    let expected: std::collections::BTreeSet<String> =
        std::fs::read_to_string(fixture("volumes/rhel.rpm-qa"))
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                match f[1] {
                    "(none)" => format!("{} {} {}", f[0], f[2], f[3]),
                    e => format!("{} {e}:{} {}", f[0], f[2], f[3]),
                }
            })
            .collect();
    let listed: std::collections::BTreeSet<String> = report["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "rpm")
        .map(|p| {
            format!(
                "{} {} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["arch"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(listed, expected);
    assert!(
        secret_at(&report, "/root/.aws/credentials"),
        "{:#}",
        report["findings"]
    );
}

/// Whether the audit found the AWS access key id in the file at `path`.
fn secret_at(report: &Value, path: &str) -> bool {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["rule"] == "secret.aws-access-key-id" && f["path"] == path)
}

#[test]
fn a_btrfs_over_two_devices_is_listed_as_not_examined_with_the_reason() {
    let dir = Scratch::new("btrfs-two-devices");
    let image = dir.path("btrfs.img");
    sparse_copy(&fixture("volumes/btrfs-no.img"), &image);
    // The superblock says two devices, with its CRC-32C made to match again.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let mut sb = vec![0u8; 4096];
    f.read_exact_at(&mut sb, 65536).unwrap();
    sb[0x88..0x90].copy_from_slice(&2u64.to_le_bytes());
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&sb[32..]);
    sb[..4].copy_from_slice(&crc.to_le_bytes());
    f.write_all_at(&sb, 65536).unwrap();
    let r = json(&["inspect", image.to_str().unwrap(), "--format", "json"]);
    assert_eq!(r["partitions"][0]["filesystem"]["examined"], false, "{r}");
    let not_examined = r["not_examined"].to_string();
    assert!(
        not_examined.contains("a filesystem over 2 devices"),
        "{not_examined}"
    );
}
