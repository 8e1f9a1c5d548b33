//! Partition tables written by an independent implementation (the `gpt` crate) or by
//! hand, byte by byte, read back by ours.
#![allow(clippy::unwrap_used)]

use blockio::MemorySource;
use gpt::disk::LogicalBlockSize;
use gpt::partition_types;
use partition::{read_table, PartitionType, TableKind};
use std::io::Cursor;

const MIB: u64 = 1 << 20;

fn gpt_disk(size: u64, lb: LogicalBlockSize) -> Vec<u8> {
    let lb_size: u64 = lb.into();
    let mut dev = Cursor::new(vec![0u8; size as usize]);
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(size / lb_size - 1).unwrap_or(0xFFFF_FFFF),
    );
    mbr.overwrite_lba0(&mut dev).unwrap();
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(dev, None)
        .unwrap();
    disk.add_partition("EFI System", 4 * MIB, partition_types::EFI, 0, None)
        .unwrap();
    disk.add_partition("root", 8 * MIB, partition_types::LINUX_FS, 0, None)
        .unwrap();
    disk.write().unwrap().into_inner()
}

fn parts(bytes: Vec<u8>) -> partition::PartitionTable {
    read_table(&MemorySource::new(bytes)).unwrap()
}

#[test]
fn a_gpt_written_by_the_gpt_crate_reads_back_with_512_byte_sectors() {
    let t = parts(gpt_disk(32 * MIB, LogicalBlockSize::Lb512));
    assert_eq!(t.kind, TableKind::Gpt);
    assert_eq!(t.sector_size, 512);
    assert_eq!(t.gpt_header, Some("primary"));
    assert!(t.mbr.protective && !t.mbr.hybrid);
    assert_eq!(t.partitions.len(), 2);
    assert!(t.partitions[0].is_esp());
    assert_eq!(t.partitions[0].size, 4 * MIB);
    assert_eq!(t.partitions[0].name.as_deref(), Some("EFI System"));
    assert_eq!(
        t.partitions[1].kind,
        PartitionType::Gpt("0FC63DAF-8483-4772-8E79-3D69D8477DE4".into())
    );
    assert_eq!(t.partitions[1].size, 8 * MIB);
}

#[test]
fn four_kibibyte_sectors_are_detected_not_assumed() {
    let t = parts(gpt_disk(64 * MIB, LogicalBlockSize::Lb4096));
    assert_eq!(t.sector_size, 4096);
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(t.partitions[0].start % 4096, 0);
    assert_eq!(t.partitions[1].size, 8 * MIB);
}

#[test]
fn a_damaged_primary_header_falls_back_to_the_backup_and_says_so() {
    let mut bytes = gpt_disk(32 * MIB, LogicalBlockSize::Lb512);
    bytes[512 + 40] ^= 0xff; // inside the CRC-covered header
    let t = parts(bytes);
    assert_eq!(t.gpt_header, Some("backup"));
    assert_eq!(t.partitions.len(), 2);
    assert!(
        t.notes
            .iter()
            .any(|n| n.contains("damaged") && n.contains("backup")),
        "{:?}",
        t.notes
    );
}

#[test]
fn a_corrupt_primary_entry_array_also_falls_back_to_the_backup() {
    let mut bytes = gpt_disk(32 * MIB, LogicalBlockSize::Lb512);
    bytes[1024 + 20] ^= 0xff; // first entry's unique GUID
    let t = parts(bytes);
    assert_eq!(t.gpt_header, Some("backup"));
    assert!(
        t.notes.iter().any(|n| n.contains("entry array CRC32")),
        "{:?}",
        t.notes
    );
}

#[test]
fn both_headers_damaged_is_a_clear_error() {
    let mut bytes = gpt_disk(32 * MIB, LogicalBlockSize::Lb512);
    let len = bytes.len();
    bytes[512 + 40] ^= 0xff;
    bytes[len - 512 + 40] ^= 0xff;
    let err = read_table(&MemorySource::new(bytes))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("primary header") && err.contains("backup header"),
        "{err}"
    );
}

