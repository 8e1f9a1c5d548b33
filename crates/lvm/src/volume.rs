//! A logical volume read through its segments.

use std::sync::Arc;

use blockio::BlockSource;

use crate::{LogicalVolume, SegmentKind, VolumeGroup};

/// One segment, placed: where it starts in the LV, and its stripes' places.
struct Piece {
    start: u64,
    len: u64,
    stripe_size: u64,
    /// (the PV, the byte offset of this stripe's first extent on it).
    stripes: Vec<(Arc<dyn BlockSource>, u64)>,
}

/// A logical volume as a byte source.
pub struct LvSource {
    name: String,
    len: u64,
    pieces: Vec<Piece>,
}

pub(crate) fn assemble(
    vg: &VolumeGroup,
    lv: &LogicalVolume,
    found: &dyn Fn(&str) -> Option<Arc<dyn BlockSource>>,
) -> Result<LvSource, String> {
    let mut pieces = Vec::new();
    let mut next_extent = 0u64;
    for (i, seg) in lv.segments.iter().enumerate() {
        let (stripe_size, stripes) = match &seg.kind {
            SegmentKind::Striped {
                stripe_size,
                stripes,
            } => (stripe_size, stripes),
            SegmentKind::Other(t) => {
                return Err(format!(
                    "segment {} is of type {t:?}, which amiforge does not read",
                    i + 1
                ))
            }
        };
        if seg.start_extent != next_extent {
            return Err(format!(
                "segment {} starts at extent {}, not {next_extent}",
                i + 1,
                seg.start_extent
            ));
        }
        let n = stripes.len() as u64;
        if seg.extent_count == 0 || seg.extent_count % n != 0 {
            return Err(format!(
                "segment {}: {} extents do not split into {n} stripes",
                i + 1,
                seg.extent_count
            ));
        }
        let per_stripe = seg.extent_count / n;
        let mut placed = Vec::new();
        for (pv_name, first) in stripes {
            let pv = vg.pvs.iter().find(|p| &p.name == pv_name).ok_or(format!(
                "segment {} names {pv_name}, which the VG does not list",
                i + 1
            ))?;
            let device = found(&pv.uuid).ok_or(format!(
                "its PV {pv_name} ({}) is not in the image",
                pv.uuid
            ))?;
            if first
                .checked_add(per_stripe)
                .is_none_or(|end| end > pv.pe_count)
            {
                return Err(format!(
                    "segment {} runs past the {} extents of {pv_name}",
                    i + 1,
                    pv.pe_count
                ));
            }
            let offset = first
                .checked_mul(vg.extent_size)
                .and_then(|o| o.checked_add(pv.pe_start))
                .ok_or("an extent offset overflows")?;
            let bytes = per_stripe * vg.extent_size;
            if offset
                .checked_add(bytes)
                .is_none_or(|end| end > device.len())
            {
                return Err(format!(
                    "segment {} lies past the end of {pv_name} ({} bytes)",
                    i + 1,
                    device.len()
                ));
            }
            placed.push((device, offset));
        }
        let start = next_extent * vg.extent_size;
        pieces.push(Piece {
            start,
            len: seg.extent_count * vg.extent_size,
            stripe_size: *stripe_size,
            stripes: placed,
        });
        next_extent += seg.extent_count;
    }
    let len = next_extent
        .checked_mul(vg.extent_size)
        .ok_or("the LV's size overflows")?;
    Ok(LvSource {
        name: format!("{}/{}", vg.name, lv.name),
        len,
        pieces,
    })
}

impl BlockSource for LvSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> blockio::Result<()> {
        blockio::check_bounds(|| self.name(), offset, buf.len(), self.len)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = self.pieces.partition_point(|p| p.start + p.len <= pos);
            let p = &self.pieces[i];
            let within = pos - p.start;
            let left = (buf.len() - done) as u64;
            let (device, at, run) = if p.stripes.len() == 1 {
                let (d, o) = &p.stripes[0];
                (d, o + within, left.min(p.len - within))
            } else {
                let n = p.stripes.len() as u64;
                let chunk = within / p.stripe_size;
                let in_chunk = within % p.stripe_size;
                let (d, o) = &p.stripes[(chunk % n) as usize];
                let at = o + (chunk / n) * p.stripe_size + in_chunk;
                (
                    d,
                    at,
                    left.min(p.stripe_size - in_chunk).min(p.len - within),
                )
            };
            device.read_exact_at(&mut buf[done..done + run as usize], at)?;
            done += run as usize;
        }
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
