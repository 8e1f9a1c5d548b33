//! Known vulnerabilities, offline: OSV records written here for packages installed in
//! the fixtures (affected, fixed before, listed, last affected, wrong release, wrong
//! ecosystem, withdrawn, unknown package) give exactly the expected `vuln.*`
//! findings, through `vulndb import` and `audit --vulndb`, in JSON and SARIF.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn record(id: &str, modified: &str, affected: Value) -> Value {
    json!({ "schema_version": "1.6.0", "id": id, "modified": modified, "aliases": [format!("CVE-2099-{}", id.len())], "affected": affected })
}

fn range(ecosystem: &str, name: &str, events: Value) -> Value {
    json!({ "package": { "ecosystem": ecosystem, "name": name },
            "ranges": [{ "type": "ECOSYSTEM", "events": events }] })
}

/// Writes the records as files of one directory and imports them.
fn import(dir: &Scratch, records: &[Value]) -> std::path::PathBuf {
    let osv = dir.path("osv");
    std::fs::create_dir_all(osv.join("nested")).unwrap();
    for (i, r) in records.iter().enumerate() {
        let sub = if i % 2 == 0 { "" } else { "nested" };
        let id = r["id"].as_str().unwrap();
        std::fs::write(osv.join(sub).join(format!("{id}.json")), r.to_string()).unwrap();
    }
    std::fs::write(osv.join("README.json"), "not a record").unwrap();
    let db = dir.path("vuln.db");
    let out = json(&[
        "vulndb",
        "import",
        osv.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out["import"]["rejected_count"], 1, "{out}");
    db
}

fn audit(image: &Path, db: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let (code, stdout, stderr) = outcome(
        amiforge()
            .arg("audit")
            .arg(image)
            .arg("--vulndb")
            .arg(db)
            .args(["--format", "json"])
            .args(extra),
    );
    assert!(code == Some(0) || code == Some(1), "{stderr}");
    (code, serde_json::from_str(&stdout).unwrap())
}

/// (rule, package) of every vulnerability finding.
fn vulns(report: &Value) -> BTreeSet<(String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["category"] == "vuln" && f["rule"] != "vuln.database-stale")
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["vulnerability"]["package"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn installed(report: &Value, name: &str) -> Value {
    report["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} is installed"))
        .clone()
}

#[test]
fn debian_advisories_keyed_by_source_match_exactly_the_affected_packages() {
    let image = fixture("debian-bookworm.img");
    let dir = Scratch::new("vuln-debian");
    let empty = import(&dir, &[]);
    let (_, plain) = audit(&image, &empty, &["--fail-on", "none"]);
    // libc6 comes from the source package glibc, at the source's own version.
    let libc = installed(&plain, "libc6");
    let (glibc, glibc_version) = libc["source"]
        .as_str()
        .and_then(|s| s.split_once('@'))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .unwrap_or(("glibc".into(), libc["version"].as_str().unwrap().into()));
    // Advisories list source versions: a binNMU ("+b2") names its source's version.
    let bash = installed(&plain, "bash");
    let bash = bash["source"]
        .as_str()
        .and_then(|s| s.split_once('@'))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| bash["version"].as_str().unwrap().to_string());
    let coreutils = installed(&plain, "coreutils")["version"]
        .as_str()
        .unwrap()
        .to_string();
    let from_glibc: BTreeSet<String> = plain["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["source"]
                .as_str()
                .is_some_and(|s| s.split('@').next() == Some(&glibc))
                || p["name"] == glibc.as_str()
        })
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert!(from_glibc.len() >= 2, "{from_glibc:?}");

    let t = now();
    let critical = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H";
    let mut affected = record(
        "TEST-AFFECTED",
        &t,
        json!([range(
            "Debian:12",
            &glibc,
            json!([{"introduced": "0"}, {"fixed": format!("{glibc_version}+fix1")}])
        )]),
    );
    affected["severity"] = json!([{ "type": "CVSS_V3", "score": critical }]);
    affected["summary"] = json!("a test flaw in the C library");
    let mut listed = record(
        "TEST-LISTED",
        &t,
        json!([{ "package": { "ecosystem": "Debian", "name": "bash" }, "versions": [bash],
                 "ecosystem_specific": { "urgency": "low" } }]),
    );
    listed["summary"] = json!("listed by version");
    let last = record(
        "TEST-LAST-AFFECTED",
        &t,
        json!([range(
            "Debian:12",
            "coreutils",
            json!([{"introduced": "0"}, {"last_affected": coreutils}])
        )]),
    );
    let fixed_before = record(
        "TEST-FIXED-BEFORE",
        &t,
        json!([range(
            "Debian:12",
            "bash",
            json!([{"introduced": "0"}, {"fixed": "1.0-1"}])
        )]),
    );
    let other_release = record(
        "TEST-DEBIAN-11",
        &t,
        json!([range("Debian:11", &glibc, json!([{"introduced": "0"}]))]),
    );
    let other_ecosystem = record(
        "TEST-ALPINE",
        &t,
        json!([range("Alpine:v3.18", &glibc, json!([{"introduced": "0"}]))]),
    );
    let mut withdrawn = record(
        "TEST-WITHDRAWN",
        &t,
        json!([range("Debian:12", &glibc, json!([{"introduced": "0"}]))]),
    );
    withdrawn["withdrawn"] = json!(t);
    let binary_name = record(
        "TEST-BINARY-NAME",
        &t,
        json!([range("Debian:12", "libc6", json!([{"introduced": "0"}]))]),
    );
    let unknown = record(
        "TEST-UNKNOWN",
        &t,
        json!([range(
            "Debian:12",
            "no-such-package",
            json!([{"introduced": "0"}])
        )]),
    );
    let db = import(
        &dir,
        &[
            affected,
            listed,
            last,
            fixed_before,
            other_release,
            other_ecosystem,
            withdrawn,
            binary_name,
            unknown,
        ],
    );
    let info = json(&[
        "vulndb",
        "info",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(
        info["advisories"], 8,
        "the withdrawn record is not stored: {info}"
    );

    let (code, report) = audit(&image, &db, &["--fail-on", "critical"]);
    let mut want: BTreeSet<(String, String)> = from_glibc
        .iter()
        .map(|p| ("vuln.TEST-AFFECTED".to_string(), p.clone()))
        .collect();
    want.insert(("vuln.TEST-LISTED".into(), "bash".into()));
    want.insert(("vuln.TEST-LAST-AFFECTED".into(), "coreutils".into()));
    assert_eq!(vulns(&report), want);
    assert_eq!(code, Some(1), "a critical vulnerability fails the gate");

    let libc_finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "vuln.TEST-AFFECTED" && f["vulnerability"]["package"] == "libc6")
        .unwrap();
    assert_eq!(libc_finding["severity"], "critical");
    assert_eq!(
        libc_finding["vulnerability"]["fixed"],
        format!("{glibc_version}+fix1")
    );
    assert_eq!(libc_finding["vulnerability"]["aliases"][0], "CVE-2099-13");
    assert_eq!(libc_finding["path"], "/var/lib/dpkg/status");
    let bash_finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "vuln.TEST-LISTED")
        .unwrap();
    assert_eq!(bash_finding["severity"], "low", "Debian's urgency");
    assert!(report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["rule"] != "vuln.database-stale"));
    assert_eq!(report["vulnerability_database"]["advisories"], 8);

    // SARIF carries them, with the fix.
    let (_, stdout, _) = outcome(
        amiforge()
            .arg("audit")
            .arg(&image)
            .arg("--vulndb")
            .arg(&db)
            .args(["--format", "sarif", "--fail-on", "none"]),
    );
    let sarif: Value = serde_json::from_str(&stdout).unwrap();
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    let r = results
        .iter()
        .find(|r| r["ruleId"] == "vuln.TEST-AFFECTED")
        .expect("the vulnerability is a SARIF result");
    assert_eq!(r["level"], "error");
    assert_eq!(
        r["properties"]["fixedVersion"],
        format!("{glibc_version}+fix1")
    );
}

