//! Pure logic of the raw upload: which blocks to send, their checksums, the aggregate checksum,
//! the retry policy and the image-wait decision. No AWS calls here, so all of it is unit-tested.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

pub const GIB: u64 = 1 << 30;

/// Volume size (GiB, rounded up) that StartSnapshot must declare for an image of `len` bytes.
pub fn volume_size_gib(len: u64) -> u64 {
    len.div_ceil(GIB).max(1)
}

/// Number of blocks of `block_size` covering `len` bytes (the last one zero-padded).
pub fn block_count(len: u64, block_size: u64) -> u64 {
    len.div_ceil(block_size)
}

pub fn is_zero(block: &[u8]) -> bool {
    // Compare in u64-sized words: the scan must stay far above disk speed (target >= 1 GiB/s).
    let words = block.chunks_exact(8);
    let rest = words.remainder();
    rest.iter().all(|&b| b == 0)
        && words.into_iter().all(|w| <[u8; 8]>::try_from(w).is_ok_and(|a| u64::from_ne_bytes(a) == 0))
}

pub fn block_digest(block: &[u8]) -> [u8; 32] {
    Sha256::digest(block).into()
}

pub fn b64(d: &[u8]) -> String {
    B64.encode(d)
}

/// The LINEAR aggregate of CompleteSnapshot: the per-block SHA-256 digests of every written block,
/// in ascending block index, concatenated, then SHA-256 of the whole, base64. (AWS's text says
/// "concatenate the checksums"; like coldsnap we concatenate the 32-byte digests, not their base64.)
pub fn linear_checksum(digests: &[(u64, [u8; 32])]) -> String {
    let mut sorted: Vec<&(u64, [u8; 32])> = digests.iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    let mut h = Sha256::new();
    for (_, d) in sorted {
        h.update(d);
    }
    b64(&h.finalize())
}

/// One non-zero block to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub index: u64,
    pub data: Vec<u8>,
    pub digest: [u8; 32],
}

/// Read `path` block by block, skipping all-zero blocks, calling `sink` with each non-zero block
/// (its index, data padded to `block_size`, SHA-256). Returns (blocks scanned, blocks kept).
/// `sink` returning false stops the scan (the receiver has gone away).
pub fn scan_blocks(
    path: &Path,
    block_size: usize,
    mut sink: impl FnMut(Block) -> bool,
) -> std::io::Result<(u64, u64)> {
    let mut f = std::io::BufReader::with_capacity(block_size.max(1 << 20), std::fs::File::open(path)?);
    let (mut scanned, mut kept) = (0u64, 0u64);
    let mut buf = vec![0u8; block_size];
    loop {
        let mut filled = 0;
        while filled < block_size {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        buf[filled..].fill(0);
        let index = scanned;
        scanned += 1;
        if !is_zero(&buf) {
            kept += 1;
            let block = Block { index, digest: block_digest(&buf), data: buf.clone() };
            if !sink(block) {
                break;
            }
        }
        if filled < block_size {
            break;
        }
    }
    Ok((scanned, kept))
}

/// Bounded retries with exponential backoff and a cap (no jitter source needed: workers retry
/// different blocks at different times anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, base: Duration::from_millis(200), max_delay: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1` after `attempt` failed (1-based), or None when the
    /// attempts are used up.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        Some(self.base.saturating_mul(factor).min(self.max_delay))
    }
}

/// Whether an error is worth retrying: throttling, server side, or no response at all.
/// `code` is the AWS error code; `status` the HTTP status when there was a response.
pub fn retryable(code: Option<&str>, status: Option<u16>) -> bool {
    match code {
        Some(
            "ThrottlingException"
            | "RequestThrottledException"
            | "RequestLimitExceeded"
            | "Throttling"
            | "InternalServerException"
            | "InternalError"
            | "ServiceUnavailable"
            | "ServiceUnavailableException",
        ) => true,
        _ => match status {
            Some(s) => s >= 500 || s == 429,
            // Timeouts and connection errors have no response.
            None => true,
        },
    }
}

/// What to do after one DescribeImages look at an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitStep {
    Done,
    Again,
    Failed(String),
}

pub fn image_wait_step(state: Option<&str>, reason: Option<&str>) -> WaitStep {
    match state {
        Some("available") => WaitStep::Done,
        Some("pending") | None => WaitStep::Again,
        Some(other) => {
            WaitStep::Failed(format!("image state {other}: {}", reason.unwrap_or("no StateReason given")))
        }
    }
}

