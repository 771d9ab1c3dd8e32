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
    /// The run failed (or, with `original` None, finished) and some of its cleanup failed too:
    /// both are reported, the original error first.
    #[error("{}cleanup failed, left behind: {}", original.as_ref().map(|e| format!("{e}; ")).unwrap_or_else(|| "finished, but ".into()), left_behind.join("; "))]
    Cleanup { original: Option<Box<Error>>, left_behind: Vec<String> },
}

impl Error {
    /// The AWS error code, when the error came from AWS.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Aws(e) => Some(&e.code),
            Error::Cleanup { original: Some(e), .. } => e.code(),
            _ => None,
        }
    }
}

pub(crate) fn aws_err<E, R>(
    region: &str,
    operation: &'static str,
    resource: &str,
    e: &SdkError<E, R>,
) -> AwsError
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

/// Makes the clients of a region (tests: clients of aws-smithy-mocks).
pub type ClientFactory = Arc<dyn Fn(&str) -> Clients + Send + Sync>;

/// Where and how to reach AWS.
#[derive(Clone, Default)]
pub struct Target {
    /// Custom endpoint (tests: moto_server on loopback).
    pub endpoint_url: Option<String>,
    /// Static credentials instead of the standard chain (tests only).
    pub static_credentials: Option<(String, String)>,
    /// Clients made elsewhere instead of from the chain (tests only).
    pub factory: Option<ClientFactory>,
}

impl Target {
    /// A custom endpoint is taken for an emulator (tests: moto_server), as for S3's path-style
    /// addressing below: moto implements CreateImage without snapshot TagSpecifications.
    pub fn is_emulator(&self) -> bool {
        self.endpoint_url.is_some()
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint_url", &self.endpoint_url)
            .field("static_credentials", &self.static_credentials.as_ref().map(|(id, _)| id))
            .field("factory", &self.factory.is_some())
            .finish()
    }
}

#[derive(Clone)]
pub struct Clients {
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub ebs: aws_sdk_ebs::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Clients {
    /// From clients built elsewhere (tests: aws-smithy-mocks).
    pub fn from_parts(
        region: &str,
        ec2: aws_sdk_ec2::Client,
        ebs: aws_sdk_ebs::Client,
        ssm: aws_sdk_ssm::Client,
        s3: aws_sdk_s3::Client,
    ) -> Clients {
        Clients { region: region.to_string(), ec2, ebs, ssm, s3 }
    }

    pub async fn new(region: &str, target: &Target) -> Clients {
        if let Some(f) = &target.factory {
            return f(region);
        }
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
        // Emulators serve S3 on one host: path-style addressing there.
        let s3_conf =
            aws_sdk_s3::config::Builder::from(&conf).force_path_style(target.endpoint_url.is_some()).build();
        Clients {
            region: region.to_string(),
            ec2: aws_sdk_ec2::Client::new(&conf),
            ebs: aws_sdk_ebs::Client::from_conf(ebs_conf),
            ssm: aws_sdk_ssm::Client::new(&conf),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
        }
    }
}

/// Result of a raw upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub snapshot_id: String,
    pub block_size: u64,
    pub blocks_scanned: u64,
    /// Non-zero blocks in the snapshot (put by this run or, when resumed, by the earlier one).
    pub blocks_written: u64,
    /// Blocks this run put.
    pub blocks_put: u64,
    pub checksum: String,
    pub retries: u64,
    pub seconds: f64,
}

/// Told what the upload does, so that a state file and a cleanup stack can follow it.
pub trait UploadObserver: Send + Sync {
    /// StartSnapshot answered (not called when an earlier snapshot is resumed).
    fn started(&self, snapshot_id: &str, block_size: u64, volume_gib: u64);
    /// These blocks are in the snapshot (batched, about twice a second).
    fn blocks_done(&self, indexes: &[u64]);
}

/// Continue a snapshot that an earlier, interrupted run started.
#[derive(Debug, Clone)]
pub struct ResumeUpload {
    pub snapshot_id: String,
    pub block_size: u64,
    /// Blocks already put: not sent again (their digests still go into the LINEAR checksum).
    pub done: std::collections::HashSet<u64>,
}

