//! Hostile and damaged images: for every fixture, 200 seeded mutations (truncations,
//! byte flips in the first MiB and in metadata, zeroed headers, looping EBR chains,
//! huge entry counts). Every command must end with exit code 0 or 2, never panic, and
//! finish within 10 seconds. The images other tools make (scripts/make-foreign-fixtures.sh)
//! get the same treatment, so that the tolerant FAT and ext readers, the RAID probes and
//! the EBR walk meet hostile input too; their truncated copies are checked in
//! tests/foreign_images.rs.
//!
//! Each fixture is copied once (sparsely); each mutation is applied to the copy and
//! undone from the pristine fixture afterwards, so no mutation leaks into the next.

mod common;
use blockio::{BlockSource, FileSource};
use common::*;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MUTATIONS_PER_FIXTURE: u64 = 200;
const DEADLINE: Duration = Duration::from_secs(10);
/// Every this many mutations the audit runs too (it reads far more than inspect).
const AUDIT_EVERY: u64 = 5;
const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(u64),
    Write(u64, Vec<u8>),
}

struct Bench {
    pristine: File,
    pristine_data: Vec<Range<u64>>,
    work: PathBuf,
    len: u64,
    /// Where metadata lives: partition starts, GPT headers, the ext superblock.
    metadata: Vec<u64>,
    sector_size: u64,
    /// MBR extended partitions' first EBR, if any.
    first_ebr: Option<u64>,
    /// btrfs tree blocks (offset in the image, size): mutated with their CRC-32C
    /// recomputed half the time, so that the damage gets past the checksum into
    /// the tree's parsing.
    btrfs_blocks: Vec<(u64, usize)>,
    /// An audit configuration that skips the 1 GiB sparse file: the mutations are in
    /// metadata, and reading a gigabyte of zeros per run would only cost time.
    audit_config: PathBuf,
}

/// The byte offset of the internal log of a bare XFS (superblock at byte 0).
fn xfs_log_start(src: &FileSource) -> Option<u64> {
    let mut sb = [0u8; 128];
    src.read_exact_at(&mut sb, 0).ok()?;
    if &sb[..4] != b"XFSB" {
        return None;
    }
    let be32 = |at: usize| u64::from(u32::from_be_bytes(sb[at..at + 4].try_into().unwrap()));
    let (block, ag_blocks, ag_log) = (be32(4), be32(84), u32::from(sb[124]));
    let start = u64::from_be_bytes(sb[48..56].try_into().unwrap());
    let (ag, in_ag) = (start >> ag_log, start & ((1 << ag_log) - 1));
    Some((ag * ag_blocks + in_ag) * block)
}

impl Bench {
    fn new(name: &str) -> Self {
        let path = fixture(name);
        let work = std::env::temp_dir().join(format!(
            "amiforge-mutant-{}-{}",
            std::process::id(),
            name.replace('/', "-")
        ));
        let status = tool("cp")
            .arg("--sparse=always")
            .arg(&path)
            .arg(&work)
            .status()
            .unwrap();
        assert!(status.success());
        let report = json(&["inspect", path.to_str().unwrap(), "--format", "json"]);
        let sector_size = report["partition_table"]["sector_size"].as_u64().unwrap();
        let mut metadata = vec![0, sector_size, sector_size * 2];
        let mut first_ebr = None;
        let src = FileSource::open(&path).unwrap();
        let pristine_data = src.data_ranges().unwrap();
        let mut btrfs_blocks = btrfs_tree_blocks(&src, 0, &pristine_data);
        for p in report["partitions"].as_array().unwrap() {
            let start = p["start"].as_u64().unwrap();
            if start != 0 {
                btrfs_blocks.extend(btrfs_tree_blocks(&src, start, &pristine_data));
            }
            metadata.extend([start, start + 1024, start + 4096]);
            if p["extended"] == true {
                first_ebr = Some(start);
            }
        }
        let len = std::fs::metadata(&path).unwrap().len();
        metadata.push(len.saturating_sub(sector_size));
        // A bare XFS: its log's head blocks too, which are read to tell a dirty log.
        if let Some(log) = xfs_log_start(&src) {
            metadata.extend([log, log + 512, log + 4096]);
        }
        let audit_config = work.with_extension("audit.toml");
        std::fs::write(&audit_config, "[skip]\npaths = [\"/data/sparse-1g\"]\n").unwrap();
        Self {
            pristine: File::open(&path).unwrap(),
            pristine_data,
            work,
            len,
            metadata,
            sector_size,
            first_ebr,
            btrfs_blocks,
            audit_config,
        }
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.pristine.read_exact_at(&mut b, offset).unwrap();
        b
    }

