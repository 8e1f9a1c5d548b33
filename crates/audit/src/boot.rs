//! EC2 boot readiness.

use crate::{Auditor, Category, Context, Finding, Output};
use inspect::BootMode;
use secrets::Severity;

pub(crate) struct BootAuditor;

/// First-boot agents that configure an EC2 instance: cloud-init or an equivalent.
const FIRST_BOOT_AGENTS: &[&str] = &[
    "/usr/bin/cloud-init",
    "/etc/cloud/cloud.cfg",
    "/usr/lib/dracut/modules.d/30ignition",
    "/usr/bin/afterburn",
    "/usr/bin/coreos-metadata",
];

impl Auditor for BootAuditor {
    fn id(&self) -> &'static str {
        "boot"
    }
    fn version(&self) -> &'static str {
        "1"
    }
    fn run(&self, ctx: &Context<'_>) -> Result<Output, String> {
        let mut out = Output::default();
        let r = ctx.inspection;
        let mut add = |name: &str, title: &str, severity: Severity| {
            out.findings.push(Finding::new(
                Category::Boot,
                name,
                title,
                severity,
                r.root_partition,
                None,
            ));
        };
        let Some(root) = r.root_partition else {
            add(
                "no-root-filesystem",
                "No readable root filesystem: the image's OS could not be examined",
                Severity::High,
            );
            return Ok(out);
        };
        if r.boot_mode == BootMode::Unknown {
            add(
                "boot-mode-unknown",
                "Neither an EFI system partition nor a legacy BIOS boot path was found",
                Severity::High,
            );
        }
        if r.kernels.is_empty() {
            add(
                "no-kernel",
                "No kernel under /boot or /lib/modules",
                Severity::High,
            );
        } else {
            if !r.drivers.ena {
                add(
                    "ena-driver-missing",
                    "The newest kernel lacks the ENA driver: no network on Nitro instances",
                    Severity::High,
                );
            }
            if !r.drivers.nvme {
                add(
                    "nvme-driver-missing",
                    "The newest kernel lacks the NVMe driver: EBS volumes unreachable on Nitro",
                    Severity::High,
                );
            }
        }
        let fs = ctx.image.filesystem(root).map_err(|e| e.to_string())?;
        if !FIRST_BOOT_AGENTS
            .iter()
            .any(|p| fs.metadata(p.as_bytes()).is_ok())
        {
            add(
                "no-first-boot-agent",
                "No cloud-init or equivalent: instances will not get their key pair or user data",
                Severity::Medium,
            );
        }
        Ok(out)
    }
}
