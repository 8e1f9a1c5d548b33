//! Installed packages, read from the package databases inside a filesystem.
//!
//! - dpkg: `var/lib/dpkg/status` and the distroless `var/lib/dpkg/status.d/*`;
//! - rpm: the SQLite `rpmdb.sqlite` (rpm >= 4.16) under `var/lib/rpm` or
//!   `usr/lib/sysimage/rpm`. BerkeleyDB `Packages` and NDB `Packages.db` are found and
//!   reported as not examined: amiforge does not read those formats;
//! - apk: `lib/apk/db/installed`.
//!
//! [`provenance`] reads which package ships each file, and its digest.
//!
//! Each [`Package`] gets a package URL written the way syft writes them
//! (`pkg:deb/debian/openssl@3.0.11-1?arch=amd64&distro=debian-12`).

mod apk;
mod dpkg;
mod provenance;
mod purl;
mod rpm;

pub use provenance::{provenance, Digest, Owned, Provenance, MAX_OWNED_FILES};
pub use purl::purl;

use imagefs::Filesystem;
use serde::Serialize;

/// Which database a package came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageType {
    /// dpkg.
    Deb,
    /// rpm.
    Rpm,
    /// apk.
    Apk,
}

impl PackageType {
    /// The purl type and report name.
    pub fn name(self) -> &'static str {
        match self {
            PackageType::Deb => "deb",
            PackageType::Rpm => "rpm",
            PackageType::Apk => "apk",
        }
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Full version: `epoch:version-release` for rpm (epoch only when set), the
    /// Debian version (with its epoch) for deb, `version-rN` for apk.
    pub version: String,
    /// rpm epoch, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// Architecture as the database writes it ("amd64", "x86_64", "noarch").
    pub arch: String,
    /// Source package, when known ("glibc", "bash-5.1.8-6.el9.src.rpm").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Which database.
    #[serde(rename = "type")]
    pub kind: PackageType,
    /// Package URL.
    pub purl: String,
    /// The database file it was read from.
    pub database: String,
}

/// A database that was found but could not be read, or read only in part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unread {
    /// The path inside the filesystem.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Everything read from one filesystem.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    /// Packages, sorted by type, name, version and architecture.
    pub packages: Vec<Package>,
    /// Databases found and read.
    pub databases: Vec<String>,
    /// Databases found and not read (or read in part), each with the reason.
    pub unread: Vec<Unread>,
}

/// The distribution, for package URLs: os-release's ID and VERSION_ID.
#[derive(Debug, Clone, Default)]
pub struct Distro {
    /// ID ("debian", "rhel", "alpine").
    pub id: Option<String>,
    /// VERSION_ID ("12", "9.2", "3.18.4").
    pub version_id: Option<String>,
}

/// Largest package database read (a full Fedora rpmdb.sqlite is about 100 MiB).
pub const DATABASE_LIMIT: u64 = 512 << 20;

/// Reads every package database found in `fs`.
pub fn inventory(fs: &dyn Filesystem, distro: &Distro) -> Inventory {
    let mut inv = Inventory::default();
    dpkg::read(fs, distro, &mut inv);
    rpm::read(fs, distro, &mut inv);
    apk::read(fs, distro, &mut inv);
    inv.packages.sort_by(|a, b| {
        (a.kind, &a.name, &a.version, &a.arch).cmp(&(b.kind, &b.name, &b.version, &b.arch))
    });
    inv
}

/// Splits `text` into RFC 822-style stanzas separated by blank lines, as dpkg and
/// apk write them, yielding each stanza's (line number, lines).
fn stanzas(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.split("\n\n")
        .map(|s| s.lines().collect::<Vec<_>>())
        .filter(|l| l.iter().any(|x| !x.trim().is_empty()))
}

/// Whether `path` exists in `fs` as a regular file (following symlinks).
fn exists(fs: &dyn Filesystem, path: &str) -> bool {
    fs.stat(path.as_bytes())
        .is_ok_and(|m| m.kind == imagefs::FileKind::File)
}

/// Reads a database file, or records why it could not be read.
fn read_db(fs: &dyn Filesystem, path: &str, inv: &mut Inventory) -> Option<Vec<u8>> {
    match fs.read_file(path.as_bytes(), DATABASE_LIMIT) {
        Ok(data) => Some(data),
        Err(e) => {
            inv.unread.push(Unread {
                path: path.into(),
                reason: e.to_string(),
            });
            None
        }
    }
}