#[test]
fn a_stale_database_is_a_finding_and_max_db_age_sets_the_bound() {
    let image = fixture("debian-bookworm.img");
    let dir = Scratch::new("vuln-stale");
    let db = import(
        &dir,
        &[record(
            "TEST-OLD",
            "2020-01-01T00:00:00Z",
            json!([range(
                "Debian:12",
                "no-such-package",
                json!([{"introduced": "0"}])
            )]),
        )],
    );
    let stale = |report: &Value| {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "vuln.database-stale")
    };
    let (_, report) = audit(&image, &db, &["--fail-on", "none"]);
    assert!(stale(&report), "six years old, over the 30-day default");
    let (_, report) = audit(
        &image,
        &db,
        &["--fail-on", "none", "--max-db-age", "100years"],
    );
    assert!(!stale(&report));
}

#[test]
fn rpm_advisories_compare_epochs_and_releases() {
    // rhel.img: Rocky Linux 9.3 with bash 1:5.1.8-6.el9, openssl-libs 1:3.0.7-27.el9
    // and tzdata 2024a-1.el9 (see make-volume-fixtures.sh).
    let image = fixtures().join("volumes/rhel.img");
    assert!(image.exists(), "run scripts/make-volume-fixtures.sh");
    let dir = Scratch::new("vuln-rpm");
    let t = now();
    let db = import(
        &dir,
        &[
            // Fixed in a later release of the same version: affected.
            record(
                "TEST-BASH",
                &t,
                json!([range(
                    "Rocky Linux:9",
                    "bash",
                    json!([{"introduced": "0"}, {"fixed": "1:5.1.8-9.el9"}])
                )]),
            ),
            // Without the epoch, 3.0.7-28 is older than 1:3.0.7-27: not affected.
            record(
                "TEST-OPENSSL-NO-EPOCH",
                &t,
                json!([range(
                    "Rocky Linux:9",
                    "openssl-libs",
                    json!([{"introduced": "0"}, {"fixed": "3.0.7-28.el9"}])
                )]),
            ),
            // tzdata 2024a is past 2023c: not affected.
            record(
                "TEST-TZDATA",
                &t,
                json!([range(
                    "Rocky Linux:9",
                    "tzdata",
                    json!([{"introduced": "0"}, {"fixed": "2023c-1.el9"}])
                )]),
            ),
            // Another distribution's advisory for the same package: not matched.
            record(
                "TEST-ALMA",
                &t,
                json!([range("AlmaLinux:9", "bash", json!([{"introduced": "0"}]))]),
            ),
        ],
    );
    let (_, report) = audit(&image, &db, &["--fail-on", "none"]);
    assert_eq!(
        vulns(&report),
        BTreeSet::from([("vuln.TEST-BASH".to_string(), "bash".to_string())])
    );
}

