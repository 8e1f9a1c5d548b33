//! rpm's database: the SQLite rpmdb (rpm >= 4.16) and its header blobs.
//!
//! The SQLite file is copied out of the image into a private temporary directory
//! (SQLite reads files, not byte slices), together with its write-ahead log when that
//! holds transactions not yet checkpointed.

use crate::{exists, purl, Distro, Inventory, Package, PackageType, Unread, DATABASE_LIMIT};
use imagefs::Filesystem;

/// Where rpm keeps its database: the traditional place, and the newer one that
/// /var/lib/rpm often links to.
const DIRS: &[&str] = &["/var/lib/rpm", "/usr/lib/sysimage/rpm"];

/// rpm's directories that exist in `fs`, each once: /var/lib/rpm is often a symlink
/// to /usr/lib/sysimage/rpm.
fn distinct_dirs(fs: &dyn Filesystem) -> Vec<&'static str> {
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    for dir in DIRS {
        let Ok(real) = imagefs::resolve(fs, dir.as_bytes()) else {
            continue;
        };
        if !seen.contains(&real) {
            seen.push(real);
            out.push(*dir);
        }
    }
    out
}

pub(crate) fn read(fs: &dyn Filesystem, distro: &Distro, inv: &mut Inventory) {
    for sqlite in sqlite_databases(fs) {
        read_sqlite(fs, &sqlite, distro, inv);
    }
    for dir in distinct_dirs(fs) {
        for (file, format) in [("Packages", "BerkeleyDB"), ("Packages.db", "NDB")] {
            let path = format!("{dir}/{file}");
            if exists(fs, &path) {
                inv.unread.push(Unread {
                    path,
                    reason: format!(
                        "an rpm database in the {format} format, which amiforge does not read"
                    ),
                });
            }
        }
    }
}

fn read_sqlite(fs: &dyn Filesystem, path: &str, distro: &Distro, inv: &mut Inventory) {
    match blobs(fs, path) {
        Ok((blobs, unreadable)) => {
            let mut bad = unreadable;
            for blob in blobs {
                match Header::parse(&blob) {
                    Ok(h) => inv.packages.push(h.package(path, distro)),
                    Err(_) => bad += 1,
                }
            }
            inv.databases.push(path.into());
            if bad > 0 {
                inv.unread.push(Unread {
                    path: path.into(),
                    reason: format!("{bad} package header(s) could not be parsed"),
                });
            }
        }
        Err(reason) => inv.unread.push(Unread {
            path: path.into(),
            reason,
        }),
    }
}

/// The rpm databases of `fs` that amiforge reads: each SQLite file once, however
/// many of rpm's directories lead to it.
pub(crate) fn sqlite_databases(fs: &dyn Filesystem) -> Vec<String> {
    distinct_dirs(fs)
        .into_iter()
        .map(|dir| format!("{dir}/rpmdb.sqlite"))
        .filter(|sqlite| exists(fs, sqlite))
        .collect()
}

