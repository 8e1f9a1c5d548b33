//! `amiforge audit` finds a secret of every rule, made fresh at test time with
//! ssh-keygen, openssl and random tokens in the real formats, in plain files, shell
//! histories, gzip/xz/zstd logs and deleted files on ext4 and FAT; it reports none
//! in a corpus of look-alikes; excerpts never carry a secret; the gate's exit codes.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

struct Planted {
    _dir: Scratch,
    tree: std::path::PathBuf,
    clean: std::path::PathBuf,
    expected: Value,
}

fn plant() -> Planted {
    let dir = Scratch::new("planted");
    let (tree, clean, expected) = (
        dir.path("tree"),
        dir.path("clean"),
        dir.path("expected.json"),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/plant_secrets.py");
    tool_output(
        Command::new("python3")
            .arg(script)
            .args([&tree, &clean, &expected]),
    );
    let expected = serde_json::from_slice(&std::fs::read(&expected).unwrap()).unwrap();
    Planted {
        _dir: dir,
        tree,
        clean,
        expected,
    }
}

/// An ext4 image of `tree`, made by mkfs.ext4 -d.
fn ext4_of(tree: &Path, image: &Path) {
    std::fs::File::create(image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    tool_output(
        tool("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-d"])
            .arg(tree)
            .arg(image),
    );
}

fn audit_json(image: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let (code, stdout, stderr) = outcome(
        amiforge()
            .arg("audit")
            .arg(image)
            .args(["--format", "json"])
            .args(extra),
    );
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (code, v)
}

fn findings<'a>(report: &'a Value, rule: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == rule)
        .collect()
}

/// The bytes of `image` at `offset` start with `prefix`.
fn bytes_at(image: &Path, offset: u64, len: usize) -> String {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn every_rule_finds_its_planted_secret_and_deleted_keys_are_found_by_offset() {
    let p = plant();
    let scratch = Scratch::new("audit-ext4");
    let image = scratch.path("planted.img");
    ext4_of(&p.tree, &image);
    let deleted = &p.expected["deleted"]["ext4"];
    tool_output(
        tool("debugfs")
            .args(["-w", "-R"])
            .arg(format!("rm {}", deleted["path"].as_str().unwrap()))
            .arg(&image),
    );
    let before = sha256_file(&image);
    let (code, report) = audit_json(&image, &[]);
    assert_eq!(
        code,
        Some(1),
        "critical secrets fail the default gate (high)"
    );
    assert_eq!(sha256_file(&image), before, "the image is never written");

    let rules = p.expected.as_object().unwrap();
    let mut missed = Vec::new();
    for (rule, path) in rules.iter().filter(|(k, _)| *k != "deleted") {
        let found = findings(&report, &format!("secret.{rule}"));
        if !found
            .iter()
            .any(|f| f["path"] == *path && f["line"].as_u64().is_some())
        {
            missed.push(format!("{rule} in {path}"));
        }
    }
    assert!(missed.is_empty(), "missed: {missed:?}");
    assert!(
        rules.len() > 40,
        "a secret is planted for each of the {} rules",
        rules.len() - 1
    );

    // The deleted key: in unallocated space, at the offset reported.
    let rule = format!("secret.{}", deleted["rule"].as_str().unwrap());
    let hit = findings(&report, &rule)
        .into_iter()
        .find(|f| f["path"] == "<unallocated>")
        .unwrap_or_else(|| panic!("the deleted key was not found: {report:#}"));
    let start = deleted["body_start"].as_str().unwrap();
    assert_eq!(
        bytes_at(&image, hit["offset"].as_u64().unwrap(), start.len()),
        start
    );

    // Excerpts are redacted: no planted token's random part appears in the report.
    let text = report.to_string();
    for (rule, path) in rules.iter().filter(|(k, _)| *k != "deleted") {
        let path = path.as_str().unwrap();
        if path.ends_with(".gz") || path.ends_with(".xz") || path.ends_with(".zst") {
            continue;
        }
        let content = std::fs::read_to_string(p.tree.join(&path[1..])).unwrap();
        // The longest random run: format words such as "DefaultEndpointsProtocol"
        // (which excerpts may show) have no digits; 24 random characters do.
        let Some(longest) = content
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|s| s.bytes().any(|b| b.is_ascii_digit()))
            .max_by_key(|s| s.len())
        else {
            continue;
        };
        if longest.len() >= 24 {
            assert!(
                !text.contains(longest),
                "{rule}: a secret leaked into the report"
            );
        }
    }
}

