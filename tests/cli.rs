//! The command line is consistent: every command takes `--format json` and
//! `--no-progress`, only the commands that call AWS take the AWS settings, and the
//! offline commands work with no AWS environment at all and never touch the network.

mod common;

use common::{amiforge, fixture, Scratch};
use std::collections::BTreeSet;
use std::net::TcpListener;

/// Every command, and whether it may call AWS (an image, bundle or output in AWS).
const COMMANDS: &[(&str, bool)] = &[
    ("inspect", true),
    ("ls", true),
    ("cat", true),
    ("audit", true),
    ("sbom", true),
    ("diff", true),
    ("build", false),
    ("boot-test", false),
    ("bundle", true),
    ("bundle verify", true),
    ("bundle extract", true),
    ("upload", true),
    ("download", true),
    ("verify", true),
    ("register", true),
    ("publish", true),
    ("ami list", true),
    ("ami share", true),
    ("ami unshare", true),
    ("ami copy", true),
    ("ami deprecate", true),
    ("ami disable", true),
    ("ami enable", true),
    ("ami protect", true),
    ("ami promote", true),
    ("ami unprotect", true),
    ("ami prune", true),
    ("vulndb import", false),
    ("vulndb info", false),
    ("completions", false),
    ("man", false),
];

fn help(words: &[&str]) -> String {
    let out = amiforge()
        .args(words)
        .arg("--help")
        .output()
        .expect("amiforge runs");
    assert!(out.status.success(), "{words:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommand names listed under "Commands:" in a help text.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Continuation lines of a description are indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Whether stderr holds a progress line ("amiforge: WHAT: DONE/TOTAL UNIT") or a bar.
fn has_progress(stderr: &str) -> bool {
    stderr.contains('\r')
        || stderr.lines().any(|l| {
            l.split_whitespace().any(|w| {
                w.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && a.chars().all(|c| c.is_ascii_digit())
                        && b.chars().all(|c| c.is_ascii_digit())
                })
            })
        })
}

#[test]
fn the_table_lists_every_command() {
    let mut found = BTreeSet::new();
    for top in listed_commands(&help(&[])) {
        found.insert(top.clone());
        for sub in listed_commands(&help(&[&top])) {
            found.insert(format!("{top} {sub}"));
        }
    }
    let table: BTreeSet<String> = COMMANDS
        .iter()
        .map(|(c, _)| c.to_string())
        .filter(|c| c != "ami" && c != "vulndb")
        .collect();
    found.remove("ami");
    found.remove("vulndb");
    assert_eq!(found, table, "the help and the table differ");
}

#[test]
fn every_command_accepts_format_json_and_no_progress() {
    for (command, _) in COMMANDS {
        let words: Vec<&str> = command.split(' ').collect();
        let out = amiforge()
            .args(&words)
            .args(["--format", "json", "--no-progress", "--help"])
            .output()
            .expect("amiforge runs");
        assert!(
            out.status.success(),
            "{command} refuses --format json --no-progress: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--format"), "{command}: no --format in help");
        assert!(
            text.contains("--no-progress"),
            "{command}: no --no-progress in help"
        );
    }
}

#[test]
fn only_the_commands_that_call_aws_take_the_aws_settings() {
    for (command, calls_aws) in COMMANDS {
        let words: Vec<&str> = command.split(' ').collect();
        let text = help(&words);
        for flag in ["--region", "--profile", "--endpoint-url", "--max-attempts"] {
            assert_eq!(
                text.contains(flag),
                *calls_aws,
                "{command}: {flag} {}",
                if *calls_aws {
                    "missing"
                } else {
                    "offered offline"
                }
            );
        }
    }
}

#[test]
fn offline_commands_need_no_aws_environment_and_never_touch_the_network() {
    // Every AWS and proxy setting points at a listener that records connections.
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    let dir = Scratch::new("cli-offline");
    let image = fixture("gpt-uefi.img");
    let image = image.to_str().unwrap();
    let bundle = dir.path("bundle");
    let bundle = bundle.to_str().unwrap();
    let extracted = dir.path("extracted.img");
    let pages = dir.path("man");
    let tree = dir.path("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "offline\n").unwrap();
    // A stand-in EFI loader: this checks that build stays offline, not that it boots.
    std::fs::create_dir_all(tree.join("usr/lib/systemd/boot/efi")).unwrap();
    std::fs::write(
        tree.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        b"MZ stand-in",
    )
    .unwrap();
    let built = dir.path("built.img");
    let runs: Vec<Vec<&str>> = vec![
        vec![
            "build",
            tree.to_str().unwrap(),
            "-o",
            built.to_str().unwrap(),
            "--size",
            "256M",
            "--boot",
            "uefi",
            "--arch",
            "x86_64",
        ],
        vec!["inspect", image],
        vec!["ls", image, "/etc"],
        vec!["cat", image, "/etc/os-release"],
        vec!["audit", image, "--fail-on", "none"],
        vec!["sbom", image],
        vec!["diff", image, image],
        vec!["bundle", image, "--out", bundle, "--fail-on", "none"],
        vec!["bundle", "verify", bundle],
        vec!["bundle", "extract", bundle, extracted.to_str().unwrap()],
        vec!["completions", "bash"],
        vec!["man", "--out", pages.to_str().unwrap()],
    ];
    for args in &runs {
        let out = amiforge()
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &dir.0)
            .env("AWS_ENDPOINT_URL", &trap_url)
            .env("HTTP_PROXY", &trap_url)
            .env("HTTPS_PROXY", &trap_url)
            .env("ALL_PROXY", &trap_url)
            .args(args)
            .args(["--format", "json", "--no-progress"])
            .output()
            .expect("amiforge runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} failed: {stderr}");
        let doc: Result<serde_json::Value, _> = serde_json::from_slice(&out.stdout);
        assert!(doc.is_ok(), "{args:?}: stdout is not one JSON document");
        assert!(
            !has_progress(&stderr),
            "{args:?} showed progress despite --no-progress: {stderr}"
        );
    }
    assert!(
        trap.accept().is_err(),
        "an offline command connected to the network"
    );
    // What the JSON forms carry is what the text forms show.
    let cat = common::json(&["cat", image, "/etc/os-release", "--format", "json"]);
    let raw = common::ok(&["cat", image, "/etc/os-release"]);
    assert_eq!(cat["size"], raw.len() as u64);
    assert_eq!(cat["sha256"], common::sha256(&raw));
    assert!(pages.join("amiforge-ami-prune.1").is_file());
    // Without --no-progress, long work reports progress (as lines, stderr not being a
    // terminal).
    let out = amiforge()
        .args(["bundle", "verify", bundle])
        .output()
        .unwrap();
    assert!(
        has_progress(&String::from_utf8_lossy(&out.stderr)),
        "bundle verify shows its progress"
    );
    assert_eq!(
        common::sha256_file(&extracted),
        common::sha256_file(std::path::Path::new(image)),
        "the bundle extracts to the image"
    );
}
