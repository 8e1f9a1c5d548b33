//! `amiforge build`: a bootable GPT disk image from a root filesystem tree
//! (`diskbuild`).

use crate::audit::FailOn;
use crate::cli::{write_json, Format};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The root filesystem tree: a directory (nothing in it is changed), or a tar
    /// archive (plain, gzip, xz or zstd) of one.
    tree: PathBuf,
    /// The disk image to write, replaced if it exists.
    #[arg(short, long, required_unless_present = "bundle")]
    out: Option<PathBuf>,
    /// Also write an air-gap bundle of the disk into this new directory (see
    /// `amiforge bundle`; its audit gate is --fail-on). Without -o the bundle is
    /// the only output.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// The AMI name the bundle carries. Default: the bundle directory's name.
    #[arg(long, requires = "bundle")]
    name: Option<String>,
    /// The image's container format: raw, qcow2, or VMDK (streamOptimized, the
    /// subformat VM Import and OVAs use). Containers are converted from the raw disk
    /// by qemu-img.
    #[arg(long = "image-format", value_enum, default_value_t = ImageFormat::Raw)]
    image_format: ImageFormat,
    #[command(flatten)]
    disk: DiskArgs,
    /// Refuse the image (exit 1, nothing left behind) when the audit's secret scan
    /// of the built root finds a secret at least this severe; `none` skips the scan.
    #[arg(long, value_enum, default_value_t = FailOn::High)]
    fail_on: FailOn,
    /// Audit configuration (TOML) for the secret scan: allow-lists, skipped paths.
    #[arg(long)]
    audit_config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// How a disk is built from a tree: the options `build` and `publish --from-tree`
/// share.
#[derive(clap::Args, Debug)]
pub struct DiskArgs {
    /// The disk's size: bytes, or a number with K, M, G or T (powers of 1024).
    /// Default: 4G.
    #[arg(long)]
    size: Option<String>,
    /// How the disk boots. Default: hybrid (UEFI preferred) on x86_64, uefi on arm64.
    #[arg(long, value_enum)]
    boot: Option<BootArg>,
    /// The tree's architecture. Default: what its programs (sh, bash, busybox,
    /// systemd) are built for.
    #[arg(long, value_enum)]
    arch: Option<ArchArg>,
    /// The root filesystem (default ext4). XFS needs xfsprogs 6.17 or later (its
    /// mkfs.xfs populates a filesystem from a directory; AMIFORGE_MKFS_XFS names one
    /// not on the PATH).
    #[arg(long = "root-fs", value_enum)]
    root_fs: Option<RootFsArg>,
    /// Derive every identifier (disk and partition GUIDs, filesystem UUIDs, hash
    /// seeds) from this string. Default: the value of SOURCE_DATE_EPOCH when it is
    /// set (so two builds with it are byte-identical), otherwise random.
    #[arg(long)]
    seed: Option<String>,
    /// Do not clean the image (sysprep is on by default: SSH host keys, machine-id,
    /// histories, cloud-init state, logs, package caches, temporary files, random
    /// seeds, DHCP leases, account backups, crash dumps, root's password).
    #[arg(long)]
    no_sysprep: bool,
}

/// The disk size when none is given.
const DEFAULT_SIZE: u64 = 4 << 30;

impl DiskArgs {
    /// Whether any of these options was given.
    pub fn given(&self) -> bool {
        self.size.is_some()
            || self.boot.is_some()
            || self.arch.is_some()
            || self.root_fs.is_some()
            || self.seed.is_some()
            || self.no_sysprep
    }

