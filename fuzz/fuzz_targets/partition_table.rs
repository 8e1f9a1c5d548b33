//! Any bytes as a disk: reading the partition table must return, never panic, and
//! every partition it returns must have a sane byte range.
#![no_main]

use blockio::MemorySource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(table) = partition::read_table(&MemorySource::new(data.to_vec())) {
        for p in &table.partitions {
            assert!(p.size > 0);
            assert!(p.start.checked_add(p.size).is_some());
        }
    }
});
