//! `amiforge boot-test`: boots an image in QEMU and checks each step of the first
//! boot on its consoles (`boottest`).

use crate::cli::{write_json, Format};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct BootTestArgs {
    /// The disk image: raw, qcow2, VMDK, VHD or VHDX (it is never written), or a
    /// bundle (verified, and its disk unpacked into a temporary file).
    image: PathBuf,
    /// The firmware to boot with. auto: every way the image boots (inspect's boot
    /// mode: UEFI, legacy BIOS, or both for a hybrid disk).
    #[arg(long, value_enum, default_value_t = FirmwareArg::Auto)]
    firmware: FirmwareArg,
    /// Seconds each boot may take, from power on to the user data's marker.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// kvm when /dev/kvm is usable (and software emulation if KVM fails), or one of them.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Save the serial console here (each boot's log after a header line).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// The guest's size and the time it has.
#[derive(Clone, Copy)]
struct Settings {
    timeout: u64,
    memory: u32,
    cpus: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FirmwareArg {
    Auto,
    Uefi,
    Bios,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Serialize)]
struct Report {
    image: String,
    format: String,
    passed: bool,
    boots: Vec<BootReport>,
}

#[derive(Serialize)]
struct BootReport {
    firmware: &'static str,
    accel: &'static str,
    passed: bool,
    /// The first step that did not happen.
    failed_step: Option<&'static str>,
    checks: Vec<CheckReport>,
    ended: String,
    seconds_to_last_step: Option<f64>,
    seconds: f64,
    notes: Vec<String>,
}

#[derive(Serialize)]
struct CheckReport {
    name: &'static str,
    description: &'static str,
    passed: bool,
    evidence: Option<String>,
}

/// QEMU's name for a container format amiforge detected.
fn qemu_format(format: &str) -> Option<&'static str> {
    Some(match format {
        "raw" => "raw",
        "qcow2" => "qcow2",
        "vmdk" => "vmdk",
        "vhd" => "vpc",
        "vhdx" => "vhdx",
        _ => return None,
    })
}

