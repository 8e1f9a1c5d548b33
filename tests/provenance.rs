//! What the vendor shipped against what was added or changed, on the debootstrap
//! Debian root (fixture debian-bookworm.img): dpkg's md5sums and conffiles give each
//! file's package and digest. debsums, run on the same tree as debugfs dumps it,
//! is the independent account of which package files changed or went missing.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// The Debian root's ext4, cut out of the fixture's GPT: 1000 MiB from 1 MiB in.
fn debian_root(dir: &Scratch) -> std::path::PathBuf {
    let root = dir.path("root.ext4");
    tool_output(
        tool("dd")
            .arg(format!("if={}", fixture("debian-bookworm.img").display()))
            .arg(format!("of={}", root.display()))
            .args([
                "bs=1M",
                "skip=1",
                "count=1000",
                "conv=sparse",
                "status=none",
            ]),
    );
    root
}

/// Runs debugfs commands on an ext4 image, writing.
fn debugfs(image: &Path, commands: &[String]) {
    let script = image.with_extension("debugfs");
    std::fs::write(&script, commands.join("\n") + "\n").unwrap();
    tool_output(tool("debugfs").arg("-w").arg("-f").arg(&script).arg(image));
}

fn audit(image: &Path) -> Value {
    let (code, stdout, stderr) = outcome(amiforge().args([
        "audit",
        image.to_str().unwrap(),
        "--format",
        "json",
        "--fail-on",
        "none",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn paths_of(report: &Value, rules: &[&str]) -> BTreeSet<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| rules.contains(&f["rule"].as_str().unwrap_or("")))
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn keys_a_package_ships_unchanged_are_info_and_the_same_key_elsewhere_is_critical() {
    let dir = Scratch::new("provenance-vendor");
    let root = debian_root(&dir);
    // One of libgnutls's own test keys, copied out by debugfs and into /opt/app.
    let lib = dir.path("libgnutls.so");
    let lib_path = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3";
    tool_output(
        tool("debugfs")
            .arg("-R")
            .arg(format!("dump {lib_path} {}", lib.display()))
            .arg(&root),
    );
    let bytes = std::fs::read(&lib).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let begin = text.find("-----BEGIN RSA PRIVATE KEY-----").unwrap();
    let end = text[begin..].find("-----END RSA PRIVATE KEY-----").unwrap() + begin + 29;
    let key = dir.path("key.pem");
    std::fs::write(&key, format!("{}\n", &text[begin..end])).unwrap();
    debugfs(
        &root,
        &[
            "mkdir /opt/app".into(),
            format!("write {} /opt/app/key.pem", key.display()),
        ],
    );
    let report = audit(&root);
    let secrets: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["category"] == "secret")
        .collect();
    let in_lib: Vec<_> = secrets.iter().filter(|f| f["path"] == lib_path).collect();
    assert!(in_lib.len() >= 5, "{secrets:#?}");
    for f in &in_lib {
        assert_eq!(f["severity"], "info", "{f}");
        assert!(
            f["title"]
                .as_str()
                .unwrap()
                .contains("shipped unchanged by package libgnutls30"),
            "{f}"
        );
    }
    let copied: Vec<_> = secrets
        .iter()
        .filter(|f| f["path"] == "/opt/app/key.pem")
        .collect();
    assert_eq!(copied.len(), 1, "{secrets:#?}");
    assert_eq!(copied[0]["severity"], "critical");
    assert_eq!(copied[0]["rule"], "secret.private-key-rsa");
    // The same key: the same fingerprint in the library and in the copy.
    assert!(in_lib
        .iter()
        .any(|f| f["fingerprint"] == copied[0]["fingerprint"]));
}

#[test]
fn changed_and_missing_package_files_are_what_debsums_reports() {
    let dir = Scratch::new("provenance-debsums");
    let root = debian_root(&dir);
    // A binary, a library and a conffile changed; a package file removed; a file
    // no package ships dropped into /usr/bin.
    let changed = [
        "/usr/bin/ls",
        "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
        "/etc/login.defs",
    ];
    let mut commands = Vec::new();
    for (i, path) in changed.iter().enumerate() {
        let local = dir.path(&format!("changed-{i}"));
        tool_output(
            tool("debugfs")
                .arg("-R")
                .arg(format!("dump {path} {}", local.display()))
                .arg(&root),
        );
        let mut bytes = std::fs::read(&local).unwrap();
        bytes.extend_from_slice(b"\ntampered\n");
        std::fs::write(&local, bytes).unwrap();
        commands.push(format!("rm {path}"));
        commands.push(format!("write {} {path}", local.display()));
    }
    commands.push("rm /usr/bin/dir".into());
    let planted = dir.path("planted");
    std::fs::write(&planted, "#!/bin/sh\necho hello\n").unwrap();
    commands.push(format!(
        "write {} /usr/bin/not-from-a-package",
        planted.display()
    ));
    debugfs(&root, &commands);

    let report = audit(&root);
    let ours_changed = paths_of(
        &report,
        &[
            "integrity.package-file-modified",
            "integrity.conffile-modified",
        ],
    );
    let ours_missing = paths_of(
        &report,
        &[
            "integrity.package-file-missing",
            "integrity.conffile-missing",
        ],
    );

    // debsums on the same tree, dumped by debugfs (not by amiforge).
    let tree = dir.path("tree");
    std::fs::create_dir_all(&tree).unwrap();
    debugfs_rdump(&root, &tree);
    let out = tool("debsums")
        .args(["-a", "-c", "--root"])
        .arg(&tree)
        .output()
        .unwrap();
    // Paths as the packages list them (/bin/ls) resolve to where they are
    // (/usr/bin/ls) on this merged-/usr tree.
    let real = |p: &str| -> String {
        let p = p.strip_prefix(tree.to_str().unwrap()).unwrap_or(p);
        let parent = Path::new(p).parent().unwrap().to_str().unwrap().to_string();
        let name = Path::new(p)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let dir = std::fs::canonicalize(tree.join(parent.trim_start_matches('/'))).unwrap();
        let dir = dir
            .strip_prefix(std::fs::canonicalize(&tree).unwrap())
            .unwrap();
        format!("/{}", dir.join(name).display()).replace("//", "/")
    };
    let theirs_changed: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(real)
        .collect();
    let theirs_missing: BTreeSet<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("debsums: missing file "))
        .map(|l| real(l.split(" (from").next().unwrap()))
        .collect();
    let expected: BTreeSet<String> = changed.iter().map(|p| p.to_string()).collect();
    assert!(
        theirs_changed.is_superset(&expected),
        "debsums sees the three changes: {theirs_changed:?} ({}; {})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ours_changed, theirs_changed);
    assert_eq!(theirs_missing, BTreeSet::from(["/usr/bin/dir".to_string()]));
    assert_eq!(ours_missing, theirs_missing);
    // Severity by what the file is: code high, other package files medium, conffiles low.
    let severity = |path: &str| -> String {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path && f["category"] == "integrity")
            .map(|f| f["severity"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(severity("/usr/bin/ls"), "high");
    assert_eq!(severity("/etc/login.defs"), "low");
    let unowned = paths_of(&report, &["integrity.unowned-system-file"]);
    assert!(
        unowned.contains("/usr/bin/not-from-a-package"),
        "{unowned:?}"
    );
}

/// The findings of `rule` as (path, severity).
fn severities(report: &Value, rule: &str) -> BTreeSet<(String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == rule)
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn rpm_header_digests_find_what_rpm_verify_finds() {
    // make-package-fixtures.sh installed two packages with rpm (SHA-256 and MD5 file
    // digests), changed three files and deleted one, and kept `rpm -V -a`'s output.
    let image = fixtures().join("packages/rpm-files.img");
    let verdict = std::fs::read_to_string(fixtures().join("packages/rpm-files.rpm-V"))
        .expect("run scripts/make-package-fixtures.sh");
    // rpm -V: "S.5....T.  c /etc/x" (the 3rd column is the digest), "missing   d /x".
    let mut changed = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for line in verdict.lines() {
        let path = line.rsplit(' ').next().unwrap().to_string();
        if line.starts_with("missing") {
            missing.insert(path);
        } else if line.as_bytes().get(2) == Some(&b'5') {
            changed.insert(path);
        }
    }
    assert_eq!(changed.len(), 3, "{verdict}");
    assert_eq!(missing.len(), 1, "{verdict}");

    let report = audit(&image);
    assert_eq!(
        paths_of(
            &report,
            &[
                "integrity.package-file-modified",
                "integrity.conffile-modified"
            ]
        ),
        changed
    );
    assert_eq!(
        paths_of(
            &report,
            &[
                "integrity.package-file-missing",
                "integrity.conffile-missing"
            ]
        ),
        missing
    );
    // A changed binary is high, a changed data file medium, a changed %config low.
    assert_eq!(
        severities(&report, "integrity.package-file-modified"),
        BTreeSet::from([
            ("/usr/bin/hello".to_string(), "high".to_string()),
            (
                "/usr/share/legacy/data.bin".to_string(),
                "medium".to_string()
            ),
        ])
    );
    assert_eq!(
        severities(&report, "integrity.conffile-modified"),
        BTreeSet::from([("/etc/hello.conf".to_string(), "low".to_string())])
    );
    // Each excerpt names the package and the digest algorithm it recorded.
    let excerpt = |path: &str| {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path && f["category"] == "integrity")
            .unwrap()["excerpt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(excerpt("/usr/bin/hello").starts_with("package hello: sha256 "));
    assert!(excerpt("/usr/share/legacy/data.bin").starts_with("package legacy: md5 "));
    // The file no package ships is listed; the %ghost log file is not missing.
    assert!(paths_of(&report, &["integrity.unowned-system-file"]).contains("/usr/bin/dropped-in"));
    assert!(!paths_of(&report, &["integrity.package-file-missing"]).contains("/var/log/hello.log"));
}

#[test]
fn apk_checksums_find_the_changed_file_and_skip_symlinks() {
    let image = fixtures().join("packages/alpine.img");
    let changed = std::fs::read_to_string(fixtures().join("packages/alpine.changed"))
        .expect("run scripts/make-package-fixtures.sh");
    let report = audit(&image);
    let want: BTreeSet<String> = changed.lines().map(str::to_string).collect();
    assert_eq!(
        paths_of(&report, &["integrity.package-file-modified"]),
        want
    );
    assert!(
        paths_of(
            &report,
            &[
                "integrity.package-file-missing",
                "integrity.conffile-missing"
            ]
        )
        .is_empty(),
        "the symlink libc.musl-x86_64.so.1 is not a missing file"
    );
    assert!(paths_of(&report, &["integrity.conffile-modified"]).is_empty());
    assert_eq!(report["os"]["id"], "alpine");
}
