//! Any bytes as a filesystem: probe it, open it if readable, walk it within small
//! bounds and read every regular file it lists. Nothing may panic or run away.
#![no_main]

use blockio::{BlockSource, MemorySource};
use imagefs::{FileKind, WalkLimits};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

/// Small bounds keep each run fast; the real limits are tested elsewhere.
const LIMITS: WalkLimits = WalkLimits { max_depth: 16, max_entries: 2_000 };
const FILE_LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let source: Arc<dyn BlockSource> = Arc::new(MemorySource::new(data.to_vec()));
    let Ok(kind) = imagefs::probe(&*source) else { return };
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
