//! EC2 images and their snapshots: find by content key, register, create from an instance,
//! copy, tag, share, deprecate, deregister, delete a snapshot, and the waits for an image to be
//! available and a snapshot to be completed (the SDK's `image_available` and
//! `snapshot_completed` waiters, bounded by [`Bound::max_wait`]).

use crate::aws::{AwsError, Clients};
use crate::plan::{self, WaitStep};
use crate::spec::{AmiSpec, CHANNEL_TAG, CONTENT_KEY_TAG, SMOKE_TAG, VARIANT_TAG, VolumeType};
use crate::wait::Bound;
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types as ec2t;
use aws_sdk_ec2::waiters::image_available::WaitUntilImageAvailableError;
use aws_sdk_ec2::waiters::snapshot_completed::WaitUntilSnapshotCompletedError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An EC2 call failed.
    #[error(transparent)]
    Call(#[from] AwsError),
    /// The image reached a state it does not leave (`failed`), with its StateReason.
    #[error("{region}: {image_id}: {reason}")]
    ImageFailed { region: String, image_id: String, reason: String },
    /// The image was not available within the bound.
    #[error("{region}: {image_id} not available after {checks} checks ({}s)", waited.as_secs())]
    ImageTimeout { region: String, image_id: String, checks: u32, waited: Duration },
    /// The snapshot went to `error`, with its StateMessage.
    #[error("{region}: snapshot {snapshot_id} in state error: {message}")]
    SnapshotFailed { region: String, snapshot_id: String, message: String },
    /// The snapshot was not completed within the bound.
    #[error("{region}: snapshot {snapshot_id} not completed after {checks} checks ({}s)", waited.as_secs())]
    SnapshotTimeout { region: String, snapshot_id: String, checks: u32, waited: Duration },
    /// A create call answered without the id of what it created.
    #[error("{region}: {operation} on {resource}: no image id in the answer")]
    NoImageId { region: String, operation: &'static str, resource: String },
    /// No image matches the base AMI's name, owner and architecture.
    #[error("{region}: no available {architecture} image named {name} owned by {owner}")]
    NoBaseImage { region: String, name: String, owner: String, architecture: String },
    /// `kv-ami promote` was given an image that is not kv-ami's (no content-key tag) or not available.
    #[error("{region}: {image_id}: {reason}")]
    NotPromotable { region: String, image_id: String, reason: String },
}

crate::aws::call_code!(Error);

type Result<T> = std::result::Result<T, Error>;

/// The content-key tag (and the variant's, for a spec with variants) for a resource type at
/// creation: what a re-run finds the resource by.
pub fn key_tags(rt: ec2t::ResourceType, content_key: &str, variant: Option<&str>) -> ec2t::TagSpecification {
    let b = ec2t::TagSpecification::builder()
        .resource_type(rt)
        .tags(ec2t::Tag::builder().key(CONTENT_KEY_TAG).value(content_key).build());
    match variant {
        Some(v) => b.tags(ec2t::Tag::builder().key(VARIANT_TAG).value(v).build()),
        None => b,
    }
    .build()
}

/// The value of an image's tag `key`.
fn tag_of(i: &ec2t::Image, key: &str) -> Option<String> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(str::to_string)
}

/// This account's images tagged `tag = value` (DescribeImages, owner self).
async fn own_images_tagged(c: &Clients, tag: &str, value: &str) -> Result<Vec<ec2t::Image>> {
    let out = c
        .ec2
        .describe_images()
        .owners("self")
        .filters(ec2t::Filter::builder().name(format!("tag:{tag}")).values(value).build())
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DescribeImages", value, &e))?;
    Ok(out.images.unwrap_or_default())
}

/// An image of ours (owner self) carrying the content key and this variant's tag (none at all
/// for a spec without variants), with its snapshots.
pub async fn find_by_content_key(
    c: &Clients,
    content_key: &str,
    variant: Option<&str>,
) -> Result<Option<(String, Vec<String>)>> {
    let images = own_images_tagged(c, CONTENT_KEY_TAG, content_key).await?;
    let mut usable: Vec<&ec2t::Image> = images
        .iter()
        .filter(|i| matches!(i.state().map(|s| s.as_str()), Some("available") | Some("pending")))
        .filter(|i| tag_of(i, VARIANT_TAG).as_deref() == variant)
        .collect();
    usable.sort_by_key(|i| i.creation_date().map(str::to_string));
    Ok(usable.last().map(|i| (i.image_id().unwrap_or_default().to_string(), snapshots_of(i))))
}

