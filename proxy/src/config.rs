//! The configuration file (TOML) and the CLI overrides, validated before anything binds.
//!
//! The file is the whole truth about what listens: a section that is absent means no such
//! listener. Without `--config` the reference deployment's defaults apply (ingress, SOCKS5 and
//! admin on their usual addresses). Every error names the file, the key and the reason; parse
//! errors also carry the line and column.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use transport::{Endpoint, Host, VsockCid, plan};

use crate::dns::{DnsConfig, DnsError, Resolver};
use crate::policy::{Policy, PolicyConfig};

/// Ingress: where envoy sends h2c to (the parent's loopback, kv-server's port).
pub fn default_ingress_listen() -> Endpoint {
    plan::loopback(plan::KV_SERVER_PORT)
}
/// Ingress: the enclave's KV server (`vsock://16:50051`).
pub fn default_ingress_upstream() -> Endpoint {
    plan::enclave_kv_server()
}
/// Egress SOCKS5 for the enclave (it dials the parent, CID 3, on this port).
pub fn default_socks5_listen() -> Endpoint {
    plan::vsock_any(plan::EGRESS_SOCKS5_PORT)
}
/// Admin HTTP (health, readiness, metrics); loopback only.
pub fn default_admin_listen() -> Endpoint {
    plan::loopback(plan::PROXY_ADMIN_PORT)
}
/// Admin connections open at once; more are closed at accept (a scraper and a probe or two
/// need a handful).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this, counted from the connection's start or the end of
/// the previous answer (so it is also how long a keep-alive connection may wait idle).
pub const DEFAULT_ADMIN_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// An admin connection on which no byte moves either way for this long is closed (a client
/// that stops reading its answer).
pub const DEFAULT_ADMIN_IDLE_TIMEOUT_MS: u64 = 30_000;

/// The file as written (after CLI overrides), before semantic checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub ingress: Vec<RouteConfig>,
    pub socks5: Option<Socks5Config>,
    #[serde(default)]
    pub mapping: Vec<RouteConfig>,
    pub policy: Option<PolicyConfig>,
    pub dns: Option<DnsConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// `[otlp]` was removed: only read to refuse it with a message that says what replaced it
    /// ([`OTLP_REMOVED`]).
    #[serde(default)]
    pub otlp: Option<toml::Value>,
}

/// Why a config file with an `[otlp]` section is refused.
pub const OTLP_REMOVED: &str = "the [otlp] section was removed: vsockproxy no longer pushes its metrics over \
     OTLP; the OpenTelemetry collector scrapes /metrics on the [admin] endpoint instead \
     (collector/otel_collector_config.yaml, docs/observability.md). Delete the section";

/// `[admin]`: the loopback HTTP endpoint and what one local client may hold of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(deserialize_with = "listen_endpoint")]
    pub listen: Endpoint,
    /// Connections open at once; over it a connection is closed at accept and counted.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// Time to send a complete request head (from connect, or from the previous answer).
    #[serde(default = "default_admin_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// No byte in either direction for this long closes the connection.
    #[serde(default = "default_admin_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

fn default_admin_max_connections() -> usize {
    DEFAULT_ADMIN_MAX_CONNECTIONS
}

fn default_admin_header_read_timeout_ms() -> u64 {
    DEFAULT_ADMIN_HEADER_READ_TIMEOUT_MS
}

fn default_admin_idle_timeout_ms() -> u64 {
    DEFAULT_ADMIN_IDLE_TIMEOUT_MS
}

impl AdminConfig {
    pub fn new(listen: Endpoint) -> AdminConfig {
        AdminConfig {
            listen,
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            header_read_timeout_ms: DEFAULT_ADMIN_HEADER_READ_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_ADMIN_IDLE_TIMEOUT_MS,
        }
    }
}

/// An `[[ingress]]` or `[[mapping]]` entry: accept on `listen`, always dial `upstream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label in logs and metrics; defaults to the listen endpoint.
    pub name: Option<String>,
    #[serde(deserialize_with = "listen_endpoint")]
    pub listen: Endpoint,
    #[serde(deserialize_with = "dial_endpoint")]
    pub upstream: Endpoint,
    /// Cap for this listener; defaults to `limits.listener_max_connections`.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socks5Config {
    pub name: Option<String>,
    #[serde(deserialize_with = "listen_endpoint")]
    pub listen: Endpoint,
    pub max_connections: Option<usize>,
}

