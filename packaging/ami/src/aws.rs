//! The AWS calls. Everything decided here comes from `plan` (pure, tested); this module only
//! sends requests and turns SDK errors into messages naming region, resource and AWS error code.

use crate::plan::{self, Block, RetryPolicy, WaitStep};
use crate::spec::{AmiSpec, CONTENT_KEY_TAG};
use aws_sdk_ebs::error::ProvideErrorMetadata;
use aws_sdk_ebs::error::SdkError;
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ec2::types as ec2t;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A failed AWS call: which region, operation, resource, and the AWS error code.
#[derive(Debug, thiserror::Error)]
#[error("{region}: {operation} on {resource} failed: {code}: {message}")]
pub struct AwsError {
    pub region: String,
    pub operation: &'static str,
    pub resource: String,
    pub code: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("{0}")]
    Local(String),
}

fn aws_err<E, R>(region: &str, operation: &'static str, resource: &str, e: &SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: Debug,
{
    AwsError {
        region: region.to_string(),
        operation,
        resource: resource.to_string(),
        code: e.code().unwrap_or("NoErrorCode").to_string(),
        message: e
            .message()
            .map(str::to_string)
            .unwrap_or_else(|| aws_sdk_ebs::error::DisplayErrorContext(e).to_string()),
    }
}

/// Where and how to reach AWS.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Custom endpoint (tests: moto_server on loopback).
    pub endpoint_url: Option<String>,
    /// Static credentials instead of the standard chain (tests only).
    pub static_credentials: Option<(String, String)>,
}

#[derive(Clone)]
pub struct Clients {
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub ebs: aws_sdk_ebs::Client,
    pub ssm: aws_sdk_ssm::Client,
}

impl Clients {
    pub async fn new(region: &str, target: &Target) -> Clients {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .timeout_config(timeouts);
        if let Some(url) = &target.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some((id, secret)) = &target.static_credentials {
            loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
                id, secret, None, None, "static",
            ));
        }
        let conf = loader.load().await;
        // Our own bounded retry wraps PutSnapshotBlock; the SDK's standard retry covers the rest.
        let ebs_conf = aws_sdk_ebs::config::Builder::from(&conf)
            .retry_config(aws_sdk_ebs::config::retry::RetryConfig::disabled())
            .build();
        Clients {
            region: region.to_string(),
            ec2: aws_sdk_ec2::Client::new(&conf),
            ebs: aws_sdk_ebs::Client::from_conf(ebs_conf),
            ssm: aws_sdk_ssm::Client::new(&conf),
        }
    }
}

/// Result of a raw upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub snapshot_id: String,
    pub block_size: u64,
    pub blocks_scanned: u64,
    pub blocks_written: u64,
    pub checksum: String,
    pub retries: u64,
    pub seconds: f64,
}

