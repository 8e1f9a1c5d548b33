//! `amiforge ami ...`: list, share, unshare, copy, deprecate and prune AMIs.

use crate::cli::{emit, runtime, AwsArgs, Format};
use crate::progress::Reporter;
use ami::lifecycle::{self, Audience};
use anyhow::Result;
use std::time::Duration;

/// The AMI lifecycle commands.
#[derive(clap::Subcommand, Debug)]
pub enum AmiCommand {
    /// List this account's AMIs, newest first.
    List {
        /// Only names starting with this.
        #[arg(long)]
        name_prefix: Option<String>,
        /// Only this family (the amiforge:family tag).
        #[arg(long)]
        family: Option<String>,
        /// Also show the SSM parameters under this path (e.g. /images) that name
        /// each image.
        #[arg(long, value_name = "PATH")]
        ssm_path: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Allow accounts, organizations, OUs or everyone to launch the AMI (and to create
    /// volumes from its snapshots).
    Share(ShareArgs),
    /// Take those permissions away again.
    Unshare(ShareArgs),
    /// Copy the AMI into other regions, in parallel, and wait for every copy.
    Copy {
        /// The AMI.
        image_id: String,
        /// Destination region; repeat for more.
        #[arg(long = "to-region", required = true)]
        to_regions: Vec<String>,
        /// Encrypt the copies.
        #[arg(long)]
        encrypted: bool,
        /// KMS key for the copies (implies --encrypted).
        #[arg(long, value_name = "ARN")]
        kms_key: Option<String>,
        /// Minutes to wait for each copy.
        #[arg(long, default_value_t = 60)]
        timeout_minutes: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Schedule the AMI's deprecation, or cancel it.
    Deprecate {
        #[command(flatten)]
        image: ImageArgs,
        /// When, in RFC 3339 (2027-01-31T00:00:00Z).
        #[arg(long, required_unless_present = "cancel")]
        at: Option<String>,
        /// Cancel a scheduled deprecation.
        #[arg(long, conflicts_with = "at")]
        cancel: bool,
    },
    /// Disable the AMI: it can no longer be launched and leaves listings and
    /// sharing, until `ami enable`.
    Disable(ImageArgs),
    /// Enable a disabled AMI again.
    Enable(ImageArgs),
    /// Turn on deregistration protection: the AMI cannot be deregistered (prune
    /// leaves it alone) until `ami unprotect`.
    Protect {
        #[command(flatten)]
        image: ImageArgs,
        /// Keep the protection for 24 hours after it is turned off.
        #[arg(long)]
        cooldown: bool,
    },
    /// Turn deregistration protection off (with a cooldown it lasts 24 hours more).
    Unprotect(ImageArgs),
    /// Point SSM parameters (data type aws:ec2:image) at the AMI, e.g. move
    /// /images/web/latest to the new version; prints what each named before.
    Promote {
        #[command(flatten)]
        image: ImageArgs,
        /// The parameter; repeat for more.
        #[arg(long = "ssm-parameter", value_name = "NAME", required = true)]
        parameters: Vec<String>,
    },
    /// Deregister a family's images beyond the newest N (and older than D days, and
    /// not launched for U days), and delete their snapshots. Images with
    /// deregistration protection are never touched.
    Prune {
        /// The family (the amiforge:family tag).
        #[arg(long)]
        family: String,
        /// How many of the newest images to keep.
        #[arg(long)]
        keep: usize,
        /// Only remove images older than this many days.
        #[arg(long, value_name = "DAYS")]
        older_than: Option<u64>,
        /// Only remove images no instance was launched from in this many days (their
        /// lastLaunchedTime; never-launched images qualify).
        #[arg(long, value_name = "DAYS")]
        unused_for: Option<u64>,
        /// Remove nothing unless Recycle Bin retention rules (region-wide) keep
        /// deregistered AMIs and deleted snapshots, so a mistake can be undone.
        #[arg(long)]
        require_recycle_bin: bool,
        /// Show what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: AwsArgs,
    },
}

/// One AMI, and the settings of a command that changes it.
#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// The AMI.
    pub image_id: String,
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Whom to share with.
#[derive(clap::Args, Debug)]
pub struct ShareArgs {
    #[command(flatten)]
    pub image: ImageArgs,
    /// An AWS account id; repeat for more.
    #[arg(long = "account")]
    pub accounts: Vec<String>,
    /// An organization ARN.
    #[arg(long = "org")]
    pub orgs: Vec<String>,
    /// An organizational unit ARN.
    #[arg(long = "ou")]
    pub ous: Vec<String>,
    /// Everyone (refused when the account blocks public AMI sharing).
    #[arg(long)]
    pub public: bool,
}

fn share(args: ShareArgs, add: bool) -> Result<()> {
    let who = Audience {
        accounts: args.accounts,
        organizations: args.orgs,
        organizational_units: args.ous,
        public: args.public,
    };
    let image = &args.image;
    let rt = runtime()?;
    let done = rt.block_on(async {
        let client = ami::client(&image.aws.options(), &image.aws.retry()).await?;
        Ok::<_, anyhow::Error>(
            lifecycle::share(&client, &image.image_id, &who, add, image.dry_run).await?,
        )
    })?;
    let verb = match (add, done.dry_run) {
        (true, false) => "shared",
        (false, false) => "unshared",
        (true, true) => "would share",
        (false, true) => "would unshare",
    };
    emit(
        image.format,
        &serde_json::json!({ "result": &done, "audience": &who }),
        || {
            format!(
                "{} {verb} (snapshots: {})",
                done.image_id,
                done.snapshots.join(", ")
            )
        },
    )
}

/// The future of one change to one image.
type Change<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ami::Result<()>> + 'a>>;

/// Runs a change to one image (disable, enable, protect, unprotect) and reports it.
fn change(
    args: ImageArgs,
    done: &str,
    call: impl for<'a> FnOnce(&'a ami::Client, &'a str, bool) -> Change<'a>,
) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let client = ami::client(&args.aws.options(), &args.aws.retry()).await?;
        Ok::<_, anyhow::Error>(call(&client, &args.image_id, args.dry_run).await?)
    })?;
    let id = &args.image_id;
    let value = serde_json::json!({ "image_id": id, "result": done, "dry_run": args.dry_run });
    emit(args.format, &value, || {
        if args.dry_run {
            format!("{id} would be {done}")
        } else {
            format!("{id} {done}")
        }
    })
}

