//! Known vulnerabilities, offline.
//!
//! [`Database::import`] loads advisories in the OSV format (a directory of OSV JSON
//! records, a zip of them as osv.dev publishes per ecosystem, or single files) into
//! one SQLite file. [`Database::matches`] finds the advisories that affect the
//! installed packages of an image:
//!
//! - the distribution (os-release) picks the OSV [`ecosystem`] ("Debian:12",
//!   "Alpine:v3.18", "Rocky Linux:9"...);
//! - Debian, Ubuntu and Alpine key advisories by source package, so a binary
//!   package is looked up by its source and compared by the source's version; the
//!   rpm families are looked up by both names;
//! - versions are ordered by the ecosystem's own rules ([`version`]): dpkg's, rpm's
//!   with epochs, `~` and `^`, apk's;
//! - withdrawn advisories match nothing; ranges other than ECOSYSTEM are ignored.
//!
//! The database records when it was imported and the newest `modified` time of its
//! advisories, which is how old its knowledge is ([`Info::newest_advisory`]).

pub mod ecosystem;
pub mod osv;
pub mod version;

pub use ecosystem::Ecosystem;
pub use osv::Rating;

use osv::{Record, Verdict};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Largest OSV record read (the biggest real ones, Linux kernel advisories with
/// hundreds of ranges, are a few hundred KiB).
pub const MAX_RECORD_BYTES: u64 = 16 << 20;
/// Most records one import reads (osv.dev's whole Debian export is about 60,000).
pub const MAX_RECORDS: u64 = 4_000_000;
/// Deepest directory walked under an import path.
const MAX_DEPTH: usize = 16;
/// The schema this code writes and reads.
const SCHEMA: &str = "1";

/// A database or import problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database file cannot be opened, is not one, or is of another schema.
    #[error("vulnerability database {path}: {reason}")]
    Database {
        /// The database file.
        path: String,
        /// Why.
        reason: String,
    },
    /// An import source cannot be read.
    #[error("advisories at {path}: {reason}")]
    Source {
        /// The file or directory.
        path: String,
        /// Why.
        reason: String,
    },
}

