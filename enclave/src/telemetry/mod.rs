//! OTLP export of metrics, spans and logs to the collector on the parent (off unless
//! `--otlp-endpoint` or `[otlp] endpoint`), on the OpenTelemetry SDK.
//!
//! [`start`] builds the three SDK pipelines over one gRPC channel: a tracer provider with a batch
//! span processor (parent-based sampling: a caller that asked for no span gets none), a meter
//! provider with a periodic reader (cumulative), and, with `--otlp-log-level`, a logger provider
//! with a batch log processor fed by the `tracing` bridge. The SDK's processors run on their own
//! threads; the request path only records into instruments and offers a finished span to a
//! bounded queue ([`layer::RequestTelemetryLayer`], a tower layer around the gRPC services, so the
//! query code never calls telemetry). A full queue drops the span (the SDK counts it and logs the
//! first drop); a failed export drops its batch and is counted here
//! (`kv_server.telemetry.spans_dropped`, `.logs_dropped`, `.exports_failed`). The collector being
//! down never fails or slows a request.
//!
//! The collector is dialed with the project's transport, so `vsock://parent:4317` reaches it
//! through a fixed vsockproxy mapping (parent vsock port 4317 -> 127.0.0.1:4317): plain HTTP/2 over
//! the stream, one long-lived connection, no SOCKS5 handshake (see docs/observability.md).
//!
//! Spans join the caller's trace when the request carries a W3C `traceparent` header (envoy's
//! OpenTelemetry tracer sends one); they carry the number of keys, never a key or a value.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{BatchLogProcessor, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use transport::Endpoint;

pub use crate::config::otlp::{DEFAULT_INTERVAL_MS, OtlpArgs, OtlpConfig, OtlpFileConfig};
use crate::loader::LoaderMetrics;
use crate::store::Store;

pub mod counters;
mod export;
pub mod layer;
pub mod logs;

pub use layer::{QueryStats, RequestTelemetryLayer};

/// Finished spans waiting for export; more are dropped (and counted by the SDK), never waited for.
pub const SPAN_QUEUE: usize = 32_768;
/// Log records waiting for export.
pub const LOG_QUEUE: usize = 4096;
/// Most spans (or log records) in one export call.
const MAX_BATCH: usize = 2048;
/// Bound of one export call (connect included): a black-holed collector costs a queue of spans,
/// not a stuck exporter thread.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Telemetry::shutdown`] waits for each pipeline's last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bounds of the request latency histogram, in milliseconds.
pub static LATENCY_BOUNDS_MS: [f64; 14] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Items dropped and export calls failed, per signal (read by the metrics below).
pub(crate) static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);
pub(crate) static LOGS_DROPPED: AtomicU64 = AtomicU64::new(0);
pub(crate) static METRIC_EXPORTS_FAILED: AtomicU64 = AtomicU64::new(0);
pub(crate) static SPAN_EXPORTS_FAILED: AtomicU64 = AtomicU64::new(0);
pub(crate) static LOG_EXPORTS_FAILED: AtomicU64 = AtomicU64::new(0);

/// The running SDK pipelines (keep it until exit, then [`Telemetry::shutdown`]).
pub struct Telemetry {
    tracers: SdkTracerProvider,
    meters: SdkMeterProvider,
    logs: Option<(SdkLoggerProvider, tracing::Level)>,
    started: SystemTime,
    endpoint: Endpoint,
    interval: Duration,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint} ({signal}): {reason}")]
pub struct StartError {
    endpoint: String,
    signal: &'static str,
    reason: String,
}

