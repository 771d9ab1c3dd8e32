//! The EBS direct APIs: a raw image becomes a completed snapshot (StartSnapshot, PutSnapshotBlock
//! by N workers with bounded retries, CompleteSnapshot with the LINEAR checksum), and a snapshot
//! is read back and compared with the image (ListSnapshotBlocks, GetSnapshotBlock). What is
//! decided (block split, zero skip, retry policy, checksums) comes from `plan`, tested without AWS.

use crate::aws::{AwsError, Clients};
use crate::plan::{self, Block, RetryPolicy};
use crate::spec::CONTENT_KEY_TAG;
use aws_sdk_ebs::error::ProvideErrorMetadata;
use aws_sdk_ebs::primitives::ByteStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An EBS call failed.
    #[error(transparent)]
    Call(#[from] AwsError),
    /// StartSnapshot answered with a block size the upload cannot use.
    #[error("{region}: ebs:StartSnapshot on {snapshot_id}: unusable BlockSize {block_size}")]
    BlockSize { region: String, snapshot_id: String, block_size: u64 },
    /// The image has more blocks than a block index can name.
    #[error("{}: too many blocks of {block_size} bytes", path.display())]
    TooManyBlocks { path: PathBuf, block_size: u64 },
    /// The image could not be read.
    #[error("{}: read failed: {cause}", path.display())]
    Read { path: PathBuf, cause: std::io::Error },
    /// A task of the upload (reader, worker, counter) ended abnormally.
    #[error("{region}: {snapshot_id}: {task} ended: {cause}")]
    Task { region: String, snapshot_id: String, task: &'static str, cause: tokio::task::JoinError },
    /// The blocks read and the blocks in the snapshot do not add up.
    #[error("{region}: {snapshot_id}: {read} blocks read but {in_snapshot} in the snapshot")]
    Count { region: String, snapshot_id: String, read: u64, in_snapshot: u64 },
    /// ListSnapshotBlocks gave no block size.
    #[error("{region}: {snapshot_id}: ListSnapshotBlocks gave no BlockSize")]
    NoBlockSize { region: String, snapshot_id: String },
    /// The snapshot's blocks are not the image's non-zero blocks.
    #[error("{region}: {snapshot_id}: snapshot holds blocks {got:?}, image has non-zero blocks {expected:?}")]
    Blocks { region: String, snapshot_id: String, got: Vec<i32>, expected: Vec<i32> },
    /// A block read back differs from the image (or its body could not be read).
    #[error("{region}: {snapshot_id} block {index}: {problem}")]
    BlockDiffers { region: String, snapshot_id: String, index: i32, problem: String },
}

crate::aws::call_code!(Error);

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
                .map_err(|e| {
                    AwsError::from_sdk(region, "ebs:StartSnapshot", &image.display().to_string(), &e)
                })?;
            let snapshot_id = started.snapshot_id().unwrap_or_default().to_string();
            let block_size = started.block_size().unwrap_or(0);
            if let Some(o) = &opts.observer {
                o.started(&snapshot_id, block_size.max(0) as u64, gib);
            }
            (snapshot_id, block_size.max(0) as u64, Default::default())
        }
    };
    if block_size == 0 || block_size > (16 << 20) {
        return Err(Error::BlockSize { region: region.into(), snapshot_id, block_size });
    }
    let total_blocks = plan::block_count(image_len, block_size);
    if total_blocks > i32::MAX as u64 {
        return Err(Error::TooManyBlocks { path: image.into(), block_size });
    }
    // The bar needs the number of blocks to put: a local count first (zero test + hash, GiB/s).
    let to_put = if opts.progress_bar {
        let path = image.to_path_buf();
        let bs = block_size as usize;
        let (_, kept) = tokio::task::spawn_blocking(move || plan::scan_blocks(&path, bs, |_| true))
            .await
            .map_err(|cause| task_err(region, &snapshot_id, "image count", cause))?
            .map_err(|cause| Error::Read { path: image.into(), cause })?;
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
                failed.get_or_insert(Error::Call(e));
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                set.abort_all();
                failed.get_or_insert(task_err(region, &snapshot_id, "upload worker", e));
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
        .map_err(|cause| task_err(region, &snapshot_id, "image reader", cause))?
        .map_err(|cause| Error::Read { path: image.into(), cause })?;
    let put = digests.len() as u64;
    digests.extend(skipped);
    if kept != digests.len() as u64 {
        return Err(Error::Count {
            region: region.into(),
            snapshot_id,
            read: kept,
            in_snapshot: digests.len() as u64,
        });
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
        .map_err(|e| AwsError::from_sdk(region, "ebs:CompleteSnapshot", &snapshot_id, &e))?;
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
                        return Err(AwsError::from_sdk(region, "ebs:PutSnapshotBlock", &what, &e));
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
    let data = std::fs::read(image).map_err(|cause| Error::Read { path: image.into(), cause })?;
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
            .map_err(|e| AwsError::from_sdk(region, "ebs:ListSnapshotBlocks", snapshot_id, &e))?;
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
        return Err(Error::NoBlockSize { region: region.into(), snapshot_id: snapshot_id.into() });
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
        return Err(Error::Blocks { region: region.into(), snapshot_id: snapshot_id.into(), got, expected });
    }
    for (index, token) in &listed {
        let differs = |problem: String| Error::BlockDiffers {
            region: region.into(),
            snapshot_id: snapshot_id.into(),
            index: *index,
            problem,
        };
        let out = c
            .ebs
            .get_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(*index)
            .block_token(token)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "ebs:GetSnapshotBlock", snapshot_id, &e))?;
        let sum = out.checksum().map(str::to_string);
        let bytes = out.block_data.collect().await.map_err(|e| differs(format!("body: {e}")))?.into_bytes();
        let start = *index as usize * block_size as usize;
        let mut want = data[start..(start + block_size as usize).min(data.len())].to_vec();
        want.resize(block_size as usize, 0);
        if bytes.as_ref() != want.as_slice() {
            return Err(differs("data differs from the image".into()));
        }
        if let Some(sum) = sum
            && sum != plan::b64(&plan::block_digest(&want))
        {
            return Err(differs(format!("checksum {sum} differs")));
        }
    }
    Ok(listed.len() as u64)
}

fn task_err(region: &str, snapshot_id: &str, task: &'static str, cause: tokio::task::JoinError) -> Error {
    Error::Task { region: region.into(), snapshot_id: snapshot_id.into(), task, cause }
}
