//! `amiforge bundle`: carry an image across an air gap.

use crate::audit::GateArgs;
use crate::bundled::{open_and_verify, AUDIT_FILE, REGISTER_FILE, SBOM_FILE, VULNDB_FILE};
use crate::cli::{emit, parse_tags, Format};
use crate::progress::Reporter;
use crate::spec::{detect, spec_from, AmiParams, PLACEHOLDER_SNAPSHOT};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `amiforge bundle` arguments.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: Option<BundleCommand>,
    #[command(flatten)]
    pub create: CreateArgs,
}

/// `amiforge bundle verify|extract`.
#[derive(clap::Subcommand, Debug)]
pub enum BundleCommand {
    /// Check every block's hash, the aggregate, the bundled files and (with
    /// --public-key) the signature. Exit 2 on any mismatch, naming it.
    Verify {
        /// The bundle directory, or the S3 prefix it was written to
        /// (`s3://bucket/prefix/`), read in place.
        bundle: PathBuf,
        /// ed25519 public key (PEM) to check the signature with.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// The manifest SHA-256 printed when the bundle was made, to compare.
        #[arg(long, value_name = "SHA256")]
        expect_manifest_sha256: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: crate::cli::AwsArgs,
    },
    /// Write the raw image back, as a sparse file.
    Extract {
        /// The bundle directory, or its S3 prefix.
        bundle: PathBuf,
        /// The image file to write.
        out: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: crate::cli::AwsArgs,
    },
}

/// `amiforge bundle IMAGE --out DIR`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The disk image: raw, qcow2, VMDK, VHD or VHDX.
    #[arg(required = true)]
    pub image: Option<PathBuf>,
    /// The bundle directory to create, or an S3 prefix (`s3://bucket/prefix/`) to
    /// write the bundle's files under as objects (made in a local staging directory
    /// first, under TMPDIR).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Bundle name; also the AMI name when it is published (default: the image's file
    /// name without extension).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub gate: GateArgs,
    /// Sign the manifest with this ed25519 private key (PKCS#8 PEM, as
    /// `openssl genpkey -algorithm ed25519` writes).
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// AMI description.
    #[arg(long)]
    pub description: Option<String>,
    /// AMI tag (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub params: AmiParams,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub aws: crate::cli::AwsArgs,
}

/// Returns false when the audit gate failed (exit 1).
pub fn run(args: BundleArgs, show_progress: bool) -> Result<bool> {
    match args.command {
        Some(BundleCommand::Verify {
            bundle,
            public_key,
            expect_manifest_sha256,
            format,
            aws,
        }) => {
            crate::input::configure_aws(aws);
            verify(
                &bundle,
                public_key.as_deref(),
                expect_manifest_sha256.as_deref(),
                format,
                show_progress,
            )
            .map(|_| true)
        }
        Some(BundleCommand::Extract {
            bundle,
            out,
            format,
            aws,
        }) => {
            crate::input::configure_aws(aws);
            let b = crate::bundled::open(&bundle)?;
            let progress = Reporter::new(show_progress, "blocks");
            let size = b.extract(&out, &*progress)?;
            progress.finish();
            let value = serde_json::json!({ "image": out.display().to_string(), "bytes": size });
            emit(format, &value, || {
                format!("wrote {} ({size} bytes)", out.display())
            })?;
            Ok(true)
        }
        None => create(args.create, show_progress),
    }
}

fn create(args: CreateArgs, show_progress: bool) -> Result<bool> {
    let format = args.format;
    let Some(created) = write(args, show_progress)? else {
        return Ok(false);
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&created)?),
        Format::Text => {
            println!(
                "bundle {}: {} of {} blocks, {} MiB of data in {} MiB{}",
                created.path.display(),
                created.blocks,
                created.image_blocks,
                created.data_bytes >> 20,
                created.compressed_bytes >> 20,
                if created.signed { ", signed" } else { "" }
            );
            println!("manifest sha256: {}", created.manifest_sha256);
        }
    }
    eprintln!(
        "amiforge: compare the manifest SHA-256 out of band: {}",
        created.manifest_sha256
    );
    Ok(true)
}