/// An image of a channel as `kv-ami gc` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelImage {
    pub image_id: String,
    pub content_key: String,
    /// CreationDate, seconds since the epoch.
    pub created: i64,
    pub snapshots: Vec<String>,
    /// Tagged `kv-ami:smoke = failed`: never kept as one of the newest.
    pub failed_smoke: bool,
}

/// This account's images tagged `kv-ami:channel = channel` that also carry the content key
/// (nothing else is ever a gc candidate).
pub async fn of_channel(c: &Clients, channel: &str) -> Result<Vec<ChannelImage>> {
    let images = own_images_tagged(c, CHANNEL_TAG, channel).await?;
    let tag = tag_of;
    Ok(images
        .iter()
        .filter(|i| tag(i, CHANNEL_TAG).as_deref() == Some(channel))
        .filter_map(|i| {
            let created = i.creation_date().and_then(|d| {
                aws_sdk_ec2::primitives::DateTime::from_str(
                    d,
                    aws_sdk_ec2::primitives::DateTimeFormat::DateTime,
                )
                .ok()
            })?;
            Some(ChannelImage {
                image_id: i.image_id()?.to_string(),
                content_key: tag(i, CONTENT_KEY_TAG)?,
                created: created.secs(),
                snapshots: snapshots_of(i),
                failed_smoke: tag(i, SMOKE_TAG).as_deref() == Some("failed"),
            })
        })
        .collect())
}

/// This account's snapshots tagged with this content key and channel (`kv-ami gc`: a build's
/// snapshots, also one its image no longer lists).
pub async fn snapshots_of_build(c: &Clients, content_key: &str, channel: &str) -> Result<Vec<String>> {
    let f = |k: &str, v: &str| ec2t::Filter::builder().name(format!("tag:{k}")).values(v).build();
    let out = c
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(f(CONTENT_KEY_TAG, content_key))
        .filters(f(CHANNEL_TAG, channel))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DescribeSnapshots", content_key, &e))?;
    Ok(out.snapshots().iter().filter_map(|s| s.snapshot_id()).map(str::to_string).collect())
}

/// DeregisterImage, then DeleteSnapshot of the snapshots given (`kv-ami gc`).
pub async fn deregister_listed(c: &Clients, image_id: &str, snapshots: &[String]) -> Result<()> {
    c.ec2
        .deregister_image()
        .image_id(image_id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DeregisterImage", image_id, &e))?;
    for s in snapshots {
        delete_snapshot(c, s).await?;
    }
    Ok(())
}

/// kv-ami's tags of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvTags {
    pub content_key: String,
    pub variant: Option<String>,
    /// `kv-ami:smoke`: `failed`, `passed`, `skipped`, or none (published before the tag existed).
    pub smoke: Option<String>,
}

/// The content key of an available image of this account (`kv-ami promote`, `smoke-test`).
pub async fn content_key_of(c: &Clients, image_id: &str) -> Result<String> {
    Ok(kv_tags_of(c, image_id).await?.content_key)
}

