//! OTLP export of metrics, spans and logs to the collector on the parent (off unless
//! `--otlp-endpoint` or `[otlp] endpoint`).
//!
//! The request path only touches atomics and a bounded queue: [`record_get_values`] bumps counters
//! and a fixed-bucket histogram, and offers one finished span to a queue with `try_send`. Three
//! background tasks export: metrics every `interval` (cumulative, read from the atomics, the store
//! and the loader counters); spans and log records in batches, sent when a batch is full or
//! `interval` after its first item, each call bounded by a timeout. A full queue or a failed
//! export drops items and counts them (`kv_server.telemetry.spans_dropped`, `.logs_dropped`,
//! `.exports_failed`); the collector being down never fails or slows a request.
//!
//! The collector is dialed with the project's transport, so `vsock://parent:4317` reaches it through a
//! fixed vsockproxy mapping (parent vsock port 4317 -> 127.0.0.1:4317): plain HTTP/2 over the
//! stream, one long-lived connection, no SOCKS5 handshake (see docs/observability.md).
//!
//! Spans join the caller's trace when the request carries a W3C `traceparent` header (envoy's
//! OpenTelemetry tracer sends one); they carry the number of keys, never a key or a value.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
#[cfg(test)]
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1 as pl;
use opentelemetry_proto::tonic::metrics::v1 as pm;
use opentelemetry_proto::tonic::resource::v1::Resource;
#[cfg(test)]
use opentelemetry_proto::tonic::trace::v1 as pt;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use transport::Endpoint;

pub use crate::config::otlp::{DEFAULT_INTERVAL_MS, OtlpArgs, OtlpConfig, OtlpFileConfig};
use crate::loader::LoaderMetrics;
use crate::store::Store;

pub mod counters;
pub mod logs;
mod wire;

use crate::histogram::Histogram;
use logs::LogRecord;

/// Finished spans waiting for export; more are dropped (and counted), never waited for.
pub const SPAN_QUEUE: usize = 8192;
/// Most spans (or log records) in one export call.
const MAX_BATCH: usize = 2048;
/// Bound of one export call (connect included): a black-holed collector costs a queue of spans,
/// not a stuck task.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bounds of the request latency histogram, in milliseconds.
pub static LATENCY_BOUNDS_MS: [f64; 14] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
const METHOD: &str = "GetValues";
const SERVICE: &str = "kv_server.v1.KeyValueService";

/// Counters of the request path: one slot per gRPC status code.
struct RequestMetrics {
    by_code: [AtomicU64; 17],
    keys_looked_up: AtomicU64,
    keys_not_found: AtomicU64,
    latency: Histogram,
    spans_dropped: AtomicU64,
    metric_exports_failed: AtomicU64,
    span_exports_failed: AtomicU64,
    log_exports_failed: AtomicU64,
}

impl RequestMetrics {
    fn new() -> RequestMetrics {
        RequestMetrics {
            by_code: std::array::from_fn(|_| AtomicU64::new(0)),
            keys_looked_up: AtomicU64::new(0),
            keys_not_found: AtomicU64::new(0),
            latency: Histogram::new(&LATENCY_BOUNDS_MS),
            spans_dropped: AtomicU64::new(0),
            metric_exports_failed: AtomicU64::new(0),
            span_exports_failed: AtomicU64::new(0),
            log_exports_failed: AtomicU64::new(0),
        }
    }
}

/// One finished request span, as queued (fixed size, no key data).
#[derive(Debug, Clone, Copy)]
struct SpanRecord {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    sampled: bool,
    start_ns: u64,
    end_ns: u64,
    keys: u64,
    keys_not_found: u64,
    code: i32,
}

