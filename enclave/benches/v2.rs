//! kv-server benchmark, issue 13: encrypted v2 against plaintext v1 for the same 10-key lookups
//! (prints figures; asserts nothing about speed).
//!
//! One release `kv-server --data-dir` with 10,000 records (16-byte keys, 100-byte string values,
//! CSV), plaintext lookups on, over loopback gRPC (TCP), one HTTP/2 connection. Per row, a
//! closed loop of `concurrency` callers for a bounded time:
//! - v1: `kv_server.v1.KeyValueService/GetValues` with 10 keys;
//! - v2: `kv_server.v2.KeyValueService/ObliviousGetValues` with the same 10 keys, the client
//!   doing all a browser does per call: CBOR request (one partition, tag `keys`,
//!   acceptCompression none+gzip), framing, HPKE encryption to the key from
//!   `kv_server.v2.KeyService/GetPublicKeys` (fetched once), then decryption, unframing,
//!   decompression and decoding of the compression group, and a check that the 10 values came
//!   back (failures are counted, not fatal).
//!
//! Figures: req/s, p50, p99 and the server process's CPU time per request (utime+stime from
//! /proc/PID/stat before and after each row; the client runs in this process, not counted), and
//! v2/v1 ratios for throughput and CPU per request.
//!
//! Run: `cargo bench -p kv-server --bench v2` (env `KV_BENCH_RECORDS` [10000],
//! `KV_BENCH_SECONDS` [3, at most 60] per row).

