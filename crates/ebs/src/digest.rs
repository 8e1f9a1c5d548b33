//! The identity of a disk's content, whatever file it came in: the SHA-256 of the
//! SHA-256 digests of its 512 KiB blocks, in order, every block counted (a hole or a
//! zero block has the digest of 512 KiB of zeros; the last block is zero-padded, as
//! EBS pads it). The same disk as a raw file, a qcow2 or a VMDK has one identity.
//!
//! An upload knows every non-zero block's digest once it is done, so it gets the
//! identity for free ([`of_blocks`]); [`of_source`] reads a disk to get it without
//! uploading (a re-run checking an existing AMI).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use blockio::BlockSource;
use sha2::{Digest, Sha256};

use crate::{plan, BLOCK_SIZE};

/// The identity from the digests of the non-zero blocks of a disk of `blocks`
/// blocks; every other block is a zero block.
pub fn of_blocks(blocks: u64, non_zero: &BTreeMap<u64, [u8; 32]>) -> String {
    let zero = crate::upload::zero_digest();
    let mut h = Sha256::new();
    for index in 0..blocks {
        h.update(non_zero.get(&index).unwrap_or(&zero));
    }
    format!("{:x}", h.finalize())
}

/// Reads the disk's data blocks with `workers` threads and returns its identity.
pub fn of_source(source: &dyn BlockSource, workers: usize) -> blockio::Result<String> {
    let p = plan(source)?;
    let data: Vec<u64> = p.data_blocks.clone();
    let next = AtomicU64::new(0);
    let found = Mutex::new(BTreeMap::new());
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                let mut buf = vec![0u8; BLOCK_SIZE as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&index) = data.get(i) else { break };
                    if let Err(e) = crate::upload::read_block(source, index, &mut buf) {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        break;
                    }
                    if !crate::is_zero(&buf) {
                        let d: [u8; 32] = Sha256::digest(&buf).into();
                        found
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(index, d);
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(of_blocks(p.image_blocks, &found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockio::MemorySource;

    /// The definition, written out: hash each padded block, hash the digests.
    fn by_definition(bytes: &[u8]) -> String {
        let mut h = Sha256::new();
        for chunk in bytes.chunks(BLOCK_SIZE as usize) {
            let mut block = chunk.to_vec();
            block.resize(BLOCK_SIZE as usize, 0);
            h.update(Sha256::digest(&block));
        }
        format!("{:x}", h.finalize())
    }

    #[test]
    fn the_identity_counts_every_block_zero_blocks_included() {
        let mut bytes = vec![0u8; 5 * BLOCK_SIZE as usize + 1000];
        bytes[BLOCK_SIZE as usize + 7] = 1;
        bytes[5 * BLOCK_SIZE as usize + 999] = 2;
        let source = MemorySource::new(bytes.clone());
        assert_eq!(of_source(&source, 2).unwrap(), by_definition(&bytes));
        // A disk one zero block longer is another disk.
        let shorter = by_definition(&bytes);
        bytes.extend(vec![0u8; BLOCK_SIZE as usize]);
        let longer = of_source(&MemorySource::new(bytes.clone()), 1).unwrap();
        assert_ne!(longer, shorter);
        assert_eq!(longer, by_definition(&bytes));
    }
}