#[test]
fn a_key_deleted_from_a_fat_volume_is_found_in_its_free_clusters() {
    let p = plant();
    let scratch = Scratch::new("audit-fat");
    let image = scratch.path("fat.img");
    let key = scratch.path("key.pem");
    let deleted = &p.expected["deleted"]["fat"];
    std::fs::write(&key, deleted["content"].as_str().unwrap()).unwrap();
    tool_output(tool("mkfs.vfat").arg("-C").arg(&image).arg("8192"));
    tool_output(
        tool("mcopy")
            .arg("-i")
            .arg(&image)
            .arg(&key)
            .arg("::key.pem"),
    );
    tool_output(tool("mdel").arg("-i").arg(&image).arg("::key.pem"));
    assert_deleted_key_found_at_its_offset(&image, deleted);
}

#[test]
fn look_alikes_are_not_secrets() {
    let p = plant();
    let scratch = Scratch::new("audit-clean");
    let image = scratch.path("clean.img");
    ext4_of(&p.clean, &image);
    let (_, report) = audit_json(&image, &["--fail-on", "none"]);
    let secrets: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["category"] == "secret")
        .collect();
    assert!(secrets.is_empty(), "false positives: {secrets:#?}");
    assert!(report["summary"]["files_scanned"].as_u64().unwrap() >= 8);
}