fn db_error(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Database {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// What a database holds.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The database file.
    pub path: String,
    /// Advisories in it.
    pub advisories: u64,
    /// When it was last imported into (RFC 3339).
    pub imported_at: String,
    /// The newest `modified` time of its advisories (RFC 3339): how current it is.
    pub newest_advisory: Option<String>,
}

impl Info {
    /// How old the newest advisory is at `now`, when the database has any.
    pub fn age(&self, now: SystemTime) -> Option<std::time::Duration> {
        let newest = humantime::parse_rfc3339_weak(self.newest_advisory.as_deref()?).ok()?;
        Some(now.duration_since(newest).unwrap_or_default())
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportSummary {
    /// Records stored (new or replacing an older copy).
    pub stored: u64,
    /// Withdrawn records, removed from the database.
    pub withdrawn: u64,
    /// Files that were not OSV records, each with the reason (the first 20).
    pub rejected: Vec<String>,
    /// How many files were rejected in all.
    pub rejected_count: u64,
}

/// An opened vulnerability database.
#[derive(Debug, Clone)]
pub struct Database {
    path: PathBuf,
    info: Info,
}

/// One advisory that affects one installed package.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Match {
    /// The advisory's id.
    pub id: String,
    /// Other ids (CVE ids).
    pub aliases: Vec<String>,
    /// Its summary.
    pub summary: Option<String>,
    /// The installed package.
    pub package: String,
    /// Its installed version.
    pub installed: String,
    /// The name the advisory keys it by (its source package, where that is how the
    /// ecosystem keys advisories).
    pub advisory_package: String,
    /// The version compared (the source's version for Debian and Ubuntu).
    pub compared_version: String,
    /// The version that fixes it, when the advisory names one.
    pub fixed: Option<String>,
    /// The rating.
    pub rating: Rating,
    /// Where the rating came from ("CVSS 9.8", "urgency high").
    pub rating_source: String,
    /// The record's ecosystem.
    pub ecosystem: String,
}

/// The outcome of matching one image's packages.
#[derive(Debug, Clone, Default)]
pub struct Matching {
    /// Advisories that affect installed packages, by id then package.
    pub matches: Vec<Match>,
    /// Why matching could not run, when it could not (no OSV ecosystem for the
    /// distribution).
    pub unmatched: Option<String>,
    /// The ecosystem matched against.
    pub ecosystem: Option<Ecosystem>,
}

impl Database {
    /// Opens an existing database read-only and reads what it holds.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(db_error(path))?;
        let info = read_info(&conn, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            info,
        })
    }

    /// What the database holds.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads OSV records from `sources` (directories, zip files, JSON files) into the
    /// database at `path`, creating it when it does not exist. A record replaces an
    /// earlier one with the same id; a withdrawn record removes it.
    pub fn import(path: &Path, sources: &[PathBuf]) -> Result<ImportSummary, Error> {
        let mut conn = Connection::open(path).map_err(db_error(path))?;
        create_schema(&conn, path)?;
        let tx = conn.transaction().map_err(db_error(path))?;
        let mut summary = ImportSummary::default();
        let mut seen = 0u64;
        for source in sources {
            let mut each = |name: String, data: Vec<u8>| -> Result<(), Error> {
                seen += 1;
                if seen > MAX_RECORDS {
                    return Err(Error::Source {
                        path: source.display().to_string(),
                        reason: format!("more than {MAX_RECORDS} records"),
                    });
                }
                store(&tx, path, &name, &data, &mut summary)
            };
            read_source(source, &mut each)?;
        }
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('imported_at', ?1)",
            params![now],
        )
        .map_err(db_error(path))?;
        tx.commit().map_err(db_error(path))?;
        Ok(summary)
    }

    /// Finds the advisories that affect `packages`, installed on the distribution
    /// `distro_id` (os-release ID) release `version_id`.
    pub fn matches(
        &self,
        packages: &[packages::Package],
        distro_id: &str,
        version_id: &str,
    ) -> Result<Matching, Error> {
        let Some(eco) = Ecosystem::for_distro(distro_id, version_id) else {
            return Ok(Matching {
                unmatched: Some(format!(
                    "OSV has no ecosystem for the distribution {distro_id:?} {version_id:?} that amiforge maps"
                )),
                ..Matching::default()
            });
        };
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(db_error(&self.path))?;
        let mut stmt = conn
            .prepare(
                "SELECT f.ecosystem, a.record FROM affected f JOIN advisories a ON a.id = f.id \
                 WHERE f.name = ?1",
            )
            .map_err(db_error(&self.path))?;
        let mut cache: HashMap<String, Option<Record>> = HashMap::new();
        let mut out = Vec::new();
        for p in packages {
            for (name, version) in lookups(&eco, p) {
                let rows: Vec<(String, String)> = stmt
                    .query_map(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect())
                    .map_err(db_error(&self.path))?;
                for (ecosystem, text) in rows {
                    if !eco.covers(&ecosystem) {
                        continue;
                    }
                    let record = cache
                        .entry(text)
                        .or_insert_with_key(|t| serde_json::from_str::<Record>(t).ok());
                    let Some(record) = record.as_ref() else {
                        continue;
                    };
                    if record.withdrawn.is_some() {
                        continue;
                    }
                    let hit = record.affected.iter().find_map(|a| {
                        let pkg = a.package.as_ref()?;
                        if pkg.name != name || pkg.ecosystem != ecosystem {
                            return None;
                        }
                        match a.verdict(eco.scheme, &version) {
                            Verdict::Affected { fixed } => Some((a, fixed)),
                            Verdict::NotAffected => None,
                        }
                    });
                    let Some((affected, fixed)) = hit else {
                        continue;
                    };
                    let (rating, rating_source) = record.rating(affected);
                    out.push(Match {
                        id: record.id.clone(),
                        aliases: record.aliases.clone(),
                        summary: record.summary.clone(),
                        package: p.name.clone(),
                        installed: p.version.clone(),
                        advisory_package: name.clone(),
                        compared_version: version.clone(),
                        fixed,
                        rating,
                        rating_source,
                        ecosystem,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.id, &a.package).cmp(&(&b.id, &b.package)));
        out.dedup_by(|a, b| a.id == b.id && a.package == b.package);
        Ok(Matching {
            matches: out,
            unmatched: None,
            ecosystem: Some(eco),
        })
    }
}

/// The (name, version) pairs under which advisories may name `p`.
fn lookups(eco: &Ecosystem, p: &packages::Package) -> Vec<(String, String)> {
    match eco.scheme {
        version::Scheme::Dpkg => {
            // "glibc@2.36-9": the source and its own version; "glibc": the source at
            // the binary's version.
            let (name, version) = match p.source.as_deref() {
                Some(s) => match s.split_once('@') {
                    Some((n, v)) => (n.to_string(), v.to_string()),
                    None => (s.to_string(), p.version.clone()),
                },
                None => (p.name.clone(), p.version.clone()),
            };
            vec![(name, version)]
        }
        version::Scheme::Apk => {
            vec![(
                p.source.clone().unwrap_or_else(|| p.name.clone()),
                p.version.clone(),
            )]
        }
        version::Scheme::Rpm => {
            let mut out = vec![(p.name.clone(), p.version.clone())];
            if let Some(src) = p.source.as_deref().and_then(rpm_source_name) {
                if src != p.name {
                    out.push((src, p.version.clone()));
                }
            }
            out
        }
    }
}

/// "bash-5.1.8-6.el9.src.rpm" → "bash".
fn rpm_source_name(file: &str) -> Option<String> {
    let stem = file
        .strip_suffix(".src.rpm")
        .or_else(|| file.strip_suffix(".nosrc.rpm"))?;
    let mut parts = stem.rsplitn(3, '-');
    let (_release, _version, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some(name.to_string())
}

fn create_schema(conn: &Connection, path: &Path) -> Result<(), Error> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS advisories (id TEXT PRIMARY KEY, modified TEXT NOT NULL, record TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS affected (ecosystem TEXT NOT NULL, name TEXT NOT NULL, id TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS affected_by_name ON affected(name);
         CREATE INDEX IF NOT EXISTS affected_by_id ON affected(id);",
    )
    .map_err(db_error(path))?;
    let schema: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db_error(path))?;
    match schema {
        None => {
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema', ?1)",
                params![SCHEMA],
            )
            .map_err(db_error(path))?;
            Ok(())
        }
        Some(s) if s == SCHEMA => Ok(()),
        Some(s) => Err(Error::Database {
            path: path.display().to_string(),
            reason: format!("schema {s}, and this amiforge reads schema {SCHEMA}"),
        }),
    }
}

fn read_info(conn: &Connection, path: &Path) -> Result<Info, Error> {
    let meta = |key: &str| -> Result<Option<String>, Error> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db_error(path))
    };
    match meta("schema")? {
        Some(s) if s == SCHEMA => {}
        other => {
            return Err(Error::Database {
                path: path.display().to_string(),
                reason: format!(
                    "schema {}, and this amiforge reads schema {SCHEMA}",
                    other.as_deref().unwrap_or("missing")
                ),
            })
        }
    }
    let advisories: i64 = conn
        .query_row("SELECT count(*) FROM advisories", [], |r| r.get(0))
        .map_err(db_error(path))?;
    // Newest by parsed time: fractional seconds do not sort as text.
    let mut stmt = conn
        .prepare("SELECT modified FROM advisories")
        .map_err(db_error(path))?;
    let mut newest: Option<(SystemTime, String)> = None;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(db_error(path))?;
    for m in rows {
        let m = m.map_err(db_error(path))?;
        if let Ok(t) = humantime::parse_rfc3339_weak(&m) {
            if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                newest = Some((t, m));
            }
        }
    }
    Ok(Info {
        path: path.display().to_string(),
        advisories: advisories as u64,
        imported_at: meta("imported_at")?.unwrap_or_default(),
        newest_advisory: newest.map(|(_, m)| m),
    })
}

