//! The upload journal: which snapshot an interrupted upload was writing, and which
//! blocks it confirmed. A JSON header line, then one line per confirmed block,
//! appended as confirmations arrive, so a crash loses at most the unflushed tail.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

const FORMAT: &str = "amiforge-upload-journal";
const VERSION: u32 = 1;
/// Journal files are named after the image with this suffix.
pub const JOURNAL_SUFFIX: &str = ".amiforge-upload";

/// What identifies the image file, to notice that it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIdentity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode number.
    pub inode: u64,
}

impl ImageIdentity {
    /// Reads the identity of `path`.
    pub fn of(path: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| Error::State {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            inode: m.ino(),
        })
    }
}

/// The first line of a journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalHeader {
    /// Always "amiforge-upload-journal".
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The pending snapshot.
    pub snapshot_id: String,
    /// The image path as given.
    pub image_path: PathBuf,
    /// The image's identity when the upload started.
    pub image: ImageIdentity,
    /// The volume size in GiB.
    pub volume_size_gib: u64,
    /// Whether zero blocks are written (encrypted snapshots).
    pub encrypted: bool,
    /// The parent snapshot, for incremental uploads.
    pub parent_snapshot_id: Option<String>,
    /// The parent's manifest file.
    pub parent_manifest: Option<PathBuf>,
}

impl JournalHeader {
    /// A header for a new upload.
    pub fn new(
        snapshot_id: &str,
        image_path: &Path,
        image: ImageIdentity,
        volume_size_gib: u64,
        encrypted: bool,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            snapshot_id: snapshot_id.into(),
            image_path: image_path.into(),
            image,
            volume_size_gib,
            encrypted,
            parent_snapshot_id: None,
            parent_manifest: None,
        }
    }
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// The header.
    pub header: JournalHeader,
    /// Confirmed blocks: index → raw SHA-256.
    pub confirmed: BTreeMap<u64, [u8; 32]>,
    file: File,
}

impl Journal {
    /// Where the journal of `image` lives: beside it, or in `state_dir`.
    pub fn path_for(image: &Path, state_dir: Option<&Path>) -> PathBuf {
        let name = format!(
            "{}{JOURNAL_SUFFIX}",
            image
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        match state_dir {
            Some(d) => d.join(name),
            None => image.with_file_name(name),
        }
    }

    /// Starts a new journal, replacing any old one.
    pub fn create(path: &Path, header: JournalHeader) -> Result<Self> {
        let bad = |e: std::io::Error| Error::State {
            path: path.into(),
            reason: format!("cannot write the journal: {e}"),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(bad)?;
        lock(&file, path)?;
        file.set_len(0).map_err(bad)?;
        let line = serde_json::to_string(&header).map_err(|e| Error::State {
            path: path.into(),
            reason: e.to_string(),
        })?;
        writeln!(file, "{line}").map_err(bad)?;
        file.sync_data().map_err(bad)?;
        Ok(Self {
            path: path.into(),
            header,
            confirmed: BTreeMap::new(),
            file,
        })
    }

    /// Opens an existing journal to resume from it.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::State {
            path: path.into(),
            reason,
        };
        let f = File::open(path).map_err(|e| bad(format!("no journal to resume from: {e}")))?;
        let mut lines = BufReader::new(f).lines();
        let first = lines
            .next()
            .ok_or_else(|| bad("empty journal".into()))?
            .map_err(|e| bad(e.to_string()))?;
        let header: JournalHeader =
            serde_json::from_str(&first).map_err(|e| bad(format!("not an upload journal: {e}")))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(bad(format!(
                "journal format {} version {} is not {FORMAT} version {VERSION}",
                header.format, header.version
            )));
        }
        let mut confirmed = BTreeMap::new();
        for line in lines {
            let Ok(line) = line else { break };
            // A torn last line (a crash mid-write) is simply not confirmed.
            let Some((index, digest)) = line.split_once(' ') else {
                break;
            };
            let (Ok(index), Some(digest)) = (index.parse::<u64>(), decode_digest(digest)) else {
                break;
            };
            confirmed.insert(index, digest);
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| bad(e.to_string()))?;
        lock(&file, path)?;
        Ok(Self {
            path: path.into(),
            header,
            confirmed,
            file,
        })
    }

    /// Records confirmed blocks with one write, so that a killed process leaves
    /// whole lines behind and a busy upload makes one system call per batch.
    pub fn record_all(&mut self, blocks: &[(u64, [u8; 32])]) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut lines = String::with_capacity(blocks.len() * 56);
        for (index, digest) in blocks {
            lines.push_str(&format!("{index} {}\n", crate::b64(digest)));
        }
        self.file
            .write_all(lines.as_bytes())
            .map_err(|e| Error::State {
                path: self.path.clone(),
                reason: format!("cannot append to the journal: {e}"),
            })?;
        self.confirmed.extend(blocks.iter().copied());
        Ok(())
    }

    /// Flushes confirmations to disk.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::State {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the journal after a completed upload.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_file(&self.path).map_err(|e| Error::State {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }
}

/// Takes an exclusive advisory lock on the journal for as long as the file is open,
/// so that two uploads of one image never share (and corrupt) a journal.
fn lock(file: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; it touches no memory of ours.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(Error::State {
            path: path.into(),
            reason: "another amiforge upload of this image is running; give this one its own --state-dir".into(),
        });
    }
    Ok(())
}

fn decode_digest(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?
        .try_into()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_survive_a_reopen_and_a_torn_last_line_is_ignored() {
        let dir = std::env::temp_dir().join(format!("journal-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j");
        let id = ImageIdentity {
            size: 1,
            mtime_ns: 2,
            inode: 3,
        };
        let mut j = Journal::create(
            &path,
            JournalHeader::new("snap-1", Path::new("x.img"), id, 1, false),
        )
        .unwrap();
        j.record_all(&[(5, [7u8; 32]), (9, [8u8; 32])]).unwrap();
        drop(j);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"12 AAA")
            .unwrap();
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.header.snapshot_id, "snap-1");
        assert_eq!(j.confirmed.keys().copied().collect::<Vec<_>>(), vec![5, 9]);
        assert_eq!(j.confirmed[&9], [8u8; 32]);
        j.remove().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
