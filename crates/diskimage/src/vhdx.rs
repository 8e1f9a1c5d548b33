//! VHDX (Hyper-V), fixed and dynamic, read-only (Microsoft's [MS-VHDX]).
//!
//! The file starts with an identifier ("vhdxfile"), two headers (the valid one with
//! the higher sequence number counts) and two copies of the region table, all with
//! CRC-32C checksums. The region table locates the metadata region (block size,
//! virtual size, sector size, whether there is a parent) and the block allocation
//! table (BAT). BAT entries give each payload block's state and its offset in MiB;
//! after every `chunk ratio` payload entries comes one sector-bitmap entry, which
//! only differencing disks use. A header naming a log that was not replayed means the
//! file's tables may be stale: it is refused, not read as if clean. Differencing
//! disks (a parent) are refused.

use std::ops::Range;
use std::sync::Arc;

use blockio::BlockSource;

use crate::field::{le16, le32, le64};
use crate::sparse::{Layout, Mapped, Ranges, Unit};
use crate::{Container, Opened, Result, Site, MAX_TABLE_BYTES, MAX_VIRTUAL_SIZE};

const FORMAT: &str = "vhdx";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Where the two headers and the two region tables are.
const HEADERS: [u64; 2] = [64 * KIB, 128 * KIB];
const HEADER_LEN: usize = 4096;
const REGION_TABLES: [u64; 2] = [192 * KIB, 256 * KIB];
const REGION_TABLE_LEN: usize = 64 * KIB as usize;
/// The spec's limits on region and metadata table entries.
const MAX_REGIONS: u32 = 2047;
const MAX_METADATA_ITEMS: u16 = 2047;
/// Payload blocks are 1 MiB to 256 MiB.
const BLOCK_SIZES: Range<u64> = MIB..256 * MIB + 1;

/// A GUID as VHDX stores it: the first three fields little-endian.
const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}
const BAT_REGION: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
const METADATA_REGION: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const LOGICAL_SECTOR_SIZE: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const PHYSICAL_SECTOR_SIZE: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
const PAGE_83: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
const PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
const KNOWN_ITEMS: [[u8; 16]; 6] = [
    FILE_PARAMETERS,
    VIRTUAL_DISK_SIZE,
    LOGICAL_SECTOR_SIZE,
    PHYSICAL_SECTOR_SIZE,
    PAGE_83,
    PARENT_LOCATOR,
];

/// BAT entry states of payload blocks.
const NOT_PRESENT: u64 = 0;
const UNDEFINED: u64 = 1;
const ZERO: u64 = 2;
const UNMAPPED: u64 = 3;
const FULLY_PRESENT: u64 = 6;
/// The offset field of a BAT entry counts MiB from bit 20.
const OFFSET_MASK: u64 = !(MIB - 1);

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC-32C of `bytes` with the checksum field (4 bytes at offset 4) taken as zeros.
fn checksum(bytes: &[u8]) -> u32 {
    let mut d = CASTAGNOLI.digest();
    d.update(&bytes[..4]);
    d.update(&[0; 4]);
    d.update(&bytes[8..]);
    d.finalize()
}

struct Blocks {
    block: u64,
    blocks: u64,
    chunk_ratio: u64,
    bat: Vec<u64>,
}

impl Blocks {
    fn entry(&self, payload: u64) -> u64 {
        let i = payload + payload / self.chunk_ratio;
        self.bat.get(i as usize).copied().unwrap_or(NOT_PRESENT)
    }
}

impl Layout for Blocks {
    fn unit_size(&self) -> u64 {
        self.block
    }
    fn unit(&self, index: u64) -> Unit {
        let e = self.entry(index);
        match e & 7 {
            FULLY_PRESENT => Unit::Host(e & OFFSET_MASK),
            ZERO | UNDEFINED | UNMAPPED => Unit::Zero,
            _ => Unit::Backing,
        }
    }
    fn stored(&self) -> Vec<Range<u64>> {
        let mut out = Ranges::default();
        for b in 0..self.blocks {
            if matches!(self.unit(b), Unit::Host(_)) {
                out.push(b * self.block, self.block);
            }
        }
        out.0
    }
}

