//! The life of an AMI after registration: sharing, copies across regions,
//! deprecation, disabling, deregistration protection, listing by family and pruning
//! (which never touches protected or recently launched images).

use crate::{sdk_message, wait_available, Error, Result};
use aws_sdk_ec2::types::{
    Filter, Image, LaunchPermission, LaunchPermissionModifications, OperationType, PermissionGroup,
    SnapshotAttributeName,
};
use serde::Serialize;
use std::time::Duration;

/// Tag naming an image family (a series of versions of one image).
pub const TAG_FAMILY: &str = "amiforge:family";
/// Tag naming an image's version within its family.
pub const TAG_IMAGE_VERSION: &str = "amiforge:image-version";

/// Who an AMI is shared with.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audience {
    /// AWS account ids.
    pub accounts: Vec<String>,
    /// Organization ARNs.
    pub organizations: Vec<String>,
    /// Organizational unit ARNs.
    pub organizational_units: Vec<String>,
    /// Everyone.
    pub public: bool,
}

impl Audience {
    fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.organizations.is_empty()
            && self.organizational_units.is_empty()
            && !self.public
    }

    fn launch_permissions(&self) -> Vec<LaunchPermission> {
        let mut v: Vec<LaunchPermission> = self
            .accounts
            .iter()
            .map(|a| LaunchPermission::builder().user_id(a).build())
            .collect();
        v.extend(
            self.organizations
                .iter()
                .map(|o| LaunchPermission::builder().organization_arn(o).build()),
        );
        v.extend(self.organizational_units.iter().map(|o| {
            LaunchPermission::builder()
                .organizational_unit_arn(o)
                .build()
        }));
        if self.public {
            v.push(
                LaunchPermission::builder()
                    .group(PermissionGroup::All)
                    .build(),
            );
        }
        v
    }
}

/// What a share or unshare touched.
#[derive(Debug, Clone, Serialize)]
pub struct Shared {
    /// The image.
    pub image_id: String,
    /// Its snapshots, whose createVolumePermission changed too.
    pub snapshots: Vec<String>,
    /// Whether permissions were added (share) or removed (unshare).
    pub added: bool,
    /// Nothing was changed (--dry-run).
    pub dry_run: bool,
    /// For public sharing: the account's snapshot block public access state
    /// ("unblocked", "block-new-sharing", "block-all-sharing"), or why it is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_block_public_access: Option<String>,
}

/// Describes one image.
pub async fn describe(client: &aws_sdk_ec2::Client, image_id: &str) -> Result<Image> {
    let out = client
        .describe_images()
        .image_ids(image_id)
        .send()
        .await
        .map_err(|e| Error::Api {
            op: "DescribeImages",
            resource: image_id.into(),
            message: sdk_message(&e),
        })?;
    out.images().first().cloned().ok_or_else(|| Error::Api {
        op: "DescribeImages",
        resource: image_id.into(),
        message: "no such image".into(),
    })
}

/// The snapshots behind an image's block device mappings.
pub fn snapshots_of(image: &Image) -> Vec<String> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_string))
        .collect()
}

/// Whether the account blocks public sharing of AMIs. `None` when it cannot be told.
async fn public_sharing_blocked(client: &aws_sdk_ec2::Client) -> Option<bool> {
    let out = client
        .get_image_block_public_access_state()
        .send()
        .await
        .ok()?;
    Some(out.image_block_public_access_state() == Some("block-new-sharing"))
}

/// The account's snapshot block public access state, which decides whether the
/// snapshots of a public AMI can be made public too ("block-all-sharing" also hides
/// snapshots shared before).
async fn snapshot_sharing_state(client: &aws_sdk_ec2::Client) -> String {
    match client.get_snapshot_block_public_access_state().send().await {
        Ok(out) => out
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "unknown (not in the answer)".into()),
        Err(e) => format!("unknown ({})", sdk_message(&e)),
    }
}