#[test]
fn the_configuration_accepts_findings_but_still_counts_them() {
    let p = plant();
    let scratch = Scratch::new("audit-config");
    let image = scratch.path("planted.img");
    ext4_of(&p.tree, &image);
    let config = scratch.path("audit.toml");
    std::fs::write(
        &config,
        "[allow]\npaths = [\"/srv/planted/**\", \"/var/log/**\", \"/root/**\", \"/home/**\"]\n\
         rules = [\"boot.boot-mode-unknown\", \"boot.no-kernel\"]\n\
         [skip]\npaths = [\"/var/log/app/app.log.3.zst\"]\n",
    )
    .unwrap();
    let (code, report) = audit_json(&image, &["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "everything high is allowed: {report:#}");
    let allowed = report["allowed"].as_array().unwrap();
    assert!(allowed.len() > 40);
    assert!(allowed.iter().all(|f| f["allowed_by"].is_string()));
    let counted: u64 = report["summary"]["allowed"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, allowed.len() as u64);
    assert_eq!(
        report["skipped"][0]["path"], "/var/log/app/app.log.3.zst",
        "every skip is reported"
    );
    assert!(findings(&report, "secret.sendgrid-api-key").is_empty());
}

#[test]
fn sarif_output_has_rules_results_and_locations() {
    let p = plant();
    let scratch = Scratch::new("audit-sarif");
    let image = scratch.path("planted.img");
    ext4_of(&p.tree, &image);
    let (code, stdout, _) = outcome(amiforge().arg("audit").arg(&image).args([
        "--format",
        "sarif",
        "--fail-on",
        "critical",
    ]));
    assert_eq!(code, Some(1));
    let s: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["version"], "2.1.0");
    let run = &s["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let results = run["results"].as_array().unwrap();
    assert!(results.len() > 40);
    for r in results {
        let i = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[i]["id"], r["ruleId"]);
        let location = &r["locations"][0]["physicalLocation"];
        if r["properties"]["category"] == "secret" {
            let uri = location["artifactLocation"]["uri"].as_str().unwrap();
            assert!(uri.starts_with("partition-0/"), "{uri}");
            assert!(
                location["region"]["startLine"].is_u64()
                    || location["region"]["byteOffset"].is_u64()
            );
        }
    }
}

#[test]
fn deleted_data_in_an_md_raid1_member_is_reported_at_its_offset_in_the_image() {
    let p = plant();
    let scratch = Scratch::new("audit-md");
    let image = scratch.path("md.img");
    std::fs::copy(fixture("foreign/md-1.2-raid1.img"), &image).unwrap();
    let deleted = &p.expected["deleted"]["fat"];
    // 12 MiB into the member's ext4, which uses its first two: free blocks. The data
    // area of a metadata 1.2 member starts 1 MiB into the disk.
    let at = (1 << 20) + (12 << 20);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        f.write_all_at(deleted["content"].as_str().unwrap().as_bytes(), at)
            .unwrap();
    }
    assert_deleted_key_found_at_its_offset(&image, deleted);
}

/// The audit finds the planted key in unallocated space, and the offset it reports
/// holds the key's first bytes in the image.
fn assert_deleted_key_found_at_its_offset(image: &Path, deleted: &serde_json::Value) {
    let (_, report) = audit_json(image, &["--fail-on", "none"]);
    let hit = findings(&report, "secret.private-key-rsa")
        .into_iter()
        .find(|f| f["path"] == "<unallocated>")
        .unwrap_or_else(|| panic!("not found: {report:#}"));
    let start = deleted["body_start"].as_str().unwrap();
    assert_eq!(
        bytes_at(image, hit["offset"].as_u64().unwrap(), start.len()),
        start
    );
}

#[test]
fn a_fresh_key_is_found_in_every_encoding_configuration_files_carry_it_in() {
    let scratch = Scratch::new("audit-encodings");
    let tree = scratch.path("tree");
    std::fs::create_dir_all(tree.join("etc/app")).unwrap();
    // A key made now by openssl: nothing here is a fixed test string.
    let key = String::from_utf8(tool_output(tool("openssl").args([
        "genrsa",
        "-traditional",
        "2048",
    ])))
    .unwrap();
    let lines: Vec<&str> = key.lines().collect();
    // Python writes the JSON and YAML forms, as real tools do.
    let script = r#"
import base64, json, sys
key, out = open(sys.argv[1]).read(), sys.argv[2]
open(f"{out}/terraform.tfstate", "w").write(json.dumps({"outputs": {"tls_key": {"value": key}}}, indent=2))
open(f"{out}/crlf.json", "w").write(json.dumps({"key": key.replace("\n", "\r\n")}))
b64 = base64.b64encode(key.encode()).decode()
open(f"{out}/secret.yaml", "w").write(
    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tls\ntype: kubernetes.io/tls\ndata:\n"
    f"  tls.crt: aGVsbG8=\n  tls.key: {b64}\n")
cfg = base64.b64encode(json.dumps({"registry.example": {"auth": "", "tls_key": key}}).encode()).decode()
open(f"{out}/dockercfg.yaml", "w").write(f"kind: Secret\ndata:\n  .dockercfg: {b64}\n  extra: {cfg}\n")
open(f"{out}/values.yaml", "w").write(
    "tls:\n  key: |\n" + "".join(f"    {l}\n" for l in key.splitlines()) + "  cert: none\n")
"#;
    let key_file = scratch.path("key.pem");
    std::fs::write(&key_file, &key).unwrap();
    tool_output(
        Command::new("python3")
            .args(["-c", script])
            .arg(&key_file)
            .arg(tree.join("etc/app")),
    );
    let image = scratch.path("encodings.img");
    ext4_of(&tree, &image);
    let (code, report) = audit_json(&image, &[]);
    assert_eq!(code, Some(1), "a private key fails the default gate");
    let found = findings(&report, "secret.private-key-rsa");
    for file in [
        "terraform.tfstate",
        "crlf.json",
        "secret.yaml",
        "dockercfg.yaml",
        "values.yaml",
    ] {
        let path = format!("/etc/app/{file}");
        assert!(
            found.iter().any(|f| f["path"] == path),
            "{path}: {found:#?}"
        );
    }
    // One key, one fingerprint, whatever the encoding; and no excerpt shows it.
    let prints: std::collections::BTreeSet<String> = found
        .iter()
        .map(|f| f["fingerprint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prints.len(), 1, "{prints:?}");
    let text = report.to_string();
    assert!(
        !text.contains(lines[5]),
        "a line of the key is in the report"
    );
}

/// The scan reads a stream in windows of 8 MiB, each carrying the 64 KiB before it
/// (crates/audit/src/scan.rs: CHUNK and OVERLAP); compressed files are scanned
/// the same way as they are decompressed, never whole.
const WINDOW: usize = 8 << 20;
const OVERLAP: usize = 64 << 10;

#[test]
fn keys_deep_in_compressed_logs_are_found_across_windows_and_after_damage() {
    let scratch = Scratch::new("audit-compressed-stream");
    let tree = scratch.path("tree");
    std::fs::create_dir_all(tree.join("var/log")).unwrap();
    // Python writes 24 MiB of log lines with a fresh GitHub token (i) just before
    // the first window's end, (ii) across the end of the first read, where only the
    // next window sees it whole, and (iii) deep in the stream; then compresses it
    // with gzip, xz and zstd. damaged.log.gz is a gzip member holding token (iv),
    // then bytes that start a second member and are not one, then token (v) in
    // plain text. The tokens and their line numbers go to expected.json.
    let script = r#"
import gzip, json, lzma, os, secrets, string, subprocess, sys
out, window, overlap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
alphabet = string.ascii_letters + string.digits
def token():
    return "ghp_" + "".join(secrets.choice(alphabet) for _ in range(36))
expected = {}
def log(name):
    line = b"Dec  5 17:34:08 host sshd[812]: Accepted publickey for admin from 10.0.0.7 port 50222\n"
    data, found = bytearray(), []
    for at in (window - 10, window + overlap - 10, 20 << 20):
        while len(data) + len(line) <= at:
            data += line
        data += b"x" * (at - len(data))
        t = token()
        found.append({"token": t, "line": data.count(b"\n") + 1})
        data += ("GITHUB_TOKEN=" + t + "\n").encode()
    while len(data) < 24 << 20:
        data += line
    expected[name] = found
    return bytes(data)
open(f"{out}/var/log/app.log.gz", "wb").write(gzip.compress(log("/var/log/app.log.gz"), 6))
open(f"{out}/var/log/app.log.xz", "wb").write(lzma.compress(log("/var/log/app.log.xz")))
plain = log("/var/log/app.log.zst")
open(f"{out}/var/log/app.log.zst", "wb").write(subprocess.run(["zstd", "-q", "-c"], input=plain, capture_output=True, check=True).stdout)
inside, after = token(), token()
member = gzip.compress(("GITHUB_TOKEN=" + inside + "\n").encode())
damaged = member + b"\x1f\x8b\x08garbage\n"
open(f"{out}/var/log/damaged.log.gz", "wb").write(damaged + ("GITHUB_TOKEN=" + after + "\n").encode())
expected["/var/log/damaged.log.gz"] = [
    {"token": inside, "line": 1}, {"token": after, "line": damaged.count(b"\n") + 1}]
json.dump(expected, open(f"{out}/../expected.json", "w"))
"#;
    tool_output(
        Command::new("python3")
            .args(["-c", script, tree.to_str().unwrap()])
            .arg(WINDOW.to_string())
            .arg(OVERLAP.to_string()),
    );
    let expected: Value =
        serde_json::from_slice(&std::fs::read(scratch.path("expected.json")).unwrap()).unwrap();
    let image = scratch.path("logs.img");
    ext4_of(&tree, &image);
    let (_, report) = audit_json(&image, &["--fail-on", "none"]);
    let found = findings(&report, "secret.github-pat");
    for (path, tokens) in expected.as_object().unwrap() {
        let here: Vec<_> = found.iter().filter(|f| f["path"] == *path).collect();
        assert_eq!(
            here.len(),
            tokens.as_array().unwrap().len(),
            "{path}: {here:#?}"
        );
        // The excerpt masks the token; the line it is on says which it is.
        for t in tokens.as_array().unwrap() {
            assert!(
                here.iter().any(|f| f["line"] == t["line"]),
                "{path}: the token on line {} not found in {here:#?}",
                t["line"]
            );
        }
    }
    // The damaged file is said to be damaged; no other file is reported as not
    // examined, and all three logs were scanned to their ends.
    let gaps: Vec<&Value> = report["not_examined"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["kind"] == "file" || g["kind"] == "compressed-file")
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:#?}");
    assert_eq!(gaps[0]["what"], "/var/log/damaged.log.gz");
    assert!(report["summary"]["bytes_scanned"].as_u64().unwrap() > 3 * (24 << 20));
}
