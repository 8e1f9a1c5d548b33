//! `amiforge build`: a GPT disk from a root tree, checked with tools we did not
//! write: sfdisk reads the partition table, mtools the ESP, debugfs the root
//! filesystem; two builds with one SOURCE_DATE_EPOCH are byte-identical. These
//! use a small tree with a stand-in EFI loader (UEFI only); tests/boot.rs builds
//! and boots a real Debian tree.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

/// A small root tree: configuration, a binary-looking file, a shell (the build
/// host's own, which tells the tree's architecture), a symlink, a nested directory,
/// and a stand-in for systemd-boot's EFI binary (random bytes: this test checks
/// where the loader goes, not that it boots).
fn make_tree(dir: &Path) {
    for d in [
        "etc/ssh",
        "usr/bin",
        "usr/lib/systemd/boot/efi",
        "var/log",
        "boot",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("etc/hostname"), "builder\n").unwrap();
    std::fs::write(
        dir.join("etc/ssh/sshd_config"),
        "PasswordAuthentication no\n",
    )
    .unwrap();
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("usr/bin/tool"), &blob).unwrap();
    std::fs::copy("/bin/dash", dir.join("usr/bin/sh")).unwrap();
    std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
    let loader: Vec<u8> = (0..65_536u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(
        dir.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        loader,
    )
    .unwrap();
}

fn build(tree: &Path, out: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    outcome(
        amiforge()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("build")
            .arg(tree)
            .arg("-o")
            .arg(out)
            .args(["--size", "256M", "--format", "json"])
            .args(extra),
    )
}

/// Copies the partition `part` (as the build report gives it: start and size,
/// 1 MiB-aligned) of `image` to `to`, with dd, holes kept.
fn cut_partition(image: &Path, part: &Value, to: &Path) {
    tool_output(
        tool("dd")
            .arg(format!("if={}", image.display()))
            .arg(format!("of={}", to.display()))
            .args(["bs=1M", "conv=sparse", "status=none"])
            .arg(format!("skip={}", part["start"].as_u64().unwrap() >> 20))
            .arg(format!("count={}", part["size"].as_u64().unwrap() >> 20)),
    );
}

/// Every file, directory and symlink under `dir`: path → (kind, content digest or
/// link target).
fn listing(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                format!("file {}", sha256_file(&p))
            };
            out.insert(rel, what);
        }
    }
    out
}