/// Adds (or removes) launch permissions on the image and createVolumePermission on its
/// snapshots.
pub async fn share(
    client: &aws_sdk_ec2::Client,
    image_id: &str,
    who: &Audience,
    add: bool,
    dry_run: bool,
) -> Result<Shared> {
    if who.is_empty() {
        return Err(Error::Invalid(
            "say whom to share with: --account, --org, --ou or --public".into(),
        ));
    }
    let image = describe(client, image_id).await?;
    let snapshots = snapshots_of(&image);
    let snapshot_block_public_access = if who.public {
        Some(snapshot_sharing_state(client).await)
    } else {
        None
    };
    if add && who.public {
        match public_sharing_blocked(client).await {
            Some(true) => return Err(Error::Invalid(
                "this account blocks public access for AMIs (block-new-sharing): disable it with \
                     ec2:DisableImageBlockPublicAccess before sharing publicly"
                    .into(),
            )),
            Some(false) => {}
            None => tracing::warn!(
                "could not read the account's AMI block-public-access state; trying anyway"
            ),
        }
    }
    if dry_run {
        return Ok(Shared {
            image_id: image_id.into(),
            snapshots,
            added: add,
            dry_run,
            snapshot_block_public_access,
        });
    }
    let perms = who.launch_permissions();
    let mods = if add {
        LaunchPermissionModifications::builder()
            .set_add(Some(perms))
            .build()
    } else {
        LaunchPermissionModifications::builder()
            .set_remove(Some(perms))
            .build()
    };
    client
        .modify_image_attribute()
        .image_id(image_id)
        .launch_permission(mods)
        .send()
        .await
        .map_err(|e| Error::Api {
            op: "ModifyImageAttribute",
            resource: image_id.into(),
            message: sdk_message(&e),
        })?;
    // createVolumePermission in the flat form (OperationType with UserId.N / Group.N):
    // AWS accepts it, and so do implementations that lack the structured form.
    // With snapshot block public access on, EC2 refuses public snapshots: the AMI is
    // still launchable by everyone, its snapshots stay private, and the result says so.
    let public_snapshots = who.public
        && !snapshot_block_public_access
            .as_deref()
            .is_some_and(|s| s.starts_with("block-"));
    if who.public && !public_snapshots && add {
        tracing::warn!(
            "snapshot block public access is on ({}): the AMI is public, its snapshots stay private",
            snapshot_block_public_access.as_deref().unwrap_or("")
        );
    }
    if !who.accounts.is_empty() || public_snapshots {
        let op = if add {
            OperationType::Add
        } else {
            OperationType::Remove
        };
        for snap in &snapshots {
            let mut req = client
                .modify_snapshot_attribute()
                .snapshot_id(snap)
                .attribute(SnapshotAttributeName::CreateVolumePermission)
                .operation_type(op.clone())
                .set_user_ids((!who.accounts.is_empty()).then(|| who.accounts.clone()));
            if public_snapshots {
                req = req.group_names("all");
            }
            req.send().await.map_err(|e| Error::Api {
                op: "ModifySnapshotAttribute",
                resource: snap.clone(),
                message: sdk_message(&e),
            })?;
        }
    }
    Ok(Shared {
        image_id: image_id.into(),
        snapshots,
        added: add,
        dry_run,
        snapshot_block_public_access,
    })
}

/// One copy made by [`copy`].
#[derive(Debug, Clone, Serialize)]
pub struct Copied {
    /// The destination region.
    pub region: String,
    /// The new image there.
    pub image_id: String,
}

