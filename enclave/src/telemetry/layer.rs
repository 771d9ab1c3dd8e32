//! The tower layer that records every GetValues call: request counters and the latency
//! histogram, and a server span whose parent comes from the W3C `traceparent` header (envoy's
//! tracer sends one). The query handler only leaves a [`QueryStats`] in the response's extensions;
//! the gRPC status comes from the response (a trailers-only error carries `grpc-status` in its
//! headers; an answered call has none there and is OK). Nothing here allocates per call beyond
//! the span's attribute list, and it does nothing until [`arm`] ran.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use super::LATENCY_BOUNDS_MS;

const SERVICE: &str = "kv_server.v1.KeyValueService";
const METHOD: &str = "GetValues";
const SPAN_NAME: &str = "kv_server.v1.KeyValueService/GetValues";
const GET_VALUES_PATH: &str = "/kv_server.v1.KeyValueService/GetValues";

/// What the query handler tells the layer about an answered call (a response extension).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryStats {
    pub keys: u64,
    pub not_found: u64,
}

struct Instruments {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    requests: Counter<u64>,
    keys: Counter<u64>,
    not_found: Counter<u64>,
    duration: Histogram<f64>,
}

static ARMED: OnceLock<Instruments> = OnceLock::new();

/// Creates the request instruments on `meter` and turns the layer on (once per process).
pub(super) fn arm(tracer: SdkTracer, propagator: TraceContextPropagator, meter: &Meter) {
    let instruments = Instruments {
        tracer,
        propagator,
        requests: meter
            .u64_counter("kv_server.requests")
            .with_description("GetValues calls by gRPC status code")
            .with_unit("{request}")
            .build(),
        keys: meter
            .u64_counter("kv_server.keys.looked_up")
            .with_description("Keys looked up (after splitting and de-duplication)")
            .with_unit("{key}")
            .build(),
        not_found: meter
            .u64_counter("kv_server.keys.not_found")
            .with_description("Keys answered with NOT_FOUND")
            .with_unit("{key}")
            .build(),
        duration: meter
            .f64_histogram("kv_server.request.duration")
            .with_description("GetValues latency inside the server")
            .with_unit("ms")
            .with_boundaries(LATENCY_BOUNDS_MS.to_vec())
            .build(),
    };
    let _ = ARMED.set(instruments);
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The tower layer recording GetValues calls (a no-op until [`arm`] ran).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTelemetryLayer;

impl<S> tower::Layer<S> for RequestTelemetryLayer {
    type Service = RequestTelemetry<S>;

    fn layer(&self, inner: S) -> RequestTelemetry<S> {
        RequestTelemetry { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestTelemetry<S> {
    inner: S,
}

struct Started {
    at: Instant,
    wall: SystemTime,
    parent: opentelemetry::Context,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RequestTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RecordedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = match ARMED.get() {
            Some(sdk) if request.uri().path() == GET_VALUES_PATH => Some(Started {
                at: Instant::now(),
                wall: SystemTime::now(),
                parent: sdk.propagator.extract(&Headers(request.headers())),
            }),
            _ => None,
        };
        RecordedFuture { inner: self.inner.call(request), started }
    }
}

pin_project_lite::pin_project! {
    pub struct RecordedFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
    }
}

impl<F, RB, E> Future for RecordedFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Some(started), Some(sdk), Ok(response)) = (this.started.take(), ARMED.get(), &result) {
            record(sdk, started, response);
        }
        Poll::Ready(result)
    }
}

fn record<RB>(sdk: &Instruments, started: Started, response: &http::Response<RB>) {
    let elapsed = started.at.elapsed();
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let stats = response.extensions().get::<QueryStats>().copied().unwrap_or_default();
    sdk.requests.add(1, &[KeyValue::new("rpc.method", METHOD), KeyValue::new("rpc.grpc.status_code", code)]);
    sdk.keys.add(stats.keys, &[]);
    sdk.not_found.add(stats.not_found, &[]);
    sdk.duration.record(elapsed.as_secs_f64() * 1000.0, &[KeyValue::new("rpc.method", METHOD)]);

    let mut attributes = Vec::with_capacity(6);
    attributes.extend([
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", SERVICE),
        KeyValue::new("rpc.method", METHOD),
        KeyValue::new("rpc.grpc.status_code", code),
        KeyValue::new("kv.keys", stats.keys as i64),
    ]);
    if code == 0 {
        attributes.push(KeyValue::new("kv.keys_not_found", stats.not_found as i64));
    }
    let mut span = sdk
        .tracer
        .span_builder(Cow::Borrowed(SPAN_NAME))
        .with_kind(SpanKind::Server)
        .with_start_time(started.wall)
        .with_attributes(attributes)
        .start_with_context(&sdk.tracer, &started.parent);
    if code != 0 {
        span.set_status(Status::error(""));
    }
    span.end_with_timestamp(started.wall + elapsed);
}
