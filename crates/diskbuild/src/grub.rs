//! GRUB, installed the way `grub-install` does it for a disk image, from the
//! tree's own modules and without touching a device.
//!
//! - Both images are assembled by `grub-mkimage` from the tree's module
//!   directories (`/usr/lib/grub/i386-pc`, `/usr/lib/grub/x86_64-efi`,
//!   `/usr/lib/grub/arm64-efi`), with an embedded early configuration that finds
//!   the root filesystem by UUID and sets the prefix to its `/boot/grub`.
//! - The modules are staged into `/boot/grub/<platform>/`, where the prefix
//!   points, and the configuration into `/boot/grub/grub.cfg`.
//! - UEFI: the image goes to the ESP's removable path.
//! - Legacy BIOS: the core image goes into the BIOS boot partition and `boot.img`
//!   into the MBR, patched as `grub-bios-setup` patches them: the core image's
//!   first sector in the boot sector, the blocklist of the rest in the core
//!   image's first sector, and the partition table kept.

use std::cmp::Ordering;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Arch, BuildError, BuiltPartition, SECTOR};

/// Modules built into both images: enough to find and read the root filesystem,
/// load the configuration and boot Linux on the serial console and the screen
/// even before the module directory is reachable.
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "ext2",
    "xfs",
    "fat",
    "search",
    "search_fs_uuid",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "gzio",
    "serial",
    "terminal",
];
const BIOS_MODULES: &[&str] = &["biosdisk"];
const EFI_MODULES: &[&str] = &["efi_gop", "all_video"];

/// Where `grub-bios-setup` patches `boot.img` (grub's `boot.h`).
const BOOT_KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const BOOT_DRIVE_CHECK: usize = 0x66;
/// The range that belongs to the disk, not to the boot code: the Windows NT
/// disk signature and the partition table (the 0x55AA signature is boot.img's).
const MBR_KEEP: std::ops::Range<usize> = 0x1b8..0x1fe;
/// BIOS parameter block, kept from the disk's sector (zero on a protective MBR).
const MBR_BPB: std::ops::Range<usize> = 0x03..0x5a;
/// The segment the core image after its first sector is loaded to
/// (GRUB_BOOT_I386_PC_KERNEL_SEG + one sector in paragraphs).
const CORE_SEGMENT: u16 = 0x800 + (SECTOR as u16 >> 4);
/// A blocklist entry: start sector (u64), sector count (u16), segment (u16).
const BLOCKLIST_ENTRY: usize = 12;
/// The core image must fit below 0x78000 in real-mode memory, loaded at 0x8200.
const CORE_MAX: usize = 0x78000 - 0x8200;

/// The GRUB platform directory of an architecture's EFI images.
pub fn efi_platform(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-efi",
        Arch::Arm64 => "arm64-efi",
    }
}

/// The GRUB platform of legacy BIOS boot.
pub const BIOS_PLATFORM: &str = "i386-pc";

/// The tree's module directory for `platform`, when GRUB's modules for it are
/// installed there (`normal.mod` is the sign).
pub fn modules_dir(tree: &Path, platform: &str) -> Option<PathBuf> {
    let dir = tree.join("usr/lib/grub").join(platform);
    (dir.join("normal.mod").is_file() && !dir.is_symlink()).then_some(dir)
}

/// The kernel to boot and its initramfs, as paths inside the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// Its version, from the file name.
    pub version: String,
    /// `/boot/vmlinuz-<version>`.
    pub image: String,
    /// `/boot/initrd.img-<version>` (or `initramfs-<version>.img`), if there is one.
    pub initrd: Option<String>,
}

/// The newest kernel in the tree's `/boot` (versions compared number by number).
pub fn newest_kernel(tree: &Path) -> Result<Option<Kernel>, BuildError> {
    let boot = tree.join("boot");
    let entries = match std::fs::read_dir(&boot) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BuildError::Io {
                what: "list",
                path: boot,
                source,
            })
        }
    };
    let mut versions: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        // A version goes into grub.cfg unquoted: only the characters kernel
        // versions use (a name with a space or a newline could add commands).
        .filter(|v| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
        })
        .collect();
    versions.sort_by(|a, b| compare_versions(a, b));
    Ok(versions.pop().map(|version| {
        let initrd = [
            format!("initrd.img-{version}"),
            format!("initramfs-{version}.img"),
        ]
        .into_iter()
        .find(|name| boot.join(name).is_file())
        .map(|name| format!("/boot/{name}"));
        Kernel {
            image: format!("/boot/vmlinuz-{version}"),
            initrd,
            version,
        }
    }))
}

