//! The one place that opens the image a command was given. `diskimage` tells the
//! format by magic (raw, qcow2, VMDK, VHD, VHDX) and reads the virtual disk; bundles
//! are recognised by `bundled::is_bundle` before this is reached. `--allow-backing`,
//! a global option, is set here once for the whole command.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static OPTIONS: OnceLock<diskimage::OpenOptions> = OnceLock::new();

/// Sets how images are opened: the directory backing files may be followed in.
pub fn configure(allow_backing: Option<PathBuf>) {
    let _ = OPTIONS.set(diskimage::OpenOptions { allow_backing });
}

fn options() -> &'static diskimage::OpenOptions {
    OPTIONS.get_or_init(diskimage::OpenOptions::default)
}

/// Opens the disk in the image file at `path`, read-only.
pub fn disk(path: &Path) -> Result<diskimage::Opened> {
    tracing::info!(image = %path.display(), "opening read-only");
    let opened = diskimage::open(path, options())
        .with_context(|| format!("cannot open {}", path.display()))?;
    tracing::info!(
        format = opened.info.format,
        virtual_size = opened.info.virtual_size,
        allocated = opened.info.allocated_bytes,
        "opened"
    );
    Ok(opened)
}

/// Opens the image file at `path` for inspection: its partitions probed.
pub fn image(path: &Path) -> Result<inspect::Image> {
    inspect::Image::from_opened(disk(path)?)
        .with_context(|| format!("cannot inspect {}", path.display()))
}