/// Copies an image into each region in parallel and waits for every copy; `on_done`
/// hears of each finished copy. The regional clients keep `client`'s settings (its
/// retries and timeouts), with only the region changed.
pub async fn copy(
    client: &aws_sdk_ec2::Client,
    image_id: &str,
    regions: &[String],
    encrypted: bool,
    kms_key: Option<String>,
    timeout: Duration,
    on_done: &(dyn Fn(&Copied) + Sync),
) -> Result<Vec<Copied>> {
    let source_region = client
        .config()
        .region()
        .map(|r| r.to_string())
        .ok_or_else(|| Error::Invalid("no source region".into()))?;
    let source = describe(client, image_id).await?;
    let name = source.name().unwrap_or(image_id).to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for region in regions {
        let conf = client
            .config()
            .to_builder()
            .region(aws_config::Region::new(region.clone()))
            .build();
        let client = aws_sdk_ec2::Client::from_conf(conf);
        let (region, image_id, name, source_region, kms_key) = (
            region.clone(),
            image_id.to_string(),
            name.clone(),
            source_region.clone(),
            kms_key.clone(),
        );
        tasks.spawn(async move {
            let out = client
                .copy_image()
                .source_image_id(&image_id)
                .source_region(&source_region)
                .name(&name)
                .encrypted(encrypted || kms_key.is_some())
                .set_kms_key_id(kms_key)
                .copy_image_tags(true)
                .send()
                .await
                .map_err(|e| Error::Api {
                    op: "CopyImage",
                    resource: format!("{image_id} to {region}"),
                    message: sdk_message(&e),
                })?;
            let new_id = out
                .image_id()
                .ok_or_else(|| Error::Api {
                    op: "CopyImage",
                    resource: region.clone(),
                    message: "no image id returned".into(),
                })?
                .to_string();
            wait_available(&client, &new_id, timeout).await?;
            Ok::<_, Error>(Copied {
                region,
                image_id: new_id,
            })
        });
    }
    let mut copies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let copied = r.map_err(|e| Error::Invalid(e.to_string()))??;
        on_done(&copied);
        copies.push(copied);
    }
    copies.sort_by(|a, b| a.region.cmp(&b.region));
    Ok(copies)
}

/// Sets (or, with `at` None, cancels) the image's deprecation time (RFC 3339).
pub async fn deprecate(
    client: &aws_sdk_ec2::Client,
    image_id: &str,
    at: Option<&str>,
    dry_run: bool,
) -> Result<()> {
    if dry_run {
        return Ok(());
    }
    match at {
        Some(t) => {
            let when = aws_sdk_ec2::primitives::DateTime::from_str(
                t,
                aws_sdk_ec2::primitives::DateTimeFormat::DateTime,
            )
            .map_err(|e| {
                Error::Invalid(format!(
                    "--at {t:?} is not an RFC 3339 time like 2027-01-31T00:00:00Z: {e}"
                ))
            })?;
            client
                .enable_image_deprecation()
                .image_id(image_id)
                .deprecate_at(when)
                .send()
                .await
                .map_err(|e| Error::Api {
                    op: "EnableImageDeprecation",
                    resource: image_id.into(),
                    message: sdk_message(&e),
                })?;
        }
        None => {
            client
                .disable_image_deprecation()
                .image_id(image_id)
                .send()
                .await
                .map_err(|e| Error::Api {
                    op: "DisableImageDeprecation",
                    resource: image_id.into(),
                    message: sdk_message(&e),
                })?;
        }
    }
    Ok(())
}

/// Turns deregistration protection on (optionally with the 24-hour cooldown that
/// keeps it in force for a day after it is turned off) or off.
pub async fn protect(
    client: &aws_sdk_ec2::Client,
    image_id: &str,
    on: bool,
    with_cooldown: bool,
    dry_run: bool,
) -> Result<()> {
    if dry_run {
        describe(client, image_id).await?;
        return Ok(());
    }
    if on {
        client
            .enable_image_deregistration_protection()
            .image_id(image_id)
            .with_cooldown(with_cooldown)
            .send()
            .await
            .map_err(|e| Error::Api {
                op: "EnableImageDeregistrationProtection",
                resource: image_id.into(),
                message: sdk_message(&e),
            })?;
    } else {
        client
            .disable_image_deregistration_protection()
            .image_id(image_id)
            .send()
            .await
            .map_err(|e| Error::Api {
                op: "DisableImageDeregistrationProtection",
                resource: image_id.into(),
                message: sdk_message(&e),
            })?;
    }
    Ok(())
}

/// Disables the image (it can no longer be launched, and leaves listings and
/// sharing) or enables it again.
pub async fn set_enabled(
    client: &aws_sdk_ec2::Client,
    image_id: &str,
    enabled: bool,
    dry_run: bool,
) -> Result<()> {
    if dry_run {
        describe(client, image_id).await?;
        return Ok(());
    }
    if enabled {
        client
            .enable_image()
            .image_id(image_id)
            .send()
            .await
            .map_err(|e| Error::Api {
                op: "EnableImage",
                resource: image_id.into(),
                message: sdk_message(&e),
            })?;
    } else {
        client
            .disable_image()
            .image_id(image_id)
            .send()
            .await
            .map_err(|e| Error::Api {
                op: "DisableImage",
                resource: image_id.into(),
                message: sdk_message(&e),
            })?;
    }
    Ok(())
}