struct Telemetry {
    metrics: RequestMetrics,
    spans: mpsc::Sender<SpanRecord>,
    ids: std::hash::RandomState,
    id_counter: AtomicU64,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Starts the exporter tasks (call once, inside the runtime). `logs` is the queue of
/// [`logs::channel`] when OTLP logs are on. Returns `false` if it already ran.
pub fn start(
    config: OtlpConfig,
    store: Arc<Store>,
    loader: Arc<LoaderMetrics>,
    logs: Option<mpsc::Receiver<LogRecord>>,
) -> bool {
    let (tx, rx) = mpsc::channel(SPAN_QUEUE);
    let telemetry = Telemetry {
        metrics: RequestMetrics::new(),
        spans: tx,
        ids: std::hash::RandomState::new(),
        id_counter: AtomicU64::new(1),
    };
    if TELEMETRY.set(telemetry).is_err() {
        return false;
    }
    tracing::info!(
        endpoint = %config.endpoint,
        interval_ms = config.interval.as_millis() as u64,
        logs = logs.is_some(),
        "OTLP export on"
    );
    let exporter = Exporter {
        channel: channel(&config.endpoint),
        resource: resource(&config),
        endpoint: config.endpoint.clone(),
        interval: config.interval,
    };
    tokio::spawn(metrics_loop(exporter.clone(), store, loader));
    tokio::spawn(span_loop(exporter.clone(), rx));
    if let Some(logs) = logs {
        tokio::spawn(log_loop(exporter, logs));
    }
    true
}

/// Marks the start of a request (`None`, and nothing else done, when export is off).
pub fn request_started() -> Option<Instant> {
    TELEMETRY.get().map(|_| Instant::now())
}

/// Records one GetValues call: counters, latency, and a span (parent from `traceparent`).
/// `outcome` is the keys answered and how many of them were not found, or the gRPC status code.
pub fn record_get_values(started: Option<Instant>, metadata: &MetadataMap, outcome: Result<(u64, u64), i32>) {
    let (Some(started), Some(t)) = (started, TELEMETRY.get()) else { return };
    let elapsed = started.elapsed();
    let (code, keys, not_found) = match outcome {
        Ok((keys, not_found)) => (0, keys, not_found),
        Err(code) => (code, 0, 0),
    };
    let m = &t.metrics;
    m.by_code[code.clamp(0, 16) as usize].fetch_add(1, Ordering::Relaxed);
    m.keys_looked_up.fetch_add(keys, Ordering::Relaxed);
    m.keys_not_found.fetch_add(not_found, Ordering::Relaxed);
    m.latency.record(elapsed);

    let parent = metadata.get("traceparent").and_then(|v| v.to_str().ok()).and_then(parse_traceparent);
    let end_ns = unix_nanos(SystemTime::now());
    let span = SpanRecord {
        trace_id: parent.map(|p| p.trace_id).unwrap_or_else(|| t.trace_id()),
        span_id: t.span_id(),
        parent_span_id: parent.map(|p| p.span_id),
        sampled: parent.is_none_or(|p| p.sampled),
        start_ns: end_ns.saturating_sub(elapsed.as_nanos() as u64),
        end_ns,
        keys,
        keys_not_found: not_found,
        code,
    };
    // A caller that asked not to be sampled gets no span; the metrics above still count it.
    if span.sampled && t.spans.try_send(span).is_err() {
        m.spans_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl Telemetry {
    fn next_id(&self) -> u64 {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        // Keyed by the process's random hasher keys: unpredictable and distinct per process.
        self.ids.hash_one(n).max(1)
    }

    fn trace_id(&self) -> [u8; 16] {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&self.next_id().to_be_bytes());
        id[8..].copy_from_slice(&self.next_id().to_be_bytes());
        id
    }

    fn span_id(&self) -> [u8; 8] {
        self.next_id().to_be_bytes()
    }
}

/// A W3C trace context parent (`traceparent: 00-<trace id>-<parent id>-<flags>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Parses a `traceparent` header; anything malformed is ignored (a new trace starts).
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may append more, ff is invalid.
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    hex::<1>(version)?;
    let trace_id = hex::<16>(trace)?;
    let span_id = hex::<8>(span)?;
    let [flags] = hex::<1>(flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceParent { trace_id, span_id, sampled: flags & 1 == 1 })
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

pub(crate) fn str_attr(key: &str, value: &str) -> KeyValue {
    attr(key, any_value::Value::StringValue(value.into()))
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    attr(key, any_value::Value::IntValue(value))
}

fn resource(config: &OtlpConfig) -> Resource {
    let mut attributes =
        vec![str_attr("service.name", "kv-server"), str_attr("service.version", env!("CARGO_PKG_VERSION"))];
    if let Some(id) = &config.instance_id {
        attributes.push(str_attr("service.instance.id", id));
    }
    if let Some(pcr0) = &config.pcr0 {
        attributes.push(str_attr("aws.nitro_enclave.pcr0", pcr0));
    }
    Resource { attributes, ..Default::default() }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "kv-server".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// A gRPC channel that dials the collector with the project's transport (any endpoint kind),
/// lazily: a collector that is down now is retried at the next export.
fn channel(endpoint: &Endpoint) -> tonic::transport::Channel {
    let target = endpoint.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let target = target.clone();
        async move { transport::Stream::connect(&target).await.map(hyper_util::rt::TokioIo::new) }
    });
    // The URI only names the :authority; the connector above decides where bytes go.
    tonic::transport::Endpoint::from_static("http://otel-collector")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .connect_with_connector_lazy(connector)
}

/// What every export task shares: the lazily connected channel and the resource.
#[derive(Clone)]
struct Exporter {
    channel: tonic::transport::Channel,
    resource: Resource,
    endpoint: Endpoint,
    interval: Duration,
}

/// Logs once per change between working and failing, not once per failed call.
struct ExportState {
    signal: &'static str,
    failing: bool,
}

impl ExportState {
    fn new(signal: &'static str) -> ExportState {
        ExportState { signal, failing: false }
    }

