//! The unallocated space amiforge scans for deleted data is exactly the free space
//! the filesystems' own tools report: dumpe2fs's per-group free block lists for ext4,
//! mdir's free bytes for FAT, xfs_db's free extents for XFS, and for btrfs what the
//! chunk and extent trees leave, as btrfs-progs' dump-tree prints them.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

fn unallocated(image: &Path, kind: imagefs::FsKind) -> Vec<std::ops::Range<u64>> {
    let source: Arc<dyn blockio::BlockSource> = Arc::new(blockio::FileSource::open(image).unwrap());
    imagefs::unallocated(&source, kind).unwrap()
}

/// Free blocks as dumpe2fs lists them group by group ("Free blocks: 1-5, 9").
fn dumpe2fs_free_blocks(image: &Path) -> BTreeSet<u64> {
    let text = String::from_utf8(tool_output(tool("dumpe2fs").arg(image))).unwrap();
    let mut free = BTreeSet::new();
    for line in text.lines() {
        // Indented: a group's list, not the superblock's total.
        let Some(list) = line.strip_prefix("  Free blocks: ") else {
            continue;
        };
        for part in list.split(", ").filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            free.extend(a.parse::<u64>().unwrap()..=b.parse::<u64>().unwrap());
        }
    }
    free
}

