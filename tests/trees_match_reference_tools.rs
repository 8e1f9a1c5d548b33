//! The file trees amiforge reads must equal what the filesystems' own tools extract:
//! e2fsprogs' `debugfs rdump` for ext2/3/4 and mtools' `mcopy` for FAT. Names, types,
//! sizes, link targets and the SHA-256 of every file's content must agree.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: String,
    size: Option<u64>,
    sha256: Option<String>,
    target: Option<String>,
    mode: Option<u32>,
    mtime: Option<i64>,
}

/// Streams `amiforge cat` through SHA-256 without holding the file in memory.
fn cat_sha(image: &Path, partition: u32, path: &str) -> String {
    let mut child = amiforge()
        .arg("cat")
        .arg(image)
        .arg(std::ffi::OsStr::from_bytes(&unescape(path)))
        .arg("--partition")
        .arg(partition.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut h = Sha256::new();
    std::io::copy(child.stdout.as_mut().unwrap(), &mut h).unwrap();
    assert!(child.wait().unwrap().success(), "cat {path}");
    format!("{:x}", h.finalize())
}

/// Reverses `show`: \xNN back to the byte.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 3 < b.len() {
            if let Ok(x) = u8::from_str_radix(&s[i + 2..i + 4], 16) {
                out.push(x);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn ours(image: &Path, partition: u32, with_meta: bool) -> BTreeMap<String, Node> {
    let part = partition.to_string();
    let listing = json(&[
        "ls",
        image.to_str().unwrap(),
        "/",
        "-R",
        "--partition",
        &part,
        "--format",
        "json",
    ]);
    let mut tree = BTreeMap::new();
    for e in listing.as_array().unwrap() {
        let path = e["path"].as_str().unwrap().to_string();
        let kind = e["kind"].as_str().unwrap().to_string();
        let file = kind == "file";
        let node = Node {
            size: file.then(|| e["size"].as_u64().unwrap()),
            sha256: file.then(|| cat_sha(image, partition, &path)),
            target: e["target"].as_str().map(str::to_string),
            mode: (with_meta && kind != "symlink").then(|| e["mode"].as_u64().unwrap() as u32),
            mtime: (with_meta && kind != "symlink").then(|| e["mtime"].as_i64().unwrap()),
            kind,
        };
        tree.insert(path, node);
    }
    tree
}

fn theirs(dir: &Path, with_meta: bool) -> BTreeMap<String, Node> {
    let mut tree = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let p = entry.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = b"/"
                .iter()
                .chain(p.strip_prefix(dir).unwrap().as_os_str().as_bytes())
                .copied()
                .collect::<Vec<u8>>();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else {
                "file"
            };
            let file = kind == "file";
            tree.insert(
                show(&rel),
                Node {
                    kind: kind.into(),
                    size: file.then_some(m.len()),
                    sha256: file.then(|| sha256_file(&p)),
                    target: ft
                        .is_symlink()
                        .then(|| show(std::fs::read_link(&p).unwrap().as_os_str().as_bytes())),
                    mode: (with_meta && !ft.is_symlink()).then(|| m.mode() & 0o7777),
                    mtime: (with_meta && !ft.is_symlink()).then(|| m.mtime()),
                },
            );
        }
    }
    tree
}

fn partition_offset(image: &Path, number: u32) -> u64 {
    let r = json(&["inspect", image.to_str().unwrap(), "--format", "json"]);
    let p = r["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"] == number)
        .expect("partition");
    p["start"].as_u64().unwrap()
}

