//! Which package ships each file, and the digest it shipped with: dpkg's
//! `info/*.md5sums` and the `Conffiles:` of its status file. With it the audit tells
//! what the vendor shipped from what was added or changed (`debsums -a` does the
//! same check).
//!
//! Package databases name paths as the package ships them. On a merged-/usr system
//! `/bin` is a symlink to `usr/bin` while packages still list `bin/ls`: every path is
//! resolved through the filesystem's directory symlinks, so it names the file where
//! a walk of the filesystem finds it.

use std::collections::HashMap;

use imagefs::Filesystem;

use crate::{stanzas, Unread, DATABASE_LIMIT};

const DPKG_INFO: &str = "/var/lib/dpkg/info";
const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// The most files the provenance keeps (a full desktop install has about 500,000).
pub const MAX_OWNED_FILES: usize = 4 << 20;

/// The digest a package database records for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// MD5 (dpkg's md5sums and conffiles).
    Md5([u8; 16]),
}

impl Digest {
    /// The hexadecimal form.
    pub fn hex(&self) -> String {
        match self {
            Digest::Md5(d) => d.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// The algorithm's name.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Digest::Md5(_) => "md5",
        }
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

/// Every file the package databases of one filesystem account for, by path.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// Path (resolved, absolute) → what shipped it.
    pub files: HashMap<String, Owned>,
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
pub fn provenance(fs: &dyn Filesystem) -> Provenance {
    let mut out = Provenance::default();
    let mut resolver = Resolver::default();
    dpkg_md5sums(fs, &mut resolver, &mut out);
    dpkg_conffiles(fs, &mut resolver, &mut out);
    out
}

/// Resolves each path's directory through the filesystem's symlinks, once per
/// directory.
#[derive(Default)]
struct Resolver {
    dirs: HashMap<String, Option<String>>,
}

impl Resolver {
    /// The path where a walk finds `path`: its directory resolved inside `fs`.
    fn resolve(&mut self, fs: &dyn Filesystem, path: &str) -> Option<String> {
        let (dir, name) = path.rsplit_once('/')?;
        let dir = if dir.is_empty() { "/" } else { dir };
        let resolved = self
            .dirs
            .entry(dir.to_string())
            .or_insert_with(|| {
                imagefs::resolve(fs, dir.as_bytes())
                    .ok()
                    .map(|p| imagefs::show(&p))
            })
            .as_deref()?;
        Some(if resolved == "/" {
            format!("/{name}")
        } else {
            format!("{resolved}/{name}")
        })
    }
}

fn insert(out: &mut Provenance, path: String, owned: Owned) -> bool {
    if out.files.len() >= MAX_OWNED_FILES && !out.files.contains_key(&path) {
        return false;
    }
    out.files.insert(path, owned);
    true
}

/// `info/PACKAGE[:ARCH].md5sums`: "md5hex  path/without/leading/slash" lines.
fn dpkg_md5sums(fs: &dyn Filesystem, resolver: &mut Resolver, out: &mut Provenance) {
    let Ok(entries) = fs.read_dir(DPKG_INFO.as_bytes()) else {
        return;
    };
    let mut names: Vec<String> = entries
        .iter()
        .filter(|e| e.metadata.kind == imagefs::FileKind::File)
        .map(|e| imagefs::show(&e.name))
        .filter(|n| n.ends_with(".md5sums"))
        .collect();
    names.sort();
    for name in names {
        let path = format!("{DPKG_INFO}/{name}");
        let data = match fs.read_file(path.as_bytes(), DATABASE_LIMIT) {
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
        for line in String::from_utf8_lossy(&data).lines() {
            let Some((hex, file)) = line.split_once("  ") else {
                bad += usize::from(!line.trim().is_empty());
                continue;
            };
            let (Some(digest), Some(file)) =
                (md5_hex(hex), resolver.resolve(fs, &format!("/{file}")))
            else {
                bad += 1;
                continue;
            };
            let owned = Owned {
                package: package.clone(),
                digest: Digest::Md5(digest),
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
            let (Some(digest), Some(file)) = (md5_hex(hex), resolver.resolve(fs, file)) else {
                continue;
            };
            insert(
                out,
                file,
                Owned {
                    package: package.trim().to_string(),
                    digest: Digest::Md5(digest),
                    conffile: true,
                },
            );
        }
    }
    out.databases.push(DPKG_STATUS.into());
}

fn md5_hex(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
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
            md5_hex("00112233445566778899aabbccddeeff").map(|d| Digest::Md5(d).hex()),
            Some("00112233445566778899aabbccddeeff".into())
        );
        assert_eq!(md5_hex("0011"), None);
        assert_eq!(md5_hex("zz112233445566778899aabbccddeeff"), None);
    }
}