#[test]
fn a_zip_as_osv_dev_publishes_it_imports_like_a_directory() {
    let dir = Scratch::new("vuln-zip");
    let record = record(
        "TEST-ZIPPED",
        &now(),
        json!([range("Debian:12", "bash", json!([{"introduced": "0"}]))]),
    );
    std::fs::write(dir.path("TEST-ZIPPED.json"), record.to_string()).unwrap();
    // Python's zipfile writes the archive: an independent writer, deflated.
    let zip = dir.path("all.zip");
    tool_output(tool("python3").args([
        "-c",
        "import sys, zipfile\n\
         with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n\
         \x20   z.write(sys.argv[2], 'TEST-ZIPPED.json')\n\
         \x20   z.writestr('notes.txt', 'not a record')",
        zip.to_str().unwrap(),
        dir.path("TEST-ZIPPED.json").to_str().unwrap(),
    ]));
    let db = dir.path("z.db");
    let out = json(&[
        "vulndb",
        "import",
        zip.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out["import"]["stored"], 1, "{out}");
    assert_eq!(out["database"]["advisories"], 1);
    let (_, report) = audit(&fixture("debian-bookworm.img"), &db, &["--fail-on", "none"]);
    assert!(vulns(&report).contains(&("vuln.TEST-ZIPPED".to_string(), "bash".to_string())));
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_naming_it() {
    let dir = Scratch::new("vuln-bad");
    let bad = dir.path("bad.db");
    std::fs::write(&bad, b"not sqlite at all, just text").unwrap();
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("audit")
            .arg(fixture("bare-ext4.img"))
            .arg("--vulndb")
            .arg(&bad),
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("bad.db"), "{stderr}");
}

#[test]
fn alpine_advisories_keyed_by_origin_use_apk_ordering() {
    // alpine.img (make-package-fixtures.sh): Alpine 3.18 with musl 1.2.4-r2,
    // busybox 1.36.1-r5 and alpine-baselayout-data 3.4.3-r1 (origin alpine-baselayout).
    let image = fixtures().join("packages/alpine.img");
    assert!(image.exists(), "run scripts/make-package-fixtures.sh");
    let dir = Scratch::new("vuln-alpine");
    let t = now();
    let db = import(
        &dir,
        &[
            record(
                "TEST-MUSL",
                &t,
                json!([range(
                    "Alpine:v3.18",
                    "musl",
                    json!([{"introduced": "0"}, {"fixed": "1.2.4-r3"}])
                )]),
            ),
            // Fixed in exactly the installed version: not affected.
            record(
                "TEST-BUSYBOX-FIXED",
                &t,
                json!([range(
                    "Alpine:v3.18",
                    "busybox",
                    json!([{"introduced": "0"}, {"fixed": "1.36.1-r5"}])
                )]),
            ),
            record(
                "TEST-BUSYBOX-3.19",
                &t,
                json!([range(
                    "Alpine:v3.19",
                    "busybox",
                    json!([{"introduced": "0"}])
                )]),
            ),
            // A _p suffix orders after the plain version: 3.4.3-r1 < 3.4.3_p1-r0.
            record(
                "TEST-BASELAYOUT",
                &t,
                json!([range(
                    "Alpine:v3.18",
                    "alpine-baselayout",
                    json!([{"introduced": "0"}, {"fixed": "3.4.3_p1-r0"}])
                )]),
            ),
        ],
    );
    let (_, report) = audit(&image, &db, &["--fail-on", "none"]);
    assert_eq!(
        vulns(&report),
        BTreeSet::from([
            ("vuln.TEST-MUSL".to_string(), "musl".to_string()),
            (
                "vuln.TEST-BASELAYOUT".to_string(),
                "alpine-baselayout-data".to_string()
            ),
        ])
    );
}
