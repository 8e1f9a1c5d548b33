//! qcow2, versions 2 and 3, read-only (the layout of qemu's `docs/interop/qcow2.txt`).
//!
//! The header gives the cluster size and the L1 table; each L1 entry points to an L2
//! table of cluster descriptors. Read here: standard clusters, zero clusters (v3),
//! compressed clusters (zlib, which qemu writes as raw deflate, and zstd), extended
//! L2 entries (32 subclusters per cluster, each allocated, zero or unallocated) and
//! backing files. Refcounts are not needed to read and are not read. Internal
//! snapshots are left alone with a note: the active L1 table is the disk. Encryption
//! and external data files are refused as unsupported.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use blockio::BlockSource;

use crate::backing::{parts, Chain};
use crate::field::{be32, be64};
use crate::sparse::{Layout, Mapped, Ranges, Unit};
use crate::{Container, Opened, Result, Site, MAX_TABLE_BYTES, MAX_VIRTUAL_SIZE};

const FORMAT: &str = "qcow2";

/// The v2 header's length; v3 headers say their own (at least [`V3_HEADER`]).
const V2_HEADER: usize = 72;
/// The v3 header up to and including the compression type byte.
const V3_HEADER: usize = 105;
/// Clusters are 512 bytes to 2 MiB (qemu's limits).
const CLUSTER_BITS: Range<u32> = 9..22;
/// qemu refuses L1 tables over 32 MiB; so does this reader.
const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's limit on a backing file name's length.
const MAX_BACKING_NAME: u32 = 1023;

/// L1 and standard L2 entries keep the offset in bits 9 to 55.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// An L2 entry whose cluster is compressed.
const COMPRESSED: u64 = 1 << 62;
/// An L2 entry (v3, standard) whose cluster reads as zeros.
const ZERO: u64 = 1;
/// Extended L2 entries split a cluster into this many subclusters.
const SUBCLUSTERS: u64 = 32;

/// Incompatible feature bits (v3).
const DIRTY: u64 = 1 << 0;
const MARKED_CORRUPT: u64 = 1 << 1;
const EXTERNAL_DATA: u64 = 1 << 2;
const COMPRESSION_TYPE: u64 = 1 << 3;
const EXTENDED_L2: u64 = 1 << 4;
const KNOWN_INCOMPATIBLE: u64 =
    DIRTY | MARKED_CORRUPT | EXTERNAL_DATA | COMPRESSION_TYPE | EXTENDED_L2;

/// How compressed clusters are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    /// Raw deflate (no zlib header), qemu's default.
    Deflate,
    /// A zstd frame.
    Zstd,
}

struct Layout2 {
    cluster: u64,
    cluster_bits: u32,
    /// Entries per L2 table (a 16-byte extended entry counts once).
    l2_entries: u64,
    extended: bool,
    zero_flag: bool,
    compression: Compression,
    /// The L2 tables by L1 index, as raw entries (two per cluster when extended).
    /// No two L1 entries share a table, so the tables never take more memory (and
    /// the data map never more time) than the file has bytes.
    l2: Vec<Option<Box<[u64]>>>,
    file_len: u64,
}

impl Layout2 {
    /// The L2 entry and, when extended, the subcluster bitmap of cluster `c`.
    fn entry(&self, c: u64) -> Option<(u64, u64)> {
        let table = self.l2.get((c / self.l2_entries) as usize)?.as_ref()?;
        let i = (c % self.l2_entries) as usize;
        Some(if self.extended {
            (table[2 * i], table[2 * i + 1])
        } else {
            (table[i], 0)
        })
    }

    /// Where the compressed bytes of an entry lie: (offset, length), clipped to the file.
    fn compressed_extent(&self, entry: u64) -> (u64, u64) {
        let shift = 62 - (self.cluster_bits - 8);
        let offset = entry & ((1 << shift) - 1);
        let sectors = ((entry & !COMPRESSED) >> shift & ((1 << (self.cluster_bits - 8)) - 1)) + 1;
        let len = (sectors * 512).saturating_sub(offset & 511);
        (offset, len.min(self.file_len.saturating_sub(offset)))
    }
}

impl Layout for Layout2 {
    fn unit_size(&self) -> u64 {
        if self.extended {
            self.cluster / SUBCLUSTERS
        } else {
            self.cluster
        }
    }

