//! DOS/MBR partition tables: four primary entries, and logical partitions found by
//! following the chain of extended boot records (EBRs), guarded against loops.

use crate::{le32, read_at, MbrInfo, Partition, PartitionTable, PartitionType, Result, TableKind};
use blockio::BlockSource;
use std::collections::HashSet;

/// MBR tables address 512-byte sectors.
const SECTOR: u64 = 512;
/// Byte offset of the first of the four partition entries.
const ENTRIES_OFFSET: usize = 446;
/// Boot code occupies the bytes before the disk signature at 440.
const BOOT_CODE_LEN: usize = 440;
/// Partition type of a GPT protective entry.
const PROTECTIVE: u8 = 0xee;
/// Types that mark an extended (container) partition: DOS, LBA and Linux extended.
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0f, 0x85];
/// Linux numbers logical partitions from 5; no real disk chains this many.
const MAX_LOGICAL_PARTITIONS: usize = 256;

pub(crate) fn read_sector0(disk: &dyn BlockSource) -> Result<Option<[u8; 512]>> {
    if disk.len() < SECTOR {
        return Ok(None);
    }
    let bytes = read_at(disk, "master boot record", 0, SECTOR as usize)?;
    let mut s = [0u8; 512];
    s.copy_from_slice(&bytes);
    Ok(Some(s))
}

fn has_signature(s: &[u8]) -> bool {
    s[510] == 0x55 && s[511] == 0xaa
}

struct Entry {
    status: u8,
    kind: u8,
    lba: u32,
    sectors: u32,
}

fn entries(s: &[u8]) -> [Entry; 4] {
    std::array::from_fn(|i| {
        let e = &s[ENTRIES_OFFSET + 16 * i..][..16];
        Entry {
            status: e[0],
            kind: e[4],
            lba: le32(e, 8),
            sectors: le32(e, 12),
        }
    })
}

/// A FAT or NTFS boot sector also ends in 0x55AA; its "entries" are boot code.
fn is_filesystem_boot_sector(s: &[u8]) -> bool {
    &s[3..11] == b"NTFS    "
        || &s[54..59] == b"FAT12"
        || &s[54..59] == b"FAT16"
        || &s[82..87] == b"FAT32"
}

pub(crate) fn info(s: &[u8; 512]) -> MbrInfo {
    let signature = has_signature(s);
    let es = entries(s);
    let protective = signature && es.iter().any(|e| e.kind == PROTECTIVE);
    let others = es
        .iter()
        .filter(|e| e.kind != 0 && e.kind != PROTECTIVE)
        .count();
    MbrInfo {
        signature,
        boot_code: s[..BOOT_CODE_LEN].iter().any(|&b| b != 0),
        protective,
        hybrid: protective && others > 0,
    }
}

/// Reads an MBR table from sector 0. `Ok(None)` when sector 0 is not an MBR.
pub(crate) fn read(disk: &dyn BlockSource, s: &[u8; 512]) -> Result<Option<PartitionTable>> {
    if !has_signature(s) || is_filesystem_boot_sector(s) {
        return Ok(None);
    }
    let es = entries(s);
    if es.iter().any(|e| e.status != 0 && e.status != 0x80) || es.iter().all(|e| e.kind == 0) {
        return Ok(None);
    }
    let mut partitions = Vec::new();
    let mut notes = Vec::new();
    let mut extended = None;
    for (i, e) in es.iter().enumerate() {
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        let p = Partition {
            number: i as u32 + 1,
            start: u64::from(e.lba) * SECTOR,
            size: u64::from(e.sectors) * SECTOR,
            kind: PartitionType::Mbr(e.kind),
            name: None,
            guid: None,
            bootable: e.status == 0x80,
            extended: EXTENDED_TYPES.contains(&e.kind),
            logical: false,
        };
        if p.extended {
            if extended.is_some() {
                notes.push(format!(
                    "partition {}: a second extended partition; its chain is not followed",
                    p.number
                ));
            } else {
                extended = Some((e.lba, e.sectors));
            }
        }
        partitions.push(p);
    }
    if let Some((ext_lba, ext_sectors)) = extended {
        read_logical(
            disk,
            u64::from(ext_lba),
            u64::from(ext_sectors),
            &mut partitions,
            &mut notes,
        );
    }
    for p in &partitions {
        if p.end() > disk.len() {
            notes.push(format!(
                "partition {} ends at byte {}, past the end of the image ({} bytes)",
                p.number,
                p.end(),
                disk.len()
            ));
        }
    }
    Ok(Some(PartitionTable {
        kind: TableKind::Mbr,
        sector_size: SECTOR as u32,
        partitions,
        mbr: MbrInfo::default(),
        disk_guid: None,
        gpt_header: None,
        notes,
    }))
}

