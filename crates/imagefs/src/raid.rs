//! Members of software and firmware RAID sets, recognised by their metadata where
//! libblkid looks for it, with the checks it makes (checksums included), so that
//! amiforge and `blkid` agree on what a volume is.
//!
//! - Linux md: superblock 0.90 (64 KiB-aligned, 64 KiB before the end, either byte
//!   order), 1.0 (8 KiB before the 4 KiB-aligned end), 1.1 (at 0) and 1.2 (at 4 KiB);
//!   version 1 superblocks must carry a valid checksum and their own offset.
//! - Firmware ("fake") RAID, on whole disks only as blkid does: SNIA DDF, Intel
//!   Matrix (isw), LSI MegaRAID, NVIDIA, Promise FastTrack, Silicon Image Medley,
//!   JMicron, HighPoint 37x/45x, Adaptec and VIA.
//!
//! A RAID1 md member's data area holds a whole copy of the array, so
//! [`RaidMember::data`] says where it is and the caller can read the filesystem in
//! it. Other levels spread the data over several disks and cannot be read from one.

use blockio::BlockSource;
use serde::Serialize;
use std::ops::Range;

/// The kind of RAID metadata on a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RaidFormat {
    /// Linux software RAID (md).
    LinuxMd,
    /// SNIA Common RAID Disk Data Format.
    Ddf,
    /// Intel Matrix Storage (IMSM).
    IntelIsw,
    /// LSI MegaRAID.
    LsiMega,
    /// NVIDIA MediaShield.
    Nvidia,
    /// Promise FastTrack.
    Promise,
    /// Silicon Image Medley.
    SiliconImage,
    /// JMicron.
    Jmicron,
    /// HighPoint RocketRAID 45x.
    HighPoint45x,
    /// HighPoint 37x.
    HighPoint37x,
    /// Adaptec HostRAID.
    Adaptec,
    /// VIA V-RAID.
    Via,
}

impl RaidFormat {
    /// blkid's name for a member of this format ("linux_raid_member"...).
    pub fn name(self) -> &'static str {
        match self {
            RaidFormat::LinuxMd => "linux_raid_member",
            RaidFormat::Ddf => "ddf_raid_member",
            RaidFormat::IntelIsw => "isw_raid_member",
            RaidFormat::LsiMega => "lsi_mega_raid_member",
            RaidFormat::Nvidia => "nvidia_raid_member",
            RaidFormat::Promise => "promise_fasttrack_raid_member",
            RaidFormat::SiliconImage => "silicon_medley_raid_member",
            RaidFormat::Jmicron => "jmicron_raid_member",
            RaidFormat::HighPoint45x => "hpt45x_raid_member",
            RaidFormat::HighPoint37x => "hpt37x_raid_member",
            RaidFormat::Adaptec => "adaptec_raid_member",
            RaidFormat::Via => "via_raid_member",
        }
    }
}

/// RAID metadata found on a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaidMember {
    /// The format.
    pub format: RaidFormat,
    /// The metadata version ("0.90.0", "1.2"), where the format has one.
    pub version: Option<String>,
    /// The RAID level (md only: -1 linear, 0, 1, 4, 5, 6, 10).
    pub level: Option<i32>,
    /// For an md RAID1 member: the byte range of the volume that holds a whole copy
    /// of the array's data.
    pub data: Option<Range<u64>>,
}

/// md's magic number.
const MD_MAGIC: u32 = 0xa92b_4efc;
/// md 0.90 reserves the last 64 KiB-aligned 64 KiB of a device.
const MD_RESERVED: u64 = 0x10000;
/// A version 1 superblock: 256 bytes plus 2 bytes per device role.
const MD1_BASE: usize = 256;
/// Most device roles a version 1 superblock lists (mdadm's own limit is 1920).
const MD1_MAX_DEV: usize = 1920;
const SECTOR: u64 = 512;

fn read(source: &dyn BlockSource, offset: u64, len: usize) -> blockio::Result<Option<Vec<u8>>> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > source.len())
    {
        return Ok(None);
    }
    let mut b = vec![0u8; len];
    source.read_exact_at(&mut b, offset)?;
    Ok(Some(b))
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// Looks for an md superblock on `source`, where the kernel and blkid look.
pub fn md_member(source: &dyn BlockSource) -> blockio::Result<Option<RaidMember>> {
    let size = source.len();
    if size > MD_RESERVED {
        let at = (size & !(MD_RESERVED - 1)) - MD_RESERVED;
        if let Some(m) = md0(source, at)? {
            return Ok(Some(m));
        }
        let at = (size & !0xfff) - 0x2000;
        if let Some(m) = md1(source, at, "1.0")? {
            return Ok(Some(m));
        }
    }
    if let Some(m) = md1(source, 0, "1.1")? {
        return Ok(Some(m));
    }
    md1(source, 0x1000, "1.2")
}

