//! The `/metrics` series: a `prometheus-client` [`Registry`], encoded in the Prometheus text
//! format (0.0.4), which the OpenTelemetry collector on the parent scrapes.
//!
//! The connection path never looks a series up: each listener resolves its `Family` members
//! once, when it is bound ([`Metrics::listener`]), and keeps the cloned [`Counter`] handles,
//! so counting a connection or a chunk of bytes is one relaxed atomic add, as before the
//! registry. Histograms and the reason-labelled refusal and denial counters are touched once
//! per connection set-up or refusal, not per byte. Gauges whose values live elsewhere
//! (connections in flight, caps, per-thread load) are read when `/metrics` is scraped
//! (`LiveGauge`), so there is nothing to keep in step.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::dns::CacheCounters;
use crate::forward::SpliceCounters;
use crate::limits::Limit;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds in seconds: 50 µs (loopback) to 10 s (a connect timeout).
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The sections a reload can report as needing a restart (every one is rendered, from 0).
pub const RELOAD_SECTIONS: [&str; 6] = ["admin", "dns", "ingress", "log", "mapping", "socks5"];

/// `listener` and `kind` of every per-listener series (`kind`: ingress, mapping, socks5; the
/// global cap is `listener="*",kind="global"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    listener: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Section {
    section: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Thread {
    thread: usize,
}

type Refusals = Family<(ListenerLabels, Reason), Counter>;

/// One phase of `vsockproxy_connect_seconds`: a histogram handle that takes a [`Duration`].
#[derive(Clone, Debug)]
pub struct Seconds(Histogram);

impl Seconds {
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// One listener's series, resolved when it is bound.
#[derive(Debug)]
pub struct ListenerMetrics {
    labels: ListenerLabels,
    pub limit: Arc<Limit>,
    pub accepted: Counter,
    pub client_to_upstream: Counter,
    pub upstream_to_client: Counter,
    refused: Refusals,
}

impl ListenerMetrics {
    /// A refused connection. The reasons are open-ended (dial errors, SOCKS5 failures), so the
    /// series is looked up here, on the refusal path only: one read lock and a hash of the
    /// labels (the listener name is an `Arc`), no allocation once the series exists.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&(self.labels.clone(), Reason { reason })).inc();
    }

    pub fn refused_count(&self, reason: &'static str) -> u64 {
        self.refused.get(&(self.labels.clone(), Reason { reason })).map_or(0, |c| c.get())
    }
}

/// The admin endpoint's own connections: its cap and why the proxy closed some.
#[derive(Debug)]
pub struct AdminMetrics {
    pub limit: Arc<Limit>,
    /// Closed at accept: the cap was reached.
    pub refused_limit: Counter,
    /// No complete request head within `header_read_timeout_ms`.
    pub header_timeouts: Counter,
    /// No byte either way for `idle_timeout_ms`.
    pub idle_timeouts: Counter,
}

/// What the scrape-time gauges read.
#[derive(Debug)]
struct Live {
    global: Arc<Limit>,
    /// `listener="*",kind="global"`.
    global_labels: ListenerLabels,
    admin: Arc<Limit>,
    listeners: Mutex<Vec<Arc<ListenerMetrics>>>,
    /// Connections each forwarding thread runs (set once the threads start).
    threads: OnceLock<Arc<[AtomicUsize]>>,
}

impl Live {
    fn listeners(&self) -> MutexGuard<'_, Vec<Arc<ListenerMetrics>>> {
        // A poisoned lock only means a panic while pushing to a plain list.
        self.listeners.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// `vsockproxy_connections_active{listener,kind}`.
    Active,
    /// `vsockproxy_connections_limit{listener,kind}`, the global cap first.
    Limit,
    /// `vsockproxy_thread_connections{thread}`.
    ThreadLoad,
    AdminActive,
    AdminLimit,
}

/// A gauge (or gauge family) whose value is read from [`Live`] when `/metrics` is scraped.
#[derive(Debug)]
struct LiveGauge {
    live: Arc<Live>,
    reading: Reading,
}

