//! register (snapshot → AMI) and publish (image → inspect → gate → upload → AMI).

use crate::cli::{parse_tags, runtime, AwsArgs, Format};
use crate::spec::{detect, spec_from, AmiParams, PLACEHOLDER_SNAPSHOT};
use crate::transfer::{run_upload, UploadArgs};
use ami::{BootMode, RegisterSpec};
use anyhow::{bail, Context, Result};
use blockio::BlockSource;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Threads that read a disk to learn its identity on a re-run (this is I/O and
/// SHA-256, and the machines amiforge runs on in CI have two cores or more).
const HASH_THREADS: usize = 2;

/// Tag keys amiforge writes on what it publishes. The disk's content identity
/// (`ebs::digest`): the same disk in any container format has the same one, and the
/// upload computes it as it reads, so the image is read once.
const TAG_DISK_SHA256: &str = "amiforge:disk-sha256";
const TAG_VERSION: &str = "amiforge:version";
const TAG_AUDIT: &str = "amiforge:audit";
/// Tag with what `publish --boot-test` found: "uefi passed, bios passed".
const TAG_BOOT_TEST: &str = "amiforge:boot-test";
/// Tag naming the bundle an AMI was published from: its manifest's SHA-256.
const TAG_BUNDLE_SHA256: &str = "amiforge:bundle-sha256";
/// `amiforge register` arguments.
#[derive(clap::Args, Debug)]
pub struct RegisterArgs {
    /// AMI name (3-128 characters; unique per account and region).
    #[arg(long)]
    pub name: String,
    /// The root volume's snapshot.
    #[arg(long, value_name = "SNAPSHOT_ID")]
    pub snapshot: String,
    /// A data volume: SNAPSHOT_ID or SNAPSHOT_ID:/dev/NAME (default /dev/xvdb, xvdc...).
    #[arg(long = "data-snapshot", value_name = "SNAP[:DEVICE]")]
    pub data_snapshots: Vec<String>,
    /// The image the snapshot was made from, to detect architecture, boot mode and ENA.
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub params: AmiParams,
    /// AMI description.
    #[arg(long)]
    pub description: Option<String>,
    /// Tag for the AMI and its snapshots, KEY=VALUE; repeat for more.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Serialize)]
struct RegisterOutput<'a> {
    #[serde(flatten)]
    registered: &'a ami::Registered,
    spec: &'a RegisterSpec,
}

pub fn register(args: RegisterArgs) -> Result<()> {
    let detected = match &args.image {
        Some(path) => Some(detect(&crate::input::image(path)?)?),
        None => None,
    };
    let tags = parse_tags(&args.tags)?;
    let spec = spec_from(
        &args.name,
        &args.snapshot,
        &args.data_snapshots,
        &args.params,
        detected.as_ref(),
        args.description.clone(),
        tags,
    )?;
    spec.validate()?;
    let timeout = Duration::from_secs(args.params.register_timeout_minutes * 60);
    let rt = runtime()?;
    let registered = rt.block_on(async {
        let client = ami::client(&args.aws.options(), &args.aws.retry()).await?;
        Ok::<_, anyhow::Error>(ami::register(&client, &spec, timeout).await?)
    })?;
    print_registered(&registered, &spec, args.format)
}

fn print_registered(
    registered: &ami::Registered,
    spec: &RegisterSpec,
    format: Format,
) -> Result<()> {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&RegisterOutput { registered, spec })?
        ),
        Format::Text => {
            let how = if registered.existing {
                "already registered"
            } else {
                "registered"
            };
            eprintln!(
                "amiforge: {} {how} as {:?} ({}, {}, ENA {})",
                registered.image_id,
                spec.name,
                spec.architecture.name(),
                spec.boot_mode.name(),
                spec.ena
            );
            println!("{}", registered.image_id);
        }
    }
    Ok(())
}

