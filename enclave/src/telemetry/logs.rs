//! kv-server's own log events as OTLP logs (`--otlp-log-level`), next to the console: the
//! OpenTelemetry `tracing` bridge ([`super::Telemetry::log_layer`]) behind [`filter`].
//!
//! Events of the HTTP/2 and gRPC stack itself (`h2`, `hyper`, `tonic`, `tower`) and of the
//! OpenTelemetry crates are never exported: they would describe the export's own connection and
//! could feed back. What is exported is exactly what the console shows, and kv-server never logs a
//! key, a value or a request body.

use tracing::Level;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Filter;

const SKIPPED_TARGETS: [&str; 6] = ["h2", "hyper", "tonic", "tower", "opentelemetry", "opentelemetry_sdk"];

/// The OTLP log layer's filter, for `.with_filter`: a static per-callsite decision, so that events
/// the layer would drop (the HTTP/2 stack's trace events on every frame) are never even built.
pub fn filter<S>(level: Level) -> impl Filter<S> {
    SKIPPED_TARGETS.iter().fold(Targets::new().with_default(LevelFilter::from_level(level)), |t, target| {
        t.with_target(*target, LevelFilter::OFF)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
    use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLoggerProvider};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_at_or_above_the_level_are_exported_with_their_fields_and_the_stack_is_not() {
        let exporter = InMemoryLogExporter::default();
        let provider = SdkLoggerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let layer = OpenTelemetryTracingBridge::new(&provider).with_filter(filter(Level::INFO));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(file = "SNAPSHOT_0000000000000001", records = 3, "data file loaded");
            tracing::debug!("too verbose: not exported");
            tracing::warn!(target: "h2::proto", "the export's own transport: not exported");
            tracing::warn!(target: "opentelemetry_sdk", "the exporter's own news: not exported");
            tracing::error!(error = %"boom", "failed");
        });
        let logs = exporter.get_emitted_logs().expect("logs");
        let records: Vec<_> = logs.iter().map(|l| &l.record).collect();
        assert_eq!(records.len(), 2, "{records:?}");
        let text = |r: &opentelemetry_sdk::logs::SdkLogRecord| format!("{:?}", r.body());
        assert!(text(records[0]).contains("data file loaded"));
        assert_eq!(records[0].severity_text(), Some("INFO"));
        let fields: Vec<String> =
            records[0].attributes_iter().map(|(k, v)| format!("{}={v:?}", k.as_str())).collect();
        assert!(
            fields.iter().any(|f| f.starts_with("file=") && f.contains("SNAPSHOT_0000000000000001")),
            "{fields:?}"
        );
        assert!(fields.iter().any(|f| f.starts_with("records=") && f.contains('3')), "{fields:?}");
        assert_eq!(records[1].severity_text(), Some("ERROR"));
        assert!(text(records[1]).contains("failed"));
        assert_eq!(crate::config::otlp::parse_level("WARN").unwrap(), Level::WARN);
        assert!(crate::config::otlp::parse_level("loud").unwrap_err().contains("loud"));
    }
}
