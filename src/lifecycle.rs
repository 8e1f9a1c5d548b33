//! `amiforge ami ...`: list, share, unshare, copy, deprecate and prune AMIs.

use crate::transfer::{runtime, AwsArgs};
use crate::Format;
use ami::lifecycle::{self, Audience};
use anyhow::Result;
use serde::Serialize;
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
        /// The AMI.
        image_id: String,
        /// When, in RFC 3339 (2027-01-31T00:00:00Z).
        #[arg(long, required_unless_present = "cancel")]
        at: Option<String>,
        /// Cancel a scheduled deprecation.
        #[arg(long, conflicts_with = "at")]
        cancel: bool,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Deregister a family's images beyond the newest N (and older than D days), and
    /// delete their snapshots.
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

/// Whom to share with.
#[derive(clap::Args, Debug)]
pub struct ShareArgs {
    /// The AMI.
    pub image_id: String,
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
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub aws: AwsArgs,
}

fn print<T: Serialize>(format: Format, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Text => println!("{}", text()),
    }
    Ok(())
}

fn share(args: ShareArgs, add: bool) -> Result<()> {
    let who = Audience {
        accounts: args.accounts,
        organizations: args.orgs,
        organizational_units: args.ous,
        public: args.public,
    };
    let rt = runtime()?;
    let done = rt.block_on(async {
        let client = ami::client(&args.aws.options(), &args.aws.retry()).await?;
        Ok::<_, anyhow::Error>(
            lifecycle::share(&client, &args.image_id, &who, add, args.dry_run).await?,
        )
    })?;
    let verb = match (add, done.dry_run) {
        (true, false) => "shared",
        (false, false) => "unshared",
        (true, true) => "would share",
        (false, true) => "would unshare",
    };
    print(
        args.format,
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

pub fn run(cmd: AmiCommand) -> Result<()> {
    match cmd {
        AmiCommand::List {
            name_prefix,
            family,
            format,
            aws,
        } => {
            let rt = runtime()?;
            let images = rt.block_on(async {
                let client = ami::client(&aws.options(), &aws.retry()).await?;
                Ok::<_, anyhow::Error>(
                    lifecycle::list(&client, name_prefix.as_deref(), family.as_deref()).await?,
                )
            })?;
            print(format, &images, || {
                images
                    .iter()
                    .map(|i| format!("{}  {}  {}  {}", i.image_id, i.created, i.state, i.name))
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
            let copies = rt.block_on(async {
                let config = awsapi::load(&aws.options()).await?;
                Ok::<_, anyhow::Error>(
                    lifecycle::copy(
                        &config,
                        &image_id,
                        &to_regions,
                        encrypted,
                        kms_key,
                        Duration::from_secs(timeout_minutes * 60),
                    )
                    .await?,
                )
            })?;
            print(format, &copies, || {
                copies
                    .iter()
                    .map(|c| format!("{}  {}", c.region, c.image_id))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        AmiCommand::Deprecate {
            image_id,
            at,
            cancel,
            dry_run,
            format,
            aws,
        } => {
            let rt = runtime()?;
            let when = if cancel { None } else { at.clone() };
            rt.block_on(async {
                let client = ami::client(&aws.options(), &aws.retry()).await?;
                Ok::<_, anyhow::Error>(
                    lifecycle::deprecate(&client, &image_id, when.as_deref(), dry_run).await?,
                )
            })?;
            let value = serde_json::json!({ "image_id": image_id, "deprecate_at": when, "cancelled": cancel, "dry_run": dry_run });
            print(format, &value, || match (&when, dry_run) {
                (Some(t), false) => format!("{image_id} deprecates at {t}"),
                (Some(t), true) => format!("{image_id} would deprecate at {t}"),
                (None, false) => format!("{image_id}: deprecation cancelled"),
                (None, true) => format!("{image_id}: deprecation would be cancelled"),
            })
        }
        AmiCommand::Prune {
            family,
            keep,
            older_than,
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
                Ok::<_, anyhow::Error>(
                    lifecycle::prune(&client, &family, keep, older_than, now, dry_run).await?,
                )
            })?;
            print(format, &pruned, || {
                let verb = if pruned.dry_run {
                    "would remove"
                } else {
                    "removed"
                };
                let mut lines: Vec<String> =
                    pruned.kept.iter().map(|k| format!("keep    {k}")).collect();
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
