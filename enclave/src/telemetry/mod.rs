//! OTLP export of metrics and spans to the collector on the parent (off unless `--otlp-endpoint`).
//!
//! The request path only touches atomics and a bounded queue: [`record_get_values`] bumps counters
//! and a fixed-bucket histogram, and offers one finished span to a queue with `try_send`. A
//! background task exports every `--otlp-interval-ms`: cumulative metrics (read from the atomics,
//! the store and the loader counters) and the queued spans, each call bounded by a timeout. A full
//! queue or a failed export drops spans and counts them (`kv_server.telemetry.spans_dropped`,
//! `kv_server.telemetry.exports_failed`); the collector being down never fails or slows a request.
//!
//! The collector is dialed with the project's transport, so `vsock://3:4317` reaches it through a
//! fixed vsockproxy mapping (parent vsock port 4317 -> 127.0.0.1:4317): plain HTTP/2 over the
//! stream, one long-lived connection, no SOCKS5 handshake (see docs/observability.md).
//!
//! Spans join the caller's trace when the request carries a W3C `traceparent` header (envoy's
//! OpenTelemetry tracer sends one); they carry the number of keys, never a key or a value.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1 as pm;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as pt;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use transport::Endpoint;

use crate::loader::LoaderMetrics;
use crate::store::Store;

pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Finished spans waiting for export; more are dropped (and counted), never waited for.
pub const SPAN_QUEUE: usize = 8192;
/// Most spans in one export call.
const MAX_SPANS_PER_EXPORT: usize = 2048;
/// Bound of one export call (connect included): a black-holed collector costs a queue of spans,
/// not a stuck task.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bounds of the request latency histogram, in milliseconds.
pub const LATENCY_BOUNDS_MS: [f64; 14] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
const METHOD: &str = "GetValues";
const SERVICE: &str = "kv_server.v1.KeyValueService";

/// OTLP flags (`kv-server --help`).
#[derive(Debug, Args, Default, Clone)]
pub struct OtlpArgs {
    /// Collector to export OTLP metrics and spans to over gRPC: tcp://HOST:PORT, unix:///path or
    /// vsock://3:4317 (a vsockproxy mapping to the parent's collector). Off when not set.
    #[arg(long, value_name = "ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How often metrics and queued spans are exported, in milliseconds [default: 10000].
    #[arg(long, value_name = "MS")]
    pub otlp_interval_ms: Option<u64>,
    /// Resource attribute `service.instance.id` (e.g. the EC2 instance id).
    #[arg(long, value_name = "ID", env = "KV_INSTANCE_ID")]
    pub otlp_instance_id: Option<String>,
    /// Resource attribute `aws.nitro_enclave.pcr0`: the enclave image's PCR0, if the launcher knows it.
    #[arg(long, value_name = "HEX", env = "KV_PCR0")]
    pub otlp_pcr0: Option<String>,
}

/// The checked OTLP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    pub endpoint: Endpoint,
    pub interval: Duration,
    pub instance_id: Option<String>,
    pub pcr0: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct OtlpConfigError {
    setting: &'static str,
    reason: String,
}

