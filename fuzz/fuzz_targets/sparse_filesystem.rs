//! A filesystem volume given sparsely, so that real XFS and btrfs volumes (hundreds of
//! MiB, nearly all zeros) fit in a fuzz input: the volume's size in 4 KiB blocks
//! (4 bytes), then records of a block number (4 bytes) and that block's 4096 bytes,
//! for the blocks that are not zero. The seeds are volumes made by mkfs.xfs and
//! mkfs.btrfs (scripts/fuzz-run.sh), so the fuzzer mutates their real structures in
//! place. The volume is probed, opened, walked, its files read, its usage and free
//! space listed. Nothing may panic or run away.
#![no_main]

use blockio::{BlockSource, Result};
use imagefs::{FileKind, WalkLimits};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::Arc;

const BLOCK: usize = 4096;
/// A volume of at most 1 GiB: big enough for mkfs.xfs's 300 MiB minimum.
const MAX_BLOCKS: u64 = 1 << 18;
/// Small bounds keep each run fast; the real limits are tested elsewhere.
const LIMITS: WalkLimits = WalkLimits { max_depth: 16, max_entries: 2_000 };
const FILE_LIMIT: u64 = 1 << 20;

/// Blocks that were given; every other block reads as zeros.
struct Sparse {
    blocks: BTreeMap<u64, Vec<u8>>,
    len: u64,
}

impl BlockSource for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        blockio::check_bounds(|| self.name(), offset, buf.len(), self.len)?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (block, within) = (at / BLOCK as u64, (at % BLOCK as u64) as usize);
            let n = (BLOCK - within).min(buf.len() - done);
            match self.blocks.get(&block) {
                Some(b) => buf[done..done + n].copy_from_slice(&b[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }
    fn name(&self) -> String {
        "sparse volume".into()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(head) = data.get(..4) else { return };
    let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]])).min(MAX_BLOCKS);
    let mut blocks = BTreeMap::new();
    for record in data[4..].chunks_exact(4 + BLOCK) {
        let n = u64::from(u32::from_le_bytes([record[0], record[1], record[2], record[3]]));
        if n < len {
            blocks.insert(n, record[4..].to_vec());
        }
    }
    let source: Arc<dyn BlockSource> = Arc::new(Sparse { blocks, len: len * BLOCK as u64 });
    let Ok(kind) = imagefs::probe(&*source) else { return };
    let _ = imagefs::usage(&source, kind);
    let _ = imagefs::unallocated(&source, kind);
    let Ok(fs) = imagefs::open(source, kind) else { return };
    let mut files = Vec::new();
    imagefs::walk(&*fs, b"/", LIMITS, |e| {
        if e.metadata.kind == FileKind::File {
            files.push(e.path.clone());
        }
    });
    for f in files.iter().take(64) {
        let _ = fs.read_file(f, FILE_LIMIT);
    }
});