/// The global connection cap when the file does not set one and the descriptor limit allows
/// it (otherwise it is derived from `RLIMIT_NOFILE`, see the `fds` module).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16384;

/// `[limits]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections in flight across all listeners; unset: [`DEFAULT_MAX_CONNECTIONS`] or what
    /// the descriptor limit allows, whichever is lower.
    pub max_connections: Option<usize>,
    /// Default cap of each listener (a listener's own `max_connections` wins).
    pub listener_max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_connections: None, listener_max_connections: 16384 }
    }
}

/// The validated global cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections in flight across all listeners.
    pub max_connections: usize,
    /// Whether `limits.max_connections` (or `--max-connections`) set it: a value the operator
    /// chose is refused if the descriptor limit cannot honour it; a default is lowered to fit.
    pub max_connections_set: bool,
}

/// All durations are integers in milliseconds; 0 disables `idle_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// Dialing one upstream address (each address of a name gets its own budget).
    pub connect_ms: u64,
    /// SOCKS5 greeting and request, from accept to a complete request.
    pub handshake_ms: u64,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_ms: u64,
    /// After SIGTERM: how long in-flight connections may take to finish.
    pub drain_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig { connect_ms: 5_000, handshake_ms: 10_000, idle_ms: 900_000, drain_ms: 30_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// Zero-copy `splice(2)` through a pipe per direction; a direction whose socket the kernel
    /// will not splice (some kernels for vsock) copies instead.
    Splice,
    /// Read/write through a user-space buffer per direction.
    Copy,
}

impl fmt::Display for ForwardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForwardMode::Splice => "splice",
            ForwardMode::Copy => "copy",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    pub mode: ForwardMode,
    /// Bytes buffered per direction (the copy buffer, or the pipe size for splice).
    pub buffer_size: usize,
    /// Forwarding threads, each with its own runtime and accept loops (`0`: one per CPU the
    /// process may run on). Read at start only.
    pub threads: usize,
}

/// Most forwarding threads `forwarding.threads` may ask for.
pub const MAX_THREADS: usize = 256;

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig { mode: ForwardMode::Splice, buffer_size: 64 * 1024, threads: 0 }
    }
}

