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
//!    A further `KV_BENCH_JSON_RECORDS` (default 10,000) records hold JSON objects of about 100
//!    bytes (keys `json-NNNNNNNNNNN`): the "10 JSON keys" rows answer those.
//! 3. With `KV_BENCH_BASELINE=/path/to/an/older/kv-server`, that binary is started on the same data
//!    and every query row runs against both servers, one after the other, so a change to the answer
//!    path is compared in one run ("baseline" rows, then "this build" rows, and the ratio).
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

use kv_server::data::{self, Mutation, Record, Value};
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
        Server::start_binary(Path::new(BIN), data_dir)
    }

    fn start_binary(binary: &Path, data_dir: &Path) -> Server {
        let mut child = Command::new(binary)
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

/// The JSON-valued records: about 100-byte objects, as ad metadata looks.
fn json_records(n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            key: json_key(i),
            logical_commit_time: 1,
            mutation: Mutation::Update(Value::String(format!(
                r#"{{"adRenderId":"{i:08}","price":{}.25,"tags":["sports","news"],"url":"https://ads.example/c/{i}"}}"#,
                i % 100
            ))),
        })
        .collect()
}

fn json_key(i: u64) -> String {
    format!("json-{i:011}")
}

fn main() {
    let n = env_or("KV_BENCH_RECORDS", 1_000_000);
    let json_n = env_or("KV_BENCH_JSON_RECORDS", 10_000).max(1);
    let seconds = env_or("KV_BENCH_SECONDS", 3);
    let baseline = std::env::var_os("KV_BENCH_BASELINE").map(std::path::PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut all = records(n);
    all.extend(json_records(json_n));
    let raw_bytes: u64 = all
        .iter()
        .map(|r| match &r.mutation {
            Mutation::Update(Value::String(v)) => (r.key.len() + v.len()) as u64,
            _ => r.key.len() as u64,
        })
        .sum();
    println!(
        "kv-server benchmark: {n} records, {KEY_LEN}-byte keys, {VALUE_LEN}-byte values; {json_n} JSON-object values"
    );
    println!("raw key+value bytes: {:.1} MB", raw_bytes as f64 / 1e6);
    println!("cores: {}", std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0));

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
    let (server, dir) = last_server.unwrap();
    let baseline = baseline.map(|binary| {
        let server = Server::start_binary(&binary, dir.path());
        runtime.block_on(wait_serving(&server));
        println!("baseline: {} (RSS {:.1} MB)", binary.display(), server.rss_bytes() as f64 / 1e6);
        server
    });

    runtime.block_on(async {
        let this = server.channel().await;
        let base = match &baseline {
            Some(b) => Some(b.channel().await),
            None => None,
        };
        println!(
            "\nqueries over loopback TCP gRPC, {seconds} s per row, one HTTP/2 connection per caller group"
        );
        println!("| server | request | concurrency | requests | req/s | p50 | p99 | req/s vs Health/Check |");
        println!("|---|---|---|---|---|---|---|---|");
        let duration = Duration::from_secs(seconds);
        let mut ratios = Vec::new();
        for concurrency in [1usize, 64] {
            let mut rows = Vec::new();
            for (name, channel) in [("baseline", base.as_ref()), ("this build", Some(&this))] {
                let Some(channel) = channel else { continue };
                rows.push((name, query_rows(channel, concurrency, duration, n, json_n).await));
            }
            for (name, figures) in &rows {
                let peer = figures[0].1.per_second;
                for (label, f) in figures {
                    println!(
                        "| {name} | {label} | {concurrency} | {} | {:.0} | {} us | {} us | {:.2} |",
                        f.requests,
                        f.per_second,
                        f.p50_us,
                        f.p99_us,
                        f.per_second / peer
                    );
                }
            }
            if let [(_, before), (_, after)] = &rows[..] {
                for ((label, b), (_, a)) in before.iter().zip(after) {
                    ratios.push(format!(
                        "| {label} | {concurrency} | {:.2} | {:.2} |",
                        a.per_second / b.per_second,
                        a.p99_us as f64 / b.p99_us.max(1) as f64
                    ));
                }
            }
        }
        if !ratios.is_empty() {
            println!("\nthis build vs baseline, same run");
            println!("| request | concurrency | req/s ratio | p99 ratio |");
            println!("|---|---|---|---|");
            for r in ratios {
                println!("{r}");
            }
        }
    });
}

/// The rows for one server at one concurrency: the Health/Check peer first.
async fn query_rows(
    channel: &Channel,
    concurrency: usize,
    duration: Duration,
    n: u64,
    json_n: u64,
) -> Vec<(String, common::Figures)> {
    let mut rows = Vec::new();
    // The peer: a call with no lookup, on the same server.
    let health = HealthClient::new(channel.clone());
    let peer = run_load(concurrency, duration, move |_| {
        let mut c = health.clone();
        async move {
            c.check(HealthCheckRequest { service: String::new() }).await.unwrap();
        }
    })
    .await;
    rows.push(("Health/Check".to_string(), peer));
    let shapes: [(u64, bool); 4] = [(1, false), (10, false), (100, false), (10, true)];
    for (keys, json) in shapes {
        let client = KeyValueServiceClient::new(channel.clone());
        let figures = run_load(concurrency, duration, move |i| {
            let mut c = client.clone();
            let joined = if json {
                let first = (i * keys * 7919) % json_n;
                (0..keys).map(|k| json_key((first + k) % json_n)).collect::<Vec<_>>().join(",")
            } else {
                let first = (i * keys * 7919) % n;
                (0..keys).map(|k| key((first + k) % n)).collect::<Vec<_>>().join(",")
            };
            async move {
                let response = c
                    .get_values(GetValuesRequest { keys: vec![joined], ..Default::default() })
                    .await
                    .unwrap();
                assert_eq!(response.get_ref().keys.len() as u64, keys.min(if json { json_n } else { n }));
            }
        })
        .await;
        let label =
            if json { format!("GetValues {keys} JSON keys") } else { format!("GetValues {keys} keys") };
        rows.push((label, figures));
    }
    rows
}
