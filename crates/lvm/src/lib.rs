//! LVM2, read-only: physical volume labels, the text metadata, and logical volumes
//! as [`BlockSource`]s assembled from their segments.
//!
//! A PV carries a label ("LABELONE", CRC-checked) in one of its first four sectors;
//! the label's PV header gives the PV's UUID and its metadata areas. Each metadata
//! area starts with a header (CRC-checked, magic " LVM2 x[5A%r0N*>") whose first
//! raw location points to the current copy of the volume group's text metadata in
//! the area's ring buffer (it may wrap past the end back to just after the header),
//! with its own CRC. The text ([`config`]) names the PVs by UUID and describes each
//! LV as segments of extents. Read here: `striped` segments (linear is one stripe),
//! several per LV, over several PVs. Anything else (thin, raid, mirror, cache,
//! snapshot, vdo) and any PV that is not in the image are reported as the reason an
//! LV cannot be read, never read wrongly.

pub mod config;
mod volume;

use std::sync::Arc;

use blockio::BlockSource;

pub use volume::LvSource;

/// What went wrong reading LVM structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device could not be read.
    #[error(transparent)]
    Read(#[from] blockio::Error),
    /// A structure is damaged.
    #[error("{device}: LVM {structure} at offset {offset}: {reason}")]
    Corrupt {
        /// The device (a partition of the image).
        device: String,
        /// "label", "PV header", "metadata area header", "metadata".
        structure: &'static str,
        /// Where it is on the device.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// The error without the device's name, for reports that already name it.
    pub fn detail(&self) -> String {
        match self {
            Error::Corrupt {
                structure,
                offset,
                reason,
                ..
            } => format!("LVM {structure} at offset {offset}: {reason}"),
            Error::Read(e) => e.to_string(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

const SECTOR: u64 = 512;
/// The label is in one of the first four sectors.
const LABEL_SECTORS: u64 = 4;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// LVM's CRC: CRC-32 (reflected, 0xEDB88320) started from this value, not inverted.
const INITIAL_CRC: u32 = 0xf597_a6cf;
/// The most data areas and metadata areas a PV header lists in practice is one or
/// two each; more than this is a damaged header.
const MAX_AREAS: usize = 8;
/// A VG's metadata text is kilobytes; 16 MiB bounds what is read of one.
const MAX_METADATA: u64 = 16 << 20;
/// A raw location flag: this metadata area is ignored (pvchange --metadataignore).
const RAW_LOCN_IGNORED: u32 = 1;

/// LVM's CRC of `bytes`.
pub fn crc(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!INITIAL_CRC);
    h.update(bytes);
    !h.finalize()
}

/// What a PV's label says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvLabel {
    /// The PV UUID, 32 characters without dashes.
    pub uuid: String,
    /// The device size the PV header records.
    pub device_size: u64,
    /// The metadata areas: (offset, size) on the device.
    pub metadata_areas: Vec<(u64, u64)>,
}

/// Reads the PV label of `device`, if it has one.
pub fn label(device: &dyn BlockSource) -> Result<Option<PvLabel>> {
    let corrupt = |structure, offset, reason: String| Error::Corrupt {
        device: device.name(),
        structure,
        offset,
        reason,
    };
    for s in 0..LABEL_SECTORS {
        let at = s * SECTOR;
        if at + SECTOR > device.len() {
            break;
        }
        let mut b = [0u8; SECTOR as usize];
        device.read_exact_at(&mut b, at)?;
        if &b[..8] != LABEL_ID {
            continue;
        }
        let stored = le32(&b, 16);
        if crc(&b[20..]) != stored {
            return Err(corrupt(
                "label",
                at,
                format!("CRC {stored:#010x} does not match its bytes"),
            ));
        }
        if &b[24..32] != LABEL_TYPE {
            return Err(corrupt("label", at, "it is not an LVM2 label".into()));
        }
        let header = le32(&b, 20) as usize;
        if !(32..SECTOR as usize - 40).contains(&header) {
            return Err(corrupt(
                "PV header",
                at,
                format!("it starts at {header}, outside the label sector"),
            ));
        }
        let h = &b[header..];
        let uuid = String::from_utf8_lossy(&h[..32]).into_owned();
        let device_size = le64(h, 32);
        // Two lists of (offset, size), each ended by a zero entry: data areas, then
        // metadata areas.
        let mut pos = 40;
        let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
        for list in &mut lists {
            loop {
                if pos + 16 > h.len() {
                    return Err(corrupt(
                        "PV header",
                        at + header as u64,
                        "its area lists run past the label sector".into(),
                    ));
                }
                let (off, size) = (le64(h, pos), le64(h, pos + 8));
                pos += 16;
                if off == 0 {
                    break;
                }
                if list.len() == MAX_AREAS {
                    return Err(corrupt(
                        "PV header",
                        at + header as u64,
                        format!("more than {MAX_AREAS} areas"),
                    ));
                }
                list.push((off, size));
            }
        }
        let [_, metadata_areas] = lists;
        return Ok(Some(PvLabel {
            uuid,
            device_size,
            metadata_areas,
        }));
    }
    Ok(None)
}

/// The current metadata text of the VG on `device`: from the valid metadata area
/// whose text has the highest `seqno`.
pub fn metadata(device: &dyn BlockSource, label: &PvLabel) -> Result<Option<String>> {
    let corrupt = |structure, offset, reason: String| Error::Corrupt {
        device: device.name(),
        structure,
        offset,
        reason,
    };
    let mut best: Option<(i64, String)> = None;
    let mut problem = None;
    for &(start, size) in &label.metadata_areas {
        if start.checked_add(size).is_none_or(|end| end > device.len()) || size < SECTOR {
            problem = Some(corrupt(
                "metadata area",
                start,
                format!("[{start}, +{size}) does not fit the device"),
            ));
            continue;
        }
        let mut h = [0u8; SECTOR as usize];
        device.read_exact_at(&mut h, start)?;
        if &h[4..20] != MDA_MAGIC {
            problem = Some(corrupt(
                "metadata area header",
                start,
                "no LVM2 magic".into(),
            ));
            continue;
        }
        if crc(&h[4..]) != le32(&h, 0) {
            problem = Some(corrupt(
                "metadata area header",
                start,
                "CRC does not match".into(),
            ));
            continue;
        }
        let (offset, len, checksum, flags) =
            (le64(&h, 40), le64(&h, 48), le32(&h, 56), le32(&h, 60));
        if offset == 0 || flags & RAW_LOCN_IGNORED != 0 {
            continue; // no metadata yet, or an ignored area
        }
        if len > MAX_METADATA || len > size - SECTOR || offset < SECTOR || offset >= size {
            problem = Some(corrupt(
                "metadata area header",
                start,
                format!("metadata of {len} bytes at {offset} does not fit an area of {size}"),
            ));
            continue;
        }
        // The text may wrap from the end of the ring back to just after the header.
        let mut text = vec![0u8; len as usize];
        let first = len.min(size - offset) as usize;
        device.read_exact_at(&mut text[..first], start + offset)?;
        device.read_exact_at(&mut text[first..], start + SECTOR)?;
        if crc(&text) != checksum {
            problem = Some(corrupt(
                "metadata",
                start + offset,
                "CRC does not match the text".into(),
            ));
            continue;
        }
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let text = String::from_utf8_lossy(&text[..end]).into_owned();
        let seqno = config::parse(&text)
            .ok()
            .and_then(|c| c.first_section().and_then(|(_, vg)| vg.int("seqno")))
            .unwrap_or(-1);
        if best.as_ref().is_none_or(|(s, _)| seqno > *s) {
            best = Some((seqno, text));
        }
    }
    match (best, problem) {
        (Some((_, text)), _) => Ok(Some(text)),
        (None, Some(p)) => Err(p),
        (None, None) => Ok(None),
    }
}

/// A physical volume as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVolume {
    /// Its name in the metadata ("pv0").
    pub name: String,
    /// Its UUID without dashes.
    pub uuid: String,
    /// Where its extents start, in bytes.
    pub pe_start: u64,
    /// How many extents it has.
    pub pe_count: u64,
}

/// One segment of an LV: a run of its extents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its first extent in the LV.
    pub start_extent: u64,
    /// How many extents.
    pub extent_count: u64,
    /// What maps them.
    pub kind: SegmentKind,
}

/// How a segment's extents are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    /// Striped over PVs (linear is one stripe): chunks of `stripe_size` bytes go to
    /// each stripe in turn; each stripe is (PV name, its first extent there).
    Striped {
        /// Bytes per chunk (irrelevant with one stripe).
        stripe_size: u64,
        /// The stripes.
        stripes: Vec<(String, u64)>,
    },
    /// Another segment type ("thin", "thin-pool", "raid1", "mirror", "cache",
    /// "snapshot", ...), not read.
    Other(String),
}