/// The gate of `publish --boot-test`: boots `image` every way it boots (KVM when
/// usable). `Ok(Some(summary))` when every step passed; otherwise says which step
/// failed, on stderr, and gives `Ok(None)`.
pub fn gate(image: &Path, timeout: u64) -> Result<Option<String>> {
    let report = boot_all(
        image,
        FirmwareArg::Auto,
        AccelArg::Auto,
        Settings {
            timeout,
            memory: 1024,
            cpus: 2,
        },
        None,
    )?;
    let summary = report
        .boots
        .iter()
        .map(|b| {
            format!(
                "{} {}",
                b.firmware,
                if b.passed { "passed" } else { "failed" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if report.passed {
        return Ok(Some(summary));
    }
    for b in report.boots.iter().filter(|b| !b.passed) {
        eprintln!(
            "amiforge: boot-test: {} failed at {} ({})",
            b.firmware,
            b.failed_step.unwrap_or("?"),
            b.ended
        );
    }
    Ok(None)
}

fn boot_all(
    image: &Path,
    firmware: FirmwareArg,
    accel: AccelArg,
    settings: Settings,
    log_path: Option<&Path>,
) -> Result<Report> {
    // A bundle is verified and its disk unpacked into a temporary file first.
    let unpacked = if crate::bundled::is_bundle(image) && image.is_dir() {
        let b = crate::bundled::open_verified(image, None, false)?;
        let dir = tempfile::tempdir().context("creating a directory for the bundle's disk")?;
        let disk = dir.path().join("disk.img");
        let progress = crate::progress::Reporter::new(false, "blocks");
        b.extract(&disk, &*progress)
            .with_context(|| format!("unpacking the disk of bundle {}", image.display()))?;
        Some((dir, disk))
    } else {
        None
    };
    let shown = image;
    let image = unpacked.as_ref().map_or(image, |(_, disk)| disk.as_path());
    if !image.is_file() {
        bail!(
            "{}: boot-test needs a local image file (raw, qcow2, VMDK, VHD or VHDX) or bundle",
            shown.display()
        );
    }
    let opened = crate::input::image(image)?;
    let inspected = opened.report();
    let format = inspected.source.as_ref().map_or("raw", |s| s.format);
    let qemu_format = qemu_format(format)
        .with_context(|| format!("{}: QEMU cannot boot a {format} image", image.display()))?;
    let arch = match inspected.architecture.as_deref() {
        Some("x86_64") | None => boottest::Arch::X86_64,
        Some("arm64") => boottest::Arch::Arm64,
        Some(other) => bail!(
            "{}: boot-test runs x86_64 and arm64 images; this one is {other}",
            image.display()
        ),
    };
    let mode = serde_json::to_value(inspected.boot_mode)?;
    let firmwares: Vec<boottest::Firmware> = match (firmware, mode.as_str()) {
        // An arm64 machine has UEFI only: a legacy-bootable arm64 disk is tried with it.
        (FirmwareArg::Auto, Some(_)) if arch == boottest::Arch::Arm64 => {
            vec![boottest::Firmware::Uefi]
        }
        (FirmwareArg::Uefi, _) | (FirmwareArg::Auto, Some("uefi")) => {
            vec![boottest::Firmware::Uefi]
        }
        (FirmwareArg::Bios, _) | (FirmwareArg::Auto, Some("legacy-bios")) => {
            vec![boottest::Firmware::Bios]
        }
        (FirmwareArg::Both, _) | (FirmwareArg::Auto, Some("uefi-preferred")) => {
            vec![boottest::Firmware::Uefi, boottest::Firmware::Bios]
        }
        (FirmwareArg::Auto, _) => bail!(
            "{}: found no way it boots (no ESP with a loader, no MBR boot code); choose --firmware uefi or bios to try anyway",
            image.display()
        ),
    };
    let accel = match accel {
        AccelArg::Auto => boottest::Accel::Auto,
        AccelArg::Kvm => boottest::Accel::Kvm,
        AccelArg::Tcg => boottest::Accel::Tcg,
    };
    let mut boots = Vec::new();
    let mut log = Vec::new();
    for firmware in firmwares {
        tracing::info!(
            "booting {} with {} firmware (timeout {} s)",
            image.display(),
            firmware.name(),
            settings.timeout
        );
        let outcome = boottest::run(&boottest::Options {
            image: image.to_path_buf(),
            format: qemu_format.to_string(),
            arch,
            firmware,
            accel,
            timeout: Duration::from_secs(settings.timeout),
            memory_mib: settings.memory,
            cpus: settings.cpus,
            nonce: format!("{:016x}", fastrand::u64(..)),
        })?;
        tracing::info!(
            "{}: {} in {:.0} s ({})",
            firmware.name(),
            if outcome.passed() { "passed" } else { "failed" },
            outcome.seconds,
            outcome.ended
        );
        log.extend_from_slice(
            format!(
                "===== amiforge boot-test: {} ({}) =====\n",
                firmware.name(),
                outcome.accel
            )
            .as_bytes(),
        );
        log.extend_from_slice(&outcome.serial);
        log.push(b'\n');
        boots.push(BootReport {
            firmware: firmware.name(),
            accel: outcome.accel,
            passed: outcome.passed(),
            failed_step: outcome.first_failure().map(|c| c.name),
            checks: outcome
                .checks
                .iter()
                .map(|c| CheckReport {
                    name: c.name,
                    description: c.description,
                    passed: c.passed,
                    evidence: c.evidence.clone(),
                })
                .collect(),
            ended: outcome.ended.clone(),
            seconds_to_last_step: outcome.seconds_to_last_step,
            seconds: outcome.seconds,
            notes: outcome.notes.clone(),
        });
    }
    if let Some(path) = log_path {
        std::fs::write(path, &log).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Report {
        image: shown.display().to_string(),
        format: format.to_string(),
        passed: boots.iter().all(|b| b.passed),
        boots,
    })
}

/// Runs the boot test; `Ok(false)` when a step failed.
pub fn run(args: BootTestArgs) -> Result<bool> {
    let report = boot_all(
        &args.image,
        args.firmware,
        args.accel,
        Settings {
            timeout: args.timeout,
            memory: args.memory,
            cpus: args.cpus,
        },
        args.log.as_deref(),
    )?;
    match args.format {
        Format::Json => write_json(&report)?,
        Format::Text => {
            for b in &report.boots {
                println!(
                    "{} ({}): {} in {:.0} s; {}",
                    b.firmware,
                    b.accel,
                    if b.passed { "PASSED" } else { "FAILED" },
                    b.seconds,
                    b.ended
                );
                for c in &b.checks {
                    println!(
                        "  [{}] {:<13} {}{}",
                        if c.passed { "ok" } else { "--" },
                        c.name,
                        c.description,
                        c.evidence
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                }
                for n in &b.notes {
                    println!("  note: {n}");
                }
                if let Some(step) = b.failed_step {
                    println!("  failed at: {step}");
                }
            }
        }
    }
    Ok(report.passed)
}
