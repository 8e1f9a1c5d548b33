//! VHD (Virtual PC / Hyper-V generation 1), fixed and dynamic, read-only.
//!
//! Every VHD ends with a 512-byte footer ("conectix", big-endian fields, a one's
//! complement checksum). A fixed disk is the raw disk followed by that footer. A
//! dynamic disk starts with a copy of the footer, then a dynamic header ("cxsparse")
//! that points to the block allocation table (BAT): one sector number per block
//! (2 MiB by default), or 0xFFFFFFFF for a block never written. Each stored block is
//! a sector bitmap followed by the block's data; like qemu, the reader takes a stored
//! block's data as written and does not consult the bitmap, which only matters for
//! differencing disks. Differencing disks (a parent by name) are refused.

use std::ops::Range;
use std::sync::Arc;

use blockio::{BlockSource, Window};

use crate::field::{be32, be64};
use crate::sparse::{Layout, Mapped, Ranges, Unit};
use crate::{Container, Opened, Result, Site, MAX_TABLE_BYTES, MAX_VIRTUAL_SIZE};

const FORMAT: &str = "vhd";
const FOOTER: u64 = 512;
const DYNAMIC_HEADER: usize = 1024;
/// A BAT entry for a block the disk never wrote.
const UNALLOCATED: u32 = 0xffff_ffff;
const SECTOR: u64 = 512;
/// Disk types in the footer.
const FIXED: u32 = 2;
const DYNAMIC: u32 = 3;
const DIFFERENCING: u32 = 4;

/// The one's complement of the byte sum, with the checksum field (at `at`) as zeros.
fn checksum(bytes: &[u8], at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |s, (_, b)| s.wrapping_add(*b as u32));
    !sum
}

struct Blocks {
    block: u64,
    bitmap: u64,
    bat: Vec<u32>,
}

impl Layout for Blocks {
    fn unit_size(&self) -> u64 {
        self.block
    }
    fn unit(&self, index: u64) -> Unit {
        match self.bat.get(index as usize) {
            Some(&s) if s != UNALLOCATED => Unit::Host(s as u64 * SECTOR + self.bitmap),
            _ => Unit::Backing,
        }
    }
    fn stored(&self) -> Vec<Range<u64>> {
        let mut out = Ranges::default();
        for (i, &s) in self.bat.iter().enumerate() {
            if s != UNALLOCATED {
                out.push(i as u64 * self.block, self.block);
            }
        }
        out.0
    }
}

/// Opens the VHD in `file`.
pub(crate) fn open(file: Container) -> Result<Opened> {
    let site = Site::new(&file, FORMAT);
    let file_len = file.len();
    if file_len < FOOTER {
        return Err(site.corrupt("footer", 0, format!("the file has only {file_len} bytes")));
    }
    let footer_at = file_len - FOOTER;
    let mut footer = [0u8; FOOTER as usize];
    file.read_exact_at(&mut footer, footer_at)?;
    if !footer.starts_with(b"conectix") {
        return Err(site.corrupt(
            "footer",
            footer_at,
            "the last 512 bytes are not a footer (the file is truncated)".into(),
        ));
    }
    let stored = be32(&footer, 64);
    let computed = checksum(&footer, 64);
    if stored != computed {
        return Err(site.corrupt(
            "footer",
            footer_at,
            format!("checksum {stored:#010x}, the bytes sum to {computed:#010x}"),
        ));
    }
    let size = be64(&footer, 48);
    let disk_type = be32(&footer, 60);
    if size > MAX_VIRTUAL_SIZE {
        return Err(site.corrupt(
            "footer",
            footer_at + 48,
            format!("a virtual size of {size} bytes is over the {MAX_VIRTUAL_SIZE}-byte limit"),
        ));
    }
    match disk_type {
        FIXED => {
            if size > footer_at {
                return Err(site.corrupt(
                    "footer",
                    footer_at + 48,
                    format!("a fixed disk of {size} bytes does not fit before the footer"),
                ));
            }
            let disk = Window::new(file.clone(), 0, size)?;
            site.opened(
                Arc::new(disk),
                "fixed".into(),
                file_len,
                Vec::new(),
                Vec::new(),
            )
        }
        DYNAMIC => dynamic(file, &footer, size, &site),
        DIFFERENCING => Err(site.unsupported("a differencing disk (one with a parent)".into())),
        t => Err(site.corrupt("footer", footer_at + 60, format!("disk type {t}"))),
    }
}

fn dynamic(file: Container, footer: &[u8], size: u64, site: &Site) -> Result<Opened> {
    let file_len = file.len();
    let at = be64(footer, 16);
    if at.saturating_add(DYNAMIC_HEADER as u64) > file_len {
        return Err(site.corrupt(
            "dynamic header",
            at,
            "it lies past the end of the file".into(),
        ));
    }
    let mut h = [0u8; DYNAMIC_HEADER];
    file.read_exact_at(&mut h, at)?;
    if !h.starts_with(b"cxsparse") {
        return Err(site.corrupt("dynamic header", at, "no cxsparse cookie".into()));
    }
    let (stored, computed) = (be32(&h, 36), checksum(&h, 36));
    if stored != computed {
        return Err(site.corrupt(
            "dynamic header",
            at,
            format!("checksum {stored:#010x}, the bytes sum to {computed:#010x}"),
        ));
    }
    let bat_at = be64(&h, 16);
    let entries = be32(&h, 28) as u64;
    let block = be32(&h, 32) as u64;
    if block < SECTOR || !block.is_power_of_two() {
        return Err(site.corrupt(
            "dynamic header",
            at + 32,
            format!("a block size of {block} bytes"),
        ));
    }
    let needed = size.div_ceil(block);
    if entries < needed {
        return Err(site.corrupt(
            "dynamic header",
            at + 28,
            format!("{entries} BAT entries, the virtual size needs {needed}"),
        ));
    }
    if needed * 4 > MAX_TABLE_BYTES || bat_at.saturating_add(needed * 4) > file_len {
        return Err(site.corrupt(
            "BAT",
            bat_at,
            format!("{needed} entries do not fit in the file ({file_len} bytes)"),
        ));
    }
    let mut raw = vec![0u8; (needed * 4) as usize];
    file.read_exact_at(&mut raw, bat_at)?;
    // The sector bitmap before each block: one bit per sector, padded to a sector.
    let bitmap = (block / SECTOR).div_ceil(8).next_multiple_of(SECTOR);
    let bat: Vec<u32> = (0..needed as usize).map(|i| be32(&raw, 4 * i)).collect();
    for (i, &s) in bat.iter().enumerate() {
        let start = s as u64 * SECTOR;
        if s != UNALLOCATED && start.saturating_add(bitmap + block) > file_len {
            return Err(site.corrupt(
                "BAT",
                bat_at + 4 * i as u64,
                format!("block {i} at {start} lies past the end of the file ({file_len} bytes)"),
            ));
        }
    }
    let layout = Blocks { block, bitmap, bat };
    let file_size = file.len();
    let source = Mapped::new(file, size, layout, None)?;
    site.opened(
        Arc::new(source),
        "dynamic".into(),
        file_size,
        Vec::new(),
        Vec::new(),
    )
}