/// A logical volume as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalVolume {
    /// Its name.
    pub name: String,
    /// Whether it is visible (internal LVs of pools and RAID are not).
    pub visible: bool,
    /// Its segments, in order.
    pub segments: Vec<Segment>,
}

impl LogicalVolume {
    /// Its size in extents.
    pub fn extents(&self) -> u64 {
        self.segments.iter().map(|s| s.extent_count).sum()
    }
}

/// A volume group as its metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeGroup {
    /// Its name.
    pub name: String,
    /// The metadata's sequence number.
    pub seqno: i64,
    /// The extent size in bytes.
    pub extent_size: u64,
    /// Its PVs.
    pub pvs: Vec<PhysicalVolume>,
    /// Its LVs.
    pub lvs: Vec<LogicalVolume>,
}

/// The most segments or stripes accepted: real VGs have a handful.
const MAX_SEGMENTS: usize = 4096;

/// Reads a VG from its metadata text.
pub fn volume_group(text: &str) -> std::result::Result<VolumeGroup, String> {
    let tree = config::parse(text)?;
    let (name, vg) = tree.first_section().ok_or("no volume group section")?;
    let want = |s: &config::Section, key: &str| s.int(key).ok_or(format!("no {key}"));
    let extent_size = (want(vg, "extent_size")? as u64)
        .checked_mul(SECTOR)
        .filter(|&e| e > 0)
        .ok_or("a bad extent_size")?;
    let mut pvs = Vec::new();
    if let Some(section) = vg.section("physical_volumes") {
        for (pv_name, pv) in section.sections() {
            pvs.push(PhysicalVolume {
                name: pv_name.to_string(),
                uuid: pv
                    .string("id")
                    .ok_or("a PV without an id")?
                    .replace('-', ""),
                pe_start: (want(pv, "pe_start")? as u64).saturating_mul(SECTOR),
                pe_count: want(pv, "pe_count")? as u64,
            });
        }
    }
    let mut lvs = Vec::new();
    if let Some(section) = vg.section("logical_volumes") {
        for (lv_name, lv) in section.sections() {
            let visible = lv.strings("status").iter().any(|s| s == "VISIBLE");
            let mut segments = Vec::new();
            for (_, seg) in lv.sections() {
                if segments.len() == MAX_SEGMENTS {
                    return Err(format!(
                        "LV {lv_name} has more than {MAX_SEGMENTS} segments"
                    ));
                }
                let start_extent = want(seg, "start_extent")? as u64;
                let extent_count = want(seg, "extent_count")? as u64;
                let kind = match seg.string("type").unwrap_or_default().as_str() {
                    "striped" => {
                        let list = seg.list("stripes").unwrap_or_default();
                        let stripes: Vec<(String, u64)> = list
                            .chunks(2)
                            .filter_map(|p| match p {
                                [config::Value::Str(pv), config::Value::Int(e)] if *e >= 0 => {
                                    Some((pv.clone(), *e as u64))
                                }
                                _ => None,
                            })
                            .collect();
                        if stripes.is_empty()
                            || stripes.len() * 2 != list.len()
                            || stripes.len() > MAX_SEGMENTS
                        {
                            return Err(format!(
                                "LV {lv_name}: a striped segment with a bad stripe list"
                            ));
                        }
                        let stripe_size = (seg.int("stripe_size").unwrap_or(0).max(0) as u64)
                            .saturating_mul(SECTOR);
                        if stripes.len() > 1 && stripe_size == 0 {
                            return Err(format!(
                                "LV {lv_name}: {} stripes without a stripe_size",
                                stripes.len()
                            ));
                        }
                        SegmentKind::Striped {
                            stripe_size,
                            stripes,
                        }
                    }
                    other => SegmentKind::Other(other.to_string()),
                };
                segments.push(Segment {
                    start_extent,
                    extent_count,
                    kind,
                });
            }
            lvs.push(LogicalVolume {
                name: lv_name.to_string(),
                visible,
                segments,
            });
        }
    }
    Ok(VolumeGroup {
        name: name.to_string(),
        seqno: vg.int("seqno").unwrap_or(0),
        extent_size,
        pvs,
        lvs,
    })
}

