//! Golden audit reports: the JSON of `amiforge audit` on fixed fixtures, compared
//! whole with the files in tests/golden (only the image path, the version and the
//! auditors' timings and the count of unallocated bytes read are left out). `AMIFORGE_BLESS=1 cargo test --test audit_golden`
//! rewrites them after an intended change; the diff then shows what changed.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

fn normalized(image: &Path) -> Value {
    let (code, stdout, stderr) =
        outcome(
            amiforge()
                .arg("audit")
                .arg(image)
                .args(["--format", "json", "--fail-on", "none"]),
        );
    assert_eq!(code, Some(0), "{stderr}");
    let mut v: Value = serde_json::from_str(&stdout).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("image");
    o.remove("amiforge_version");
    // Which free blocks hold data in the image file (SEEK_DATA) depends on the host
    // filesystem's allocation, not on amiforge: the count is left out.
    o["summary"]
        .as_object_mut()
        .unwrap()
        .remove("unallocated_bytes_scanned");
    for a in o["auditors"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("seconds");
    }
    v
}

fn check(fixture_name: &str) {
    let got = normalized(&fixture(fixture_name));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!(
            "audit-{}.json",
            fixture_name.trim_end_matches(".img")
        ));
    if std::env::var_os("AMIFORGE_BLESS").is_some() {
        std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_slice(
        &std::fs::read(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display())),
    )
    .unwrap();
    assert_eq!(
        got,
        want,
        "audit of {fixture_name} differs from {}:\n{}",
        golden.display(),
        serde_json::to_string_pretty(&got).unwrap()
    );
}

#[test]
fn uefi_image_report_is_the_golden_one() {
    check("gpt-uefi.img");
}

#[test]
fn mbr_image_with_swap_report_is_the_golden_one() {
    check("mbr.img");
}

#[test]
fn image_of_unreadable_containers_reports_every_gap() {
    check("gpt-containers.img");
}
