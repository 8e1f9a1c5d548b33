//! What a boot must show on its consoles, step by step, and what ends it early.
//!
//! The serial console carries the firmware's messages (OVMF), the boot loader's,
//! the kernel's, systemd's status lines and the markers the NoCloud user data
//! prints. SeaBIOS writes to the screen and to QEMU's debug console, which is
//! captured too. Escape sequences are removed before matching: systemd colours
//! the unit names in its status lines.

use crate::Firmware;

/// One step of the boot and whether it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its short name (`firmware`, `loader`, `kernel`, `multi-user`,
    /// `user-data`, `ssh-host-keys`).
    pub name: &'static str,
    /// What it means.
    pub description: &'static str,
    /// Whether it happened.
    pub passed: bool,
    /// The console line that shows it, or why it counts as done.
    pub evidence: Option<String>,
}

/// The steps, in the order a boot goes through them.
const STEPS: [(&str, &str); 6] = [
    (
        "firmware",
        "the firmware found a boot loader on the disk and started it",
    ),
    ("loader", "the boot loader ran"),
    ("kernel", "the Linux kernel started"),
    ("multi-user", "systemd reached multi-user.target"),
    ("user-data", "cloud-init ran the NoCloud user data"),
    (
        "ssh-host-keys",
        "the SSH host keys exist (generated on first boot)",
    ),
];

/// The marker the user data prints, with this run's nonce.
pub fn marker(nonce: &str) -> String {
    format!("amiforge-boot-test {nonce}")
}

/// The console text with ANSI escape sequences removed and carriage returns
/// turned into line ends.
pub fn plain(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters, final byte in @..~. Other escapes: one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for f in chars.by_ref() {
                        if ('@'..='~').contains(&f) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}

fn find_line(text: &str, needles: &[&str]) -> Option<String> {
    text.lines()
        .find(|l| needles.iter().any(|n| l.contains(n)))
        .map(|l| l.trim().chars().take(200).collect())
}

/// Evaluates every step on the consoles' text so far.
pub fn evaluate(serial: &str, debug: &str, firmware: Firmware, nonce: &str) -> Vec<Check> {
    let marker = marker(nonce);
    let user_data = format!("{marker} user-data ran");
    let found: [Option<String>; 6] = [
        match firmware {
            Firmware::Uefi => find_line(serial, &["BdsDxe: starting Boot"]),
            Firmware::Bios => find_line(debug, &["Booting from Hard Disk"])
                .filter(|_| !debug.contains("Boot failed")),
        },
        find_line(
            serial,
            &["GNU GRUB", "Welcome to GRUB", "systemd-boot", "EFI stub:"],
        ),
        find_line(serial, &["Linux version "]),
        find_line(
            serial,
            &[
                "Reached target multi-user.target",
                "Reached target Multi-User System",
            ],
        ),
        find_line(serial, &[&user_data]),
        serial
            .lines()
            .filter_map(|l| l.split_once(&format!("{user_data}; host keys: ")))
            .find(|(_, n)| n.trim().parse::<u32>().is_ok_and(|n| n > 0))
            .map(|(_, n)| format!("{} host key files", n.trim())),
    ];
    // A later step implies the earlier ones (a quiet loader prints nothing).
    let last = found.iter().rposition(Option::is_some);
    STEPS
        .iter()
        .zip(found)
        .enumerate()
        .map(|(i, ((name, description), evidence))| {
            let implied = last.is_some_and(|l| i < l);
            Check {
                name,
                description,
                passed: evidence.is_some() || implied,
                evidence: evidence.or_else(|| implied.then(|| "implied by a later step".into())),
            }
        })
        .collect()
}

/// A console line that means the boot cannot get further: why, or `None`.
pub fn dead_end(serial: &str, debug: &str) -> Option<String> {
    const SERIAL: [(&str, &str); 6] = [
        (
            "UEFI Interactive Shell",
            "the firmware found no boot loader and started its shell",
        ),
        (
            "Start PXE over IPv4",
            "the firmware found no boot loader on the disks and turned to network boot",
        ),
        (
            "grub rescue>",
            "GRUB could not load its modules or configuration",
        ),
        ("Kernel panic - not syncing", "the kernel panicked"),
        (
            "You are in emergency mode",
            "systemd stopped in emergency mode",
        ),
        (
            "Give root password for maintenance",
            "systemd stopped in emergency mode",
        ),
    ];
    const DEBUG: [(&str, &str); 1] = [("No bootable device", "the BIOS found no bootable disk")];
    SERIAL
        .iter()
        .find(|(needle, _)| serial.contains(needle))
        .or_else(|| DEBUG.iter().find(|(needle, _)| debug.contains(needle)))
        .map(|(needle, why)| format!("{why} (\"{needle}\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_do_not_hide_systemd_status_lines() {
        let raw = b"[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.\r\n";
        let checks = evaluate(&plain(raw), "", Firmware::Uefi, "n1");
        let multi = checks.iter().find(|c| c.name == "multi-user").unwrap();
        assert!(multi.passed);
        // The steps before it are implied; the ones after are not.
        assert!(checks[..3].iter().all(|c| c.passed));
        assert!(checks[4..].iter().all(|c| !c.passed));
    }

    #[test]
    fn the_markers_must_carry_this_runs_nonce_and_at_least_one_key() {
        let serial = "amiforge-boot-test other user-data ran; host keys: 3\n";
        let checks = evaluate(serial, "", Firmware::Bios, "mine");
        assert!(checks.iter().all(|c| !c.passed));
        let serial = "amiforge-boot-test mine user-data ran; host keys: 0\n";
        let checks = evaluate(serial, "", Firmware::Bios, "mine");
        assert!(checks[4].passed && !checks[5].passed);
        let serial = "amiforge-boot-test mine user-data ran; host keys: 4\n";
        assert!(evaluate(serial, "", Firmware::Bios, "mine")
            .iter()
            .all(|c| c.passed));
    }

    #[test]
    fn a_firmware_shell_or_a_panic_ends_the_boot() {
        assert!(dead_end("Shell> ", "").is_none());
        assert!(dead_end("UEFI Interactive Shell v2.2\n", "")
            .unwrap()
            .contains("no boot loader"));
        assert!(dead_end("", "No bootable device.\n").is_some());
        assert!(dead_end(">>Start PXE over IPv4.\n", "")
            .unwrap()
            .contains("network boot"));
        assert!(dead_end("[ 1.0] Kernel panic - not syncing: VFS", "")
            .unwrap()
            .contains("panicked"));
    }
}
