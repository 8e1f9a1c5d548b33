//! Disk containers made by qemu-img (qcow2 v2 and v3, compressed with zlib and zstd,
//! with extended L2 entries; VMDK monolithicSparse, streamOptimized and
//! monolithicFlat; VHD fixed and dynamic; VHDX fixed and dynamic) read through the
//! input layer exactly as `qemu-img convert -O raw` reads them, with a data map that
//! covers every non-zero byte and claims no more than `qemu-img map` allocates; and
//! every command gives the same answers on them as on the raw image.

mod common;

use common::{
    amiforge_at, fixture, outcome, qemu_convert, run_with_deadline, sha256_file, tool, tool_output,
    Scratch,
};
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// (name, qemu-img convert options, the format and subformat amiforge reports).
const CONTAINERS: &[(&str, &[&str], &str, &str)] = &[
    (
        "qcow2-v2",
        &["-O", "qcow2", "-o", "compat=0.10"],
        "qcow2",
        "v2",
    ),
    ("qcow2-v3", &["-O", "qcow2"], "qcow2", "v3"),
    (
        "qcow2-small-clusters",
        &["-O", "qcow2", "-o", "cluster_size=4096"],
        "qcow2",
        "v3",
    ),
    ("qcow2-zlib", &["-c", "-O", "qcow2"], "qcow2", "v3"),
    (
        "qcow2-zstd",
        &["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
        "qcow2",
        "v3, zstd",
    ),
    (
        "qcow2-extended-l2",
        &["-O", "qcow2", "-o", "extended_l2=on"],
        "qcow2",
        "v3, extended L2",
    ),
    (
        "qcow2-extended-l2-zlib",
        &[
            "-c",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=128k",
        ],
        "qcow2",
        "v3, extended L2",
    ),
    ("vmdk-sparse", &["-O", "vmdk"], "vmdk", "monolithicSparse"),
    (
        "vmdk-stream",
        &["-O", "vmdk", "-o", "subformat=streamOptimized"],
        "vmdk",
        "streamOptimized",
    ),
    (
        "vmdk-flat",
        &["-O", "vmdk", "-o", "subformat=monolithicFlat"],
        "vmdk",
        "monolithicFlat",
    ),
    (
        "vhd-dynamic",
        &["-O", "vpc", "-o", "force_size=on"],
        "vhd",
        "dynamic",
    ),
    (
        "vhd-fixed",
        &["-O", "vpc", "-o", "subformat=fixed,force_size=on"],
        "vhd",
        "fixed",
    ),
    ("vhdx-dynamic", &["-O", "vhdx"], "vhdx", "dynamic"),
    (
        "vhdx-fixed",
        &["-O", "vhdx", "-o", "subformat=fixed"],
        "vhdx",
        "fixed",
    ),
];

/// Containers whose disk is not the raw image byte for byte, only read: without
/// force_size, qemu-img rounds a VHD up to whole cylinders of its CHS geometry.
const READ_ONLY_CONTAINERS: &[(&str, &[&str], &str, &str)] = &[
    ("vhd-dynamic-chs", &["-O", "vpc"], "vhd", "dynamic"),
    (
        "vhd-fixed-chs",
        &["-O", "vpc", "-o", "subformat=fixed"],
        "vhd",
        "fixed",
    ),
];

/// qemu's name of a format: it must be told, since it does not probe a fixed VHD.
fn qemu_format(format: &str) -> &str {
    match format {
        "vhd" => "vpc",
        other => other,
    }
}

/// Converts `raw` into the container `options` make, in `dir`.
fn convert(dir: &Scratch, raw: &Path, name: &str, options: &[&str]) -> PathBuf {
    let out = dir.path(name);
    qemu_convert(raw, &out, options);
    out
}

/// What qemu-img reads from the container, as a raw file.
fn qemu_raw(dir: &Scratch, container: &Path, name: &str, format: &str) -> PathBuf {
    let out = dir.path(&format!("{name}.qemu.raw"));
    tool_output(
        tool("qemu-img")
            .args(["convert", "-f", qemu_format(format), "-O", "raw"])
            .arg(container)
            .arg(&out),
    );
    out
}

/// The bytes qemu-img map says the container stores (data, not zero).
fn qemu_allocated(container: &Path, format: &str) -> u64 {
    let map = tool_output(
        tool("qemu-img")
            .args(["map", "--output=json", "-f", qemu_format(format)])
            .arg(container),
    );
    let map: serde_json::Value = serde_json::from_slice(&map).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

/// SHA-256 of the whole virtual disk read through the reader; with `only_data`, of
/// the disk with everything outside the data map taken as zeros.
fn sha256_through(source: &dyn blockio::BlockSource, only_data: bool) -> String {
    const CHUNK: u64 = 1 << 20;
    let ranges = source.data_ranges().unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < source.len() {
        let n = CHUNK.min(source.len() - pos) as usize;
        source.read_exact_at(&mut buf[..n], pos).unwrap();
        if only_data {
            let mut masked = vec![0u8; n];
            for r in ranges
                .iter()
                .filter(|r| r.end > pos && r.start < pos + n as u64)
            {
                let (a, b) = (r.start.max(pos) - pos, r.end.min(pos + n as u64) - pos);
                masked[a as usize..b as usize].copy_from_slice(&buf[a as usize..b as usize]);
            }
            buf[..n].copy_from_slice(&masked);
        }
        h.update(&buf[..n]);
        pos += n as u64;
    }
    format!("{:x}", h.finalize())
}

#[test]
fn every_container_reads_as_qemu_img_reads_it_with_a_data_map_no_larger_than_qemus() {
    let dir = Scratch::new("containers-read");
    let raw = fixture("gpt-uefi.img");
    let mut rng = fastrand::Rng::with_seed(11);
    for (name, options, format, subformat) in CONTAINERS.iter().chain(READ_ONLY_CONTAINERS) {
        let container = convert(&dir, &raw, name, options);
        let reference = qemu_raw(&dir, &container, name, format);
        let before = sha256_file(&container);
        let opened = diskimage::open(&container, &Default::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let disk = &*opened.source;
        assert_eq!(opened.info.format, *format, "{name}");
        assert_eq!(opened.info.subformat.as_deref(), Some(*subformat), "{name}");
        let ref_len = std::fs::metadata(&reference).unwrap().len();
        assert_eq!(disk.len(), ref_len, "{name}: virtual size");
        assert_eq!(opened.info.virtual_size, ref_len, "{name}");

        let reference_sha = sha256_file(&reference);
        assert_eq!(
            sha256_through(disk, false),
            reference_sha,
            "{name}: every byte"
        );
        assert_eq!(
            sha256_through(disk, true),
            reference_sha,
            "{name}: the data map covers every non-zero byte"
        );
        let qemu = qemu_allocated(&container, format);
        assert!(
            opened.info.allocated_bytes <= qemu,
            "{name}: the data map claims {} bytes, qemu-img map {qemu}",
            opened.info.allocated_bytes
        );

        let ref_file = std::fs::File::open(&reference).unwrap();
        for _ in 0..64 {
            let len = rng.usize(1..300_000).min(ref_len as usize);
            let at = rng.u64(..=ref_len - len as u64);
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            disk.read_exact_at(&mut a, at).unwrap();
            ref_file.read_exact_at(&mut b, at).unwrap();
            assert!(a == b, "{name}: {len} bytes at {at}");
        }
        let mut past = [0u8; 1];
        assert!(
            disk.read_exact_at(&mut past, ref_len).is_err(),
            "{name}: past the end"
        );
        assert_eq!(sha256_file(&container), before, "{name}: never written");
    }
}

/// The inspect report without what names the file.
fn report_without_source(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    let o = v.as_object_mut().unwrap();
    o.remove("image");
    o.remove("source");
    v
}

#[test]
fn every_command_answers_on_a_container_as_on_the_raw_image() {
    let dir = Scratch::new("containers-commands");
    let raw = fixture("gpt-uefi.img");
    let run = |args: &[&str]| outcome(amiforge_at("http://127.0.0.1:9").args(args));
    let raw_path = raw.to_str().unwrap();
    let (_, raw_inspect, _) = run(&["inspect", raw_path, "--format", "json"]);
    let raw_inspect: serde_json::Value = serde_json::from_str(&raw_inspect).unwrap();
    assert_eq!(raw_inspect["source"]["format"], "raw");
    let raw_ls = run(&["ls", raw_path, "/etc", "--format", "json"]);
    let raw_cat = run(&["cat", raw_path, "/etc/hostname"]);
    let raw_audit = run(&["audit", raw_path, "--format", "json"]);
    for (name, options, format, _) in CONTAINERS {
        let container = convert(&dir, &raw, name, options);
        let path = container.to_str().unwrap();
        let (code, stdout, stderr) = run(&["inspect", path, "--format", "json"]);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["source"]["format"], *format, "{name}");
        assert_eq!(
            report["source"]["virtual_size"], raw_inspect["size"],
            "{name}"
        );
        assert_eq!(
            report_without_source(&report),
            report_without_source(&raw_inspect),
            "{name}: the report apart from its source"
        );
        assert_eq!(
            run(&["ls", path, "/etc", "--format", "json"]),
            raw_ls,
            "{name}: ls"
        );
        assert_eq!(run(&["cat", path, "/etc/hostname"]), raw_cat, "{name}: cat");
        let (code, audit, _) = run(&["audit", path, "--format", "json"]);
        let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
        let expected: serde_json::Value = serde_json::from_str(&raw_audit.1).unwrap();
        assert_eq!(code, raw_audit.0, "{name}: audit exit code");
        assert_eq!(audit["findings"], expected["findings"], "{name}: findings");
        assert_eq!(audit["packages"], expected["packages"], "{name}: packages");
    }
}

#[test]
fn a_backing_file_is_never_opened_unless_inside_the_allowed_directory() {
    let dir = Scratch::new("containers-backing");
    let base = dir.path("base.qcow2");
    qemu_convert(&fixture("gpt-uefi.img"), &base, &["-O", "qcow2"]);
    std::fs::create_dir_all(dir.path("allowed")).unwrap();
    let child = dir.path("allowed/child.qcow2");
    tool_output(
        tool("qemu-img")
            .args(["create", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&child),
    );
    let child_path = child.to_str().unwrap();
    // Without --allow-backing, or with a directory that does not hold the base, the
    // child is refused with the backing file named, and exit 2.
    let allowed = dir.path("allowed");
    for extra in [vec![], vec!["--allow-backing", allowed.to_str().unwrap()]] {
        let mut args = vec!["inspect", child_path];
        args.extend(&extra);
        let (code, _, stderr) = outcome(amiforge_at("http://127.0.0.1:9").args(&args));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("backing file") && stderr.contains(base.to_str().unwrap()),
            "{args:?}: {stderr}"
        );
    }
    // A backing file that is a FIFO proves it was not opened: opening one for reading
    // blocks until a writer comes, so a command that opened it would never end.
    tool_output(tool("mkfifo").arg(dir.path("secret.img")));
    let hostile = dir.path("allowed/hostile.qcow2");
    tool_output(
        tool("qemu-img")
            .args([
                "create",
                "-f",
                "qcow2",
                "-u",
                "-F",
                "raw",
                "-b",
                "../secret.img",
            ])
            .arg(&hostile)
            .arg("1M"),
    );
    let (code, stderr) = run_with_deadline(
        amiforge_at("http://127.0.0.1:9").args(["inspect", hostile.to_str().unwrap()]),
        std::time::Duration::from_secs(20),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("../secret.img"), "{stderr}");

    // Allowed: the chain reads like the base.
    let (code, stdout, stderr) = outcome(amiforge_at("http://127.0.0.1:9").args([
        "inspect",
        child_path,
        "--format",
        "json",
        "--allow-backing",
        dir.0.to_str().unwrap(),
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["source"]["backing"][0],
        base.canonicalize().unwrap().to_str().unwrap()
    );
    let (_, raw, _) = outcome(amiforge_at("http://127.0.0.1:9").args([
        "inspect",
        fixture("gpt-uefi.img").to_str().unwrap(),
        "--format",
        "json",
    ]));
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(report_without_source(&report), report_without_source(&raw));

    // A chain that loops back to itself is refused.
    let a = dir.path("allowed/a.qcow2");
    let b = dir.path("allowed/b.qcow2");
    tool_output(
        tool("qemu-img")
            .args(["create", "-f", "qcow2"])
            .arg(&a)
            .arg("1M"),
    );
    tool_output(
        tool("qemu-img")
            .args([
                "create", "-f", "qcow2", "-u", "-F", "qcow2", "-b", "a.qcow2",
            ])
            .arg(&b)
            .arg("1M"),
    );
    tool_output(
        tool("qemu-img")
            .args(["rebase", "-u", "-F", "qcow2", "-b", "b.qcow2"])
            .arg(&a),
    );
    let (code, _, stderr) = outcome(amiforge_at("http://127.0.0.1:9").args([
        "inspect",
        a.to_str().unwrap(),
        "--allow-backing",
        allowed.to_str().unwrap(),
    ]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("loop"), "{stderr}");
}

#[test]
fn zero_clusters_read_as_zeros_and_are_not_data() {
    let dir = Scratch::new("containers-zero");
    let image = dir.path("zero.qcow2");
    tool_output(
        tool("qemu-img")
            .args(["create", "-f", "qcow2"])
            .arg(&image)
            .arg("8M"),
    );
    tool_output(
        tool("qemu-io")
            .args([
                "-c",
                "write -P 0xab 0 2M",
                "-c",
                "write -z 512k 1M",
                "-c",
                "write -P 0xcd 6M 64k",
            ])
            .arg(&image),
    );
    let opened = diskimage::open(&image, &Default::default()).unwrap();
    let disk = &*opened.source;
    let mut buf = vec![0u8; 8 << 20];
    disk.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..512 << 10].iter().all(|&b| b == 0xab));
    assert!(buf[512 << 10..1536 << 10].iter().all(|&b| b == 0));
    assert!(buf[1536 << 10..2 << 20].iter().all(|&b| b == 0xab));
    assert!(buf[6 << 20..(6 << 20) + (64 << 10)]
        .iter()
        .all(|&b| b == 0xcd));
    assert_eq!(
        disk.data_ranges().unwrap(),
        vec![
            0..512 << 10,
            1536 << 10..2 << 20,
            6 << 20..(6 << 20) + (64 << 10)
        ]
    );
    assert_eq!(qemu_allocated(&image, "qcow2"), opened.info.allocated_bytes);
}

#[test]
fn what_is_not_read_is_refused_by_name_with_exit_2() {
    let dir = Scratch::new("containers-refused");
    let enc = dir.path("encrypted.qcow2");
    tool_output(
        tool("qemu-img")
            .args([
                "create",
                "--object",
                "secret,id=sec0,data=amiforge",
                "-f",
                "qcow2",
            ])
            .args(["-o", "encrypt.format=luks,encrypt.key-secret=sec0"])
            .arg(&enc)
            .arg("16M"),
    );
    let external = dir.path("external.qcow2");
    tool_output(
        tool("qemu-img")
            .args(["create", "-f", "qcow2", "-o"])
            .arg(format!("data_file={}", dir.path("external.raw").display()))
            .arg(&external)
            .arg("16M"),
    );
    let split = dir.path("split.vmdk");
    tool_output(
        tool("qemu-img")
            .args([
                "create",
                "-f",
                "vmdk",
                "-o",
                "subformat=twoGbMaxExtentSparse",
            ])
            .arg(&split)
            .arg("16M"),
    );
    for (image, says) in [
        (&enc, "encryption (LUKS"),
        (&external, "external data file"),
        (&split, "twoGbMaxExtentSparse"),
    ] {
        let before = sha256_file(image);
        for command in ["inspect", "audit", "upload"] {
            let (code, _, stderr) =
                outcome(amiforge_at("http://127.0.0.1:9").args([command, image.to_str().unwrap()]));
            assert_eq!(code, Some(2), "{command} {image:?}: {stderr}");
            assert!(
                stderr.contains(says) && stderr.contains("not supported"),
                "{stderr}"
            );
        }
        assert_eq!(sha256_file(image), before);
    }
}