    /// The build's options: the seed from --seed or SOURCE_DATE_EPOCH (else
    /// random), the clock from SOURCE_DATE_EPOCH (else now).
    fn options(&self) -> Result<diskbuild::Options> {
        let epoch_var = std::env::var("SOURCE_DATE_EPOCH").ok();
        let epoch = match &epoch_var {
            Some(v) => v
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let seed = self
            .seed
            .clone()
            .or(epoch_var)
            .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)));
        Ok(diskbuild::Options {
            size: match &self.size {
                Some(s) => parse_size(s)?,
                None => DEFAULT_SIZE,
            },
            boot: self.boot.map(|b| match b {
                BootArg::Uefi => diskbuild::Boot::Uefi,
                BootArg::Bios => diskbuild::Boot::Bios,
                BootArg::Hybrid => diskbuild::Boot::Hybrid,
            }),
            arch: self.arch.map(|a| match a {
                ArchArg::X86_64 => diskbuild::Arch::X86_64,
                ArchArg::Arm64 => diskbuild::Arch::Arm64,
            }),
            root_fs: match self.root_fs {
                None | Some(RootFsArg::Ext4) => diskbuild::RootFs::Ext4,
                Some(RootFsArg::Xfs) => diskbuild::RootFs::Xfs,
            },
            seed,
            epoch,
            sysprep: !self.no_sysprep,
        })
    }
}

