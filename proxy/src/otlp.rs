//! `[otlp]`: the series served at `/metrics`, also pushed over OTLP/gRPC to a collector.
//!
//! A periodic task renders the same text the admin endpoint serves and converts it (counters to
//! cumulative monotonic sums, gauges to gauges, `_bucket`/`_sum`/`_count` to histograms), so the
//! two views can never disagree. It runs beside the data path and touches only the metrics'
//! atomics; each export is bounded by a timeout, and a failed one is counted and logged once per
//! change of state. The collector being down never affects forwarding.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1 as pm;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::watch;

use crate::config::OtlpConfig;
use crate::server::Shared;

const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Failed export calls, for the log and the tests.
pub static EXPORTS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Exports every `interval_ms` until `stop` turns true.
pub async fn run(config: OtlpConfig, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let target = config.endpoint.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let target = target.clone();
        async move { transport::Stream::connect(&target).await.map(hyper_util::rt::TokioIo::new) }
    });
    // The URI only names the :authority; the connector decides where the bytes go.
    let channel = tonic::transport::Endpoint::from_static("http://otel-collector")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .connect_with_connector_lazy(connector);
    let mut client = MetricsServiceClient::new(channel);
    let start_ns = unix_nanos();
    let resource = Resource {
        attributes: vec![
            str_attr("service.name", "vsockproxy"),
            str_attr("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    };
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let text = shared.metrics.render(&shared.global, shared.dns_cache_stats());
        let metrics = from_prometheus_text(&text, start_ns, unix_nanos());
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![pm::ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![pm::ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "vsockproxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let ok = matches!(tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await, Ok(Ok(_)));
        if !ok {
            EXPORTS_FAILED.fetch_add(1, Ordering::Relaxed);
        }
        if ok == failing {
            failing = !ok;
            if failing {
                tracing::warn!(endpoint = %config.endpoint, "OTLP metrics export failing");
            } else {
                tracing::info!(endpoint = %config.endpoint, "OTLP metrics export working");
            }
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn str_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// Label pairs of one series, in text order.
type Labels = Vec<(String, String)>;

/// One sample line: `name{k="v",...} value`.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

/// `k="v",k2="v2"` with the exposition format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> Option<Labels> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((key.trim_start_matches(',').to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

#[derive(Default)]
struct HistogramAcc {
    /// (upper bound, cumulative count), `+Inf` excluded.
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: f64,
}

/// Converts the text exposition into OTLP metrics (cumulative, since `start_ns`).
pub fn from_prometheus_text(text: &str, start_ns: u64, now_ns: u64) -> Vec<pm::Metric> {
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut numbers: BTreeMap<String, Vec<pm::NumberDataPoint>> = BTreeMap::new();
    let mut histograms: BTreeMap<String, BTreeMap<Labels, HistogramAcc>> = BTreeMap::new();
    let attrs = |labels: &[(String, String)]| labels.iter().map(|(k, v)| str_attr(k, v)).collect::<Vec<_>>();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                kinds.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                help.insert(name.to_string(), text.to_string());
            }
            continue;
        }
        let Some((name, mut labels, value)) = parse_sample(line) else { continue };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| kinds.get(*f).is_some_and(|k| k == "histogram")));
        if let Some(family) = family {
            let le = labels.iter().position(|(k, _)| k == "le").map(|i| labels.remove(i).1);
            let acc = histograms.entry(family.to_string()).or_default().entry(labels).or_default();
            if name.ends_with("_bucket") {
                if let Some(bound) = le.and_then(|le| le.parse::<f64>().ok()).filter(|b| b.is_finite()) {
                    acc.buckets.push((bound, value as u64));
                }
            } else if name.ends_with("_sum") {
                acc.sum = value;
            } else {
                acc.count = value as u64;
            }
            continue;
        }
        let point = pm::NumberDataPoint {
            attributes: attrs(&labels),
            start_time_unix_nano: start_ns,
            time_unix_nano: now_ns,
            value: Some(pm::number_data_point::Value::AsDouble(value)),
            ..Default::default()
        };
        numbers.entry(name.to_string()).or_default().push(point);
    }
    let mut out = Vec::new();
    for (name, points) in numbers {
        let data = if kinds.get(&name).is_some_and(|k| k == "counter") {
            pm::metric::Data::Sum(pm::Sum {
                data_points: points,
                aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })
        } else {
            pm::metric::Data::Gauge(pm::Gauge { data_points: points })
        };
        let description = help.get(&name).cloned().unwrap_or_default();
        out.push(pm::Metric { name, description, data: Some(data), ..Default::default() });
    }
    for (name, series) in histograms {
        let data_points = series
            .into_iter()
            .map(|(labels, mut acc)| {
                acc.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut previous = 0;
                let mut bucket_counts: Vec<u64> = acc
                    .buckets
                    .iter()
                    .map(|(_, cumulative)| {
                        let n = cumulative.saturating_sub(previous);
                        previous = *cumulative;
                        n
                    })
                    .collect();
                bucket_counts.push(acc.count.saturating_sub(previous));
                pm::HistogramDataPoint {
                    attributes: attrs(&labels),
                    start_time_unix_nano: start_ns,
                    time_unix_nano: now_ns,
                    count: acc.count,
                    sum: Some(acc.sum),
                    bucket_counts,
                    explicit_bounds: acc.buckets.iter().map(|(b, _)| *b).collect(),
                    ..Default::default()
                }
            })
            .collect();
        let description = help.get(&name).cloned().unwrap_or_default();
        out.push(pm::Metric {
            name,
            description,
            unit: "s".into(),
            data: Some(pm::metric::Data::Histogram(pm::Histogram {
                data_points,
                aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limit;
    use crate::metrics::{ListenerMetrics, Metrics};

    #[test]
    fn the_admin_text_converts_to_otlp() {
        let m = Metrics::default();
        let l = Arc::new(ListenerMetrics::new("mapping", "o\"tel".into(), Limit::new(5)));
        m.register(l.clone());
        l.accepted.fetch_add(3, Ordering::Relaxed);
        m.tcp_seconds.observe(Duration::from_micros(300));
        m.tcp_seconds.observe(Duration::from_secs(20));
        let metrics = from_prometheus_text(&m.render(&Limit::new(9), (4, 2)), 1, 2);
        let find = |n: &str| metrics.iter().find(|m| m.name == n).unwrap_or_else(|| panic!("{n} missing"));
        let Some(pm::metric::Data::Sum(sum)) = &find("vsockproxy_connections_accepted_total").data else {
            panic!("counter expected")
        };
        let point = &sum.data_points[0];
        assert_eq!(point.value, Some(pm::number_data_point::Value::AsDouble(3.0)));
        let listener = point.attributes.iter().find(|a| a.key == "listener").unwrap();
        assert_eq!(
            listener.value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("o\"tel".into()))
        );
        assert!(matches!(find("vsockproxy_connections_limit").data, Some(pm::metric::Data::Gauge(_))));
        let Some(pm::metric::Data::Histogram(h)) = &find("vsockproxy_connect_seconds").data else {
            panic!("histogram expected")
        };
        let tcp = h
            .data_points
            .iter()
            .find(|p| {
                p.attributes.iter().any(|a| a.key == "phase" && format!("{:?}", a.value).contains("tcp"))
            })
            .unwrap();
        assert_eq!(tcp.count, 2);
        assert_eq!(tcp.bucket_counts.len(), tcp.explicit_bounds.len() + 1);
        assert_eq!(tcp.bucket_counts.iter().sum::<u64>(), 2);
        assert_eq!(*tcp.bucket_counts.last().unwrap(), 1, "20 s is past the last bound");
    }
}
