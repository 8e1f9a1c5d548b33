//! Which package ships each file, and the digest it shipped with: dpkg's
//! `info/*.md5sums` and the `Conffiles:` of its status file, and the file lists of
//! rpm's headers (digests in MD5 or SHA-2, `%config` flags; `%ghost` files are not
//! shipped and are left out). With it the audit tells what the vendor shipped from
//! what was added or changed (`debsums -a` and `rpm -V` do the same check).
//!
//! Package databases name paths as the package ships them. On a merged-/usr system
//! `/bin` is a symlink to `usr/bin` while packages still list `bin/ls`: every path is
//! resolved through the filesystem's directory symlinks, so it names the file where
//! a walk of the filesystem finds it.

use std::collections::HashMap;
use std::io::Read;

use imagefs::Filesystem;

use crate::{rpm, stanzas, Unread, DATABASE_LIMIT};

const DPKG_INFO: &str = "/var/lib/dpkg/info";
const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// Linux's PATH_MAX: a longer path names no file (and its directories are
/// resolved one level of recursion per component).
const PATH_MAX: usize = 4096;
/// The most files the provenance keeps (a full desktop install has about 500,000).
pub const MAX_OWNED_FILES: usize = 4 << 20;

/// The digest a package database records for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// MD5 (dpkg's md5sums and conffiles; old rpm packages).
    Md5([u8; 16]),
    /// SHA-1 (apk's `Z:Q1`).
    Sha1([u8; 20]),
    /// SHA-256 (rpm's default).
    Sha256([u8; 32]),
    /// SHA-384 (rpm).
    Sha384([u8; 48]),
    /// SHA-512 (rpm).
    Sha512([u8; 64]),
}

impl Digest {
    /// The digest's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Digest::Md5(d) => d,
            Digest::Sha1(d) => d,
            Digest::Sha256(d) => d,
            Digest::Sha384(d) => d,
            Digest::Sha512(d) => d,
        }
    }

    /// The hexadecimal form.
    pub fn hex(&self) -> String {
        self.bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The algorithm's name.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Digest::Md5(_) => "md5",
            Digest::Sha1(_) => "sha1",
            Digest::Sha256(_) => "sha256",
            Digest::Sha384(_) => "sha384",
            Digest::Sha512(_) => "sha512",
        }
    }

    /// Parses `hex` as a digest of the named algorithm.
    fn parse(algorithm: &str, hex: &str) -> Option<Self> {
        Some(match algorithm {
            "md5" => Digest::Md5(from_hex(hex)?),
            "sha256" => Digest::Sha256(from_hex(hex)?),
            "sha384" => Digest::Sha384(from_hex(hex)?),
            "sha512" => Digest::Sha512(from_hex(hex)?),
            _ => return None,
        })
    }
}

/// What the package database says of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// The package that ships it.
    pub package: String,
    /// The digest it shipped with.
    pub digest: Digest,
    /// A configuration file: the administrator is expected to change it.
    pub conffile: bool,
}

/// Path → what shipped it.
pub type Files = HashMap<String, Owned, foldhash::fast::RandomState>;

/// Every file the package databases of one filesystem account for, by path.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// Path (resolved, absolute) → what shipped it.
    pub files: Files,
    /// Databases read.
    pub databases: Vec<String>,
    /// Databases found and not read (or read in part), each with the reason.
    pub unread: Vec<Unread>,
}

impl Provenance {
    /// What shipped the file at `path` (as a walk names it), if a package did.
    pub fn owner(&self, path: &str) -> Option<&Owned> {
        self.files.get(path)
    }
}

/// Reads the file lists of every package database found in `fs`.
///
/// `walked_dir` says whether a path (as [`imagefs::show`] writes it) is a directory
/// that a walk of `fs` reached: no component of such a path is a symlink, so it
/// names itself, and the files listed under it need no lookups to be resolved. It
/// may say `false` for everything; every path is then resolved in `fs`.
pub fn provenance(fs: &dyn Filesystem, walked_dir: &dyn Fn(&str) -> bool) -> Provenance {
    let mut out = Provenance::default();
    let mut resolver = Resolver {
        walked_dir,
        dirs: HashMap::default(),
    };
    dpkg_md5sums(fs, &mut resolver, &mut out);
    dpkg_conffiles(fs, &mut resolver, &mut out);
    rpm_files(fs, &mut resolver, &mut out);
    apk_files(fs, &mut resolver, &mut out);
    out
}