/// What to do after one DescribeImportSnapshotTasks look at a task.
pub fn import_wait_step(
    status: Option<&str>,
    message: Option<&str>,
    snapshot: Option<&str>,
) -> Result<Option<String>, String> {
    match (status, snapshot) {
        (Some("completed"), Some(s)) if !s.is_empty() => Ok(Some(s.to_string())),
        (Some("completed"), _) => Err("import completed without a SnapshotId".into()),
        (Some(st @ ("deleting" | "deleted" | "cancelled" | "cancelling")), _) => {
            Err(format!("import task {st}: {}", message.unwrap_or("no StatusMessage given")))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(volume_size_gib(1), 1);
        assert_eq!(volume_size_gib(GIB), 1);
        assert_eq!(volume_size_gib(GIB + 1), 2);
        assert_eq!(block_count(1025, 512), 3);
        assert_eq!(block_count(1024, 512), 2);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 512]));
        assert!(is_zero(&[0u8; 13]));
        for i in [0, 7, 8, 511] {
            let mut b = [0u8; 512];
            b[i] = 1;
            assert!(!is_zero(&b), "byte {i}");
        }
        let mut odd = [0u8; 13];
        odd[12] = 9;
        assert!(!is_zero(&odd));
    }

    #[test]
    fn linear_checksum_is_sha256_of_concatenated_digests_in_index_order() {
        let a = block_digest(b"a");
        let b = block_digest(b"b");
        let mut cat = Vec::new();
        cat.extend_from_slice(&a);
        cat.extend_from_slice(&b);
        let want = b64(&Sha256::digest(&cat));
        // Order of arrival does not matter, the block index does.
        assert_eq!(linear_checksum(&[(7, b), (3, a)]), want);
        assert_ne!(linear_checksum(&[(3, b), (7, a)]), want);
        // Known vector: SHA-256 of the empty string.
        assert_eq!(linear_checksum(&[]), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        // Per-block checksum of "abc" (FIPS 180-2 vector), base64.
        assert_eq!(b64(&block_digest(b"abc")), "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
    }

    #[test]
    fn scan_skips_zero_blocks_and_pads_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img.raw");
        let mut img = vec![0u8; 512 * 4 + 100];
        img[512] = 1; // block 1
        img[512 * 4 + 99] = 2; // block 4, partial
        std::fs::write(&p, &img).unwrap();
        let mut got = Vec::new();
        let (scanned, kept) = scan_blocks(&p, 512, |b| {
            got.push(b);
            true
        })
        .unwrap();
        assert_eq!((scanned, kept), (5, 2));
        assert_eq!(got.iter().map(|b| b.index).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(got[1].data.len(), 512);
        assert_eq!(got[1].data[99], 2);
        assert!(got[1].data[100..].iter().all(|&b| b == 0));
        assert_eq!(got[0].digest, block_digest(&img[512..1024]));
    }

    #[test]
    fn retry_policy_is_bounded_and_capped() {
        let p = RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
        };
        assert_eq!(p.delay_after(1), Some(Duration::from_millis(100)));
        assert_eq!(p.delay_after(2), Some(Duration::from_millis(200)));
        assert_eq!(p.delay_after(3), Some(Duration::from_millis(250)));
        assert_eq!(p.delay_after(4), None);
        assert!(retryable(Some("ThrottlingException"), Some(400)));
        assert!(retryable(None, Some(503)));
        assert!(retryable(None, None));
        assert!(!retryable(Some("ValidationException"), Some(400)));
        assert!(!retryable(Some("AccessDeniedException"), Some(403)));
    }

    #[test]
    fn import_wait_ends_on_completed_or_deleted() {
        assert_eq!(import_wait_step(Some("active"), Some("converting"), None), Ok(None));
        assert_eq!(import_wait_step(None, None, None), Ok(None));
        assert_eq!(import_wait_step(Some("completed"), None, Some("snap-1")), Ok(Some("snap-1".into())));
        assert!(import_wait_step(Some("completed"), None, None).is_err());
        let e =
            import_wait_step(Some("deleted"), Some("ClientError: Disk validation failed"), None).unwrap_err();
        assert!(e.contains("deleted") && e.contains("Disk validation failed"), "{e}");
    }

    #[test]
    fn wait_fails_fast_with_reason() {
        assert_eq!(image_wait_step(Some("available"), None), WaitStep::Done);
        assert_eq!(image_wait_step(Some("pending"), None), WaitStep::Again);
        match image_wait_step(Some("failed"), Some("Client.InvalidSnapshot")) {
            WaitStep::Failed(m) => assert!(m.contains("failed") && m.contains("Client.InvalidSnapshot")),
            other => panic!("{other:?}"),
        }
    }
}
