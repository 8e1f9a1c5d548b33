//! The identity of the system in an image: OS, architecture, boot mode, kernels and
//! drivers.

use crate::Image;
use imagefs::{show, FileKind, Filesystem};
use serde::Serialize;
use std::cmp::Ordering;

/// Where os-release lives, in the order systemd reads it.
pub(crate) const OS_RELEASE_PATHS: [&[u8]; 2] = [b"/etc/os-release", b"/usr/lib/os-release"];
/// Small text files (os-release, modules.builtin) are read whole up to this size.
const TEXT_LIMIT: u64 = 4 << 20;
/// modules.dep of a distribution kernel is about 1 MiB.
const MODULES_DEP_LIMIT: u64 = 32 << 20;
/// Binaries every Linux userland has; the first ELF among them names the architecture.
const ELF_CANDIDATES: [&[u8]; 8] = [
    b"/bin/sh",
    b"/usr/bin/ls",
    b"/bin/ls",
    b"/usr/bin/env",
    b"/sbin/init",
    b"/usr/lib/systemd/systemd",
    b"/bin/busybox",
    b"/usr/bin/true",
];
/// Where kernel modules live (usr-merged systems use the second).
const MODULE_DIRS: [&[u8]; 2] = [b"/lib/modules", b"/usr/lib/modules"];
/// Kernel image names under /boot, as distributions install them.
const KERNEL_PREFIXES: [&str; 3] = ["vmlinuz-", "vmlinux-", "Image-"];

/// The OS, as os-release (or a fallback) describes it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OsRelease {
    /// ID ("debian", "ubuntu", "amzn", "rhel", "alpine").
    pub id: Option<String>,
    /// VERSION_ID ("12", "22.04", "2023").
    pub version_id: Option<String>,
    /// PRETTY_NAME.
    pub pretty_name: Option<String>,
    /// NAME.
    pub name: Option<String>,
    /// ID_LIKE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_like: Option<String>,
    /// VERSION_CODENAME.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_codename: Option<String>,
    /// The file this came from.
    pub source: String,
}

/// How the image expects to be booted.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    /// UEFI only: an ESP and no legacy boot path.
    Uefi,
    /// Legacy BIOS only.
    LegacyBios,
    /// Both are present; UEFI first.
    UefiPreferred,
    /// Neither was found.
    Unknown,
}

/// A kernel found in the image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Kernel {
    /// The version string ("6.1.0-13-amd64").
    pub version: String,
    /// The kernel image under /boot, if present.
    pub image: Option<String>,
    /// Its modules directory, if present.
    pub modules: Option<String>,
    /// The ENA network driver is present (module file or built in).
    pub ena: bool,
    /// The NVMe driver is present (module file or built in).
    pub nvme: bool,
}

/// EC2 drivers of the newest kernel.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Drivers {
    /// Elastic Network Adapter.
    pub ena: bool,
    /// NVMe (EBS volumes on Nitro instances).
    pub nvme: bool,
}

#[derive(Default)]
pub(crate) struct Identity {
    pub os: Option<OsRelease>,
    pub architecture: Option<(String, String)>,
    pub kernels: Vec<Kernel>,
    pub problems: Vec<(String, String)>,
}

pub(crate) fn identify(fs: &dyn Filesystem) -> Identity {
    let mut id = Identity {
        os: os_release(fs),
        ..Default::default()
    };
    id.architecture = architecture(fs, &mut id.problems);
    id.kernels = kernels(fs, b"/boot", &mut id.problems);
    id
}

/// Parses os-release syntax: KEY=value lines, values optionally quoted.
pub fn parse_key_values(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((
                k.trim().to_string(),
                v.replace("\\\"", "\"")
                    .replace("\\$", "$")
                    .replace("\\\\", "\\"),
            ))
        })
        .collect()
}

