//! The cost of OTLP telemetry on GetValues throughput (prints figures; asserts nothing about speed).
//!
//! The release kv-server on its sample data, once without and once with `--otlp-endpoint` (an
//! in-process OTLP receiver that accepts everything, export every second, OTLP logs at info),
//! alternated `KV_BENCH_ROUNDS` times; each run is `KV_BENCH_SECONDS` of GetValues (3 keys, one
//! missing) at concurrency 32 over loopback gRPC. Prints requests per second of each run and the
//! ratio on/off of the medians, with the spans (against the calls made with telemetry on), log
//! records and metric exports the receiver got. A third mode, `down`, exports to a closed port
//! (the collector is gone): serving must not slow down. `KV_BENCH_UNSAMPLED=1` sends a
//! `traceparent` that asks for no span (the cost of the metrics alone). `KV_BENCH_PEER_BIN=path`
//! adds a fourth mode, `peer`: another kv-server build with telemetry on, in the same rounds (how
//! the SDK pipeline was compared with the hand-written exporter it replaced).
//!
//! Run: `cargo bench -p kv-server --bench telemetry`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kv_server::proto::kv_server::v1::GetValuesRequest;
use kv_server::proto::kv_server::v1::key_value_service_client::KeyValueServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const CONCURRENCY: usize = 32;

#[derive(Clone, Default)]
struct Counting {
    spans: Arc<AtomicU64>,
    metric_exports: Arc<AtomicU64>,
    logs: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl LogsService for Counting {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let n: usize = request
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.logs.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Counting {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metric_exports.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let n: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

struct Server(Child, String);

impl Server {
    fn start(bin: &str, otlp: Option<&str>) -> Server {
        let mut cmd = Command::new(bin);
        cmd.args(["--sample-data", "--listen", "tcp://127.0.0.1:0"]);
        if let Some(endpoint) = otlp {
            cmd.args(["--otlp-endpoint", endpoint, "--otlp-interval-ms", "1000", "--otlp-log-level", "info"]);
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kv-server");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("read");
        let endpoint = first.trim().strip_prefix("kv-server listening on tcp://").expect("endpoint line");
        Server(child, format!("http://{endpoint}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (calls per second, calls made).
async fn requests_per_second(server: &Server, duration: Duration) -> (f64, u64) {
    let channel = tonic::transport::Endpoint::from_shared(server.1.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let unsampled = std::env::var_os("KV_BENCH_UNSAMPLED").is_some();
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut client = KeyValueServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut request = tonic::Request::new(GetValuesRequest {
                        keys: vec!["hello,example-key,missing".into()],
                        ..Default::default()
                    });
                    if unsampled {
                        // The caller asks for no span: what the metrics alone cost.
                        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
                        request.metadata_mut().insert("traceparent", tp.parse().expect("ascii"));
                    }
                    client.get_values(request).await.expect("GetValues");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    (total as f64 / started.elapsed().as_secs_f64(), total)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let seconds: u64 = std::env::var("KV_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds: usize = std::env::var("KV_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let receiver = Counting::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let collector = listener.local_addr().expect("addr");
    let services = receiver.clone();
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(services.clone()))
            .add_service(TraceServiceServer::new(services.clone()))
            .add_service(LogsServiceServer::new(services))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("receiver");
    });
    let otlp = format!("tcp://{collector}");
    // A port nobody listens on: bind, note it, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port");
    let down = format!("tcp://{closed}");
    // A peer build (e.g. an older kv-server) measured with telemetry on in the same run.
    let peer = std::env::var("KV_BENCH_PEER_BIN").ok();
    let mut modes = vec!["off", "on", "down"];
    if peer.is_some() {
        modes.push("peer");
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut calls_made = vec![0u64; modes.len()];
    let mut spans_got = vec![0u64; modes.len()];
    for round in 1..=rounds {
        for (i, mode) in modes.iter().enumerate() {
            let endpoint = match *mode {
                "on" | "peer" => Some(otlp.as_str()),
                "down" => Some(down.as_str()),
                _ => None,
            };
            let bin = if *mode == "peer" { peer.as_deref().unwrap_or(BIN) } else { BIN };
            let spans_before = receiver.spans.load(Ordering::Relaxed);
            let server = Server::start(bin, endpoint);
            let (rps, calls) = rt.block_on(requests_per_second(&server, Duration::from_secs(seconds)));
            if endpoint == Some(otlp.as_str()) {
                calls_made[i] += calls;
                // The spans of the last batch: wait two intervals before stopping the server.
                std::thread::sleep(Duration::from_millis(2500));
                spans_got[i] += receiver.spans.load(Ordering::Relaxed) - spans_before;
            }
            drop(server);
            println!("round {round} telemetry {mode:8}: {rps:9.0} GetValues/s");
            rates[i].push(rps);
        }
    }
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    let off = modes.iter().position(|m| *m == "off").map(|i| medians[i]);
    for (i, mode) in modes.iter().enumerate() {
        let ratio = off.map(|o| {
            format!(", {mode}/off = {:.3} ({:+.1} %)", medians[i] / o, (medians[i] / o - 1.0) * 100.0)
        });
        let spans = (calls_made[i] > 0)
            .then(|| format!("; receiver got {} spans of {} calls", spans_got[i], calls_made[i]));
        println!(
            "median {mode}: {:.0}/s{}{}",
            medians[i],
            ratio.unwrap_or_default(),
            spans.unwrap_or_default()
        );
    }
    println!(
        "receiver totals: {} log records, {} metric exports",
        receiver.logs.load(Ordering::Relaxed),
        receiver.metric_exports.load(Ordering::Relaxed)
    );
}
