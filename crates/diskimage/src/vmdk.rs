//! VMDK, read-only: monolithicSparse, streamOptimized and monolithicFlat (VMware's
//! "Virtual Disk Format 1.1").
//!
//! A sparse extent starts with a little-endian header ("KDMV") that gives the grain
//! size and the grain directory; each directory entry points to a grain table whose
//! entries give each grain's sector (0: never written; 1: zeros). A
//! streamOptimized file compresses every grain (a marker with the grain's LBA and
//! length, then a zlib stream) and writes its directory last, so its header says
//! "at the end" and the real header is the footer before the end-of-stream marker.
//! A text descriptor names the extents; monolithicFlat has one FLAT extent file,
//! which must lie in the descriptor's own directory. Split (2 GB) and other
//! multi-extent disks are refused by name.

use std::collections::HashMap;
use std::ops::Range;

use std::sync::Arc;

use blockio::{BlockSource, Window};

use crate::backing::{parts, Chain};
use crate::field::{le16, le32, le64};
use crate::sparse::{Layout, Mapped, Ranges, Unit};
use crate::{Container, Opened, Result, Site, MAX_TABLE_BYTES, MAX_VIRTUAL_SIZE};

const FORMAT: &str = "vmdk";
/// The first line of a text descriptor.
pub(crate) const DESCRIPTOR_MAGIC: &[u8] = b"# Disk DescriptorFile";
const SECTOR: u64 = 512;
const HEADER: usize = 512;
/// The header's directory offset in a streamOptimized file: "see the footer".
const GD_AT_END: u64 = u64::MAX;
/// Header flags.
const ZERO_GRAIN_FLAG: u32 = 1 << 2;
const COMPRESSED_FLAG: u32 = 1 << 16;
/// A grain table entry for a grain that reads as zeros.
const ZERO_GRAIN: u32 = 1;
/// The only compression VMDK defines.
const DEFLATE: u16 = 1;
/// Grains of more than 1 MiB (2048 sectors) exist in no tool's output.
const MAX_GRAIN_SECTORS: u64 = 2048;
/// A descriptor is a few lines; 64 KiB bounds what is read of one.
const MAX_DESCRIPTOR: u64 = 64 << 10;
/// The grain marker before a compressed grain: its LBA (u64) and length (u32).
const MARKER: u64 = 12;

struct Grains {
    grain: u64,
    per_table: u64,
    compressed: bool,
    zero_grain: bool,
    /// Grain tables by directory index; no two entries share one.
    tables: Vec<Option<Box<[u32]>>>,
    file_len: u64,
}

impl Grains {
    fn entry(&self, g: u64) -> u32 {
        self.tables
            .get((g / self.per_table) as usize)
            .and_then(|t| t.as_ref())
            .map_or(0, |t| t[(g % self.per_table) as usize])
    }
}

impl Layout for Grains {
    fn unit_size(&self) -> u64 {
        self.grain
    }
    fn unit(&self, index: u64) -> Unit {
        match self.entry(index) {
            0 => Unit::Backing,
            ZERO_GRAIN if self.zero_grain => Unit::Zero,
            _ if self.compressed => Unit::Packed {
                key: index,
                skip: 0,
            },
            s => Unit::Host(s as u64 * SECTOR),
        }
    }
    fn unpack(&self, file: &dyn BlockSource, key: u64) -> blockio::Result<Vec<u8>> {
        let at = self.entry(key) as u64 * SECTOR;
        let bad = |reason: String| blockio::Error::Corrupt {
            name: file.name(),
            structure: "VMDK compressed grain",
            offset: at,
            reason,
        };
        let mut marker = [0u8; MARKER as usize];
        file.read_exact_at(&mut marker, at)?;
        let (lba, len) = (le64(&marker, 0), le32(&marker, 8) as u64);
        if lba != key * (self.grain / SECTOR) {
            return Err(bad(format!(
                "its marker says LBA {lba}, the grain table says {}",
                key * (self.grain / SECTOR)
            )));
        }
        if len > 2 * self.grain + SECTOR || at + MARKER + len > self.file_len {
            return Err(bad(format!("a compressed length of {len} bytes")));
        }
        let mut packed = vec![0u8; len as usize];
        file.read_exact_at(&mut packed, at + MARKER)?;
        let mut out = vec![0u8; self.grain as usize];
        let mut z = flate2::Decompress::new(true);
        z.decompress(&packed, &mut out, flate2::FlushDecompress::Finish)
            .map_err(|e| bad(format!("zlib: {e}")))?;
        // The disk's last grain may be short; the rest of it reads as zeros.
        Ok(out)
    }
    fn stored(&self) -> Vec<Range<u64>> {
        let mut out = Ranges::default();
        for (t, table) in self.tables.iter().enumerate() {
            let Some(table) = table else { continue };
            for (i, _) in table.iter().enumerate() {
                let g = t as u64 * self.per_table + i as u64;
                if matches!(self.unit(g), Unit::Host(_) | Unit::Packed { .. }) {
                    out.push(g * self.grain, self.grain);
                }
            }
        }
        out.0
    }
}