/// Starts the exporters (call once, inside the runtime: the gRPC channel spawns its worker there).
/// Installs the meter provider as the process's global one, so instruments created afterwards
/// (the loader's) export through it, and arms the request layer.
pub fn start(config: &OtlpConfig) -> Result<Telemetry, StartError> {
    let channel = channel(&config.endpoint);
    let resource = resource(config);
    let endpoint = &config.endpoint;
    let failed = |signal: &'static str| {
        move |e: opentelemetry_otlp::ExporterBuildError| StartError {
            endpoint: endpoint.to_string(),
            signal,
            reason: e.to_string(),
        }
    };

    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
        .build()
        .map_err(failed("traces"))?;
    let spans = export::Counted::new(spans, "traces", &SPAN_EXPORTS_FAILED, Some(&SPANS_DROPPED), endpoint);
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(SPAN_QUEUE)
        .with_max_export_batch_size(MAX_BATCH)
        .with_scheduled_delay(config.interval)
        .build();
    let tracers = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(spans).with_batch_config(batch).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource.clone())
        .build();

    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_channel(channel.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
        .with_temporality(Temporality::Cumulative)
        .build()
        .map_err(failed("metrics"))?;
    let metrics = export::Counted::new(metrics, "metrics", &METRIC_EXPORTS_FAILED, None, endpoint);
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics).with_interval(config.interval).build())
        .with_resource(resource.clone())
        .build();
    opentelemetry::global::set_meter_provider(meters.clone());

    let logs = match config.log_level {
        None => None,
        Some(level) => {
            let exporter = opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_channel(channel)
                .with_timeout(EXPORT_TIMEOUT)
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
                .build()
                .map_err(failed("logs"))?;
            let exporter =
                export::Counted::new(exporter, "logs", &LOG_EXPORTS_FAILED, Some(&LOGS_DROPPED), endpoint);
            let batch = opentelemetry_sdk::logs::BatchConfigBuilder::default()
                .with_max_queue_size(LOG_QUEUE)
                .with_max_export_batch_size(MAX_BATCH)
                .with_scheduled_delay(config.interval)
                .build();
            let processor = BatchLogProcessor::builder(exporter).with_batch_config(batch).build();
            let provider =
                SdkLoggerProvider::builder().with_log_processor(processor).with_resource(resource).build();
            Some((provider, level))
        }
    };

    let meter = meters.meter_with_scope(scope());
    layer::arm(tracers.tracer_with_scope(scope()), TraceContextPropagator::new(), &meter);
    Ok(Telemetry {
        tracers,
        meters,
        logs,
        started: SystemTime::now(),
        endpoint: config.endpoint.clone(),
        interval: config.interval,
    })
}