#[test]
fn a_tree_becomes_a_gpt_disk_that_sfdisk_mtools_and_debugfs_read_back() {
    let scratch = Scratch::new("build");
    let tree = scratch.path("tree");
    make_tree(&tree);
    let before = listing(&tree);
    let image = scratch.path("disk.img");
    let (code, stdout, stderr) = build(&tree, &image, &["--boot", "uefi"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listing(&tree), before, "the tree is not changed");
    // No --arch: the tree's shell says x86_64.
    assert_eq!(report["architecture"], "x86_64");
    assert_eq!(report["boot"], "uefi");
    let stages: Vec<_> = std::fs::read_dir(scratch.path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".amiforge-stage")
        })
        .collect();
    assert!(stages.is_empty(), "the staging directory is removed");

    // The partition table, as sfdisk reads it.
    let sfdisk: Value =
        serde_json::from_slice(&tool_output(tool("sfdisk").arg("--json").arg(&image))).unwrap();
    let table = &sfdisk["partitiontable"];
    assert_eq!(table["label"], "gpt");
    assert_eq!(
        table["id"].as_str().unwrap().to_lowercase(),
        report["disk_guid"].as_str().unwrap()
    );
    let theirs = table["partitions"].as_array().unwrap();
    let ours = report["partitions"].as_array().unwrap();
    assert_eq!(theirs.len(), 2);
    for (t, o) in theirs.iter().zip(ours) {
        assert_eq!(
            t["start"].as_u64().unwrap() * 512,
            o["start"].as_u64().unwrap()
        );
        assert_eq!(
            t["size"].as_u64().unwrap() * 512,
            o["size"].as_u64().unwrap()
        );
        assert_eq!(
            t["type"].as_str().unwrap().to_lowercase(),
            o["type_guid"].as_str().unwrap()
        );
        assert_eq!(
            t["uuid"].as_str().unwrap().to_lowercase(),
            o["guid"].as_str().unwrap()
        );
        assert_eq!(t["name"], o["name"]);
        assert_eq!(t["start"].as_u64().unwrap() % 2048, 0, "aligned to 1 MiB");
    }
    let types: Vec<&str> = theirs.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", // EFI system
            "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", // root, x86-64 (DPS)
        ]
    );

    // The ESP, as mtools reads it: the loader at the removable path.
    let esp = ours[0]["start"].as_u64().unwrap();
    let at = format!("{}@@{esp}", image.display());
    let dir = String::from_utf8(tool_output(tool("mdir").args(["-i", &at, "-/", "::/"]))).unwrap();
    assert!(
        dir.contains("BOOTX64 EFI") || dir.contains("BOOTX64.EFI"),
        "{dir}"
    );
    let copied = scratch.path("BOOTX64.EFI");
    tool_output(
        tool("mcopy")
            .args(["-i", &at, "::/EFI/BOOT/BOOTX64.EFI"])
            .arg(&copied),
    );
    assert_eq!(
        sha256_file(&copied),
        sha256_file(&tree.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"))
    );

    // The root filesystem, as debugfs dumps it: the tree, file for file.
    let root = &ours[1];
    let root_img = scratch.path("root.img");
    cut_partition(&image, root, &root_img);
    let uuid = String::from_utf8(tool_output(
        tool("blkid")
            .args(["-s", "UUID", "-o", "value"])
            .arg(&root_img),
    ))
    .unwrap();
    assert_eq!(uuid.trim(), report["root_uuid"].as_str().unwrap());
    let dumped = scratch.path("dumped");
    std::fs::create_dir_all(&dumped).unwrap();
    debugfs_rdump(&root_img, &dumped);
    let mut theirs = listing(&dumped);
    theirs.remove("lost+found");
    // The image adds /etc/fstab (the root and the ESP by UUID) and /boot/efi.
    let fstab = std::fs::read_to_string(dumped.join("etc/fstab")).unwrap();
    assert!(
        fstab.contains(&format!(
            "UUID={} / ext4 ",
            report["root_uuid"].as_str().unwrap()
        )),
        "{fstab}"
    );
    let esp_uuid = String::from_utf8(tool_output(
        tool("blkid")
            .args(["-p", "-s", "UUID", "-o", "value", "-O"])
            .arg(esp.to_string())
            .arg(&image),
    ))
    .unwrap();
    assert_eq!(esp_uuid.trim(), report["esp_uuid"].as_str().unwrap());
    assert!(
        fstab.contains(&format!("UUID={} /boot/efi vfat ", esp_uuid.trim())),
        "{fstab}"
    );
    assert_eq!(
        theirs.remove("etc/fstab").map(|k| k.starts_with("file ")),
        Some(true)
    );
    assert_eq!(theirs.remove("boot/efi").as_deref(), Some("dir"));
    assert_eq!(theirs, before);

    // amiforge reads its own disk like any other.
    let inspected = json(&["inspect", image.to_str().unwrap(), "--format", "json"]);
    assert_eq!(inspected["boot_mode"], "uefi", "{inspected:#}");
}

