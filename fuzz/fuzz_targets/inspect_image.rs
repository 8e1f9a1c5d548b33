//! Any bytes as a whole image: the full inspection (tables, probing, identity, boot
//! mode) must produce a report or an error, never a panic.
#![no_main]

use blockio::{BlockSource, MemorySource};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let source: Arc<dyn BlockSource> = Arc::new(MemorySource::new(data.to_vec()));
    if let Ok(image) = inspect::Image::from_source(source) {
        let _ = image.report();
    }
});
