//! Opening images and, when allowed, the backing files they name.
//!
//! A container names its backing file by any path it likes (`/etc/shadow`,
//! `../../secret.img`). Without an allowed directory the name is refused before the
//! file system is touched; with one, the name is resolved (symlinks included) and
//! followed only when it lands inside that directory, the chain is at most
//! [`MAX_CHAIN`] deep, and a file already in the chain is a loop. A sealed chain
//! (an image read in place from a remote object) opens no file at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockio::{BlockSource, FileSource};

use crate::{format_of, raw, Container, Error, Format, OpenOptions, Opened, Result};

/// The deepest backing chain followed: qemu's own chains in practice are a few
/// images deep; anything deeper is more likely a trap than a build.
pub const MAX_CHAIN: usize = 8;

/// The images opened so far for one top-level image.
pub(crate) struct Chain {
    allow: Option<PathBuf>,
    opened: Vec<PathBuf>,
    /// No file may be opened: the image is not a local file.
    sealed: bool,
}

impl Chain {
    pub fn new(options: &OpenOptions) -> Self {
        Self {
            allow: options.allow_backing.clone(),
            opened: Vec::new(),
            sealed: false,
        }
    }

    /// A chain that opens no file: for an image that is not itself a local file.
    pub fn sealed() -> Self {
        Self {
            allow: None,
            opened: Vec::new(),
            sealed: true,
        }
    }

    /// Opens `path`, whatever its format.
    pub fn open(&mut self, path: &Path) -> Result<Opened> {
        self.open_container(Arc::new(FileSource::open(path)?))
    }

    /// Opens the image in `file`, whatever its format.
    pub fn open_container(&mut self, file: Container) -> Result<Opened> {
        match format_of(&*file)? {
            Format::Raw => raw(file),
            Format::Qcow2 => crate::qcow2::open(file, self),
            Format::Vmdk => crate::vmdk::open(file, self),
            Format::Vhd => crate::vhd::open(file),
            Format::Vhdx => crate::vhdx::open(file),
        }
    }

    /// The file `name` beside the image `of` (a flat VMDK's extent): a bare file
    /// name in the same directory, nothing else.
    pub fn beside(&self, of: &dyn BlockSource, name: &str) -> Result<FileSource> {
        let of = PathBuf::from(of.name());
        let refuse = |reason: &str| Error::Backing {
            path: of.clone(),
            backing: name.to_string(),
            reason: reason.into(),
        };
        if self.sealed {
            return Err(refuse(
                "the image is not a local file, so there is no directory to find it in",
            ));
        }
        if Path::new(name).components().count() != 1 || name == ".." || name == "." {
            return Err(refuse("it must be a file beside the image that names it"));
        }
        let dir = of.parent().unwrap_or(Path::new("."));
        Ok(FileSource::open(dir.join(name))?)
    }

    /// Opens the backing file `name` that the image `of` names.
    pub fn backing(&mut self, of: &dyn BlockSource, name: &str) -> Result<Opened> {
        let of = PathBuf::from(of.name());
        let of = of.as_path();
        let refuse = |reason: String| Error::Backing {
            path: of.to_path_buf(),
            backing: name.to_string(),
            reason,
        };
        if self.sealed {
            return Err(refuse(
                "the image is not a local file; backing files are followed only from local files"
                    .into(),
            ));
        }
        let Some(allow) = &self.allow else {
            return Err(refuse(
                "backing files are opened only inside the directory --allow-backing names".into(),
            ));
        };
        let allow = allow
            .canonicalize()
            .map_err(|e| refuse(format!("the allowed directory {}: {e}", allow.display())))?;
        let named = Path::new(name);
        let wanted = if named.is_absolute() {
            named.to_path_buf()
        } else {
            of.parent().unwrap_or(Path::new(".")).join(named)
        };
        let resolved = wanted
            .canonicalize()
            .map_err(|e| refuse(format!("{}: {e}", wanted.display())))?;
        if !resolved.starts_with(&allow) {
            return Err(refuse(format!(
                "it resolves to {}, outside the allowed directory {}",
                resolved.display(),
                allow.display()
            )));
        }
        if self.opened.is_empty() {
            if let Ok(top) = of.canonicalize() {
                self.opened.push(top);
            }
        }
        if self.opened.contains(&resolved) {
            return Err(refuse(format!(
                "{} is already in the chain: a loop",
                resolved.display()
            )));
        }
        if self.opened.len() > MAX_CHAIN {
            return Err(refuse(format!(
                "the chain is deeper than {MAX_CHAIN} images"
            )));
        }
        self.opened.push(resolved.clone());
        let mut opened = self.open(&resolved)?;
        opened
            .info
            .backing
            .insert(0, resolved.display().to_string());
        Ok(opened)
    }
}

/// The backing source and chain of an opened backing file.
pub(crate) fn parts(opened: Opened) -> (Arc<dyn blockio::BlockSource>, Vec<String>) {
    (opened.source, opened.info.backing)
}