/// Stores one file's record, or counts it as rejected.
fn store(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    name: &str,
    data: &[u8],
    summary: &mut ImportSummary,
) -> Result<(), Error> {
    let mut reject = |why: String| {
        summary.rejected_count += 1;
        if summary.rejected.len() < 20 {
            summary.rejected.push(format!("{name}: {why}"));
        }
    };
    let record: Record = match serde_json::from_slice(data) {
        Ok(r) => r,
        Err(e) => {
            reject(format!("not an OSV record: {e}"));
            return Ok(());
        }
    };
    if record.id.is_empty() {
        reject("an OSV record without an id".into());
        return Ok(());
    }
    tx.execute("DELETE FROM affected WHERE id = ?1", params![record.id])
        .map_err(db_error(path))?;
    if record.withdrawn.is_some() {
        tx.execute("DELETE FROM advisories WHERE id = ?1", params![record.id])
            .map_err(db_error(path))?;
        summary.withdrawn += 1;
        return Ok(());
    }
    let text = String::from_utf8_lossy(data);
    tx.execute(
        "INSERT OR REPLACE INTO advisories(id, modified, record) VALUES (?1, ?2, ?3)",
        params![record.id, record.modified, text],
    )
    .map_err(db_error(path))?;
    let mut keys: Vec<(&str, &str)> = record
        .affected
        .iter()
        .filter_map(|a| a.package.as_ref())
        .map(|p| (p.ecosystem.as_str(), p.name.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for (ecosystem, package) in keys {
        tx.execute(
            "INSERT INTO affected(ecosystem, name, id) VALUES (?1, ?2, ?3)",
            params![ecosystem, package, record.id],
        )
        .map_err(db_error(path))?;
    }
    summary.stored += 1;
    Ok(())
}

/// Calls `each(name, bytes)` for every JSON record under `source`.
fn read_source(
    source: &Path,
    each: &mut dyn FnMut(String, Vec<u8>) -> Result<(), Error>,
) -> Result<(), Error> {
    let shown = source.display().to_string();
    let err = |reason: String| Error::Source {
        path: shown.clone(),
        reason,
    };
    let meta = std::fs::metadata(source).map_err(|e| err(e.to_string()))?;
    if meta.is_dir() {
        return walk(source, 0, each);
    }
    let mut file = std::fs::File::open(source).map_err(|e| err(e.to_string()))?;
    let mut magic = [0u8; 4];
    let is_zip = file.read_exact(&mut magic).is_ok() && magic == *b"PK\x03\x04";
    if !is_zip {
        return each(shown.clone(), read_bounded(source)?);
    }
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(source).map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(format!("not a readable zip archive: {e}")))?;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| err(format!("zip entry {i}: {e}")))?;
        if !entry.is_file() || !entry.name().ends_with(".json") {
            continue;
        }
        let name = format!("{shown}:{}", entry.name());
        if entry.size() > MAX_RECORD_BYTES {
            return Err(err(format!(
                "zip entry {} expands to {} bytes, more than the {MAX_RECORD_BYTES} a record may hold",
                entry.name(),
                entry.size()
            )));
        }
        let mut data = Vec::new();
        (&mut entry)
            .take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| err(format!("zip entry {}: {e}", entry.name())))?;
        if data.len() as u64 > MAX_RECORD_BYTES {
            return Err(err(format!(
                "zip entry {} is larger than {MAX_RECORD_BYTES} bytes",
                entry.name()
            )));
        }
        each(name, data)?;
    }
    Ok(())
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, Error> {
    let err = |reason: String| Error::Source {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut data = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| err(e.to_string()))?;
    if data.len() as u64 > MAX_RECORD_BYTES {
        return Err(err(format!(
            "larger than the {MAX_RECORD_BYTES} bytes a record may hold"
        )));
    }
    Ok(data)
}