    fn update(&mut self, ok: bool, endpoint: &Endpoint) {
        if ok == self.failing {
            self.failing = !ok;
            if self.failing {
                tracing::warn!(signal = self.signal, endpoint = %endpoint, "OTLP export failing; dropped data is counted");
            } else {
                tracing::info!(signal = self.signal, endpoint = %endpoint, "OTLP export working");
            }
        }
    }
}

async fn metrics_loop(exporter: Exporter, store: Arc<Store>, loader: Arc<LoaderMetrics>) {
    let Some(t) = TELEMETRY.get() else { return };
    let mut client = MetricsServiceClient::new(exporter.channel.clone());
    let start_ns = unix_nanos(SystemTime::now());
    let mut tick = tokio::time::interval(exporter.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = ExportState::new("metrics");
    loop {
        tick.tick().await;
        let request = metrics_request(&exporter.resource, start_ns, &t.metrics, &store, &loader);
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await;
        let ok = matches!(sent, Ok(Ok(_)));
        if !ok {
            t.metrics.metric_exports_failed.fetch_add(1, Ordering::Relaxed);
        }
        state.update(ok, &exporter.endpoint);
    }
}

/// The next batch: waits for a first item, then takes more until [`MAX_BATCH`] or until
/// `linger` has passed since the first. `None` when the queue is closed and empty.
pub(crate) async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, linger: Duration) -> Option<Vec<T>> {
    let mut batch = Vec::with_capacity(64);
    if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
        return None;
    }
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < MAX_BATCH {
        let room = MAX_BATCH - batch.len();
        tokio::select! {
            n = rx.recv_many(&mut batch, room) => if n == 0 { break },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Some(batch)
}

/// Exports one queue in batches ([`next_batch`]) until it closes. `send` makes one bounded export
/// call and says whether it worked; a failed call counts in `failed_calls` and drops the batch
/// into `dropped`.
async fn batch_loop<T, F, Fut>(
    exporter: &Exporter,
    mut queue: mpsc::Receiver<T>,
    signal: &'static str,
    mut send: F,
    failed_calls: &AtomicU64,
    dropped: &AtomicU64,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut state = ExportState::new(signal);
    while let Some(batch) = next_batch(&mut queue, exporter.interval).await {
        let n = batch.len() as u64;
        let ok = send(batch).await;
        if !ok {
            failed_calls.fetch_add(1, Ordering::Relaxed);
            dropped.fetch_add(n, Ordering::Relaxed);
        }
        state.update(ok, &exporter.endpoint);
    }
}

async fn span_loop(exporter: Exporter, spans: mpsc::Receiver<SpanRecord>) {
    let Some(t) = TELEMETRY.get() else { return };
    // Spans go pre-encoded (wire.rs): same bytes as TraceServiceClient would send, built cheaper.
    let encoder = wire::SpanEncoder::new(&exporter.resource, &scope());
    let client = tonic::client::Grpc::new(exporter.channel.clone());
    let send = |batch: Vec<SpanRecord>| {
        let (mut client, request) = (client.clone(), encoder.encode(&batch));
        async move {
            let call = async {
                client.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let path = http::uri::PathAndQuery::from_static(wire::TRACE_EXPORT_PATH);
                client.unary(tonic::Request::new(request), path, wire::PreEncoded).await
            };
            matches!(tokio::time::timeout(EXPORT_TIMEOUT, call).await, Ok(Ok(_)))
        }
    };
    let m = &t.metrics;
    batch_loop(&exporter, spans, "traces", send, &m.span_exports_failed, &m.spans_dropped).await;
}

async fn log_loop(exporter: Exporter, records: mpsc::Receiver<LogRecord>) {
    let Some(t) = TELEMETRY.get() else { return };
    let client = LogsServiceClient::new(exporter.channel.clone());
    let send = |batch: Vec<LogRecord>| {
        let (mut client, request) = (client.clone(), logs_request(&exporter.resource, &batch));
        async move { matches!(tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await, Ok(Ok(_))) }
    };
    let failed = &t.metrics.log_exports_failed;
    batch_loop(&exporter, records, "logs", send, failed, &logs::LOGS_DROPPED).await;
}

fn logs_request(resource: &Resource, batch: &[LogRecord]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![pl::ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![pl::ScopeLogs {
                scope: Some(scope()),
                log_records: batch.iter().map(logs::to_otlp).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The trace request from the message types: what [`wire::SpanEncoder`] must match (its tests).
#[cfg(test)]
fn trace_request(resource: &Resource, batch: &[SpanRecord]) -> ExportTraceServiceRequest {
    let spans = batch
        .iter()
        .map(|s| {
            let mut attributes = vec![
                str_attr("rpc.system", "grpc"),
                str_attr("rpc.service", SERVICE),
                str_attr("rpc.method", METHOD),
                int_attr("rpc.grpc.status_code", i64::from(s.code)),
                int_attr("kv.keys", s.keys as i64),
            ];
            if s.code == 0 {
                attributes.push(int_attr("kv.keys_not_found", s.keys_not_found as i64));
            }
            pt::Span {
                trace_id: s.trace_id.to_vec(),
                span_id: s.span_id.to_vec(),
                parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
                flags: u32::from(s.sampled),
                name: format!("{SERVICE}/{METHOD}"),
                kind: pt::span::SpanKind::Server as i32,
                start_time_unix_nano: s.start_ns,
                end_time_unix_nano: s.end_ns,
                attributes,
                status: Some(pt::Status {
                    code: if s.code == 0 {
                        pt::status::StatusCode::Unset as i32
                    } else {
                        pt::status::StatusCode::Error as i32
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![pt::ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![pt::ScopeSpans { scope: Some(scope()), spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn point(
    attributes: Vec<KeyValue>,
    start_ns: u64,
    now_ns: u64,
    value: pm::number_data_point::Value,
) -> pm::NumberDataPoint {
    pm::NumberDataPoint {
        attributes,
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        value: Some(value),
        ..Default::default()
    }
}

fn metric(name: &str, description: &str, unit: &str, data: pm::metric::Data) -> pm::Metric {
    pm::Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    }
}

fn counter(name: &str, description: &str, unit: &str, points: Vec<pm::NumberDataPoint>) -> pm::Metric {
    metric(
        name,
        description,
        unit,
        pm::metric::Data::Sum(pm::Sum {
            data_points: points,
            aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
    )
}

fn gauge(name: &str, description: &str, unit: &str, points: Vec<pm::NumberDataPoint>) -> pm::Metric {
    metric(name, description, unit, pm::metric::Data::Gauge(pm::Gauge { data_points: points }))
}

fn metrics_request(
    resource: &Resource,
    start_ns: u64,
    m: &RequestMetrics,
    store: &Store,
    loader: &LoaderMetrics,
) -> ExportMetricsServiceRequest {
    use pm::number_data_point::Value::{AsDouble, AsInt};
    let now = unix_nanos(SystemTime::now());
    let int = |v: u64| AsInt(v.min(i64::MAX as u64) as i64);
    let single = |v: u64| vec![point(Vec::new(), start_ns, now, int(v))];
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    let requests: Vec<_> = m
        .by_code
        .iter()
        .enumerate()
        .filter(|(_, c)| load(c) > 0)
        .map(|(code, c)| {
            let attributes =
                vec![str_attr("rpc.method", METHOD), int_attr("rpc.grpc.status_code", code as i64)];
            point(attributes, start_ns, now, int(load(c)))
        })
        .collect();
    let histogram = |name: &str, description: &str, point: pm::HistogramDataPoint| {
        metric(
            name,
            description,
            "ms",
            pm::metric::Data::Histogram(pm::Histogram {
                data_points: vec![point],
                aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
            }),
        )
    };
    let stats = store.stats();
    let failed = vec![
        point(vec![str_attr("signal", "metrics")], start_ns, now, int(load(&m.metric_exports_failed))),
        point(vec![str_attr("signal", "traces")], start_ns, now, int(load(&m.span_exports_failed))),
        point(vec![str_attr("signal", "logs")], start_ns, now, int(load(&m.log_exports_failed))),
    ];
    let initial_load_ms = load(&loader.initial_load_ms);
    let v2_requests: Vec<_> = counters::V2Method::ALL
        .iter()
        .map(|m| point(vec![str_attr("rpc.method", m.name())], start_ns, now, int(counters::v2_requests(*m))))
        .collect();
    let v2_errors: Vec<_> = counters::V2Method::ALL
        .iter()
        .flat_map(|m| counters::V2Error::ALL.iter().map(move |r| (*m, *r)))
        .filter_map(|(m, r)| {
            let n = counters::v2_errors(m, r);
            (n > 0).then(|| {
                let attributes = vec![str_attr("rpc.method", m.name()), str_attr("reason", r.label())];
                point(attributes, start_ns, now, int(n))
            })
        })
        .collect();
    let refused: Vec<_> = counters::AttestationRefusal::ALL
        .iter()
        .map(|r| {
            point(vec![str_attr("reason", r.label())], start_ns, now, int(counters::attestation_refusals(*r)))
        })
        .collect();
    let metrics = vec![
        counter("kv_server.requests", "GetValues calls by gRPC status code", "{request}", requests),
        counter(
            "kv_server.keys.looked_up",
            "Keys looked up (after splitting and de-duplication)",
            "{key}",
            single(load(&m.keys_looked_up)),
        ),
        counter(
            "kv_server.keys.not_found",
            "Keys answered with NOT_FOUND",
            "{key}",
            single(load(&m.keys_not_found)),
        ),
        counter(
            "kv_server.v2.requests",
            "v2 calls (and key endpoint calls) by method",
            "{request}",
            v2_requests,
        ),
        counter(
            "kv_server.v2.errors",
            "v2 calls refused, by method and reason (oblivious: decryption and later reasons in aggregate only)",
            "{request}",
            v2_errors,
        ),
        counter(
            "kv_server.attestation.refused",
            "GetAttestationDocument requests refused (a caller's public key, an oversized field)",
            "{request}",
            refused,
        ),
        histogram(
            "kv_server.request.duration",
            "GetValues latency inside the server",
            m.latency.data_point(vec![str_attr("rpc.method", METHOD)], start_ns, now),
        ),
        gauge("kv_server.store.keys", "Live keys in the store", "{key}", single(stats.live_keys)),
        gauge(
            "kv_server.store.tombstones",
            "Deleted keys kept as tombstones",
            "{key}",
            single(stats.tombstones),
        ),
        gauge(
            "kv_server.store.bytes",
            "Bytes of keys and values held (tombstones count their key)",
            "By",
            single(stats.bytes),
        ),
        gauge(
            "kv_server.data.last_logical_commit_time",
            "Newest logical commit time applied",
            "1",
            vec![point(Vec::new(), start_ns, now, AsInt(store.max_commit_time()))],
        ),
        counter(
            "kv_server.data.files_loaded",
            "Data files applied",
            "{file}",
            single(load(&loader.files_loaded)),
        ),
        counter(
            "kv_server.data.files_rejected",
            "Data files rejected whole",
            "{file}",
            single(load(&loader.files_rejected)),
        ),
        counter(
            "kv_server.data.records_applied",
            "Records applied",
            "{record}",
            single(load(&loader.records_applied)),
        ),
        counter(
            "kv_server.data.bytes_loaded",
            "Bytes of data files applied",
            "By",
            single(load(&loader.bytes_loaded)),
        ),
        histogram(
            "kv_server.data.load.duration",
            "Time to fetch, parse and apply one data file (applied or rejected)",
            loader.file_load_duration.data_point(Vec::new(), start_ns, now),
        ),
        counter(
            "kv_server.data.files_unfetchable",
            "Data files rejected because every fetch attempt failed (also in files_rejected)",
            "{file}",
            single(load(&loader.files_unfetchable)),
        ),
        gauge(
            "kv_server.data.files_pending",
            "Data files listed and waiting behind a file whose fetch is being retried",
            "{file}",
            single(load(&loader.files_pending)),
        ),
        gauge(
            "kv_server.data.sync_age",
            "Seconds since the last poll that handled every listed data file (absent before the first)",
            "s",
            match loader.sync_age(now / 1_000_000) {
                None => Vec::new(),
                Some(age) => vec![point(Vec::new(), start_ns, now, AsDouble(age.as_secs_f64()))],
            },
        ),
        counter(
            "kv_server.data.source_errors",
            "Failed listings or reads of the data source",
            "{error}",
            single(load(&loader.source_errors)),
        ),
        counter(
            "kv_server.telemetry.spans_dropped",
            "Spans dropped: queue full or export failed",
            "{span}",
            single(load(&m.spans_dropped)),
        ),
        counter(
            "kv_server.telemetry.logs_dropped",
            "Log records dropped: queue full or export failed",
            "{record}",
            single(logs::LOGS_DROPPED.load(Ordering::Relaxed)),
        ),
        counter(
            "kv_server.telemetry.exports_failed",
            "OTLP export calls that failed or timed out",
            "{call}",
            failed,
        ),
        gauge(
            "kv_server.data.initial_load.duration",
            "Time the initial data load took (absent until it finished)",
            "s",
            if initial_load_ms == 0 {
                Vec::new()
            } else {
                vec![point(Vec::new(), start_ns, now, AsDouble(initial_load_ms as f64 / 1e3))]
            },
        ),
        gauge(
            "kv_server.uptime",
            "Seconds since telemetry started",
            "s",
            vec![point(Vec::new(), start_ns, now, AsDouble(now.saturating_sub(start_ns) as f64 / 1e9))],
        ),
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![pm::ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![pm::ScopeMetrics { scope: Some(scope()), metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let tp = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.span_id[7], 0xb7);
        assert!(tp.sampled);
        let unsampled = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some());
    }

    #[test]
    fn flags_resolve() {
        assert_eq!(OtlpArgs::default().resolve(None, None).unwrap(), None);
        let only_interval = OtlpArgs { otlp_interval_ms: Some(5), ..Default::default() };
        assert!(only_interval.resolve(None, None).unwrap_err().to_string().contains("--otlp-interval-ms"));
        let only_logs = OtlpArgs { otlp_log_level: Some("info".into()), ..Default::default() };
        assert!(only_logs.resolve(None, None).unwrap_err().to_string().contains("--otlp-log-level"));
        let bad = OtlpArgs { otlp_endpoint: Some("http://x".into()), ..Default::default() };
        assert!(bad.resolve(None, None).unwrap_err().to_string().contains("--otlp-endpoint"));
        let level = OtlpArgs {
            otlp_endpoint: Some("tcp://127.0.0.1:4317".into()),
            otlp_log_level: Some("chatty".into()),
            ..Default::default()
        };
        assert!(level.resolve(None, None).unwrap_err().to_string().contains("--otlp-log-level"));
        let pcr = OtlpArgs {
            otlp_endpoint: Some("tcp://127.0.0.1:4317".into()),
            otlp_pcr0: Some("xyz".into()),
            ..Default::default()
        };
        assert!(pcr.resolve(None, None).unwrap_err().to_string().contains("--otlp-pcr0"));
        let ok = OtlpArgs { otlp_endpoint: Some("vsock://3:4317".into()), ..Default::default() };
        let config = ok.resolve(None, None).unwrap().unwrap();
        assert_eq!(config.interval, Duration::from_millis(DEFAULT_INTERVAL_MS));
        assert_eq!(config.endpoint.to_string(), "vsock://3:4317");
        assert_eq!(config.log_level, None);
    }

    #[test]
    fn file_keys_apply_and_flags_override_them() {
        let path = std::path::Path::new("/etc/kv/config.toml");
        let file = OtlpFileConfig {
            endpoint: Some("vsock://3:4317".into()),
            interval_ms: Some(2000),
            log_level: Some("warn".into()),
            ..Default::default()
        };
        let config = OtlpArgs::default().resolve(Some(file.clone()), Some(path)).unwrap().unwrap();
        assert_eq!(config.interval, Duration::from_millis(2000));
        assert_eq!(config.log_level, Some(tracing::Level::WARN));
        let flags = OtlpArgs { otlp_interval_ms: Some(500), ..Default::default() };
        let config = flags.resolve(Some(file.clone()), Some(path)).unwrap().unwrap();
        assert_eq!(config.interval, Duration::from_millis(500));
        let bad = OtlpFileConfig { interval_ms: Some(0), ..file };
        let err = OtlpArgs::default().resolve(Some(bad), Some(path)).unwrap_err().to_string();
        assert!(err.contains("/etc/kv/config.toml key `otlp.interval_ms`"), "{err}");
        let stray = OtlpFileConfig { log_level: Some("info".into()), ..Default::default() };
        let err = OtlpArgs::default().resolve(Some(stray), Some(path)).unwrap_err().to_string();
        assert!(err.contains("`otlp.log_level`") && err.contains("needs an OTLP endpoint"), "{err}");
    }

    #[tokio::test]
    async fn batches_are_sent_when_full_or_after_the_linger() {
        let (tx, mut rx) = mpsc::channel(SPAN_QUEUE);
        for i in 0..(MAX_BATCH + 10) {
            tx.try_send(i).unwrap();
        }
        let first = next_batch(&mut rx, Duration::from_secs(60)).await.unwrap();
        assert_eq!(first.len(), MAX_BATCH, "a full batch goes at once, not after the linger");
        let started = tokio::time::Instant::now();
        let rest = next_batch(&mut rx, Duration::from_millis(50)).await.unwrap();
        assert_eq!(rest.len(), 10);
        assert!(started.elapsed() >= Duration::from_millis(50), "a partial batch waits for more");
        drop(tx);
        assert_eq!(next_batch(&mut rx, Duration::from_millis(1)).await, None);
    }

    #[test]
    fn metrics_carry_counts_and_histogram() {
        let m = RequestMetrics::new();
        m.by_code[0].store(7, Ordering::Relaxed);
        m.by_code[3].store(2, Ordering::Relaxed);
        for _ in 0..9 {
            m.latency.record(Duration::from_micros(10));
        }
        let store = Store::new();
        let config = OtlpArgs { otlp_endpoint: Some("tcp://127.0.0.1:1".into()), ..Default::default() }
            .resolve(None, None)
            .unwrap()
            .unwrap();
        let request = metrics_request(&resource(&config), 1, &m, &store, &LoaderMetrics::default());
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let requests = metrics.iter().find(|m| m.name == "kv_server.requests").unwrap();
        let Some(pm::metric::Data::Sum(sum)) = &requests.data else { panic!("sum expected") };
        assert_eq!(sum.data_points.len(), 2);
        let hist = metrics.iter().find(|m| m.name == "kv_server.request.duration").unwrap();
        let Some(pm::metric::Data::Histogram(h)) = &hist.data else { panic!("histogram expected") };
        assert_eq!(h.data_points[0].count, 9);
        assert_eq!(h.data_points[0].bucket_counts.len(), h.data_points[0].explicit_bounds.len() + 1);
    }
}
