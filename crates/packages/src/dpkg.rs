//! dpkg's status database.

use crate::{exists, purl, read_db, stanzas, Distro, Inventory, Package, PackageType, Unread};
use imagefs::Filesystem;

const STATUS: &str = "/var/lib/dpkg/status";
const STATUS_D: &str = "/var/lib/dpkg/status.d";

pub(crate) fn read(fs: &dyn Filesystem, distro: &Distro, inv: &mut Inventory) {
    if exists(fs, STATUS) {
        if let Some(data) = read_db(fs, STATUS, inv) {
            parse_into(&data, STATUS, distro, inv);
        }
    }
    // Distroless images keep one file per package here instead.
    if let Ok(entries) = fs.read_dir(STATUS_D.as_bytes()) {
        let mut names: Vec<_> = entries
            .into_iter()
            .filter(|e| e.metadata.kind == imagefs::FileKind::File)
            .map(|e| e.name)
            .collect();
        names.sort();
        for name in names {
            let path = format!("{STATUS_D}/{}", imagefs::show(&name));
            // .md5sums files sit beside the stanzas.
            if path.ends_with(".md5sums") {
                continue;
            }
            if let Some(data) = read_db(fs, &path, inv) {
                parse_into(&data, &path, distro, inv);
            }
        }
    }
}

fn parse_into(data: &[u8], path: &str, distro: &Distro, inv: &mut Inventory) {
    let text = String::from_utf8_lossy(data);
    let (packages, problems) = parse(&text, path, distro);
    inv.packages.extend(packages);
    inv.databases.push(path.to_string());
    if problems > 0 {
        inv.unread.push(Unread {
            path: path.into(),
            reason: format!("{problems} stanza(s) without Package or Version were skipped"),
        });
    }
}

/// The installed packages in a status file, and the count of malformed stanzas.
pub(crate) fn parse(text: &str, path: &str, distro: &Distro) -> (Vec<Package>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for stanza in stanzas(text) {
        let field = |name: &str| -> Option<&str> {
            stanza.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then_some(v.trim())
            })
        };
        // status.d files have no Status field: every stanza there is installed.
        if let Some(status) = field("Status") {
            if status.split_whitespace().nth(2) != Some("installed") {
                continue;
            }
        }
        let (Some(name), Some(version)) = (field("Package"), field("Version")) else {
            bad += 1;
            continue;
        };
        let arch = field("Architecture").unwrap_or("").to_string();
        // "Source: glibc (2.36-9)" names the source package and its own version.
        let source = field("Source").map(|s| match s.split_once(' ') {
            Some((n, v)) => format!("{n}@{}", v.trim_matches(|c| c == '(' || c == ')')),
            None => s.to_string(),
        });
        let upstream = source.as_deref();
        out.push(Package {
            purl: purl(
                PackageType::Deb,
                distro,
                name,
                version,
                &arch,
                None,
                upstream,
            ),
            name: name.to_string(),
            version: version.to_string(),
            epoch: None,
            arch,
            source: source.clone(),
            kind: PackageType::Deb,
            database: path.to_string(),
        });
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_stanzas_count_and_source_versions_are_kept() {
        let text = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n\
                    Source: glibc (2.36-9)\nVersion: 2.36-9+deb12u4\nDescription: x\n more\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                    Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nArchitecture: amd64\n";
        let d = Distro {
            id: Some("debian".into()),
            version_id: Some("12".into()),
        };
        let (p, bad) = parse(text, STATUS, &d);
        assert_eq!(bad, 0);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "libc6");
        assert_eq!(p[0].source.as_deref(), Some("glibc@2.36-9"));
        assert_eq!(
            p[0].purl,
            "pkg:deb/debian/libc6@2.36-9+deb12u4?arch=amd64&upstream=glibc%402.36-9&distro=debian-12"
        );
        assert_eq!(p[1].version, "5.2.15-2+b2");
    }
}