/// What a descriptor says.
#[derive(Debug, Default)]
struct Descriptor {
    create_type: String,
    parent_cid: Option<String>,
    parent_hint: Option<String>,
    /// (access, sectors, type, file, offset in sectors).
    extents: Vec<(u64, String, String, u64)>,
}

fn parse_descriptor(text: &str) -> Descriptor {
    let unquote = |v: &str| v.trim().trim_matches('"').to_string();
    let mut d = Descriptor::default();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            match key.trim() {
                "createType" => d.create_type = unquote(value),
                "parentCID" => d.parent_cid = Some(unquote(value)),
                "parentFileNameHint" => d.parent_hint = Some(unquote(value)),
                _ => {}
            }
            continue;
        }
        let words: Vec<&str> = line.splitn(4, ' ').collect();
        if let ["RW" | "RDONLY" | "NOACCESS", sectors, kind, rest] = words[..] {
            let (file, offset) = match rest
                .trim()
                .strip_prefix('"')
                .and_then(|r| r.split_once('"'))
            {
                Some((file, tail)) => (file.to_string(), tail.trim().parse().unwrap_or(0)),
                None => (rest.trim().to_string(), 0),
            };
            d.extents
                .push((sectors.parse().unwrap_or(0), kind.to_string(), file, offset));
        }
    }
    d
}

/// Opens the VMDK in `file`: a sparse extent or a text descriptor.
pub(crate) fn open(file: Container, chain: &mut Chain) -> Result<Opened> {
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0)?;
    if &magic == b"KDMV" {
        sparse(file, chain)
    } else {
        flat(file, chain)
    }
}

