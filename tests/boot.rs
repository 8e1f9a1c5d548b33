//! `amiforge build` of a real Debian 12 tree (debootstrap with the cloud kernel,
//! GRUB's EFI and BIOS modules, cloud-init and openssh-server, made by
//! scripts/make-boot-tree.sh), and `amiforge boot-test` of the result in QEMU
//! with OVMF and SeaBIOS: the disk boots both ways to cloud-init's user data.
//! The pieces are checked with readers we did not write: sfdisk, e2fsck, debugfs,
//! blkid and mtools. The same tree with an XFS root boots both ways too, and an
//! arm64 tree boots in qemu-system-aarch64 with AAVMF.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn boot_tree() -> PathBuf {
    fixture("debian-boot-root")
}

fn build(tree: &Path, out: &Path, extra: &[&str]) -> Value {
    let (code, stdout, stderr) = outcome(
        amiforge()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("AMIFORGE_MKFS_XFS", private_tool("xfsprogs/bin/mkfs.xfs"))
            .arg("build")
            .arg(tree)
            .arg("-o")
            .arg(out)
            .args(["--size", "2G", "--format", "json"])
            .args(extra),
    );
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn boot_test(image: &Path, extra: &[&str]) -> (Option<i32>, Value, String) {
    let (code, stdout, stderr) = outcome(
        amiforge()
            .arg("boot-test")
            .arg(image)
            .args(["--format", "json", "--timeout", "480"])
            .args(extra),
    );
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} / {stderr}"));
    (code, report, stderr)
}

/// mtools' listing of `EFI/BOOT` on the ESP that starts at byte `esp_start`.
fn efi_boot_dir(image: &Path, esp_start: u64) -> String {
    let esp = format!("{}@@{esp_start}", image.display());
    String::from_utf8(tool_output(tool("mdir").args([
        "-i",
        &esp,
        "-b",
        "::/EFI/BOOT",
    ])))
    .unwrap()
}

/// The debugfs view of the image's root filesystem, at its partition's offset.
fn debugfs(image: &Path, root_start: u64, request: &str) -> String {
    String::from_utf8(tool_output(
        tool("debugfs")
            .arg("-R")
            .arg(request)
            .arg(format!("{}?offset={root_start}", image.display())),
    ))
    .unwrap()
}

