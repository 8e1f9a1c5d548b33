//! One walk of every readable filesystem, shared by the auditors.

use crate::{Config, Gap, NotExamined, Skipped};
use imagefs::{FileKind, Metadata, WalkLimits};
use inspect::Image;

/// One entry of a filesystem.
#[derive(Debug, Clone)]
pub struct IndexedFile {
    /// Partition number.
    pub partition: u32,
    /// Path as stored (bytes).
    pub raw_path: Vec<u8>,
    /// Path for reports.
    pub path: String,
    /// lstat-style metadata.
    pub metadata: Metadata,
    /// Kept out of the secret scan by the configuration.
    pub skipped: bool,
}

/// Every entry of every readable filesystem, and what the walks could not read.
#[derive(Debug, Default)]
pub struct FileIndex {
    /// Entries, partition by partition, in walk order.
    pub entries: Vec<IndexedFile>,
    /// Partitions walked.
    pub partitions: Vec<u32>,
    /// Directories that could not be listed, limits reached.
    pub not_examined: Vec<NotExamined>,
    /// Paths the configuration skips.
    pub skipped: Vec<Skipped>,
}

impl FileIndex {
    /// Walks every filesystem of `image` that amiforge can read.
    pub fn build(image: &Image, config: &Config) -> Self {
        let mut index = FileIndex::default();
        for v in image.volumes() {
            let Ok(fs) = v.open() else {
                continue; // inspect's report lists it; the coverage auditor reports it
            };
            let n = v.partition.number;
            index.partitions.push(n);
            let outcome = imagefs::walk(&*fs, b"/", WalkLimits::default(), |e| {
                let path = imagefs::show(&e.path);
                let skipped = match config.skipped_by(&path) {
                    Some(pattern) if e.metadata.kind == FileKind::File => {
                        index.skipped.push(Skipped {
                            partition: n,
                            path: path.clone(),
                            pattern: pattern.to_string(),
                        });
                        true
                    }
                    _ => false,
                };
                index.entries.push(IndexedFile {
                    partition: n,
                    raw_path: e.path.clone(),
                    path,
                    metadata: e.metadata.clone(),
                    skipped,
                });
            });
            for p in outcome.problems {
                index.not_examined.push(NotExamined {
                    kind: Gap::Directory,
                    partition: Some(n),
                    what: p.path,
                    reason: p.reason,
                });
            }
        }
        index
    }

    /// The regular files to scan for secrets.
    pub fn scannable(&self) -> impl Iterator<Item = &IndexedFile> {
        self.entries
            .iter()
            .filter(|f| f.metadata.kind == FileKind::File && !f.skipped)
    }

    /// Entries of partition `n`.
    pub fn on(&self, n: u32) -> impl Iterator<Item = &IndexedFile> {
        self.entries.iter().filter(move |f| f.partition == n)
    }
}
