//! `amiforge ls` and `amiforge cat` browse an image like virt-ls and virt-cat, and never
//! leave it.

mod common;
use common::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

fn img(name: &str) -> String {
    fixture(name).to_str().unwrap().to_string()
}

fn fails(args: &[&str]) -> String {
    let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = run(&os);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} must fail with exit code 2"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cat_defaults_to_the_root_filesystem_and_follows_symlinks_inside_it() {
    assert_eq!(
        ok(&["cat", &img("gpt-uefi.img"), "/etc/hostname"]),
        b"fixture-host\n"
    );
    // /etc/os-release is a relative symlink to ../usr/lib/os-release.
    let os = ok(&["cat", &img("gpt-uefi.img"), "/etc/os-release"]);
    assert_eq!(os, std::fs::read("/usr/lib/os-release").unwrap());
    // An absolute link resolves against the image's root, not the host's.
    assert_eq!(
        ok(&["cat", &img("gpt-uefi.img"), "/link-absolute"]),
        b"fixture-host\n"
    );
}

#[test]
fn a_symlink_pointing_above_the_root_stays_inside_the_image() {
    // data/escape -> ../../../../../../../../etc/shadow: the host has /etc/shadow, the
    // image does not, so reading it must fail rather than read the host's file.
    let err = fails(&["cat", &img("gpt-uefi.img"), "/data/escape"]);
    assert!(
        err.contains("/data/escape (resolved to /etc/shadow): not found"),
        "{err}"
    );
    assert_eq!(
        ok(&["cat", &img("gpt-uefi.img"), "/../../../etc/hostname"]),
        b"fixture-host\n"
    );
}

#[test]
fn a_symlink_loop_is_named_as_a_loop_with_its_path_not_as_corruption() {
    let err = fails(&["cat", &img("gpt-uefi.img"), "/data/loop-a"]);
    assert!(err.contains("/data/loop-a: a symbolic link loop"), "{err}");
    assert!(!err.contains("corrupt"), "{err}");
}

#[test]
fn other_partitions_are_reached_with_partition() {
    let listing = String::from_utf8(ok(&[
        "ls",
        &img("gpt-uefi.img"),
        "/EFI",
        "--partition",
        "1",
    ]))
    .unwrap();
    assert_eq!(listing, "BOOT\ndebian\n");
    let cfg = ok(&[
        "cat",
        &img("gpt-uefi.img"),
        "/EFI/debian/grub.cfg",
        "--partition",
        "1",
    ]);
    assert!(cfg.starts_with(b"search --fs-uuid"));
    assert_eq!(
        ok(&[
            "cat",
            &img("mbr.img"),
            "/in-logical.txt",
            "--partition",
            "5"
        ]),
        b"logical\n"
    );
}

#[test]
fn ls_prints_names_as_raw_bytes_and_long_listings_like_ls_l() {
    let out = ok(&["ls", &img("bare-ext4.img"), "/data"]);
    let names: Vec<&[u8]> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert!(names.contains(&&b"caf\xe9"[..]), "raw non-UTF-8 name");
    assert!(names.contains(&"naïve-文字.txt".as_bytes()));
    let long =
        String::from_utf8_lossy(&ok(&["ls", &img("bare-ext4.img"), "/data", "-l"])).into_owned();
    assert!(
        long.lines()
            .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("loop-a -> loop-b")),
        "{long}"
    );
    assert!(
        long.lines().any(|l| l.starts_with("-rw-r--r--")
            && l.contains(" 1073741824 ")
            && l.ends_with("sparse-1g")),
        "{long}"
    );
}

#[test]
fn ls_json_carries_type_mode_owner_size_and_mtime() {
    let v = json(&["ls", &img("gpt-uefi.img"), "/home/user", "--format", "json"]);
    let e = &v[0];
    assert_eq!(e["path"], "notes.txt");
    assert_eq!(e["kind"], "file");
    assert_eq!(e["mode"], 0o600);
    assert_eq!(e["size"], 21);
    assert_eq!(e["mtime"], 1_700_000_000);
}

#[test]
fn cat_streams_a_sparse_gigabyte_with_its_tail() {
    let mut child = amiforge()
        .args([
            OsStr::new("cat"),
            OsStr::new(&img("bare-ext4.img")),
            OsStr::new("/data/sparse-1g"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut total = 0u64;
    let mut last = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let stdout = child.stdout.as_mut().unwrap();
    loop {
        let n = std::io::Read::read(stdout, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        last = buf[..n].to_vec();
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(total, 1 << 30);
    assert!(last.ends_with(b"tail"));
}

#[test]
fn errors_name_what_and_where_and_exit_2() {
    assert!(fails(&["cat", &img("gpt-uefi.img"), "/no/such/file"])
        .contains("/no/such/file (no /no): not found"));
    assert!(fails(&["cat", &img("gpt-uefi.img"), "/data"]).contains("is a directory"));
    assert!(
        fails(&["ls", &img("gpt-uefi.img"), "/", "--partition", "9"]).contains("no partition 9")
    );
    assert!(fails(&["ls", &img("gpt-bios.img"), "/", "--partition", "1"]).contains("BIOS boot"));
    assert!(fails(&["inspect", "/definitely/not/here.img"]).contains("/definitely/not/here.img"));
    let err = fails(&["ls", &img("gpt-containers.img"), "/", "--partition", "7"]);
    assert!(err.contains("squashfs"), "{err}");
    let err = fails(&["ls", &img("gpt-uefi.img"), "/", "--partition", "vg0/root"]);
    assert!(
        err.contains("no partition or logical volume \"vg0/root\""),
        "{err}"
    );
    let dir = std::env::temp_dir();
    assert!(fails(&["inspect", dir.to_str().unwrap()]).contains("directory"));
}

#[test]
fn non_utf8_paths_can_be_asked_for() {
    let image = fixture("bare-ext4.img");
    let out = run(&[
        OsStr::new("cat"),
        image.as_os_str(),
        OsStr::from_bytes(b"/data/caf\xe9"),
    ]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"latin-1 name\n");
}

#[test]
fn completions_and_help_are_there() {
    let bash = String::from_utf8(ok(&["completions", "bash"])).unwrap();
    assert!(bash.contains("inspect"));
    let help = String::from_utf8(ok(&["inspect", "--help"])).unwrap();
    assert!(help.contains("--format"));
}