    /// The seeded mutation number `i`.
    fn mutation(&self, rng: &mut fastrand::Rng) -> Mutation {
        let near_metadata = |rng: &mut fastrand::Rng| {
            let base = self.metadata[rng.usize(..self.metadata.len())];
            (base + rng.u64(..64 * 1024)).min(self.len - 1)
        };
        let flips = |rng: &mut fastrand::Rng, at: u64| {
            let n = rng.usize(1..=16).min((self.len - at) as usize);
            let mut bytes = self.read(at, n);
            for b in &mut bytes {
                *b ^= rng.u8(1..);
            }
            Mutation::Write(at, bytes)
        };
        match rng.u8(..10) {
            0 => Mutation::Truncate(rng.u64(..self.len.min(4 * MIB))),
            1 => Mutation::Truncate(rng.u64(..self.len)),
            2 | 3 => {
                let at = rng.u64(..self.len.min(MIB));
                flips(rng, at)
            }
            4 | 5 if !self.btrfs_blocks.is_empty() && rng.bool() => self.btrfs_block(rng),
            4 | 5 => {
                let at = near_metadata(rng);
                flips(rng, at)
            }
            6 => {
                let at = self.metadata[rng.usize(..self.metadata.len())];
                let n = [512usize, 1024, 4096][rng.usize(..3)].min((self.len - at) as usize);
                Mutation::Write(at, vec![0; n])
            }
            7 => self.huge_count(rng),
            8 if self.first_ebr.is_some() => self.ebr_loop(rng),
            _ => {
                let at = near_metadata(rng);
                let v = [u32::MAX, 0, 0x8000_0000, rng.u32(..)][rng.usize(..4)];
                Mutation::Write(at & !3, v.to_le_bytes().to_vec())
            }
        }
    }

    /// A count field set to something huge: GPT entries (CRC fixed, so the header
    /// is believed), or ext/FAT geometry fields.
    fn huge_count(&self, rng: &mut fastrand::Rng) -> Mutation {
        let big = [u32::MAX, 0x0100_0000, 0xFFFF, rng.u32(..)][rng.usize(..4)];
        let hdr = self.sector_size;
        let header = self.read(hdr, 92);
        if &header[..8] == b"EFI PART" && rng.bool() {
            let mut h = header;
            h[80..84].copy_from_slice(&big.to_le_bytes());
            h[16..20].fill(0);
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            return Mutation::Write(hdr, h);
        }
        let base = self.metadata[rng.usize(..self.metadata.len())];
        // ext superblock counts (inodes, blocks, log block size, blocks/inodes per
        // group), FAT BPB (root entries, sectors per FAT).
        let field = [1024u64, 1028, 1048, 1056, 1064, 17, 22, 36][rng.usize(..8)];
        Mutation::Write((base + field).min(self.len - 4), big.to_le_bytes().to_vec())
    }

    /// A btrfs tree block with a few bytes flipped or a field set huge, and its
    /// CRC-32C made to match again half the time.
    fn btrfs_block(&self, rng: &mut fastrand::Rng) -> Mutation {
        let (at, size) = self.btrfs_blocks[rng.usize(..self.btrfs_blocks.len())];
        let mut block = self.read(at, size);
        // The header (item count, level, owner) and the first items are where the
        // counts and offsets are.
        let from = rng.usize(0x30..(0x65 + 40 * 25).min(size - 8));
        if rng.bool() {
            for b in &mut block[from..from + rng.usize(1..=8)] {
                *b ^= rng.u8(1..);
            }
        } else {
            let v = [u32::MAX, 0x8000_0000, 0xFFFF, rng.u32(..)][rng.usize(..4)];
            block[from..from + 4].copy_from_slice(&v.to_le_bytes());
        }
        if rng.bool() {
            let crc = CRC32C.checksum(&block[32..]);
            block[..4].copy_from_slice(&crc.to_le_bytes());
        }
        Mutation::Write(at, block)
    }

