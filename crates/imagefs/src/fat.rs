//! FAT12/16/32 through `fatfs`, over a stream that refuses every write.

use crate::{show, DirEntry, Error, FileKind, Filesystem, FsKind, Metadata, Result};
use blockio::BlockSource;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

/// A FAT directory holds at most 65536 32-byte slots; more means a looping cluster chain.
const MAX_DIR_ENTRIES: usize = 65_536;

/// A read-only stream over a source; `fatfs` needs Read + Write + Seek.
struct ReadOnlyStream {
    source: Arc<dyn BlockSource>,
    pos: u64,
}

impl Read for ReadOnlyStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.source.len().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.source
            .read_exact_at(&mut buf[..n], self.pos)
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for ReadOnlyStream {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "amiforge never writes to an image",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for ReadOnlyStream {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.source.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

type Fs = fatfs::FileSystem<ReadOnlyStream>;
type FatEntry<'a> = fatfs::DirEntry<'a, ReadOnlyStream>;

/// A FAT filesystem.
pub(crate) struct FatFs {
    fs: Fs,
}

fn corrupt(path: &[u8], e: io::Error) -> Error {
    Error::Corrupt {
        kind: "vfat",
        path: Some(show(path)),
        reason: e.to_string(),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn metadata(e: &FatEntry<'_>) -> Metadata {
    let t = e.modified();
    let days = days_from_civil(
        i64::from(t.date.year),
        i64::from(t.date.month),
        i64::from(t.date.day),
    );
    let mtime = days * 86_400
        + i64::from(t.time.hour) * 3600
        + i64::from(t.time.min) * 60
        + i64::from(t.time.sec);
    let read_only = e.attributes().contains(fatfs::FileAttributes::READ_ONLY);
    let (kind, mode) = if e.is_dir() {
        (FileKind::Dir, 0o755)
    } else {
        (FileKind::File, 0o644)
    };
    Metadata {
        kind,
        mode: if read_only { mode & 0o555 } else { mode },
        uid: 0,
        gid: 0,
        size: if e.is_dir() { 0 } else { e.len() },
        mtime,
    }
}

/// Checks the BIOS parameter block with checked arithmetic before `fatfs` sees it:
/// fatfs 0.3.6 computes the layout in `u32` and overflows (a panic with overflow
/// checks on) on hostile values.
pub(crate) fn check_bpb(b: &[u8]) -> std::result::Result<(), String> {
    let le16 = |at: usize| u32::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let le32 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let bytes_per_sector = le16(11);
    let sectors_per_cluster = u32::from(b[13]);
    let reserved = le16(14);
    let fats = u32::from(b[16]);
    let root_entries = le16(17);
    let total = if le16(19) != 0 { le16(19) } else { le32(32) };
    let per_fat = if le16(22) != 0 { le16(22) } else { le32(36) };
    if !bytes_per_sector.is_power_of_two() || !(512..=4096).contains(&bytes_per_sector) {
        return Err(format!(
            "bytes per sector {bytes_per_sector} is not a power of two in 512..=4096"
        ));
    }
    if !sectors_per_cluster.is_power_of_two() || sectors_per_cluster > 128 {
        return Err(format!(
            "sectors per cluster {sectors_per_cluster} is not a power of two up to 128"
        ));
    }
    if reserved == 0 || fats == 0 || per_fat == 0 {
        return Err("reserved sectors, FAT count and sectors per FAT must be non-zero".into());
    }
    let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
    let first_data = fats
        .checked_mul(per_fat)
        .and_then(|f| f.checked_add(reserved))
        .and_then(|f| f.checked_add(root_sectors))
        .ok_or("FAT layout overflows 32 bits")?;
    if total <= first_data {
        return Err(format!(
            "total sectors {total} leave no data area after sector {first_data}"
        ));
    }
    let fat_bits = per_fat
        .checked_mul(bytes_per_sector)
        .and_then(|x| x.checked_mul(8))
        .ok_or("FAT size overflows 32 bits")?;
    // The smallest FAT entry is 12 bits; a FAT must hold the two reserved entries.
    if fat_bits / 32 < 2 && fat_bits / 12 < 2 {
        return Err("the FAT is too small to hold its reserved entries".into());
    }
    Ok(())
}

impl FatFs {
    pub(crate) fn open(source: Arc<dyn BlockSource>) -> Result<Self> {
        let mut boot = [0u8; 512];
        source
            .read_exact_at(&mut boot, 0)
            .map_err(|e| Error::Read {
                path: "(boot sector)".into(),
                source: Box::new(e),
            })?;
        check_bpb(&boot).map_err(|reason| Error::Corrupt {
            kind: "vfat",
            path: None,
            reason: format!("boot sector: {reason}"),
        })?;
        let stream = ReadOnlyStream { source, pos: 0 };
        let fs = fatfs::FileSystem::new(stream, fatfs::FsOptions::new()).map_err(|e| {
            Error::Corrupt {
                kind: "vfat",
                path: None,
                reason: e.to_string(),
            }
        })?;
        Ok(Self { fs })
    }

    /// Lists a directory, bounded so a looping cluster chain cannot run forever.
    fn entries<'a>(
        &'a self,
        dir: &fatfs::Dir<'a, ReadOnlyStream>,
        path: &[u8],
    ) -> Result<Vec<FatEntry<'a>>> {
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| corrupt(path, e))?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() >= MAX_DIR_ENTRIES {
                return Err(Error::Corrupt {
                    kind: "vfat",
                    path: Some(show(path)),
                    reason: format!("directory has more than {MAX_DIR_ENTRIES} entries (looping cluster chain?)"),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Finds the entry for `path` (None for the root). Names match case-insensitively.
    fn lookup(&self, path: &[u8]) -> Result<Option<FatEntry<'_>>> {
        let mut dir = self.fs.root_dir();
        let mut found = None;
        let parts: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        for (i, part) in parts.iter().enumerate() {
            let Ok(name) = std::str::from_utf8(part) else {
                return Err(Error::NotFound { path: show(path) });
            };
            let entry = self
                .entries(&dir, path)?
                .into_iter()
                .find(|e| e.file_name().eq_ignore_ascii_case(name))
                .ok_or_else(|| Error::NotFound { path: show(path) })?;
            if i + 1 < parts.len() {
                if !entry.is_dir() {
                    return Err(Error::WrongType {
                        path: show(path),
                        reason: "not a directory",
                    });
                }
                dir = entry.to_dir();
            }
            found = Some(entry);
        }
        Ok(found)
    }
}

impl Filesystem for FatFs {
    fn kind(&self) -> FsKind {
        FsKind::Vfat
    }

    fn metadata(&self, path: &[u8]) -> Result<Metadata> {
        Ok(match self.lookup(path)? {
            Some(e) => metadata(&e),
            None => Metadata {
                kind: FileKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: 0,
            },
        })
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>> {
        let dir = match self.lookup(path)? {
            None => self.fs.root_dir(),
            Some(e) if e.is_dir() => e.to_dir(),
            Some(_) => {
                return Err(Error::WrongType {
                    path: show(path),
                    reason: "not a directory",
                })
            }
        };
        Ok(self
            .entries(&dir, path)?
            .iter()
            .map(|e| DirEntry {
                name: e.file_name().into_bytes(),
                metadata: metadata(e),
            })
            .collect())
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        self.lookup(path)?;
        Err(Error::WrongType {
            path: show(path),
            reason: "not a symlink (FAT has none)",
        })
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + '_>> {
        match self.lookup(path)? {
            Some(e) if e.is_file() => {
                let size = e.len();
                // Stop at the recorded size even if the cluster chain goes on (or loops).
                Ok(Box::new(e.to_file().take(size)))
            }
            _ => Err(Error::WrongType {
                path: show(path),
                reason: "is a directory",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::days_from_civil;

    #[test]
    fn civil_dates_convert_to_unix_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1980, 1, 1), 3_652);
    }
}