/// `amiforge publish` arguments.
#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    pub upload: UploadArgs,
    /// AMI name (3-128 characters; unique per account and region). A bundle carries
    /// its own; this overrides it.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub params: AmiParams,
    /// For a bundle, the gate applies to its bundled audit.
    #[command(flatten)]
    pub gate: crate::audit::GateArgs,
    /// Keep the snapshot when registration fails (default: delete it).
    #[arg(long)]
    pub keep_on_failure: bool,
    /// The image family, for `ami list --family` and `ami prune` (tag amiforge:family).
    #[arg(long)]
    pub family: Option<String>,
    /// The version within the family (tag amiforge:image-version).
    #[arg(long)]
    pub image_version: Option<String>,
    /// Turn on deregistration protection for the new AMI (`ami unprotect` turns it
    /// off; `ami prune` leaves protected AMIs alone).
    #[arg(long)]
    pub protect: bool,
    /// Point this SSM parameter (data type aws:ec2:image) at the AMI, e.g.
    /// /images/web/latest; repeat for more.
    #[arg(long = "ssm-parameter", value_name = "NAME")]
    pub ssm_parameters: Vec<String>,
    /// Boot the image in QEMU after the audit and before anything is sent (see
    /// `amiforge boot-test`): every way it boots must reach cloud-init's user data,
    /// or nothing is uploaded (exit 1). The AMI is tagged amiforge:boot-test.
    #[arg(long)]
    pub boot_test: bool,
    /// Seconds each boot of --boot-test may take.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub boot_test_timeout: u64,
    /// Build the image first from this root tree (a directory or a tar archive), as
    /// `amiforge build TREE -o IMAGE` does: IMAGE is written (replaced) with the raw
    /// disk, kept for the next incremental upload, then audited, gated and published.
    /// The build's own options follow.
    #[arg(long, value_name = "TREE")]
    pub from_tree: Option<std::path::PathBuf>,
    #[command(flatten, next_help_heading = "Build options (with --from-tree)")]
    pub disk: crate::build::DiskArgs,
}

#[derive(Serialize)]
struct PublishOutput<'a> {
    image_id: &'a str,
    name: &'a str,
    existing: bool,
    snapshot_id: &'a str,
    image_sha256: &'a str,
    architecture: &'a str,
    boot_mode: BootMode,
    ena: bool,
    upload: Option<&'a ebs::UploadOutcome>,
}

