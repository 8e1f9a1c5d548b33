//! A bundle as a [`BlockSource`]: the uploader reads it like an image. Every block
//! is decompressed on the fly and checked against the manifest's SHA-256 before it
//! is handed out.

use crate::{Bundle, BLOCK_SIZE};
use blockio::BlockSource;
use std::ops::Range;

/// The image inside a bundle, block by block.
pub struct BundleSource {
    bundle: Bundle,
}

impl BundleSource {
    /// Wraps an opened bundle.
    pub fn new(bundle: Bundle) -> Self {
        Self { bundle }
    }

    /// The bundle.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    fn error(&self, e: crate::Error) -> blockio::Error {
        blockio::Error::Io {
            what: "read the bundle",
            path: self.bundle.location().into(),
            source: std::io::Error::other(e.to_string()),
        }
    }
}

impl BlockSource for BundleSource {
    fn len(&self) -> u64 {
        self.bundle.manifest.image_size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> blockio::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| blockio::Error::OutOfBounds {
                name: self.name(),
                offset,
                len: buf.len(),
                size: self.len(),
            })?;
        let blocks = &self.bundle.manifest.blocks;
        let mut pos = offset;
        while pos < end {
            let index = pos / BLOCK_SIZE;
            let in_block = (pos % BLOCK_SIZE) as usize;
            let n = ((BLOCK_SIZE - pos % BLOCK_SIZE).min(end - pos)) as usize;
            let dst = &mut buf[(pos - offset) as usize..(pos - offset) as usize + n];
            match blocks.binary_search_by_key(&index, |b| b.index) {
                Ok(i) => {
                    let data = self
                        .bundle
                        .read_entry(&blocks[i])
                        .map_err(|e| self.error(e))?;
                    dst.copy_from_slice(&data[in_block..in_block + n]);
                }
                Err(_) => dst.fill(0),
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn data_ranges(&self) -> blockio::Result<Vec<Range<u64>>> {
        let size = self.len();
        Ok(self
            .bundle
            .manifest
            .blocks
            .iter()
            .map(|b| b.index * BLOCK_SIZE..((b.index + 1) * BLOCK_SIZE).min(size))
            .collect())
    }

    fn name(&self) -> String {
        self.bundle.location()
    }
}