fn md0(source: &dyn BlockSource, at: u64) -> blockio::Result<Option<RaidMember>> {
    let Some(b) = read(source, at, 64)? else {
        return Ok(None);
    };
    let word: fn(&[u8], usize) -> u32 = if le32(&b, 0) == MD_MAGIC {
        le32
    } else if be32(&b, 0) == MD_MAGIC {
        be32
    } else {
        return Ok(None);
    };
    let (major, minor, patch) = (word(&b, 4), word(&b, 8), word(&b, 12));
    let level = word(&b, 28) as i32;
    let size = u64::from(word(&b, 32)) << 10; // KiB
    if source.len() < size + MD_RESERVED || at < size {
        return Ok(None); // blkid: the device is too small for what it claims
    }
    Ok(Some(RaidMember {
        format: RaidFormat::LinuxMd,
        version: Some(format!("{major}.{minor}.{patch}")),
        level: Some(level),
        data: (level == 1).then_some(0..size),
    }))
}

fn md1(source: &dyn BlockSource, at: u64, version: &str) -> blockio::Result<Option<RaidMember>> {
    let Some(head) = read(source, at, MD1_BASE)? else {
        return Ok(None);
    };
    if le32(&head, 0) != MD_MAGIC || le32(&head, 4) != 1 {
        return Ok(None);
    }
    if le64(&head, 144) != at / SECTOR {
        return Ok(None); // super_offset must name this very sector
    }
    let max_dev = le32(&head, 220) as usize;
    if max_dev > MD1_MAX_DEV {
        return Ok(None);
    }
    let Some(sb) = read(source, at, MD1_BASE + max_dev * 2)? else {
        return Ok(None);
    };
    // The checksum: the 32-bit little-endian words with sb_csum zeroed, summed in
    // 64 bits and folded (mdadm's calc_sb_1_csum).
    let mut sum: u64 = 0;
    let mut words = sb.chunks_exact(4);
    for (i, w) in words.by_ref().enumerate() {
        if i != 216 / 4 {
            sum += u64::from(le32(w, 0));
        }
    }
    if let [a, b] = words.remainder() {
        sum += u64::from(u16::from_le_bytes([*a, *b]));
    }
    let folded = ((sum & 0xffff_ffff) + (sum >> 32)) as u32;
    if folded != le32(&sb, 216) {
        return Ok(None);
    }
    let level = le32(&sb, 72) as i32;
    let data_offset = le64(&sb, 128).saturating_mul(SECTOR);
    let data_size = le64(&sb, 136).saturating_mul(SECTOR);
    let data = data_offset
        .checked_add(data_size)
        .filter(|&end| level == 1 && end <= source.len() && data_size > 0)
        .map(|end| data_offset..end);
    Ok(Some(RaidMember {
        format: RaidFormat::LinuxMd,
        version: Some(version.to_string()),
        level: Some(level),
        data,
    }))
}

fn member(format: RaidFormat) -> Option<RaidMember> {
    Some(RaidMember {
        format,
        version: None,
        level: None,
        data: None,
    })
}

/// CRC-32 as util-linux's `ul_crc32` computes it: the reflected polynomial, seed 0
/// and no final inversion (crc32fast inverts before and after, hence the `!`s).
fn ul_crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(0xffff_ffff);
    h.update(data);
    !h.finalize()
}