/// Returns false when the gate failed (exit 1).
pub fn publish(args: PublishArgs, show_progress: bool) -> Result<bool> {
    let input = args.upload.image.clone();
    match &args.from_tree {
        Some(tree) => {
            if crate::bundled::is_bundle(&input) || input.is_dir() {
                bail!(
                    "{}: with --from-tree, IMAGE is the disk file to build, not a directory",
                    input.display()
                );
            }
            crate::build::build_for_publish(tree, &input, &args.disk)?;
        }
        None if args.disk.given() => {
            bail!("--size, --boot, --arch, --root-fs, --seed and --no-sysprep build a tree: give --from-tree TREE")
        }
        None => {}
    }
    let user_tags = parse_tags(&args.upload.tags)?;
    let mut common_tags = user_tags.clone();
    common_tags.push((TAG_VERSION.into(), env!("CARGO_PKG_VERSION").into()));
    if let Some(f) = &args.family {
        common_tags.push((ami::lifecycle::TAG_FAMILY.into(), f.clone()));
    }
    if let Some(v) = &args.image_version {
        common_tags.push((ami::lifecycle::TAG_IMAGE_VERSION.into(), v.clone()));
    }
    // 1. Audit and gate, before anything is sent; 2. the registration, validated.
    // The input is opened (and a bundle verified) once, here.
    let (mut draft, source, bundle_identity) = if crate::bundled::is_bundle(&input) {
        if args.boot_test {
            bail!("--boot-test boots an image file: boot-test the image before bundling it");
        }
        let b = crate::bundled::open_verified(
            &input,
            args.upload.public_key.as_deref(),
            show_progress,
        )?;
        let (failing, os) = crate::bundled::gate(&b, args.gate.fail_on)?;
        if !failing.is_empty() {
            for f in &failing {
                eprintln!("amiforge: gate: {f}");
            }
            eprintln!(
                "amiforge: gate failed (--fail-on {}) on the bundled audit: {} finding(s); nothing was uploaded",
                args.gate.fail_on.name(),
                failing.len()
            );
            return Ok(false);
        }
        let mut spec = crate::bundled::spec(&b)?;
        if let Some(n) = &args.name {
            spec.name = n.clone();
        }
        if args.upload.description.is_some() {
            spec.description = args.upload.description.clone();
        }
        let identity = (TAG_BUNDLE_SHA256.to_string(), b.manifest_sha256());
        spec.tags.extend(common_tags);
        spec.tags.push(identity.clone());
        spec.tags.push((
            TAG_AUDIT.into(),
            format!(
                "{os}; bundled audit; gate --fail-on {} passed",
                args.gate.fail_on.name()
            ),
        ));
        let source: Arc<dyn BlockSource> = Arc::new(bundle::BundleSource::new(b));
        (spec, source, Some(identity))
    } else {
        let name = args
            .name
            .clone()
            .context("--name is required when publishing an image (a bundle carries its own)")?;
        let image = crate::input::image(&input)?;
        let detected = detect(&image)?;
        let Some(report) =
            args.gate
                .audit(&image, &input, "nothing was uploaded", show_progress)?
        else {
            return Ok(false);
        };
        let os = report
            .os
            .as_ref()
            .and_then(|o| o.pretty_name.clone())
            .unwrap_or_else(|| "unknown OS".into());
        let audit = format!(
            "{os}; findings: {}; allowed: {}; gate --fail-on {} passed",
            crate::audit::counts(&report.summary.findings),
            crate::audit::counts(&report.summary.allowed),
            args.gate.fail_on.name()
        );
        let mut tags = common_tags;
        tags.push((TAG_AUDIT.into(), audit));
        if args.boot_test {
            let Some(booted) = crate::boot_test::gate(&input, args.boot_test_timeout)? else {
                eprintln!("amiforge: boot-test failed; nothing was uploaded");
                return Ok(false);
            };
            tags.push((TAG_BOOT_TEST.into(), booted));
        }
        let spec = spec_from(
            &name,
            PLACEHOLDER_SNAPSHOT,
            &[],
            &args.params,
            Some(&detected),
            args.upload.description.clone(),
            tags,
        )?;
        (spec, image.source().clone(), None)
    };
    draft.validate()?;
    let timeout = Duration::from_secs(args.params.register_timeout_minutes * 60);
    let rt = runtime()?;
    let client = rt.block_on(ami::client(
        &args.upload.aws.options(),
        &args.upload.aws.retry(),
    ))?;

    // 3. Idempotent re-runs: the same name and the same content return the AMI. Only
    // then is a disk read just to learn its identity.
    if let Some(existing) = rt.block_on(ami::find_by_name(&client, &draft.name))? {
        let id = existing.image_id().unwrap_or("?").to_string();
        let identity = match &bundle_identity {
            Some(i) => i.clone(),
            None => (
                TAG_DISK_SHA256.to_string(),
                ebs::digest::of_source(&*source, HASH_THREADS)
                    .with_context(|| format!("cannot read {}", input.display()))?,
            ),
        };
        let image_sha256 = identity.1.clone();
        let same = existing.tags().iter().any(|t| {
            t.key() == Some(identity.0.as_str()) && t.value() == Some(image_sha256.as_str())
        });
        if !same {
            bail!("an AMI named {:?} already exists ({id}) but was not published from this input (tag {} differs); choose another name", draft.name, identity.0);
        }
        let snapshot = existing
            .block_device_mappings()
            .first()
            .and_then(|m| m.ebs())
            .and_then(|e| e.snapshot_id())
            .unwrap_or("")
            .to_string();
        eprintln!("amiforge: {id} was already published from this image; nothing to do");
        if args.protect && existing.deregistration_protection().unwrap_or("disabled") == "disabled"
        {
            rt.block_on(ami::lifecycle::protect(&client, &id, true, false, false))?;
            eprintln!("amiforge: {id} is protected from deregistration");
        }
        point_parameters(&args, &id, &rt)?;
        return print_publish(&args, &id, true, &snapshot, &image_sha256, &draft, None)
            .map(|_| true);
    }

    // 4. Upload, then register; clean up the snapshot if registration fails. The
    // snapshot gets the disk's identity with the image's tags, at registration.
    let outcome = run_upload(
        &args.upload,
        source,
        bundle_identity.as_slice(),
        &rt,
        show_progress,
    )?;
    let image_sha256 = match &bundle_identity {
        Some((_, sha)) => sha.clone(),
        None => {
            draft
                .tags
                .push((TAG_DISK_SHA256.into(), outcome.disk_sha256.clone()));
            outcome.disk_sha256.clone()
        }
    };
    let spec = RegisterSpec {
        root_snapshot: outcome.snapshot_id.clone(),
        ..draft.clone()
    };
    match rt.block_on(ami::register(&client, &spec, timeout)) {
        Ok(r) => {
            if args.protect {
                rt.block_on(ami::lifecycle::protect(
                    &client,
                    &r.image_id,
                    true,
                    false,
                    false,
                ))?;
                eprintln!("amiforge: {} is protected from deregistration", r.image_id);
            }
            point_parameters(&args, &r.image_id, &rt)?;
            print_publish(
                &args,
                &r.image_id,
                r.existing,
                &outcome.snapshot_id,
                &image_sha256,
                &spec,
                Some(&outcome),
            )?;
            Ok(true)
        }
        Err(e) => {
            eprintln!("amiforge: registration failed: {e}");
            eprintln!(
                "amiforge: resources created: snapshot {}",
                outcome.snapshot_id
            );
            if args.keep_on_failure {
                eprintln!(
                    "amiforge: keeping snapshot {} (--keep-on-failure)",
                    outcome.snapshot_id
                );
            } else {
                match rt.block_on(ami::delete_snapshot(&client, &outcome.snapshot_id)) {
                    Ok(()) => eprintln!("amiforge: deleted snapshot {}", outcome.snapshot_id),
                    Err(d) => eprintln!(
                        "amiforge: could not delete snapshot {}: {d}",
                        outcome.snapshot_id
                    ),
                }
            }
            Err(e.into())
        }
    }
}