    fn unit(&self, index: u64) -> Unit {
        let (c, sub) = if self.extended {
            (index / SUBCLUSTERS, index % SUBCLUSTERS)
        } else {
            (index, 0)
        };
        let Some((entry, bitmap)) = self.entry(c) else {
            return Unit::Backing;
        };
        if entry & COMPRESSED != 0 {
            return Unit::Packed {
                key: c,
                skip: sub * self.unit_size(),
            };
        }
        let host = entry & OFFSET_MASK;
        if self.extended {
            if bitmap >> (32 + sub) & 1 != 0 {
                Unit::Zero
            } else if bitmap >> sub & 1 != 0 {
                Unit::Host(host + sub * self.unit_size())
            } else {
                Unit::Backing
            }
        } else if self.zero_flag && entry & ZERO != 0 {
            Unit::Zero
        } else if host == 0 {
            Unit::Backing
        } else {
            Unit::Host(host)
        }
    }

    fn unpack(&self, file: &dyn BlockSource, key: u64) -> blockio::Result<Vec<u8>> {
        let (entry, _) = self.entry(key).unwrap_or((0, 0));
        let (offset, len) = self.compressed_extent(entry);
        let mut packed = vec![0u8; len as usize];
        file.read_exact_at(&mut packed, offset)?;
        let bad = |reason: String| blockio::Error::Corrupt {
            name: file.name(),
            structure: "qcow2 compressed cluster",
            offset,
            reason,
        };
        let mut out = vec![0u8; self.cluster as usize];
        match self.compression {
            Compression::Deflate => {
                let mut z = flate2::Decompress::new(false);
                z.decompress(&packed, &mut out, flate2::FlushDecompress::Finish)
                    .map_err(|e| bad(format!("deflate: {e}")))?;
                if z.total_out() != self.cluster {
                    return Err(bad(format!(
                        "it inflates to {} bytes, not a cluster of {}",
                        z.total_out(),
                        self.cluster
                    )));
                }
            }
            Compression::Zstd => {
                let n = crate::unzstd(&packed, &mut out).map_err(bad)?;
                if n as u64 != self.cluster {
                    return Err(bad(format!(
                        "it decompresses to {n} bytes, not a cluster of {}",
                        self.cluster
                    )));
                }
            }
        }
        Ok(out)
    }

    fn stored(&self) -> Vec<Range<u64>> {
        let mut out = Ranges::default();
        for (t, table) in self.l2.iter().enumerate() {
            let Some(_) = table else { continue };
            for i in 0..self.l2_entries {
                let c = t as u64 * self.l2_entries + i;
                let units = if self.extended { SUBCLUSTERS } else { 1 };
                for s in 0..units {
                    let unit = c * units + s;
                    if matches!(self.unit(unit), Unit::Host(_) | Unit::Packed { .. }) {
                        out.push(unit * self.unit_size(), self.unit_size());
                    }
                }
            }
        }
        out.0
    }
}

