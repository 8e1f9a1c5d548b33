//! Any bytes as LVM2: as a PV (label, metadata areas, the text they point at) and as
//! metadata text (parsed into a VG whose LVs are assembled over two small PVs and
//! read). Nothing may panic, run away or allocate without bound.
#![no_main]

use blockio::{BlockSource, MemorySource};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let device = MemorySource::new(data.to_vec());
    if let Ok(Some(label)) = lvm::label(&device) {
        let _ = lvm::metadata(&device, &label);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(vg) = lvm::volume_group(text) else { return };
    let pv: Arc<dyn BlockSource> = Arc::new(MemorySource::new(vec![7u8; 1 << 20]));
    let found = |_: &str| Some(pv.clone());
    for lv in &vg.lvs {
        if let Ok(source) = lvm::assemble(&vg, lv, &found) {
            let mut buf = [0u8; 4096];
            let n = source.len().min(buf.len() as u64) as usize;
            let _ = source.read_exact_at(&mut buf[..n], 0);
        }
    }
});