/// Points the --ssm-parameter names at the published image.
fn point_parameters(
    args: &PublishArgs,
    image_id: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    if args.ssm_parameters.is_empty() {
        return Ok(());
    }
    let aws = &args.upload.aws;
    rt.block_on(async {
        let ssm = ami::parameters::client(&aws.options(), &aws.retry()).await?;
        for name in &args.ssm_parameters {
            let p = ami::parameters::point(&ssm, name, image_id).await?;
            eprintln!(
                "amiforge: SSM parameter {} -> {image_id} (was {}, version {})",
                p.name,
                p.previous.as_deref().unwrap_or("unset"),
                p.version
            );
        }
        Ok(())
    })
}

fn print_publish(
    args: &PublishArgs,
    image_id: &str,
    existing: bool,
    snapshot_id: &str,
    image_sha256: &str,
    spec: &RegisterSpec,
    upload: Option<&ebs::UploadOutcome>,
) -> Result<()> {
    match args.upload.format {
        Format::Json => {
            let out = PublishOutput {
                image_id,
                name: &spec.name,
                existing,
                snapshot_id,
                image_sha256,
                architecture: spec.architecture.name(),
                boot_mode: spec.boot_mode,
                ena: spec.ena,
                upload,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            eprintln!(
                "amiforge: published {:?} as {image_id} from snapshot {snapshot_id} ({}, {}, ENA {})",
                spec.name,
                spec.architecture.name(),
                spec.boot_mode.name(),
                spec.ena
            );
            println!("{image_id}");
        }
    }
    Ok(())
}