fn sparse(file: Container, chain: &mut Chain) -> Result<Opened> {
    let site = Site::new(&*file, FORMAT);
    let file_len = file.len();
    if file_len < HEADER as u64 {
        return Err(site.corrupt("header", 0, format!("the file has only {file_len} bytes")));
    }
    let mut h = [0u8; HEADER];
    file.read_exact_at(&mut h, 0)?;
    let mut header_at = 0;
    if le64(&h, 56) == GD_AT_END {
        // streamOptimized: the footer (a copy of the header with the real offsets)
        // sits before the end-of-stream marker.
        header_at = file_len
            .checked_sub(2 * HEADER as u64)
            .ok_or_else(|| site.corrupt("footer", 0, "the file is too short to hold one".into()))?;
        file.read_exact_at(&mut h, header_at)?;
        if &h[..4] != b"KDMV" || le64(&h, 56) == GD_AT_END {
            return Err(site.corrupt(
                "footer",
                header_at,
                "the header says the grain directory is at the end, but there is no footer there (the stream is cut short)".into(),
            ));
        }
    }
    let version = le32(&h, 4);
    let flags = le32(&h, 8);
    let capacity = le64(&h, 12);
    let grain_sectors = le64(&h, 20);
    let (desc_at, desc_len) = (le64(&h, 28), le64(&h, 36));
    let per_table = le32(&h, 44) as u64;
    let gd_at = le64(&h, 56);
    let compression = le16(&h, 77);
    if !(1..=3).contains(&version) {
        return Err(site.unsupported(format!("sparse extent version {version}")));
    }
    if grain_sectors == 0 || !grain_sectors.is_power_of_two() || grain_sectors > MAX_GRAIN_SECTORS {
        return Err(site.corrupt(
            "header",
            header_at + 20,
            format!("a grain of {grain_sectors} sectors"),
        ));
    }
    if capacity.saturating_mul(SECTOR) > MAX_VIRTUAL_SIZE {
        return Err(site.corrupt(
            "header",
            header_at + 12,
            format!("a capacity of {capacity} sectors is over the {MAX_VIRTUAL_SIZE}-byte limit"),
        ));
    }
    if per_table == 0 {
        return Err(site.corrupt("header", header_at + 44, "0 entries per grain table".into()));
    }
    let compressed = flags & COMPRESSED_FLAG != 0;
    if compressed && compression != DEFLATE {
        return Err(site.unsupported(format!("compression algorithm {compression}")));
    }
    let grain = grain_sectors * SECTOR;
    let size = capacity * SECTOR;

    // The embedded descriptor: its type, and whether it has a parent.
    let mut descriptor = Descriptor::default();
    if desc_at != 0 && desc_len != 0 {
        let (at, len) = (
            desc_at.saturating_mul(SECTOR),
            desc_len.saturating_mul(SECTOR),
        );
        if len > MAX_DESCRIPTOR || at.saturating_add(len) > file_len {
            return Err(site.corrupt(
                "descriptor",
                at,
                format!("{len} bytes do not fit in the file"),
            ));
        }
        let mut text = vec![0u8; len as usize];
        file.read_exact_at(&mut text, at)?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        descriptor = parse_descriptor(&String::from_utf8_lossy(&text[..end]));
    }
    let create_type = match descriptor.create_type.as_str() {
        "" if compressed => "streamOptimized".to_string(),
        "" => "monolithicSparse".to_string(),
        t @ ("monolithicSparse" | "streamOptimized") => t.to_string(),
        t => return Err(site.unsupported(format!("createType {t} (split or multi-extent disks)"))),
    };
    if descriptor.extents.len() > 1 {
        return Err(site.unsupported(format!(
            "a sparse file with {} extents",
            descriptor.extents.len()
        )));
    }

    // The grain directory and its grain tables.
    let tables_needed = capacity.div_ceil(grain_sectors).div_ceil(per_table);
    let gd_bytes = tables_needed * 4;
    let gd_at = gd_at.saturating_mul(SECTOR);
    if gd_bytes > MAX_TABLE_BYTES || gd_at.saturating_add(gd_bytes) > file_len {
        return Err(site.corrupt(
            "grain directory",
            gd_at,
            format!("{tables_needed} entries do not fit in the file ({file_len} bytes)"),
        ));
    }
    let mut gd = vec![0u8; gd_bytes as usize];
    file.read_exact_at(&mut gd, gd_at)?;
    let mut tables = Vec::with_capacity(tables_needed as usize);
    let mut by_offset: HashMap<u64, usize> = HashMap::new();
    let mut loaded = gd_bytes;
    for t in 0..tables_needed as usize {
        let at = le32(&gd, 4 * t) as u64 * SECTOR;
        if at == 0 {
            tables.push(None);
            continue;
        }
        if let Some(first) = by_offset.insert(at, t) {
            return Err(site.corrupt(
                "grain directory",
                gd_at + 4 * t as u64,
                format!("entry {t} points to the grain table at {at} that entry {first} uses too"),
            ));
        }
        let bytes = per_table * 4;
        loaded += bytes;
        if loaded > MAX_TABLE_BYTES {
            return Err(
                site.unsupported(format!("grain tables over {MAX_TABLE_BYTES} bytes in all"))
            );
        }
        if at.saturating_add(bytes) > file_len {
            return Err(site.corrupt(
                "grain directory",
                gd_at + 4 * t as u64,
                format!("entry {t} points to a grain table at {at}, past the end of the file"),
            ));
        }
        let mut raw = vec![0u8; bytes as usize];
        file.read_exact_at(&mut raw, at)?;
        let table: Box<[u32]> = (0..per_table as usize).map(|i| le32(&raw, 4 * i)).collect();
        for (i, &s) in table.iter().enumerate() {
            let host = s as u64 * SECTOR;
            let end = if compressed {
                host + MARKER
            } else {
                host + grain
            };
            if s > ZERO_GRAIN && end > file_len {
                return Err(site.corrupt(
                    "grain table",
                    at + 4 * i as u64,
                    format!("entry {i} puts a grain at {host}, past the end of the file ({file_len} bytes)"),
                ));
            }
        }
        tables.push(Some(table));
    }

    let backing = match (&descriptor.parent_cid, &descriptor.parent_hint) {
        (Some(cid), Some(hint)) if !cid.eq_ignore_ascii_case("ffffffff") => {
            Some(parts(chain.backing(&*file, hint)?))
        }
        _ => None,
    };
    let layout = Grains {
        grain,
        per_table,
        compressed,
        zero_grain: flags & ZERO_GRAIN_FLAG != 0,
        tables,
        file_len,
    };
    let (under, chain_names) = match backing {
        Some((s, c)) => (Some(s), c),
        None => (None, Vec::new()),
    };
    let source = Mapped::new(file, size, layout, under)?;
    site.opened(
        Arc::new(source),
        create_type,
        file_len,
        chain_names,
        Vec::new(),
    )
}