    /// Points an EBR's next-link back at itself or at the first EBR.
    fn ebr_loop(&self, rng: &mut fastrand::Rng) -> Mutation {
        let first = self.first_ebr.unwrap_or(0);
        let ebr = self.read(first, 512);
        let next_rel = u32::from_le_bytes(ebr[446 + 16 + 8..446 + 16 + 12].try_into().unwrap());
        let (at, target_rel) = if next_rel != 0 && rng.bool() {
            (first + u64::from(next_rel) * 512, 0u32) // second EBR points back to the first
        } else {
            (first, 0u32) // first EBR points to itself
        };
        let mut entry = vec![0u8; 16];
        entry[4] = 0x05;
        entry[8..12].copy_from_slice(&target_rel.to_le_bytes());
        entry[12..16].copy_from_slice(&2048u32.to_le_bytes());
        Mutation::Write(at + 446 + 16, entry)
    }

    fn apply(&self, m: &Mutation) {
        let f = OpenOptions::new().write(true).open(&self.work).unwrap();
        match m {
            Mutation::Truncate(len) => f.set_len(*len).unwrap(),
            Mutation::Write(at, bytes) => f.write_all_at(bytes, *at).unwrap(),
        }
    }

    fn undo(&self, m: &Mutation) {
        let f = OpenOptions::new().write(true).open(&self.work).unwrap();
        match m {
            Mutation::Truncate(len) => {
                f.set_len(self.len).unwrap();
                for r in &self.pristine_data {
                    let start = r.start.max(*len);
                    let mut at = start;
                    while at < r.end {
                        let n = (r.end - at).min(MIB) as usize;
                        f.write_all_at(&self.read(at, n), at).unwrap();
                        at += n as u64;
                    }
                }
            }
            Mutation::Write(at, bytes) => {
                f.write_all_at(&self.read(*at, bytes.len()), *at).unwrap()
            }
        }
    }
}

/// CRC-32C, as btrfs checksums its tree blocks.
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
/// The most btrfs tree blocks looked for in one volume.
const MAX_BTRFS_BLOCKS: usize = 256;

/// The tree blocks of a btrfs that starts at `start` in the image, if one does:
/// blocks whose header carries the superblock's fsid and whose CRC-32C matches.
fn btrfs_tree_blocks(src: &FileSource, start: u64, data: &[Range<u64>]) -> Vec<(u64, usize)> {
    let mut sb = vec![0u8; 4096];
    if src.read_exact_at(&mut sb, start + 65536).is_err() || &sb[0x40..0x48] != b"_BHRfS_M" {
        return Vec::new();
    }
    let fsid = sb[0x20..0x30].to_vec();
    let nodesize = u32::from_le_bytes(sb[0x94..0x98].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut block = vec![0u8; nodesize];
    for r in data {
        let mut at = r.start.max(start).next_multiple_of(4096);
        while at + nodesize as u64 <= r.end && out.len() < MAX_BTRFS_BLOCKS {
            if src.read_exact_at(&mut block, at).is_ok()
                && block[0x20..0x30] == fsid[..]
                && CRC32C.checksum(&block[32..]).to_le_bytes() == block[..4]
            {
                out.push((at, nodesize));
                at += nodesize as u64;
            } else {
                at += 4096;
            }
        }
    }
    out
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.work);
        let _ = std::fs::remove_file(&self.audit_config);
    }
}

fn check(work: &Path, args: &[&str], m: &Mutation, i: u64) {
    let mut cmd = amiforge();
    cmd.arg(args[0]).arg(work).args(&args[1..]);
    let (code, stderr) = run_with_deadline(&mut cmd, DEADLINE);
    assert!(
        matches!(code, Some(0) | Some(2)) && !stderr.contains("panicked"),
        "mutation {i} ({m:?}): `amiforge {args:?}` ended with {code:?}: {stderr}"
    );
    if code == Some(2) {
        assert!(
            stderr.starts_with("amiforge: error: "),
            "a clear error: {stderr}"
        );
    }
}