pub fn run(cmd: AmiCommand, show_progress: bool) -> Result<()> {
    match cmd {
        AmiCommand::List {
            name_prefix,
            family,
            ssm_path,
            format,
            aws,
        } => {
            let rt = runtime()?;
            let (images, parameters) = rt.block_on(async {
                let client = ami::client(&aws.options(), &aws.retry()).await?;
                let images =
                    lifecycle::list(&client, name_prefix.as_deref(), family.as_deref()).await?;
                let parameters = match &ssm_path {
                    Some(path) => {
                        let ssm = ami::parameters::client(&aws.options(), &aws.retry()).await?;
                        ami::parameters::under(&ssm, path).await?
                    }
                    None => Vec::new(),
                };
                Ok::<_, anyhow::Error>((images, parameters))
            })?;
            let named = |id: &str| -> Vec<String> {
                parameters
                    .iter()
                    .filter(|(_, v)| v == id)
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            let listed: Vec<serde_json::Value> = images
                .iter()
                .map(|i| {
                    let mut v = serde_json::to_value(i).unwrap_or_default();
                    if ssm_path.is_some() {
                        v["ssm_parameters"] = named(&i.image_id).into();
                    }
                    v
                })
                .collect();
            emit(format, &listed, || {
                images
                    .iter()
                    .map(|i| {
                        let params = named(&i.image_id);
                        let params = if params.is_empty() {
                            String::new()
                        } else {
                            format!("  [{}]", params.join(", "))
                        };
                        format!(
                            "{}  {}  {}  {}{params}",
                            i.image_id, i.created, i.state, i.name
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        AmiCommand::Promote { image, parameters } => {
            let rt = runtime()?;
            let moved = rt.block_on(async {
                let client = ami::client(&image.aws.options(), &image.aws.retry()).await?;
                // The image must exist before anything is made to point at it.
                lifecycle::describe(&client, &image.image_id).await?;
                if image.dry_run {
                    return Ok::<_, anyhow::Error>(Vec::new());
                }
                let ssm = ami::parameters::client(&image.aws.options(), &image.aws.retry()).await?;
                let mut moved = Vec::new();
                for p in &parameters {
                    moved.push(ami::parameters::point(&ssm, p, &image.image_id).await?);
                }
                Ok(moved)
            })?;
            emit(image.format, &moved, || {
                if image.dry_run {
                    return format!(
                        "would point {} at {}",
                        parameters.join(", "),
                        image.image_id
                    );
                }
                moved
                    .iter()
                    .map(|m| {
                        format!(
                            "{} -> {} (was {}, version {})",
                            m.name,
                            m.image_id,
                            m.previous.as_deref().unwrap_or("unset"),
                            m.version
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        AmiCommand::Share(a) => share(a, true),
        AmiCommand::Unshare(a) => share(a, false),
        AmiCommand::Copy {
            image_id,
            to_regions,
            encrypted,
            kms_key,
            timeout_minutes,
            format,
            aws,
        } => {
            let rt = runtime()?;
            let progress = Reporter::new(show_progress, "copies available");
            progress.start(
                &format!("copying {image_id} to {}", to_regions.join(", ")),
                to_regions.len() as u64,
            );
            let copies = rt.block_on(async {
                let client = ami::client(&aws.options(), &aws.retry()).await?;
                Ok::<_, anyhow::Error>(
                    lifecycle::copy(
                        &client,
                        &image_id,
                        &to_regions,
                        encrypted,
                        kms_key,
                        Duration::from_secs(timeout_minutes * 60),
                        &|c| {
                            progress.say(&format!("{} available in {}", c.image_id, c.region));
                            progress.advance(0);
                        },
                    )
                    .await?,
                )
            })?;
            progress.finish();
            emit(format, &copies, || {
                copies
                    .iter()
                    .map(|c| format!("{}  {}", c.region, c.image_id))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        AmiCommand::Deprecate { image, at, cancel } => {
            let ImageArgs {
                image_id,
                dry_run,
                format,
                aws,
            } = image;
            let rt = runtime()?;
            let when = if cancel { None } else { at.clone() };
            rt.block_on(async {
                let client = ami::client(&aws.options(), &aws.retry()).await?;
                Ok::<_, anyhow::Error>(
                    lifecycle::deprecate(&client, &image_id, when.as_deref(), dry_run).await?,
                )
            })?;
            let value = serde_json::json!({ "image_id": image_id, "deprecate_at": when, "cancelled": cancel, "dry_run": dry_run });
            emit(format, &value, || match (&when, dry_run) {
                (Some(t), false) => format!("{image_id} deprecates at {t}"),
                (Some(t), true) => format!("{image_id} would deprecate at {t}"),
                (None, false) => format!("{image_id}: deprecation cancelled"),
                (None, true) => format!("{image_id}: deprecation would be cancelled"),
            })
        }
        AmiCommand::Disable(a) => change(a, "disabled", |c, id, dry| {
            Box::pin(async move { lifecycle::set_enabled(c, id, false, dry).await })
        }),
        AmiCommand::Enable(a) => change(a, "enabled", |c, id, dry| {
            Box::pin(async move { lifecycle::set_enabled(c, id, true, dry).await })
        }),
        AmiCommand::Protect { image, cooldown } => {
            let what = if cooldown {
                "protected from deregistration (with a 24-hour cooldown)"
            } else {
                "protected from deregistration"
            };
            change(image, what, move |c, id, dry| {
                Box::pin(async move { lifecycle::protect(c, id, true, cooldown, dry).await })
            })
        }
        AmiCommand::Unprotect(a) => change(
            a,
            "no longer protected from deregistration",
            |c, id, dry| {
                Box::pin(async move { lifecycle::protect(c, id, false, false, dry).await })
            },
        ),
        AmiCommand::Prune {
            family,
            keep,
            older_than,
            unused_for,
            require_recycle_bin,
            dry_run,
            format,
            aws,
        } => {
            let rt = runtime()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let pruned = rt.block_on(async {
                let client = ami::client(&aws.options(), &aws.retry()).await?;
                let rbin = if require_recycle_bin {
                    Some(ami::recycle_bin::client(&aws.options(), &aws.retry()).await?)
                } else {
                    None
                };
                Ok::<_, anyhow::Error>(
                    lifecycle::prune(
                        &client,
                        &family,
                        lifecycle::PruneRules {
                            keep,
                            older_than_days: older_than,
                            unused_for_days: unused_for,
                        },
                        rbin.as_ref(),
                        now,
                        dry_run,
                    )
                    .await?,
                )
            })?;
            emit(format, &pruned, || {
                let verb = if pruned.dry_run {
                    "would remove"
                } else {
                    "removed"
                };
                let mut lines: Vec<String> =
                    pruned.kept.iter().map(|k| format!("keep    {k}")).collect();
                lines.extend(
                    pruned
                        .spared
                        .iter()
                        .map(|s| format!("spare   {}: {}", s.image_id, s.reason)),
                );
                lines.extend(pruned.retained_by.iter().map(|(kind, r)| {
                    format!(
                        "{kind}: kept {} in the Recycle Bin by rule {}",
                        r.keeps_for, r.rule_id
                    )
                }));
                lines.extend(pruned.removed.iter().map(|r| {
                    format!(
                        "{verb} {} ({}) and snapshots {}",
                        r.image_id,
                        r.name,
                        r.snapshots.join(", ")
                    )
                }));
                lines.join("\n")
            })
        }
    }
}