/// Follows the EBR chain as Linux does (`parse_extended`), which `sfdisk` and `mmls`
/// agree with on real chains: every non-empty, non-extended slot of an EBR is a logical
/// partition relative to that EBR (slots 3 and 4 only when they fit inside the
/// extended partition, as they often hold garbage), and the first extended slot links
/// to the next EBR, relative to the start of the extended partition. The chain may go
/// backwards; a loop or a link outside the extended partition ends it with a note.
/// Problems end the chain with a note; the primaries stay.
fn read_logical(
    disk: &dyn BlockSource,
    ext_lba: u64,
    ext_sectors: u64,
    out: &mut Vec<Partition>,
    notes: &mut Vec<String>,
) {
    let ext_end = ext_lba + ext_sectors;
    let mut seen = HashSet::new();
    let mut ebr_lba = ext_lba;
    let mut number = 5;
    loop {
        if !seen.insert(ebr_lba) {
            notes.push(format!(
                "EBR chain loops back to LBA {ebr_lba}; stopped following it"
            ));
            return;
        }
        if seen.len() > MAX_LOGICAL_PARTITIONS {
            notes.push(format!(
                "EBR chain longer than {MAX_LOGICAL_PARTITIONS} links; stopped following it"
            ));
            return;
        }
        let offset = ebr_lba * SECTOR;
        let sector = match read_at(disk, "extended boot record", offset, SECTOR as usize) {
            Ok(s) => s,
            Err(e) => {
                notes.push(format!(
                    "EBR at byte {offset}: {e}; logical partitions after it are not listed"
                ));
                return;
            }
        };
        if !has_signature(&sector) {
            notes.push(format!("EBR at byte {offset} has no 0x55AA signature; logical partitions after it are not listed"));
            return;
        }
        let es = entries(&sector);
        for (slot, e) in es.iter().enumerate() {
            if e.kind == 0 || e.sectors == 0 || EXTENDED_TYPES.contains(&e.kind) {
                continue;
            }
            let start_lba = ebr_lba + u64::from(e.lba);
            let end_lba = start_lba + u64::from(e.sectors);
            if end_lba > ext_end || start_lba < ext_lba {
                if slot >= 2 {
                    notes.push(format!(
                        "EBR at byte {offset}: slot {} lies outside the extended partition; taken for garbage, as Linux does",
                        slot + 1
                    ));
                    continue;
                }
                notes.push(format!(
                    "logical partition {number} runs past the end of its extended partition"
                ));
            }
            out.push(Partition {
                number,
                start: start_lba * SECTOR,
                size: u64::from(e.sectors) * SECTOR,
                kind: PartitionType::Mbr(e.kind),
                name: None,
                guid: None,
                bootable: e.status == 0x80,
                extended: false,
                logical: true,
            });
            number += 1;
        }
        let mut links = es
            .iter()
            .filter(|e| e.sectors != 0 && EXTENDED_TYPES.contains(&e.kind));
        let Some(next) = links.next() else {
            return;
        };
        if links.next().is_some() {
            notes.push(format!(
                "EBR at byte {offset} has more than one link; the first is followed, as Linux does"
            ));
        }
        let next_lba = ext_lba + u64::from(next.lba);
        if next_lba < ext_lba || next_lba >= ext_end {
            notes.push(format!(
                "EBR at byte {offset} links to LBA {next_lba}, outside the extended partition; stopped"
            ));
            return;
        }
        ebr_lba = next_lba;
    }
}