#[test]
fn an_xfs_root_holds_the_tree_as_xfs_db_reads_it_back_and_is_reproducible() {
    let scratch = Scratch::new("build-xfs");
    let tree = scratch.path("tree");
    make_tree(&tree);
    // Names of any bytes, a hard link, and a device node: mkfs.xfs would open the
    // host's device to copy it, so the build leaves it out and says so.
    std::fs::write(tree.join("etc/Text::Wrap.3pm"), "a name with colons\n").unwrap();
    std::fs::hard_link(tree.join("usr/bin/tool"), tree.join("usr/bin/tool-again")).unwrap();
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    tool_output(
        tool("mknod")
            .arg(tree.join("dev/null"))
            .args(["c", "1", "3"]),
    );
    let mkfs = private_tool("xfsprogs/bin/mkfs.xfs");
    let xfs_build = |out: &Path, from: &Path| {
        outcome(
            amiforge()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .env("AMIFORGE_MKFS_XFS", &mkfs)
                .arg("build")
                .arg(from)
                .arg("-o")
                .arg(out)
                // mkfs.xfs makes nothing under 300 MB.
                .args(["--size", "512M", "--boot", "uefi", "--root-fs", "xfs"])
                .args(["--format", "json"]),
        )
    };
    let image = scratch.path("disk.img");
    let (code, stdout, stderr) = xfs_build(&image, &tree);
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["root_fs"], "xfs");
    assert_eq!(report["left_out"][0]["path"], "/dev/null", "{report:#}");

    // The root partition, cut out: xfs_repair (xfsprogs 7 and the system's own)
    // finds it consistent, CRCs included after the generations and times were set.
    let root = &report["partitions"][1];
    let root_img = scratch.path("root.img");
    cut_partition(&image, root, &root_img);
    for mut repair in [
        std::process::Command::new(private_tool("xfsprogs/bin/xfs_repair")),
        tool("xfs_repair"),
    ] {
        tool_output(repair.args(["-n", "-f"]).arg(&root_img));
    }
    let probed = String::from_utf8(tool_output(
        tool("blkid").args(["-o", "export"]).arg(&root_img),
    ))
    .unwrap();
    assert!(probed.contains("TYPE=xfs"), "{probed}");
    assert!(
        probed.contains(&format!("UUID={}", report["root_uuid"].as_str().unwrap())),
        "{probed}"
    );

    // xfs_db's rdump: the tree, file for file, plus fstab and /boot/efi, less the
    // device node; the hard link is one inode.
    let dumped = scratch.path("dumped");
    std::fs::create_dir_all(&dumped).unwrap();
    tool_output(
        std::process::Command::new(private_tool("xfsprogs/bin/xfs_db"))
            .args(["-r", "-c"])
            .arg(format!("rdump / {}", dumped.display()))
            .arg(&root_img),
    );
    let mut theirs = listing(&dumped);
    let fstab = std::fs::read_to_string(dumped.join("etc/fstab")).unwrap();
    assert!(
        fstab.contains(&format!(
            "UUID={} / xfs defaults 0 0",
            report["root_uuid"].as_str().unwrap()
        )),
        "{fstab}"
    );
    assert!(theirs.remove("etc/fstab").is_some());
    assert_eq!(theirs.remove("boot/efi").as_deref(), Some("dir"));
    let mut expected = listing(&tree);
    expected.remove("dev/null");
    assert_eq!(theirs, expected);
    let inode = |path: &str| {
        let out = tool_output(
            std::process::Command::new(private_tool("xfsprogs/bin/xfs_db"))
                .args([
                    "-r",
                    "-c",
                    &format!("path {path}"),
                    "-c",
                    "print core.nlinkv2 v3.inumber",
                ])
                .arg(&root_img),
        );
        String::from_utf8(out).unwrap()
    };
    let linked = inode("/usr/bin/tool");
    assert!(linked.contains("core.nlinkv2 = 2"), "{linked}");
    assert_eq!(linked, inode("/usr/bin/tool-again"));

    // amiforge reads it back; a copy of the tree builds the same bytes.
    let listed = String::from_utf8(ok(&["ls", image.to_str().unwrap(), "/etc"])).unwrap();
    assert!(listed.contains("Text::Wrap.3pm"), "{listed}");
    let again = scratch.path("again.img");
    tool_output(tool("cp").arg("-a").arg(&tree).arg(scratch.path("copy")));
    let (code, _, stderr) = xfs_build(&again, &scratch.path("copy"));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sha256_file(&image), sha256_file(&again));
}

#[test]
fn an_xfs_root_needs_an_mkfs_xfs_that_populates_from_a_directory() {
    let scratch = Scratch::new("build-old-xfs");
    let tree = scratch.path("tree");
    make_tree(&tree);
    // An mkfs.xfs of xfsprogs 6.1 (Debian 12's) cannot: the build says what it needs
    // before it makes anything.
    let old = scratch.path("mkfs.xfs");
    std::fs::write(&old, "#!/bin/sh\necho mkfs.xfs version 6.1.0\n").unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, _, stderr) = outcome(
        amiforge()
            .env("AMIFORGE_MKFS_XFS", &old)
            .arg("build")
            .arg(&tree)
            .arg("-o")
            .arg(scratch.path("disk.img"))
            .args(["--size", "512M", "--boot", "uefi", "--root-fs", "xfs"]),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("xfsprogs 6.17 or later"), "{stderr}");
    assert!(!scratch.path("disk.img").exists());
}