/// Opens the qcow2 image in `file`.
pub(crate) fn open(file: Container, chain: &mut Chain) -> Result<Opened> {
    let site = Site::new(&file, FORMAT);
    let file_len = file.len();
    let mut h = vec![0u8; (V3_HEADER as u64).min(file_len) as usize];
    file.read_exact_at(&mut h, 0)?;
    if h.len() < V2_HEADER {
        return Err(site.corrupt("header", 0, format!("the file has only {file_len} bytes")));
    }
    let version = be32(&h, 4);
    if !(2..=3).contains(&version) {
        return Err(site.unsupported(format!("version {version}")));
    }
    let backing_offset = be64(&h, 8);
    let backing_len = be32(&h, 16);
    let cluster_bits = be32(&h, 20);
    let size = be64(&h, 24);
    let crypt = be32(&h, 32);
    let l1_size = be32(&h, 36) as u64;
    let l1_offset = be64(&h, 40);
    let snapshots = be32(&h, 60);
    if !CLUSTER_BITS.contains(&cluster_bits) {
        return Err(site.corrupt(
            "header",
            20,
            format!("cluster_bits {cluster_bits} is outside {CLUSTER_BITS:?}"),
        ));
    }
    let cluster = 1u64 << cluster_bits;
    if size > MAX_VIRTUAL_SIZE {
        return Err(site.corrupt(
            "header",
            24,
            format!("a virtual size of {size} bytes is over the {MAX_VIRTUAL_SIZE}-byte limit"),
        ));
    }
    if crypt != 0 {
        let method = match crypt {
            1 => "AES",
            2 => "LUKS",
            _ => "unknown",
        };
        return Err(site.unsupported(format!("encryption ({method}, method {crypt})")));
    }
    let mut notes = Vec::new();
    let (mut incompatible, mut compression) = (0, Compression::Deflate);
    if version == 3 {
        if h.len() < V3_HEADER - 1 {
            return Err(site.corrupt("header", 0, "the v3 header is cut short".into()));
        }
        incompatible = be64(&h, 72);
        let header_len = be32(&h, 100);
        if incompatible & !KNOWN_INCOMPATIBLE != 0 {
            return Err(site.unsupported(format!(
                "incompatible feature bits {:#x}",
                incompatible & !KNOWN_INCOMPATIBLE
            )));
        }
        if incompatible & MARKED_CORRUPT != 0 {
            return Err(site.corrupt(
                "header",
                72,
                "the image is marked corrupt (repair it with qemu-img check -r all)".into(),
            ));
        }
        if incompatible & EXTERNAL_DATA != 0 {
            return Err(site.unsupported("an external data file".into()));
        }
        if incompatible & DIRTY != 0 {
            notes.push(
                "the dirty bit is set: refcounts may be stale, and are not needed to read".into(),
            );
        }
        if header_len as usize >= V3_HEADER && h.len() >= V3_HEADER {
            compression = match h[104] {
                0 => Compression::Deflate,
                1 => Compression::Zstd,
                t => return Err(site.unsupported(format!("compression type {t}"))),
            };
        }
        if compression != Compression::Deflate && incompatible & COMPRESSION_TYPE == 0 {
            return Err(site.corrupt(
                "header",
                104,
                "a compression type is set without its incompatible feature bit".into(),
            ));
        }
    }
    let extended = incompatible & EXTENDED_L2 != 0;
    if extended && cluster_bits < 14 {
        return Err(site.corrupt(
            "header",
            20,
            "extended L2 entries need clusters of at least 16 KiB".into(),
        ));
    }
    if snapshots > 0 {
        notes.push(format!(
            "{snapshots} internal snapshot(s) not read: the active disk is"
        ));
    }

    // The L1 table: one entry per L2 table the virtual size needs.
    let entry_bytes = if extended { 16 } else { 8 };
    let l2_entries = cluster / entry_bytes;
    let needed = size.div_ceil(l2_entries * cluster);
    if l1_size < needed {
        return Err(site.corrupt(
            "L1 table",
            l1_offset,
            format!("it has {l1_size} entries, the virtual size needs {needed}"),
        ));
    }
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(site.corrupt(
            "L1 table",
            l1_offset,
            format!("{l1_size} entries is over qemu's limit of {MAX_L1_BYTES} bytes"),
        ));
    }
    if !l1_offset.is_multiple_of(cluster) || l1_offset.saturating_add(needed * 8) > file_len {
        return Err(site.corrupt(
            "L1 table",
            l1_offset,
            format!(
                "{needed} entries do not fit in the file ({file_len} bytes) at a cluster boundary"
            ),
        ));
    }
    let mut l1 = vec![0u8; (needed * 8) as usize];
    file.read_exact_at(&mut l1, l1_offset)?;

    // The L2 tables, each checked entry by entry.
    let mut l2 = Vec::with_capacity(needed as usize);
    let mut by_offset: HashMap<u64, usize> = HashMap::new();
    let mut loaded = 0u64;
    for i in 0..needed as usize {
        let at = be64(&l1, 8 * i) & OFFSET_MASK;
        if at == 0 {
            l2.push(None);
            continue;
        }
        let where_ = l1_offset + 8 * i as u64;
        if let Some(first) = by_offset.insert(at, i) {
            return Err(site.corrupt(
                "L1 table",
                where_,
                format!("entry {i} points to the L2 table at {at} that entry {first} uses too"),
            ));
        }
        if !at.is_multiple_of(cluster) || at.saturating_add(cluster) > file_len {
            return Err(site.corrupt(
                "L1 table",
                where_,
                format!("entry {i} points to an L2 table at {at}, not a cluster inside the file"),
            ));
        }
        loaded += cluster;
        if loaded > MAX_TABLE_BYTES {
            return Err(site.unsupported(format!("L2 tables over {MAX_TABLE_BYTES} bytes in all")));
        }
        let mut raw = vec![0u8; cluster as usize];
        file.read_exact_at(&mut raw, at)?;
        let table: Box<[u64]> = (0..raw.len() / 8).map(|k| be64(&raw, 8 * k)).collect();
        check_l2(&table, at, cluster, cluster_bits, extended, file_len, &site)?;
        l2.push(Some(table));
    }

    let backing = if backing_offset != 0 {
        if backing_len == 0 || backing_len > MAX_BACKING_NAME {
            return Err(site.corrupt(
                "header",
                16,
                format!(
                    "a backing file name of {backing_len} bytes (the limit is {MAX_BACKING_NAME})"
                ),
            ));
        }
        if backing_offset.saturating_add(backing_len as u64) > file_len {
            return Err(site.corrupt(
                "backing file name",
                backing_offset,
                "it lies past the end of the file".into(),
            ));
        }
        let mut name = vec![0u8; backing_len as usize];
        file.read_exact_at(&mut name, backing_offset)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        Some(parts(chain.backing(&*file, &name)?))
    } else {
        None
    };

    let layout = Layout2 {
        cluster,
        cluster_bits,
        l2_entries,
        extended,
        zero_flag: version == 3,
        compression,
        l2,
        file_len,
    };
    let subformat = format!(
        "v{version}{}{}",
        if extended { ", extended L2" } else { "" },
        if compression == Compression::Zstd {
            ", zstd"
        } else {
            ""
        }
    );
    finish(&site, file, size, layout, backing, subformat, notes)
}