/// Opens the VHDX in `file`.
pub(crate) fn open(file: Container) -> Result<Opened> {
    let site = Site::new(&file, FORMAT);
    let file_len = file.len();
    let fits = |at: u64, len: u64| at.checked_add(len).is_some_and(|end| end <= file_len);

    // The current header: the valid one with the higher sequence number.
    let mut current: Option<(u64, Vec<u8>)> = None;
    let mut why = Vec::new();
    for at in HEADERS {
        if !fits(at, HEADER_LEN as u64) {
            why.push(format!("{at}: past the end of the file"));
            continue;
        }
        let mut h = vec![0u8; HEADER_LEN];
        file.read_exact_at(&mut h, at)?;
        if &h[..4] != b"head" {
            why.push(format!("{at}: no \"head\" signature"));
        } else if le32(&h, 4) != checksum(&h) {
            why.push(format!(
                "{at}: checksum {:#010x}, the bytes give {:#010x}",
                le32(&h, 4),
                checksum(&h)
            ));
        } else if current
            .as_ref()
            .is_none_or(|(_, c)| le64(&h, 8) > le64(c, 8))
        {
            current = Some((at, h));
        }
    }
    let Some((header_at, header)) = current else {
        return Err(site.corrupt(
            "headers",
            HEADERS[0],
            format!("neither header is valid ({})", why.join("; ")),
        ));
    };
    if le16(&header, 66) != 1 {
        return Err(site.unsupported(format!("version {}", le16(&header, 66))));
    }
    if header[48..64].iter().any(|&b| b != 0) {
        return Err(site.unsupported(format!(
            "a header (at {header_at}) naming a log that was not replayed: the tables may be stale; let Hyper-V or qemu-img check -r all replay it"
        )));
    }

    // The region table, from whichever copy is valid.
    let mut regions = None;
    for at in REGION_TABLES {
        if !fits(at, REGION_TABLE_LEN as u64) {
            continue;
        }
        let mut t = vec![0u8; REGION_TABLE_LEN];
        file.read_exact_at(&mut t, at)?;
        if &t[..4] == b"regi" && le32(&t, 4) == checksum(&t) {
            regions = Some((at, t));
            break;
        }
    }
    let Some((table_at, table)) = regions else {
        return Err(site.corrupt(
            "region table",
            REGION_TABLES[0],
            "neither copy has a valid signature and checksum".into(),
        ));
    };
    let count = le32(&table, 8);
    if count > MAX_REGIONS {
        return Err(site.corrupt(
            "region table",
            table_at + 8,
            format!("{count} entries (the limit is {MAX_REGIONS})"),
        ));
    }
    let (mut bat_region, mut metadata_region) = (None, None);
    for i in 0..count as usize {
        let e = &table[16 + 32 * i..16 + 32 * (i + 1)];
        let (at, len, required) = (le64(e, 16), le32(e, 24) as u64, le32(e, 28) & 1 != 0);
        if !fits(at, len) {
            return Err(site.corrupt(
                "region table",
                table_at + 16 + 32 * i as u64,
                format!("region {i} [{at}, +{len}) lies past the end of the file"),
            ));
        }
        if e[..16] == BAT_REGION {
            bat_region = Some((at, len));
        } else if e[..16] == METADATA_REGION {
            metadata_region = Some((at, len));
        } else if required {
            return Err(site.unsupported(format!("a required region of unknown kind (entry {i})")));
        }
    }
    let (Some((bat_at, bat_len)), Some((meta_at, meta_len))) = (bat_region, metadata_region) else {
        return Err(site.corrupt(
            "region table",
            table_at,
            "it lacks the BAT or the metadata region".into(),
        ));
    };

    // The metadata items.
    let mut m = vec![0u8; meta_len.min(MAX_TABLE_BYTES) as usize];
    file.read_exact_at(&mut m, meta_at)?;
    if m.len() < 32 || &m[..8] != b"metadata" {
        return Err(site.corrupt(
            "metadata table",
            meta_at,
            "no \"metadata\" signature".into(),
        ));
    }
    let items = le16(&m, 10);
    if items > MAX_METADATA_ITEMS || 32 + 32 * items as usize > m.len() {
        return Err(site.corrupt("metadata table", meta_at + 10, format!("{items} entries")));
    }
    let item = |id: [u8; 16], len: usize| -> Result<Option<Vec<u8>>> {
        for i in 0..items as usize {
            let e = &m[32 + 32 * i..64 + 32 * i];
            if e[..16] != id {
                continue;
            }
            let (off, n) = (le32(e, 16) as usize, le32(e, 20) as usize);
            return match m.get(off..off.saturating_add(n)) {
                Some(v) if n >= len => Ok(Some(v.to_vec())),
                _ => Err(site.corrupt(
                    "metadata table",
                    meta_at + 32 + 32 * i as u64,
                    format!("item {i} [{off}, +{n}) is outside the region or too short"),
                )),
            };
        }
        Ok(None)
    };
    let required = |v: Option<Vec<u8>>, what: &str| {
        v.ok_or_else(|| site.corrupt("metadata table", meta_at, format!("no {what} item")))
    };
    let params = required(item(FILE_PARAMETERS, 8)?, "file parameters")?;
    let size = le64(
        &required(item(VIRTUAL_DISK_SIZE, 8)?, "virtual disk size")?,
        0,
    );
    let sector = le32(
        &required(item(LOGICAL_SECTOR_SIZE, 4)?, "logical sector size")?,
        0,
    ) as u64;
    for i in 0..items as usize {
        let e = &m[32 + 32 * i..64 + 32 * i];
        if le32(e, 24) & 4 != 0 && !KNOWN_ITEMS.iter().any(|k| e[..16] == *k) {
            return Err(site.unsupported(format!(
                "a required metadata item of unknown kind (entry {i})"
            )));
        }
    }
    let block = le32(&params, 0) as u64;
    // A fixed disk says "leave blocks allocated"; its blocks may still be marked zero.
    let (fixed, has_parent) = (le32(&params, 4) & 1 != 0, le32(&params, 4) & 2 != 0);
    if has_parent {
        return Err(site.unsupported("a differencing disk (one with a parent)".into()));
    }
    if !BLOCK_SIZES.contains(&block) || !block.is_power_of_two() {
        return Err(site.corrupt(
            "file parameters",
            meta_at,
            format!("a block size of {block} bytes"),
        ));
    }
    if sector != 512 && sector != 4096 {
        return Err(site.corrupt("logical sector size", meta_at, format!("{sector} bytes")));
    }
    if size == 0 || size > MAX_VIRTUAL_SIZE || !size.is_multiple_of(sector) {
        return Err(site.corrupt("virtual disk size", meta_at, format!("{size} bytes")));
    }

    // The BAT.
    let chunk_ratio = (8 * MIB * sector) / block;
    let blocks = size.div_ceil(block);
    let entries = blocks + (blocks - 1) / chunk_ratio;
    if entries * 8 > bat_len || entries * 8 > MAX_TABLE_BYTES {
        return Err(site.corrupt(
            "BAT",
            bat_at,
            format!("{entries} entries do not fit in a region of {bat_len} bytes"),
        ));
    }
    let mut raw = vec![0u8; (entries * 8) as usize];
    file.read_exact_at(&mut raw, bat_at)?;
    let bat: Vec<u64> = (0..entries as usize).map(|i| le64(&raw, 8 * i)).collect();
    for (i, &e) in bat.iter().enumerate() {
        let i = i as u64;
        if (i + 1).is_multiple_of(chunk_ratio + 1) {
            continue; // a sector bitmap entry
        }
        let payload = i - i / (chunk_ratio + 1);
        let state = e & 7;
        let at = bat_at + 8 * i;
        match state {
            NOT_PRESENT | UNDEFINED | ZERO | UNMAPPED => {}
            FULLY_PRESENT => {
                let host = e & OFFSET_MASK;
                let len = block.min(size - payload * block);
                if host == 0 || !fits(host, len) {
                    return Err(site.corrupt(
                        "BAT",
                        at,
                        format!(
                            "block {payload} at {host} lies outside the file ({file_len} bytes)"
                        ),
                    ));
                }
            }
            s => {
                return Err(site.corrupt(
                    "BAT",
                    at,
                    format!(
                        "block {payload} has state {s}, which a disk without a parent cannot have"
                    ),
                ))
            }
        }
    }
    let layout = Blocks {
        block,
        blocks,
        chunk_ratio,
        bat,
    };
    let source = Mapped::new(file, size, layout, None)?;
    site.opened(
        Arc::new(source),
        if fixed { "fixed" } else { "dynamic" }.into(),
        file_len,
        Vec::new(),
        Vec::new(),
    )
}