/// Every header blob of the SQLite rpmdb at `path` (with its write-ahead log), and
/// how many rows could not be read.
pub(crate) fn blobs(fs: &dyn Filesystem, path: &str) -> Result<(Vec<Vec<u8>>, usize), String> {
    let db = fs
        .read_file(path.as_bytes(), DATABASE_LIMIT)
        .map_err(|e| e.to_string())?;
    let wal_path = format!("{path}-wal");
    let wal = if exists(fs, &wal_path) {
        Some(
            fs.read_file(wal_path.as_bytes(), DATABASE_LIMIT)
                .map_err(|e| format!("{wal_path}: {e}"))?,
        )
        .filter(|w| !w.is_empty())
    } else {
        None
    };
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary copy: {e}"))?;
    let copy = dir.path().join("rpmdb.sqlite");
    std::fs::write(&copy, db).map_err(|e| format!("cannot make a temporary copy: {e}"))?;
    if let Some(wal) = wal {
        std::fs::write(dir.path().join("rpmdb.sqlite-wal"), wal)
            .map_err(|e| format!("cannot make a temporary copy: {e}"))?;
    }
    let conn = rusqlite::Connection::open_with_flags(
        &copy,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("not a readable SQLite database: {e}"))?;
    let mut stmt = conn
        .prepare("SELECT hnum, blob FROM Packages ORDER BY hnum")
        .map_err(|e| format!("no Packages table: {e}"))?;
    let rows = stmt
        .query_map([], |row| row.get::<_, Vec<u8>>(1))
        .map_err(|e| format!("cannot read the Packages table: {e}"))?;
    let mut out = Vec::new();
    let mut bad = 0;
    for row in rows {
        match row {
            Ok(blob) => out.push(blob),
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

/// The fields of an rpm header that make a package.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    name: String,
    version: String,
    release: String,
    epoch: Option<u32>,
    arch: String,
    source_rpm: Option<String>,
}

/// Header tags (rpmtag.h).
const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;
const TAG_SOURCERPM: u32 = 1044;
const TAG_FILEDIGESTS: u32 = 1035;
const TAG_FILEFLAGS: u32 = 1037;
const TAG_DIRINDEXES: u32 = 1116;
const TAG_BASENAMES: u32 = 1117;
const TAG_DIRNAMES: u32 = 1118;
const TAG_FILEDIGESTALGO: u32 = 5011;

/// Header data types (rpmtag.h).
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

/// Bytes per index entry: tag, type, offset, count, each a big-endian u32.
const ENTRY_SIZE: usize = 16;
/// rpm's own bound on index entries (HEADER_TAGS_MAX is far lower in practice).
const MAX_ENTRIES: usize = 0x0000_ffff;

/// rpm's file flags (rpmfiles.h): a configuration file, and a file the package
/// owns but does not ship (a log, created at run time).
const RPMFILE_CONFIG: u32 = 1 << 0;
const RPMFILE_GHOST: u32 = 1 << 6;

/// File digest algorithms (rpmpgp.h's PGPHASHALGO values).
const DIGEST_MD5: u32 = 1;
const DIGEST_SHA256: u32 = 8;
const DIGEST_SHA384: u32 = 9;
const DIGEST_SHA512: u32 = 10;

/// A header's index and data store, every offset checked against the blob.
struct Blob<'a> {
    entries: Vec<(u32, u32, usize, usize)>,
    data: &'a [u8],
}

impl<'a> Blob<'a> {
    /// Parses a header blob as stored in rpmdb: index count, data length, the index,
    /// then the data store.
    fn parse(blob: &'a [u8]) -> Result<Self, String> {
        let be = |at: usize| -> Result<u32, String> {
            blob.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| format!("header ends at byte {} (wanted {at})", blob.len()))
        };
        let il = be(0)? as usize;
        let dl = be(4)? as usize;
        if il == 0 || il > MAX_ENTRIES {
            return Err(format!("implausible index count {il}"));
        }
        let data_start = 8 + il * ENTRY_SIZE;
        let data = blob
            .get(data_start..data_start.saturating_add(dl))
            .ok_or_else(|| format!("data store of {dl} bytes overruns the header"))?;
        let mut entries = Vec::with_capacity(il);
        for i in 0..il {
            let at = 8 + i * ENTRY_SIZE;
            entries.push((
                be(at)?,
                be(at + 4)?,
                be(at + 8)? as usize,
                be(at + 12)? as usize,
            ));
        }
        Ok(Self { entries, data })
    }

    fn entry(&self, tag: u32) -> Option<(u32, usize, usize)> {
        self.entries
            .iter()
            .find(|e| e.0 == tag)
            .map(|&(_, kind, offset, count)| (kind, offset, count))
    }

    /// `count` NUL-terminated strings from `offset`.
    fn strings_at(&self, offset: usize, count: usize) -> Result<Vec<String>, String> {
        if count > self.data.len() {
            return Err(format!("{count} strings cannot fit in the data store"));
        }
        let mut rest = self
            .data
            .get(offset..)
            .ok_or_else(|| format!("string offset {offset} outside the data store"))?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| format!("unterminated string after offset {offset}"))?;
            out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
            rest = &rest[end + 1..];
        }
        Ok(out)
    }

    /// The first string of a text entry.
    fn string(&self, tag: u32) -> Result<Option<String>, String> {
        match self.entry(tag) {
            Some((TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING, offset, _)) => {
                Ok(self.strings_at(offset, 1)?.pop())
            }
            _ => Ok(None),
        }
    }

    /// A string-array entry.
    fn strings(&self, tag: u32) -> Result<Option<Vec<String>>, String> {
        match self.entry(tag) {
            Some((TYPE_STRING_ARRAY, offset, count)) => Ok(Some(self.strings_at(offset, count)?)),
            _ => Ok(None),
        }
    }

    /// An int32 (array) entry.
    fn int32s(&self, tag: u32) -> Result<Option<Vec<u32>>, String> {
        let Some((TYPE_INT32, offset, count)) = self.entry(tag) else {
            return Ok(None);
        };
        let bytes = count
            .checked_mul(4)
            .and_then(|n| self.data.get(offset..offset.checked_add(n)?))
            .ok_or_else(|| format!("{count} int32 values at {offset} overrun the data store"))?;
        Ok(Some(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }
}

/// One file an rpm package ships, with its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RpmFile {
    /// Absolute path, as the package names it.
    pub(crate) path: String,
    /// Hex digest (empty for directories, symlinks and ghosts).
    pub(crate) digest: String,
    /// Flagged %config.
    pub(crate) config: bool,
}

