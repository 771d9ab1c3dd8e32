//! kv-server benchmark (prints figures; asserts nothing about speed).
//!
//! 1. Load: a 1,000,000-record snapshot (16-byte keys, 100-byte string values) in CSV and in the
//!    Avro/FlatBuffers format, each loaded by a fresh release `kv-server --data-dir`; reports the
//!    server's own load time and its resident memory against the raw key+value bytes.
//! 2. Queries: GetValues with 1, 10 and 100 keys per request at concurrency 1 and 64 over loopback
//!    gRPC (TCP), bounded by time; throughput, p50 and p99. The peer in the same run is
//!    `grpc.health.v1.Health/Check` on the same server and connection: the cost of a gRPC call that
//!    does no lookup, so the ratio shows what the store and the response building add. The client
//!    sends requests encoded before the load and does not decode the answers (it runs on the same
//!    cores, and decoding 10 map entries into prost types cost it more than the server spent), and
//!    the server's own CPU time per request is read from `/proc` around each row.
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
use kv_server::proto::grpc::health::v1::health_check_response::ServingStatus;
use kv_server::proto::grpc::health::v1::health_client::HealthClient;
use kv_server::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use kv_server::proto::kv_server::v1::v1_single_lookup_result::SingleLookupResult;
use kv_server::proto::kv_server::v1::{GetValuesRequest, GetValuesResponse};
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
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

/// utime + stime of process `pid` from `/proc/PID/stat` (clock ticks of 10 ms).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
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
            key: json_key(i).into(),
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
        println!(
            "| server | request | concurrency | requests | req/s | p50 | p99 | server CPU per request | req/s vs Health/Check |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let duration = Duration::from_secs(seconds);
        let mut ratios = Vec::new();
        // `KV_BENCH_CONCURRENCY=64` runs one concurrency; `KV_BENCH_ONLY="10 keys"` only the rows
        // whose label contains it (the Health/Check peer always runs): for profiling one row.
        let concurrencies: Vec<usize> = match std::env::var("KV_BENCH_CONCURRENCY") {
            Ok(c) => vec![c.parse().expect("KV_BENCH_CONCURRENCY: a number")],
            Err(_) => vec![1, 64],
        };
        for concurrency in concurrencies {
            let mut rows = Vec::new();
            let servers = [("baseline", base.as_ref(), baseline.as_ref()), ("this build", Some(&this), Some(&server))];
            for (name, channel, process) in servers {
                let (Some(channel), Some(process)) = (channel, process) else { continue };
                let pid = process.child.id();
                rows.push((name, query_rows(channel, move || cpu_of(pid), concurrency, duration, n, json_n).await));
            }
            for (name, figures) in &rows {
                let peer = figures[0].1.per_second;
                for (label, f, cpu_us) in figures {
                    println!(
                        "| {name} | {label} | {concurrency} | {} | {:.0} | {} us | {} us | {cpu_us:.1} us | {:.2} |",
                        f.requests,
                        f.per_second,
                        f.p50_us,
                        f.p99_us,
                        f.per_second / peer
                    );
                }
            }
            if let [(_, before), (_, after)] = &rows[..] {
                for ((label, b, b_cpu), (_, a, a_cpu)) in before.iter().zip(after) {
                    ratios.push(format!(
                        "| {label} | {concurrency} | {:.2} | {:.2} | {:.2} |",
                        a.per_second / b.per_second,
                        a.p99_us as f64 / b.p99_us.max(1) as f64,
                        a_cpu / b_cpu
                    ));
                }
            }
        }
        if !ratios.is_empty() {
            println!("\nthis build vs baseline, same run");
            println!("| request | concurrency | req/s ratio | p99 ratio | server CPU per request ratio |");
            println!("|---|---|---|---|---|");
            for r in ratios {
                println!("{r}");
            }
        }
    });
}

/// The rows for one server at one concurrency: the Health/Check peer first.
/// The client's codec: requests encoded once before the load, responses taken as bytes and not
/// decoded, so the client (on the same 2 cores) costs little and about the same for every row.
/// Every row decodes its first response and checks it.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One unary call with [`RawCodec`].
async fn raw_call(channel: &Channel, path: &'static str, body: Bytes) -> Bytes {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.unwrap().into_inner()
}

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const GET_VALUES: &str = "/kv_server.v1.KeyValueService/GetValues";

/// Each row: its label, the client's figures, the server's CPU microseconds per request.
async fn query_rows(
    channel: &Channel,
    cpu: impl Fn() -> Duration,
    concurrency: usize,
    duration: Duration,
    n: u64,
    json_n: u64,
) -> Vec<(String, common::Figures, f64)> {
    let mut rows = Vec::new();
    let cpu_per_request = |before: Duration, figures: &common::Figures| {
        (cpu() - before).as_secs_f64() * 1e6 / figures.requests.max(1) as f64
    };
    let before = cpu();
    // The peer: a call with no lookup, on the same server.
    let health = Bytes::from(HealthCheckRequest { service: String::new() }.encode_to_vec());
    let answer = raw_call(channel, HEALTH_CHECK, health.clone()).await;
    assert_eq!(HealthCheckResponse::decode(answer).unwrap().status(), ServingStatus::Serving);
    let peer_channel = channel.clone();
    let peer = run_load(concurrency, duration, move |_| {
        let (channel, body) = (peer_channel.clone(), health.clone());
        async move {
            raw_call(&channel, HEALTH_CHECK, body).await;
        }
    })
    .await;
    let peer_cpu = cpu_per_request(before, &peer);
    rows.push(("Health/Check".to_string(), peer, peer_cpu));
    let shapes: [(u64, bool); 4] = [(1, false), (10, false), (100, false), (10, true)];
    let only = std::env::var("KV_BENCH_ONLY").ok();
    for (keys, json) in shapes {
        let noun = if keys == 1 { "key" } else { "keys" };
        let label =
            if json { format!("GetValues {keys} JSON {noun}") } else { format!("GetValues {keys} {noun}") };
        if only.as_deref().is_some_and(|only| !label.contains(only)) {
            continue;
        }
        // 1,024 different requests per row, encoded before the load starts.
        let requests: Arc<Vec<Bytes>> = Arc::new(
            (0..1024u64)
                .map(|i| {
                    let joined = if json {
                        let first = (i * keys * 7919) % json_n;
                        (0..keys).map(|k| json_key((first + k) % json_n)).collect::<Vec<_>>().join(",")
                    } else {
                        let first = (i * keys * 7919) % n;
                        (0..keys).map(|k| key((first + k) % n)).collect::<Vec<_>>().join(",")
                    };
                    Bytes::from(GetValuesRequest { keys: vec![joined], ..Default::default() }.encode_to_vec())
                })
                .collect(),
        );
        let first =
            GetValuesResponse::decode(raw_call(channel, GET_VALUES, requests[0].clone()).await).unwrap();
        let expected = keys.min(if json { json_n } else { n });
        assert_eq!(first.keys.len() as u64, expected, "keys answered");
        assert!(
            first.keys.values().all(|r| matches!(r.single_lookup_result, Some(SingleLookupResult::Value(_)))),
            "every key found"
        );
        let load_channel = channel.clone();
        let before = cpu();
        let figures = run_load(concurrency, duration, move |i| {
            let (channel, body) = (load_channel.clone(), requests[(i % 1024) as usize].clone());
            async move {
                raw_call(&channel, GET_VALUES, body).await;
            }
        })
        .await;
        let server_cpu = cpu_per_request(before, &figures);
        rows.push((label, figures, server_cpu));
    }
    rows
}
