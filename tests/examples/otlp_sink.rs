//! A test double of the OpenTelemetry collector for benchmarks (no collector binary can be
//! installed here): an OTLP/gRPC server that accepts trace, metric and log exports, counts what
//! they carry and keeps nothing, so a long run does not grow. `scripts/bench-e2e.sh` runs it on
//! the collector's port so that traced requests pay for a real export (serialising the spans and
//! sending them over gRPC), as they do against the collector on an instance.
//!
//! Usage: `otlp_sink ADDR` (e.g. `127.0.0.1:4317`). Prints `listening ADDR` once bound, and the
//! counts on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
use tokio::signal::unix::{SignalKind, signal};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
    metric_exports: AtomicU64,
    log_records: AtomicU64,
}

#[derive(Clone, Default)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.spans.fetch_add(spans as u64, Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.metric_exports.fetch_add(1, Relaxed);
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let records: usize = request
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.0.log_records.fetch_add(records as u64, Relaxed);
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .ok_or("usage: otlp_sink ADDR")?
        .parse()
        .map_err(|e| format!("otlp_sink: ADDR: {e}"))?;
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("otlp_sink: bind {addr}: {e}"))?;
    println!("listening {}", listener.local_addr()?);
    let sink = Sink::default();
    let counts = sink.0.clone();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .add_service(MetricsServiceServer::new(sink.clone()))
        .add_service(LogsServiceServer::new(sink))
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await?;
    println!(
        "received spans {} metric exports {} log records {}",
        counts.spans.load(Relaxed),
        counts.metric_exports.load(Relaxed),
        counts.log_records.load(Relaxed)
    );
    Ok(())
}