/// A text descriptor: monolithicFlat, one FLAT extent beside it.
fn flat(file: Container, chain: &Chain) -> Result<Opened> {
    let site = Site::new(&file, FORMAT);
    if file.len() > MAX_DESCRIPTOR {
        return Err(site.corrupt(
            "descriptor",
            0,
            format!(
                "{} bytes is more than a descriptor holds ({MAX_DESCRIPTOR})",
                file.len()
            ),
        ));
    }
    let mut text = vec![0u8; file.len() as usize];
    file.read_exact_at(&mut text, 0)?;
    let d = parse_descriptor(&String::from_utf8_lossy(&text));
    if d.create_type != "monolithicFlat" {
        return Err(site.unsupported(format!(
            "createType {} (only monolithicFlat descriptors are read; split and multi-extent disks are not)",
            d.create_type
        )));
    }
    let [(sectors, kind, name, offset)] = &d.extents[..] else {
        return Err(site.unsupported(format!("a descriptor with {} extents", d.extents.len())));
    };
    if kind != "FLAT" {
        return Err(site.unsupported(format!("an extent of type {kind}")));
    }
    let extent = chain.beside(&*file, name)?;
    let size = sectors.saturating_mul(SECTOR);
    let start = offset.saturating_mul(SECTOR);
    if size > MAX_VIRTUAL_SIZE {
        return Err(site.corrupt("descriptor", 0, format!("an extent of {sectors} sectors")));
    }
    let extent_len = extent.len();
    let extent: Arc<dyn BlockSource> = Arc::new(extent);
    let disk = Window::new(extent, start, size).map_err(|_| {
        site.corrupt(
            "descriptor",
            0,
            format!("the extent {name} holds {extent_len} bytes, fewer than the {size} at {start} it should"),
        )
    })?;
    site.opened(
        Arc::new(disk),
        "monolithicFlat".into(),
        extent_len,
        Vec::new(),
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_gives_its_type_parent_and_extents() {
        let d = parse_descriptor(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"disk-flat.vmdk\" 0\n",
        );
        assert_eq!(d.create_type, "monolithicFlat");
        assert_eq!(d.parent_cid.as_deref(), Some("ffffffff"));
        assert_eq!(
            d.extents,
            vec![(2048, "FLAT".into(), "disk-flat.vmdk".into(), 0)]
        );
    }
}
