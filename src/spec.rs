//! The registration spec from the command line and the image: the AMI parameters
//! register, publish and bundle share, and what the image says about them.

use ami::{Architecture, BootMode, RegisterSpec};
use anyhow::{Context, Result};

/// The root snapshot of a spec drafted before the upload.
pub const PLACEHOLDER_SNAPSHOT: &str = "snap-00000000";

/// AMI parameters shared by register and publish.
#[derive(clap::Args, Debug, Clone)]
pub struct AmiParams {
    /// CPU architecture: auto (from the image), x86_64, arm64 or i386.
    #[arg(long, default_value = "auto")]
    pub architecture: String,
    /// Boot mode: auto (from the image), uefi, legacy-bios or uefi-preferred.
    #[arg(long, default_value = "auto")]
    pub boot_mode: String,
    /// Mark the AMI ENA-capable (default: whether the image's kernel has the driver,
    /// or yes without an image).
    #[arg(long, overrides_with = "no_ena")]
    pub ena: bool,
    /// Do not mark the AMI ENA-capable.
    #[arg(long)]
    pub no_ena: bool,
    /// SR-IOV "simple" networking (the default).
    #[arg(long, overrides_with = "no_sriov")]
    pub sriov: bool,
    /// No SR-IOV.
    #[arg(long)]
    pub no_sriov: bool,
    /// Require IMDSv2 on instances launched from the AMI.
    #[arg(long)]
    pub imds_v2: bool,
    /// NitroTPM 2.0 (needs UEFI).
    #[arg(long)]
    pub tpm_v2: bool,
    /// Root device name.
    #[arg(long, default_value = "/dev/xvda")]
    pub root_device: String,
    /// Volume type of the block device mappings.
    #[arg(long, default_value = "gp3")]
    pub volume_type: String,
    /// Root volume size in GiB (default: the snapshot's).
    #[arg(long, value_name = "GIB")]
    pub volume_size: Option<u64>,
    /// Minutes to wait for snapshots to complete and the AMI to become available.
    #[arg(long, default_value_t = 60)]
    pub register_timeout_minutes: u64,
}

/// What the image says about how to register it.
pub struct Detected {
    architecture: Option<String>,
    boot_mode: Option<String>,
    ena: Option<bool>,
}

pub fn detect(image: &inspect::Image) -> Result<Detected> {
    let report = image.report();
    let boot = serde_json::to_value(report.boot_mode)?
        .as_str()
        .map(str::to_string)
        .filter(|b| b != "unknown");
    Ok(Detected {
        architecture: report.architecture.clone(),
        boot_mode: boot,
        ena: (!report.kernels.is_empty()).then_some(report.drivers.ena),
    })
}

pub fn spec_from(
    name: &str,
    snapshot: &str,
    data: &[String],
    params: &AmiParams,
    detected: Option<&Detected>,
    description: Option<String>,
    tags: Vec<(String, String)>,
) -> Result<RegisterSpec> {
    let arch_name = match params.architecture.as_str() {
        "auto" => detected
            .and_then(|d| d.architecture.clone())
            .context("--architecture auto needs an image whose architecture can be detected (give --image, or --architecture)")?,
        a => a.to_string(),
    };
    let architecture = Architecture::from_name(&arch_name)
        .with_context(|| format!("unsupported architecture {arch_name:?}"))?;
    let boot_name = match params.boot_mode.as_str() {
        "auto" => detected
            .and_then(|d| d.boot_mode.clone())
            .context("--boot-mode auto needs an image with an ESP, a BIOS boot partition or MBR boot code (give --image, or --boot-mode)")?,
        b => b.to_string(),
    };
    let boot_mode = BootMode::from_name(&boot_name)
        .with_context(|| format!("unsupported boot mode {boot_name:?}"))?;
    let ena = if params.no_ena {
        false
    } else if params.ena {
        true
    } else {
        detected.and_then(|d| d.ena).unwrap_or(true)
    };
    let mut data_snapshots = Vec::new();
    for (i, d) in data.iter().enumerate() {
        let (snap, dev) = match d.split_once(':') {
            Some((s, dev)) => (s.to_string(), dev.to_string()),
            None => (d.clone(), format!("/dev/xvd{}", (b'b' + i as u8) as char)),
        };
        data_snapshots.push((snap, dev));
    }
    Ok(RegisterSpec {
        name: name.to_string(),
        description,
        architecture,
        boot_mode,
        root_snapshot: snapshot.to_string(),
        data_snapshots,
        ena,
        sriov: !params.no_sriov,
        imds_v2: params.imds_v2,
        tpm_v2: params.tpm_v2,
        root_device: params.root_device.clone(),
        volume_type: params.volume_type.clone(),
        volume_size_gib: params.volume_size,
        tags,
    })
}
