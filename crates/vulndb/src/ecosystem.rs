//! Which OSV ecosystem holds the advisories of an installed distribution, and how
//! its advisories name packages and versions.

use crate::version::Scheme;

/// The OSV ecosystem of one distribution release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ecosystem {
    /// The ecosystem's family, the part of OSV's `ecosystem` before the first colon
    /// ("Debian", "Alpine", "Rocky Linux").
    pub family: &'static str,
    /// The release as that family writes it ("12", "v3.18", "9", "22.04").
    pub release: String,
    /// Its version ordering.
    pub scheme: Scheme,
}

impl Ecosystem {
    /// The ecosystem for os-release's ID and VERSION_ID, when OSV has one.
    pub fn for_distro(id: &str, version_id: &str) -> Option<Self> {
        let major = version_id.split('.').next().unwrap_or("").to_string();
        let (family, release, scheme) = match id {
            "debian" => ("Debian", major, Scheme::Dpkg),
            "ubuntu" => ("Ubuntu", version_id.to_string(), Scheme::Dpkg),
            "alpine" => {
                let minor: Vec<&str> = version_id.split('.').take(2).collect();
                ("Alpine", format!("v{}", minor.join(".")), Scheme::Apk)
            }
            "rocky" => ("Rocky Linux", major, Scheme::Rpm),
            "almalinux" => ("AlmaLinux", major, Scheme::Rpm),
            "rhel" => ("Red Hat", major, Scheme::Rpm),
            _ => return None,
        };
        if release.is_empty() || release == "v" {
            return None;
        }
        Some(Self {
            family,
            release,
            scheme,
        })
    }

    /// Whether a record's `ecosystem` ("Debian:12", "Ubuntu:22.04:LTS",
    /// "Red Hat:enterprise_linux:9::appstream") covers this release. An ecosystem
    /// without a release covers them all.
    pub fn covers(&self, ecosystem: &str) -> bool {
        let mut parts = ecosystem.split(':');
        if parts.next() != Some(self.family) {
            return false;
        }
        let rest: Vec<&str> = parts.collect();
        if rest.is_empty() {
            return true;
        }
        let major = |s: &str| s.split('.').next().unwrap_or("").to_string();
        match self.family {
            "Ubuntu" => rest.contains(&self.release.as_str()),
            "Red Hat" => rest.get(1).is_some_and(|r| major(r) == self.release),
            "Rocky Linux" | "AlmaLinux" | "Debian" => major(rest[0]) == self.release,
            _ => rest[0] == self.release,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_map_to_the_ecosystems_osv_publishes() {
        let d = Ecosystem::for_distro("debian", "12").unwrap();
        assert!(d.covers("Debian:12"));
        assert!(d.covers("Debian"));
        assert!(!d.covers("Debian:11"));
        assert!(!d.covers("Ubuntu:12"));
        let a = Ecosystem::for_distro("alpine", "3.18.4").unwrap();
        assert!(a.covers("Alpine:v3.18"));
        assert!(!a.covers("Alpine:v3.19"));
        let u = Ecosystem::for_distro("ubuntu", "22.04").unwrap();
        assert!(u.covers("Ubuntu:22.04:LTS"));
        assert!(u.covers("Ubuntu:Pro:22.04:LTS"));
        let r = Ecosystem::for_distro("rhel", "9.3").unwrap();
        assert!(r.covers("Red Hat:enterprise_linux:9::appstream"));
        assert!(!r.covers("Red Hat:enterprise_linux:8::appstream"));
        assert!(Ecosystem::for_distro("rocky", "9.3")
            .unwrap()
            .covers("Rocky Linux:9"));
        assert_eq!(Ecosystem::for_distro("amzn", "2023"), None);
    }
}
