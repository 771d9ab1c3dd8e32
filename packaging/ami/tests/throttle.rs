//! Throttling cannot be provoked from moto_server, so this test talks to a test double named for
//! what it is: `FakeEbsThrottling`, a minimal HTTP/1.1 EBS direct endpoint on loopback that answers
//! the first PutSnapshotBlock requests with ThrottlingException and records what the client sent
//! (block data, CompleteSnapshot's ChangedBlocksCount and LINEAR checksum headers, which moto
//! does not check).

mod common;

use kv_ami::aws::{Clients, Target};
use kv_ami::ebs;
use kv_ami::plan::{self, RetryPolicy};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Seen {
    throttle_left: u32,
    fail_with: Option<&'static str>,
    blocks: BTreeMap<u64, Vec<u8>>,
    complete: Option<BTreeMap<String, String>>,
}

struct FakeEbsThrottling {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

impl FakeEbsThrottling {
    fn start(throttle: u32, fail_with: Option<&'static str>) -> FakeEbsThrottling {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen { throttle_left: throttle, fail_with, ..Default::default() }));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        FakeEbsThrottling { url, seen }
    }
}

fn serve(conn: TcpStream, seen: &Mutex<Seen>) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if headers.get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        let (status, extra, reply) = answer(&method, &path, &headers, body, seen);
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n",
            reply.len()
        );
        w.write_all(head.as_bytes()).unwrap();
        w.write_all(reply.as_bytes()).unwrap();
    }
}

fn answer(
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: Vec<u8>,
    seen: &Mutex<Seen>,
) -> (&'static str, String, String) {
    let mut s = seen.lock().unwrap();
    let segs: Vec<&str> = path.split('?').next().unwrap_or("").trim_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("POST", ["snapshots"]) => (
            "201 Created",
            String::new(),
            r#"{"SnapshotId":"snap-0fake","BlockSize":512,"Status":"pending","VolumeSize":1}"#.into(),
        ),
        ("PUT", ["snapshots", _, "blocks", idx]) => {
            if s.throttle_left > 0 {
                s.throttle_left -= 1;
                return (
                    "400 Bad Request",
                    "x-amzn-errortype: ThrottlingException\r\n".into(),
                    r#"{"message":"Rate exceeded"}"#.into(),
                );
            }
            if let Some(code) = s.fail_with {
                return (
                    "400 Bad Request",
                    format!("x-amzn-errortype: {code}\r\n"),
                    r#"{"message":"no"}"#.into(),
                );
            }
            let sum = headers.get("x-amz-checksum").cloned().unwrap_or_default();
            assert_eq!(sum, plan::b64(&plan::block_digest(&body)), "per-block checksum header");
            s.blocks.insert(idx.parse().unwrap(), body);
            (
                "201 Created",
                format!("x-amz-checksum: {sum}\r\nx-amz-checksum-algorithm: SHA256\r\n"),
                "{}".into(),
            )
        }
        ("POST", ["snapshots", "completion", _]) => {
            s.complete = Some(headers.clone());
            ("202 Accepted", String::new(), r#"{"Status":"completed"}"#.into())
        }
        _ => ("404 Not Found", "x-amzn-errortype: ResourceNotFoundException\r\n".into(), "{}".into()),
    }
}

fn target(url: &str) -> Target {
    Target {
        endpoint_url: Some(url.to_string()),
        static_credentials: Some(("t".into(), "t".into())),
        ..Default::default()
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy { max_attempts: 4, base: Duration::from_millis(5), max_delay: Duration::from_millis(20) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_blocks_are_retried_and_complete_snapshot_carries_the_linear_checksum() {
    let fake = FakeEbsThrottling::start(3, None);
    let dir = tempfile::tempdir().unwrap();
    let image = common::sparse_image(dir.path(), 4096, &[10, 1500, 4000]);
    let bytes = std::fs::read(&image).unwrap();
    let c = Clients::new("us-east-1", &target(&fake.url)).await;
    // One worker: the three throttles hit the first block three times, within 4 attempts.
    let up = ebs::upload(&c, &image, 4096, "k", 1, fast_retry()).await.unwrap();
    assert_eq!(up.retries, 3);
    assert_eq!(up.blocks_written, 3);
    let s = fake.seen.lock().unwrap();
    assert_eq!(s.blocks.keys().copied().collect::<Vec<_>>(), vec![0, 2, 7]);
    let mut digests = Vec::new();
    for (i, data) in &s.blocks {
        assert_eq!(data.as_slice(), &bytes[*i as usize * 512..(*i as usize + 1) * 512]);
        digests.push((*i, plan::block_digest(data)));
    }
    let h = s.complete.as_ref().expect("CompleteSnapshot was called");
    assert_eq!(h["x-amz-changedblockscount"], "3");
    assert_eq!(h["x-amz-checksum"], plan::linear_checksum(&digests));
    assert_eq!(h["x-amz-checksum"], up.checksum);
    assert_eq!(h["x-amz-checksum-algorithm"], "SHA256");
    assert_eq!(h["x-amz-checksum-aggregation-method"], "LINEAR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_and_permanent_errors_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let image = common::sparse_image(dir.path(), 2048, &[10]);

    let fake = FakeEbsThrottling::start(100, None);
    let c = Clients::new("us-east-1", &target(&fake.url)).await;
    let e = ebs::upload(&c, &image, 2048, "k", 1, fast_retry()).await.unwrap_err().to_string();
    assert!(e.contains("us-east-1") && e.contains("snap-0fake block 0 (attempt 4)"), "{e}");
    assert!(e.contains("ThrottlingException"), "{e}");
    assert_eq!(fake.seen.lock().unwrap().throttle_left, 96, "exactly 4 attempts");
    assert!(fake.seen.lock().unwrap().complete.is_none(), "no CompleteSnapshot after a failed block");

    let fake = FakeEbsThrottling::start(0, Some("ValidationException"));
    let c = Clients::new("us-east-1", &target(&fake.url)).await;
    let e = ebs::upload(&c, &image, 2048, "k", 1, fast_retry()).await.unwrap_err().to_string();
    assert!(e.contains("(attempt 1)") && e.contains("ValidationException"), "{e}");
}
