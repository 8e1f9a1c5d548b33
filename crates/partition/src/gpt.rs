//! GUID Partition Table: headers with CRC checks, the backup header as a fallback,
//! 512- and 4096-byte logical sectors.

use crate::{
    le32, le64, read_at, Error, Partition, PartitionTable, PartitionType, Result, TableKind,
    SECTOR_SIZES,
};
use blockio::BlockSource;

/// Type GUID of the EFI system partition.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Type GUID of the BIOS boot partition that GRUB uses on GPT disks.
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The header fields defined by UEFI 2.x end at byte 92.
const MIN_HEADER_SIZE: usize = 92;
/// Entries are 128 bytes, or 128 × 2^n in principle; nothing real exceeds this.
const MAX_ENTRY_SIZE: u32 = 4096;
/// The defined part of an entry.
const ENTRY_SIZE: usize = 128;
/// The spec's minimum array is 16 KiB (128 entries); real tools stay far below this
/// bound, which keeps a hostile header from asking for a huge allocation.
const MAX_ENTRY_ARRAY_BYTES: u64 = 4 << 20;
/// UEFI attribute bit 2: legacy BIOS bootable.
const ATTR_LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

struct Header {
    sector_size: u32,
    lba: u64,
    alternate_lba: u64,
    disk_guid: [u8; 16],
    entries: Vec<u8>,
    entry_count: u32,
    entry_size: u32,
}

/// Why a header could not be used.
enum Problem {
    NoSignature,
    Damaged(String),
}

/// Formats a GUID stored in the mixed-endian on-disk layout.
pub fn format_guid(b: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        le32(b, 0),
        crate::le16(b, 4),
        crate::le16(b, 6),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

fn read_header(
    disk: &dyn BlockSource,
    sector_size: u32,
    lba: u64,
) -> std::result::Result<Header, Problem> {
    let ss = u64::from(sector_size);
    let offset = lba
        .checked_mul(ss)
        .ok_or_else(|| Problem::Damaged("header LBA overflows".into()))?;
    let mut sector = vec![0u8; sector_size as usize];
    if disk.read_exact_at(&mut sector, offset).is_err() {
        return Err(Problem::NoSignature);
    }
    if &sector[..8] != SIGNATURE {
        return Err(Problem::NoSignature);
    }
    let damaged = |s: String| Problem::Damaged(s);
    let header_size = le32(&sector, 12) as usize;
    if !(MIN_HEADER_SIZE..=sector.len()).contains(&header_size) {
        return Err(damaged(format!(
            "header size {header_size} outside {MIN_HEADER_SIZE}..={sector_size}"
        )));
    }
    let stored_crc = le32(&sector, 16);
    let mut copy = sector[..header_size].to_vec();
    copy[16..20].fill(0);
    let crc = crc32fast::hash(&copy);
    if crc != stored_crc {
        return Err(damaged(format!(
            "header CRC32 is {stored_crc:#010x}, computed {crc:#010x}"
        )));
    }
    let my_lba = le64(&sector, 24);
    if my_lba != lba {
        return Err(damaged(format!(
            "header says it lives at LBA {my_lba}, found at LBA {lba}"
        )));
    }
    let alternate_lba = le64(&sector, 32);
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&sector[56..72]);
    let entries_lba = le64(&sector, 72);
    let entry_count = le32(&sector, 80);
    let entry_size = le32(&sector, 84);
    let entries_crc = le32(&sector, 88);
    if entry_size < ENTRY_SIZE as u32
        || entry_size > MAX_ENTRY_SIZE
        || !entry_size.is_multiple_of(ENTRY_SIZE as u32)
    {
        return Err(damaged(format!(
            "partition entry size {entry_size} is not a multiple of 128 up to {MAX_ENTRY_SIZE}"
        )));
    }
    let array_bytes = u64::from(entry_count) * u64::from(entry_size);
    if array_bytes > MAX_ENTRY_ARRAY_BYTES {
        return Err(damaged(format!(
            "{entry_count} partition entries of {entry_size} bytes ({array_bytes} bytes) exceed the {MAX_ENTRY_ARRAY_BYTES}-byte limit"
        )));
    }
    let array_offset = entries_lba
        .checked_mul(ss)
        .filter(|o| {
            o.checked_add(array_bytes)
                .is_some_and(|end| end <= disk.len())
        })
        .ok_or_else(|| {
            damaged(format!(
                "partition entry array at LBA {entries_lba} lies outside the image"
            ))
        })?;
    let entries = read_at(
        disk,
        "GPT partition entry array",
        array_offset,
        array_bytes as usize,
    )
    .map_err(|e| damaged(e.to_string()))?;
    let crc = crc32fast::hash(&entries);
    if crc != entries_crc {
        return Err(damaged(format!(
            "partition entry array CRC32 is {entries_crc:#010x}, computed {crc:#010x}"
        )));
    }
    Ok(Header {
        sector_size,
        lba,
        alternate_lba,
        disk_guid,
        entries,
        entry_count,
        entry_size,
    })
}

