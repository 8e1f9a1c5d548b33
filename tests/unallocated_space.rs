//! The unallocated space amiforge scans for deleted data is exactly the free space
//! the filesystems' own tools report: dumpe2fs's per-group free block lists for ext4,
//! mdir's free bytes for FAT.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

fn unallocated(image: &Path, kind: imagefs::FsKind) -> Vec<std::ops::Range<u64>> {
    let source: Arc<dyn blockio::BlockSource> = Arc::new(blockio::FileSource::open(image).unwrap());
    imagefs::unallocated(&*source, kind).unwrap()
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