/// Raw image -> completed EBS snapshot with the EBS direct APIs.
pub async fn upload(
    c: &Clients,
    image: &Path,
    image_len: u64,
    content_key: &str,
    workers: usize,
    retry: RetryPolicy,
) -> Result<Upload, Error> {
    let t0 = Instant::now();
    let region = c.region.as_str();
    let gib = plan::volume_size_gib(image_len);
    let started = c
        .ebs
        .start_snapshot()
        .volume_size(gib as i64)
        .timeout(60)
        .description(format!("kv-ami raw import {content_key}"))
        .tags(aws_sdk_ebs::types::Tag::builder().key(CONTENT_KEY_TAG).value(content_key).build())
        .send()
        .await
        .map_err(|e| aws_err(region, "ebs:StartSnapshot", &image.display().to_string(), &e))?;
    let snapshot_id = started.snapshot_id().unwrap_or_default().to_string();
    let block_size = match started.block_size() {
        Some(b) if b > 0 && b <= (16 << 20) => b as u64,
        other => {
            return Err(Error::Local(format!(
                "{region}: ebs:StartSnapshot on {snapshot_id}: unusable BlockSize {other:?}"
            )));
        }
    };
    if plan::block_count(image_len, block_size) > i32::MAX as u64 {
        return Err(Error::Local(format!("{}: too many blocks of {block_size} bytes", image.display())));
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<Block>(workers * 2);
    let path: PathBuf = image.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        plan::scan_blocks(&path, block_size as usize, |b| tx.blocking_send(b).is_ok())
    });
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    // Progress: workers count written blocks; a ticker logs the count every 5 s.
    let written = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (written, region, sid) = (written.clone(), region.to_string(), snapshot_id.clone());
        let total = plan::block_count(image_len, block_size);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            every.tick().await;
            loop {
                every.tick().await;
                let n = written.load(Ordering::Relaxed);
                tracing::info!(
                    region,
                    snapshot_id = sid,
                    written = n,
                    image_blocks = total,
                    "upload progress"
                );
            }
        })
    };
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let written = written.clone();
        let rx = rx.clone();
        let ebs = c.ebs.clone();
        let region = region.to_string();
        let sid = snapshot_id.clone();
        set.spawn(async move {
            let mut done: Vec<(u64, [u8; 32])> = Vec::new();
            let mut retries = 0u64;
            loop {
                let next = rx.lock().await.recv().await;
                let Some(block) = next else { break };
                retries +=
                    put_block(&ebs, &region, &sid, block.index, block.data.into(), &block.digest, retry)
                        .await?;
                done.push((block.index, block.digest));
                written.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, AwsError>((done, retries))
        });
    }
    let mut digests = Vec::new();
    let mut retries = 0;
    let mut failed = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok((d, r))) => {
                digests.extend(d);
                retries += r;
            }
            Ok(Err(e)) => {
                set.abort_all();
                failed.get_or_insert(Error::Aws(e));
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                set.abort_all();
                failed.get_or_insert(Error::Local(format!("upload worker ended: {e}")));
            }
        }
    }
    ticker.abort();
    if let Some(e) = failed {
        return Err(e);
    }
    let (scanned, kept) = reader
        .await
        .map_err(|e| Error::Local(format!("image reader ended: {e}")))?
        .map_err(|e| Error::Local(format!("{}: read failed: {e}", image.display())))?;
    if kept != digests.len() as u64 {
        return Err(Error::Local(format!(
            "{region}: {snapshot_id}: {kept} blocks read but {} written",
            digests.len()
        )));
    }
    let checksum = plan::linear_checksum(&digests);
    c.ebs
        .complete_snapshot()
        .snapshot_id(&snapshot_id)
        .changed_blocks_count(kept as i32)
        .checksum(&checksum)
        .checksum_algorithm(aws_sdk_ebs::types::ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(aws_sdk_ebs::types::ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map_err(|e| aws_err(region, "ebs:CompleteSnapshot", &snapshot_id, &e))?;
    Ok(Upload {
        snapshot_id,
        block_size,
        blocks_scanned: scanned,
        blocks_written: kept,
        checksum,
        retries,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// One PutSnapshotBlock with bounded retries; returns how many retries it took.
async fn put_block(
    ebs: &aws_sdk_ebs::Client,
    region: &str,
    snapshot_id: &str,
    index: u64,
    data: bytes::Bytes,
    digest: &[u8; 32],
    retry: RetryPolicy,
) -> Result<u64, AwsError> {
    let checksum = plan::b64(digest);
    let mut attempt = 1;
    loop {
        let sent = ebs
            .put_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(index as i32)
            .data_length(data.len() as i32)
            .block_data(ByteStream::from(data.clone()))
            .checksum(&checksum)
            .checksum_algorithm(aws_sdk_ebs::types::ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .send()
            .await;
        match sent {
            Ok(_) => return Ok(u64::from(attempt - 1)),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                match plan::retryable(e.code(), status).then(|| retry.delay_after(attempt)).flatten() {
                    Some(delay) => {
                        tracing::warn!(region, snapshot_id, index, attempt, code = e.code(), "block retry");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => {
                        let what = format!("{snapshot_id} block {index} (attempt {attempt})");
                        return Err(aws_err(region, "ebs:PutSnapshotBlock", &what, &e));
                    }
                }
            }
        }
    }
}

/// Read every block of a snapshot back and compare with the image (zero blocks must be absent).
/// Returns the number of blocks compared.
pub async fn verify_snapshot(c: &Clients, snapshot_id: &str, image: &Path) -> Result<u64, Error> {
    let region = c.region.as_str();
    let data = std::fs::read(image).map_err(|e| Error::Local(format!("{}: {e}", image.display())))?;
    let mut token = None;
    let mut listed = Vec::new();
    let mut block_size;
    loop {
        let page = c
            .ebs
            .list_snapshot_blocks()
            .snapshot_id(snapshot_id)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| aws_err(region, "ebs:ListSnapshotBlocks", snapshot_id, &e))?;
        block_size = page.block_size().unwrap_or(0) as u64;
        for b in page.blocks() {
            listed.push((b.block_index().unwrap_or(-1), b.block_token().unwrap_or_default().to_string()));
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    if block_size == 0 {
        return Err(Error::Local(format!("{region}: {snapshot_id}: ListSnapshotBlocks gave no BlockSize")));
    }
    let mut expected = Vec::new();
    for (i, chunk) in data.chunks(block_size as usize).enumerate() {
        if !plan::is_zero(chunk) {
            expected.push(i as i32);
        }
    }
    let mut got: Vec<i32> = listed.iter().map(|(i, _)| *i).collect();
    got.sort_unstable();
    if got != expected {
        return Err(Error::Local(format!(
            "{region}: {snapshot_id}: snapshot holds blocks {got:?}, image has non-zero blocks {expected:?}"
        )));
    }
    for (index, token) in &listed {
        let out = c
            .ebs
            .get_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(*index)
            .block_token(token)
            .send()
            .await
            .map_err(|e| aws_err(region, "ebs:GetSnapshotBlock", snapshot_id, &e))?;
        let sum = out.checksum().map(str::to_string);
        let bytes = out
            .block_data
            .collect()
            .await
            .map_err(|e| Error::Local(format!("{region}: {snapshot_id} block {index}: body: {e}")))?
            .into_bytes();
        let start = *index as usize * block_size as usize;
        let mut want = data[start..(start + block_size as usize).min(data.len())].to_vec();
        want.resize(block_size as usize, 0);
        if bytes.as_ref() != want.as_slice() {
            return Err(Error::Local(format!(
                "{region}: {snapshot_id} block {index}: data differs from the image"
            )));
        }
        if let Some(sum) = sum
            && sum != plan::b64(&plan::block_digest(&want))
        {
            return Err(Error::Local(format!(
                "{region}: {snapshot_id} block {index}: checksum {sum} differs"
            )));
        }
    }
    Ok(listed.len() as u64)
}

/// Bounded wait for a snapshot to reach `completed` (fail fast on `error`).
pub async fn wait_snapshot(
    c: &Clients,
    snapshot_id: &str,
    attempts: u32,
    every: Duration,
) -> Result<(), Error> {
    let region = c.region.as_str();
    for _ in 0..attempts {
        let out = c
            .ec2
            .describe_snapshots()
            .snapshot_ids(snapshot_id)
            .send()
            .await
            .map_err(|e| aws_err(region, "ec2:DescribeSnapshots", snapshot_id, &e))?;
        let s = out.snapshots().first();
        match s.and_then(|s| s.state()).map(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("error") | Some("recoverable") => {
                let msg = s.and_then(|s| s.state_message()).unwrap_or("no StateMessage");
                return Err(Error::Local(format!("{region}: snapshot {snapshot_id} in state error: {msg}")));
            }
            _ => tokio::time::sleep(every).await,
        }
    }
    Err(Error::Local(format!("{region}: snapshot {snapshot_id} not completed after {attempts} checks")))
}

/// Bounded wait for an image; `failed` ends it at once with the StateReason.
pub async fn wait_image(c: &Clients, image_id: &str, attempts: u32, every: Duration) -> Result<(), Error> {
    let region = c.region.as_str();
    for _ in 0..attempts {
        let out = c
            .ec2
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .map_err(|e| aws_err(region, "ec2:DescribeImages", image_id, &e))?;
        let img = out.images().first();
        let state = img.and_then(|i| i.state()).map(|s| s.as_str());
        let reason = img.and_then(|i| i.state_reason()).and_then(|r| r.message());
        match plan::image_wait_step(state, reason) {
            WaitStep::Done => return Ok(()),
            WaitStep::Again => tokio::time::sleep(every).await,
            WaitStep::Failed(m) => return Err(Error::Local(format!("{region}: {image_id}: {m}"))),
        }
    }
    Err(Error::Local(format!("{region}: {image_id} not available after {attempts} checks")))
}

/// An image of ours (owner self) carrying the content key, with its snapshots.
pub async fn find_by_content_key(
    c: &Clients,
    content_key: &str,
) -> Result<Option<(String, Vec<String>)>, Error> {
    let out = c
        .ec2
        .describe_images()
        .owners("self")
        .filters(ec2t::Filter::builder().name(format!("tag:{CONTENT_KEY_TAG}")).values(content_key).build())
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:DescribeImages", content_key, &e))?;
    let mut usable: Vec<&ec2t::Image> = out
        .images()
        .iter()
        .filter(|i| matches!(i.state().map(|s| s.as_str()), Some("available") | Some("pending")))
        .collect();
    usable.sort_by_key(|i| i.creation_date().map(str::to_string));
    Ok(usable.last().map(|i| (i.image_id().unwrap_or_default().to_string(), snapshots_of(i))))
}

fn snapshots_of(i: &ec2t::Image) -> Vec<String> {
    i.block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect()
}

pub async fn image_snapshots(c: &Clients, image_id: &str) -> Result<Vec<String>, Error> {
    let out = c
        .ec2
        .describe_images()
        .image_ids(image_id)
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:DescribeImages", image_id, &e))?;
    Ok(out.images().first().map(snapshots_of).unwrap_or_default())
}

pub async fn register(
    c: &Clients,
    spec: &AmiSpec,
    name: &str,
    snapshot_id: &str,
    root_gib: u64,
    content_key: &str,
) -> Result<String, Error> {
    let ebs = ec2t::EbsBlockDevice::builder()
        .snapshot_id(snapshot_id)
        .volume_size(root_gib as i32)
        .volume_type(ec2t::VolumeType::Gp3)
        .iops(spec.volume.iops)
        .throughput(spec.volume.throughput)
        .delete_on_termination(true)
        .build();
    let bdm = ec2t::BlockDeviceMapping::builder().device_name(&spec.root_device_name).ebs(ebs).build();
    let key_tag = ec2t::Tag::builder().key(CONTENT_KEY_TAG).value(content_key).build();
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
        .tag_specifications(
            ec2t::TagSpecification::builder().resource_type(ec2t::ResourceType::Image).tags(key_tag).build(),
        )
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:RegisterImage", snapshot_id, &e))?;
    let id = out.image_id().unwrap_or_default().to_string();
    // Tag at once as well: not every endpoint honours TagSpecifications on RegisterImage, and the
    // content key tag is what makes a re-run find this image.
    tag(c, std::slice::from_ref(&id), &[(CONTENT_KEY_TAG.to_string(), content_key.to_string())]).await?;
    Ok(id)
}

pub async fn copy(
    target: &Clients,
    source_region: &str,
    source_image: &str,
    name: &str,
    content_key: &str,
    encrypted: bool,
    kms_key_id: Option<&str>,
) -> Result<String, Error> {
    let out = target
        .ec2
        .copy_image()
        .source_region(source_region)
        .source_image_id(source_image)
        .name(name)
        .set_encrypted(encrypted.then_some(true))
        .set_kms_key_id(kms_key_id.map(str::to_string))
        .description(format!("kv-ami {content_key} (copy of {source_region}:{source_image})"))
        .send()
        .await
        .map_err(|e| aws_err(&target.region, "ec2:CopyImage", source_image, &e))?;
    let id = out.image_id().unwrap_or_default().to_string();
    tag(target, std::slice::from_ref(&id), &[(CONTENT_KEY_TAG.to_string(), content_key.to_string())]).await?;
    Ok(id)
}

pub async fn tag(c: &Clients, resources: &[String], tags: &[(String, String)]) -> Result<(), Error> {
    if resources.is_empty() || tags.is_empty() {
        return Ok(());
    }
    let mut req = c.ec2.create_tags().set_resources(Some(resources.to_vec()));
    for (k, v) in tags {
        req = req.tags(ec2t::Tag::builder().key(k).value(v).build());
    }
    req.send().await.map_err(|e| aws_err(&c.region, "ec2:CreateTags", &resources.join(","), &e))?;
    Ok(())
}

/// Snapshots first (a launch permission without them gives volumes nobody can create), then the
/// image.
pub async fn share(
    c: &Clients,
    image_id: &str,
    snapshots: &[String],
    accounts: &[String],
) -> Result<(), Error> {
    if accounts.is_empty() {
        return Ok(());
    }
    for s in snapshots {
        c.ec2
            .modify_snapshot_attribute()
            .snapshot_id(s)
            .attribute(ec2t::SnapshotAttributeName::CreateVolumePermission)
            .operation_type(ec2t::OperationType::Add)
            .set_user_ids(Some(accounts.to_vec()))
            .send()
            .await
            .map_err(|e| aws_err(&c.region, "ec2:ModifySnapshotAttribute", s, &e))?;
    }
    let perms = accounts.iter().map(|a| ec2t::LaunchPermission::builder().user_id(a).build()).collect();
    c.ec2
        .modify_image_attribute()
        .image_id(image_id)
        .launch_permission(ec2t::LaunchPermissionModifications::builder().set_add(Some(perms)).build())
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:ModifyImageAttribute", image_id, &e))?;
    Ok(())
}

pub async fn put_ssm(c: &Clients, name: &str, image_id: &str) -> Result<(), Error> {
    c.ssm
        .put_parameter()
        .name(name)
        .value(image_id)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .overwrite(true)
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ssm:PutParameter", name, &e))?;
    Ok(())
}