/// A package's name and the files it ships with digests (directories, symlinks and
/// %ghost files have none, and are left out), and the digest algorithm.
pub(crate) struct FileList {
    pub(crate) package: String,
    pub(crate) algorithm: u32,
    pub(crate) files: Vec<RpmFile>,
}

impl FileList {
    pub(crate) fn parse(blob: &[u8]) -> Result<Self, String> {
        let b = Blob::parse(blob)?;
        let package = b.string(TAG_NAME)?.unwrap_or_default();
        let algorithm = b
            .int32s(TAG_FILEDIGESTALGO)?
            .and_then(|v| v.first().copied())
            .unwrap_or(DIGEST_MD5);
        let (Some(base), Some(dirs), Some(index)) = (
            b.strings(TAG_BASENAMES)?,
            b.strings(TAG_DIRNAMES)?,
            b.int32s(TAG_DIRINDEXES)?,
        ) else {
            return Ok(Self {
                package,
                algorithm,
                files: Vec::new(),
            });
        };
        let digests = b.strings(TAG_FILEDIGESTS)?.unwrap_or_default();
        let flags = b.int32s(TAG_FILEFLAGS)?.unwrap_or_default();
        if index.len() != base.len() || digests.len() != base.len() {
            return Err(format!(
                "{} file names, {} directory indexes and {} digests",
                base.len(),
                index.len(),
                digests.len()
            ));
        }
        let mut files = Vec::new();
        for (i, name) in base.iter().enumerate() {
            let flag = flags.get(i).copied().unwrap_or(0);
            if digests[i].is_empty() || flag & RPMFILE_GHOST != 0 {
                continue;
            }
            let dir = dirs
                .get(index[i] as usize)
                .ok_or_else(|| format!("directory index {} of {}", index[i], dirs.len()))?;
            files.push(RpmFile {
                path: format!("{dir}{name}"),
                digest: digests[i].clone(),
                config: flag & RPMFILE_CONFIG != 0,
            });
        }
        Ok(Self {
            package,
            algorithm,
            files,
        })
    }
}

/// The digest algorithms amiforge checks, by rpm's number.
pub(crate) fn algorithm_name(algorithm: u32) -> Option<&'static str> {
    match algorithm {
        DIGEST_MD5 => Some("md5"),
        DIGEST_SHA256 => Some("sha256"),
        DIGEST_SHA384 => Some("sha384"),
        DIGEST_SHA512 => Some("sha512"),
        _ => None,
    }
}

impl Header {
    /// Parses the package's identity from a header blob.
    pub(crate) fn parse(blob: &[u8]) -> Result<Self, String> {
        let b = Blob::parse(blob)?;
        let epoch = b
            .int32s(TAG_EPOCH)
            .map_err(|_| "the epoch is outside the data store".to_string())?
            .and_then(|v| v.first().copied());
        let h = Header {
            name: b.string(TAG_NAME)?.unwrap_or_default(),
            version: b.string(TAG_VERSION)?.unwrap_or_default(),
            release: b.string(TAG_RELEASE)?.unwrap_or_default(),
            epoch,
            arch: b.string(TAG_ARCH)?.unwrap_or_default(),
            source_rpm: b.string(TAG_SOURCERPM)?,
        };
        if h.name.is_empty() || h.version.is_empty() {
            return Err("header without a name or version".into());
        }
        Ok(h)
    }

