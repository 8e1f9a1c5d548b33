//! Package URLs, in syft's shape: qualifiers arch, epoch, upstream, distro.

use crate::{Distro, PackageType};

/// The package URL of a package.
pub fn purl(
    kind: PackageType,
    distro: &Distro,
    name: &str,
    version: &str,
    arch: &str,
    epoch: Option<u32>,
    upstream: Option<&str>,
) -> String {
    let namespace = match (kind, distro.id.as_deref()) {
        // syft writes Red Hat's packages under "redhat", whatever os-release says.
        (PackageType::Rpm, Some("rhel")) => "redhat".to_string(),
        (_, Some(id)) => id.to_string(),
        (PackageType::Deb, None) => "debian".into(),
        (PackageType::Rpm, None) => "rpm".into(),
        (PackageType::Apk, None) => "alpine".into(),
    };
    let mut s = format!(
        "pkg:{}/{}/{}@{}",
        kind.name(),
        escape(&namespace, SEGMENT),
        escape(name, SEGMENT),
        escape(version, SEGMENT)
    );
    let mut qualifiers: Vec<(&str, String)> = Vec::new();
    if !arch.is_empty() {
        qualifiers.push(("arch", arch.to_string()));
    }
    if let Some(e) = epoch {
        qualifiers.push(("epoch", e.to_string()));
    }
    if let Some(u) = upstream {
        qualifiers.push(("upstream", u.to_string()));
    }
    if let (Some(id), Some(v)) = (&distro.id, &distro.version_id) {
        qualifiers.push(("distro", format!("{id}-{v}")));
    }
    for (i, (k, v)) in qualifiers.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(k);
        s.push('=');
        s.push_str(&escape(v, QUALIFIER));
    }
    s
}

/// Characters left as they are in a name or version (RFC 3986 pchar minus '@').
const SEGMENT: &str = "-._~:+!$'()*,;=";
/// Characters left as they are in a qualifier value.
const QUALIFIER: &str = "-._~:/";

fn escape(s: &str, keep: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.as_bytes().contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distro(id: &str, v: &str) -> Distro {
        Distro {
            id: Some(id.into()),
            version_id: Some(v.into()),
        }
    }

    #[test]
    fn deb_purls_look_like_syfts() {
        assert_eq!(
            purl(
                PackageType::Deb,
                &distro("debian", "12"),
                "openssl",
                "3.0.11-1~deb12u2",
                "amd64",
                None,
                None
            ),
            "pkg:deb/debian/openssl@3.0.11-1~deb12u2?arch=amd64&distro=debian-12"
        );
    }

    #[test]
    fn rpm_purls_carry_the_epoch_and_use_redhat_for_rhel() {
        assert_eq!(
            purl(
                PackageType::Rpm,
                &distro("rhel", "9.2"),
                "bash",
                "5.1.8-6.el9",
                "x86_64",
                Some(1),
                None
            ),
            "pkg:rpm/redhat/bash@5.1.8-6.el9?arch=x86_64&epoch=1&distro=rhel-9.2"
        );
    }

    #[test]
    fn apk_purls_and_escaping() {
        assert_eq!(
            purl(
                PackageType::Apk,
                &distro("alpine", "3.18.4"),
                "musl",
                "1.2.4-r2",
                "x86_64",
                None,
                Some("musl")
            ),
            "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&upstream=musl&distro=alpine-3.18.4"
        );
        assert_eq!(escape("a b@c", SEGMENT), "a%20b%40c");
    }
}
