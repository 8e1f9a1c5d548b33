//! Reads a whole virtual disk through the input layer, in 1 MiB reads of its data map,
//! and prints the bytes read: the reader's sequential rate for scripts/bench-formats.sh.
//!
//!     cargo run --release -p diskimage --example read_disk -- disk.qcow2

use blockio::BlockSource;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: read_disk IMAGE")?;
    let opened = diskimage::open(&path, &diskimage::OpenOptions::default())?;
    let disk = &opened.source;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for r in disk.data_ranges()? {
        let mut at = r.start;
        while at < r.end {
            let n = (buf.len() as u64).min(r.end - at) as usize;
            disk.read_exact_at(&mut buf[..n], at)?;
            total += n as u64;
            at += n as u64;
        }
    }
    println!("{total}");
    Ok(())
}