impl EncodeMetric for LiveGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let live = &self.live;
        match self.reading {
            Reading::Active => {
                for l in live.listeners().iter() {
                    encoder.encode_family(&l.labels)?.encode_gauge(&l.limit.active())?;
                }
            }
            Reading::Limit => {
                encoder.encode_family(&live.global_labels)?.encode_gauge(&live.global.max())?;
                for l in live.listeners().iter() {
                    encoder.encode_family(&l.labels)?.encode_gauge(&l.limit.max())?;
                }
            }
            Reading::ThreadLoad => {
                for (thread, n) in live.threads.get().iter().flat_map(|t| t.iter()).enumerate() {
                    encoder.encode_family(&Thread { thread })?.encode_gauge(&n.load(Ordering::Relaxed))?;
                }
            }
            Reading::AdminActive => encoder.encode_gauge(&live.admin.active())?,
            Reading::AdminLimit => encoder.encode_gauge(&live.admin.max())?,
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    /// An empty family gets no `# HELP`/`# TYPE` lines, as the crate does for its own.
    fn is_empty(&self) -> bool {
        match self.reading {
            Reading::Active => self.live.listeners().is_empty(),
            Reading::ThreadLoad => self.live.threads.get().is_none(),
            Reading::Limit | Reading::AdminActive | Reading::AdminLimit => false,
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    live: Arc<Live>,
    accepted: Family<ListenerLabels, Counter>,
    refused: Refusals,
    bytes: Family<(ListenerLabels, Direction), Counter>,
    pub admin: AdminMetrics,
    pub dns_seconds: Seconds,
    pub tcp_seconds: Seconds,
    denials: Family<Kind, Counter>,
    /// The DNS cache's hits and misses; every resolver the daemon has (one per `[dns]` in
    /// force) counts into these.
    pub dns_cache: CacheCounters,
    pub reloads_ok: Counter,
    pub reloads_failed: Counter,
    /// Reloads that left a section's change out until a restart, by section.
    reload_not_applied: Family<Section, Counter>,
    pub splice: SpliceCounters,
    /// Connections run on another thread than the one whose accept loop took them.
    pub moved: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Limit::new(crate::config::DEFAULT_MAX_CONNECTIONS))
    }
}