/// When an instance was last launched from the image (RFC 3339), if ever.
pub async fn last_launched(client: &aws_sdk_ec2::Client, image_id: &str) -> Result<Option<String>> {
    let out = client
        .describe_image_attribute()
        .image_id(image_id)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LastLaunchedTime)
        .send()
        .await
        .map_err(|e| Error::Api {
            op: "DescribeImageAttribute",
            resource: image_id.into(),
            message: sdk_message(&e),
        })?;
    Ok(out
        .last_launched_time()
        .and_then(|v| v.value())
        .filter(|v| !v.is_empty())
        .map(str::to_string))
}

/// An image in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The image.
    pub image_id: String,
    /// Its name.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created: String,
    /// Its family tag.
    pub family: Option<String>,
    /// Its version tag.
    pub version: Option<String>,
    /// Its state.
    pub state: String,
    /// Its deprecation time, if any.
    pub deprecation_time: Option<String>,
    /// Its deregistration protection: "disabled", "enabled", "enabled-with-cooldown"
    /// or "disabled-until TIME".
    pub protection: String,
    /// Its snapshots.
    pub snapshots: Vec<String>,
}

fn tag(image: &Image, key: &str) -> Option<String> {
    image
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_string)
}

/// This account's images, newest first, optionally by name prefix and family tag.
pub async fn list(
    client: &aws_sdk_ec2::Client,
    name_prefix: Option<&str>,
    family: Option<&str>,
) -> Result<Vec<Listed>> {
    let mut req = client.describe_images().owners("self");
    if let Some(f) = family {
        req = req.filters(
            Filter::builder()
                .name(format!("tag:{TAG_FAMILY}"))
                .values(f)
                .build(),
        );
    }
    let out = req.send().await.map_err(|e| Error::Api {
        op: "DescribeImages",
        resource: "self".into(),
        message: sdk_message(&e),
    })?;
    let mut v: Vec<Listed> = out
        .images()
        .iter()
        .filter(|i| name_prefix.is_none_or(|p| i.name().unwrap_or("").starts_with(p)))
        .filter(|i| family.is_none_or(|f| tag(i, TAG_FAMILY).as_deref() == Some(f)))
        .map(|i| Listed {
            image_id: i.image_id().unwrap_or("").into(),
            name: i.name().unwrap_or("").into(),
            created: i.creation_date().unwrap_or("").into(),
            family: tag(i, TAG_FAMILY),
            version: tag(i, TAG_IMAGE_VERSION),
            state: i
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            deprecation_time: i.deprecation_time().map(str::to_string),
            protection: i
                .deregistration_protection()
                .unwrap_or("disabled")
                .to_string(),
            snapshots: snapshots_of(i),
        })
        .collect();
    v.sort_by(|a, b| b.created.cmp(&a.created).then(b.image_id.cmp(&a.image_id)));
    Ok(v)
}

/// An image prune would have removed but left alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Spared {
    /// The image.
    pub image_id: String,
    /// Why it stays.
    pub reason: String,
}

/// Which images prune may remove, beyond the newest `keep` of the family.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneRules {
    /// How many of the newest images to keep.
    pub keep: usize,
    /// Only images created more than this many days ago.
    pub older_than_days: Option<u64>,
    /// Only images not launched within this many days (their lastLaunchedTime).
    pub unused_for_days: Option<u64>,
}

/// What prune did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    /// Images kept.
    pub kept: Vec<String>,
    /// Images that were candidates but stay: deregistration protection, or launched
    /// too recently.
    pub spared: Vec<Spared>,
    /// With a Recycle Bin requirement: the rules that keep what was removed
    /// (resource type → rule).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retained_by: Vec<(String, crate::recycle_bin::Retention)>,
    /// Images deregistered, with their deleted snapshots.
    pub removed: Vec<Listed>,
    /// Nothing was changed (--dry-run).
    pub dry_run: bool,
}