#[test]
fn ext4_unallocated_blocks_are_the_ones_dumpe2fs_lists_as_free() {
    let dir = Scratch::new("unalloc-ext4");
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    for (block, size_mib) in [(1024u64, 32u64), (4096, 600)] {
        let image = dir.path(&format!("e{block}.img"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        tool_output(
            tool("mkfs.ext4")
                .args(["-q", "-F", "-b", &block.to_string(), "-d"])
                .arg(&tree)
                .arg(&image),
        );
        let ours: BTreeSet<u64> = unallocated(&image, imagefs::FsKind::Ext4)
            .into_iter()
            .flat_map(|r| r.start / block..r.end / block)
            .collect();
        let theirs = dumpe2fs_free_blocks(&image);
        assert!(theirs.len() > 1000);
        // Groups whose bitmap was never initialised count as wholly free: their few
        // metadata blocks are read too. Every block dumpe2fs calls free is scanned.
        assert!(
            theirs.is_subset(&ours),
            "{block}-byte blocks: a free block is missed"
        );
        let extra = ours.difference(&theirs).count();
        assert!(
            extra * 100 <= theirs.len() * 3,
            "{block}-byte blocks: {extra} allocated blocks counted as free"
        );
    }
}

#[test]
fn fat_unallocated_bytes_are_what_mdir_reports_free() {
    let dir = Scratch::new("unalloc-fat");
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/secrets");
    for (fat, kib) in [("12", 4096), ("16", 32768), ("32", 300 << 10)] {
        let image = dir.path(&format!("fat{fat}.img"));
        tool_output(
            tool("mkfs.vfat")
                .args(["-F", fat, "-C"])
                .arg(&image)
                .arg(kib.to_string()),
        );
        tool_output(
            tool("mcopy")
                .args(["-s", "-i"])
                .arg(&image)
                .arg(&tree)
                .arg("::/"),
        );
        let ours: u64 = unallocated(&image, imagefs::FsKind::Vfat)
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        let listing =
            String::from_utf8(tool_output(tool("mdir").arg("-i").arg(&image).arg("::"))).unwrap();
        let free: u64 = listing
            .lines()
            .find(|l| l.contains("bytes free"))
            .unwrap()
            .split("bytes")
            .next()
            .unwrap()
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        assert_eq!(ours, free, "FAT{fat}");
    }
}

/// Merges sorted ranges that touch or overlap.
fn merged(mut ranges: Vec<std::ops::Range<u64>>) -> Vec<std::ops::Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for r in ranges.into_iter().filter(|r| !r.is_empty()) {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn xfs_db(image: &Path, commands: &[&str]) -> String {
    let mut cmd = tool("xfs_db");
    cmd.arg("-r");
    for c in commands {
        cmd.args(["-c", c]);
    }
    String::from_utf8(tool_output(cmd.arg(image))).unwrap()
}

#[test]
fn xfs_unallocated_ranges_are_the_free_extents_xfs_db_lists() {
    for name in ["volumes/xfs-v5.img", "volumes/xfs-v4.img"] {
        let image = fixture(name);
        let sb = xfs_db(&image, &["sb 0", "p agblocks blocksize"]);
        let field = |name: &str| -> u64 {
            sb.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} = ")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let (ag_blocks, block) = (field("agblocks"), field("blocksize"));
        let theirs: Vec<_> = xfs_db(&image, &["freesp -d"])
            .lines()
            .filter_map(|l| {
                let n: Vec<u64> = l
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                let [ag, start, len] = n[..] else { return None };
                let at = (ag * ag_blocks + start) * block;
                Some(at..at + len * block)
            })
            .collect();
        assert!(theirs.len() > 4, "{name}: xfs_db lists free extents");
        assert_eq!(
            unallocated(&image, imagefs::FsKind::Xfs),
            merged(theirs),
            "{name}"
        );
    }
}

/// btrfs-progs' own account of a btrfs image: the physical ranges of every chunk
/// stripe (logical start, length, physical starts) and the extents the extent tree
/// lists (logical ranges).
struct BtrfsAccount {
    chunks: Vec<(u64, u64, Vec<u64>)>,
    extents: Vec<std::ops::Range<u64>>,
    nodesize: u64,
    device_bytes: u64,
}

fn btrfs_account(image: &Path) -> BtrfsAccount {
    let tools = std::env::var("AMIFORGE_TOOLS").map_or_else(
        |_| Path::new(&std::env::var("HOME").unwrap()).join(".cache/amiforge/tools"),
        std::path::PathBuf::from,
    );
    let btrfs = tools.join("btrfs-progs/bin/btrfs");
    let dump = |args: &[&str]| {
        let out = std::process::Command::new(&btrfs)
            .args(["inspect-internal"])
            .args(args)
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "btrfs {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let number_after = |line: &str, word: &str| -> Option<u64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == word)?;
        words.next()?.trim_end_matches(')').parse().ok()
    };
    let sb = dump(&["dump-super"]);
    let sb_field = |name: &str| {
        sb.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let mut chunks = Vec::new();
    for line in dump(&["dump-tree", "-t", "chunk"]).lines() {
        if line.contains("CHUNK_ITEM") {
            let logical = line
                .split("CHUNK_ITEM ")
                .nth(1)
                .unwrap()
                .split(')')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            chunks.push((logical, 0, Vec::new()));
        } else if let Some(len) = number_after(line, "length") {
            chunks.last_mut().unwrap().1 = len;
        } else if line.trim_start().starts_with("stripe ") {
            chunks
                .last_mut()
                .unwrap()
                .2
                .push(number_after(line, "offset").unwrap());
        }
    }
    let nodesize = sb_field("nodesize");
    let mut extents = Vec::new();
    for line in dump(&["dump-tree", "-t", "extent"]).lines() {
        let Some(key) = line.split("key (").nth(1) else {
            continue;
        };
        let words: Vec<&str> = key.split([' ', ')']).collect();
        let at: u64 = words[0].parse().unwrap_or(u64::MAX);
        match words[1] {
            "EXTENT_ITEM" => extents.push(at..at + words[2].parse::<u64>().unwrap()),
            "METADATA_ITEM" => extents.push(at..at + nodesize),
            _ => {}
        }
    }
    BtrfsAccount {
        chunks,
        extents,
        nodesize,
        device_bytes: sb_field("dev_item.total_bytes"),
    }
}

impl BtrfsAccount {
    /// The physical ranges no extent and no chunk owns (past the first MiB).
    fn free(&self, image_len: u64) -> Vec<std::ops::Range<u64>> {
        let extents = merged(self.extents.clone());
        let mut free = Vec::new();
        let mut chunk_space = Vec::new();
        for (logical, length, stripes) in &self.chunks {
            for &physical in stripes {
                chunk_space.push(physical..physical + length);
                let mut at = *logical;
                for e in extents
                    .iter()
                    .filter(|e| e.end > *logical && e.start < logical + length)
                {
                    if e.start > at {
                        free.push(physical + (at - logical)..physical + (e.start - logical));
                    }
                    at = at.max(e.end);
                }
                if at < logical + length {
                    free.push(physical + (at - logical)..physical + length);
                }
            }
        }
        let mut at = 1 << 20;
        for c in merged(chunk_space) {
            if c.start > at {
                free.push(at..c.start);
            }
            at = at.max(c.end);
        }
        let end = self.device_bytes.min(image_len);
        if at < end {
            free.push(at..end);
        }
        merged(free)
    }
}

#[test]
fn btrfs_unallocated_space_is_what_the_chunk_and_extent_trees_leave() {
    for name in ["volumes/btrfs-no.img", "volumes/btrfs-zstd.img"] {
        let image = fixture(name);
        let account = btrfs_account(&image);
        assert!(
            account.chunks.iter().any(|c| c.2.len() == 2),
            "{name}: DUP chunks"
        );
        assert!(
            account.extents.len() > 20 && account.nodesize == 16384,
            "{name}"
        );
        let len = std::fs::metadata(&image).unwrap().len();
        assert_eq!(
            unallocated(&image, imagefs::FsKind::Btrfs),
            account.free(len),
            "{name}"
        );
    }
}

#[test]
fn keys_in_btrfs_free_space_are_found_where_they_lie_and_live_files_are_not() {
    let dir = Scratch::new("unalloc-btrfs");
    let image = dir.path("btrfs.img");
    sparse_copy(&fixture("volumes/btrfs-no.img"), &image);
    let len = std::fs::metadata(&image).unwrap().len();
    let free = btrfs_account(&image).free(len);
    // One key inside a chunk's free space, one in device space outside every chunk.
    let in_chunk = free
        .iter()
        .find(|r| r.end - r.start >= 8192 && r.start < 96 << 20)
        .unwrap();
    let outside = free.last().unwrap();
    let key = "AKIAZ4MRTQ7VXW2KPL5S";
    let body = format!("aws_access_key_id = {key}\n");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let places = [in_chunk.start + 512, outside.end - 4096];
    for at in places {
        f.write_all_at(body.as_bytes(), at).unwrap();
    }
    let (code, stdout, stderr) = outcome(amiforge().args([
        "audit",
        image.to_str().unwrap(),
        "--format",
        "json",
        "--fail-on",
        "none",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let deleted: Vec<u64> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"] == "<unallocated>")
        .map(|f| f["offset"].as_u64().unwrap())
        .collect();
    for at in places {
        assert!(
            deleted.iter().any(|o| o.abs_diff(at) < 64),
            "the key at {at}: {deleted:?}"
        );
    }
    // The live credentials file (inline in a DUP metadata chunk) is found as a file,
    // not as deleted data in the chunk's second copy.
    assert_eq!(deleted.len(), places.len(), "{:#}", report["findings"]);
}
