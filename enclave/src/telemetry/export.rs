//! The OTLP exporters wrapped to count what failed: each failed export call is counted per signal
//! with the items it carried (the SDK drops that batch), and the change between working and
//! failing is logged once, not once per call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use transport::Endpoint;

/// An exporter whose failures are counted in `failed` (calls) and `dropped` (items).
#[derive(Debug)]
pub(super) struct Counted<E> {
    inner: E,
    signal: &'static str,
    failed: &'static AtomicU64,
    dropped: Option<&'static AtomicU64>,
    failing: Mutex<bool>,
    endpoint: Endpoint,
}

impl<E> Counted<E> {
    pub(super) fn new(
        inner: E,
        signal: &'static str,
        failed: &'static AtomicU64,
        dropped: Option<&'static AtomicU64>,
        endpoint: &Endpoint,
    ) -> Self {
        Counted { inner, signal, failed, dropped, failing: Mutex::new(false), endpoint: endpoint.clone() }
    }

    fn outcome(&self, result: OTelSdkResult, items: usize) -> OTelSdkResult {
        let ok = result.is_ok();
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Some(dropped) = self.dropped {
                dropped.fetch_add(items as u64, Ordering::Relaxed);
            }
        }
        let mut failing = self.failing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if ok == *failing {
            *failing = !ok;
            if *failing {
                tracing::warn!(signal = self.signal, endpoint = %self.endpoint, "OTLP export failing; dropped data is counted");
            } else {
                tracing::info!(signal = self.signal, endpoint = %self.endpoint, "OTLP export working");
            }
        }
        result
    }
}

impl SpanExporter for Counted<opentelemetry_otlp::SpanExporter> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.outcome(result, n)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

impl LogExporter for Counted<opentelemetry_otlp::LogExporter> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count();
        let result = self.inner.export(batch).await;
        self.outcome(result, n)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

impl PushMetricExporter for Counted<opentelemetry_otlp::MetricExporter> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.outcome(result, 0)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
