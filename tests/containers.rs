//! Disk containers that amiforge does not read yet (qcow2, VMDK, VHD, VHDX) are
//! recognised by their magic and refused by every command that takes an image, with
//! exit 2, the format named and the conversion to run. Their bytes are never taken for
//! a disk: `inspect` used to report a blob, and `upload` would have sent the container.

mod common;

use common::{amiforge_at, fixture, outcome, sha256_file, tool, Scratch};

/// (qemu-img format and options, the name amiforge gives it).
const CONTAINERS: &[(&[&str], &str)] = &[
    (&["-O", "qcow2"], "qcow2"),
    (&["-O", "qcow2", "-o", "compat=0.10"], "qcow2"),
    (&["-O", "vmdk"], "VMDK (sparse)"),
    (
        &["-O", "vmdk", "-o", "subformat=streamOptimized"],
        "VMDK (sparse)",
    ),
    (
        &["-O", "vmdk", "-o", "subformat=monolithicFlat"],
        "VMDK descriptor",
    ),
    (&["-O", "vpc"], "VHD (dynamic)"),
    (&["-O", "vpc", "-o", "subformat=fixed"], "VHD (fixed)"),
    (&["-O", "vhdx"], "VHDX"),
];

#[test]
fn every_command_refuses_a_container_naming_its_format_and_leaves_it_unchanged() {
    let dir = Scratch::new("containers");
    for (i, (options, name)) in CONTAINERS.iter().enumerate() {
        let image = dir.path(&format!("disk-{i}"));
        let made = tool("qemu-img")
            .arg("convert")
            .args(*options)
            .arg(fixture("bare-ext4.img"))
            .arg(&image)
            .status()
            .unwrap();
        assert!(made.success(), "qemu-img {options:?}");
        let before = sha256_file(&image);
        let path = image.to_str().unwrap();
        let bundle = dir.path(&format!("bundle-{i}"));
        for args in [
            vec!["inspect", path],
            vec!["ls", path, "/"],
            vec!["cat", path, "/etc/hostname"],
            vec!["audit", path],
            vec!["sbom", path],
            vec!["bundle", path, "--out", bundle.to_str().unwrap()],
            vec!["upload", path],
            vec!["verify", path, "snap-0123456789abcdef0"],
            vec!["publish", path, "--name", "never-published"],
        ] {
            // Nothing may reach AWS: the endpoint is a closed port.
            let (code, stdout, stderr) = outcome(amiforge_at("http://127.0.0.1:9").args(&args));
            assert_eq!(code, Some(2), "{name} {args:?}: {stdout} {stderr}");
            assert!(
                stderr.contains(&format!("is a {name} disk image"))
                    && stderr.contains("qemu-img convert -O raw"),
                "{name} {args:?}: {stderr}"
            );
        }
        assert_eq!(
            sha256_file(&image),
            before,
            "{name}: the input was not written"
        );
        assert!(!bundle.exists(), "no bundle was written");
    }
}