fn mutate(name: &str, seed: u64) {
    let bench = Bench::new(name);
    // AMIFORGE_MUTATION_SEED explores other seeds; the default set is fixed.
    let extra: u64 = std::env::var("AMIFORGE_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(extra.wrapping_mul(1000)));
    for i in 0..MUTATIONS_PER_FIXTURE {
        let m = bench.mutation(&mut rng);
        bench.apply(&m);
        check(&bench.work, &["inspect", "--format", "json"], &m, i);
        check(&bench.work, &["ls", "/", "-l"], &m, i);
        check(&bench.work, &["cat", "/etc/os-release"], &m, i);
        if name.starts_with("foreign/") {
            // Their tree: a walk that must go on past damage, and a multi-cluster file.
            check(&bench.work, &["ls", "/", "-R"], &m, i);
            check(&bench.work, &["cat", "/sub dir/forty-thousand.bin"], &m, i);
        }
        if i % AUDIT_EVERY == 0 {
            // The audit reads every file and the free-space metadata of every volume.
            let config = bench.audit_config.to_str().unwrap();
            check(
                &bench.work,
                &[
                    "audit",
                    "--format",
                    "json",
                    "--fail-on",
                    "none",
                    "--config",
                    config,
                ],
                &m,
                i,
            );
        }
        bench.undo(&m);
    }
    // Undo really restored the image.
    assert_eq!(
        sha256_file(&bench.work),
        sha256_file(&fixture(name)),
        "{name} restored"
    );
}

#[test]
fn mutations_of_gpt_uefi() {
    mutate("gpt-uefi.img", 1);
}
#[test]
fn mutations_of_gpt_bios() {
    mutate("gpt-bios.img", 2);
}
#[test]
fn mutations_of_gpt_hybrid() {
    mutate("gpt-hybrid.img", 3);
}
#[test]
fn mutations_of_mbr() {
    mutate("mbr.img", 4);
}
#[test]
fn mutations_of_bare_ext4() {
    mutate("bare-ext4.img", 5);
}
#[test]
fn mutations_of_gpt_4k() {
    mutate("gpt-4k.img", 6);
}
#[test]
fn mutations_of_gpt_corrupt_primary() {
    mutate("gpt-corrupt-primary.img", 7);
}
#[test]
fn mutations_of_gpt_containers() {
    mutate("gpt-containers.img", 8);
}
#[test]
fn mutations_of_a_small_fat32() {
    mutate("foreign/fat32-small.img", 9);
}
#[test]
fn mutations_of_an_ext4_with_128_byte_inodes() {
    mutate("foreign/ext4-inode128.img", 10);
}
#[test]
fn mutations_of_an_ext2_without_filetype() {
    mutate("foreign/ext2-nofiletype.img", 11);
}
#[test]
fn mutations_of_an_md_raid1_member() {
    mutate("foreign/md-1.2-raid1.img", 12);
}
#[test]
fn mutations_of_an_lvm_image_with_linear_and_striped_lvs() {
    mutate("volumes/lvm.img", 14);
}
#[test]
fn mutations_of_an_xfs_v5() {
    mutate("volumes/xfs-v5.img", 15);
}
#[test]
fn mutations_of_an_xfs_with_a_dirty_log() {
    mutate("kernel-xfs/xfs-dirty.img", 18);
}
#[test]
fn mutations_of_a_zstd_compressed_btrfs_with_a_subvolume() {
    mutate("volumes/btrfs-zstd.img", 16);
}
#[test]
fn mutations_of_a_fedora_layout_with_root_and_home_subvolumes() {
    mutate("volumes/fedora-btrfs.img", 17);
}
#[test]
fn mutations_of_an_ebr_chain_in_odd_slots() {
    mutate("foreign/mbr-odd-slots.img", 13);
}

/// Container files (made by qemu-img from gpt-uefi.img) with their headers and
/// tables damaged: the first 2 MiB of the file (headers, L1/L2 tables, grain
/// directories, BAT, VHDX regions) and its last 64 KiB (the VHD footer, the
/// streamOptimized footer, grain directory and tables) take byte flips, huge and
/// zero fields and truncations. Every command ends with 0 or 2, in time, no panic.
fn mutate_container(name: &str, options: &[&str], seed: u64) {
    const MUTATIONS: u64 = 60;
    const HEAD: u64 = 2 * MIB;
    const TAIL: u64 = 64 * 1024;
    let dir = Scratch::new(&format!("mutant-{name}"));
    let pristine_path = dir.path("pristine");
    qemu_convert(&fixture("gpt-uefi.img"), &pristine_path, options);
    let work = dir.path("work");
    std::fs::copy(&pristine_path, &work).unwrap();
    let pristine = std::fs::read(&pristine_path).unwrap();
    let len = pristine.len() as u64;
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..MUTATIONS {
        let at = if rng.bool() {
            rng.u64(..HEAD.min(len))
        } else {
            len - rng.u64(1..=TAIL.min(len))
        };
        let m = match rng.u8(..6) {
            0 => Mutation::Truncate(rng.u64(..len)),
            1 | 2 => {
                let n = rng.usize(1..=16).min((len - at) as usize);
                let bytes = pristine[at as usize..at as usize + n]
                    .iter()
                    .map(|b| b ^ rng.u8(1..))
                    .collect();
                Mutation::Write(at, bytes)
            }
            3 => Mutation::Write(at & !7, vec![0xff; 8.min((len - (at & !7)) as usize)]),
            4 => {
                let v = [u64::MAX, 1 << 40, 0x8000_0000, rng.u64(..)][rng.usize(..4)];
                let at = at & !7;
                let n = 8.min((len - at) as usize);
                Mutation::Write(at, v.to_be_bytes()[..n].to_vec())
            }
            _ => Mutation::Write(at & !511, vec![0; 512.min((len - (at & !511)) as usize)]),
        };
        let f = OpenOptions::new().write(true).open(&work).unwrap();
        match &m {
            Mutation::Truncate(n) => f.set_len(*n).unwrap(),
            Mutation::Write(at, bytes) => f.write_all_at(bytes, *at).unwrap(),
        }
        check(&work, &["inspect", "--format", "json"], &m, i);
        check(&work, &["ls", "/", "-l"], &m, i);
        check(&work, &["cat", "/etc/os-release"], &m, i);
        if i % AUDIT_EVERY == 0 {
            check(
                &work,
                &["audit", "--format", "json", "--fail-on", "none"],
                &m,
                i,
            );
        }
        // Undo: the pristine bytes back.
        match &m {
            Mutation::Truncate(_) => std::fs::copy(&pristine_path, &work).map(|_| ()).unwrap(),
            Mutation::Write(at, bytes) => f
                .write_all_at(&pristine[*at as usize..*at as usize + bytes.len()], *at)
                .unwrap(),
        }
    }
    assert_eq!(std::fs::read(&work).unwrap(), pristine, "{name} restored");
}

#[test]
fn mutations_of_qcow2_containers() {
    mutate_container("qcow2", &["-O", "qcow2"], 21);
    mutate_container(
        "qcow2-zlib",
        &["-c", "-O", "qcow2", "-o", "cluster_size=4096"],
        22,
    );
    mutate_container(
        "qcow2-extended",
        &["-O", "qcow2", "-o", "extended_l2=on"],
        23,
    );
}

#[test]
fn mutations_of_vmdk_containers() {
    mutate_container("vmdk", &["-O", "vmdk"], 24);
    mutate_container(
        "vmdk-stream",
        &["-O", "vmdk", "-o", "subformat=streamOptimized"],
        25,
    );
}

#[test]
fn mutations_of_vhd_and_vhdx_containers() {
    mutate_container("vhd", &["-O", "vpc"], 26);
    mutate_container("vhd-fixed", &["-O", "vpc", "-o", "subformat=fixed"], 27);
    mutate_container("vhdx", &["-O", "vhdx"], 28);
}