/// `publish --from-tree`: builds the raw disk `out` from `tree`, as `build` does
/// without its secret scan (publish's audit gate follows, on the whole audit).
pub fn build_for_publish(
    tree: &std::path::Path,
    out: &std::path::Path,
    disk: &DiskArgs,
) -> Result<()> {
    let opts = disk.options()?;
    tracing::info!("building {} from {}", out.display(), tree.display());
    let built = diskbuild::build(tree, out, &opts)?;
    tracing::info!(
        "built {}: {}, {} root {}, kernel {}; sysprep removed {} item(s)",
        out.display(),
        built.arch.name(),
        opts.root_fs.name(),
        built.root_uuid,
        built.kernel.as_deref().unwrap_or("none"),
        built.sysprep.len()
    );
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ImageFormat {
    Raw,
    Qcow2,
    Vmdk,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BootArg {
    Uefi,
    Bios,
    Hybrid,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RootFsArg {
    Ext4,
    Xfs,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ArchArg {
    #[value(name = "x86_64")]
    X86_64,
    Arm64,
}

#[derive(Serialize)]
struct Report {
    /// The disk image written (none when the bundle is the only output).
    image: Option<String>,
    /// The bundle written, with --bundle.
    bundle: Option<BundleReport>,
    image_format: &'static str,
    size: u64,
    /// The tree's architecture (given, or told by its programs).
    architecture: &'static str,
    /// How the disk boots: uefi, bios or hybrid.
    boot: &'static str,
    disk_guid: String,
    root_uuid: String,
    esp_uuid: String,
    /// What boots the disk under UEFI (the ESP's removable path), if it does.
    loader: Option<String>,
    /// What boots it from legacy BIOS, if it does.
    bios_loader: Option<String>,
    /// The kernel version GRUB's configuration boots.
    kernel: Option<String>,
    partitions: Vec<Partition>,
    /// The root filesystem: ext4 or xfs.
    root_fs: &'static str,
    /// What the image holds that the tree does not.
    added: Vec<Added>,
    /// What the tree holds that the image does not, besides sysprep's removals.
    left_out: Vec<Added>,
    /// Files mirrored into the stage as hard links, and as copies.
    staged_linked: u64,
    staged_copied: u64,
    /// Inodes whose times were clamped to SOURCE_DATE_EPOCH (or the build time).
    clamped_inodes: u64,
    /// For a tar archive: the entries unpacked.
    unpacked_entries: Option<u64>,
    /// What sysprep removed, operation by operation.
    sysprep: Vec<Sysprepped>,
    /// The secret scan of the built root: files and bytes read, and the secrets
    /// found (below the refusal threshold, or none).
    secret_scan: Option<SecretScan>,
}

#[derive(Serialize)]
struct BundleReport {
    path: String,
    manifest_sha256: String,
    blocks: u64,
}

#[derive(Serialize)]
struct Sysprepped {
    operation: &'static str,
    path: String,
    action: String,
}

#[derive(Serialize)]
struct SecretScan {
    fail_on: &'static str,
    files_scanned: u64,
    bytes_scanned: u64,
    /// Secrets found, by severity name.
    secrets: std::collections::BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Added {
    path: String,
    what: String,
}

#[derive(Serialize)]
struct Partition {
    number: u32,
    name: String,
    type_guid: String,
    guid: String,
    start: u64,
    size: u64,
}

/// "4G" → 4 GiB.
fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => bail!("size {s:?}: the unit must be K, M, G or T"),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("size {s:?} is not a number"))?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {s:?} is too large"))
}

/// Builds; `Ok(false)` when the secret scan refused the image (exit 1).
pub fn build(args: BuildArgs, show_progress: bool) -> Result<bool> {
    let opts = args.disk.options()?;
    // Where the raw disk is built: the output itself, or beside the output (a
    // container is converted from it) or the bundle (when it is the only output).
    let beside = |path: &std::path::Path| -> Result<PathBuf> {
        let name = path
            .file_name()
            .context("the output needs a file name")?
            .to_string_lossy();
        Ok(path.with_file_name(format!(".{name}.raw-{}", std::process::id())))
    };
    let raw = match (&args.out, &args.bundle, args.image_format) {
        (Some(out), _, ImageFormat::Raw) => out.clone(),
        (Some(out), _, _) => beside(out)?,
        (None, Some(dir), _) => beside(dir)?,
        (None, None, _) => bail!("give -o IMAGE or --bundle DIR"),
    };
    tracing::info!("building {} from {}", raw.display(), args.tree.display());
    let result = (|| -> Result<Option<Report>> {
        let Some(mut report) = build_raw(&args, &raw, &opts, show_progress)? else {
            return Ok(None);
        };
        if let Some(dir) = &args.bundle {
            let name = match &args.name {
                Some(n) => n.clone(),
                None => dir
                    .file_name()
                    .context("give --name: the bundle path has no file name")?
                    .to_string_lossy()
                    .into_owned(),
            };
            let create = crate::bundle::defaults(
                &raw,
                dir,
                &name,
                args.fail_on.name(),
                report.architecture,
            )?;
            let Some(created) = crate::bundle::write(create, show_progress)? else {
                return Ok(None);
            };
            report.bundle = Some(BundleReport {
                path: created.path.display().to_string(),
                manifest_sha256: created.manifest_sha256.clone(),
                blocks: created.blocks,
            });
        }
        if let Some(out) = args.out.as_ref().filter(|out| **out != raw) {
            let format = match args.image_format {
                ImageFormat::Qcow2 => diskbuild::Container::Qcow2,
                _ => diskbuild::Container::VmdkStreamOptimized,
            };
            diskbuild::convert(&raw, out, format, &opts.seed)?;
        }
        Ok(Some(report))
    })();
    if args.out.as_ref() != Some(&raw) {
        let _ = std::fs::remove_file(&raw);
    }
    finish(&args, result?)
}

/// Builds the raw disk at `raw` and runs the secret gate; `None` when it refused.
fn build_raw(
    args: &BuildArgs,
    raw: &std::path::Path,
    opts: &diskbuild::Options,
    show_progress: bool,
) -> Result<Option<Report>> {
    let built = diskbuild::build(&args.tree, raw, opts)?;
    let secret_scan = match args.fail_on.threshold() {
        None => None,
        Some(threshold) => {
            let config = crate::audit::load_config(args.audit_config.as_deref())?;
            let image = crate::input::image(raw)?;
            let audited = crate::audit::run(&image, raw, &config, show_progress)?;
            let refused: Vec<_> = audited
                .failing(Some(threshold))
                .into_iter()
                .filter(|f| f.category == audit::Category::Secret)
                .collect();
            if !refused.is_empty() {
                for f in &refused {
                    eprintln!(
                        "amiforge: build: {} {} {}{}",
                        f.severity.name(),
                        f.rule,
                        f.path.as_deref().unwrap_or(""),
                        f.line.map(|l| format!(":{l}")).unwrap_or_default()
                    );
                }
                eprintln!(
                    "amiforge: build refused (--fail-on {}): the tree holds {} secret(s); {} was not kept",
                    args.fail_on.name(),
                    refused.len(),
                    raw.display()
                );
                std::fs::remove_file(raw).with_context(|| format!("removing {}", raw.display()))?;
                return Ok(None);
            }
            let mut secrets = std::collections::BTreeMap::new();
            for f in audited
                .findings
                .iter()
                .filter(|f| f.category == audit::Category::Secret)
            {
                *secrets.entry(f.severity.name().to_string()).or_insert(0) += 1;
            }
            Some(SecretScan {
                fail_on: args.fail_on.name(),
                files_scanned: audited.summary.files_scanned,
                bytes_scanned: audited.summary.bytes_scanned,
                secrets,
            })
        }
    };
    let report = Report {
        image: args.out.as_ref().map(|o| o.display().to_string()),
        bundle: None,
        image_format: match args.image_format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
        },
        size: opts.size,
        architecture: built.arch.name(),
        boot: match built.boot {
            diskbuild::Boot::Uefi => "uefi",
            diskbuild::Boot::Bios => "bios",
            diskbuild::Boot::Hybrid => "hybrid",
        },
        disk_guid: built.disk_guid,
        root_uuid: built.root_uuid,
        esp_uuid: built.esp_uuid,
        loader: built.loader,
        bios_loader: built.bios_loader,
        kernel: built.kernel,
        root_fs: opts.root_fs.name(),
        added: built
            .added
            .into_iter()
            .map(|(path, what)| Added { path, what })
            .collect(),
        left_out: built
            .left_out
            .into_iter()
            .map(|(path, what)| Added { path, what })
            .collect(),
        staged_linked: built.staged.0,
        staged_copied: built.staged.1,
        clamped_inodes: built.clamped_inodes,
        unpacked_entries: built.unpacked_entries,
        sysprep: built
            .sysprep
            .into_iter()
            .map(|r| Sysprepped {
                operation: r.operation,
                path: r.path,
                action: r.action,
            })
            .collect(),
        secret_scan,
        partitions: built
            .partitions
            .into_iter()
            .map(|p| Partition {
                number: p.number,
                name: p.name,
                type_guid: p.type_guid,
                guid: p.guid,
                start: p.start,
                size: p.size,
            })
            .collect(),
    };
    Ok(Some(report))
}

/// Prints the report; false when the build was refused.
fn finish(args: &BuildArgs, report: Option<Report>) -> Result<bool> {
    let Some(report) = report else {
        return Ok(false);
    };
    match args.format {
        Format::Json => write_json(&report)?,
        Format::Text => {
            println!(
                "{} ({}, {} bytes, {} {}, GPT {})",
                report.image.as_deref().unwrap_or("(no image kept)"),
                report.image_format,
                report.size,
                report.architecture,
                report.boot,
                report.disk_guid
            );
            if let Some(b) = &report.bundle {
                println!(
                    "  bundle {}: {} blocks, manifest sha256 {}",
                    b.path, b.blocks, b.manifest_sha256
                );
            }
            for p in &report.partitions {
                println!(
                    "  {} {:<5} start {:>12} size {:>12} type {}",
                    p.number, p.name, p.start, p.size, p.type_guid
                );
            }
            println!(
                "  root filesystem {} UUID {}, ESP {}",
                report.root_fs, report.root_uuid, report.esp_uuid
            );
            if let Some(l) = &report.loader {
                println!("  UEFI: {l}");
            }
            if let Some(l) = &report.bios_loader {
                println!("  BIOS: {l}");
            }
            if let Some(k) = &report.kernel {
                println!("  kernel {k}");
            }
            for a in &report.added {
                println!("  added {}: {}", a.path, a.what);
            }
            for a in &report.left_out {
                println!("  left out {}: {}", a.path, a.what);
            }
            for r in &report.sysprep {
                println!("  sysprep {}: {} {}", r.operation, r.action, r.path);
            }
            if let Some(s) = &report.secret_scan {
                println!(
                    "  secret scan: {} files, {} bytes; secrets: {}",
                    s.files_scanned,
                    s.bytes_scanned,
                    if s.secrets.is_empty() {
                        "none".to_string()
                    } else {
                        s.secrets
                            .iter()
                            .map(|(k, v)| format!("{v} {k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(super::parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(super::parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(super::parse_size("1048576").unwrap(), 1 << 20);
        assert!(super::parse_size("4X").is_err());
        assert!(super::parse_size("99999999999T").is_err());
    }
}