/// kv-ami's tags of an available image of this account; one without the content key is refused.
pub async fn kv_tags_of(c: &Clients, image_id: &str) -> Result<KvTags> {
    let out = c
        .ec2
        .describe_images()
        .owners("self")
        .image_ids(image_id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DescribeImages", image_id, &e))?;
    let refuse = |reason: &str| Error::NotPromotable {
        region: c.region.clone(),
        image_id: image_id.into(),
        reason: reason.into(),
    };
    let i = out.images().first().ok_or_else(|| refuse("no such image of this account"))?;
    if i.state().map(|s| s.as_str()) != Some("available") {
        return Err(refuse(&format!("state {:?}, not available", i.state().map(|s| s.as_str()))));
    }
    let content_key = tag_of(i, CONTENT_KEY_TAG)
        .ok_or_else(|| refuse(&format!("no {CONTENT_KEY_TAG} tag: not an image kv-ami made")))?;
    Ok(KvTags { content_key, variant: tag_of(i, VARIANT_TAG), smoke: tag_of(i, SMOKE_TAG) })
}

/// The newest available image named `name` (a pattern) of `owner` for `architecture`.
pub async fn newest_named(c: &Clients, name: &str, owner: &str, architecture: &str) -> Result<String> {
    let f = |k: &str, v: &str| ec2t::Filter::builder().name(k).values(v).build();
    let out = c
        .ec2
        .describe_images()
        .owners(owner)
        .filters(f("name", name))
        .filters(f("state", "available"))
        .filters(f("architecture", architecture))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DescribeImages", name, &e))?;
    let mut images: Vec<&ec2t::Image> = out.images().iter().collect();
    images.sort_by_key(|i| i.creation_date().map(str::to_string));
    images.last().and_then(|i| i.image_id()).map(str::to_string).ok_or_else(|| Error::NoBaseImage {
        region: c.region.clone(),
        name: name.into(),
        owner: owner.into(),
        architecture: architecture.into(),
    })
}

fn snapshots_of(i: &ec2t::Image) -> Vec<String> {
    i.block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect()
}

/// The snapshots an image lists (none while AWS has not listed them yet).
pub async fn image_snapshots(c: &Clients, image_id: &str) -> Result<Vec<String>> {
    let out = c
        .ec2
        .describe_images()
        .image_ids(image_id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DescribeImages", image_id, &e))?;
    Ok(out.images().first().map(snapshots_of).unwrap_or_default())
}

/// RegisterImage of a snapshot, tagged with the content key (at creation and once more).
pub async fn register(
    c: &Clients,
    spec: &AmiSpec,
    name: &str,
    snapshot_id: &str,
    root_gib: u64,
    content_key: &str,
) -> Result<String> {
    let v = &spec.volume;
    let ebs = ec2t::EbsBlockDevice::builder()
        .snapshot_id(snapshot_id)
        .volume_size(root_gib as i32)
        .volume_type(ec2t::VolumeType::from(v.volume_type.as_str()))
        .iops(v.iops)
        .set_throughput((v.volume_type == VolumeType::Gp3).then_some(v.throughput))
        .delete_on_termination(true)
        .build();
    let bdm = ec2t::BlockDeviceMapping::builder().device_name(&spec.root_device_name).ebs(ebs).build();
    let out = c
        .ec2
        .register_image()
        .name(name)
        .description(spec.description.clone().unwrap_or_else(|| format!("kv-ami {content_key}")))
        .architecture(ec2t::ArchitectureValues::from(spec.architecture.as_str()))
        .boot_mode(ec2t::BootModeValues::from(spec.boot_mode.as_str()))
        .ena_support(spec.ena)
        .root_device_name(&spec.root_device_name)
        .virtualization_type("hvm")
        .block_device_mappings(bdm)
        .set_imds_support(spec.imds_v2.then_some(ec2t::ImdsSupportValues::V20))
        .set_tpm_support(spec.tpm.then_some(ec2t::TpmSupportValues::V20))
        .tag_specifications(key_tags(ec2t::ResourceType::Image, content_key, spec.variant.as_deref()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:RegisterImage", snapshot_id, &e))?;
    let id = image_id_of(c, out.image_id(), "ec2:RegisterImage", snapshot_id)?;
    // Tag at once as well: not every endpoint honours TagSpecifications on RegisterImage, and the
    // content key (and variant) tag is what makes a re-run find this image.
    tag(c, std::slice::from_ref(&id), &find_tags(content_key, spec.variant.as_deref())).await?;
    Ok(id)
}

/// CreateImage of an instance. `tags`: its TagSpecifications (see `bake::create_image_tags`).
pub async fn create_from_instance(
    c: &Clients,
    instance_id: &str,
    name: &str,
    description: &str,
    no_reboot: bool,
    tags: Vec<ec2t::TagSpecification>,
) -> Result<String> {
    let out = c
        .ec2
        .create_image()
        .instance_id(instance_id)
        .name(name)
        .description(description)
        .no_reboot(no_reboot)
        .set_tag_specifications(Some(tags))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:CreateImage", instance_id, &e))?;
    image_id_of(c, out.image_id(), "ec2:CreateImage", instance_id)
}

/// The image id a create call answered with; none (or empty) is an error naming the call.
fn image_id_of(c: &Clients, id: Option<&str>, operation: &'static str, resource: &str) -> Result<String> {
    match id {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(Error::NoImageId { region: c.region.clone(), operation, resource: resource.into() }),
    }
}

/// CopyImage into `target`'s region; the copy and its snapshots carry the content key from the
/// start (the IAM policies let the cleanup delete only what carries it).
pub async fn copy(
    target: &Clients,
    spec: &AmiSpec,
    source_image: &str,
    name: &str,
    content_key: &str,
) -> Result<String> {
    let source_region = spec.region.as_str();
    let variant = spec.variant.as_deref();
    let kms_key_id = spec.kms_key_ids.get(&target.region).map(String::as_str);
    let encrypted = spec.encrypt_copies;
    let out = target
        .ec2
        .copy_image()
        .source_region(source_region)
        .source_image_id(source_image)
        .name(name)
        .set_encrypted(encrypted.then_some(true))
        .set_kms_key_id(kms_key_id.map(str::to_string))
        .description(format!("kv-ami {content_key} (copy of {source_region}:{source_image})"))
        .tag_specifications(key_tags(ec2t::ResourceType::Image, content_key, variant))
        .tag_specifications(key_tags(ec2t::ResourceType::Snapshot, content_key, variant))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&target.region, "ec2:CopyImage", source_image, &e))?;
    let id = image_id_of(target, out.image_id(), "ec2:CopyImage", source_image)?;
    tag(target, std::slice::from_ref(&id), &find_tags(content_key, variant)).await?;
    Ok(id)
}

/// CreateTags on images and snapshots.
pub async fn tag(c: &Clients, resources: &[String], tags: &[(String, String)]) -> Result<()> {
    if resources.is_empty() || tags.is_empty() {
        return Ok(());
    }
    let mut req = c.ec2.create_tags().set_resources(Some(resources.to_vec()));
    for (k, v) in tags {
        req = req.tags(ec2t::Tag::builder().key(k).value(v).build());
    }
    req.send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:CreateTags", &resources.join(","), &e))?;
    Ok(())
}

/// The tags a re-run finds an image by: the content key, and the variant's.
pub fn find_tags(content_key: &str, variant: Option<&str>) -> Vec<(String, String)> {
    let mut t = vec![(CONTENT_KEY_TAG.to_string(), content_key.to_string())];
    if let Some(v) = variant {
        t.push((VARIANT_TAG.to_string(), v.to_string()));
    }
    t
}

pub async fn tag_content_key(c: &Clients, resources: &[String], content_key: &str) -> Result<()> {
    tag(c, resources, &[(CONTENT_KEY_TAG.to_string(), content_key.to_string())]).await
}

/// Who gets launch permission.
#[derive(Debug, Clone, Default)]
pub struct Sharing<'a> {
    pub accounts: &'a [String],
    pub organizations: &'a [String],
    pub ous: &'a [String],
    pub public: bool,
}

impl<'a> Sharing<'a> {
    pub fn of(spec: &'a AmiSpec) -> Sharing<'a> {
        Sharing {
            accounts: &spec.share_with,
            organizations: &spec.share_with_organizations,
            ous: &spec.share_with_ous,
            public: spec.public,
        }
    }
}

/// Snapshots first (a launch permission without them gives volumes nobody can create), then the
/// image. Create-volume permission exists for accounts only: organizations, OUs and `all` get the
/// launch permission, which is enough to launch (EC2 reads the snapshots on their behalf); the
/// snapshots of a public image stay private.
pub async fn share(c: &Clients, image_id: &str, snapshots: &[String], to: &Sharing<'_>) -> Result<()> {
    if !to.accounts.is_empty() {
        for s in snapshots {
            c.ec2
                .modify_snapshot_attribute()
                .snapshot_id(s)
                .attribute(ec2t::SnapshotAttributeName::CreateVolumePermission)
                .operation_type(ec2t::OperationType::Add)
                .set_user_ids(Some(to.accounts.to_vec()))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(&c.region, "ec2:ModifySnapshotAttribute", s, &e))?;
        }
    }
    let mut perms: Vec<ec2t::LaunchPermission> =
        to.accounts.iter().map(|a| ec2t::LaunchPermission::builder().user_id(a).build()).collect();
    perms.extend(
        to.organizations.iter().map(|o| ec2t::LaunchPermission::builder().organization_arn(o).build()),
    );
    perms.extend(to.ous.iter().map(|o| ec2t::LaunchPermission::builder().organizational_unit_arn(o).build()));
    if to.public {
        perms.push(ec2t::LaunchPermission::builder().group(ec2t::PermissionGroup::All).build());
    }
    if perms.is_empty() {
        return Ok(());
    }
    c.ec2
        .modify_image_attribute()
        .image_id(image_id)
        .launch_permission(ec2t::LaunchPermissionModifications::builder().set_add(Some(perms)).build())
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:ModifyImageAttribute", image_id, &e))?;
    Ok(())
}

/// EnableImageDeprecation at `at` (seconds since the epoch).
pub async fn deprecate(c: &Clients, image_id: &str, at: u64) -> Result<()> {
    c.ec2
        .enable_image_deprecation()
        .image_id(image_id)
        .deprecate_at(aws_sdk_ec2::primitives::DateTime::from_secs(at as i64))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:EnableImageDeprecation", image_id, &e))?;
    Ok(())
}

pub async fn delete_snapshot(c: &Clients, snapshot_id: &str) -> Result<()> {
    c.ec2
        .delete_snapshot()
        .snapshot_id(snapshot_id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DeleteSnapshot", snapshot_id, &e))?;
    Ok(())
}

/// DeregisterImage, then DeleteSnapshot of the snapshots it referenced (those of a copy or of
/// CreateImage are ours alone). Returns the snapshots deleted.
pub async fn deregister_with_snapshots(c: &Clients, image_id: &str) -> Result<Vec<String>> {
    let snaps = image_snapshots(c, image_id).await?;
    c.ec2
        .deregister_image()
        .image_id(image_id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:DeregisterImage", image_id, &e))?;
    for s in &snaps {
        delete_snapshot(c, s).await?;
    }
    Ok(snaps)
}

/// Current state of a snapshot; None when it does not exist (any more).
pub async fn snapshot_state(c: &Clients, snapshot_id: &str) -> Result<Option<String>> {
    match c.ec2.describe_snapshots().snapshot_ids(snapshot_id).send().await {
        Ok(out) => Ok(out.snapshots().first().and_then(|s| s.state()).map(|s| s.as_str().to_string())),
        Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidSnapshot")) => Ok(None),
        Err(e) => Err(AwsError::from_sdk(&c.region, "ec2:DescribeSnapshots", snapshot_id, &e).into()),
    }
}

/// Bounded wait for a snapshot to reach `completed` (the SDK's `snapshot_completed` waiter;
/// `error` ends it at once with the StateMessage).
pub async fn wait_snapshot(c: &Clients, snapshot_id: &str, bound: Bound) -> Result<()> {
    let region = &c.region;
    let waited = c.ec2.wait_until_snapshot_completed().snapshot_ids(snapshot_id).wait(bound.max_wait()).await;
    match waited {
        Ok(_) => Ok(()),
        Err(WaitUntilSnapshotCompletedError::FailureState(f)) => {
            let s = f.final_poll().as_result().ok().and_then(|o| o.snapshots().first());
            let message = s.and_then(|s| s.state_message()).unwrap_or("no StateMessage").to_string();
            Err(Error::SnapshotFailed { region: region.clone(), snapshot_id: snapshot_id.into(), message })
        }
        Err(WaitUntilSnapshotCompletedError::ExceededMaxWait(m)) => Err(Error::SnapshotTimeout {
            region: region.clone(),
            snapshot_id: snapshot_id.into(),
            checks: m.poll_count(),
            waited: m.elapsed(),
        }),
        Err(WaitUntilSnapshotCompletedError::OperationFailed(e)) => {
            Err(AwsError::from_sdk(region, "ec2:DescribeSnapshots", snapshot_id, e.error()).into())
        }
        Err(other) => Err(AwsError {
            region: region.clone(),
            operation: "ec2:DescribeSnapshots",
            resource: snapshot_id.into(),
            code: "WaiterError".into(),
            message: format!("{other:?}"),
        }
        .into()),
    }
}

/// Bounded wait for an image to be available (the SDK's `image_available` waiter); `failed`
/// ends it at once with the StateReason.
pub async fn wait_image(c: &Clients, image_id: &str, bound: Bound) -> Result<()> {
    let region = &c.region;
    let waited = c.ec2.wait_until_image_available().image_ids(image_id).wait(bound.max_wait()).await;
    match waited {
        Ok(_) => Ok(()),
        Err(WaitUntilImageAvailableError::FailureState(f)) => {
            let img = f.final_poll().as_result().ok().and_then(|o| o.images().first());
            let state = img.and_then(|i| i.state()).map(|s| s.as_str()).or(Some("failed"));
            let reason = img.and_then(|i| i.state_reason()).and_then(|r| r.message());
            let reason = match plan::image_wait_step(state, reason) {
                WaitStep::Failed(m) => m,
                other => format!("waiter failure state, image {other:?}"),
            };
            Err(Error::ImageFailed { region: region.clone(), image_id: image_id.into(), reason })
        }
        Err(WaitUntilImageAvailableError::ExceededMaxWait(m)) => Err(Error::ImageTimeout {
            region: region.clone(),
            image_id: image_id.into(),
            checks: m.poll_count(),
            waited: m.elapsed(),
        }),
        Err(WaitUntilImageAvailableError::OperationFailed(e)) => {
            Err(AwsError::from_sdk(region, "ec2:DescribeImages", image_id, e.error()).into())
        }
        Err(other) => Err(AwsError {
            region: region.clone(),
            operation: "ec2:DescribeImages",
            resource: image_id.into(),
            code: "WaiterError".into(),
            message: format!("{other:?}"),
        }
        .into()),
    }
}
