//! Mapping an image onto EBS blocks.

use crate::{BLOCKS_PER_GIB, BLOCK_SIZE, GIB};
use blockio::BlockSource;

/// How an image maps onto a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The image size in bytes.
    pub image_size: u64,
    /// Blocks covering the image (the last one zero-padded).
    pub image_blocks: u64,
    /// The volume size: the image rounded up to whole GiB (at least 1).
    pub volume_size_gib: u64,
    /// Blocks in the volume.
    pub volume_blocks: u64,
    /// Blocks that touch a data range, ascending. The others are holes: zeros that
    /// need not be read.
    pub data_blocks: Vec<u64>,
}

/// Plans `source`: sizes, and which blocks may hold data (SEEK_DATA/SEEK_HOLE).
pub fn plan(source: &dyn BlockSource) -> blockio::Result<Plan> {
    let image_size = source.len();
    let image_blocks = image_size.div_ceil(BLOCK_SIZE);
    let volume_size_gib = image_size.div_ceil(GIB).max(1);
    let mut data_blocks: Vec<u64> = Vec::new();
    for r in source.data_ranges()? {
        if r.is_empty() {
            continue;
        }
        let first = r.start / BLOCK_SIZE;
        let last = (r.end - 1) / BLOCK_SIZE;
        // Ranges are ascending; adjacent ranges may share a block.
        let from = match data_blocks.last() {
            Some(&l) if l >= first => l + 1,
            _ => first,
        };
        data_blocks.extend(from..=last);
    }
    Ok(Plan {
        image_size,
        image_blocks,
        volume_size_gib,
        volume_blocks: volume_size_gib * BLOCKS_PER_GIB,
        data_blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockio::MemorySource;

    #[test]
    fn sizes_round_up_to_blocks_and_whole_gib() {
        let p = plan(&MemorySource::new(vec![1u8; BLOCK_SIZE as usize + 1])).unwrap();
        assert_eq!(p.image_blocks, 2);
        assert_eq!(p.volume_size_gib, 1);
        assert_eq!(p.volume_blocks, 2048);
        assert_eq!(p.data_blocks, vec![0, 1]);
        let empty = plan(&MemorySource::new(Vec::new())).unwrap();
        assert_eq!(
            (
                empty.image_blocks,
                empty.volume_size_gib,
                empty.data_blocks.len()
            ),
            (0, 1, 0)
        );
    }
}