/// Looks for firmware RAID metadata at the end (or, for HighPoint 37x, near the
/// start) of a whole disk, in blkid's order.
pub fn firmware_member(disk: &dyn BlockSource) -> blockio::Result<Option<RaidMember>> {
    let sectors = disk.len() / SECTOR;
    if disk.len() < 0x10000 {
        return Ok(None);
    }
    let from_end = |n: u64| (sectors - n) * SECTOR;
    // SNIA DDF: the anchor header in the last sector, or 257 sectors from the end.
    if disk.len() >= 0x30000 {
        for back in [1, 257] {
            let Some(mut h) = read(disk, from_end(back), 512)? else {
                continue;
            };
            if be32(&h, 0) != 0xde11_de11 {
                continue;
            }
            let crc = be32(&h, 4);
            h[4..8].fill(0xff);
            if ul_crc32(&h) != crc {
                continue;
            }
            let primary = u64::from_be_bytes(h[96..104].try_into().unwrap_or_default());
            if primary > 0 {
                match read(disk, primary.saturating_mul(SECTOR), 4)? {
                    Some(sig) if sig == h[..4] => {}
                    _ => return Ok(None),
                }
            }
            return Ok(member(RaidFormat::Ddf));
        }
    }
    if let Some(b) = read(disk, from_end(2), 32)? {
        if b.starts_with(b"Intel Raid ISM Cfg Sig. ") {
            let version = String::from_utf8_lossy(&b[24..30]);
            return Ok(Some(RaidMember {
                format: RaidFormat::IntelIsw,
                version: Some(version.trim_end_matches('\0').to_string()),
                level: None,
                data: None,
            }));
        }
    }
    let last = read(disk, from_end(1), 512)?.unwrap_or_default();
    if last.starts_with(b"$XIDE$") {
        return Ok(member(RaidFormat::LsiMega));
    }
    if let Some(b) = read(disk, from_end(2), 120)? {
        let count = le32(&b, 8) as usize;
        if b.starts_with(b"NVIDIA  ") && count == 30 {
            let sum = b
                .chunks_exact(4)
                .fold(0u32, |s, w| s.wrapping_add(le32(w, 0)));
            if sum == 0 {
                return Ok(member(RaidFormat::Nvidia));
            }
        }
    }
    for back in [
        63u64, 255, 256, 16, 399, 591, 675, 735, 911, 974, 991, 951, 3087,
    ] {
        if sectors < back || disk.len() < 0x40000 {
            break;
        }
        if let Some(b) = read(disk, from_end(back), 24)? {
            if b == b"Promise Technology, Inc." {
                return Ok(member(RaidFormat::Promise));
            }
        }
    }
    if last.len() == 512 {
        if le32(&last, 0x60) == 0x2f00_0000 && last[0x116] < 8 {
            let sum = (0..0x13e)
                .step_by(2)
                .fold(0u16, |s, i| s.wrapping_add(le16(&last, i)));
            if sum.wrapping_neg() == le16(&last, 0x13e) {
                return Ok(member(RaidFormat::SiliconImage));
            }
        }
        if last.starts_with(b"JM") && last[0x2e] <= 5 {
            let sum = (0..0x7e)
                .step_by(2)
                .fold(0u16, |s, i| s.wrapping_add(le16(&last, i)));
            if sum <= 1 {
                return Ok(member(RaidFormat::Jmicron));
            }
        }
    }
    if let Some(b) = read(disk, from_end(11), 4)? {
        if matches!(le32(&b, 0), 0x5a78_16f3 | 0x5a78_16fd) {
            return Ok(member(RaidFormat::HighPoint45x));
        }
    }
    if let Some(b) = read(disk, 4 * 1024 + 544, 4)? {
        if b == [0xf0, 0x16, 0x78, 0x5a] || b == [0xfd, 0x16, 0x78, 0x5a] {
            return Ok(member(RaidFormat::HighPoint37x));
        }
    }
    if last.len() == 512 {
        if last[..4] == [0x37, 0xfc, 0x4d, 0x1e] && &last[256..260] == b"DPTM" {
            return Ok(member(RaidFormat::Adaptec));
        }
        if le16(&last, 0) == 0xaa55 && last[2] <= 2 {
            let sum = last[..50].iter().fold(0u8, |s, &b| s.wrapping_add(b));
            if sum == last[50] {
                return Ok(member(RaidFormat::Via));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockio::MemorySource;

    #[test]
    fn ul_crc32_matches_util_linux_on_a_known_value() {
        // Python: ~zlib.crc32(b"123456789", 0xffffffff) & 0xffffffff, which is the raw
        // register from seed 0 with no final inversion.
        assert_eq!(ul_crc32(b"123456789"), 0x2dfd_2d88);
    }

    #[test]
    fn a_zeroed_disk_is_no_member_of_anything() {
        let disk = MemorySource::new(vec![0u8; 1 << 20]);
        assert_eq!(md_member(&disk).unwrap(), None);
        assert_eq!(firmware_member(&disk).unwrap(), None);
    }

    #[test]
    fn an_md_1_2_superblock_needs_its_checksum() {
        let mut disk = vec![0u8; 2 << 20];
        let sb = &mut disk[0x1000..0x1000 + 256];
        sb[0..4].copy_from_slice(&MD_MAGIC.to_le_bytes());
        sb[4..8].copy_from_slice(&1u32.to_le_bytes());
        sb[72..76].copy_from_slice(&1u32.to_le_bytes());
        sb[128..136].copy_from_slice(&2048u64.to_le_bytes());
        sb[136..144].copy_from_slice(&1024u64.to_le_bytes());
        sb[144..152].copy_from_slice(&8u64.to_le_bytes());
        let mut sum: u64 = sb.chunks_exact(4).map(|w| u64::from(le32(w, 0))).sum();
        sum = (sum & 0xffff_ffff) + (sum >> 32);
        let good = sum as u32;
        sb[216..220].copy_from_slice(&good.wrapping_add(1).to_le_bytes());
        assert_eq!(md_member(&MemorySource::new(disk.clone())).unwrap(), None);
        disk[0x1000 + 216..0x1000 + 220].copy_from_slice(&good.to_le_bytes());
        let m = md_member(&MemorySource::new(disk)).unwrap().unwrap();
        assert_eq!(m.version.as_deref(), Some("1.2"));
        assert_eq!(m.data, Some(2048 * 512..3072 * 512));
    }
}
