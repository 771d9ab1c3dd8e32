//! An OTLP/gRPC receiver standing in for the OpenTelemetry collector (no collector binary can be
//! installed here): it implements the collector's MetricsService and TraceService from the
//! `opentelemetry-proto` crate (MetricsService, TraceService, LogsService) and keeps every request it gets. It runs on its own tokio runtime,
//! so [`Receiver::stop`] closes its listener and every connection at once, as a collector that
//! dies would.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

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
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
pub struct Received {
    pub metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    pub traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    pub logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
}

#[tonic::async_trait]
impl LogsService for Received {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.logs.lock().expect("lock").push(request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().expect("lock").push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().expect("lock").push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Received,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Listens on `addr` (port 0: any free port).
    pub fn start(addr: SocketAddr) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let std_listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind OTLP receiver {addr}: {e}"));
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local_addr");
        let received = Received::default();
        let services = received.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(services.clone()))
                .add_service(TraceServiceServer::new(services.clone()))
                .add_service(LogsServiceServer::new(services))
                .serve_with_incoming(incoming)
                .await
                .expect("OTLP receiver");
        });
        Receiver { addr, received, runtime: Some(runtime) }
    }

    /// Stops like a crashed collector: the listener and every connection close.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.received.metrics.lock().expect("lock").clone()
    }

    /// Every span received, with its resource's attributes.
    pub fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let traces = self.received.traces.lock().expect("lock");
        let mut out = Vec::new();
        for request in traces.iter() {
            for rs in &request.resource_spans {
                let resource = rs.resource.clone().map(|r| r.attributes).unwrap_or_default();
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (resource.clone(), s.clone())));
                }
            }
        }
        out
    }
}

impl Receiver {
    /// Every log record received, with its resource's attributes.
    pub fn logs(&self) -> Vec<(Vec<KeyValue>, LogRecord)> {
        let logs = self.received.logs.lock().expect("lock");
        let mut out = Vec::new();
        for request in logs.iter() {
            for rl in &request.resource_logs {
                let resource = rl.resource.clone().map(|r| r.attributes).unwrap_or_default();
                for sl in &rl.scope_logs {
                    out.extend(sl.log_records.iter().map(|r| (resource.clone(), r.clone())));
                }
            }
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest value of a metric's data point whose attributes include every `(key, value)` of
/// `filter` (string or int attributes), over every request received.
pub fn latest_value(
    requests: &[ExportMetricsServiceRequest],
    name: &str,
    filter: &[(&str, &str)],
) -> Option<f64> {
    let mut found = None;
    for request in requests {
        for rm in &request.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in sm.metrics.iter().filter(|m| m.name == name) {
                    if let Some(v) = value_of(m, filter) {
                        found = Some(v);
                    }
                }
            }
        }
    }
    found
}

fn value_of(m: &Metric, filter: &[(&str, &str)]) -> Option<f64> {
    let points = match m.data.as_ref()? {
        metric::Data::Sum(s) => &s.data_points,
        metric::Data::Gauge(g) => &g.data_points,
        metric::Data::Histogram(h) => {
            let p = h.data_points.iter().find(|p| matches(&p.attributes, filter))?;
            return Some(p.count as f64);
        }
        _ => return None,
    };
    let matching: Vec<_> = points.iter().filter(|p| matches(&p.attributes, filter)).collect();
    if matching.is_empty() {
        return None;
    }
    Some(
        matching
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                Some(number_data_point::Value::AsDouble(d)) => d,
                None => 0.0,
            })
            .sum(),
    )
}

fn matches(attributes: &[KeyValue], filter: &[(&str, &str)]) -> bool {
    filter.iter().all(|(k, v)| attributes.iter().any(|a| a.key == *k && attr_text(a).as_deref() == Some(*v)))
}

/// A string or int attribute as text.
pub fn attr_text(a: &KeyValue) -> Option<String> {
    match a.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a KeyValue> {
    attributes.iter().find(|a| a.key == key)
}