/// The value of the last assignment to `key` (later lines win, as in a shell).
fn last_value(kv: &[(String, String)], key: &str) -> Option<String> {
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

fn read_text(fs: &dyn Filesystem, path: &[u8]) -> Option<String> {
    fs.read_file(path, TEXT_LIMIT)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn os_release(fs: &dyn Filesystem) -> Option<OsRelease> {
    for path in OS_RELEASE_PATHS {
        if let Some(text) = read_text(fs, path) {
            let kv = parse_key_values(&text);
            let get = |k: &str| last_value(&kv, k);
            return Some(OsRelease {
                id: get("ID"),
                version_id: get("VERSION_ID"),
                pretty_name: get("PRETTY_NAME"),
                name: get("NAME"),
                id_like: get("ID_LIKE"),
                version_codename: get("VERSION_CODENAME"),
                source: show(path),
            });
        }
    }
    if let Some(text) = read_text(fs, b"/etc/lsb-release") {
        let kv = parse_key_values(&text);
        let get = |k: &str| last_value(&kv, k);
        return Some(OsRelease {
            id: get("DISTRIB_ID").map(|s| s.to_lowercase()),
            version_id: get("DISTRIB_RELEASE"),
            pretty_name: get("DISTRIB_DESCRIPTION"),
            name: get("DISTRIB_ID"),
            version_codename: get("DISTRIB_CODENAME"),
            source: "/etc/lsb-release".into(),
            ..Default::default()
        });
    }
    for (path, id) in [
        (&b"/etc/alpine-release"[..], "alpine"),
        (b"/etc/debian_version", "debian"),
        (b"/etc/redhat-release", "rhel"),
        (b"/etc/system-release", "rhel"),
    ] {
        if let Some(text) = read_text(fs, path) {
            let line = text.lines().next().unwrap_or("").trim().to_string();
            let version = line
                .split_whitespace()
                .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
                .map(str::to_string);
            return Some(OsRelease {
                id: Some(id.into()),
                version_id: version,
                pretty_name: Some(line),
                source: show(path),
                ..Default::default()
            });
        }
    }
    None
}

/// The architecture an ELF header names, from e_machine (ELF gABI, Linux's names).
pub fn elf_architecture(head: &[u8]) -> Option<&'static str> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let class64 = head[4] == 2;
    let big_endian = head[5] == 2;
    let machine = if big_endian {
        u16::from_be_bytes([head[18], head[19]])
    } else {
        u16::from_le_bytes([head[18], head[19]])
    };
    Some(match (machine, class64) {
        (0x3e, _) => "x86_64",
        (0xb7, _) => "arm64",
        (0x03, _) => "i386",
        (0x28, _) => "arm",
        (0xf3, true) => "riscv64",
        (0x15, true) if big_endian => "ppc64",
        (0x15, true) => "ppc64le",
        (0x16, _) => "s390x",
        (0x08, _) => "mips",
        (0x102, _) => "loongarch64",
        _ => return None,
    })
}

fn architecture(
    fs: &dyn Filesystem,
    problems: &mut Vec<(String, String)>,
) -> Option<(String, String)> {
    for path in ELF_CANDIDATES {
        match fs.read_head(path, 64) {
            Ok(head) => {
                if let Some(arch) = elf_architecture(&head) {
                    return Some((arch.to_string(), show(path)));
                }
            }
            Err(imagefs::Error::NotFound { .. }) => {}
            Err(e) => problems.push((show(path), e.to_string())),
        }
    }
    None
}

/// Compares kernel versions the way `sort -V` would, near enough: digit runs as numbers.
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut chars = s.chars().peekable();
        while chars.peek().is_some() {
            let mut text = String::new();
            while let Some(&c) = chars.peek().filter(|c| !c.is_ascii_digit()) {
                text.push(c);
                chars.next();
            }
            let mut num = 0u64;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                num = num.saturating_mul(10).saturating_add(u64::from(d));
                chars.next();
            }
            out.push((num, text));
        }
        out
    }
    parts(a)
        .iter()
        .map(|(n, t)| (t.clone(), *n))
        .cmp(parts(b).iter().map(|(n, t)| (t.clone(), *n)))
}

fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Kernels of a root filesystem: images in `boot_dir` and module trees.
fn kernels(
    fs: &dyn Filesystem,
    boot_dir: &[u8],
    problems: &mut Vec<(String, String)>,
) -> Vec<Kernel> {
    let mut found: Vec<Kernel> = Vec::new();
    add_kernel_images(fs, boot_dir, &mut found);
    let mut seen_dirs = Vec::new();
    for dir in MODULE_DIRS {
        // /lib is a symlink to /usr/lib on merged systems: visit each real dir once.
        let Ok(real) = imagefs::resolve(fs, dir) else {
            continue;
        };
        if seen_dirs.contains(&real) {
            continue;
        }
        seen_dirs.push(real.clone());
        let entries = match fs.read_dir(&real) {
            Ok(e) => e,
            Err(imagefs::Error::NotFound { .. }) => continue,
            Err(e) => {
                problems.push((show(dir), e.to_string()));
                continue;
            }
        };
        for e in entries
            .into_iter()
            .filter(|e| e.metadata.kind == FileKind::Dir)
        {
            let version = String::from_utf8_lossy(&e.name).into_owned();
            let mdir = child(&real, &e.name);
            let (ena, nvme) = module_drivers(fs, &mdir);
            match found.iter_mut().find(|k| k.version == version) {
                Some(k) => {
                    k.modules = Some(show(&mdir));
                    k.ena = ena;
                    k.nvme = nvme;
                }
                None => found.push(Kernel {
                    version,
                    image: None,
                    modules: Some(show(&mdir)),
                    ena,
                    nvme,
                }),
            }
        }
    }
    found
}

fn add_kernel_images(fs: &dyn Filesystem, dir: &[u8], found: &mut Vec<Kernel>) {
    let Ok(entries) = fs.read_dir(dir) else {
        return;
    };
    for e in entries {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let Some(version) = KERNEL_PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else {
            continue;
        };
        if e.metadata.kind == FileKind::Dir || version.is_empty() {
            continue;
        }
        let image = Some(show(&child(dir, &e.name)));
        match found.iter_mut().find(|k| k.version == version) {
            Some(k) => k.image = image,
            None => found.push(Kernel {
                version: version.to_string(),
                image,
                modules: None,
                ena: false,
                nvme: false,
            }),
        }
    }
}

