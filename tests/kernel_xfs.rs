//! XFS as the Linux kernel's own driver leaves it (scripts/make-kernel-fixtures.sh
//! boots the boot tree's kernel in QEMU to mount and work on the images): a
//! reflinked clone, inodes in sparse chunks, a deleted file in free space, and a
//! log left dirty by a power-off. Checked against xfs_db (xfsprogs 7), its rdump,
//! and xfs_repair.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn image(name: &str) -> String {
    fixture(&format!("kernel-xfs/{name}"))
        .to_str()
        .unwrap()
        .to_string()
}

/// xfs_db (xfsprogs 7) run read-only with `commands` on `image`.
fn xfs_db(image: &str, commands: &[&str]) -> String {
    let mut cmd = Command::new(private_tool("xfsprogs/bin/xfs_db"));
    cmd.arg("-r");
    for c in commands {
        cmd.args(["-c", c]);
    }
    String::from_utf8(tool_output(cmd.arg(image))).unwrap()
}

/// Every regular file under `dir` (a tree rdump wrote), symlinks not followed:
/// path below `dir` → SHA-256.
fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let kind = std::fs::symlink_metadata(&p).unwrap().file_type();
            if kind.is_dir() {
                stack.push(p);
            } else if kind.is_file() {
                let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
                out.insert(format!("/{rel}"), sha256_file(&p));
            }
        }
    }
    out
}

/// `ls -R` of `path` in `image`: every regular file's path.
fn listed_files(image: &str, path: &str) -> Vec<String> {
    let listed = json(&["ls", image, path, "-R", "--format", "json"]);
    let mut out: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "file")
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// The data fork's mapping, as xfs_db's bmap prints it: (file block, disk block, count).
fn bmap(image: &str, path: &str) -> Vec<(u64, u64, u64)> {
    xfs_db(image, &[&format!("path {path}"), "bmap"])
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // "data offset 0 startblock 24 (0/24) count 160 flag 0"
            (
                w[2].parse().unwrap(),
                w[4].parse().unwrap(),
                w[7].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_reflinked_clone_reads_its_own_bytes_where_it_was_rewritten_and_the_shared_ones_elsewhere() {
    let image = image("xfs-reflink.img");
    // The kernel shared the extents: the clone maps to the source's blocks except for
    // the range it rewrote (blocks 160-175, 640 KiB + 64 KiB).
    let (source, clone) = (
        bmap(&image, "/data/source.bin"),
        bmap(&image, "/data/clone.bin"),
    );
    let disk_of = |map: &[(u64, u64, u64)], block: u64| {
        map.iter()
            .find(|(at, _, n)| (*at..at + n).contains(&block))
            .map(|(at, disk, _)| disk + block - at)
            .unwrap()
    };
    assert_eq!(disk_of(&clone, 0), disk_of(&source, 0), "{clone:?}");
    assert_eq!(disk_of(&clone, 900), disk_of(&source, 900), "{clone:?}");
    assert_ne!(disk_of(&clone, 165), disk_of(&source, 165), "{clone:?}");

    // Every file reads as xfs_db's rdump wrote it out.
    let rdump = fixture("kernel-xfs/xfs-reflink.rdump");
    let theirs = files(&rdump);
    assert!(theirs.contains_key("/data/clone.bin"), "{theirs:?}");
    assert_eq!(
        listed_files(&image, "/"),
        theirs.keys().cloned().collect::<Vec<_>>()
    );
    for (path, sha) in &theirs {
        assert_eq!(&sha256(&ok(&["cat", &image, path])), sha, "{path}");
    }
    assert_ne!(theirs["/data/source.bin"], theirs["/data/clone.bin"]);
    let r = json(&["inspect", &image, "--format", "json"]);
    assert_eq!(r["os"]["id"], "amzn", "{r}");
}

#[test]
fn a_secret_in_a_file_the_kernel_deleted_is_found_in_xfs_free_space() {
    let image = image("xfs-reflink.img");
    let bytes = std::fs::read(&image).unwrap();
    let needle = b"aws_secret_access_key = ";
    let planted: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        planted.len(),
        64,
        "the deleted file's lines are still on disk"
    );
    let report = json(&["audit", &image, "--format", "json", "--fail-on", "none"]);
    let found: Vec<u64> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"] == "<unallocated>" && f["rule"] == "secret.aws-secret-access-key")
        .map(|f| f["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(found.len(), planted.len(), "{found:?}");
    for at in planted {
        assert!(
            found.iter().any(|o| o.abs_diff(at as u64) < 64),
            "the line at {at}: {found:?}"
        );
    }
}

#[test]
fn files_in_sparse_inode_chunks_read_as_xfs_db_rdump_writes_them() {
    let image = image("xfs-sparse-inodes.img");
    // Some inode btree record has holes: the kernel allocated sparse chunks.
    let sparse = (0..4).any(|ag| {
        let agi = xfs_db(&image, &[&format!("agi {ag}"), "print level"]);
        agi.trim() == "level = 1"
            && xfs_db(&image, &[&format!("agi {ag}"), "addr root", "print recs"])
                .lines()
                .filter_map(|l| l.split_once(":["))
                .any(|(_, rec)| rec.split(',').nth(1).is_some_and(|hole| hole != "0"))
    });
    assert!(sparse, "no sparse inode chunk in the fixture");
    let rdump = fixture("kernel-xfs/xfs-sparse-inodes.rdump");
    let theirs = files(&rdump);
    assert!(theirs.len() > 30_000, "{}", theirs.len());
    let ours: Vec<String> = listed_files(&image, "/many")
        .into_iter()
        .map(|p| p.trim_start_matches("/many").to_string())
        .collect();
    assert_eq!(ours, theirs.keys().cloned().collect::<Vec<_>>());
    // The files with content (one in a thousand), the last ones made (in the
    // sparse chunks), and a sample of the rest.
    let names: Vec<&String> = theirs.keys().collect();
    for (i, path) in names.iter().enumerate() {
        if i % 1000 == 0 || i + 200 >= names.len() || i % 997 == 1 {
            let ours = sha256(&ok(&["cat", &image, &format!("/many{path}")]));
            assert_eq!(&ours, &theirs[*path], "{path}");
        }
    }
}

#[test]
fn a_log_left_dirty_by_a_power_off_is_reported_and_xfs_repair_agrees() {
    let dirty = image("xfs-dirty.img");
    let out = Command::new(private_tool("xfsprogs/bin/xfs_repair"))
        .args(["-n", "-f", &dirty])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("valuable metadata changes in a log"),
        "{said}"
    );
    let notes = |image: &str| {
        let r = json(&["inspect", image, "--format", "json"]);
        r["partitions"][0]["filesystem"]["notes"].to_string()
    };
    assert!(
        notes(&dirty).contains("the log is dirty"),
        "{}",
        notes(&dirty)
    );
    // The images the kernel unmounted, and those mkfs made, are clean.
    for clean in [
        image("xfs-reflink.img"),
        image("xfs-sparse-inodes.img"),
        fixture("volumes/xfs-v5.img").to_str().unwrap().to_string(),
        fixture("volumes/xfs-v4.img").to_str().unwrap().to_string(),
        fixture("volumes/xfs-modern.img")
            .to_str()
            .unwrap()
            .to_string(),
    ] {
        assert!(!notes(&clean).contains("log"), "{clean}: {}", notes(&clean));
    }
}
