//! What the sparse readers share: a virtual disk cut into equal units (clusters,
//! grains, blocks), each of which a [`Layout`] maps to zeros, the backing file, a
//! place in the container file, or a compressed unit to unpack. [`Mapped`] turns such
//! a layout into a [`BlockSource`].

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use blockio::BlockSource;

use crate::Container;

/// Where one unit of the virtual disk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// It reads as zeros.
    Zero,
    /// The container does not store it: it comes from the backing file, or reads as
    /// zeros when there is none.
    Backing,
    /// It is stored uncompressed at this offset of the container file.
    Host(u64),
    /// It is part of the compressed unit `key`, `skip` bytes into its unpacked bytes.
    Packed {
        /// Which compressed unit (the layout's own numbering).
        key: u64,
        /// Where this unit starts in the unpacked bytes.
        skip: u64,
    },
}

/// A container's map from virtual units to where their bytes are. Tables are loaded
/// and checked when the container is opened, so looking a unit up cannot fail.
pub(crate) trait Layout: Send + Sync + 'static {
    /// The size of one unit in bytes.
    fn unit_size(&self) -> u64;
    /// Where unit `index` comes from.
    fn unit(&self, index: u64) -> Unit;
    /// The bytes of compressed unit `key`. Only layouts that answer
    /// [`Unit::Packed`] have any; for the others this is never called.
    fn unpack(&self, file: &dyn BlockSource, key: u64) -> blockio::Result<Vec<u8>> {
        Err(blockio::Error::Corrupt {
            name: file.name(),
            structure: "compressed unit",
            offset: key,
            reason: "this container format has no compressed units".into(),
        })
    }
    /// The ranges of the virtual disk the container stores, in order, merged.
    fn stored(&self) -> Vec<Range<u64>>;
}

/// How many unpacked compressed units are kept, so that reads smaller than a unit
/// (a filesystem reading 4 KiB at a time from 64 KiB clusters) unpack each once.
const UNPACKED_CACHE: usize = 32;

/// A virtual disk read through a [`Layout`].
pub(crate) struct Mapped<L> {
    file: Container,
    len: u64,
    layout: L,
    backing: Option<Arc<dyn BlockSource>>,
    data: Vec<Range<u64>>,
    unpacked: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl<L: Layout> Mapped<L> {
    /// The disk of `len` bytes that `layout` maps onto `file`, with `backing` under
    /// what the container does not store.
    pub fn new(
        file: Container,
        len: u64,
        layout: L,
        backing: Option<Arc<dyn BlockSource>>,
    ) -> blockio::Result<Self> {
        let clip = |r: Range<u64>| r.start..r.end.min(len);
        let mut data: Vec<_> = layout
            .stored()
            .into_iter()
            .filter(|r| r.start < len)
            .map(clip)
            .collect();
        if let Some(b) = &backing {
            let under: Vec<_> = b
                .data_ranges()?
                .into_iter()
                .filter(|r| r.start < len)
                .map(|r| r.start..r.end.min(len))
                .collect();
            data = merge(data.into_iter().chain(under).collect());
        }
        Ok(Self {
            file,
            len,
            layout,
            backing,
            data,
            unpacked: Mutex::new(VecDeque::with_capacity(UNPACKED_CACHE)),
        })
    }

    fn unpacked(&self, key: u64) -> blockio::Result<Arc<Vec<u8>>> {
        let cache = |c: &mut VecDeque<(u64, Arc<Vec<u8>>)>| {
            c.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        };
        if let Some(hit) = cache(&mut self.lock()) {
            return Ok(hit);
        }
        let bytes = Arc::new(self.layout.unpack(&self.file, key)?);
        let mut c = self.lock();
        if c.len() == UNPACKED_CACHE {
            c.pop_front();
        }
        c.push_back((key, bytes.clone()));
        Ok(bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<Vec<u8>>)>> {
        // The cache holds no invariant a panicking reader could break.
        self.unpacked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> blockio::Result<()> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        // A backing file smaller than the disk reads as zeros past its end.
        let inside = b.len().saturating_sub(offset).min(buf.len() as u64) as usize;
        b.read_exact_at(&mut buf[..inside], offset)?;
        buf[inside..].fill(0);
        Ok(())
    }
}

impl<L: Layout> BlockSource for Mapped<L> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> blockio::Result<()> {
        blockio::check_bounds(|| self.name(), offset, buf.len(), self.len)?;
        let unit = self.layout.unit_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / unit;
            let within = pos % unit;
            let left = buf.len() - done;
            let mut n = ((unit - within) as usize).min(left);
            match self.layout.unit(index) {
                Unit::Zero => buf[done..done + n].fill(0),
                Unit::Backing => self.read_backing(&mut buf[done..done + n], pos)?,
                Unit::Host(host) => {
                    // Units stored one after another are read with one pread.
                    let mut next = index + 1;
                    while n < left
                        && self.layout.unit(next) == Unit::Host(host + (next - index) * unit)
                    {
                        n = (n + unit as usize).min(left);
                        next += 1;
                    }
                    self.file
                        .read_exact_at(&mut buf[done..done + n], host + within)?;
                }
                Unit::Packed { key, skip } => {
                    let bytes = self.unpacked(key)?;
                    let from = (skip + within) as usize;
                    let Some(part) = bytes.get(from..from + n) else {
                        return Err(blockio::Error::Corrupt {
                            name: self.name(),
                            structure: "compressed unit",
                            offset: pos,
                            reason: format!(
                                "it unpacks to {} bytes, too few for the {n} bytes at {from}",
                                bytes.len()
                            ),
                        });
                    };
                    buf[done..done + n].copy_from_slice(part);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn data_ranges(&self) -> blockio::Result<Vec<Range<u64>>> {
        Ok(self.data.clone())
    }

    fn name(&self) -> String {
        self.file.name()
    }
}

/// Sorts and merges overlapping or touching ranges.
pub(crate) fn merge(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Collects ranges appended in increasing order, joining those that touch.
#[derive(Default)]
pub(crate) struct Ranges(pub Vec<Range<u64>>);

impl Ranges {
    /// Adds `[start, start + len)`, which must not start before the last range.
    pub fn push(&mut self, start: u64, len: u64) {
        match self.0.last_mut() {
            Some(last) if last.end == start => last.end += len,
            _ => self.0.push(start..start + len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_joins_touching_and_overlapping_ranges() {
        assert_eq!(
            merge(vec![5..9, 0..2, 2..3, 8..12, 20..20]),
            vec![0..3, 5..12]
        );
    }
}
