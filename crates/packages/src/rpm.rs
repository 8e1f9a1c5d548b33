//! rpm's database: the SQLite rpmdb (rpm >= 4.16) and its header blobs.
//!
//! The SQLite file is copied out of the image into a private temporary directory
//! (SQLite reads files, not byte slices), together with its write-ahead log when that
//! holds transactions not yet checkpointed.

use crate::{exists, purl, read_db, Distro, Inventory, Package, PackageType, Unread};
use imagefs::Filesystem;

/// Where rpm keeps its database: the traditional place, and the newer one that
/// /var/lib/rpm often links to.
const DIRS: &[&str] = &["/var/lib/rpm", "/usr/lib/sysimage/rpm"];

pub(crate) fn read(fs: &dyn Filesystem, distro: &Distro, inv: &mut Inventory) {
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for dir in DIRS {
        // /var/lib/rpm is often a symlink to /usr/lib/sysimage/rpm: read it once.
        let Ok(real) = imagefs::resolve(fs, dir.as_bytes()) else {
            continue;
        };
        if seen.contains(&real) {
            continue;
        }
        seen.push(real);
        let sqlite = format!("{dir}/rpmdb.sqlite");
        if exists(fs, &sqlite) {
            read_sqlite(fs, &sqlite, distro, inv);
        }
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
    let Some(db) = read_db(fs, path, inv) else {
        return;
    };
    let wal_path = format!("{path}-wal");
    let wal = if exists(fs, &wal_path) {
        read_db(fs, &wal_path, inv).filter(|w| !w.is_empty())
    } else {
        None
    };
    match packages_from_sqlite(&db, wal.as_deref(), path, distro) {
        Ok((packages, bad)) => {
            inv.packages.extend(packages);
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

fn packages_from_sqlite(
    db: &[u8],
    wal: Option<&[u8]>,
    path: &str,
    distro: &Distro,
) -> Result<(Vec<Package>, usize), String> {
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
        let Ok(blob) = row else {
            bad += 1;
            continue;
        };
        match Header::parse(&blob) {
            Ok(h) => out.push(h.package(path, distro)),
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

/// Header data types (rpmtag.h).
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

/// Bytes per index entry: tag, type, offset, count, each a big-endian u32.
const ENTRY_SIZE: usize = 16;
/// rpm's own bound on index entries (HEADER_TAGS_MAX is far lower in practice).
const MAX_ENTRIES: usize = 0x0000_ffff;

impl Header {
    /// Parses a header blob as stored in rpmdb: index count, data length, the index,
    /// then the data store. Every offset is checked against the blob.
    pub(crate) fn parse(blob: &[u8]) -> Result<Self, String> {
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
        let string_at = |offset: usize| -> Result<String, String> {
            let rest = data
                .get(offset..)
                .ok_or_else(|| format!("string offset {offset} outside the data store"))?;
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| format!("unterminated string at {offset}"))?;
            Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
        };
        let mut h = Header::default();
        for i in 0..il {
            let at = 8 + i * ENTRY_SIZE;
            let (tag, kind, offset) = (be(at)?, be(at + 4)?, be(at + 8)? as usize);
            let text = matches!(kind, TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING);
            match tag {
                TAG_NAME if text => h.name = string_at(offset)?,
                TAG_VERSION if text => h.version = string_at(offset)?,
                TAG_RELEASE if text => h.release = string_at(offset)?,
                TAG_ARCH if text => h.arch = string_at(offset)?,
                TAG_SOURCERPM if text => h.source_rpm = Some(string_at(offset)?),
                TAG_EPOCH if kind == TYPE_INT32 => {
                    let b = data
                        .get(offset..offset + 4)
                        .ok_or_else(|| format!("epoch offset {offset} outside the data store"))?;
                    h.epoch = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                }
                _ => {}
            }
        }
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

    /// Builds a header blob from (tag, type, payload) entries.
    fn blob(entries: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, kind, payload) in entries {
            for v in [*tag, *kind, data.len() as u32, 1] {
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
