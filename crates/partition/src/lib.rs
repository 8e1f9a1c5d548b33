//! Partition tables of disk images: GPT, MBR (with extended and logical partitions),
//! or none at all.
//!
//! [`read_table`] looks at a [`BlockSource`] and returns a [`PartitionTable`]: the kind,
//! the logical sector size, the partitions with their byte ranges, and notes on anything
//! unusual it met on the way (a damaged primary GPT header, a hybrid MBR, a partition that
//! runs past the end of the image). Every on-disk count is bounded by a named limit, and
//! every structure is validated before it is trusted, so hostile images end in an
//! [`Error`], never a panic or an unbounded allocation.
//!
//! The `gpt` crate is not used for parsing: it panics when a header's entry size is not
//! 128 and gives up on a corrupt entry array instead of using the valid backup. It serves
//! in the tests as an independent writer of GPTs.
//!
//! ```
//! use blockio::MemorySource;
//! let disk = MemorySource::new(vec![0u8; 1 << 20]);
//! let table = partition::read_table(&disk).unwrap();
//! assert_eq!(table.kind, partition::TableKind::None);
//! ```

mod gpt;
mod mbr;

use blockio::BlockSource;
use serde::Serialize;

pub use gpt::{format_guid, BIOS_BOOT_TYPE, ESP_TYPE};

/// What went wrong while reading a partition table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be read where a table structure lives.
    #[error("reading the {what}: {source}")]
    Read {
        /// The structure being read.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: blockio::Error,
    },
    /// A table exists but is damaged beyond use.
    #[error("corrupt {table} at byte offset {offset}: {reason}")]
    Corrupt {
        /// "GPT" or "MBR".
        table: &'static str,
        /// Where the damaged structure lives.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Which kind of partition table an image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// GUID Partition Table.
    Gpt,
    /// DOS/MBR partition table.
    Mbr,
    /// No table: the image is a bare filesystem (or unrecognised).
    None,
}

/// The partition type: a GUID for GPT, a byte for MBR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionType {
    /// GPT type GUID, formatted upper-case ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").
    Gpt(String),
    /// MBR system id.
    Mbr(u8),
    /// Not a partition: an LVM logical volume, listed with the partitions.
    LogicalVolume,
}

impl std::fmt::Display for PartitionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionType::Gpt(g) => f.write_str(g),
            PartitionType::Mbr(b) => write!(f, "0x{b:02x}"),
            PartitionType::LogicalVolume => f.write_str("lvm-logical-volume"),
        }
    }
}

impl Serialize for PartitionType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One partition, with its place in the image in bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    /// The number Linux would give it (sda<N>): GPT entry index + 1; MBR 1-4 for
    /// primaries, 5 and up for logical partitions.
    pub number: u32,
    /// Byte offset of the first byte.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Partition type.
    #[serde(rename = "type")]
    pub kind: PartitionType,
    /// GPT partition name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// GPT unique partition GUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    /// MBR boot flag (0x80) or GPT legacy-BIOS-bootable attribute.
    pub bootable: bool,
    /// An MBR extended container (its content is the logical partitions).
    pub extended: bool,
    /// An MBR logical partition inside an extended one.
    pub logical: bool,
}

impl Partition {
    /// Byte offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    /// Is this the EFI system partition (GPT type or MBR 0xEF)?
    pub fn is_esp(&self) -> bool {
        match &self.kind {
            PartitionType::Gpt(g) => g == ESP_TYPE,
            PartitionType::Mbr(b) => *b == 0xef,
            PartitionType::LogicalVolume => false,
        }
    }

    /// Is this a GPT BIOS boot partition (where GRUB keeps its core image)?
    pub fn is_bios_boot(&self) -> bool {
        matches!(&self.kind, PartitionType::Gpt(g) if g == BIOS_BOOT_TYPE)
    }
}

/// Facts about the MBR in sector 0.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MbrInfo {
    /// The 0x55AA signature is present.
    pub signature: bool,
    /// The first 440 bytes hold boot code (not all zero).
    pub boot_code: bool,
    /// It holds a 0xEE protective entry.
    pub protective: bool,
    /// It holds a 0xEE entry and other partitions: a hybrid MBR.
    pub hybrid: bool,
}

/// Everything found about an image's partitioning.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionTable {
    /// GPT, MBR or none.
    pub kind: TableKind,
    /// The logical sector size in bytes (512 or 4096).
    pub sector_size: u32,
    /// The partitions, by number.
    pub partitions: Vec<Partition>,
    /// The MBR in sector 0, if any.
    pub mbr: MbrInfo,
    /// GPT disk GUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<String>,
    /// Which GPT header was used: "primary" or "backup".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpt_header: Option<&'static str>,
    /// Anything unusual met while reading, in words.
    pub notes: Vec<String>,
}

/// Logical sector sizes that are tried, in this order.
pub const SECTOR_SIZES: [u32; 2] = [512, 4096];

/// Reads the partition table of `disk`.
///
/// GPT wins when a valid GPT header exists (primary or backup); then an MBR with a
/// valid signature and sane entries; otherwise the image has no table.
pub fn read_table(disk: &dyn BlockSource) -> Result<PartitionTable> {
    let mbr_sector = mbr::read_sector0(disk)?;
    let mbr_info = mbr_sector.as_ref().map(mbr::info).unwrap_or_default();

    if let Some(mut table) = gpt::read(disk)? {
        table.mbr = mbr_info.clone();
        if mbr_info.hybrid {
            table.notes.push(
                "hybrid MBR: sector 0 lists partitions beside the GPT protective entry".into(),
            );
        } else if !mbr_info.protective {
            table
                .notes
                .push("no protective MBR entry (0xEE) in sector 0".into());
        }
        return Ok(table);
    }
    if let Some(sector) = &mbr_sector {
        if mbr_info.protective {
            return Err(Error::Corrupt {
                table: "GPT",
                offset: 512,
                reason: "protective MBR present but neither the primary nor the backup GPT header is valid".into(),
            });
        }
        if let Some(mut table) = mbr::read(disk, sector)? {
            table.mbr = mbr_info;
            return Ok(table);
        }
    }
    Ok(PartitionTable {
        kind: TableKind::None,
        sector_size: 512,
        partitions: Vec::new(),
        mbr: mbr_info,
        disk_guid: None,
        gpt_header: None,
        notes: Vec::new(),
    })
}

pub(crate) fn read_at(
    disk: &dyn BlockSource,
    what: &'static str,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    disk.read_exact_at(&mut buf, offset)
        .map_err(|source| Error::Read { what, source })?;
    Ok(buf)
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