/// Seconds since the epoch of an RFC 3339 time, or None when it is not one.
fn unix_seconds(time: &str) -> Option<i64> {
    aws_sdk_ec2::primitives::DateTime::from_str(
        time,
        aws_sdk_ec2::primitives::DateTimeFormat::DateTime,
    )
    .ok()
    .map(|d| d.secs())
}

const SECONDS_PER_DAY: i64 = 86_400;

/// Keeps the newest `rules.keep` images of a family; deregisters the others that are
/// older than `rules.older_than_days` and unused for `rules.unused_for_days` (when
/// given) and deletes their snapshots. Protected images are never touched: they are
/// listed in `spared`, as are images launched too recently.
pub async fn prune(
    client: &aws_sdk_ec2::Client,
    family: &str,
    rules: PruneRules,
    recycle_bin: Option<&aws_sdk_rbin::Client>,
    now_unix: i64,
    dry_run: bool,
) -> Result<Pruned> {
    let images = list(client, None, Some(family)).await?;
    let snapshots_of: std::collections::HashMap<String, Vec<String>> = images
        .iter()
        .map(|i| (i.image_id.clone(), i.snapshots.clone()))
        .collect();
    let days_ago = |d: u64| now_unix - (d as i64) * SECONDS_PER_DAY;
    let mut kept = Vec::new();
    let mut spared = Vec::new();
    let mut removed = Vec::new();
    for (i, img) in images.into_iter().enumerate() {
        let created = unix_seconds(&img.created).unwrap_or(i64::MAX);
        let old_enough = rules.older_than_days.is_none_or(|d| created < days_ago(d));
        if i < rules.keep || !old_enough {
            kept.push(img.image_id);
            continue;
        }
        if img.protection != "disabled" {
            spared.push(Spared {
                image_id: img.image_id,
                reason: format!("deregistration protection is {}", img.protection),
            });
            continue;
        }
        if let Some(days) = rules.unused_for_days {
            if let Some(t) = last_launched(client, &img.image_id).await? {
                // A time that cannot be read counts as recent: keep rather than guess.
                if unix_seconds(&t).is_none_or(|s| s >= days_ago(days)) {
                    spared.push(Spared {
                        image_id: img.image_id,
                        reason: format!("last launched {t}, within {days} days"),
                    });
                    continue;
                }
            }
        }
        removed.push(img);
    }
    // A snapshot still used by a kept or spared image stays (EC2 would refuse to
    // delete it).
    let kept_snapshots: Vec<&String> = kept
        .iter()
        .chain(spared.iter().map(|s| &s.image_id))
        .filter_map(|id| snapshots_of.get(id))
        .flatten()
        .collect();
    for img in &mut removed {
        img.snapshots.retain(|s| !kept_snapshots.contains(&s));
    }
    // Only what a Recycle Bin rule keeps may go, when one is required.
    let mut retained_by = Vec::new();
    if let (Some(rbin), false) = (recycle_bin, removed.is_empty()) {
        use aws_sdk_rbin::types::ResourceType;
        let mut kinds = vec![ResourceType::Ec2Image];
        if removed.iter().any(|i| !i.snapshots.is_empty()) {
            kinds.push(ResourceType::EbsSnapshot);
        }
        for kind in kinds {
            match crate::recycle_bin::retention(rbin, kind.clone()).await? {
                Some(r) => retained_by.push((kind.as_str().to_string(), r)),
                None => {
                    return Err(Error::Invalid(format!(
                        "no Recycle Bin rule retains every {} in this region (region-wide, \
                         available, without tag conditions), so what prune removes could not \
                         be recovered; nothing was removed",
                        kind.as_str()
                    )))
                }
            }
        }
    }
    if !dry_run {
        let mut deleted: Vec<String> = Vec::new();
        for img in &removed {
            client
                .deregister_image()
                .image_id(&img.image_id)
                .send()
                .await
                .map_err(|e| Error::Api {
                    op: "DeregisterImage",
                    resource: img.image_id.clone(),
                    message: sdk_message(&e),
                })?;
            for snap in &img.snapshots {
                if deleted.contains(snap) {
                    continue;
                }
                crate::delete_snapshot(client, snap).await?;
                deleted.push(snap.clone());
            }
        }
    }
    Ok(Pruned {
        kept,
        spared,
        retained_by,
        removed,
        dry_run,
    })
}