pub struct UploadOptions {
    pub workers: usize,
    pub retry: RetryPolicy,
    pub resume: Option<ResumeUpload>,
    pub observer: Option<Arc<dyn UploadObserver>>,
    /// A live progress line on stderr (when it is a terminal) instead of the 5-second log line.
    pub progress_bar: bool,
}

impl UploadOptions {
    pub fn new(workers: usize, retry: RetryPolicy) -> UploadOptions {
        UploadOptions { workers, retry, resume: None, observer: None, progress_bar: false }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// StartSnapshot's timeout: an unfinished snapshot goes to `error` after this (and a resumed
/// upload must finish before it).
pub const SNAPSHOT_TIMEOUT_MINUTES: u32 = 60;

/// Raw image -> completed EBS snapshot with the EBS direct APIs.
pub async fn upload(
    c: &Clients,
    image: &Path,
    image_len: u64,
    content_key: &str,
    workers: usize,
    retry: RetryPolicy,
) -> Result<Upload, Error> {
    upload_with(c, image, image_len, content_key, UploadOptions::new(workers, retry)).await
}

pub async fn upload_with(
    c: &Clients,
    image: &Path,
    image_len: u64,
    content_key: &str,
    opts: UploadOptions,
) -> Result<Upload, Error> {
    let t0 = Instant::now();
    let region = c.region.as_str();
    let gib = plan::volume_size_gib(image_len);
    let workers = opts.workers.max(1);
    let (snapshot_id, block_size, done) = match opts.resume {
        Some(r) => (r.snapshot_id, r.block_size, r.done),
        None => {
            let started = c
                .ebs
                .start_snapshot()
                .volume_size(gib as i64)
                .timeout(SNAPSHOT_TIMEOUT_MINUTES as i32)
                .description(format!("kv-ami raw import {content_key}"))
                .tags(aws_sdk_ebs::types::Tag::builder().key(CONTENT_KEY_TAG).value(content_key).build())
                .send()
                .await
                .map_err(|e| aws_err(region, "ebs:StartSnapshot", &image.display().to_string(), &e))?;
            let snapshot_id = started.snapshot_id().unwrap_or_default().to_string();
            let block_size = started.block_size().unwrap_or(0);
            if let Some(o) = &opts.observer {
                o.started(&snapshot_id, block_size.max(0) as u64, gib);
            }
            (snapshot_id, block_size.max(0) as u64, Default::default())
        }
    };
    if block_size == 0 || block_size > (16 << 20) {
        return Err(Error::Local(format!(
            "{region}: ebs:StartSnapshot on {snapshot_id}: unusable BlockSize {block_size}"
        )));
    }
    let total_blocks = plan::block_count(image_len, block_size);
    if total_blocks > i32::MAX as u64 {
        return Err(Error::Local(format!("{}: too many blocks of {block_size} bytes", image.display())));
    }
    // The bar needs the number of blocks to put: a local count first (zero test + hash, GiB/s).
    let to_put = if opts.progress_bar {
        let path = image.to_path_buf();
        let bs = block_size as usize;
        let (_, kept) = tokio::task::spawn_blocking(move || plan::scan_blocks(&path, bs, |_| true))
            .await
            .map_err(|e| Error::Local(format!("image count ended: {e}")))?
            .map_err(|e| Error::Local(format!("{}: read failed: {e}", image.display())))?;
        Some(kept.saturating_sub(done.len() as u64))
    } else {
        None
    };

    let (tx, rx) = tokio::sync::mpsc::channel::<Block>(workers * 2);
    let path: PathBuf = image.to_path_buf();
    let skip = done;
    let reader = tokio::task::spawn_blocking(move || {
        let mut skipped: Vec<(u64, [u8; 32])> = Vec::new();
        let counts = plan::scan_blocks(&path, block_size as usize, |b| {
            if skip.contains(&b.index) {
                skipped.push((b.index, b.digest));
                true
            } else {
                tx.blocking_send(b).is_ok()
            }
        });
        counts.map(|c| (c, skipped))
    });
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    // Progress: workers count written blocks; the state recorder gets their indexes.
    let written = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    // Both helper tasks end with this future, also when it is dropped (interrupt): a recorder
    // outliving the run could write a stale state file over the next run's.
    let mut recorder = AbortOnDrop({
        let observer = opts.observer.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            let mut last = Instant::now();
            while let Some(i) = done_rx.recv().await {
                batch.push(i);
                if last.elapsed() >= Duration::from_millis(500) {
                    if let Some(o) = &observer {
                        o.blocks_done(&batch);
                    }
                    batch.clear();
                    last = Instant::now();
                }
            }
            if let (Some(o), false) = (&observer, batch.is_empty()) {
                o.blocks_done(&batch);
            }
        })
    });
    let ticker = AbortOnDrop({
        let (written, region, sid) = (written.clone(), region.to_string(), snapshot_id.clone());
        let bar = opts.progress_bar;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut every = tokio::time::interval(Duration::from_millis(if bar { 500 } else { 5000 }));
            every.tick().await;
            loop {
                every.tick().await;
                let n = written.load(Ordering::Relaxed);
                match to_put {
                    Some(total) if bar => {
                        let line = crate::progress::line(n, total, n * block_size, start.elapsed());
                        eprint!("\r{region} {sid}: {line}\x1b[K");
                    }
                    _ => tracing::info!(
                        region,
                        snapshot_id = sid,
                        written = n,
                        image_blocks = total_blocks,
                        "upload progress"
                    ),
                }
            }
        })
    });
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let written = written.clone();
        let rx = rx.clone();
        let ebs = c.ebs.clone();
        let region = region.to_string();
        let sid = snapshot_id.clone();
        let done_tx = done_tx.clone();
        let retry = opts.retry;
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
                let _ = done_tx.send(block.index);
            }
            Ok::<_, AwsError>((done, retries))
        });
    }
    drop(done_tx);
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
    drop(ticker);
    if opts.progress_bar {
        eprintln!();
    }
    // Every worker has ended, so the recorder sees its channel close and flushes the last batch.
    let _ = (&mut recorder.0).await;
    if let Some(e) = failed {
        return Err(e);
    }
    let ((scanned, kept), skipped) = reader
        .await
        .map_err(|e| Error::Local(format!("image reader ended: {e}")))?
        .map_err(|e| Error::Local(format!("{}: read failed: {e}", image.display())))?;
    let put = digests.len() as u64;
    digests.extend(skipped);
    if kept != digests.len() as u64 {
        return Err(Error::Local(format!(
            "{region}: {snapshot_id}: {kept} blocks read but {} in the snapshot",
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
        blocks_put: put,
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
        // The copy's snapshots carry the content key from the start: the IAM policies let the
        // cleanup delete only what carries it.
        .tag_specifications(key_tags(ec2t::ResourceType::Image, content_key))
        .tag_specifications(key_tags(ec2t::ResourceType::Snapshot, content_key))
        .send()
        .await
        .map_err(|e| aws_err(&target.region, "ec2:CopyImage", source_image, &e))?;
    let id = out.image_id().unwrap_or_default().to_string();
    tag(target, std::slice::from_ref(&id), &[(CONTENT_KEY_TAG.to_string(), content_key.to_string())]).await?;
    Ok(id)
}

pub(crate) fn key_tags(rt: ec2t::ResourceType, content_key: &str) -> ec2t::TagSpecification {
    ec2t::TagSpecification::builder()
        .resource_type(rt)
        .tags(ec2t::Tag::builder().key(CONTENT_KEY_TAG).value(content_key).build())
        .build()
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
pub async fn share(c: &Clients, image_id: &str, snapshots: &[String], to: &Sharing<'_>) -> Result<(), Error> {
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
                .map_err(|e| aws_err(&c.region, "ec2:ModifySnapshotAttribute", s, &e))?;
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
        .map_err(|e| aws_err(&c.region, "ec2:ModifyImageAttribute", image_id, &e))?;
    Ok(())
}

/// EnableImageDeprecation at `at` (seconds since the epoch).
pub async fn deprecate(c: &Clients, image_id: &str, at: u64) -> Result<(), Error> {
    c.ec2
        .enable_image_deprecation()
        .image_id(image_id)
        .deprecate_at(aws_sdk_ec2::primitives::DateTime::from_secs(at as i64))
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:EnableImageDeprecation", image_id, &e))?;
    Ok(())
}

pub async fn delete_snapshot(c: &Clients, snapshot_id: &str) -> Result<(), Error> {
    c.ec2
        .delete_snapshot()
        .snapshot_id(snapshot_id)
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:DeleteSnapshot", snapshot_id, &e))?;
    Ok(())
}

/// DeregisterImage, then DeleteSnapshot of the snapshots it referenced (those of a copy or of
/// CreateImage are ours alone). Returns the snapshots deleted.
pub async fn deregister_with_snapshots(c: &Clients, image_id: &str) -> Result<Vec<String>, Error> {
    let snaps = image_snapshots(c, image_id).await?;
    c.ec2
        .deregister_image()
        .image_id(image_id)
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:DeregisterImage", image_id, &e))?;
    for s in &snaps {
        delete_snapshot(c, s).await?;
    }
    Ok(snaps)
}

/// Current state of a snapshot; None when it does not exist (any more).
pub async fn snapshot_state(c: &Clients, snapshot_id: &str) -> Result<Option<String>, Error> {
    match c.ec2.describe_snapshots().snapshot_ids(snapshot_id).send().await {
        Ok(out) => Ok(out.snapshots().first().and_then(|s| s.state()).map(|s| s.as_str().to_string())),
        Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidSnapshot")) => Ok(None),
        Err(e) => Err(aws_err(&c.region, "ec2:DescribeSnapshots", snapshot_id, &e).into()),
    }
}

/// PutObject of a local file (SHA-256 checksum sent, so S3 verifies what it stored).
pub async fn put_file(c: &Clients, bucket: &str, key: &str, file: &Path) -> Result<(), Error> {
    let what = format!("s3://{bucket}/{key}");
    let body = ByteStream::from_path(file)
        .await
        .map_err(|e| Error::Local(format!("{}: cannot read: {e}", file.display())))?;
    let digest = {
        let path = file.to_path_buf();
        tokio::task::spawn_blocking(move || file_sha256(&path))
            .await
            .map_err(|e| Error::Local(format!("hashing ended: {e}")))?
            .map_err(|e| Error::Local(format!("{}: cannot read: {e}", file.display())))?
    };
    c.s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .checksum_sha256(plan::b64(&digest))
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "s3:PutObject", &what, &e))?;
    Ok(())
}

/// ImportSnapshot of a RAW disk image in S3; returns the import task id.
pub async fn import_snapshot(
    c: &Clients,
    bucket: &str,
    key: &str,
    role_name: Option<&str>,
    content_key: &str,
) -> Result<String, Error> {
    let what = format!("s3://{bucket}/{key}");
    let out = c
        .ec2
        .import_snapshot()
        .description(format!("kv-ami import {content_key}"))
        .disk_container(
            ec2t::SnapshotDiskContainer::builder()
                .format("RAW")
                .description(format!("kv-ami {content_key}"))
                .user_bucket(ec2t::UserBucket::builder().s3_bucket(bucket).s3_key(key).build())
                .build(),
        )
        .set_role_name(role_name.map(str::to_string))
        .tag_specifications(
            ec2t::TagSpecification::builder()
                .resource_type(ec2t::ResourceType::ImportSnapshotTask)
                .tags(ec2t::Tag::builder().key(CONTENT_KEY_TAG).value(content_key).build())
                .build(),
        )
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:ImportSnapshot", &what, &e))?;
    match out.import_task_id() {
        Some(t) if !t.is_empty() => Ok(t.to_string()),
        _ => Err(Error::Local(format!(
            "{}: ec2:ImportSnapshot on {what}: no ImportTaskId in the answer",
            c.region
        ))),
    }
}

/// Bounded wait for an import task; `deleted` (a failed import) ends it at once with the
/// StatusMessage. Returns the snapshot id.
pub async fn wait_import(c: &Clients, task: &str, attempts: u32, every: Duration) -> Result<String, Error> {
    let region = c.region.as_str();
    for _ in 0..attempts {
        let out = c
            .ec2
            .describe_import_snapshot_tasks()
            .import_task_ids(task)
            .send()
            .await
            .map_err(|e| aws_err(region, "ec2:DescribeImportSnapshotTasks", task, &e))?;
        let detail = out.import_snapshot_tasks().first().and_then(|t| t.snapshot_task_detail());
        let step = plan::import_wait_step(
            detail.and_then(|d| d.status()),
            detail.and_then(|d| d.status_message()),
            detail.and_then(|d| d.snapshot_id()),
        );
        match step {
            Ok(Some(snapshot)) => return Ok(snapshot),
            Ok(None) => tokio::time::sleep(every).await,
            Err(m) => return Err(Error::Local(format!("{region}: {task}: {m}"))),
        }
    }
    Err(Error::Local(format!("{region}: import task {task} not completed after {attempts} checks")))
}

/// CreateMultipartUpload (SHA-256 checksums); returns the upload id.
pub async fn create_multipart(c: &Clients, bucket: &str, key: &str) -> Result<String, Error> {
    let what = format!("s3://{bucket}/{key}");
    let out =
        c.s3.create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| aws_err(&c.region, "s3:CreateMultipartUpload", &what, &e))?;
    out.upload_id()
        .map(str::to_string)
        .ok_or_else(|| Error::Local(format!("{}: s3:CreateMultipartUpload on {what}: no UploadId", c.region)))
}

/// Parts per multipart upload: S3's limit.
pub const MAX_PARTS: u64 = 10_000;

/// UploadPart of every `part_size` slice of `file` (4 at a time, each with its SHA-256), then
/// CompleteMultipartUpload. Returns the number of parts.
pub async fn put_multipart(
    c: &Clients,
    bucket: &str,
    key: &str,
    upload_id: &str,
    file: &Path,
    len: u64,
    part_size: u64,
) -> Result<u64, Error> {
    use futures::StreamExt;
    let what = format!("s3://{bucket}/{key}");
    let parts = len.div_ceil(part_size);
    if parts > MAX_PARTS {
        return Err(Error::Local(format!(
            "{what}: {parts} parts of {part_size} bytes exceed S3's {MAX_PARTS}"
        )));
    }
    let uploads = futures::stream::iter(0..parts).map(|i| {
        let path = file.to_path_buf();
        let what = what.clone();
        async move {
            let (start, n) = (i * part_size, part_size.min(len - i * part_size));
            let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                use std::io::{Read, Seek, SeekFrom};
                let mut f = std::fs::File::open(&path)?;
                f.seek(SeekFrom::Start(start))?;
                let mut buf = vec![0u8; n as usize];
                f.read_exact(&mut buf)?;
                Ok(buf)
            })
            .await
            .map_err(|e| Error::Local(format!("part reader ended: {e}")))?
            .map_err(|e| Error::Local(format!("{}: read of part {} failed: {e}", file.display(), i + 1)))?;
            let sum = plan::b64(&plan::block_digest(&data));
            let out = c
                .s3
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number((i + 1) as i32)
                .checksum_sha256(&sum)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| aws_err(&c.region, "s3:UploadPart", &format!("{what} part {}", i + 1), &e))?;
            Ok::<_, Error>(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number((i + 1) as i32)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .checksum_sha256(sum)
                    .build(),
            )
        }
    });
    let mut done: Vec<aws_sdk_s3::types::CompletedPart> =
        uploads.buffer_unordered(4).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
    done.sort_by_key(|p| p.part_number());
    c.s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(done)).build(),
        )
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "s3:CompleteMultipartUpload", &what, &e))?;
    Ok(parts)
}

pub fn file_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

/// DeleteObjects in batches of 1000 (the API's limit); per-key errors are reported too.
pub async fn delete_objects(c: &Clients, bucket: &str, keys: &[String]) -> Result<(), Error> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    for chunk in keys.chunks(1000) {
        let ids: Vec<ObjectIdentifier> =
            chunk.iter().filter_map(|k| ObjectIdentifier::builder().key(k).build().ok()).collect();
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| Error::Local(format!("s3:DeleteObjects request: {e}")))?;
        let what = format!("s3://{bucket}/{}", chunk.first().map(String::as_str).unwrap_or(""));
        let out =
            c.s3.delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| aws_err(&c.region, "s3:DeleteObjects", &what, &e))?;
        if let Some(err) = out.errors().first() {
            return Err(Error::Local(format!(
                "{}: s3:DeleteObjects on s3://{bucket}/{} failed: {}: {}",
                c.region,
                err.key().unwrap_or("?"),
                err.code().unwrap_or("NoErrorCode"),
                err.message().unwrap_or("")
            )));
        }
    }
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