fn scratch(name: &str) -> tempdir::Dir {
    tempdir::Dir::new(name)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(name: &str) -> Self {
            let name = name.replace('/', "-");
            let p = std::env::temp_dir().join(format!("amiforge-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn assert_same(ours: &BTreeMap<String, Node>, theirs: &BTreeMap<String, Node>) {
    let a: Vec<&String> = ours.keys().collect();
    let b: Vec<&String> = theirs.keys().collect();
    assert_eq!(a, b, "the same paths");
    for (path, node) in ours {
        assert_eq!(Some(node), theirs.get(path), "{path}");
    }
}

fn check_ext(image_name: &str, partition: u32) {
    let image = fixture(image_name);
    let out = scratch(&format!("rdump-{image_name}-{partition}"));
    let offset = partition_offset(&image, partition);
    let spec = format!("{}?offset={offset}", image.display());
    tool_output(
        tool("debugfs")
            .arg("-R")
            .arg(format!("rdump / {}", out.0.display()))
            .arg(&spec),
    );
    let mine = ours(&image, partition, true);
    assert!(
        mine.len() > 20 || image_name == "mbr.img" || image_name.starts_with("foreign/"),
        "a real tree: {mine:?}"
    );
    assert_same(&mine, &theirs(&out.0, true));
}

#[test]
fn the_ext4_root_equals_debugfs_rdump_including_sparse_hard_linked_and_non_utf8_files() {
    check_ext("gpt-uefi.img", 2);
    let mine = ours(&fixture("gpt-uefi.img"), 2, false);
    assert!(
        mine.contains_key("/data/caf\\xe9"),
        "a non-UTF-8 name survives"
    );
    assert_eq!(mine["/data/sparse-1g"].size, Some(1 << 30));
    assert_eq!(mine["/data/hard1"].sha256, mine["/data/hard2"].sha256);
    assert_eq!(
        mine["/data/escape"].target.as_deref(),
        Some("../../../../../../../../etc/shadow")
    );
}

#[test]
fn the_ext2_logical_partition_equals_debugfs_rdump() {
    check_ext("mbr.img", 5);
}

fn check_fat(image_name: &str, partition: u32) {
    let image = fixture(image_name);
    let out = scratch(&format!("mcopy-{image_name}-{partition}"));
    let offset = partition_offset(&image, partition);
    tool_output(
        tool("mcopy")
            .arg("-s")
            .arg("-n")
            .arg("-i")
            .arg(format!("{}@@{offset}", image.display()))
            .arg("::/")
            .arg(&out.0),
    );
    let mine = ours(&image, partition, false);
    assert!(mine.len() >= 5, "{mine:?}");
    assert_same(&mine, &theirs(&out.0, false));
}

#[test]
fn the_fat32_esp_equals_mcopy() {
    check_fat("gpt-uefi.img", 1);
}

#[test]
fn the_fat32_esp_with_4096_byte_sectors_equals_mcopy() {
    check_fat("gpt-4k.img", 1);
}

#[test]
fn the_fat16_partition_equals_mcopy() {
    check_fat("mbr.img", 2);
}

#[test]
fn ext4_with_128_byte_inodes_and_ext2_without_filetype_equal_debugfs_rdump() {
    check_ext("foreign/ext4-inode128.img", 0);
    check_ext("foreign/ext2-nofiletype.img", 0);
}

#[test]
fn fat16_with_4096_byte_sectors_and_a_tiny_fat12_equal_mcopy() {
    check_fat("foreign/fat16-sector4k.img", 0);
    check_fat("foreign/fat12-tiny.img", 0);
}

/// mtools cannot read a FAT32 with fewer than 65525 clusters (it takes it for FAT16),
/// so the small FAT32 is compared with mcopy's extraction of the FAT12 that holds the
/// same tree.
#[test]
fn the_small_fat32_holds_the_tree_mcopy_extracts_from_its_fat12_twin() {
    let twin = fixture("foreign/fat12-tiny.img");
    let out = scratch("mcopy-fat12-twin");
    tool_output(
        tool("mcopy")
            .args(["-s", "-n", "-i"])
            .arg(&twin)
            .arg("::/")
            .arg(&out.0),
    );
    let mine = ours(&fixture("foreign/fat32-small.img"), 0, false);
    assert_same(&mine, &theirs(&out.0, false));
}