impl ForwardingConfig {
    /// `threads`, with `0` resolved to the CPUs this process may run on (its affinity and
    /// cgroup quota, as `std::thread::available_parallelism` reads them).
    pub fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `vsockproxy=debug`, ...); `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".to_string() }
    }
}

fn listen_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen(&s).map_err(serde::de::Error::custom)
}

fn dial_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
    let s = String::deserialize(d)?;
    parse_dial(&s).map_err(serde::de::Error::custom)
}

/// An endpoint to listen on: no hybrid form, no host names other than `localhost`, no `parent`.
pub fn parse_listen(s: &str) -> Result<Endpoint, String> {
    let ep: Endpoint = s.parse().map_err(|e: transport::EndpointError| e.to_string())?;
    match &ep {
        Endpoint::HybridVsock { .. } => Err(format!("{s:?}: a vsock-hybrid endpoint can only be dialed")),
        Endpoint::Vsock { cid: VsockCid::Parent, .. } => Err(format!(
            "{s:?}: `parent` is how an enclave dials this machine; vsockproxy listens on vsock://any:PORT"
        )),
        Endpoint::Tcp { host: Host::Name(n), .. } if n != "localhost" => {
            Err(format!("{s:?}: a listener needs an IP address, not the name {n:?}"))
        }
        _ => Ok(ep),
    }
}

/// An endpoint to dial: vsock CID `any` cannot be dialed, and `parent` (the enclave's name for
/// the parent instance) would be vsockproxy's own machine.
pub fn parse_dial(s: &str) -> Result<Endpoint, String> {
    let ep: Endpoint = s.parse().map_err(|e: transport::EndpointError| e.to_string())?;
    match ep {
        Endpoint::Vsock { cid: VsockCid::Any, .. } => {
            Err(format!("{s:?}: vsock CID `any` can only be listened on; give the peer's CID"))
        }
        Endpoint::Vsock { cid: VsockCid::Parent, .. } => Err(format!(
            "{s:?}: `parent` is the enclave's name for the parent instance, where vsockproxy itself \
             runs; give the enclave's CID (e.g. vsock://16:PORT)"
        )),
        _ => Ok(ep),
    }
}

/// Which role a fixed-destination listener plays (a metrics/log label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Ingress,
    Mapping,
}

impl RouteKind {
    pub fn label(self) -> &'static str {
        match self {
            RouteKind::Ingress => "ingress",
            RouteKind::Mapping => "mapping",
        }
    }
}

/// A validated fixed-destination listener.
#[derive(Debug, Clone)]
pub struct Route {
    pub kind: RouteKind,
    pub name: String,
    pub listen: Endpoint,
    pub upstream: Endpoint,
    pub max_connections: usize,
}

/// A validated SOCKS5 listener.
#[derive(Debug, Clone)]
pub struct Socks5Listener {
    pub name: String,
    pub listen: Endpoint,
    pub max_connections: usize,
}

/// The validated configuration the daemon runs with.
pub struct Config {
    /// Where it came from, for messages (`<defaults>` without a file).
    pub source: String,
    pub admin: Option<AdminConfig>,
    pub routes: Vec<Route>,
    pub socks5: Option<Socks5Listener>,
    pub policy: Policy,
    pub dns: DnsConfig,
    pub limits: Limits,
    pub timeouts: TimeoutsConfig,
    pub forwarding: ForwardingConfig,
    pub log: LogConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Parse { path: String, line: usize, column: usize, key: String, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid { path: String, key: String, message: String },
}

/// Overrides from the command line, applied on top of the file (or the defaults).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub ingress_listen: Option<Endpoint>,
    pub ingress_upstream: Option<Endpoint>,
    pub socks5_listen: Option<Endpoint>,
    pub admin_listen: Option<Endpoint>,
    pub forwarding: Option<ForwardMode>,
    pub log_format: Option<LogFormat>,
    pub max_connections: Option<usize>,
}

impl FileConfig {
    /// The reference deployment: ingress 50051 -> enclave 16:50051, SOCKS5 on vsock 8888, admin.
    pub fn defaults() -> FileConfig {
        FileConfig {
            admin: Some(AdminConfig::new(default_admin_listen())),
            ingress: vec![RouteConfig {
                name: None,
                listen: default_ingress_listen(),
                upstream: default_ingress_upstream(),
                max_connections: None,
            }],
            socks5: Some(Socks5Config { name: None, listen: default_socks5_listen(), max_connections: None }),
            mapping: Vec::new(),
            policy: None,
            dns: None,
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            forwarding: ForwardingConfig::default(),
            log: LogConfig::default(),
            otlp: None,
        }
    }

    fn apply(&mut self, o: &Overrides) {
        if o.ingress_listen.is_some() || o.ingress_upstream.is_some() {
            if self.ingress.is_empty() {
                self.ingress.push(RouteConfig {
                    name: None,
                    listen: default_ingress_listen(),
                    upstream: default_ingress_upstream(),
                    max_connections: None,
                });
            }
            if let Some(l) = &o.ingress_listen {
                self.ingress[0].listen = l.clone();
            }
            if let Some(u) = &o.ingress_upstream {
                self.ingress[0].upstream = u.clone();
            }
        }
        if let Some(l) = &o.socks5_listen {
            match &mut self.socks5 {
                Some(s) => s.listen = l.clone(),
                None => {
                    self.socks5 = Some(Socks5Config { name: None, listen: l.clone(), max_connections: None })
                }
            }
        }
        if let Some(l) = &o.admin_listen {
            match &mut self.admin {
                Some(a) => a.listen = l.clone(),
                None => self.admin = Some(AdminConfig::new(l.clone())),
            }
        }
        if let Some(m) = o.forwarding {
            self.forwarding.mode = m;
        }
        if let Some(f) = o.log_format {
            self.log.format = f;
        }
        if let Some(n) = o.max_connections {
            self.limits.max_connections = Some(n);
        }
    }
}

/// Reads, parses and validates `path` (or the defaults when `None`), with `overrides` applied.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let (source, mut file) = match path {
        Some(p) => {
            let shown = p.display().to_string();
            let text = std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
            (shown.clone(), parse(&shown, &text)?)
        }
        None => ("<defaults>".to_string(), FileConfig::defaults()),
    };
    file.apply(overrides);
    validate(source, file)
}

/// Parses TOML text; errors carry line, column and the key at the error.
pub fn parse(path: &str, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let start = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        let key = key_at(text, line).map(|k| format!("key `{k}`: ")).unwrap_or_default();
        ConfigError::Parse {
            path: path.to_string(),
            line,
            column,
            key,
            message: e.message().trim_end().to_string(),
        }
    })
}

/// The dotted key on 1-based `line` (table header + key), for messages. Best effort: TOML
/// errors give a span, not a key path.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?.trim();
    let header = |l: &str| {
        let l = l.trim();
        l.starts_with('[').then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    };
    if let Some(h) = header(here) {
        return Some(h);
    }
    let (key, _) = here.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let table = lines[..line - 1].iter().rev().find_map(|l| header(l));
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

fn validate(source: String, file: FileConfig) -> Result<Config, ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid { path: source.clone(), key, message };
    let FileConfig { admin, ingress, socks5, mapping, policy, dns, limits, timeouts, forwarding, log, otlp } =
        file;

    if otlp.is_some() {
        return Err(invalid("otlp".into(), OTLP_REMOVED.into()));
    }

    if limits.max_connections == Some(0) {
        return Err(invalid("limits.max_connections".into(), "must be at least 1".into()));
    }
    if limits.listener_max_connections == 0 {
        return Err(invalid("limits.listener_max_connections".into(), "must be at least 1".into()));
    }
    if !(4096..=16 << 20).contains(&forwarding.buffer_size) {
        return Err(invalid(
            "forwarding.buffer_size".into(),
            format!("{} is outside 4096..=16777216 bytes", forwarding.buffer_size),
        ));
    }
    if forwarding.threads > MAX_THREADS {
        return Err(invalid(
            "forwarding.threads".into(),
            format!("{} is above {MAX_THREADS} (0 means one per CPU)", forwarding.threads),
        ));
    }
    for (key, v) in
        [("timeouts.connect_ms", timeouts.connect_ms), ("timeouts.handshake_ms", timeouts.handshake_ms)]
    {
        if v == 0 {
            return Err(invalid(key.into(), "must be at least 1 ms".into()));
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        return Err(invalid("log.level".into(), format!("{:?}: {e}", log.level)));
    }

    let admin = match admin {
        Some(a) => {
            let loopback = match &a.listen {
                Endpoint::Tcp { host: Host::Ip(ip), .. } => ip.is_loopback(),
                Endpoint::Tcp { host: Host::Name(n), .. } => n == "localhost",
                Endpoint::Unix(_) => true,
                _ => false,
            };
            if !loopback {
                return Err(invalid(
                    "admin.listen".into(),
                    format!("{}: the admin endpoint must be loopback TCP or a Unix socket", a.listen),
                ));
            }
            for (key, v) in [
                ("admin.max_connections", a.max_connections as u64),
                ("admin.header_read_timeout_ms", a.header_read_timeout_ms),
                ("admin.idle_timeout_ms", a.idle_timeout_ms),
            ] {
                if v == 0 {
                    return Err(invalid(key.into(), "must be at least 1".into()));
                }
            }
            Some(a)
        }
        None => None,
    };

    let mut routes = Vec::new();
    let mut seen: Vec<(Endpoint, String)> = Vec::new();
    let mut claim = |ep: &Endpoint, key: String| -> Result<(), ConfigError> {
        if let Some((_, other)) = seen.iter().find(|(e, _)| same_listen(e, ep)) {
            return Err(ConfigError::Invalid {
                path: source.clone(),
                key,
                message: format!("{ep} is already used by `{other}`"),
            });
        }
        seen.push((ep.clone(), key));
        Ok(())
    };
    if let Some(a) = &admin {
        claim(&a.listen, "admin.listen".into())?;
    }
    for (kind, list) in [(RouteKind::Ingress, ingress), (RouteKind::Mapping, mapping)] {
        for (i, r) in list.into_iter().enumerate() {
            let key = format!("{}[{i}]", kind.label());
            claim(&r.listen, format!("{key}.listen"))?;
            if r.max_connections == Some(0) {
                return Err(invalid(format!("{key}.max_connections"), "must be at least 1".into()));
            }
            if kind == RouteKind::Mapping && !matches!(r.upstream, Endpoint::Tcp { .. }) {
                return Err(invalid(
                    format!("{key}.upstream"),
                    format!("{}: a mapping dials tcp://HOST:PORT", r.upstream),
                ));
            }
            routes.push(Route {
                kind,
                name: r.name.unwrap_or_else(|| r.listen.to_string()),
                listen: r.listen,
                upstream: r.upstream,
                max_connections: r.max_connections.unwrap_or(limits.listener_max_connections),
            });
        }
    }
    let socks5 = match socks5 {
        Some(s) => {
            claim(&s.listen, "socks5.listen".into())?;
            if s.max_connections == Some(0) {
                return Err(invalid("socks5.max_connections".into(), "must be at least 1".into()));
            }
            Some(Socks5Listener {
                name: s.name.unwrap_or_else(|| s.listen.to_string()),
                listen: s.listen,
                max_connections: s.max_connections.unwrap_or(limits.listener_max_connections),
            })
        }
        None => None,
    };
    let mut names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    names.extend(socks5.as_ref().map(|s| s.name.as_str()));
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(invalid("name".into(), format!("two listeners are both named {n:?}")));
        }
    }
    if routes.is_empty() && socks5.is_none() {
        return Err(invalid(
            "ingress, mapping, socks5".into(),
            "nothing to listen on: configure at least one [[ingress]], [[mapping]] or [socks5]".into(),
        ));
    }

    let policy = match &policy {
        // PolicyError names the rule and field (`policy.allow[2].cidr: ...`).
        Some(p) => {
            Policy::new(p).map_err(|e| invalid(format!("policy.allow[{}].{}", e.index, e.field), e.reason))?
        }
        None => Policy::deny_all(),
    };
    // A mapping's destination passes the same policy as a SOCKS5 request (as in AWS
    // vsock-proxy, whose allowlist also covers its one remote): a mapping the policy would
    // refuse is a configuration error, not a silent failure at connect time.
    for (i, r) in routes.iter().filter(|r| r.kind == RouteKind::Mapping).enumerate() {
        let verdict = match &r.upstream {
            Endpoint::Tcp { host: Host::Name(n), port } => policy.check_name(n, *port),
            Endpoint::Tcp { host: Host::Ip(ip), port } => policy.check_ip(None, *ip, *port),
            _ => Ok(()),
        };
        if let Err(d) = verdict {
            return Err(invalid(
                format!("mapping[{i}].upstream"),
                format!("{} is not allowed by [policy]: {d}; add a [[policy.allow]] rule for it", r.upstream),
            ));
        }
    }
    let dns = dns.unwrap_or_default();
    // Validates the [dns] table (TTL bounds, static hosts, servers); sends no query.
    if let Err(e) = Resolver::new(&dns) {
        let key = match &e {
            DnsError::Config { field, .. } => format!("dns.{field}"),
            _ => "dns".to_string(),
        };
        let message = match e {
            DnsError::Config { reason, .. } => reason,
            other => other.to_string(),
        };
        return Err(invalid(key, message));
    }

    let limits = Limits {
        max_connections: limits.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        max_connections_set: limits.max_connections.is_some(),
    };
    Ok(Config { source, admin, routes, socks5, policy, dns, limits, timeouts, forwarding, log })
}

/// Two listen endpoints collide when they name the same socket (`tcp://0.0.0.0:P` also takes
/// every other address's port P).
fn same_listen(a: &Endpoint, b: &Endpoint) -> bool {
    match (a, b) {
        (Endpoint::Tcp { host: ha, port: pa }, Endpoint::Tcp { host: hb, port: pb }) => {
            let wild = |h: &Host| matches!(h, Host::Ip(ip) if ip.is_unspecified());
            pa == pb && *pa != 0 && (ha == hb || wild(ha) || wild(hb))
        }
        (Endpoint::Vsock { port: pa, .. }, Endpoint::Vsock { port: pb, .. }) => pa == pb,
        _ => a == b,
    }
}