#[test]
fn builds_with_one_source_date_epoch_are_identical_and_a_changed_file_changes_them() {
    let scratch = Scratch::new("build-repro");
    let tree = scratch.path("tree");
    make_tree(&tree);
    let (a, b, c) = (
        scratch.path("a.img"),
        scratch.path("b.img"),
        scratch.path("c.img"),
    );
    let uefi = ["--boot", "uefi"];
    assert_eq!(build(&tree, &a, &uefi).0, Some(0));
    // Reading, linking and copying the tree's files moves their access and change
    // times; the build clamps them, so a copy of the tree builds the same bytes.
    tool_output(tool("cp").arg("-a").arg(&tree).arg(scratch.path("copy")));
    assert_eq!(build(&scratch.path("copy"), &b, &uefi).0, Some(0));
    assert_eq!(sha256_file(&a), sha256_file(&b));
    std::fs::write(tree.join("etc/hostname"), "other\n").unwrap();
    assert_eq!(build(&tree, &c, &uefi).0, Some(0));
    assert_ne!(sha256_file(&a), sha256_file(&c));
    // A different seed gives different identifiers for the same tree.
    let (_, first, _) = build(&tree, &a, &["--boot", "uefi", "--seed", "one"]);
    let (_, second, _) = build(&tree, &b, &["--boot", "uefi", "--seed", "two"]);
    let (first, second): (Value, Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&second).unwrap(),
    );
    assert_ne!(first["disk_guid"], second["disk_guid"]);
    assert_ne!(first["root_uuid"], second["root_uuid"]);
}

