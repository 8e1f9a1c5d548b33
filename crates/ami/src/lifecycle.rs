//! The life of an AMI after registration: sharing, copies across regions,
//! deprecation, listing by family and pruning.

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
    if !who.accounts.is_empty() || who.public {
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
            if who.public {
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

/// Copies an image into each region in parallel and waits for every copy.
pub async fn copy(
    config: &aws_config::SdkConfig,
    image_id: &str,
    regions: &[String],
    encrypted: bool,
    kms_key: Option<String>,
    timeout: Duration,
) -> Result<Vec<Copied>> {
    let source_region = config
        .region()
        .map(|r| r.to_string())
        .ok_or_else(|| Error::Invalid("no source region".into()))?;
    let source = describe(&aws_sdk_ec2::Client::new(config), image_id).await?;
    let name = source.name().unwrap_or(image_id).to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for region in regions {
        let conf = aws_sdk_ec2::config::Builder::from(config)
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
        copies.push(r.map_err(|e| Error::Invalid(e.to_string()))??);
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
            snapshots: snapshots_of(i),
        })
        .collect();
    v.sort_by(|a, b| b.created.cmp(&a.created).then(b.image_id.cmp(&a.image_id)));
    Ok(v)
}

/// What prune did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    /// Images kept.
    pub kept: Vec<String>,
    /// Images deregistered, with their deleted snapshots.
    pub removed: Vec<Listed>,
    /// Nothing was changed (--dry-run).
    pub dry_run: bool,
}

/// Keeps the `keep` newest images of a family; deregisters the others that are older
/// than `older_than_days` (if given) and deletes their snapshots.
pub async fn prune(
    client: &aws_sdk_ec2::Client,
    family: &str,
    keep: usize,
    older_than_days: Option<u64>,
    now_unix: i64,
    dry_run: bool,
) -> Result<Pruned> {
    let images = list(client, None, Some(family)).await?;
    let cutoff = older_than_days.map(|d| now_unix - (d as i64) * 86_400);
    let mut kept = Vec::new();
    let mut removed = Vec::new();
    for (i, img) in images.into_iter().enumerate() {
        let created = aws_sdk_ec2::primitives::DateTime::from_str(
            &img.created,
            aws_sdk_ec2::primitives::DateTimeFormat::DateTime,
        )
        .map(|d| d.secs())
        .unwrap_or(i64::MAX);
        let old_enough = cutoff.is_none_or(|c| created < c);
        if i < keep || !old_enough {
            kept.push(img.image_id);
        } else {
            removed.push(img);
        }
    }
    // A snapshot still used by a kept image stays (EC2 would refuse to delete it).
    let kept_snapshots: Vec<String> = list(client, None, Some(family))
        .await?
        .into_iter()
        .filter(|i| kept.contains(&i.image_id))
        .flat_map(|i| i.snapshots)
        .collect();
    for img in &mut removed {
        img.snapshots.retain(|s| !kept_snapshots.contains(s));
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
        removed,
        dry_run,
    })
}