impl Metrics {
    /// Every family, registered in the order `/metrics` lists them; `global` is the cap
    /// reported as `vsockproxy_connections_limit{listener="*",kind="global"}`.
    pub fn new(global: Arc<Limit>) -> Metrics {
        let mut registry = Registry::default();
        let live = Arc::new(Live {
            global,
            global_labels: ListenerLabels { listener: Arc::from("*"), kind: "global" },
            admin: Limit::new(crate::config::DEFAULT_ADMIN_MAX_CONNECTIONS),
            listeners: Mutex::new(Vec::new()),
            threads: OnceLock::new(),
        });
        let mut gauge = |name: &str, help: &str, reading: Reading| {
            registry.register(name, help, LiveGauge { live: live.clone(), reading });
        };
        // The registry ends every help text with a full stop.
        gauge("vsockproxy_connections_active", "Connections being served", Reading::Active);
        gauge(
            "vsockproxy_thread_connections",
            "Connections each forwarding thread is running",
            Reading::ThreadLoad,
        );
        let moved = Counter::default();
        registry.register(
            "vsockproxy_connections_moved",
            "Connections run on a less loaded thread than the one that accepted them",
            moved.clone(),
        );
        registry.register(
            "vsockproxy_connections_limit",
            "Current connection cap",
            LiveGauge { live: live.clone(), reading: Reading::Limit },
        );
        let accepted = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "vsockproxy_connections_accepted",
            "Connections accepted by a listener",
            accepted.clone(),
        );
        let refused = Refusals::default();
        registry.register(
            "vsockproxy_connections_refused",
            "Connections refused, by reason",
            refused.clone(),
        );
        let bytes = Family::<(ListenerLabels, Direction), Counter>::default();
        registry.register("vsockproxy_bytes", "Bytes forwarded, by direction", bytes.clone());
        let connect =
            Family::<Phase, Histogram, fn() -> Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
        registry.register(
            "vsockproxy_connect_seconds",
            "Time to resolve a name (dns) and to connect (tcp)",
            connect.clone(),
        );
        let denials = Family::<Kind, Counter>::default();
        registry.register(
            "vsockproxy_policy_denials",
            "Egress destinations refused by the policy",
            denials.clone(),
        );
        let outcome =
            |family: &Family<Outcome, Counter>, result| family.get_or_create_owned(&Outcome { result });
        let dns = Family::<Outcome, Counter>::default();
        let dns_cache = CacheCounters { hits: outcome(&dns, "hit"), misses: outcome(&dns, "miss") };
        registry.register("vsockproxy_dns_cache", "DNS cache lookups", dns);
        let op = |family: &Family<Op, Counter>, op| family.get_or_create_owned(&Op { op });
        let pipe_errors = Family::<Op, Counter>::default();
        let fallbacks = Family::<Op, Counter>::default();
        let splice = SpliceCounters::new(
            op(&pipe_errors, "create"),
            op(&pipe_errors, "resize"),
            op(&fallbacks, "read"),
            op(&fallbacks, "write"),
        );
        registry.register(
            "vsockproxy_splice_pipe_errors",
            "splice pipes the kernel refused: create (forwarded through a buffer instead) or resize \
             (kept the default size)",
            pipe_errors,
        );
        registry.register(
            "vsockproxy_splice_fallbacks",
            "Directions the kernel would not splice (EINVAL, EOPNOTSUPP), forwarded by copy instead: \
             read (socket to pipe) or write (pipe to socket)",
            fallbacks,
        );
        registry.register(
            "vsockproxy_admin_connections_active",
            "Admin endpoint connections open",
            LiveGauge { live: live.clone(), reading: Reading::AdminActive },
        );
        registry.register(
            "vsockproxy_admin_connections_limit",
            "Cap on admin endpoint connections",
            LiveGauge { live: live.clone(), reading: Reading::AdminLimit },
        );
        let closed = Family::<Reason, Counter>::default();
        let reason = |reason| closed.get_or_create_owned(&Reason { reason });
        let admin = AdminMetrics {
            limit: live.admin.clone(),
            refused_limit: reason("limit"),
            header_timeouts: reason("header_timeout"),
            idle_timeouts: reason("idle_timeout"),
        };
        registry.register(
            "vsockproxy_admin_connections_closed",
            "Admin connections the proxy closed, by reason",
            closed,
        );
        let reloads = Family::<Outcome, Counter>::default();
        let (reloads_ok, reloads_failed) = (outcome(&reloads, "ok"), outcome(&reloads, "failed"));
        registry.register("vsockproxy_config_reloads", "SIGHUP reloads", reloads);
        let reload_not_applied = Family::<Section, Counter>::default();
        for section in RELOAD_SECTIONS {
            reload_not_applied.get_or_create_owned(&Section { section });
        }
        registry.register(
            "vsockproxy_config_reload_not_applied",
            "Reloads whose change to a section needs a restart, by section",
            reload_not_applied.clone(),
        );
        Metrics {
            registry,
            live,
            accepted,
            refused,
            bytes,
            admin,
            dns_seconds: Seconds(connect.get_or_create_owned(&Phase { phase: "dns" })),
            tcp_seconds: Seconds(connect.get_or_create_owned(&Phase { phase: "tcp" })),
            denials,
            dns_cache,
            reloads_ok,
            reloads_failed,
            reload_not_applied,
            splice,
            moved,
        }
    }

    /// The series of a listener that was just bound, resolved once: its accept loop and
    /// connections count through the returned handles.
    pub fn listener(&self, kind: &'static str, name: &str, limit: Arc<Limit>) -> Arc<ListenerMetrics> {
        let labels = ListenerLabels { listener: Arc::from(name), kind };
        let bytes = |direction| self.bytes.get_or_create_owned(&(labels.clone(), Direction { direction }));
        let l = Arc::new(ListenerMetrics {
            accepted: self.accepted.get_or_create_owned(&labels),
            client_to_upstream: bytes("client_to_upstream"),
            upstream_to_client: bytes("upstream_to_client"),
            refused: self.refused.clone(),
            limit,
            labels,
        });
        self.live.listeners().push(l.clone());
        l
    }

    /// Where the forwarding threads' connection counts are read from.
    pub fn set_threads(&self, load: Arc<[AtomicUsize]>) {
        let _ = self.live.threads.set(load);
    }

    pub fn reload_not_applied(&self, section: &'static str) {
        self.reload_not_applied.get_or_create(&Section { section }).inc();
    }

    pub fn denied(&self, kind: &'static str) {
        self.denials.get_or_create(&Kind { kind }).inc();
    }

    /// The Prometheus text exposition (version 0.0.4, [`CONTENT_TYPE`]). Fails only if a
    /// gauge does not fit the format's integers (above `i64::MAX`).
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family's `# HELP` and `# TYPE` lines, as dashboards and the collector know them
    /// (the hand-written exposition before the registry had the same lines).
    const FAMILIES: &str = "\
# HELP vsockproxy_connections_active Connections being served.
# TYPE vsockproxy_connections_active gauge
# HELP vsockproxy_thread_connections Connections each forwarding thread is running.
# TYPE vsockproxy_thread_connections gauge
# HELP vsockproxy_connections_moved_total Connections run on a less loaded thread than the one that accepted them.
# TYPE vsockproxy_connections_moved_total counter
# HELP vsockproxy_connections_limit Current connection cap.
# TYPE vsockproxy_connections_limit gauge
# HELP vsockproxy_connections_accepted_total Connections accepted by a listener.
# TYPE vsockproxy_connections_accepted_total counter
# HELP vsockproxy_connections_refused_total Connections refused, by reason.
# TYPE vsockproxy_connections_refused_total counter
# HELP vsockproxy_bytes_total Bytes forwarded, by direction.
# TYPE vsockproxy_bytes_total counter
# HELP vsockproxy_connect_seconds Time to resolve a name (dns) and to connect (tcp).
# TYPE vsockproxy_connect_seconds histogram
# HELP vsockproxy_policy_denials_total Egress destinations refused by the policy.
# TYPE vsockproxy_policy_denials_total counter
# HELP vsockproxy_dns_cache_total DNS cache lookups.
# TYPE vsockproxy_dns_cache_total counter
# HELP vsockproxy_splice_pipe_errors_total splice pipes the kernel refused: create (forwarded through a buffer instead) or resize (kept the default size).
# TYPE vsockproxy_splice_pipe_errors_total counter
# HELP vsockproxy_splice_fallbacks_total Directions the kernel would not splice (EINVAL, EOPNOTSUPP), forwarded by copy instead: read (socket to pipe) or write (pipe to socket).
# TYPE vsockproxy_splice_fallbacks_total counter
# HELP vsockproxy_admin_connections_active Admin endpoint connections open.
# TYPE vsockproxy_admin_connections_active gauge
# HELP vsockproxy_admin_connections_limit Cap on admin endpoint connections.
# TYPE vsockproxy_admin_connections_limit gauge
# HELP vsockproxy_admin_connections_closed_total Admin connections the proxy closed, by reason.
# TYPE vsockproxy_admin_connections_closed_total counter
# HELP vsockproxy_config_reloads_total SIGHUP reloads.
# TYPE vsockproxy_config_reloads_total counter
# HELP vsockproxy_config_reload_not_applied_total Reloads whose change to a section needs a restart, by section.
# TYPE vsockproxy_config_reload_not_applied_total counter
";

    /// A daemon's metrics after one listener, some traffic and the threads started.
    fn busy() -> (Metrics, Arc<ListenerMetrics>) {
        let m = Metrics::new(Limit::new(9));
        let l = m.listener("mapping", "kms\"x", Limit::new(5));
        m.set_threads(Arc::from([AtomicUsize::new(2), AtomicUsize::new(0)]));
        l.accepted.inc();
        l.refused("limit_listener");
        l.refused("dns");
        l.refused("dns");
        l.client_to_upstream.inc_by(100);
        m.denied("port");
        m.dns_cache.hits.inc_by(4);
        m.dns_cache.misses.inc_by(2);
        m.dns_seconds.observe(Duration::from_micros(300));
        m.tcp_seconds.observe(Duration::from_micros(30));
        m.tcp_seconds.observe(Duration::from_secs(20));
        m.admin.header_timeouts.inc();
        m.reload_not_applied("dns");
        m.reloads_ok.inc();
        (m, l)
    }

    #[test]
    fn every_family_keeps_its_name_type_and_help() {
        let (m, _) = busy();
        let text = m.render().unwrap();
        let comments: String =
            text.lines().filter(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
        assert_eq!(comments, FAMILIES, "{text}");
    }

    #[test]
    fn renders_series_with_labels() {
        let (m, l) = busy();
        let text = m.render().unwrap();
        for series in [
            "vsockproxy_connections_active{listener=\"kms\\\"x\",kind=\"mapping\"} 0",
            "vsockproxy_connections_limit{listener=\"*\",kind=\"global\"} 9",
            "vsockproxy_connections_limit{listener=\"kms\\\"x\",kind=\"mapping\"} 5",
            "vsockproxy_thread_connections{thread=\"0\"} 2",
            "vsockproxy_thread_connections{thread=\"1\"} 0",
            "vsockproxy_connections_moved_total 0",
            "vsockproxy_connections_accepted_total{listener=\"kms\\\"x\",kind=\"mapping\"} 1",
            "vsockproxy_connections_refused_total{listener=\"kms\\\"x\",kind=\"mapping\",reason=\"limit_listener\"} 1",
            "vsockproxy_connections_refused_total{listener=\"kms\\\"x\",kind=\"mapping\",reason=\"dns\"} 2",
            "vsockproxy_bytes_total{listener=\"kms\\\"x\",kind=\"mapping\",direction=\"client_to_upstream\"} 100",
            "vsockproxy_bytes_total{listener=\"kms\\\"x\",kind=\"mapping\",direction=\"upstream_to_client\"} 0",
            "vsockproxy_policy_denials_total{kind=\"port\"} 1",
            "vsockproxy_connect_seconds_bucket{phase=\"dns\",le=\"0.00025\"} 0",
            "vsockproxy_connect_seconds_bucket{phase=\"dns\",le=\"0.0005\"} 1",
            "vsockproxy_connect_seconds_count{phase=\"dns\"} 1",
            "vsockproxy_connect_seconds_bucket{phase=\"tcp\",le=\"10\"} 1",
            "vsockproxy_connect_seconds_bucket{phase=\"tcp\",le=\"+Inf\"} 2",
            "vsockproxy_connect_seconds_count{phase=\"tcp\"} 2",
            "vsockproxy_dns_cache_total{result=\"hit\"} 4",
            "vsockproxy_dns_cache_total{result=\"miss\"} 2",
            "vsockproxy_splice_pipe_errors_total{op=\"create\"} 0",
            "vsockproxy_splice_fallbacks_total{op=\"read\"} 0",
            "vsockproxy_admin_connections_active 0",
            "vsockproxy_admin_connections_limit 64",
            "vsockproxy_admin_connections_closed_total{reason=\"header_timeout\"} 1",
            "vsockproxy_admin_connections_closed_total{reason=\"limit\"} 0",
            "vsockproxy_config_reloads_total{result=\"ok\"} 1",
            "vsockproxy_config_reloads_total{result=\"failed\"} 0",
            "vsockproxy_config_reload_not_applied_total{section=\"dns\"} 1",
            "vsockproxy_config_reload_not_applied_total{section=\"socks5\"} 0",
        ] {
            assert!(text.lines().any(|line| line == series), "missing {series}:\n{text}");
        }
        // The 16 bounds (the first as Go writes it, as the Prometheus server normalises `le`)
        // and +Inf, per phase.
        let bounds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("vsockproxy_connect_seconds_bucket{phase=\"tcp\",le=\""))
            .filter_map(|l| l.split_once('"').map(|(le, _)| le))
            .collect();
        assert_eq!(
            bounds,
            [
                "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                "0.1", "0.25", "0.5", "1", "2.5", "10", "+Inf"
            ]
        );
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix("vsockproxy_connect_seconds_sum{phase=\"tcp\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("tcp sum");
        assert!((sum - 20.00003).abs() < 1e-9, "{sum}");
        assert_eq!(l.refused_count("dns"), 2);
        assert_eq!(l.refused_count("policy"), 0);
        // A refusal reason nobody counted yet has no series.
        assert!(!text.contains("reason=\"policy\""), "{text}");
    }

    #[test]
    fn handles_and_splice_counters_are_the_registered_series() {
        let (m, l) = busy();
        m.splice.refused_write.inc();
        m.splice.create.inc_by(3);
        m.moved.inc();
        l.upstream_to_client.inc_by(7);
        m.admin.limit.set_max(3);
        let text = m.render().unwrap();
        for series in [
            "vsockproxy_splice_fallbacks_total{op=\"write\"} 1",
            "vsockproxy_splice_pipe_errors_total{op=\"create\"} 3",
            "vsockproxy_connections_moved_total 1",
            "vsockproxy_bytes_total{listener=\"kms\\\"x\",kind=\"mapping\",direction=\"upstream_to_client\"} 7",
            "vsockproxy_admin_connections_limit 3",
        ] {
            assert!(text.lines().any(|line| line == series), "missing {series}:\n{text}");
        }
    }

    #[test]
    fn families_without_series_are_left_out() {
        // No listener, no threads: no empty HELP/TYPE pair for them (the crate's rule).
        let text = Metrics::default().render().unwrap();
        for family in [
            "vsockproxy_connections_active",
            "vsockproxy_thread_connections",
            "vsockproxy_connections_accepted_total",
            "vsockproxy_connections_refused_total",
            "vsockproxy_policy_denials_total",
        ] {
            assert!(!text.contains(&format!("# TYPE {family} ")), "{family}:\n{text}");
        }
        assert!(
            text.contains("vsockproxy_connections_limit{listener=\"*\",kind=\"global\"} 16384"),
            "{text}"
        );
    }
}
