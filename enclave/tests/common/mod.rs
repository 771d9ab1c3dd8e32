//! Helpers shared by kv-server's integration tests: the real binary as a child process, and an
//! OTLP metrics receiver standing in for the collector.
// Each test binary uses only some of these.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use tonic::transport::{Channel, Endpoint, Uri};

pub mod aws;

pub const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// Collects the child's stderr lines in the background so a failing test can print them
/// (and the pipe never fills and stalls the child).
pub fn capture_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    logs
}

/// A running kv-server; killed on drop. Its stderr (the logs) is collected.
pub struct Server {
    pub child: Child,
    pub endpoint: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kv-server");
        let logs = capture_stderr(&mut child);
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let endpoint = first
            .trim()
            .strip_prefix("kv-server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}; logs: {:?}", logs.lock().unwrap()))
            .to_string();
        Server { child, endpoint, logs }
    }

    pub fn tcp(args: &[&str]) -> Server {
        let mut all = vec!["--listen", "tcp://127.0.0.1:0"];
        all.extend_from_slice(args);
        Server::start(&all)
    }

    pub async fn channel(&self) -> Channel {
        if let Some(path) = self.endpoint.strip_prefix("unix://") {
            let path = path.to_string();
            return Endpoint::from_static("http://kv-server.invalid")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
                .expect("connect over the Unix socket");
        }
        let address = self.endpoint.replace("tcp://", "http://");
        Endpoint::from_shared(address).unwrap().connect().await.expect("connect over TCP")
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Whether a log line containing `needle` arrives within `within` (the lines are read by a
    /// thread, so a line written just before an answer may not be here yet when it arrives).
    pub async fn log_arrives(&self, needle: &str, within: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + within;
        loop {
            if self.logs.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OTLP/gRPC metrics receiver on 127.0.0.1 (the collector's role), on the test's runtime.
#[derive(Clone, Default)]
pub struct MetricsSink {
    pub received: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl MetricsService for MetricsSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl MetricsSink {
    /// Starts the receiver; returns it and its address.
    pub async fn start() -> (MetricsSink, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = MetricsSink::default();
        let service = MetricsServiceServer::new(sink.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ =
                tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        (sink, addr)
    }

    /// The latest value of the counter `name` at the data point whose string attributes include
    /// all of `attributes` (0 when never seen).
    pub fn latest(&self, name: &str, attributes: &[(&str, &str)]) -> u64 {
        let received = self.received.lock().unwrap();
        let Some(request) = received.last() else { return 0 };
        let points = request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == name)
            .filter_map(|m| match &m.data {
                Some(metric::Data::Sum(sum)) => Some(&sum.data_points),
                _ => None,
            })
            .flatten();
        for point in points {
            let has = |key: &str, value: &str| {
                point.attributes.iter().any(|a| {
                    a.key == key
                        && matches!(
                            a.value.as_ref().and_then(|v| v.value.as_ref()),
                            Some(any_value::Value::StringValue(s)) if s == value
                        )
                })
            };
            if attributes.iter().all(|(k, v)| has(k, v)) {
                return match point.value {
                    Some(number_data_point::Value::AsInt(n)) => n.max(0) as u64,
                    _ => 0,
                };
            }
        }
        0
    }
}
