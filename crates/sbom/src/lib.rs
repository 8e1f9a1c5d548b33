//! Software bills of materials for a disk image: CycloneDX 1.6 and SPDX 2.3, JSON.
//!
//! [`Input::from_image`] reads the OS and the installed packages of an image's root
//! filesystem; [`cyclonedx`] and [`spdx`] write them. Both documents validate against
//! their official JSON schemas (the tests check this with the schemas in
//! `tests/data/schemas`). Package URLs are written as syft writes them.

use inspect::{Image, OsRelease};
use packages::{Distro, Package};
use serde_json::{json, Value};
use std::time::SystemTime;

/// What an SBOM describes.
#[derive(Debug, Clone)]
pub struct Input {
    /// The image, as named on the command line.
    pub image: String,
    /// Its OS.
    pub os: Option<OsRelease>,
    /// Installed packages.
    pub packages: Vec<Package>,
    /// Package databases that could not be read, with the reason.
    pub unread: Vec<packages::Unread>,
    /// When the document is created.
    pub created: SystemTime,
}

impl Input {
    /// Reads the OS and packages of `image`'s root filesystem.
    pub fn from_image(image: &Image, name: &str) -> Result<Self, inspect::Error> {
        let report = image.report();
        let mut input = Input {
            image: name.to_string(),
            os: report.os.clone(),
            packages: Vec::new(),
            unread: Vec::new(),
            created: SystemTime::now(),
        };
        if let Some(root) = report.root_partition {
            let fs = image.filesystem(root)?;
            let distro = Distro {
                id: report.os.as_ref().and_then(|o| o.id.clone()),
                version_id: report.os.as_ref().and_then(|o| o.version_id.clone()),
            };
            let inv = packages::inventory(&*fs, &distro);
            input.packages = inv.packages;
            input.unread = inv.unread;
        }
        Ok(input)
    }
}

fn tool_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn uuid_v4() -> String {
    let mut b: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A CycloneDX 1.6 JSON document.
pub fn cyclonedx(input: &Input) -> Value {
    let mut components = Vec::new();
    if let Some(os) = &input.os {
        if let Some(id) = &os.id {
            let mut c = json!({
                "type": "operating-system",
                "bom-ref": format!("os:{id}@{}", os.version_id.as_deref().unwrap_or("")),
                "name": id,
            });
            if let Some(v) = &os.version_id {
                c["version"] = json!(v);
            }
            if let Some(d) = &os.pretty_name {
                c["description"] = json!(d);
            }
            components.push(c);
        }
    }
    for (i, p) in input.packages.iter().enumerate() {
        let mut properties = vec![
            json!({ "name": "amiforge:package:type", "value": p.kind.name() }),
            json!({ "name": "amiforge:package:arch", "value": p.arch }),
            json!({ "name": "amiforge:package:database", "value": p.database }),
        ];
        if let Some(s) = &p.source {
            properties.push(json!({ "name": "amiforge:package:source", "value": s }));
        }
        components.push(json!({
            "type": "library",
            "bom-ref": format!("pkg-{i}:{}", p.purl),
            "name": p.name,
            "version": p.version,
            "purl": p.purl,
            "properties": properties,
        }));
    }
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", uuid_v4()),
        "version": 1,
        "metadata": {
            "timestamp": timestamp(input.created),
            "tools": { "components": [{
                "type": "application",
                "name": "amiforge",
                "version": tool_version(),
            }]},
            "component": {
                "type": "operating-system",
                "bom-ref": "image",
                "name": input.image,
            },
        },
        "components": components,
    })
}

/// SPDX ids allow letters, digits, '.' and '-'.
fn spdx_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// An SPDX 2.3 JSON document.
pub fn spdx(input: &Input) -> Value {
    let image_id = "SPDXRef-Image";
    let mut packages = vec![json!({
        "name": input.image,
        "SPDXID": image_id,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    for (i, p) in input.packages.iter().enumerate() {
        let id = format!("SPDXRef-Package-{}-{}-{i}", p.kind.name(), spdx_id(&p.name));
        let mut pkg = json!({
            "name": p.name,
            "SPDXID": id,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": p.purl,
            }],
        });
        if let Some(s) = &p.source {
            pkg["sourceInfo"] = json!(format!("built from source package {s}"));
        }
        packages.push(pkg);
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": input.image,
        "documentNamespace": format!(
            "https://spdx.org/spdxdocs/amiforge-{}-{}",
            spdx_id(&input.image),
            uuid_v4()
        ),
        "creationInfo": {
            "created": timestamp(input.created),
            "creators": [format!("Tool: amiforge-{}", tool_version())],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
    }

    #[test]
    fn spdx_ids_keep_only_allowed_characters() {
        assert_eq!(spdx_id("libstdc++6:amd64"), "libstdc--6-amd64");
    }
}