/// Assembles `lv` of `vg` from the PVs found (by UUID), or says why it cannot be
/// read.
pub fn assemble(
    vg: &VolumeGroup,
    lv: &LogicalVolume,
    found: &dyn Fn(&str) -> Option<Arc<dyn BlockSource>>,
) -> std::result::Result<LvSource, String> {
    volume::assemble(vg, lv, found)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockio::MemorySource;

    const VG: &str = r#"vg0 {
    id = "x"
    seqno = 7
    extent_size = 8
    physical_volumes {
        pv0 { id = "aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa" pe_start = 1 pe_count = 8 }
        pv1 { id = "bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb" pe_start = 1 pe_count = 8 }
    }
    logical_volumes {
        striped {
            status = ["READ", "WRITE", "VISIBLE"]
            segment1 { start_extent = 0 extent_count = 4 type = "striped" stripe_count = 2 stripe_size = 2 stripes = [ "pv0", 1, "pv1", 3 ] }
        }
        thin { status = ["VISIBLE"] segment1 { start_extent = 0 extent_count = 1 type = "thin" } }
    }
}"#;

    #[test]
    fn lvm_crc_starts_from_its_own_initial_value() {
        assert_eq!(crc(b""), INITIAL_CRC);
        assert_ne!(crc(b"a"), crc(b"b"));
    }

    /// A PV whose every byte names itself: PV letter, then the byte offset.
    fn pv(tag: u8) -> Arc<dyn BlockSource> {
        let mut b = vec![0u8; 512 + 8 * 4096];
        for (i, chunk) in b.chunks_mut(8).enumerate() {
            chunk[0] = tag;
            chunk[1..8].copy_from_slice(&(i as u64 * 8).to_le_bytes()[..7]);
        }
        Arc::new(MemorySource::new(b))
    }

    #[test]
    fn a_striped_lv_alternates_between_its_pvs_chunk_by_chunk() {
        let vg = volume_group(VG).unwrap();
        assert_eq!(vg.seqno, 7);
        assert_eq!(vg.extent_size, 4096);
        let (a, b) = (pv(b'a'), pv(b'b'));
        let found = |uuid: &str| match uuid.as_bytes()[0] {
            b'a' => Some(a.clone()),
            b'b' => Some(b.clone()),
            _ => None,
        };
        let lv = assemble(&vg, &vg.lvs[0], &found).unwrap();
        assert_eq!(lv.len(), 4 * 4096);
        // Chunks of 1 KiB: chunk 0 on pv0 at extent 1, chunk 1 on pv1 at extent 3,
        // chunk 2 back on pv0 right after chunk 0.
        let at = |lv_offset: u64| {
            let mut x = [0u8; 8];
            lv.read_exact_at(&mut x, lv_offset).unwrap();
            let mut off = [0u8; 8];
            off[..7].copy_from_slice(&x[1..]);
            (x[0], u64::from_le_bytes(off))
        };
        assert_eq!(at(0), (b'a', 512 + 4096));
        assert_eq!(at(1024), (b'b', 512 + 3 * 4096));
        assert_eq!(at(2048), (b'a', 512 + 4096 + 1024));
        assert_eq!(at(3 * 1024 + 8), (b'b', 512 + 3 * 4096 + 1024 + 8));
        // A read across chunks is split correctly.
        let mut whole = vec![0u8; 4096];
        lv.read_exact_at(&mut whole, 1020).unwrap();
        assert_eq!(whole[4], b'b');
        assert!(lv.read_exact_at(&mut [0u8; 1], 4 * 4096).is_err());
    }

    #[test]
    fn segment_types_not_read_and_missing_pvs_are_reasons_not_guesses() {
        let vg = volume_group(VG).unwrap();
        let none = |_: &str| None;
        let thin = assemble(&vg, &vg.lvs[1], &none).err().unwrap();
        assert!(thin.contains("\"thin\""), "{thin}");
        let missing = assemble(&vg, &vg.lvs[0], &none).err().unwrap();
        assert!(
            missing.contains("pv0") && missing.contains("not in the image"),
            "{missing}"
        );
    }
}