impl Telemetry {
    /// The `tracing` layer exporting kv-server's own events as OTLP logs (with `--otlp-log-level`):
    /// the SDK's bridge behind a static per-callsite filter ([`logs::filter`]).
    pub fn log_layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        let (provider, level) = self.logs.as_ref()?;
        let bridge = opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(provider);
        Some(bridge.with_filter(logs::filter(*level)))
    }

    /// Registers the gauges and counters read at each export: the store, the loader, the v2 and
    /// attestation counters, and telemetry's own drops and failures.
    pub fn observe(&self, store: Arc<Store>, loader: Arc<LoaderMetrics>) {
        tracing::info!(
            endpoint = %self.endpoint,
            interval_ms = self.interval.as_millis() as u64,
            logs = self.logs.is_some(),
            "OTLP export on"
        );
        observe(&self.meters.meter_with_scope(scope()), store, loader, self.started);
    }

    /// Exports what is queued (bounded by [`SHUTDOWN_TIMEOUT`] per pipeline) and stops the
    /// exporter threads. Call while the runtime still runs (the channel's connection lives there).
    pub fn shutdown(self) {
        let _ = self.tracers.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        let _ = self.meters.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        if let Some((logs, _)) = self.logs {
            let _ = logs.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

/// The instrumentation scope of everything kv-server exports.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("kv-server").with_version(env!("CARGO_PKG_VERSION")).build()
}

fn resource(config: &OtlpConfig) -> Resource {
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    if let Some(id) = &config.instance_id {
        attributes.push(KeyValue::new("service.instance.id", id.clone()));
    }
    if let Some(pcr0) = &config.pcr0 {
        attributes.push(KeyValue::new("aws.nitro_enclave.pcr0", pcr0.clone()));
    }
    Resource::builder_empty().with_service_name("kv-server").with_attributes(attributes).build()
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

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The observable instruments: each callback reads atomics at export time.
fn observe(meter: &Meter, store: Arc<Store>, loader: Arc<LoaderMetrics>, started: SystemTime) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let s = store.clone();
    meter
        .u64_observable_gauge("kv_server.store.keys")
        .with_description("Live keys in the store")
        .with_unit("{key}")
        .with_callback(move |o| o.observe(s.stats().live_keys, &[]))
        .build();
    let s = store.clone();
    meter
        .u64_observable_gauge("kv_server.store.tombstones")
        .with_description("Deleted keys kept as tombstones")
        .with_unit("{key}")
        .with_callback(move |o| o.observe(s.stats().tombstones, &[]))
        .build();
    let s = store.clone();
    meter
        .u64_observable_gauge("kv_server.store.bytes")
        .with_description("Bytes of keys and values held (tombstones count their key)")
        .with_unit("By")
        .with_callback(move |o| o.observe(s.stats().bytes, &[]))
        .build();
    meter
        .i64_observable_gauge("kv_server.data.last_logical_commit_time")
        .with_description("Newest logical commit time applied")
        .with_unit("1")
        .with_callback(move |o| o.observe(store.max_commit_time(), &[]))
        .build();

    type Field = fn(&LoaderMetrics) -> &AtomicU64;
    let loader_counters: [(&'static str, &'static str, &'static str, Field); 6] = [
        ("kv_server.data.files_loaded", "Data files applied", "{file}", |l| &l.files_loaded),
        ("kv_server.data.files_rejected", "Data files rejected whole", "{file}", |l| &l.files_rejected),
        ("kv_server.data.records_applied", "Records applied", "{record}", |l| &l.records_applied),
        ("kv_server.data.bytes_loaded", "Bytes of data files applied", "By", |l| &l.bytes_loaded),
        (
            "kv_server.data.files_unfetchable",
            "Data files rejected because every fetch attempt failed (also in files_rejected)",
            "{file}",
            |l| &l.files_unfetchable,
        ),
        ("kv_server.data.source_errors", "Failed listings or reads of the data source", "{error}", |l| {
            &l.source_errors
        }),
    ];
    for (name, description, unit, field) in loader_counters {
        let l = loader.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |o| o.observe(load(field(&l)), &[]))
            .build();
    }
    let l = loader.clone();
    meter
        .u64_observable_gauge("kv_server.data.files_pending")
        .with_description("Data files listed and waiting behind a file whose fetch is being retried")
        .with_unit("{file}")
        .with_callback(move |o| o.observe(load(&l.files_pending), &[]))
        .build();
    let l = loader.clone();
    meter
        .f64_observable_gauge("kv_server.data.sync_age")
        .with_description(
            "Seconds since the last poll that handled every listed data file (absent before the first)",
        )
        .with_unit("s")
        .with_callback(move |o| {
            if let Some(age) = l.sync_age(unix_nanos(SystemTime::now()) / 1_000_000) {
                o.observe(age.as_secs_f64(), &[]);
            }
        })
        .build();
    meter
        .f64_observable_gauge("kv_server.data.initial_load.duration")
        .with_description("Time the initial data load took (absent until it finished)")
        .with_unit("s")
        .with_callback(move |o| match load(&loader.initial_load_ms) {
            0 => {}
            ms => o.observe(ms as f64 / 1e3, &[]),
        })
        .build();
    meter
        .f64_observable_gauge("kv_server.uptime")
        .with_description("Seconds since telemetry started")
        .with_unit("s")
        .with_callback(move |o| o.observe(started.elapsed().unwrap_or_default().as_secs_f64(), &[]))
        .build();

    meter
        .u64_observable_counter("kv_server.v2.requests")
        .with_description("v2 calls (and key endpoint calls) by method")
        .with_unit("{request}")
        .with_callback(|o| {
            for m in counters::V2Method::ALL {
                o.observe(counters::v2_requests(m), &[KeyValue::new("rpc.method", m.name())]);
            }
        })
        .build();
    meter
        .u64_observable_counter("kv_server.v2.errors")
        .with_description(
            "v2 calls refused, by method and reason (oblivious: decryption and later reasons in aggregate only)",
        )
        .with_unit("{request}")
        .with_callback(|o| {
            for m in counters::V2Method::ALL {
                for r in counters::V2Error::ALL {
                    let n = counters::v2_errors(m, r);
                    if n > 0 {
                        o.observe(n, &[KeyValue::new("rpc.method", m.name()), KeyValue::new("reason", r.label())]);
                    }
                }
            }
        })
        .build();
    meter
        .u64_observable_counter("kv_server.attestation.refused")
        .with_description(
            "GetAttestationDocument requests refused (a caller's public key, an oversized field)",
        )
        .with_unit("{request}")
        .with_callback(|o| {
            for r in counters::AttestationRefusal::ALL {
                o.observe(counters::attestation_refusals(r), &[KeyValue::new("reason", r.label())]);
            }
        })
        .build();

    meter
        .u64_observable_counter("kv_server.telemetry.spans_dropped")
        .with_description("Spans dropped because their export failed")
        .with_unit("{span}")
        .with_callback(|o| o.observe(SPANS_DROPPED.load(Ordering::Relaxed), &[]))
        .build();
    meter
        .u64_observable_counter("kv_server.telemetry.logs_dropped")
        .with_description("Log records dropped because their export failed")
        .with_unit("{record}")
        .with_callback(|o| o.observe(LOGS_DROPPED.load(Ordering::Relaxed), &[]))
        .build();
    meter
        .u64_observable_counter("kv_server.telemetry.exports_failed")
        .with_description("OTLP export calls that failed or timed out")
        .with_unit("{call}")
        .with_callback(|o| {
            for (signal, failed) in [
                ("metrics", &METRIC_EXPORTS_FAILED),
                ("traces", &SPAN_EXPORTS_FAILED),
                ("logs", &LOG_EXPORTS_FAILED),
            ] {
                o.observe(failed.load(Ordering::Relaxed), &[KeyValue::new("signal", signal)]);
            }
        })
        .build();
}
