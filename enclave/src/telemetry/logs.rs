//! kv-server's own log events as OTLP logs (`--otlp-log-level`), next to the console.
//!
//! A `tracing` layer turns each event at or above the level into a small record (time, level,
//! target, message, fields as text) and offers it to a bounded queue with `try_send`; a full queue
//! drops the record and counts it (`kv_server.telemetry.logs_dropped`). The exporter batches the
//! queue like spans. Events of the HTTP/2 and gRPC stack itself (`h2`, `hyper`, `tonic`, `tower`)
//! are never exported: they would describe the export's own connection and could feed back.
//! What is exported is exactly what the console shows, and kv-server never logs a key, a value or
//! a request body.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1 as pl;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Filter, Layer};

use super::{str_attr, unix_nanos};

/// Log records waiting for export; more are dropped and counted.
pub const LOG_QUEUE: usize = 4096;
/// Longest message or field value exported; longer text is cut at a character boundary.
const MAX_TEXT: usize = 2048;
const SKIPPED_TARGETS: [&str; 4] = ["h2", "hyper", "tonic", "tower"];

/// Records dropped because the queue was full or their export failed.
pub static LOGS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// One log event, as queued.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub time_ns: u64,
    pub level: Level,
    pub target: String,
    pub message: String,
    pub fields: Vec<(&'static str, String)>,
}

/// The layer feeding the export queue (install it with the console layer).
pub struct OtlpLogLayer {
    level: Level,
    queue: mpsc::Sender<LogRecord>,
}

/// The layer and the receiving end of its queue (for [`super::start`]).
pub fn channel(level: Level) -> (OtlpLogLayer, mpsc::Receiver<LogRecord>) {
    let (queue, rx) = mpsc::channel(LOG_QUEUE);
    (OtlpLogLayer { level, queue }, rx)
}

/// The layer's filter, for `.with_filter`: a static per-callsite decision, so that events the
/// layer would drop (the HTTP/2 stack's trace events on every frame) are never even built.
pub fn filter<S>(level: Level) -> impl Filter<S> {
    SKIPPED_TARGETS.iter().fold(Targets::new().with_default(LevelFilter::from_level(level)), |t, target| {
        t.with_target(*target, LevelFilter::OFF)
    })
}

fn skipped(target: &str) -> bool {
    SKIPPED_TARGETS
        .iter()
        .any(|t| target == *t || target.strip_prefix(t).is_some_and(|rest| rest.starts_with("::")))
}

impl<S: Subscriber> Layer<S> for OtlpLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Level: ERROR < WARN < INFO < DEBUG < TRACE in tracing's ordering (more verbose = greater).
        if *meta.level() > self.level || skipped(meta.target()) {
            return;
        }
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let record = LogRecord {
            time_ns: unix_nanos(std::time::SystemTime::now()),
            level: *meta.level(),
            target: meta.target().to_string(),
            message: visitor.message,
            fields: visitor.fields,
        };
        if self.queue.try_send(record).is_err() {
            LOGS_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = bounded(value.to_string());
        } else {
            self.fields.push((field.name(), bounded(value.to_string())));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        if field.name() == "message" {
            self.message = bounded(text);
        } else {
            self.fields.push((field.name(), bounded(text)));
        }
    }
}

/// OTLP severity numbers (logs data model: TRACE=1, DEBUG=5, INFO=9, WARN=13, ERROR=17).
fn severity(level: Level) -> (pl::SeverityNumber, &'static str) {
    match level {
        Level::TRACE => (pl::SeverityNumber::Trace, "TRACE"),
        Level::DEBUG => (pl::SeverityNumber::Debug, "DEBUG"),
        Level::INFO => (pl::SeverityNumber::Info, "INFO"),
        Level::WARN => (pl::SeverityNumber::Warn, "WARN"),
        Level::ERROR => (pl::SeverityNumber::Error, "ERROR"),
    }
}

/// One OTLP log record: the message as its body, the target as `code.namespace`, each field a
/// string attribute.
pub fn to_otlp(record: &LogRecord) -> pl::LogRecord {
    let (number, text) = severity(record.level);
    let mut attributes: Vec<KeyValue> = Vec::with_capacity(record.fields.len() + 1);
    attributes.push(str_attr("code.namespace", &record.target));
    attributes.extend(record.fields.iter().map(|(k, v)| str_attr(k, v)));
    pl::LogRecord {
        time_unix_nano: record.time_ns,
        observed_time_unix_nano: record.time_ns,
        severity_number: number as i32,
        severity_text: text.into(),
        body: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                record.message.clone(),
            )),
        }),
        attributes,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_at_or_above_the_level_are_queued_with_their_fields() {
        let (layer, mut rx) = channel(Level::INFO);
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter(Level::INFO)));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(file = "SNAPSHOT_0000000000000001", records = 3, "data file loaded");
            tracing::debug!("too verbose: not exported");
            tracing::warn!(target: "h2::proto", "the export's own transport: not exported");
            tracing::error!(error = %"boom", "failed");
        });
        let first = rx.try_recv().expect("the info event");
        assert_eq!(first.level, Level::INFO);
        assert_eq!(first.message, "data file loaded");
        assert_eq!(
            first.fields,
            vec![("file", "SNAPSHOT_0000000000000001".to_string()), ("records", "3".to_string())]
        );
        let second = rx.try_recv().expect("the error event");
        assert_eq!(second.level, Level::ERROR);
        assert_eq!(second.fields, vec![("error", "boom".to_string())]);
        assert!(rx.try_recv().is_err(), "debug and h2 events are not queued");

        let otlp = to_otlp(&second);
        assert_eq!(otlp.severity_number, pl::SeverityNumber::Error as i32);
        assert_eq!(otlp.severity_text, "ERROR");
        assert_eq!(otlp.attributes[0].key, "code.namespace");
        assert_eq!(otlp.attributes[1].key, "error");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (layer, _rx) = channel(Level::INFO);
        let subscriber = tracing_subscriber::registry().with(layer);
        let before = LOGS_DROPPED.load(Ordering::Relaxed);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..LOG_QUEUE + 10 {
                tracing::info!(i, "line");
            }
        });
        assert!(LOGS_DROPPED.load(Ordering::Relaxed) - before >= 10);
    }

    #[test]
    fn skipped_targets_are_whole_path_segments() {
        assert!(skipped("h2"));
        assert!(skipped("hyper::proto::h1"));
        assert!(skipped("tonic::transport"));
        assert!(!skipped("hyperloop"));
        assert!(!skipped("kv_server::loader"));
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_TEXT);
        let cut = bounded(text);
        assert!(cut.len() <= MAX_TEXT + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(crate::config::otlp::parse_level("WARN").unwrap(), Level::WARN);
        assert!(crate::config::otlp::parse_level("loud").unwrap_err().contains("loud"));
    }
}