/// Rewrites the primary header's field at `at` and fixes its CRC, as a hostile image would.
fn forge_header(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[512 + at..512 + at + value.len()].copy_from_slice(value);
    bytes[512 + 16..512 + 20].fill(0);
    let crc = crc32fast::hash(&bytes[512..512 + 92]);
    bytes[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn a_hostile_entry_size_is_refused_without_panicking() {
    for size in [0u32, 1, 127, 129, 1 << 31] {
        let mut bytes = gpt_disk(32 * MIB, LogicalBlockSize::Lb512);
        forge_header(&mut bytes, 84, &size.to_le_bytes());
        // The primary is refused; the intact backup is used.
        let t = parts(bytes);
        assert_eq!(t.gpt_header, Some("backup"), "entry size {size}");
    }
}

#[test]
fn a_huge_entry_count_is_refused_without_allocating_it() {
    let mut bytes = gpt_disk(32 * MIB, LogicalBlockSize::Lb512);
    forge_header(&mut bytes, 80, &u32::MAX.to_le_bytes());
    let t = parts(bytes);
    assert_eq!(t.gpt_header, Some("backup"));
    assert!(
        t.notes.iter().any(|n| n.contains("exceed")),
        "{:?}",
        t.notes
    );
}

fn mbr_entry(sector: &mut [u8], slot: usize, status: u8, kind: u8, lba: u32, sectors: u32) {
    let e = &mut sector[446 + 16 * slot..][..16];
    e[0] = status;
    e[4] = kind;
    e[8..12].copy_from_slice(&lba.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
}

fn sign(sector: &mut [u8]) {
    sector[510] = 0x55;
    sector[511] = 0xaa;
}

/// An MBR disk: one primary at 1 MiB, an extended partition at 8 MiB holding two logicals.
fn mbr_disk() -> Vec<u8> {
    let mut d = vec![0u8; 32 * MIB as usize];
    mbr_entry(&mut d, 0, 0x80, 0x83, 2048, 2048);
    mbr_entry(&mut d, 1, 0, 0x05, 16384, 16384);
    sign(&mut d[..512]);
    // First EBR at the start of the extended partition.
    let ebr1 = 16384 * 512;
    mbr_entry(&mut d[ebr1..ebr1 + 512], 0, 0, 0x83, 2048, 2048);
    mbr_entry(&mut d[ebr1..ebr1 + 512], 1, 0, 0x05, 8192, 4096);
    sign(&mut d[ebr1..ebr1 + 512]);
    let ebr2 = (16384 + 8192) * 512;
    mbr_entry(&mut d[ebr2..ebr2 + 512], 0, 0, 0x82, 2048, 2048);
    sign(&mut d[ebr2..ebr2 + 512]);
    d
}

#[test]
fn logical_partitions_are_found_by_following_the_ebr_chain() {
    let t = parts(mbr_disk());
    assert_eq!(t.kind, TableKind::Mbr);
    let summary: Vec<_> = t
        .partitions
        .iter()
        .map(|p| (p.number, p.start / 512, p.size / 512, p.logical))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, 2048, 2048, false),
            (2, 16384, 16384, false),
            (5, 18432, 2048, true),
            (6, 26624, 2048, true)
        ]
    );
    assert!(t.partitions[0].bootable);
    assert!(t.partitions[1].extended);
    assert!(t.notes.is_empty(), "{:?}", t.notes);
}

#[test]
fn a_looping_ebr_chain_is_cut_and_reported() {
    let mut d = mbr_disk();
    let ebr2 = (16384 + 8192) * 512;
    mbr_entry(&mut d[ebr2..ebr2 + 512], 1, 0, 0x05, 8192, 4096); // points back to itself
    let t = parts(d);
    assert_eq!(t.partitions.len(), 4);
    assert!(t.notes.iter().any(|n| n.contains("loops")), "{:?}", t.notes);
}

#[test]
fn a_disk_of_zeros_has_no_table() {
    assert_eq!(parts(vec![0u8; MIB as usize]).kind, TableKind::None);
    assert_eq!(parts(vec![0u8; 100]).kind, TableKind::None);
}
