//! Any bytes as an image file of any container format (seed it with small qcow2,
//! VMDK, VHD and VHDX files made by qemu-img, see scripts/fuzz-run.sh): opening must
//! give a disk or an error, and reading what it claims to hold must give bytes or an
//! error, never a panic, a hang or an unbounded allocation.
#![no_main]

use blockio::BlockSource;
use libfuzzer_sys::fuzz_target;
use std::io::Write;

/// How much of the disk one input may make the target read.
const READ_BUDGET: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("disk-container-fuzz-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).expect("scratch file");
    f.write_all(data).expect("scratch write");
    drop(f);
    let Ok(opened) = diskimage::open(&path, &diskimage::OpenOptions::default()) else {
        return;
    };
    let disk = &opened.source;
    let mut buf = vec![0u8; 64 << 10];
    let mut budget = READ_BUDGET;
    let ranges = disk.data_ranges().unwrap_or_default();
    let starts = ranges.iter().map(|r| r.start).chain([0, disk.len().saturating_sub(1)]);
    for at in starts {
        if budget == 0 {
            break;
        }
        let n = (buf.len() as u64).min(disk.len().saturating_sub(at)) as usize;
        let _ = disk.read_exact_at(&mut buf[..n], at);
        budget = budget.saturating_sub(n as u64);
    }
});
