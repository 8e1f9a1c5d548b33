//! amiforge: inspect, audit and publish disk images.
//!
//! The binary is a thin layer over the library crates: it parses arguments, opens the
//! image read-only, calls into `inspect` and `imagefs`, and renders text or JSON.
//! Logs go to stderr; results to stdout. Exit codes: 0 success, 1 policy failure,
//! 2 error.

mod advisories;
mod audit;
mod boot_test;
mod build;
mod bundle;
mod bundled;
mod cli;
mod commands;
mod input;
mod lifecycle;
mod objects;
mod progress;
mod publish;
mod spec;
mod transfer;

use clap::{Parser, Subcommand};
use cli::Format;
use std::process::ExitCode;

/// Exit code for success.
const EXIT_OK: u8 = 0;
/// Exit code for a failed check: the audit or publish gate failed, or verify found
/// differing blocks.
const EXIT_FAILED_CHECK: u8 = 1;
/// Exit code for any error: bad input, unreadable image, I/O failure.
const EXIT_ERROR: u8 = 2;

/// Offline disk-image inspector and EBS snapshot uploader. Images are read without
/// mounting, root or booting, and never written.
#[derive(Parser)]
#[command(name = "amiforge", version, propagate_version = true)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bar and no progress lines on stderr (logs and errors stay).
    #[arg(long, global = true)]
    no_progress: bool,
    /// Follow the backing (parent) files that qcow2 and VMDK images name, but only
    /// those inside DIR. Without it an image naming a backing file is refused: the
    /// name is any path the image's author chose.
    #[arg(long, global = true, value_name = "DIR")]
    allow_backing: Option<std::path::PathBuf>,
    /// Read this version of an s3:// image (a bucket with versioning on) instead of
    /// the current one.
    #[arg(long, global = true, value_name = "ID")]
    version_id: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe an image: partition table, filesystems, OS, architecture, boot mode,
    /// kernels, EC2 drivers, and everything that could not be examined.
    Inspect {
        /// The disk image: raw, qcow2, VMDK, VHD or VHDX; or an EBS snapshot
        /// (`snap-…`), read in place.
        image: std::path::PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: cli::AwsArgs,
    },
    /// List a directory inside an image, like virt-ls.
    Ls {
        /// The disk image: raw, qcow2, VMDK, VHD or VHDX; or an EBS snapshot
        /// (`snap-…`), read in place.
        image: std::path::PathBuf,
        /// Directory (or file) inside the image.
        #[arg(default_value = "/")]
        path: std::ffi::OsString,
        /// Long listing: type, mode, owner, size, modification time, link target.
        #[arg(short = 'l', long)]
        long: bool,
        /// List subdirectories recursively (symlinks are not followed).
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Partition number, or an LVM logical volume as VG/LV (default: the root
        /// filesystem; 0 for a bare filesystem).
        #[arg(long, visible_alias = "volume", value_name = "N|VG/LV")]
        partition: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: cli::AwsArgs,
    },
    /// Print a file from inside an image to stdout, like virt-cat.
    Cat {
        /// The disk image: raw, qcow2, VMDK, VHD or VHDX; or an EBS snapshot
        /// (`snap-…`), read in place.
        image: std::path::PathBuf,
        /// File inside the image. Symlinks are followed inside the image only.
        path: std::ffi::OsString,
        /// Partition number, or an LVM logical volume as VG/LV (default: the root
        /// filesystem; 0 for a bare filesystem).
        #[arg(long, visible_alias = "volume", value_name = "N|VG/LV")]
        partition: Option<String>,
        /// Output format: the raw bytes (text), or JSON with the path, size, SHA-256
        /// and the content in base64.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: cli::AwsArgs,
    },
    /// What changed from one image to another of the same disk: the blocks, the
    /// partitions they fall in, and the files added, removed and modified. Two
    /// snapshots (`snap-…`, or `ami-…` for its root snapshot) are compared with
    /// ListChangedBlocks, reading only the partitions that changed; any other pair
    /// is compared by reading both.
    Diff {
        /// The earlier image, file or snapshot.
        first: std::path::PathBuf,
        /// The later image, file or snapshot (for snapshots: a descendant of the
        /// first, such as one uploaded with --parent-snapshot).
        second: std::path::PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: cli::AwsArgs,
    },
    /// Build a GPT disk image from a root filesystem tree, offline, without root or
    /// loop devices: BIOS boot partition, ESP (FAT32 with the tree's EFI loader at
    /// the removable path) and an ext4 root made by mkfs.ext4 -d. With
    /// SOURCE_DATE_EPOCH (or --seed) two builds of one tree are byte-identical.
    Build(build::BuildArgs),
    /// Boot an image in QEMU (UEFI with OVMF and/or legacy BIOS with SeaBIOS) with a
    /// NoCloud seed and check each step on the serial console: firmware, loader,
    /// kernel, multi-user, cloud-init user data, SSH host keys. Exit 1 names the
    /// step that did not happen. The image is never written.
    BootTest(boot_test::BootTestArgs),
    /// Audit an image before it ships: packages, secrets (in files, compressed files
    /// and unallocated space), hygiene, EC2 boot readiness. Exit 1 when a finding is
    /// at or above --fail-on.
    Audit(audit::AuditArgs),
    /// Write a software bill of materials (CycloneDX 1.6 or SPDX 2.3 JSON) of the
    /// image's installed packages.
    Sbom(audit::SbomArgs),
    /// Carry an image across an air gap: `bundle IMAGE --out DIR` audits it and writes
    /// its data blocks (zstd), a self-verifying manifest, the audit, the SBOM and the
    /// AMI spec; `bundle verify` and `bundle extract` check and unpack it. `upload`
    /// and `publish` accept a bundle in place of an image.
    Bundle(bundle::BundleArgs),
    /// Stream an image into a new EBS snapshot through the EBS direct APIs: holes and
    /// zero blocks are skipped, blocks are verified with SHA-256, failures retried,
    /// and an interrupted upload can be resumed.
    Upload(transfer::UploadArgs),
    /// Download a completed snapshot into a sparse file, verifying every block.
    Download(transfer::DownloadArgs),
    /// Compare an image with a snapshot block by block (exit 1 when they differ).
    Verify(transfer::VerifyArgs),
    /// Register an AMI from completed snapshots. Re-running with the same name returns
    /// the existing AMI after checking that it matches.
    Register(publish::RegisterArgs),
    /// The whole pipeline: inspect → gate → upload → register. Prints the AMI id.
    Publish(publish::PublishArgs),
    /// Manage AMIs: list, share, unshare, copy, deprecate, disable, protect, promote,
    /// prune.
    #[command(subcommand)]
    Ami(lifecycle::AmiCommand),
    /// The offline vulnerability database that `audit --vulndb` matches packages
    /// against: import OSV advisories, describe a database.
    #[command(subcommand)]
    Vulndb(advisories::VulndbCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
        /// Output format: the script (text), or JSON with the shell and the script.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write manual pages (roff), one per command, into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
        /// Output format of the list of pages written.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let show_progress = !cli.no_progress;
    input::configure(cli.allow_backing, cli.version_id);
    let result = match cli.command {
        Command::Inspect { image, format, aws } => {
            input::configure_aws(aws);
            commands::inspect(&image, format)
        }
        Command::Ls {
            image,
            path,
            long,
            recursive,
            partition,
            format,
            aws,
        } => {
            input::configure_aws(aws);
            commands::ls(&image, &path, long, recursive, partition.as_deref(), format)
        }
        Command::Cat {
            image,
            path,
            partition,
            format,
            aws,
        } => {
            input::configure_aws(aws);
            commands::cat(&image, &path, partition.as_deref(), format)
        }
        Command::Diff {
            first,
            second,
            format,
            aws,
        } => {
            input::configure_aws(aws);
            commands::diff(&first, &second, format)
        }
        Command::Build(args) => match build::build(args, show_progress) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(EXIT_FAILED_CHECK),
            Err(e) => Err(e),
        },
        Command::BootTest(args) => match boot_test::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(EXIT_FAILED_CHECK),
            Err(e) => Err(e),
        },
        Command::Audit(args) => match audit::audit_command(args, show_progress) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(EXIT_FAILED_CHECK),
            Err(e) => Err(e),
        },
        Command::Sbom(args) => audit::sbom_command(args),
        Command::Bundle(args) => match bundle::run(args, show_progress) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(EXIT_FAILED_CHECK),
            Err(e) => Err(e),
        },
        Command::Upload(args) => {
            input::configure_aws(args.aws.clone());
            transfer::upload(args, show_progress)
        }
        Command::Download(args) => transfer::download(args, show_progress),
        Command::Verify(args) => match transfer::verify(args, show_progress) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(EXIT_FAILED_CHECK),
            Err(e) => Err(e),
        },
        Command::Register(args) => publish::register(args),
        Command::Publish(args) => {
            input::configure_aws(args.upload.aws.clone());
            match publish::publish(args, show_progress) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(EXIT_FAILED_CHECK),
                Err(e) => Err(e),
            }
        }
        Command::Ami(cmd) => lifecycle::run(cmd, show_progress),
        Command::Vulndb(cmd) => advisories::run(cmd),
        Command::Completions { shell, format } => completions(shell, format),
        Command::Man { out, format } => man(&out, format),
    };
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("amiforge: error: {}", describe(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn completions(shell: clap_complete::Shell, format: Format) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "amiforge", &mut script);
    match format {
        Format::Text => {
            use std::io::Write;
            std::io::stdout().write_all(&script)?;
            Ok(())
        }
        Format::Json => cli::write_json(&serde_json::json!({
            "shell": shell.to_string(),
            "script": String::from_utf8_lossy(&script),
        })),
    }
}

/// Writes one manual page per command and subcommand into `out`.
fn man(out: &std::path::Path, format: Format) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    fn pages(
        cmd: clap::Command,
        out: &std::path::Path,
        written: &mut Vec<std::path::PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub.clone(), out, written)?;
        }
        written.push(clap_mangen::Man::new(cmd).generate_to(out)?);
        Ok(())
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    pages(cmd, out, &mut written)
        .with_context(|| format!("cannot write manual pages into {}", out.display()))?;
    written.sort();
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    cli::emit(format, &serde_json::json!({ "pages": names }), || {
        names.join("\n")
    })
}

/// The error and its causes, each cause shown only when the message so far does not
/// already include it (library errors often print their source themselves).
fn describe(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(BrokenPipe))
    })
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    // Colours only for a person at a terminal: CI logs and files get plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