impl OtlpArgs {
    /// `None` when export is off.
    pub fn resolve(&self) -> Result<Option<OtlpConfig>, OtlpConfigError> {
        let Some(text) = &self.otlp_endpoint else {
            if self.otlp_interval_ms.is_some() {
                return Err(OtlpConfigError {
                    setting: "--otlp-interval-ms",
                    reason: "needs --otlp-endpoint".into(),
                });
            }
            return Ok(None);
        };
        let endpoint: Endpoint = text.parse().map_err(|e: transport::EndpointError| OtlpConfigError {
            setting: "--otlp-endpoint",
            reason: e.to_string(),
        })?;
        let interval_ms = self.otlp_interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
        if interval_ms == 0 {
            return Err(OtlpConfigError {
                setting: "--otlp-interval-ms",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(pcr0) = &self.otlp_pcr0
            && (pcr0.is_empty() || !pcr0.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(OtlpConfigError {
                setting: "--otlp-pcr0",
                reason: format!("{pcr0:?} is not hexadecimal"),
            });
        }
        Ok(Some(OtlpConfig {
            endpoint,
            interval: Duration::from_millis(interval_ms),
            instance_id: self.otlp_instance_id.clone().filter(|s| !s.is_empty()),
            pcr0: self.otlp_pcr0.clone(),
        }))
    }
}

/// Counters of the request path: one slot per gRPC status code.
struct RequestMetrics {
    by_code: [AtomicU64; 17],
    keys_looked_up: AtomicU64,
    keys_not_found: AtomicU64,
    /// One count per bound of [`LATENCY_BOUNDS_MS`], plus the overflow bucket.
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    latency_sum_ns: AtomicU64,
    spans_dropped: AtomicU64,
    metric_exports_failed: AtomicU64,
    span_exports_failed: AtomicU64,
}

impl RequestMetrics {
    fn new() -> RequestMetrics {
        RequestMetrics {
            by_code: std::array::from_fn(|_| AtomicU64::new(0)),
            keys_looked_up: AtomicU64::new(0),
            keys_not_found: AtomicU64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_ns: AtomicU64::new(0),
            spans_dropped: AtomicU64::new(0),
            metric_exports_failed: AtomicU64::new(0),
            span_exports_failed: AtomicU64::new(0),
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

/// Starts the exporter task (call once, inside the runtime). Returns `false` if it already ran.
pub fn start(config: OtlpConfig, store: Arc<Store>, loader: Arc<LoaderMetrics>) -> bool {
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
    tracing::info!(endpoint = %config.endpoint, interval_ms = config.interval.as_millis() as u64, "OTLP export on");
    tokio::spawn(export_loop(config, store, loader, rx));
    true
}

/// Marks the start of a request (`None`, and nothing else done, when export is off).
pub fn request_started() -> Option<Instant> {
    TELEMETRY.get().map(|_| Instant::now())
}

/// Records one GetValues call: counters, latency, and a span (parent from `traceparent`).
pub fn record_get_values<T>(
    started: Option<Instant>,
    metadata: &MetadataMap,
    result: &Result<crate::proto::kv_server::v1::GetValuesResponse, T>,
    code_of: impl Fn(&T) -> i32,
) {
    let (Some(started), Some(t)) = (started, TELEMETRY.get()) else { return };
    let elapsed = started.elapsed();
    let (code, keys, not_found) = match result {
        Ok(response) => {
            let maps = [
                &response.keys,
                &response.render_urls,
                &response.ad_component_render_urls,
                &response.kv_internal,
                &response.per_interest_group_data,
            ];
            let keys: usize = maps.iter().map(|m| m.len()).sum();
            let not_found: usize = maps
                .iter()
                .flat_map(|m| m.values())
                .filter(|r| {
                    matches!(
                        r.single_lookup_result,
                        Some(
                            crate::proto::kv_server::v1::v1_single_lookup_result::SingleLookupResult::Status(
                                _
                            )
                        )
                    )
                })
                .count();
            (0, keys as u64, not_found as u64)
        }
        Err(e) => (code_of(e), 0, 0),
    };
    let m = &t.metrics;
    m.by_code[code.clamp(0, 16) as usize].fetch_add(1, Ordering::Relaxed);
    m.keys_looked_up.fetch_add(keys, Ordering::Relaxed);
    m.keys_not_found.fetch_add(not_found, Ordering::Relaxed);
    let ms = elapsed.as_secs_f64() * 1000.0;
    let bucket = LATENCY_BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(LATENCY_BOUNDS_MS.len());
    m.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    m.latency_sum_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);

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

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn str_attr(key: &str, value: &str) -> KeyValue {
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

async fn export_loop(
    config: OtlpConfig,
    store: Arc<Store>,
    loader: Arc<LoaderMetrics>,
    mut spans: mpsc::Receiver<SpanRecord>,
) {
    let Some(t) = TELEMETRY.get() else { return };
    let channel = channel(&config.endpoint);
    let mut metrics_client = MetricsServiceClient::new(channel.clone());
    let mut trace_client = TraceServiceClient::new(channel);
    let resource = resource(&config);
    let start_ns = unix_nanos(SystemTime::now());
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let mut ok = true;
        let mut batch = Vec::new();
        while batch.len() < MAX_SPANS_PER_EXPORT {
            match spans.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let request = trace_request(&resource, &batch);
            let sent = tokio::time::timeout(EXPORT_TIMEOUT, trace_client.export(request)).await;
            if !matches!(sent, Ok(Ok(_))) {
                ok = false;
                t.metrics.span_exports_failed.fetch_add(1, Ordering::Relaxed);
                t.metrics.spans_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        let request = metrics_request(&resource, start_ns, &t.metrics, &store, &loader);
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, metrics_client.export(request)).await;
        if !matches!(sent, Ok(Ok(_))) {
            ok = false;
            t.metrics.metric_exports_failed.fetch_add(1, Ordering::Relaxed);
        }
        // One log line per change of state, not one per failed interval.
        if ok == failing {
            failing = !ok;
            if failing {
                tracing::warn!(endpoint = %config.endpoint, "OTLP export failing; spans are dropped and counted");
            } else {
                tracing::info!(endpoint = %config.endpoint, "OTLP export working");
            }
        }
    }
}

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
    let counts: Vec<u64> = m.latency_buckets.iter().map(load).collect();
    let histogram = pm::HistogramDataPoint {
        attributes: vec![str_attr("rpc.method", METHOD)],
        start_time_unix_nano: start_ns,
        time_unix_nano: now,
        count: counts.iter().sum(),
        sum: Some(load(&m.latency_sum_ns) as f64 / 1e6),
        bucket_counts: counts,
        explicit_bounds: LATENCY_BOUNDS_MS.to_vec(),
        ..Default::default()
    };
    let stats = store.stats();
    let failed = vec![
        point(vec![str_attr("signal", "metrics")], start_ns, now, int(load(&m.metric_exports_failed))),
        point(vec![str_attr("signal", "traces")], start_ns, now, int(load(&m.span_exports_failed))),
    ];
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
        metric(
            "kv_server.request.duration",
            "GetValues latency inside the server",
            "ms",
            pm::metric::Data::Histogram(pm::Histogram {
                data_points: vec![histogram],
                aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
            }),
        ),
        gauge("kv_server.store.keys", "Live keys in the store", "{key}", single(stats.live_keys)),
        gauge(
            "kv_server.store.tombstones",
            "Deleted keys kept as tombstones",
            "{key}",
            single(stats.tombstones),
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
            "kv_server.telemetry.exports_failed",
            "OTLP export calls that failed or timed out",
            "{call}",
            failed,
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
        assert_eq!(OtlpArgs::default().resolve().unwrap(), None);
        let only_interval = OtlpArgs { otlp_interval_ms: Some(5), ..Default::default() };
        assert!(only_interval.resolve().unwrap_err().to_string().contains("--otlp-interval-ms"));
        let bad = OtlpArgs { otlp_endpoint: Some("http://x".into()), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().contains("--otlp-endpoint"));
        let pcr = OtlpArgs {
            otlp_endpoint: Some("tcp://127.0.0.1:4317".into()),
            otlp_pcr0: Some("xyz".into()),
            ..Default::default()
        };
        assert!(pcr.resolve().unwrap_err().to_string().contains("--otlp-pcr0"));
        let ok = OtlpArgs { otlp_endpoint: Some("vsock://3:4317".into()), ..Default::default() };
        let config = ok.resolve().unwrap().unwrap();
        assert_eq!(config.interval, Duration::from_millis(DEFAULT_INTERVAL_MS));
        assert_eq!(config.endpoint.to_string(), "vsock://3:4317");
    }

    #[test]
    fn metrics_carry_counts_and_histogram() {
        let m = RequestMetrics::new();
        m.by_code[0].store(7, Ordering::Relaxed);
        m.by_code[3].store(2, Ordering::Relaxed);
        m.latency_buckets[0].store(9, Ordering::Relaxed);
        let store = Store::new();
        let config = OtlpArgs { otlp_endpoint: Some("tcp://127.0.0.1:1".into()), ..Default::default() }
            .resolve()
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