/// Compares version strings run by run: digits as numbers, the rest as text.
fn compare_versions(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    for (x, y) in runs(a).into_iter().zip(runs(b)) {
        let order = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then(x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

/// The kernel command line: the root by UUID, read-only until fsck, and the
/// console on the serial port (where EC2's console output and boot-test read it)
/// as well as the screen.
pub fn kernel_command_line(root_uuid: &str, arch: Arch) -> String {
    let serial = match arch {
        Arch::X86_64 => "console=tty0 console=ttyS0,115200n8",
        Arch::Arm64 => "console=tty0 console=ttyS0,115200n8 console=ttyAMA0,115200n8",
    };
    format!("root=UUID={root_uuid} ro {serial}")
}

/// `/boot/grub/grub.cfg`: one entry, the newest kernel, on serial and screen.
pub fn config(root_uuid: &str, kernel: &Kernel, os_name: &str, arch: Arch) -> String {
    let name = os_name.replace(['\'', '\n'], "");
    let mut cfg = format!(
        "# Written by amiforge build. Boots the newest kernel of the image on the\n\
         # serial console and the screen.\n\
         set default=0\n\
         set timeout=1\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         search --no-floppy --fs-uuid --set=root {root_uuid}\n\
         menuentry '{name}, with Linux {version}' {{\n\
         \x20   linux {image} {cmdline}\n",
        version = kernel.version,
        image = kernel.image,
        cmdline = kernel_command_line(root_uuid, arch),
    );
    if let Some(initrd) = &kernel.initrd {
        cfg.push_str(&format!("    initrd {initrd}\n"));
    }
    cfg.push_str("}\n");
    cfg
}

/// The configuration built into the images: find the root by UUID, and read
/// the rest (modules, `grub.cfg`) from its `/boot/grub`.
fn early_config(root_uuid: &str) -> String {
    format!("search.fs_uuid {root_uuid} root\nset prefix=($root)/boot/grub\n")
}

/// The `grub-mkimage` of this host (Debian's grub-common, or grub2-mkimage).
fn mkimage_tool() -> Result<PathBuf, BuildError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["grub-mkimage", "grub2-mkimage"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(BuildError::Options(
        "grub-mkimage is not installed (Debian's grub-common, or grub2-tools): it assembles GRUB from the tree's modules".into(),
    ))
}

/// Assembles a GRUB image for `platform` from the tree's modules.
pub fn mkimage(
    modules: &Path,
    platform: &str,
    root_uuid: &str,
    work: &Path,
) -> Result<Vec<u8>, BuildError> {
    let tool = mkimage_tool()?;
    let cfg = work.join(format!("early-{platform}.cfg"));
    let out = work.join(format!("grub-{platform}.img"));
    std::fs::write(&cfg, early_config(root_uuid)).map_err(|source| BuildError::Io {
        what: "write",
        path: cfg.clone(),
        source,
    })?;
    let extra = if platform == BIOS_PLATFORM {
        BIOS_MODULES
    } else {
        EFI_MODULES
    };
    let mut cmd = Command::new(&tool);
    cmd.arg("-O")
        .arg(platform)
        .arg("-d")
        .arg(modules)
        .arg("-o")
        .arg(&out)
        .arg("-c")
        .arg(&cfg)
        .args(["-p", "/boot/grub"])
        .args(COMMON_MODULES)
        .args(extra);
    crate::run_tool("grub-mkimage", &mut cmd)?;
    std::fs::read(&out).map_err(|source| BuildError::Io {
        what: "read",
        path: out,
        source,
    })
}

/// Puts the core image into the BIOS boot partition and `boot.img` into the MBR,
/// as `grub-bios-setup` does when it embeds (without Reed-Solomon codes).
pub fn install_bios(
    file: &File,
    path: &Path,
    bios: &BuiltPartition,
    boot_img: &[u8],
    core: &[u8],
) -> Result<(), BuildError> {
    let bad = |reason: String| BuildError::Tree {
        tree: path.to_path_buf(),
        reason,
    };
    if boot_img.len() != SECTOR as usize {
        return Err(bad(format!(
            "GRUB's boot.img is {} bytes, not one sector",
            boot_img.len()
        )));
    }
    let sectors = core.len().div_ceil(SECTOR as usize);
    if core.len() < SECTOR as usize || core.len() > CORE_MAX || sectors as u64 * SECTOR > bios.size
    {
        return Err(bad(format!(
            "GRUB's core image is {} bytes: it must fit the BIOS boot partition ({} bytes) and real-mode memory ({CORE_MAX} bytes)",
            core.len(),
            bios.size
        )));
    }
    let first = bios.start / SECTOR;
    let mut core = core.to_vec();
    core.resize(sectors * SECTOR as usize, 0);

    // The blocklists end the first sector and run backwards; clear the ones
    // grub-mkimage left, then one entry for the contiguous rest and a terminator.
    let mut at = SECTOR as usize - BLOCKLIST_ENTRY;
    while at >= BLOCKLIST_ENTRY && u16::from_le_bytes([core[at + 8], core[at + 9]]) != 0 {
        core[at..at + BLOCKLIST_ENTRY].fill(0);
        at -= BLOCKLIST_ENTRY;
    }
    let entry = SECTOR as usize - BLOCKLIST_ENTRY;
    let rest =
        u16::try_from(sectors - 1).map_err(|_| bad("GRUB's core image is too large".into()))?;
    core[entry..entry + 8].copy_from_slice(&(first + 1).to_le_bytes());
    core[entry + 8..entry + 10].copy_from_slice(&rest.to_le_bytes());
    core[entry + 10..entry + 12].copy_from_slice(&CORE_SEGMENT.to_le_bytes());
    core[entry - BLOCKLIST_ENTRY..entry].fill(0);

    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { what, path, source }
    };
    let mut mbr = vec![0u8; SECTOR as usize];
    file.read_exact_at(&mut mbr, 0).map_err(io("read"))?;
    let mut boot = boot_img.to_vec();
    boot[MBR_BPB].copy_from_slice(&mbr[MBR_BPB]);
    boot[MBR_KEEP].copy_from_slice(&mbr[MBR_KEEP]);
    // A hard disk: the BIOS may pass a wrong drive number; boot.img's check of it
    // becomes two NOPs, and the drive is taken from the BIOS (0xff).
    boot[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    boot[BOOT_DRIVE] = 0xff;
    boot[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&first.to_le_bytes());

    file.write_all_at(&core, bios.start).map_err(io("write"))?;
    file.write_all_at(&boot, 0).map_err(io("write"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kernel_names_safe_in_grub_cfg_are_booted() {
        let tree = tempfile::tempdir().unwrap();
        let boot = tree.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        for name in [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-9.9 x\nlinux evil",
            "vmlinuz-",
        ] {
            std::fs::write(boot.join(name), b"kernel").unwrap();
        }
        let kernel = newest_kernel(tree.path()).unwrap().unwrap();
        assert_eq!(kernel.version, "6.1.0-9-amd64");
        assert_eq!(kernel.initrd, None);
    }

    #[test]
    fn kernel_versions_compare_number_by_number() {
        assert_eq!(
            compare_versions("6.1.0-9-cloud-amd64", "6.1.0-13-cloud-amd64"),
            Ordering::Less
        );
        assert_eq!(compare_versions("6.10.0-1", "6.9.12-1"), Ordering::Greater);
        assert_eq!(compare_versions("5.15.0", "5.15.0"), Ordering::Equal);
    }

    #[test]
    fn the_configuration_boots_the_root_by_uuid_on_the_serial_console() {
        let kernel = Kernel {
            version: "6.1.0-13-cloud-amd64".into(),
            image: "/boot/vmlinuz-6.1.0-13-cloud-amd64".into(),
            initrd: Some("/boot/initrd.img-6.1.0-13-cloud-amd64".into()),
        };
        let cfg = config(
            "1234",
            &kernel,
            "Debian GNU/Linux 12 (bookworm)",
            Arch::X86_64,
        );
        assert!(cfg.contains("search --no-floppy --fs-uuid --set=root 1234\n"));
        assert!(cfg.contains(
            "linux /boot/vmlinuz-6.1.0-13-cloud-amd64 root=UUID=1234 ro console=tty0 console=ttyS0,115200n8\n"
        ));
        assert!(cfg.contains("initrd /boot/initrd.img-6.1.0-13-cloud-amd64\n"));
    }
}
