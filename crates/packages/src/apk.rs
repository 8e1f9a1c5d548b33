//! Alpine's apk database.

use crate::{exists, purl, read_db, stanzas, Distro, Inventory, Package, PackageType, Unread};
use imagefs::Filesystem;

const INSTALLED: &str = "/lib/apk/db/installed";

pub(crate) fn read(fs: &dyn Filesystem, distro: &Distro, inv: &mut Inventory) {
    if !exists(fs, INSTALLED) {
        return;
    }
    let Some(data) = read_db(fs, INSTALLED, inv) else {
        return;
    };
    let (packages, bad) = parse(&String::from_utf8_lossy(&data), distro);
    inv.packages.extend(packages);
    inv.databases.push(INSTALLED.into());
    if bad > 0 {
        inv.unread.push(Unread {
            path: INSTALLED.into(),
            reason: format!("{bad} entr(ies) without P: or V: were skipped"),
        });
    }
}

/// Packages in an apk `installed` file: stanzas of `X:value` lines.
pub(crate) fn parse(text: &str, distro: &Distro) -> (Vec<Package>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for stanza in stanzas(text) {
        let field = |k: char| {
            stanza.iter().find_map(|l| {
                let mut c = l.chars();
                (c.next() == Some(k) && c.next() == Some(':')).then(|| l[2..].trim())
            })
        };
        let (Some(name), Some(version)) = (field('P'), field('V')) else {
            bad += 1;
            continue;
        };
        let arch = field('A').unwrap_or("").to_string();
        let origin = field('o').map(str::to_string);
        out.push(Package {
            purl: purl(
                PackageType::Apk,
                distro,
                name,
                version,
                &arch,
                None,
                origin.as_deref(),
            ),
            name: name.into(),
            version: version.into(),
            epoch: None,
            arch,
            source: origin,
            kind: PackageType::Apk,
            database: INSTALLED.into(),
        });
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_become_packages_with_their_origin() {
        let text =
            "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\no:musl\nF:lib\nR:libc.musl-x86_64.so.1\n\n\
                    P:busybox\nV:1.36.1-r5\nA:x86_64\no:busybox\n";
        let (p, bad) = parse(text, &Distro::default());
        assert_eq!(bad, 0);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (
                p[0].name.as_str(),
                p[0].version.as_str(),
                p[0].arch.as_str()
            ),
            ("musl", "1.2.4-r2", "x86_64")
        );
        assert_eq!(p[1].source.as_deref(), Some("busybox"));
    }
}