mod common;
use common::{Figures, KEY_LEN, VALUE_LEN, env_or, key, records, run_load};

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kv_server::data;
use kv_server::kv_protocol::cbor::{self, Argument, Partition, Request as V2Request};
use kv_server::kv_protocol::keys::{PublicKey, PublicKeySet};
use kv_server::kv_protocol::{client, framing, suite};
use kv_server::proto::google::api::HttpBody;
use kv_server::proto::grpc::health::v1::HealthCheckRequest;
use kv_server::proto::grpc::health::v1::health_check_response::ServingStatus;
use kv_server::proto::grpc::health::v1::health_client::HealthClient;
use kv_server::proto::kv_server::v1::GetValuesRequest;
use kv_server::proto::kv_server::v1::key_value_service_client::KeyValueServiceClient as V1Client;
use kv_server::proto::kv_server::v2::key_service_client::KeyServiceClient;
use kv_server::proto::kv_server::v2::key_value_service_client::KeyValueServiceClient as V2Client;
use kv_server::proto::kv_server::v2::{GetPublicKeysRequest, ObliviousGetValuesRequest};
use tonic::transport::{Channel, Endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const KEYS_PER_REQUEST: u64 = 10;
/// Bound on a decompressed compression group (a 10-key answer is about 1.3 KB).
const MAX_GROUP_LEN: usize = 1 << 20;

/// The 10 keys of call `i`.
fn keys_for(i: u64, n: u64) -> Vec<String> {
    let first = (i * KEYS_PER_REQUEST * 7919) % n;
    (0..KEYS_PER_REQUEST).map(|k| key((first + k) % n)).collect()
}

struct Server {
    child: Child,
    endpoint: String,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["--listen", "tcp://127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--plaintext-lookups", "true"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kv-server");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let endpoint =
            first.trim().strip_prefix("kv-server listening on ").expect("endpoint line").to_string();
        Server { child, endpoint }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.endpoint.replace("tcp://", "http://")).unwrap().connect().await.unwrap()
    }

    /// utime + stime of the server process, in clock ticks (fields 14 and 15 of /proc/PID/stat;
    /// split after the `)` that closes the command name, which may itself hold spaces).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // fields[0] is field 3 (state), so utime (14) is fields[11] and stime (15) fields[12].
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second (sysconf(_SC_CLK_TCK), asked through `getconf` so the bench needs no
/// libc binding); 100, the value on Linux x86_64 and aarch64, if that fails.
fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

async fn wait_serving(server: &Server) {
    let started = Instant::now();
    let mut health = HealthClient::new(server.channel().await);
    loop {
        let status =
            health.check(HealthCheckRequest { service: "loadbalancer-healthcheck".into() }).await.unwrap();
        if status.into_inner().status() == ServingStatus::Serving {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "load did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One v1 call: true when all 10 keys came back.
async fn v1_call(mut client: V1Client<Channel>, keys: Vec<String>) -> bool {
    match client.get_values(GetValuesRequest { keys: vec![keys.join(",")], ..Default::default() }).await {
        Ok(response) => response.get_ref().keys.len() as u64 == KEYS_PER_REQUEST,
        Err(_) => false,
    }
}

/// One v2 call with the whole client side: true when all 10 values came back.
async fn v2_call(
    mut client: V2Client<Channel>,
    key_id: u8,
    public_key: PublicKey,
    keys: Vec<String>,
) -> bool {
    let request = V2Request {
        metadata: None,
        partitions: vec![Partition {
            id: 0,
            compression_group_id: 0,
            metadata: None,
            arguments: vec![Argument { tags: vec![cbor::tags::KEYS.into()], data: keys }],
        }],
        accept_compression: vec!["none".into(), "gzip".into()],
    };
    let framed = framing::frame_request(&cbor::encode_request(&request).unwrap()).unwrap();
    let (message, context) = client::encrypt_request(key_id, &public_key, &framed).unwrap();
    let body = HttpBody { content_type: suite::REQUEST_LABEL.into(), data: message, extensions: Vec::new() };
    let Ok(response) = client.oblivious_get_values(ObliviousGetValuesRequest { raw_body: Some(body) }).await
    else {
        return false;
    };
    let check = || -> Option<bool> {
        let plaintext = context.decrypt_response(&response.get_ref().data).ok()?;
        let (compression, payload) = framing::unframe(&plaintext).ok()?;
        let decoded = cbor::decode_response(payload).ok()?;
        let group = decoded.compression_groups.first()?;
        let outputs = group.partition_outputs(compression, MAX_GROUP_LEN).ok()?;
        let found: usize = outputs
            .iter()
            .flat_map(|p| &p.key_group_outputs)
            .map(|g| g.key_values.values().filter(|v| v.value.len() == VALUE_LEN).count())
            .sum();
        Some(found as u64 == KEYS_PER_REQUEST)
    };
    check().unwrap_or(false)
}

struct Row {
    figures: Figures,
    failures: u64,
    cpu_us_per_request: f64,
}

fn main() {
    let n = env_or("KV_BENCH_RECORDS", 10_000).max(KEYS_PER_REQUEST);
    let seconds = env_or("KV_BENCH_SECONDS", 3).clamp(1, 60);
    let ticks = clock_ticks_per_second();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!(
        "kv-server v2 vs v1: {n} records, {KEY_LEN}-byte keys, {VALUE_LEN}-byte values, \
         {KEYS_PER_REQUEST} keys per request, {seconds} s per row"
    );
    println!(
        "cores: {}, load average: {}, clock ticks/s: {ticks}",
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("SNAPSHOT_0000000000000001");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    data::write_csv(&records(n), &mut out).unwrap();
    out.flush().unwrap();
    drop(out);
    let server = Server::start(dir.path());

    runtime.block_on(async {
        wait_serving(&server).await;
        let channel = server.channel().await;
        let body = KeyServiceClient::new(channel.clone())
            .get_public_keys(GetPublicKeysRequest { nonce: String::new() })
            .await
            .expect("GetPublicKeys")
            .into_inner();
        let set: PublicKeySet = serde_json::from_slice(&body.data).expect("the key set is JSON");
        let (key_id, public_key) = set.parse_keys().expect("the key set parses")[0];
        println!("key id {key_id:02x}\n");

        // Warm-up: connections, allocator, caches (not measured).
        for i in 0..200 {
            assert!(v1_call(V1Client::new(channel.clone()), keys_for(i, n)).await, "v1 warm-up");
            assert!(
                v2_call(V2Client::new(channel.clone()), key_id, public_key, keys_for(i, n)).await,
                "v2 warm-up"
            );
        }

        println!(
            "| request | c | requests | failures | req/s | p50 | p99 | server CPU/req | v2/v1 req/s | v2/v1 CPU/req |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for concurrency in [1usize, 64] {
            let mut rows = Vec::new();
            for v2 in [false, true] {
                let failures = Arc::new(AtomicU64::new(0));
                let cpu_before = server.cpu_ticks();
                let figures = if v2 {
                    let (channel, failures) = (channel.clone(), failures.clone());
                    run_load(concurrency, Duration::from_secs(seconds), move |i| {
                        let call = v2_call(V2Client::new(channel.clone()), key_id, public_key, keys_for(i, n));
                        let failures = failures.clone();
                        async move {
                            if !call.await {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                    .await
                } else {
                    let (channel, failures) = (channel.clone(), failures.clone());
                    run_load(concurrency, Duration::from_secs(seconds), move |i| {
                        let call = v1_call(V1Client::new(channel.clone()), keys_for(i, n));
                        let failures = failures.clone();
                        async move {
                            if !call.await {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                    .await
                };
                let cpu_ticks = server.cpu_ticks() - cpu_before;
                let cpu_us_per_request =
                    cpu_ticks as f64 * 1e6 / ticks as f64 / figures.requests.max(1) as f64;
                rows.push(Row { figures, failures: failures.load(Ordering::Relaxed), cpu_us_per_request });
            }
            let (v1, v2) = (&rows[0], &rows[1]);
            for (name, row) in [("v1 GetValues", v1), ("v2 ObliviousGetValues", v2)] {
                let f = &row.figures;
                let ratios = if std::ptr::eq(row, v2) {
                    format!(
                        "{:.2} | {:.2}",
                        v2.figures.per_second / v1.figures.per_second,
                        v2.cpu_us_per_request / v1.cpu_us_per_request
                    )
                } else {
                    "1.00 | 1.00".to_string()
                };
                println!(
                    "| {name} | {concurrency} | {} | {} | {:.0} | {} us | {} us | {:.0} us | {ratios} |",
                    f.requests, row.failures, f.per_second, f.p50_us, f.p99_us, row.cpu_us_per_request
                );
            }
        }
    });
}