/// The path as given on the command line, kept for reloads.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl Source {
    pub fn load(&self) -> Result<Config, ConfigError> {
        load(self.path.as_deref(), &self.overrides)
    }
}

/// The admin endpoint's deadlines, from `[admin]` or its defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminTimeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

impl AdminTimeouts {
    pub fn from_config(admin: Option<&AdminConfig>) -> AdminTimeouts {
        let (header, idle) = admin
            .map_or((DEFAULT_ADMIN_HEADER_READ_TIMEOUT_MS, DEFAULT_ADMIN_IDLE_TIMEOUT_MS), |a| {
                (a.header_read_timeout_ms, a.idle_timeout_ms)
            });
        AdminTimeouts { header_read: Duration::from_millis(header), idle: Duration::from_millis(idle) }
    }
}

/// A part of a reloaded configuration that is not in force until a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotApplied {
    /// The config section (`admin`, `dns`, `forwarding`, `log`, `ingress`, `mapping`, `socks5`).
    pub section: &'static str,
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse("t.toml", text).and_then(|f| validate("t.toml".into(), f)) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_the_reference_deployment() {
        let c = load(None, &Overrides::default()).unwrap();
        assert_eq!(c.routes[0].listen.to_string(), "tcp://127.0.0.1:50051");
        assert_eq!(c.routes[0].upstream.to_string(), "vsock://16:50051");
        assert_eq!(c.socks5.unwrap().listen.to_string(), "vsock://any:8888");
        assert_eq!(c.admin.unwrap().listen.to_string(), "tcp://127.0.0.1:9901");
    }

    #[test]
    fn parse_errors_name_line_and_key() {
        let e = err("[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n\n[timeouts]\nconect_ms = 5\n");
        assert!(e.starts_with("t.toml:5:"), "{e}");
        assert!(e.contains("timeouts.conect_ms"), "{e}");
        assert!(e.contains("unknown field"), "{e}");

        let e = err("[[ingress]]\nlisten = \"tcp://127.0.0.1:1\"\nupstream = \"vsock://enclave:50051\"\n");
        assert!(e.starts_with("t.toml:3:"), "{e}");
        assert!(e.contains("ingress.upstream") && e.contains("no host names"), "{e}");
    }

    #[test]
    fn parent_is_refused_as_listener_and_as_upstream() {
        let e = err("[socks5]\nlisten = \"vsock://parent:8888\"\n");
        assert!(e.contains("socks5.listen") && e.contains("vsock://any:PORT"), "{e}");
        let e = err("[[ingress]]\nlisten = \"tcp://127.0.0.1:1\"\nupstream = \"vsock://parent:50051\"\n");
        assert!(e.contains("ingress.upstream") && e.contains("enclave's CID"), "{e}");
        assert!(parse_dial("vsock://parent:1").unwrap_err().contains("vsock://parent:1"));
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let e = err(
            "[socks5]\nlisten = \"tcp://127.0.0.1:7000\"\n[[mapping]]\nlisten = \"tcp://127.0.0.1:7000\"\nupstream = \"tcp://a:1\"\n",
        );
        assert!(e.contains("mapping[0].listen") && e.contains("socks5.listen"), "{e}");
        let e = err("[admin]\nlisten = \"tcp://0.0.0.0:9901\"\n[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n");
        assert!(e.contains("admin.listen") && e.contains("loopback"), "{e}");
        let e = err("");
        assert!(e.contains("nothing to listen on"), "{e}");
        let e = err("[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n[forwarding]\nbuffer_size = 10\n");
        assert!(e.contains("forwarding.buffer_size"), "{e}");
        let e = err("[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n[forwarding]\nmode = \"zerocopy\"\n");
        assert!(e.contains("forwarding.mode"), "{e}");
    }

    #[test]
    fn an_otlp_section_is_refused_and_says_what_replaced_it() {
        let e = err(
            "[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n[otlp]\nendpoint = \"tcp://127.0.0.1:4317\"\ninterval_ms = 10000\n",
        );
        assert!(e.starts_with("t.toml: key `otlp`: the [otlp] section was removed"), "{e}");
        assert!(e.contains("the OpenTelemetry collector scrapes /metrics"), "{e}");
        assert!(!e.contains("unknown field"), "{e}");
        // Even an empty table: the section itself is what is gone.
        assert!(
            err("[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n[otlp]\n").contains("[otlp] section was removed")
        );
    }

    #[test]
    fn overrides_replace_the_first_ingress() {
        let o = Overrides {
            ingress_upstream: Some("unix:///tmp/x.sock".parse().unwrap()),
            forwarding: Some(ForwardMode::Copy),
            ..Overrides::default()
        };
        let c = load(None, &o).unwrap();
        assert_eq!(c.routes[0].upstream.to_string(), "unix:///tmp/x.sock");
        assert_eq!(c.forwarding.mode, ForwardMode::Copy);
    }
}
