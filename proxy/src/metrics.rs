//! Counters and histograms, rendered in the Prometheus text format by hand (a few dozen
//! series do not need a registry crate). Everything is an atomic or a short-held mutex.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::limits::Limit;

/// Upper bounds in seconds: 50 µs (loopback) to 10 s (a connect timeout).
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per-listener series.
#[derive(Debug)]
pub struct ListenerMetrics {
    pub kind: &'static str,
    pub name: String,
    pub limit: Arc<Limit>,
    pub accepted: AtomicU64,
    pub client_to_upstream: AtomicU64,
    pub upstream_to_client: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl ListenerMetrics {
    pub fn new(kind: &'static str, name: String, limit: Arc<Limit>) -> ListenerMetrics {
        ListenerMetrics {
            kind,
            name,
            limit,
            accepted: AtomicU64::new(0),
            client_to_upstream: AtomicU64::new(0),
            upstream_to_client: AtomicU64::new(0),
            refused: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn refused(&self, reason: &'static str) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused.lock().map(|m| m.get(reason).copied().unwrap_or(0)).unwrap_or(0)
    }
}

/// The admin endpoint's own connections: its cap and why the proxy closed some.
#[derive(Debug)]
pub struct AdminMetrics {
    pub limit: Arc<Limit>,
    /// Closed at accept: the cap was reached.
    pub refused_limit: AtomicU64,
    /// No complete request head within `header_read_timeout_ms`.
    pub header_timeouts: AtomicU64,
    /// No byte either way for `idle_timeout_ms`.
    pub idle_timeouts: AtomicU64,
}

impl Default for AdminMetrics {
    fn default() -> Self {
        AdminMetrics {
            limit: Limit::new(crate::config::DEFAULT_ADMIN_MAX_CONNECTIONS),
            refused_limit: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    listeners: Mutex<Vec<Arc<ListenerMetrics>>>,
    pub admin: AdminMetrics,
    pub dns_seconds: Histogram,
    pub tcp_seconds: Histogram,
    denials: Mutex<BTreeMap<&'static str, u64>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Reloads that left a section's change out until a restart, by section.
    reload_not_applied: Mutex<BTreeMap<&'static str, u64>>,
    pub splice: crate::forward::SpliceCounters,
    /// Connections each forwarding thread runs (set once the threads start).
    pub threads: OnceLock<Arc<[AtomicUsize]>>,
    /// Connections run on another thread than the one whose accept loop took them.
    pub moved: AtomicU64,
}

impl Metrics {
    pub fn register(&self, l: Arc<ListenerMetrics>) {
        if let Ok(mut v) = self.listeners.lock() {
            v.push(l);
        }
    }

    pub fn reload_not_applied(&self, section: &'static str) {
        if let Ok(mut m) = self.reload_not_applied.lock() {
            *m.entry(section).or_default() += 1;
        }
    }

    pub fn denied(&self, kind: &'static str) {
        if let Ok(mut m) = self.denials.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }

    /// The Prometheus text exposition; `dns_cache` is (hits, misses).
    pub fn render(&self, global: &Limit, dns_cache: (u64, u64)) -> String {
        let mut out = String::with_capacity(8192);
        let listeners = self.listeners.lock().map(|v| v.clone()).unwrap_or_default();
        let lbl = |l: &ListenerMetrics| format!("listener=\"{}\",kind=\"{}\"", escape(&l.name), l.kind);

        out.push_str("# HELP vsockproxy_connections_active Connections being served.\n");
        out.push_str("# TYPE vsockproxy_connections_active gauge\n");
        for l in &listeners {
            let _ = writeln!(out, "vsockproxy_connections_active{{{}}} {}", lbl(l), l.limit.active());
        }
        if let Some(threads) = self.threads.get() {
            out.push_str(
                "# HELP vsockproxy_thread_connections Connections each forwarding thread is running.\n",
            );
            out.push_str("# TYPE vsockproxy_thread_connections gauge\n");
            for (i, n) in threads.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "vsockproxy_thread_connections{{thread=\"{i}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
            out.push_str(
                "# HELP vsockproxy_connections_moved_total Connections run on a less loaded thread than the one that accepted them.\n",
            );
            out.push_str("# TYPE vsockproxy_connections_moved_total counter\n");
            let _ =
                writeln!(out, "vsockproxy_connections_moved_total {}", self.moved.load(Ordering::Relaxed));
        }
        out.push_str("# HELP vsockproxy_connections_limit Current connection cap.\n");
        out.push_str("# TYPE vsockproxy_connections_limit gauge\n");
        let _ =
            writeln!(out, "vsockproxy_connections_limit{{listener=\"*\",kind=\"global\"}} {}", global.max());
        for l in &listeners {
            let _ = writeln!(out, "vsockproxy_connections_limit{{{}}} {}", lbl(l), l.limit.max());
        }
        out.push_str("# HELP vsockproxy_connections_accepted_total Connections accepted by a listener.\n");
        out.push_str("# TYPE vsockproxy_connections_accepted_total counter\n");
        for l in &listeners {
            let _ = writeln!(
                out,
                "vsockproxy_connections_accepted_total{{{}}} {}",
                lbl(l),
                l.accepted.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP vsockproxy_connections_refused_total Connections refused, by reason.\n");
        out.push_str("# TYPE vsockproxy_connections_refused_total counter\n");
        for l in &listeners {
            let refused = l.refused.lock().map(|m| m.clone()).unwrap_or_default();
            for (reason, n) in refused {
                let _ = writeln!(
                    out,
                    "vsockproxy_connections_refused_total{{{},reason=\"{reason}\"}} {n}",
                    lbl(l)
                );
            }
        }
        out.push_str("# HELP vsockproxy_bytes_total Bytes forwarded, by direction.\n");
        out.push_str("# TYPE vsockproxy_bytes_total counter\n");
        for l in &listeners {
            for (dir, v) in
                [("client_to_upstream", &l.client_to_upstream), ("upstream_to_client", &l.upstream_to_client)]
            {
                let _ = writeln!(
                    out,
                    "vsockproxy_bytes_total{{{},direction=\"{dir}\"}} {}",
                    lbl(l),
                    v.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP vsockproxy_connect_seconds Time to resolve a name (dns) and to connect (tcp).\n",
        );
        out.push_str("# TYPE vsockproxy_connect_seconds histogram\n");
        self.dns_seconds.render(&mut out, "vsockproxy_connect_seconds", "phase=\"dns\"");
        self.tcp_seconds.render(&mut out, "vsockproxy_connect_seconds", "phase=\"tcp\"");
        out.push_str("# HELP vsockproxy_policy_denials_total Egress destinations refused by the policy.\n");
        out.push_str("# TYPE vsockproxy_policy_denials_total counter\n");
        let denials = self.denials.lock().map(|m| m.clone()).unwrap_or_default();
        for (kind, n) in denials {
            let _ = writeln!(out, "vsockproxy_policy_denials_total{{kind=\"{kind}\"}} {n}");
        }
        out.push_str("# HELP vsockproxy_dns_cache_total DNS cache lookups.\n");
        out.push_str("# TYPE vsockproxy_dns_cache_total counter\n");
        let _ = writeln!(out, "vsockproxy_dns_cache_total{{result=\"hit\"}} {}", dns_cache.0);
        let _ = writeln!(out, "vsockproxy_dns_cache_total{{result=\"miss\"}} {}", dns_cache.1);
        out.push_str(
            "# HELP vsockproxy_splice_pipe_errors_total splice pipes the kernel refused: create (forwarded through a buffer instead) or resize (kept the default size).\n",
        );
        out.push_str("# TYPE vsockproxy_splice_pipe_errors_total counter\n");
        for (op, v) in [("create", &self.splice.create), ("resize", &self.splice.resize)] {
            let _ = writeln!(
                out,
                "vsockproxy_splice_pipe_errors_total{{op=\"{op}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP vsockproxy_splice_fallbacks_total Directions the kernel would not splice (EINVAL, EOPNOTSUPP), forwarded by copy instead: read (socket to pipe) or write (pipe to socket).\n",
        );
        out.push_str("# TYPE vsockproxy_splice_fallbacks_total counter\n");
        for (op, v) in [("read", &self.splice.refused_read), ("write", &self.splice.refused_write)] {
            let _ = writeln!(
                out,
                "vsockproxy_splice_fallbacks_total{{op=\"{op}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP vsockproxy_admin_connections_active Admin endpoint connections open.\n");
        out.push_str("# TYPE vsockproxy_admin_connections_active gauge\n");
        let _ = writeln!(out, "vsockproxy_admin_connections_active {}", self.admin.limit.active());
        out.push_str("# HELP vsockproxy_admin_connections_limit Cap on admin endpoint connections.\n");
        out.push_str("# TYPE vsockproxy_admin_connections_limit gauge\n");
        let _ = writeln!(out, "vsockproxy_admin_connections_limit {}", self.admin.limit.max());
        out.push_str(
            "# HELP vsockproxy_admin_connections_closed_total Admin connections the proxy closed, by reason.\n",
        );
        out.push_str("# TYPE vsockproxy_admin_connections_closed_total counter\n");
        for (reason, v) in [
            ("limit", &self.admin.refused_limit),
            ("header_timeout", &self.admin.header_timeouts),
            ("idle_timeout", &self.admin.idle_timeouts),
        ] {
            let _ = writeln!(
                out,
                "vsockproxy_admin_connections_closed_total{{reason=\"{reason}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP vsockproxy_config_reloads_total SIGHUP reloads.\n");
        out.push_str("# TYPE vsockproxy_config_reloads_total counter\n");
        let _ = writeln!(
            out,
            "vsockproxy_config_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "vsockproxy_config_reloads_total{{result=\"failed\"}} {}",
            self.reloads_failed.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP vsockproxy_config_reload_not_applied_total Reloads whose change to a section needs a restart, by section.\n",
        );
        out.push_str("# TYPE vsockproxy_config_reload_not_applied_total counter\n");
        let not_applied = self.reload_not_applied.lock().map(|m| m.clone()).unwrap_or_default();
        for section in RELOAD_SECTIONS {
            let n = not_applied.get(section).copied().unwrap_or(0);
            let _ = writeln!(out, "vsockproxy_config_reload_not_applied_total{{section=\"{section}\"}} {n}");
        }
        out
    }
}

/// The sections a reload can report as needing a restart (every one is rendered, from 0).
pub const RELOAD_SECTIONS: [&str; 6] = ["admin", "dns", "ingress", "log", "mapping", "socks5"];

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_series_with_labels() {
        let m = Metrics::default();
        let l = Arc::new(ListenerMetrics::new("mapping", "kms\"x".into(), Limit::new(5)));
        m.register(l.clone());
        l.refused("limit_listener");
        m.denied("port");
        m.dns_seconds.observe(Duration::from_micros(300));
        let text = m.render(&Limit::new(9), (4, 2));
        assert!(text.contains("vsockproxy_connections_refused_total{listener=\"kms\\\"x\",kind=\"mapping\",reason=\"limit_listener\"} 1"), "{text}");
        assert!(text.contains("vsockproxy_policy_denials_total{kind=\"port\"} 1"));
        assert!(text.contains("vsockproxy_connect_seconds_bucket{phase=\"dns\",le=\"0.0005\"} 1"));
        assert!(text.contains("vsockproxy_connect_seconds_bucket{phase=\"dns\",le=\"0.00025\"} 0"));
        assert!(text.contains("vsockproxy_dns_cache_total{result=\"hit\"} 4"));
        m.splice.refused_write.fetch_add(1, Ordering::Relaxed);
        let text = m.render(&Limit::new(9), (4, 2));
        assert!(text.contains("vsockproxy_splice_fallbacks_total{op=\"read\"} 0"), "{text}");
        assert!(text.contains("vsockproxy_splice_fallbacks_total{op=\"write\"} 1"), "{text}");
    }
}