/// Resolves each path's directory through the filesystem's symlinks, once per
/// directory, and not at all for a directory the walk reached.
struct Resolver<'a> {
    walked_dir: &'a dyn Fn(&str) -> bool,
    dirs: HashMap<String, Option<String>, foldhash::fast::RandomState>,
}

impl Resolver<'_> {
    /// The path where a walk finds `path`: its directory resolved inside `fs`.
    fn resolve(&mut self, fs: &dyn Filesystem, path: &str) -> Option<String> {
        if path.len() > PATH_MAX {
            return None;
        }
        let (dir, name) = path.rsplit_once('/')?;
        if dir.is_empty() || (self.walked_dir)(dir) {
            return Some(path.to_string());
        }
        let resolved = self.resolve_dir(fs, dir)?;
        Some(if resolved == "/" {
            format!("/{name}")
        } else {
            format!("{resolved}/{name}")
        })
    }

    /// `dir` resolved inside `fs`, from its parent's resolution: a directory
    /// under a symlink (`/lib/modules/…` on a merged-/usr system) costs a lookup
    /// of the symlink once, not one of each of its components.
    fn resolve_dir(&mut self, fs: &dyn Filesystem, dir: &str) -> Option<String> {
        if dir.is_empty() || dir == "/" || (self.walked_dir)(dir) {
            return Some(if dir.is_empty() {
                "/".into()
            } else {
                dir.into()
            });
        }
        if let Some(known) = self.dirs.get(dir) {
            return known.clone();
        }
        let (parent, name) = dir.rsplit_once('/')?;
        let candidate = match self.resolve_dir(fs, parent) {
            Some(p) if p == "/" => format!("/{name}"),
            Some(p) => format!("{p}/{name}"),
            None => dir.to_string(),
        };
        let resolved = if (self.walked_dir)(&candidate) {
            Some(candidate)
        } else {
            imagefs::resolve(fs, candidate.as_bytes())
                .ok()
                .map(|p| imagefs::show(&p))
        };
        self.dirs.insert(dir.to_string(), resolved.clone());
        resolved
    }

    /// Reads a database file, `size` bytes long by its directory's listing, at
    /// most `DATABASE_LIMIT`; in a walked directory without looking it up again.
    fn read(&self, fs: &dyn Filesystem, path: &str, size: u64) -> imagefs::Result<Vec<u8>> {
        let walked = path
            .rsplit_once('/')
            .is_some_and(|(dir, _)| (self.walked_dir)(dir));
        if !walked || size > DATABASE_LIMIT {
            return fs.read_file(path.as_bytes(), DATABASE_LIMIT);
        }
        let mut data = Vec::with_capacity(size as usize);
        fs.open_walked(path.as_bytes())?
            .take(DATABASE_LIMIT + 1)
            .read_to_end(&mut data)
            .map_err(|e| imagefs::Error::Read {
                path: path.to_string(),
                source: Box::new(e),
            })?;
        if data.len() as u64 > DATABASE_LIMIT {
            return Err(imagefs::Error::TooLarge {
                path: path.to_string(),
                size: data.len() as u64,
                limit: DATABASE_LIMIT,
            });
        }
        Ok(data)
    }
}

fn insert(out: &mut Provenance, path: String, owned: Owned) -> bool {
    if out.files.len() >= MAX_OWNED_FILES && !out.files.contains_key(&path) {
        return false;
    }
    out.files.insert(path, owned);
    true
}

/// The bytes of a typical md5sums line, to size the map of package files by.
const MD5SUMS_LINE_TYPICAL: u64 = 64;
/// At most this many package files are made room for before they are read: more
/// than a server's root holds (a Debian cloud image has 12,000), in about 15 MiB
/// (hashbrown's 131,072 buckets of 121 bytes); a larger set grows as it fills.
const OWNED_FILES_RESERVED_MAX: usize = 1 << 16;

