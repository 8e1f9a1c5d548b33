//! Packages and SBOMs, checked against the package managers' own tools: a Debian root
//! made by debootstrap against `dpkg-query`, an rpm database made by `rpm` against
//! `rpm -qa`; the SBOMs against the official CycloneDX schema and SPDX's validator.
//! Also the hygiene findings on that real Debian root.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Byte offset of the Debian fixture's root partition (sgdisk -n 1:1M:0).
const DEBIAN_ROOT_OFFSET_SECTORS: &str = "2048";

fn audit(image: &Path) -> Value {
    let (code, stdout, stderr) =
        outcome(
            amiforge()
                .arg("audit")
                .arg(image)
                .args(["--format", "json", "--fail-on", "none"]),
        );
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn package_set(report: &Value, kind: &str) -> BTreeSet<(String, String, String)> {
    report["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == kind)
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
                p["arch"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn debian_packages_equal_dpkg_query_on_the_same_status_file() {
    let image = fixture("debian-bookworm.img");
    let report = audit(&image);
    // The status file, read out of the image by sleuthkit (not by amiforge).
    let inode = String::from_utf8(tool_output(
        tool("ifind")
            .args([
                "-o",
                DEBIAN_ROOT_OFFSET_SECTORS,
                "-n",
                "var/lib/dpkg/status",
            ])
            .arg(&image),
    ))
    .unwrap();
    let status = tool_output(
        tool("icat")
            .args(["-o", DEBIAN_ROOT_OFFSET_SECTORS])
            .arg(&image)
            .arg(inode.trim()),
    );
    let admin = Scratch::new("dpkg-admin");
    std::fs::write(admin.path("status"), status).unwrap();
    let listed = String::from_utf8(tool_output(
        tool("dpkg-query")
            .arg(format!("--admindir={}", admin.0.display()))
            .args([
                "-W",
                "-f=${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n",
            ]),
    ))
    .unwrap();
    let expected: BTreeSet<(String, String, String)> = listed
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0] == "installed").then(|| (f[1].into(), f[2].into(), f[3].into()))
        })
        .collect();
    assert!(
        expected.len() > 80,
        "debootstrap installed {}",
        expected.len()
    );
    assert_eq!(package_set(&report, "deb"), expected);
    let libc = report["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "libc6")
        .unwrap();
    let purl = libc["purl"].as_str().unwrap();
    assert!(purl.starts_with("pkg:deb/debian/libc6@"), "{purl}");
    assert!(
        purl.contains("arch=amd64") && purl.ends_with("&distro=debian-12"),
        "{purl}"
    );
    assert!(purl.contains("upstream=glibc"), "{purl}");
}

#[test]
fn hygiene_on_a_real_debian_root_finds_the_host_keys_debootstrap_generated() {
    let report = audit(&fixture("debian-bookworm.img"));
    let paths = |rule: &str| -> BTreeSet<String> {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["rule"] == rule)
            .map(|f| f["path"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let keys = paths("hygiene.ssh-host-key");
    for kind in ["rsa", "ecdsa", "ed25519"] {
        assert!(
            keys.contains(&format!("/etc/ssh/ssh_host_{kind}_key")),
            "{keys:?}"
        );
    }
    assert!(paths("secret.private-key-openssh").contains("/etc/ssh/ssh_host_ed25519_key"));
    assert!(!paths("hygiene.ssh-password-authentication").is_empty());
    assert!(paths("hygiene.account-file-backup").contains("/etc/shadow-"));
    // A root whose password is locked is not a finding.
    assert!(paths("hygiene.root-password-set").is_empty());
    assert_eq!(report["os"]["id"], "debian");
}

fn validate(kind: &str, doc: &Path) -> (bool, String) {
    let venv = std::env::var("AMIFORGE_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/amiforge/venv", std::env::var("HOME").unwrap()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(format!("{venv}/bin/python"))
        .arg(root.join("tests/support/validate_sbom.py"))
        .arg(kind)
        .arg(doc)
        .arg(root.join("tests/data/schemas/cyclonedx"))
        .output()
        .expect("the test venv's python runs (scripts/install-deps.sh makes it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn sboms_validate_with_the_formats_own_schema_and_tools() {
    let image = fixture("debian-bookworm.img");
    let dir = Scratch::new("sbom");
    for (format, kind) in [("cyclonedx-json", "cyclonedx"), ("spdx-json", "spdx")] {
        let doc = dir.path(&format!("{kind}.json"));
        let (code, _, stderr) = outcome(
            amiforge()
                .arg("sbom")
                .arg(&image)
                .args(["--format", format, "--output"])
                .arg(&doc),
        );
        assert_eq!(code, Some(0), "{stderr}");
        let (valid, why) = validate(kind, &doc);
        assert!(valid, "{kind}: {why}");
        let v: Value = serde_json::from_slice(&std::fs::read(&doc).unwrap()).unwrap();
        let text = v.to_string();
        assert!(text.contains("pkg:deb/debian/libc6@"), "{kind} lists libc6");
        // The validators are not rubber stamps: a broken document is refused.
        let mut broken = v.clone();
        match kind {
            "cyclonedx" => broken["components"][1]["type"] = Value::from("widget"),
            _ => broken["spdxVersion"] = Value::from("SPDX-9.9"),
        }
        let bad = dir.path(&format!("{kind}-broken.json"));
        std::fs::write(&bad, broken.to_string()).unwrap();
        assert!(
            !validate(kind, &bad).0,
            "{kind}: a broken document validated"
        );
    }
}

/// Builds an rpm with rpmbuild from a minimal spec.
fn rpm(top: &Path, name: &str, epoch: Option<u32>, version: &str, release: &str, arch: &str) {
    let spec = top.join(format!("{name}.spec"));
    let epoch = epoch.map(|e| format!("Epoch: {e}\n")).unwrap_or_default();
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: {release}\n{epoch}Summary: test\n\
             License: MIT\nBuildArch: {arch}\n%description\ntest\n%files\n"
        ),
    )
    .unwrap();
    tool_output(
        tool("rpmbuild")
            .args(["-bb", "--quiet", "--define"])
            .arg(format!("_topdir {}", top.display()))
            .args(["--define", "_build_id_links none"])
            .arg(&spec),
    );
}

#[test]
fn rpm_packages_equal_rpm_qa_on_the_same_database() {
    let dir = Scratch::new("rpmdb");
    let top = dir.path("rpmbuild");
    std::fs::create_dir_all(&top).unwrap();
    rpm(&top, "bash", Some(1), "5.1.8", "6.el9", "x86_64");
    rpm(&top, "tzdata", None, "2024a", "1.el9", "noarch");
    rpm(&top, "openssl-libs", Some(1), "3.0.7", "27.el9", "x86_64");
    rpm(&top, "glibc", None, "2.34", "100.el9_4.2", "x86_64");
    let tree = dir.path("tree");
    let db = tree.join("var/lib/rpm");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(
        tree.join("etc/os-release"),
        "ID=\"rhel\"\nVERSION_ID=\"9.2\"\nPRETTY_NAME=\"Red Hat Enterprise Linux 9.2\"\n",
    )
    .unwrap();
    tool_output(
        tool("rpm")
            .args(["--define", "_db_backend sqlite", "--dbpath"])
            .arg(&db)
            .arg("--initdb"),
    );
    let rpms: Vec<_> = walk_files(&top.join("RPMS"));
    tool_output(
        tool("rpm")
            .args(["--define", "_db_backend sqlite", "--dbpath"])
            .arg(&db)
            .args(["-i", "--justdb", "--nodeps", "--ignorearch", "--ignoreos"])
            .args(&rpms),
    );
    let listed = String::from_utf8(tool_output(
        tool("rpm")
            .args(["--define", "_db_backend sqlite", "--dbpath"])
            .arg(&db)
            .args([
                "-qa",
                "--qf",
                "%{NAME}\t%{EPOCH}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n",
            ]),
    ))
    .unwrap();
    let expected: BTreeSet<(String, String, String)> = listed
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let version = match f[1] {
                "(none)" => f[2].to_string(),
                e => format!("{e}:{}", f[2]),
            };
            (f[0].to_string(), version, f[3].to_string())
        })
        .collect();
    assert_eq!(expected.len(), 4);
    let image = dir.path("rpm.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    tool_output(
        tool("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&image),
    );
    let report = audit(&image);
    assert_eq!(package_set(&report, "rpm"), expected);
    let bash = report["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bash")
        .unwrap();
    assert_eq!(
        bash["purl"],
        "pkg:rpm/redhat/bash@5.1.8-6.el9?arch=x86_64&epoch=1&upstream=bash-5.1.8-6.el9.src.rpm&distro=rhel-9.2"
    );
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