/// Kernels at the top level of a separate /boot filesystem.
pub(crate) fn add_boot_kernels(fs: &dyn Filesystem, found: &mut Vec<Kernel>) {
    add_kernel_images(fs, b"/", found);
}

/// Is the driver present for this module tree: listed in modules.builtin or
/// modules.dep, or its .ko file (compressed or not) exists.
fn module_drivers(fs: &dyn Filesystem, mdir: &[u8]) -> (bool, bool) {
    let mut lists = String::new();
    for (name, limit) in [
        (&b"modules.builtin"[..], TEXT_LIMIT),
        (b"modules.dep", MODULES_DEP_LIMIT),
    ] {
        if let Ok(b) = fs.read_file(&child(mdir, name), limit) {
            lists.push_str(&String::from_utf8_lossy(&b));
            lists.push('\n');
        }
    }
    let listed = |module: &str| {
        lists.lines().any(|l| {
            let path = l.split(':').next().unwrap_or("");
            let file = path.rsplit('/').next().unwrap_or("");
            file.strip_prefix(module)
                .is_some_and(|rest| rest == ".ko" || rest.starts_with(".ko."))
        })
    };
    let file_exists = |rel: &str| {
        ["", ".xz", ".zst", ".gz"].iter().any(|ext| {
            fs.stat(&child(mdir, format!("{rel}{ext}").as_bytes()))
                .is_ok()
        })
    };
    let ena = listed("ena") || file_exists("kernel/drivers/net/ethernet/amazon/ena/ena.ko");
    let nvme = listed("nvme") || file_exists("kernel/drivers/nvme/host/nvme.ko");
    (ena, nvme)
}

/// The boot mode from the ESP, the BIOS boot partition and the MBR boot code.
pub(crate) fn boot_mode(image: &Image) -> (BootMode, Vec<String>) {
    let mut evidence = Vec::new();
    let table = image.table();
    let mut uefi = false;
    let mut legacy = false;
    for v in image.volumes() {
        let p = &v.partition;
        if p.is_esp() {
            uefi = true;
            let loaders = v
                .open()
                .ok()
                .map(|fs| efi_loaders(&*fs))
                .unwrap_or_default();
            if loaders.is_empty() {
                evidence.push(format!("partition {} is an EFI system partition", p.number));
            } else {
                evidence.push(format!(
                    "partition {} is an EFI system partition holding {}",
                    p.number,
                    loaders.join(", ")
                ));
            }
        }
        if p.is_bios_boot() {
            legacy = true;
            evidence.push(format!("partition {} is a BIOS boot partition", p.number));
        }
    }
    if table.kind != partition::TableKind::None && table.mbr.boot_code {
        legacy = true;
        evidence.push("sector 0 holds MBR boot code".into());
    }
    if table.kind == partition::TableKind::Mbr
        && table.partitions.iter().any(|p| p.bootable)
        && !legacy
    {
        legacy = true;
        evidence.push("an MBR partition is marked bootable".into());
    }
    let mode = match (uefi, legacy) {
        (true, true) => BootMode::UefiPreferred,
        (true, false) => BootMode::Uefi,
        (false, true) => BootMode::LegacyBios,
        (false, false) => {
            evidence.push("no EFI system partition, BIOS boot partition or MBR boot code".into());
            BootMode::Unknown
        }
    };
    (mode, evidence)
}

/// The .efi files under /EFI/*/ of an ESP.
fn efi_loaders(fs: &dyn Filesystem) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(vendors) = fs.read_dir(b"/EFI") else {
        return out;
    };
    for v in vendors.iter().filter(|v| v.metadata.kind == FileKind::Dir) {
        let dir = child(b"/EFI", &v.name);
        for f in fs.read_dir(&dir).unwrap_or_default() {
            if f.name.to_ascii_lowercase().ends_with(b".efi") {
                out.push(show(&child(&dir, &f.name)));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_may_be_quoted_or_bare() {
        let kv = parse_key_values(
            "# c\nID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID='12'\n",
        );
        assert_eq!(kv[0], ("ID".into(), "debian".into()));
        assert_eq!(kv[1].1, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(kv[2].1, "12");
    }

    #[test]
    fn elf_machines_map_to_linux_architecture_names() {
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18] = 0xb7;
        assert_eq!(elf_architecture(&h), Some("arm64"));
        h[18] = 0x3e;
        assert_eq!(elf_architecture(&h), Some("x86_64"));
        assert_eq!(elf_architecture(b"#!/bin/sh\n"), None);
        assert_eq!(elf_architecture(b"\x7fELF"), None);
    }

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = vec![
            "6.10.0-1-amd64",
            "6.1.0-13-amd64",
            "6.1.0-9-amd64",
            "5.15.0",
        ];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            v,
            vec![
                "5.15.0",
                "6.1.0-9-amd64",
                "6.1.0-13-amd64",
                "6.10.0-1-amd64"
            ]
        );
    }
}