/// `info/PACKAGE[:ARCH].md5sums`: "md5hex  path/without/leading/slash" lines.
fn dpkg_md5sums(fs: &dyn Filesystem, resolver: &mut Resolver, out: &mut Provenance) {
    let Ok(entries) = fs.read_dir(DPKG_INFO.as_bytes()) else {
        return;
    };
    let mut names: Vec<(String, u64)> = entries
        .iter()
        .filter(|e| e.metadata.kind == imagefs::FileKind::File)
        .map(|e| (imagefs::show(&e.name), e.metadata.size))
        .filter(|(n, _)| n.ends_with(".md5sums"))
        .collect();
    names.sort();
    // Room for every line at once (a line is 32 hex digits, two spaces and a path
    // of some 40 bytes), so that the map is not rehashed as it grows; sizes are
    // what the image says, so the room set aside is bounded.
    let lines = (names.iter()).fold(0u64, |n, (_, size)| {
        n.saturating_add(size / MD5SUMS_LINE_TYPICAL)
    });
    let room = usize::try_from(lines).unwrap_or(usize::MAX);
    out.files.reserve(room.min(OWNED_FILES_RESERVED_MAX));
    for (name, size) in names {
        let path = format!("{DPKG_INFO}/{name}");
        let data = match resolver.read(fs, &path, size) {
            Ok(d) => d,
            Err(e) => {
                out.unread.push(Unread {
                    path,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let stem = name.trim_end_matches(".md5sums");
        let package = stem.split_once(':').map_or(stem, |(p, _)| p).to_string();
        let mut bad = 0usize;
        let mut absolute = String::new();
        for line in String::from_utf8_lossy(&data).lines() {
            let Some((hex, file)) = line.split_once("  ") else {
                bad += usize::from(!line.trim().is_empty());
                continue;
            };
            absolute.clear();
            absolute.push('/');
            absolute.push_str(file);
            let (Some(digest), Some(file)) =
                (Digest::parse("md5", hex), resolver.resolve(fs, &absolute))
            else {
                bad += 1;
                continue;
            };
            let owned = Owned {
                package: package.clone(),
                digest,
                conffile: false,
            };
            if !insert(out, file, owned) {
                out.unread.push(Unread {
                    path: path.clone(),
                    reason: format!("more than {MAX_OWNED_FILES} package files: the rest not kept"),
                });
                return;
            }
        }
        if bad > 0 {
            out.unread.push(Unread {
                path: path.clone(),
                reason: format!("{bad} line(s) without a digest and a path were skipped"),
            });
        }
        out.databases.push(path);
    }
}

/// The status file's `Conffiles:` fields: " /etc/path md5hex [obsolete]" lines.
fn dpkg_conffiles(fs: &dyn Filesystem, resolver: &mut Resolver, out: &mut Provenance) {
    let Ok(data) = fs.read_file(DPKG_STATUS.as_bytes(), DATABASE_LIMIT) else {
        return;
    };
    let text = String::from_utf8_lossy(&data);
    for stanza in stanzas(&text) {
        let Some(package) = stanza.iter().find_map(|l| l.strip_prefix("Package:")) else {
            continue;
        };
        let installed = stanza
            .iter()
            .any(|l| l.starts_with("Status:") && l.ends_with(" installed"));
        if !installed {
            continue;
        }
        let Some(at) = stanza.iter().position(|l| l.starts_with("Conffiles:")) else {
            continue;
        };
        for line in stanza[at + 1..].iter().take_while(|l| l.starts_with(' ')) {
            let mut words = line.split_whitespace();
            let (Some(file), Some(hex)) = (words.next(), words.next()) else {
                continue;
            };
            // "newconffile" marks one not yet installed; obsolete ones are gone.
            if words.next() == Some("obsolete") {
                continue;
            }
            let (Some(digest), Some(file)) =
                (Digest::parse("md5", hex), resolver.resolve(fs, file))
            else {
                continue;
            };
            insert(
                out,
                file,
                Owned {
                    package: package.trim().to_string(),
                    digest,
                    conffile: true,
                },
            );
        }
    }
    out.databases.push(DPKG_STATUS.into());
}

/// The file lists in the headers of each rpm database.
fn rpm_files(fs: &dyn Filesystem, resolver: &mut Resolver, out: &mut Provenance) {
    for db in rpm::sqlite_databases(fs) {
        let (blobs, mut bad) = match rpm::blobs(fs, &db) {
            Ok(b) => b,
            Err(reason) => {
                out.unread.push(Unread { path: db, reason });
                continue;
            }
        };
        let mut unchecked: Vec<String> = Vec::new();
        let mut full = false;
        for blob in blobs {
            let Ok(list) = rpm::FileList::parse(&blob) else {
                bad += 1;
                continue;
            };
            let Some(algorithm) = rpm::algorithm_name(list.algorithm) else {
                unchecked.push(format!(
                    "{} (digest algorithm {})",
                    list.package, list.algorithm
                ));
                continue;
            };
            for f in list.files {
                let (Some(digest), Some(path)) = (
                    Digest::parse(algorithm, &f.digest),
                    resolver.resolve(fs, &f.path),
                ) else {
                    bad += 1;
                    continue;
                };
                let owned = Owned {
                    package: list.package.clone(),
                    digest,
                    conffile: f.config,
                };
                full |= !insert(out, path, owned);
            }
        }
        if bad > 0 {
            out.unread.push(Unread {
                path: db.clone(),
                reason: format!("{bad} package header(s) or file entries could not be read"),
            });
        }
        if !unchecked.is_empty() {
            out.unread.push(Unread {
                path: db.clone(),
                reason: format!(
                    "file digests not checked, in an algorithm amiforge does not compute: {}",
                    unchecked.join(", ")
                ),
            });
        }
        if full {
            out.unread.push(Unread {
                path: db.clone(),
                reason: format!("more than {MAX_OWNED_FILES} package files: the rest not kept"),
            });
        }
        out.databases.push(db);
    }
}

const APK_INSTALLED: &str = "/lib/apk/db/installed";

/// apk's `installed`: per package (`P:`), directories (`F:`), their files (`R:`) and
/// each file's checksum (`Z:Q1` and base64 SHA-1, or `Z:Q2` and base64 SHA-256).
/// apk records no configuration flag: files under /etc are its protected paths, and
/// count as configuration files. Entries that are symbolic links in the filesystem
/// (apk records the link's target's checksum) are left out.
fn apk_files(fs: &dyn Filesystem, resolver: &mut Resolver, out: &mut Provenance) {
    use base64::Engine as _;
    let Ok(data) = fs.read_file(APK_INSTALLED.as_bytes(), DATABASE_LIMIT) else {
        return;
    };
    let text = String::from_utf8_lossy(&data);
    let mut bad = 0usize;
    let mut full = false;
    let mut kinds: HashMap<String, HashMap<String, imagefs::FileKind>> = HashMap::new();
    for stanza in stanzas(&text) {
        let mut package = String::new();
        let mut dir = String::new();
        let mut file: Option<String> = None;
        for line in stanza {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "P" => package = value.to_string(),
                "F" => dir = value.to_string(),
                "R" => file = Some(value.to_string()),
                "Z" => {
                    let Some(name) = file.take() else { continue };
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let digest = match value.get(..2) {
                        Some("Q1") => b64
                            .decode(&value[2..])
                            .ok()
                            .and_then(|d| d.try_into().ok())
                            .map(Digest::Sha1),
                        Some("Q2") => b64
                            .decode(&value[2..])
                            .ok()
                            .and_then(|d| d.try_into().ok())
                            .map(Digest::Sha256),
                        _ => None,
                    };
                    let path = format!("/{dir}/{name}").replace("//", "/");
                    let (Some(digest), Some(resolved)) = (digest, resolver.resolve(fs, &path))
                    else {
                        bad += 1;
                        continue;
                    };
                    let (parent, base) = resolved.rsplit_once('/').unwrap_or(("", &resolved));
                    let listing = kinds.entry(parent.to_string()).or_insert_with(|| {
                        let shown = if parent.is_empty() { "/" } else { parent };
                        fs.read_dir(shown.as_bytes())
                            .map(|entries| {
                                entries
                                    .into_iter()
                                    .map(|e| (imagefs::show(&e.name), e.metadata.kind))
                                    .collect()
                            })
                            .unwrap_or_default()
                    });
                    if listing
                        .get(base)
                        .is_some_and(|k| *k == imagefs::FileKind::Symlink)
                    {
                        continue;
                    }
                    let owned = Owned {
                        package: package.clone(),
                        digest,
                        conffile: resolved.starts_with("/etc/"),
                    };
                    full |= !insert(out, resolved, owned);
                }
                _ => {}
            }
        }
    }
    if bad > 0 {
        out.unread.push(Unread {
            path: APK_INSTALLED.into(),
            reason: format!("{bad} file checksum(s) could not be read"),
        });
    }
    if full {
        out.unread.push(Unread {
            path: APK_INSTALLED.into(),
            reason: format!("more than {MAX_OWNED_FILES} package files: the rest not kept"),
        });
    }
    out.databases.push(APK_INSTALLED.into());
}

/// `N` bytes from exactly `2N` hex digits.
fn from_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_digests_are_32_hex_digits() {
        assert_eq!(
            Digest::parse("md5", "00112233445566778899aabbccddeeff").map(|d| d.hex()),
            Some("00112233445566778899aabbccddeeff".into())
        );
        assert_eq!(Digest::parse("md5", "0011"), None);
        assert_eq!(
            Digest::parse("md5", "zz112233445566778899aabbccddeeff"),
            None
        );
    }
}