#[test]
fn a_tree_without_grub_is_refused_for_legacy_boot_and_without_a_loader_for_uefi() {
    let scratch = Scratch::new("build-noloader");
    let tree = scratch.path("tree");
    make_tree(&tree);
    std::fs::remove_file(tree.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi")).unwrap();
    let image = scratch.path("disk.img");
    let (code, _, stderr) = build(&tree, &image, &["--boot", "uefi"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no EFI loader"), "{stderr}");
    assert!(stderr.contains("systemd-bootx64.efi"), "{stderr}");
    let (code, _, stderr) = build(&tree, &image, &["--boot", "hybrid"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no EFI loader"), "{stderr}");
    // Legacy boot needs GRUB's i386-pc modules in the tree.
    let (code, _, stderr) = build(&tree, &image, &["--boot", "bios"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("usr/lib/grub/i386-pc"), "{stderr}");
    assert!(stderr.contains("grub-pc-bin"), "{stderr}");
    // The output may not land inside the tree (it would be copied into itself).
    let before = listing(&tree);
    let (code, _, stderr) = build(&tree, &tree.join("disk.img"), &["--boot", "uefi"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("may not be the tree or lie inside it"),
        "{stderr}"
    );
    assert_eq!(listing(&tree), before);
    // A failed build leaves what was at the output as it was, and no partial disk.
    std::fs::write(&image, b"the previous image").unwrap();
    let (code, _, _) = build(&tree, &image, &["--boot", "uefi"]);
    assert_eq!(code, Some(2));
    assert_eq!(std::fs::read(&image).unwrap(), b"the previous image");
    let partial: Vec<_> = std::fs::read_dir(scratch.path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
        .collect();
    assert!(partial.is_empty());
    // Too small a disk is an error, not a panic.
    let (code, _, stderr) = outcome(
        amiforge()
            .arg("build")
            .arg(&tree)
            .arg("-o")
            .arg(&image)
            .args(["--boot", "bios", "--size", "10M"]),
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("at least"), "{stderr}");
}

#[test]
fn sysprep_lists_every_removal_and_a_tree_with_a_private_key_is_refused() {
    let scratch = Scratch::new("build-sysprep");
    let tree = scratch.path("tree");
    make_tree(&tree);
    // What a build machine leaves behind, including a private key that sysprep
    // removes (the SSH host key) ...
    for d in ["root", "home/ann", "var/lib/cloud/instances/i-0abc", "tmp"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    tool_output(
        tool("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(tree.join("etc/ssh/ssh_host_ed25519_key")),
    );
    for (rel, body) in [
        ("etc/machine-id", "4b0c9b1f6f3e4a1d9d1c2b3a4f5e6d7c\n"),
        ("root/.bash_history", "export AWS_SECRET_ACCESS_KEY=...\n"),
        ("home/ann/.python_history", "import boto3\n"),
        ("var/log/dpkg.log", "status installed openssh-server\n"),
        (
            "var/lib/cloud/instances/i-0abc/user-data.txt",
            "#cloud-config\n",
        ),
        ("tmp/build.sh", "make install\n"),
    ] {
        std::fs::write(tree.join(rel), body).unwrap();
    }
    let before = listing(&tree);
    let image = scratch.path("disk.img");
    let (code, stdout, stderr) = build(&tree, &image, &["--boot", "uefi"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        listing(&tree),
        before,
        "sysprep works on the stage, not the tree"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let done: Vec<(String, String)> = report["sysprep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap().to_string(),
                r["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (op, path) in [
        ("ssh-host-keys", "/etc/ssh/ssh_host_ed25519_key"),
        ("ssh-host-keys", "/etc/ssh/ssh_host_ed25519_key.pub"),
        ("machine-id", "/etc/machine-id"),
        ("shell-history", "/root/.bash_history"),
        ("shell-history", "/home/ann/.python_history"),
        ("cloud-init", "/var/lib/cloud/instances"),
        ("logfiles", "/var/log/dpkg.log"),
        ("tmp-files", "/tmp/build.sh"),
    ] {
        assert!(
            done.contains(&(op.to_string(), path.to_string())),
            "{op} {path} in {done:?}"
        );
    }
    assert_eq!(report["secret_scan"]["fail_on"], "high");
    // The audit of the image finds none of what sysprep removed.
    let audited = json(&[
        "audit",
        image.to_str().unwrap(),
        "--format",
        "json",
        "--fail-on",
        "none",
    ]);
    let rules: Vec<&str> = audited["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    for gone in [
        "hygiene.ssh-host-key",
        "hygiene.ssh-host-public-key",
        "hygiene.machine-id",
        "hygiene.shell-history",
        "hygiene.cloud-init-state",
        "hygiene.cloud-init-user-data",
        "hygiene.log-file",
        "hygiene.tmp-leftover",
        "secret.private-key-openssh",
    ] {
        assert!(!rules.contains(&gone), "{gone} in {rules:?}");
    }

    // ... and one that is the application's: the build is refused, exit 1, and
    // no image is left behind.
    std::fs::create_dir_all(tree.join("opt/app")).unwrap();
    tool_output(
        tool("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(tree.join("opt/app/key.pem")),
    );
    std::fs::remove_file(&image).unwrap();
    let (code, _, stderr) = build(&tree, &image, &["--boot", "uefi"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/opt/app/key.pem"), "{stderr}");
    assert!(stderr.contains("build refused"), "{stderr}");
    assert!(!image.exists(), "a refused image is not kept");
    // With the scan off (or the key allowed) it builds.
    let (code, _, stderr) = build(&tree, &image, &["--boot", "uefi", "--fail-on", "none"]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn qcow2_and_vmdk_outputs_hold_the_same_disk_as_raw_by_qemu_img_compare() {
    let scratch = Scratch::new("build-formats");
    let tree = scratch.path("tree");
    make_tree(&tree);
    let raw = scratch.path("disk.img");
    assert_eq!(build(&tree, &raw, &["--boot", "uefi"]).0, Some(0));
    for (format, file, subformat) in [
        ("qcow2", "disk.qcow2", None),
        ("vmdk", "disk.vmdk", Some("streamOptimized")),
    ] {
        let out = scratch.path(file);
        let (code, stdout, stderr) =
            build(&tree, &out, &["--boot", "uefi", "--image-format", format]);
        assert_eq!(code, Some(0), "{stderr}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["image_format"], format);
        let info: Value = serde_json::from_slice(&tool_output(
            tool("qemu-img")
                .args(["info", "--output", "json"])
                .arg(&out),
        ))
        .unwrap();
        assert_eq!(info["format"], format, "{info:#}");
        if let Some(sub) = subformat {
            assert_eq!(
                info["format-specific"]["data"]["create-type"], sub,
                "{info:#}"
            );
        }
        // qemu-img's reading of the container is the raw build, byte for byte.
        tool_output(
            tool("qemu-img")
                .args(["compare", "-f", "raw", "-F", format])
                .arg(&raw)
                .arg(&out),
        );
        // No raw disk is left beside the container.
        let leftovers: Vec<_> = std::fs::read_dir(scratch.path(""))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".raw-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let inspected = json(&["inspect", out.to_str().unwrap(), "--format", "json"]);
        assert_eq!(inspected["boot_mode"], "uefi", "{inspected:#}");
        // The container is as reproducible as the disk (qemu-img's random VMDK
        // content id is replaced by a derived one). The same file name, in another
        // directory: a VMDK's descriptor names its own file.
        std::fs::create_dir_all(scratch.path("again")).unwrap();
        let again = scratch.path("again").join(file);
        let (code, _, stderr) = build(&tree, &again, &["--boot", "uefi", "--image-format", format]);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(
            sha256_file(&out),
            sha256_file(&again),
            "two builds of {format}"
        );
    }
}

#[test]
fn a_tar_archive_of_the_tree_builds_the_same_disk_and_a_hostile_one_is_refused() {
    let scratch = Scratch::new("build-tar");
    let tree = scratch.path("tree");
    make_tree(&tree);
    let from_dir = scratch.path("dir.img");
    assert_eq!(build(&tree, &from_dir, &["--boot", "uefi"]).0, Some(0));
    // GNU tar writes the archives: plain, gzip, xz and zstd.
    for (flag, name) in [
        ("", "tree.tar"),
        ("-z", "tree.tar.gz"),
        ("-J", "tree.tar.xz"),
        ("--zstd", "tree.tar.zst"),
    ] {
        let archive = scratch.path(name);
        let mut tar = tool("tar");
        tar.args(["--numeric-owner", "-C"]).arg(&tree);
        if !flag.is_empty() {
            tar.arg(flag);
        }
        tool_output(tar.arg("-cf").arg(&archive).arg("."));
        let image = scratch.path(&format!("{name}.img"));
        let (code, stdout, stderr) = build(&archive, &image, &["--boot", "uefi"]);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert!(
            report["unpacked_entries"].as_u64().unwrap() > 5,
            "{report:#}"
        );
        assert_eq!(sha256_file(&image), sha256_file(&from_dir), "{name}");
    }
    // An entry that climbs out of the tree is refused by name; nothing lands outside.
    let evil = scratch.path("evil.tar");
    let script = format!(
        "import io, tarfile\n\
         with tarfile.open({:?}, 'w') as t:\n\
         \x20   for name in ['etc/hostname', '../escaped']:\n\
         \x20       info = tarfile.TarInfo(name); info.size = 3\n\
         \x20       t.addfile(info, io.BytesIO(b'hi\\n'))\n",
        evil.display().to_string()
    );
    tool_output(tool("python3").arg("-c").arg(script));
    let image = scratch.path("evil.img");
    let (code, _, stderr) = build(&evil, &image, &["--boot", "uefi"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("../escaped"), "{stderr}");
    assert!(!scratch.path("escaped").exists());
    assert!(!scratch.0.parent().unwrap().join("escaped").exists());
    // Something that is neither a directory nor an archive.
    let junk = scratch.path("junk.bin");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    let (code, _, stderr) = build(&junk, &image, &["--boot", "uefi"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("junk.bin"), "{stderr}");
}

#[test]
fn build_straight_into_a_bundle_that_verifies_and_holds_the_same_disk() {
    let scratch = Scratch::new("build-bundle");
    let tree = scratch.path("tree");
    make_tree(&tree);
    let image = scratch.path("disk.img");
    assert_eq!(build(&tree, &image, &["--boot", "uefi"]).0, Some(0));
    let bundle = scratch.path("release-42");
    let build_bundle = |fail_on: &str| {
        outcome(
            amiforge()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .arg("build")
                .arg(&tree)
                .arg("--bundle")
                .arg(&bundle)
                .args(["--boot", "uefi", "--size", "256M", "--format", "json"])
                .args(["--fail-on", fail_on]),
        )
    };
    // The bundle's gate is the whole audit: this tree has no kernel (high), so
    // at the default threshold nothing is written.
    let (code, _, stderr) = build_bundle("high");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("boot.no-kernel"), "{stderr}");
    assert!(!bundle.exists());
    // The bundle is the only output: no disk is left beside it.
    let (code, stdout, stderr) = build_bundle("critical");
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["image"], Value::Null);
    assert_eq!(report["bundle"]["path"], bundle.display().to_string());
    let leftovers: Vec<_> = std::fs::read_dir(scratch.path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let verified = json(&[
        "bundle",
        "verify",
        bundle.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(
        verified["manifest_sha256"],
        report["bundle"]["manifest_sha256"]
    );
    let spec: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("register.json")).unwrap()).unwrap();
    assert_eq!(spec["name"], "release-42", "{spec:#}");
    // Extracted, it is the disk a plain build makes.
    let extracted = scratch.path("extracted.img");
    let (code, _, stderr) = outcome(
        amiforge()
            .args(["bundle", "extract"])
            .arg(&bundle)
            .arg(&extracted),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sha256_file(&extracted), sha256_file(&image));
}