/// The arguments `amiforge bundle IMAGE --out DIR --name NAME --fail-on F
/// --architecture A` would have, every other setting at its default (for `build
/// --bundle`, which knows the architecture it built for).
pub fn defaults(
    image: &Path,
    out: &Path,
    name: &str,
    fail_on: &str,
    architecture: &str,
) -> Result<CreateArgs> {
    #[derive(clap::Parser)]
    struct Bundle {
        #[command(flatten)]
        create: CreateArgs,
    }
    use clap::Parser as _;
    let args = [
        std::ffi::OsStr::new("bundle"),
        image.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--name".as_ref(),
        name.as_ref(),
        "--fail-on".as_ref(),
        fail_on.as_ref(),
        "--architecture".as_ref(),
        architecture.as_ref(),
    ];
    Ok(Bundle::try_parse_from(args)?.create)
}

/// Audits (the gate) and writes the bundle; `None` when the gate refused it.
pub fn write(args: CreateArgs, show_progress: bool) -> Result<Option<bundle::Created>> {
    let (Some(image), Some(out)) = (args.image, args.out) else {
        bail!("bundle needs an IMAGE and --out DIR");
    };
    crate::input::configure_aws(args.aws.clone());
    let in_s3 = crate::objects::s3_url(&out).map(str::to_string);
    if let Some(url) = &in_s3 {
        if crate::objects::is_bundle_in_s3(url) {
            bail!("{url} holds a bundle already: bundles are written to a new prefix");
        }
    } else if out.exists() {
        bail!(
            "{} exists: bundles are written to a new directory",
            out.display()
        );
    }
    let name = match args.name {
        Some(n) => n,
        None => image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("give --name: the image path has no file name")?,
    };
    let key = args
        .sign_key
        .as_deref()
        .map(bundle::load_signing_key)
        .transpose()?;
    // 1. The audit gate, before anything is written.
    let opened = crate::input::image(&image)?;
    let Some(report) = args
        .gate
        .audit(&opened, &image, "no bundle was written", show_progress)?
    else {
        return Ok(None);
    };
    // 2. The documents: audit, SBOM (of the packages the audit read; the databases
    // it could not read are in the audit's not_examined), registration spec.
    let sbom_input = sbom::Input {
        image: image.display().to_string(),
        os: report.os.clone(),
        packages: report.packages.clone(),
        unread: Vec::new(),
        created: std::time::SystemTime::now(),
    };
    let detected = detect(&opened)?;
    let spec = spec_from(
        &name,
        PLACEHOLDER_SNAPSHOT,
        &[],
        &args.params,
        Some(&detected),
        args.description.clone(),
        parse_tags(&args.tags)?,
    )?;
    spec.validate()?;
    let mut files = vec![
        (AUDIT_FILE, serde_json::to_vec_pretty(&report)?),
        (
            SBOM_FILE,
            serde_json::to_vec_pretty(&sbom::cyclonedx(&sbom_input))?,
        ),
        (REGISTER_FILE, serde_json::to_vec_pretty(&spec)?),
    ];
    // The vulnerability database the gate used travels with the audit it explains.
    if let Some(db) = &args.gate.vulnerabilities.vulndb {
        let bytes = std::fs::read(db).with_context(|| format!("cannot read {}", db.display()))?;
        files.push((VULNDB_FILE, bytes));
    }
    // 3. The blocks.
    let progress = Reporter::new(show_progress, "blocks");
    let staging = match &in_s3 {
        Some(_) => Some(
            tempfile::Builder::new()
                .prefix("amiforge-bundle-")
                .tempdir()
                .context("cannot make a staging directory for the bundle")?,
        ),
        None => None,
    };
    let dir = match &staging {
        Some(t) => t.path().join("bundle"),
        None => out.clone(),
    };
    let mut created = bundle::create(
        &**opened.source(),
        &dir,
        &name,
        &files,
        key.as_ref(),
        &*progress,
    )?;
    progress.finish();
    if let Some(url) = &in_s3 {
        crate::objects::put_bundle(&dir, url, &created)?;
        created.path = out.clone();
    }
    Ok(Some(created))
}

fn verify(
    path: &Path,
    public_key: Option<&Path>,
    expect: Option<&str>,
    format: Format,
    show_progress: bool,
) -> Result<()> {
    let (_, v) = open_and_verify(path, public_key, show_progress)?;
    if let Some(want) = expect {
        if !v.manifest_sha256.eq_ignore_ascii_case(want.trim()) {
            bail!(
                "manifest SHA-256 is {}, not the expected {}: the manifest was changed",
                v.manifest_sha256,
                want.trim()
            );
        }
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Format::Text => println!(
            "bundle {} verified: {} blocks, aggregate {}, files {}, signature {}\nmanifest sha256: {}",
            path.display(),
            v.blocks,
            v.aggregate,
            v.files.join(", "),
            v.signature,
            v.manifest_sha256
        ),
    }
    Ok(())
}