    fn package(self, path: &str, distro: &Distro) -> Package {
        let vr = if self.release.is_empty() {
            self.version.clone()
        } else {
            format!("{}-{}", self.version, self.release)
        };
        let version = match self.epoch {
            Some(e) => format!("{e}:{vr}"),
            None => vr.clone(),
        };
        Package {
            purl: purl(
                PackageType::Rpm,
                distro,
                &self.name,
                &vr,
                &self.arch,
                self.epoch,
                self.source_rpm.as_deref(),
            ),
            name: self.name,
            version,
            epoch: self.epoch,
            arch: self.arch,
            source: self.source_rpm,
            kind: PackageType::Rpm,
            database: path.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a header blob from (tag, type, payload) entries of one value each.
    fn blob(entries: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let counted: Vec<(u32, u32, Vec<u8>, u32)> = entries
            .iter()
            .map(|(t, k, p)| (*t, *k, p.clone(), 1))
            .collect();
        blob_of(&counted)
    }

    /// Builds a header blob from (tag, type, payload, count) entries.
    fn blob_of(entries: &[(u32, u32, Vec<u8>, u32)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, kind, payload, count) in entries {
            for v in [*tag, *kind, data.len() as u32, *count] {
                index.extend_from_slice(&v.to_be_bytes());
            }
            data.extend_from_slice(payload);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend(index);
        out.extend(data);
        out
    }

    fn s(v: &str) -> Vec<u8> {
        let mut b = v.as_bytes().to_vec();
        b.push(0);
        b
    }

    #[test]
    fn a_header_gives_name_epoch_version_release_arch() {
        let b = blob(&[
            (TAG_NAME, TYPE_STRING, s("bash")),
            (TAG_EPOCH, TYPE_INT32, 1u32.to_be_bytes().to_vec()),
            (TAG_VERSION, TYPE_STRING, s("5.1.8")),
            (TAG_RELEASE, TYPE_STRING, s("6.el9")),
            (TAG_ARCH, TYPE_STRING, s("x86_64")),
        ]);
        let h = Header::parse(&b).unwrap();
        let p = h.package("/var/lib/rpm/rpmdb.sqlite", &Distro::default());
        assert_eq!(p.version, "1:5.1.8-6.el9");
        assert_eq!(p.epoch, Some(1));
        assert_eq!(p.arch, "x86_64");
    }

    fn strings(v: &[&str]) -> Vec<u8> {
        v.iter().flat_map(|x| s(x)).collect()
    }

    fn int32s(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn file_lists_join_directories_and_names_and_leave_out_ghosts_and_directories() {
        let b = blob_of(&[
            (TAG_NAME, TYPE_STRING, s("hello"), 1),
            (
                TAG_BASENAMES,
                TYPE_STRING_ARRAY,
                strings(&["hello", "hello.conf", "hello.log", "doc"]),
                4,
            ),
            (
                TAG_DIRNAMES,
                TYPE_STRING_ARRAY,
                strings(&["/usr/bin/", "/etc/", "/var/log/", "/usr/share/"]),
                4,
            ),
            (TAG_DIRINDEXES, TYPE_INT32, int32s(&[0, 1, 2, 3]), 4),
            (
                TAG_FILEDIGESTS,
                TYPE_STRING_ARRAY,
                strings(&["aa", "bb", "cc", ""]),
                4,
            ),
            (
                TAG_FILEFLAGS,
                TYPE_INT32,
                int32s(&[0, RPMFILE_CONFIG, RPMFILE_GHOST, 0]),
                4,
            ),
            (TAG_FILEDIGESTALGO, TYPE_INT32, int32s(&[DIGEST_SHA256]), 1),
        ]);
        let f = FileList::parse(&b).unwrap();
        assert_eq!(f.package, "hello");
        assert_eq!(f.algorithm, DIGEST_SHA256);
        assert_eq!(
            f.files,
            vec![
                RpmFile {
                    path: "/usr/bin/hello".into(),
                    digest: "aa".into(),
                    config: false
                },
                RpmFile {
                    path: "/etc/hello.conf".into(),
                    digest: "bb".into(),
                    config: true
                },
            ]
        );
        // A directory index past the directory list is an error, not a panic.
        let bad = blob_of(&[
            (TAG_NAME, TYPE_STRING, s("x"), 1),
            (TAG_BASENAMES, TYPE_STRING_ARRAY, strings(&["a"]), 1),
            (TAG_DIRNAMES, TYPE_STRING_ARRAY, strings(&["/"]), 1),
            (TAG_DIRINDEXES, TYPE_INT32, int32s(&[7]), 1),
            (TAG_FILEDIGESTS, TYPE_STRING_ARRAY, strings(&["aa"]), 1),
        ]);
        assert!(FileList::parse(&bad).is_err());
        // A count larger than the data store is refused before anything is allocated.
        let huge = blob_of(&[
            (TAG_NAME, TYPE_STRING, s("x"), 1),
            (TAG_BASENAMES, TYPE_STRING_ARRAY, strings(&["a"]), u32::MAX),
            (TAG_DIRNAMES, TYPE_STRING_ARRAY, strings(&["/"]), 1),
            (TAG_DIRINDEXES, TYPE_INT32, int32s(&[0]), u32::MAX),
            (TAG_FILEDIGESTS, TYPE_STRING_ARRAY, strings(&["aa"]), 1),
        ]);
        assert!(FileList::parse(&huge).is_err());
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        let good = blob(&[
            (TAG_NAME, TYPE_STRING, s("x")),
            (TAG_VERSION, TYPE_STRING, s("1")),
        ]);
        for cut in 0..good.len() {
            let _ = Header::parse(&good[..cut]);
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Header::parse(&huge).is_err());
        let mut off = good.clone();
        off[16..20].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert!(Header::parse(&off).is_err());
    }
}