fn walk(
    dir: &Path,
    depth: usize,
    each: &mut dyn FnMut(String, Vec<u8>) -> Result<(), Error>,
) -> Result<(), Error> {
    let err = |reason: String| Error::Source {
        path: dir.display().to_string(),
        reason,
    };
    if depth > MAX_DEPTH {
        return Err(err(format!("nested deeper than {MAX_DEPTH} directories")));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let kind = e.file_type().map_err(|e| err(e.to_string()))?;
        if kind.is_dir() {
            walk(&path, depth + 1, each)?;
        } else if kind.is_file() && path.extension().is_some_and(|x| x == "json") {
            each(path.display().to_string(), read_bounded(&path)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_source_names_drop_version_release_and_suffix() {
        assert_eq!(
            rpm_source_name("bash-5.1.8-6.el9.src.rpm").as_deref(),
            Some("bash")
        );
        assert_eq!(
            rpm_source_name("openssl-libs-1-1.src.rpm").as_deref(),
            Some("openssl-libs")
        );
        assert_eq!(rpm_source_name("x.rpm"), None);
    }

    #[test]
    fn a_distribution_without_an_osv_ecosystem_is_unmatched_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        Database::import(&path, &[]).unwrap();
        let db = Database::open(&path).unwrap();
        let pkg = packages::Package {
            name: "bash".into(),
            version: "5.2.26-3.fc40".into(),
            epoch: None,
            arch: "x86_64".into(),
            source: None,
            kind: packages::PackageType::Rpm,
            purl: String::new(),
            database: "/var/lib/rpm/rpmdb.sqlite".into(),
        };
        let m = db.matches(&[pkg], "fedora", "40").unwrap();
        assert!(m.matches.is_empty());
        assert!(m.unmatched.unwrap().contains("fedora"));
    }
}
