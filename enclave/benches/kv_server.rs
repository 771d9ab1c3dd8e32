//! kv-server benchmark (prints figures; asserts nothing about speed).
//!
//! 1. Load: a 1,000,000-record snapshot (16-byte keys, 100-byte string values) in CSV and in the
//!    Avro/FlatBuffers format, each loaded by a fresh release `kv-server --data-dir`; reports the
//!    server's own load time and its resident memory against the raw key+value bytes.
//! 2. Queries: GetValues with 1, 10 and 100 keys per request at concurrency 1 and 64 over loopback
//!    gRPC (TCP), bounded by time; throughput, p50 and p99. The peer in the same run is
//!    `grpc.health.v1.Health/Check` on the same server and connection: the cost of a gRPC call that
//!    does no lookup, so the ratio shows what the store and the response building add.
//!
//! Run: `cargo bench -p kv-server --bench kv_server` (env `KV_BENCH_RECORDS`, `KV_BENCH_SECONDS`
//! shrink it).

mod common;
use common::{KEY_LEN, VALUE_LEN, env_or, key, records, run_load};

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_server::data;
use kv_server::proto::grpc::health::v1::HealthCheckRequest;
use kv_server::proto::grpc::health::v1::health_check_response::ServingStatus;
use kv_server::proto::grpc::health::v1::health_client::HealthClient;
use kv_server::proto::kv_server::v1::GetValuesRequest;
use kv_server::proto::kv_server::v1::key_value_service_client::KeyValueServiceClient;
use tonic::transport::{Channel, Endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

struct Server {
    child: Child,
    endpoint: String,
    logs: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["--listen", "tcp://127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--max-keys-per-request", "1000"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kv-server");
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let endpoint =
            first.trim().strip_prefix("kv-server listening on ").expect("endpoint line").to_string();
        Server { child, endpoint, logs }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.endpoint.replace("tcp://", "http://")).unwrap().connect().await.unwrap()
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// The server's own figure from its log line "initial data load finished elapsed_ms=N".
    fn logged_load_ms(&self) -> Option<u64> {
        let logs = self.logs.lock().unwrap();
        let line = logs.iter().find(|l| l.contains("initial data load finished"))?;
        let at = line.find("elapsed_ms=")? + "elapsed_ms=".len();
        line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_serving(server: &Server) -> Duration {
    let started = Instant::now();
    let mut health = HealthClient::new(server.channel().await);
    loop {
        let status =
            health.check(HealthCheckRequest { service: "loadbalancer-healthcheck".into() }).await.unwrap();
        if status.into_inner().status() == ServingStatus::Serving {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(120), "load did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    let n = env_or("KV_BENCH_RECORDS", 1_000_000);
    let seconds = env_or("KV_BENCH_SECONDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let raw_bytes = n * (KEY_LEN + VALUE_LEN) as u64;
    println!("kv-server benchmark: {n} records, {KEY_LEN}-byte keys, {VALUE_LEN}-byte values");
    println!("raw key+value bytes: {:.1} MB", raw_bytes as f64 / 1e6);
    println!("cores: {}", std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0));

    let all = records(n);
    let mut last_server = None;
    for format in ["csv", "avro"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("SNAPSHOT_0000000000000001");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        match format {
            "csv" => data::write_csv(&all, &mut out).unwrap(),
            _ => data::write_avro(&all, &mut out).unwrap(),
        }
        out.flush().unwrap();
        drop(out);
        let file_bytes = std::fs::metadata(&path).unwrap().len();
        let server = Server::start(dir.path());
        let until_serving = runtime.block_on(wait_serving(&server));
        std::thread::sleep(Duration::from_millis(200));
        let rss = server.rss_bytes();
        println!(
            "load {format:>4}: file {:.1} MB, server load {} ms (start to SERVING {} ms), RSS {:.1} MB = {:.2}x raw",
            file_bytes as f64 / 1e6,
            server.logged_load_ms().map_or("?".to_string(), |m| m.to_string()),
            until_serving.as_millis(),
            rss as f64 / 1e6,
            rss as f64 / raw_bytes as f64
        );
        last_server = Some((server, dir));
    }
    drop(all);
    let (server, _dir) = last_server.unwrap();

    runtime.block_on(async {
        let channel = server.channel().await;
        println!(
            "\nqueries over loopback TCP gRPC, {seconds} s per row, one HTTP/2 connection per caller group"
        );
        println!("| request | concurrency | requests | req/s | p50 | p99 | req/s vs Health/Check |");
        println!("|---|---|---|---|---|---|---|");
        for concurrency in [1usize, 64] {
            // The peer: a call with no lookup, on the same server.
            let health = HealthClient::new(channel.clone());
            let peer = run_load(concurrency, Duration::from_secs(seconds), move |_| {
                let mut c = health.clone();
                async move {
                    c.check(HealthCheckRequest { service: String::new() }).await.unwrap();
                }
            })
            .await;
            println!(
                "| Health/Check | {concurrency} | {} | {:.0} | {} us | {} us | 1.00 |",
                peer.requests, peer.per_second, peer.p50_us, peer.p99_us
            );
            for keys in [1u64, 10, 100] {
                let client = KeyValueServiceClient::new(channel.clone());
                let figures = run_load(concurrency, Duration::from_secs(seconds), move |i| {
                    let mut c = client.clone();
                    let first = (i * keys * 7919) % n;
                    let joined = (0..keys).map(|k| key((first + k) % n)).collect::<Vec<_>>().join(",");
                    async move {
                        let response = c
                            .get_values(GetValuesRequest { keys: vec![joined], ..Default::default() })
                            .await
                            .unwrap();
                        assert_eq!(response.get_ref().keys.len() as u64, keys);
                    }
                })
                .await;
                println!(
                    "| GetValues {keys} keys | {concurrency} | {} | {:.0} | {} us | {} us | {:.2} |",
                    figures.requests,
                    figures.per_second,
                    figures.p50_us,
                    figures.p99_us,
                    figures.per_second / peer.per_second
                );
            }
        }
    });
}