/// Checks every entry of an L2 table at `at`: stored clusters lie inside the file.
fn check_l2(
    table: &[u64],
    at: u64,
    cluster: u64,
    cluster_bits: u32,
    extended: bool,
    file_len: u64,
    site: &Site,
) -> Result<()> {
    let step = if extended { 2 } else { 1 };
    for (k, pair) in table.chunks_exact(step).enumerate() {
        let entry = pair[0];
        let where_ = at + (k * step * 8) as u64;
        if entry & COMPRESSED != 0 {
            let shift = 62 - (cluster_bits - 8);
            let offset = entry & ((1 << shift) - 1);
            if offset >= file_len {
                return Err(site.corrupt(
                    "L2 table",
                    where_,
                    format!(
                        "entry {k} puts a compressed cluster at {offset}, past the end of the file"
                    ),
                ));
            }
            continue;
        }
        let host = entry & OFFSET_MASK;
        let bitmap = if extended { pair[1] } else { 0 };
        if extended && bitmap & (bitmap >> 32) & 0xffff_ffff != 0 {
            return Err(site.corrupt(
                "L2 table",
                where_,
                format!("entry {k} marks subclusters both allocated and zero ({bitmap:#018x})"),
            ));
        }
        let uses_host = if extended {
            bitmap & 0xffff_ffff != 0
        } else {
            host != 0
        };
        if !uses_host {
            continue;
        }
        if host == 0 || !host.is_multiple_of(cluster) || host.saturating_add(cluster) > file_len {
            return Err(site.corrupt(
                "L2 table",
                where_,
                format!("entry {k} puts a cluster at {host}, not a cluster inside the file ({file_len} bytes)"),
            ));
        }
    }
    Ok(())
}

/// The opened image, with its data map totalled.
fn finish(
    site: &Site,
    file: Container,
    size: u64,
    layout: Layout2,
    backing: Option<(Arc<dyn BlockSource>, Vec<String>)>,
    subformat: String,
    notes: Vec<String>,
) -> Result<Opened> {
    let file_size = file.len();
    let (under, chain) = match backing {
        Some((source, chain)) => (Some(source), chain),
        None => (None, Vec::new()),
    };
    let source = Mapped::new(file, size, layout, under)?;
    site.opened(Arc::new(source), subformat, file_size, chain, notes)
}