/// Reads a GPT if there is one. `Ok(None)` means no GPT signature anywhere.
pub(crate) fn read(disk: &dyn BlockSource) -> Result<Option<PartitionTable>> {
    let mut damage: Option<(u32, String)> = None;
    for ss in SECTOR_SIZES {
        match read_header(disk, ss, 1) {
            Ok(h) => return Ok(Some(build(disk, h, Vec::new()))),
            Err(Problem::NoSignature) => {}
            Err(Problem::Damaged(why)) => {
                damage = Some((ss, why));
                break;
            }
        }
    }
    // The primary is missing or damaged: look for a backup at the last LBA.
    let sizes: Vec<u32> = match &damage {
        Some((ss, _)) => vec![*ss],
        None => SECTOR_SIZES.to_vec(),
    };
    for ss in sizes {
        let sectors = disk.len() / u64::from(ss);
        if sectors < 3 {
            continue;
        }
        let last = sectors - 1;
        match read_header(disk, ss, last) {
            Ok(h) => {
                let why = match &damage {
                    Some((_, why)) => format!("primary GPT header at byte {ss} is damaged ({why})"),
                    None => format!("no primary GPT header at byte {ss}"),
                };
                let note = format!(
                    "{why}; used the backup header at byte {}",
                    last * u64::from(ss)
                );
                return Ok(Some(build(disk, h, vec![note])));
            }
            Err(Problem::Damaged(backup_why)) => {
                let primary = damage
                    .as_ref()
                    .map(|(_, w)| w.as_str())
                    .unwrap_or("missing");
                return Err(Error::Corrupt {
                    table: "GPT",
                    offset: u64::from(ss),
                    reason: format!("primary header: {primary}; backup header: {backup_why}"),
                });
            }
            Err(Problem::NoSignature) => {}
        }
    }
    match damage {
        Some((ss, why)) => Err(Error::Corrupt {
            table: "GPT",
            offset: u64::from(ss),
            reason: format!("primary header: {why}; no backup header at the end of the image"),
        }),
        None => Ok(None),
    }
}

fn build(disk: &dyn BlockSource, h: Header, mut notes: Vec<String>) -> PartitionTable {
    let ss = u64::from(h.sector_size);
    let disk_sectors = disk.len() / ss;
    if h.lba == 1 && h.alternate_lba != disk_sectors.saturating_sub(1) {
        notes.push(format!(
            "backup GPT header is recorded at LBA {} but the image's last LBA is {} (image resized or truncated?)",
            h.alternate_lba,
            disk_sectors.saturating_sub(1)
        ));
    }
    let mut partitions = Vec::new();
    for i in 0..h.entry_count as usize {
        let e = &h.entries[i * h.entry_size as usize..][..ENTRY_SIZE];
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let number = i as u32 + 1;
        let first = le64(e, 32);
        let last = le64(e, 40);
        let (Some(start), Some(end)) = (
            first.checked_mul(ss),
            last.checked_add(1).and_then(|l| l.checked_mul(ss)),
        ) else {
            notes.push(format!(
                "GPT entry {number}: LBAs {first}..{last} overflow; ignored"
            ));
            continue;
        };
        if end <= start {
            notes.push(format!(
                "GPT entry {number}: last LBA {last} lies before first LBA {first}; ignored"
            ));
            continue;
        }
        if end > disk.len() {
            notes.push(format!(
                "partition {number} ends at byte {end}, past the end of the image ({} bytes)",
                disk.len()
            ));
        }
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&e[..16]);
        let mut unique = [0u8; 16];
        unique.copy_from_slice(&e[16..32]);
        let attributes = le64(e, 48);
        let name_units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(Partition {
            number,
            start,
            size: end - start,
            kind: PartitionType::Gpt(format_guid(&type_guid)),
            name: Some(String::from_utf16_lossy(&name_units)),
            guid: Some(format_guid(&unique)),
            bootable: attributes & ATTR_LEGACY_BIOS_BOOTABLE != 0,
            extended: false,
            logical: false,
        });
    }
    PartitionTable {
        kind: TableKind::Gpt,
        sector_size: h.sector_size,
        partitions,
        mbr: Default::default(),
        disk_guid: Some(format_guid(&h.disk_guid)),
        gpt_header: Some(if h.lba == 1 { "primary" } else { "backup" }),
        notes,
    }
}