#[test]
fn a_debian_tree_builds_into_a_hybrid_disk_that_boots_with_uefi_and_with_bios() {
    let scratch = Scratch::new("boot");
    let image = scratch.path("debian.img");
    let report = build(&boot_tree(), &image, &[]);
    let root_uuid = report["root_uuid"].as_str().unwrap();
    let parts = report["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bios", "esp", "root"]);
    assert!(report["loader"]
        .as_str()
        .unwrap()
        .contains("GRUB x86_64-efi"));
    assert!(report["bios_loader"]
        .as_str()
        .unwrap()
        .contains("GRUB i386-pc"));
    let kernel = report["kernel"].as_str().unwrap();
    assert!(kernel.ends_with("-cloud-amd64"), "{kernel}");

    // sfdisk agrees on the table; e2fsck finds the root clean (checksums included,
    // after the times were clamped); mtools finds GRUB at the removable path.
    let sfdisk: Value =
        serde_json::from_slice(&tool_output(tool("sfdisk").arg("--json").arg(&image))).unwrap();
    assert_eq!(
        sfdisk["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let root_start = parts[2]["start"].as_u64().unwrap();
    tool_output(
        tool("e2fsck")
            .arg("-fn")
            .arg(format!("{}?offset={root_start}", image.display())),
    );
    let efi = efi_boot_dir(&image, parts[1]["start"].as_u64().unwrap());
    assert!(efi.contains("BOOTX64.EFI"), "{efi}");

    // The configuration boots the root by UUID; fstab mounts it and the ESP by UUID;
    // GRUB's modules are where its prefix points.
    let cfg = debugfs(&image, root_start, "cat /boot/grub/grub.cfg");
    assert!(cfg.contains(&format!("root=UUID={root_uuid} ro")), "{cfg}");
    assert!(
        cfg.contains(&format!("linux /boot/vmlinuz-{kernel} ")),
        "{cfg}"
    );
    let fstab = debugfs(&image, root_start, "cat /etc/fstab");
    assert!(
        fstab.contains(&format!("UUID={root_uuid} / ext4")),
        "{fstab}"
    );
    let modules = debugfs(&image, root_start, "ls -p /boot/grub/i386-pc");
    assert!(modules.contains("/normal.mod/"), "{modules}");
    // Times: a file newer than SOURCE_DATE_EPOCH (fstab, written by the build) is
    // clamped to it; an older one (ls, from its package) keeps its modification
    // time; access, change and creation times are the modification time.
    let times = |path: &str| -> Vec<String> {
        let stat = debugfs(&image, root_start, &format!("stat {path}"));
        ["ctime", "atime", "mtime", "crtime"]
            .iter()
            .map(|f| {
                let line = stat.lines().find(|l| l.trim_start().starts_with(f));
                line.unwrap_or_else(|| panic!("{f} in {stat}"))
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(times("/etc/fstab"), vec!["0x6553f100:00000000"; 4]);
    let ls = times("/usr/bin/ls");
    assert!(
        ls.iter().all(|t| t == &ls[0]) && ls[0].as_str() < "0x6553f100",
        "{ls:?}"
    );

    // amiforge's own inspection of what it built.
    let inspected = json(&["inspect", image.to_str().unwrap(), "--format", "json"]);
    assert_eq!(inspected["boot_mode"], "uefi-preferred", "{inspected:#}");
    assert_eq!(inspected["architecture"], "x86_64");
    let text = inspected.to_string();
    assert!(text.contains("Debian GNU/Linux 12"), "{text}");
    assert!(text.contains(kernel), "{text}");
    assert_eq!(inspected["drivers"]["ena"], true, "{inspected:#}");
    assert_eq!(inspected["drivers"]["nvme"], true, "{inspected:#}");

    // Sysprep removed the build's host keys, machine id and logs; the only secrets
    // left are the vendors' (cloud-init's example keys, in its source and in the
    // bytecode compiled from it), so the build's secret scan let it through.
    let removed: Vec<&str> = report["sysprep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    for op in ["ssh-host-keys", "machine-id", "logfiles", "account-backups"] {
        assert!(removed.contains(&op), "{op} in {removed:?}");
    }
    let audited = json(&[
        "audit",
        image.to_str().unwrap(),
        "--format",
        "json",
        "--fail-on",
        "none",
    ]);
    let findings = audited["findings"].as_array().unwrap();
    for f in findings {
        let rule = f["rule"].as_str().unwrap();
        assert!(
            ![
                "hygiene.ssh-host-key",
                "hygiene.ssh-host-public-key",
                "hygiene.machine-id",
                "hygiene.log-file",
                "hygiene.account-file-backup",
            ]
            .contains(&rule),
            "{f}"
        );
        if f["category"] == "secret" {
            assert_eq!(f["severity"], "info", "{f}");
        }
    }
    let compiled: Vec<&Value> = findings
        .iter()
        .filter(|f| {
            f["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/__pycache__/cc_ssh.cpython-311.pyc"))
        })
        .collect();
    assert!(
        !compiled.is_empty(),
        "cloud-init's bytecode holds its example keys"
    );
    for f in compiled {
        assert_eq!(f["shipped_by"], "cloud-init", "{f}");
        assert!(
            f["title"].as_str().unwrap().contains("compiled from"),
            "{f}"
        );
    }

    // It boots: UEFI (OVMF) and legacy BIOS (SeaBIOS), to the user data's marker.
    // The SSH host keys the user data counts are new: sysprep removed the tree's.
    let before = sha256_file(&image);
    let log = scratch.path("serial.log");
    let (code, tested, stderr) = boot_test(&image, &["--log", log.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{tested:#} {stderr}");
    assert_eq!(
        passed_checks(&tested),
        every_check_passed_in_uefi_and_bios()
    );
    let serial = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(serial.contains("Linux version"), "the serial log is saved");
    assert_eq!(
        sha256_file(&image),
        before,
        "boot-test never writes the image"
    );

    // The same disk without its EFI loader (deleted with mtools) fails at the
    // firmware step, with exit 1, in seconds: the firmware turns to network boot.
    let broken = scratch.path("broken.img");
    sparse_copy(&image, &broken);
    let esp = format!(
        "{}@@{}",
        broken.display(),
        parts[1]["start"].as_u64().unwrap()
    );
    tool_output(tool("mdel").args(["-i", &esp, "::/EFI/BOOT/BOOTX64.EFI"]));
    let (code, tested, stderr) = boot_test(&broken, &["--firmware", "uefi"]);
    assert_eq!(code, Some(1), "{tested:#} {stderr}");
    assert_eq!(tested["boots"][0]["failed_step"], "firmware", "{tested:#}");
    assert!(
        tested["boots"][0]["ended"]
            .as_str()
            .unwrap()
            .contains("no boot loader"),
        "{tested:#}"
    );
}

/// The checks of boot-test, in order.
const CHECKS: [&str; 6] = [
    "firmware",
    "loader",
    "kernel",
    "multi-user",
    "user-data",
    "ssh-host-keys",
];

/// A UEFI boot and a BIOS boot with every check passed, as [`passed_checks`] gives it.
fn every_check_passed_in_uefi_and_bios() -> Vec<(String, Vec<String>)> {
    let all: Vec<String> = CHECKS.map(String::from).to_vec();
    vec![("uefi".into(), all.clone()), ("bios".into(), all)]
}

/// Which checks of each boot passed, by firmware.
fn passed_checks(tested: &Value) -> Vec<(String, Vec<String>)> {
    tested["boots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let passed = b["checks"].as_array().unwrap().iter();
            (
                b["firmware"].as_str().unwrap().to_string(),
                passed
                    .filter(|c| c["passed"] == true)
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn the_debian_tree_with_an_xfs_root_boots_with_uefi_and_with_bios() {
    let scratch = Scratch::new("boot-xfs");
    let image = scratch.path("debian-xfs.img");
    let report = build(&boot_tree(), &image, &["--root-fs", "xfs"]);
    assert_eq!(report["root_fs"], "xfs");
    let left_out: Vec<&str> = report["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert!(
        !left_out.is_empty() && left_out.iter().all(|p| p.starts_with("/dev/")),
        "{left_out:?}"
    );
    let inspected = json(&["inspect", image.to_str().unwrap(), "--format", "json"]);
    assert_eq!(inspected["boot_mode"], "uefi-preferred", "{inspected:#}");
    let text = inspected.to_string();
    assert!(text.contains("Debian GNU/Linux 12"), "{text}");
    assert!(text.contains(report["kernel"].as_str().unwrap()), "{text}");
    assert_eq!(inspected["drivers"]["ena"], true, "{inspected:#}");
    assert_eq!(inspected["drivers"]["nvme"], true, "{inspected:#}");

    // GRUB reads the XFS (its prefix and the kernel live there), the kernel mounts it.
    let log = scratch.path("serial.log");
    let (code, tested, stderr) = boot_test(&image, &["--log", log.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{tested:#} {stderr}");
    assert_eq!(
        passed_checks(&tested),
        every_check_passed_in_uefi_and_bios()
    );
    let serial = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(
        serial.contains("XFS (vda3): Mounting V5 Filesystem"),
        "{serial}"
    );
}

#[test]
fn an_arm64_debian_tree_builds_into_a_uefi_disk_that_boots_in_qemu_system_aarch64() {
    // The arm64 tree (debootstrap --arch arm64, its scripts run by qemu-user-static)
    // has GRUB's arm64-efi modules and the arm64 cloud kernel.
    let scratch = Scratch::new("boot-arm64");
    let image = scratch.path("debian-arm64.img");
    let report = build(&fixture("debian-boot-root-arm64"), &image, &[]);
    // Nothing said which architecture: the tree's programs did, and arm64 boots UEFI.
    assert_eq!(report["architecture"], "arm64", "{report:#}");
    assert_eq!(report["boot"], "uefi");
    let parts = report["partitions"].as_array().unwrap();
    assert_eq!(
        parts[1]["type_guid"], "b921b045-1df0-41c3-af44-4c6f280d3fae",
        "the Discoverable Partitions root type of arm64"
    );
    let efi = efi_boot_dir(&image, parts[0]["start"].as_u64().unwrap());
    assert!(efi.contains("BOOTAA64.EFI"), "{efi}");
    let inspected = json(&["inspect", image.to_str().unwrap(), "--format", "json"]);
    assert_eq!(inspected["architecture"], "arm64", "{inspected:#}");
    assert_eq!(inspected["boot_mode"], "uefi", "{inspected:#}");

    // AAVMF, GRUB, the kernel on the PL011 console, systemd and cloud-init: all six
    // steps, under software emulation of a Neoverse N1.
    let (code, tested, stderr) = boot_test(&image, &[]);
    assert_eq!(code, Some(0), "{tested:#} {stderr}");
    let all: Vec<String> = CHECKS.map(String::from).to_vec();
    assert_eq!(passed_checks(&tested), vec![("uefi".to_string(), all)]);
    assert_eq!(tested["boots"][0]["accel"], "tcg", "{tested:#}");
    // There is no legacy BIOS on arm64.
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("boot-test")
            .arg(&image)
            .args(["--firmware", "bios"]),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("UEFI only"), "{stderr}");
}

#[test]
fn two_builds_of_the_debian_tree_with_one_source_date_epoch_are_identical() {
    let scratch = Scratch::new("boot-repro");
    let (a, b) = (scratch.path("a.img"), scratch.path("b.img"));
    let mut first = build(&boot_tree(), &a, &[]);
    let mut second = build(&boot_tree(), &b, &[]);
    first["image"] = Value::Null;
    second["image"] = Value::Null;
    assert_eq!(first, second);
    assert_eq!(sha256_file(&a), sha256_file(&b));
}

#[test]
fn boot_test_refuses_what_it_cannot_boot_with_exit_2() {
    let scratch = Scratch::new("boot-refuse");
    let empty = scratch.path("empty.img");
    std::fs::File::create(&empty)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (code, _, stderr) = outcome(amiforge().arg("boot-test").arg(&empty));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("found no way it boots"), "{stderr}");
    let (code, _, stderr) = outcome(amiforge().arg("boot-test").arg(scratch.path("absent.img")));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("needs a local image file"), "{stderr}");
}

#[test]
fn publish_with_boot_test_uploads_only_an_image_that_boots_a_bundle_boots_too_and_from_tree_builds_first(
) {
    let scratch = Scratch::new("boot-publish");
    let image = scratch.path("uefi.img");
    // UEFI only: one boot to wait for.
    let (code, built, stderr) = outcome(
        amiforge()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("build")
            .arg(boot_tree())
            .arg("-o")
            .arg(&image)
            .args(["--size", "2G", "--boot", "uefi", "--format", "json"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let built: Value = serde_json::from_str(&built).unwrap();
    assert_eq!(built["partitions"][0]["name"], "esp");
    let esp_start = built["partitions"][0]["start"].as_u64().unwrap();
    let server = ebs_testserver::start_background(ebs_testserver::Config {
        completion_delay_ms: 100,
        ..Default::default()
    })
    .unwrap();
    let publish = |image: &Path, name: &str| {
        outcome(
            amiforge_at(&server.endpoint())
                .arg("publish")
                .arg(image)
                .args(["--name", name, "--boot-test", "--format", "json"])
                .args(["--boot-test-timeout", "480", "--no-progress"]),
        )
    };

    // Without its loader the disk fails the boot test in seconds: nothing is sent.
    let broken = scratch.path("broken.img");
    sparse_copy(&image, &broken);
    let esp = format!("{}@@{esp_start}", broken.display());
    tool_output(tool("mdel").args(["-i", &esp, "::/EFI/BOOT/BOOTX64.EFI"]));
    let (code, _, stderr) = publish(&broken, "amiforge-broken");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("uefi failed at firmware"), "{stderr}");
    assert!(stderr.contains("nothing was uploaded"), "{stderr}");
    let stats = server.stats();
    assert_eq!(stats.requests.get("StartSnapshot"), None, "{stats:?}");

    // Carried across the gap as a bundle, the disk still boots: boot-test verifies
    // the bundle and unpacks its disk first.
    let bundle = scratch.path("bundle");
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("bundle")
            .arg(&image)
            .arg("--out")
            .arg(&bundle)
            .args(["--name", "amiforge-bundled", "--no-progress"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, tested, stderr) = boot_test(&bundle, &[]);
    assert_eq!(code, Some(0), "{tested:#} {stderr}");
    assert_eq!(tested["boots"][0]["firmware"], "uefi");
    assert_eq!(tested["image"], bundle.display().to_string());

    // Build options without a tree to build are an error.
    let (code, _, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .arg("publish")
            .arg(&image)
            .args(["--name", "amiforge-confused", "--size", "2G"]),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("give --from-tree TREE"), "{stderr}");

    // publish --from-tree builds the disk (the same bytes as the build above: one
    // SOURCE_DATE_EPOCH), boots it, uploads and registers it, and says so in a tag.
    let rebuilt = scratch.path("rebuilt.img");
    let (code, stdout, stderr) = outcome(
        amiforge_at(&server.endpoint())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("publish")
            .arg(&rebuilt)
            .arg("--from-tree")
            .arg(boot_tree())
            .args(["--size", "2G", "--boot", "uefi"])
            .args([
                "--name",
                "amiforge-booted",
                "--boot-test",
                "--format",
                "json",
            ])
            .args(["--boot-test-timeout", "480", "--no-progress"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sha256_file(&rebuilt), sha256_file(&image));
    let published: Value = serde_json::from_str(&stdout).unwrap();
    // The snapshot holds the disk: every block that is not zeros, and nothing else.
    let blocks = server
        .own_blocks(published["snapshot_id"].as_str().unwrap())
        .unwrap();
    let disk = std::fs::File::open(&image).unwrap();
    const BLOCK: u64 = 512 << 10;
    let mut block = vec![0u8; BLOCK as usize];
    for index in 0..std::fs::metadata(&image).unwrap().len() / BLOCK {
        std::os::unix::fs::FileExt::read_exact_at(&disk, &mut block, index * BLOCK).unwrap();
        match blocks.get(&index) {
            Some(sent) => assert!(sent[..] == block[..], "block {index} differs"),
            None => assert!(block.iter().all(|&b| b == 0), "block {index} was not sent"),
        }
    }
    let tags = server.tags_of(published["image_id"].as_str().unwrap());
    assert!(
        tags.contains(&("amiforge:boot-test".to_string(), "uefi passed".to_string())),
        "{tags:?}"
    );
}
