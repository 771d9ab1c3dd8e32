//! The running daemon: listeners, one task per connection, reload and drain.
//!
//! Three kinds of listener share one accept loop:
//! - ingress (`[[ingress]]`): accept, dial the configured upstream (the enclave), forward;
//! - fixed mapping (`[[mapping]]`): the same, towards an operator-chosen `tcp://HOST:PORT`.
//!   The destination must pass `[policy]` (checked when the config is loaded), and every
//!   address its name resolves to is checked again at connect time, as for SOCKS5;
//! - SOCKS5 (`[socks5]`): the enclave names the destination; the policy checks the name, DNS
//!   runs here on the parent, and the policy checks every resolved address again.
//!
//! Every failure ends only its own connection, is counted with a reason, and is logged on the
//! connection's close line; SOCKS5 clients also get the matching reply code.

use std::fmt::Display;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use transport::socks5::{self, Address, Command, ReplyCode};
use transport::{Endpoint, Host, Listener, PeerAddr, Stream};

use crate::config::{AdminTimeouts, Config, ForwardingConfig, NotApplied, RouteKind, TimeoutsConfig};
use crate::dns::{DnsConfig, DnsError, Resolver};
use crate::forward::{self, Counters, ForwardError};
use crate::limits::{Limit, Permit};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::policy::{self, Policy};
use crate::watchdog::{self, Beat, Heartbeats};

/// What a reload may change for connections accepted after it.
pub struct Settings {
    pub policy: Policy,
    pub timeouts: TimeoutsConfig,
    pub forwarding: ForwardingConfig,
    /// Deadlines of admin endpoint connections.
    pub admin: AdminTimeouts,
}

impl Settings {
    fn forward_options(&self) -> forward::Options {
        forward::Options {
            mode: self.forwarding.mode,
            buffer_size: self.forwarding.buffer_size,
            idle: (self.timeouts.idle_ms > 0).then(|| Duration::from_millis(self.timeouts.idle_ms)),
        }
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.timeouts.connect_ms)
    }
}

/// State every connection task can see.
pub struct Shared {
    pub metrics: Metrics,
    /// Replaced when a reload changes `[dns]` (lookups in flight finish on the old one); every
    /// resolver counts into the same `vsockproxy_dns_cache_total` series.
    resolver: RwLock<(DnsConfig, Resolver)>,
    pub global: Arc<Limit>,
    pub draining: AtomicBool,
    settings: RwLock<Arc<Settings>>,
    next_id: AtomicU64,
}

impl Shared {
    pub fn resolver(&self) -> Resolver {
        match self.resolver.read() {
            Ok(r) => r.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Puts a resolver for `dns` in place if that differs from the one running; the cache
    /// starts empty (its answers may come from servers or static hosts no longer configured).
    fn set_dns(&self, dns: &DnsConfig) -> Result<bool, DnsError> {
        let unchanged = match self.resolver.read() {
            Ok(r) => r.0 == *dns,
            Err(poisoned) => poisoned.into_inner().0 == *dns,
        };
        if unchanged {
            return Ok(false);
        }
        // Built before taking the lock: lookups go on meanwhile. Reloads are serial (the main
        // loop), so nothing else replaces the resolver in between.
        let fresh = Resolver::with_counters(dns, self.metrics.dns_cache.clone())?;
        let mut guard = match self.resolver.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = (dns.clone(), fresh);
        Ok(true)
    }

    pub fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_settings(&self, s: Settings) {
        let mut guard = match self.settings.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(s);
    }
}

pub enum Role {
    Route { kind: RouteKind, upstream: RwLock<Endpoint> },
    Socks5,
}

/// One bound listener.
pub struct ListenerState {
    pub name: String,
    /// As configured (what a reload matches on).
    pub listen: Endpoint,
    /// As bound (the real port when 0 was configured).
    pub bound: Endpoint,
    pub role: Role,
    pub metrics: Arc<ListenerMetrics>,
}

impl ListenerState {
    pub fn upstream(&self) -> Option<Endpoint> {
        match &self.role {
            Role::Route { upstream, .. } => Some(match upstream.read() {
                Ok(u) => u.clone(),
                Err(p) => p.into_inner().clone(),
            }),
            Role::Socks5 => None,
        }
    }

    pub fn is_ingress(&self) -> bool {
        matches!(self.role, Role::Route { kind: RouteKind::Ingress, .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Bind(#[from] transport::BindError),
    #[error("listener {name}: {source}")]
    Local { name: String, source: io::Error },
    #[error("[dns]: {0}")]
    Dns(DnsError),
    #[error("listener {name}: cannot hand the listening socket to the forwarding threads: {source}")]
    Spread { name: String, source: io::Error },
}

/// The daemon after binding: listeners are open, accept loops not yet started.
pub struct Proxy {
    pub shared: Arc<Shared>,
    pub listeners: Vec<Arc<ListenerState>>,
    /// The accept loops' check-ins for the watchdog.
    pub heartbeats: Arc<Heartbeats>,
    pending: Vec<Listener>,
    /// Cancelled at the drain: the accept loops end and their listeners close.
    stop: CancellationToken,
    /// The accept loops.
    tasks: Vec<JoinHandle<()>>,
    /// Every connection task, so the drain wakes when the last one ends (not on a poll).
    connections: TaskTracker,
    /// How often the loops check in with the watchdog (set by [`start`](Self::start)); the
    /// drain checks in as often while it waits.
    beat_every: Option<Duration>,
    /// Forwarding threads the accept loops run on (0: the runtime that called `start`).
    threads: usize,
}

impl Proxy {
    /// Binds every listener of `config`; nothing is accepted until [`start`](Self::start).
    pub async fn bind(config: Config) -> Result<Proxy, StartError> {
        let global = Limit::new(config.limits.max_connections);
        let metrics = Metrics::new(global.clone());
        let resolver =
            Resolver::with_counters(&config.dns, metrics.dns_cache.clone()).map_err(StartError::Dns)?;
        let shared = Arc::new(Shared {
            metrics,
            resolver: RwLock::new((config.dns.clone(), resolver)),
            global,
            draining: AtomicBool::new(false),
            settings: RwLock::new(Arc::new(Settings {
                policy: config.policy,
                timeouts: config.timeouts.clone(),
                forwarding: config.forwarding.clone(),
                admin: AdminTimeouts::from_config(config.admin.as_ref()),
            })),
            next_id: AtomicU64::new(1),
        });
        if let Some(a) = &config.admin {
            shared.metrics.admin.limit.set_max(a.max_connections);
        }
        let mut specs: Vec<(String, Endpoint, Role, usize, &'static str)> = config
            .routes
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.listen.clone(),
                    Role::Route { kind: r.kind, upstream: RwLock::new(r.upstream.clone()) },
                    r.max_connections,
                    r.kind.label(),
                )
            })
            .collect();
        if let Some(s) = &config.socks5 {
            specs.push((s.name.clone(), s.listen.clone(), Role::Socks5, s.max_connections, "socks5"));
        }
        let mut listeners = Vec::new();
        let mut pending = Vec::new();
        for (name, listen, role, max, kind) in specs {
            let listener = Listener::bind(&listen).await?;
            let bound = listener
                .local_endpoint()
                .map_err(|source| StartError::Local { name: name.clone(), source })?;
            let metrics = shared.metrics.listener(kind, &name, Limit::new(max));
            info!(listener = %name, kind, listen = %bound, "listening");
            listeners.push(Arc::new(ListenerState { name, listen, bound, role, metrics }));
            pending.push(listener);
        }
        Ok(Proxy {
            shared,
            listeners,
            pending,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            connections: TaskTracker::new(),
            beat_every: None,
            threads: 0,
            heartbeats: Heartbeats::new(),
        })
    }

    /// Starts the accept loops: one per listener and runtime in `runtimes` (each on a `dup` of
    /// the listening socket, see [`crate::workers`]), or one per listener on the calling
    /// runtime when `runtimes` is empty. With `beat_every`, each loop checks in with
    /// [`Proxy::heartbeats`] that often (from inside the loop, so a wedged loop stops checking in).
    pub fn start(&mut self, beat_every: Option<Duration>, runtimes: &[Handle]) -> Result<(), StartError> {
        self.beat_every = beat_every;
        self.threads = runtimes.len();
        let placement = (!runtimes.is_empty()).then(|| Arc::new(Placement::new(runtimes)));
        if let Some(p) = &placement {
            self.shared.metrics.set_threads(p.load.clone());
        }
        for (listener, state) in self.pending.drain(..).zip(self.listeners.iter()) {
            let placed: Vec<(Listener, Option<usize>)> = match &placement {
                None => vec![(listener, None)],
                Some(_) => {
                    let clones = listener
                        .spread(runtimes)
                        .map_err(|source| StartError::Spread { name: state.name.clone(), source })?;
                    clones.into_iter().enumerate().map(|(i, l)| (l, Some(i))).collect()
                }
            };
            for (listener, index) in placed {
                let beat = beat_every.map(|every| {
                    let name = match index {
                        Some(i) => format!("accept {} #{i}", state.name),
                        None => format!("accept {}", state.name),
                    };
                    (self.heartbeats.register(name), every)
                });
                let task = accept_loop(
                    listener,
                    state.clone(),
                    self.shared.clone(),
                    self.stop.clone(),
                    self.connections.clone(),
                    beat,
                    placement.clone().zip(index),
                );
                self.tasks.push(match index {
                    Some(i) => runtimes[i].spawn(task),
                    None => tokio::spawn(task),
                });
            }
        }
        Ok(())
    }

    /// Applies a new, already validated configuration to what is running: policy, upstreams,
    /// caps, timeouts, forwarding, `[dns]` and the admin endpoint's caps and deadlines. Returns
    /// what could not be applied without a restart (listeners added or removed), by section.
    pub fn reload(&self, config: Config) -> Vec<NotApplied> {
        let mut notes = Vec::new();
        let mut note = |section: &'static str, note: String| notes.push(NotApplied { section, note });
        let mut matched = vec![false; config.routes.len()];
        let mut socks_matched = false;
        for l in &self.listeners {
            match &l.role {
                Role::Route { kind, upstream } => {
                    let found = config
                        .routes
                        .iter()
                        .enumerate()
                        .find(|(_, r)| r.kind == *kind && r.listen == l.listen);
                    match found {
                        Some((i, r)) => {
                            matched[i] = true;
                            l.metrics.limit.set_max(r.max_connections);
                            let mut guard = match upstream.write() {
                                Ok(g) => g,
                                Err(p) => p.into_inner(),
                            };
                            if *guard != r.upstream {
                                info!(listener = %l.name, from = %*guard, to = %r.upstream, "upstream changed");
                                *guard = r.upstream.clone();
                            }
                        }
                        None => note(
                            kind.label(),
                            format!(
                                "{} {} is no longer configured; it keeps serving until a restart",
                                kind.label(),
                                l.listen
                            ),
                        ),
                    }
                }
                Role::Socks5 => match &config.socks5 {
                    Some(s) if s.listen == l.listen => {
                        socks_matched = true;
                        l.metrics.limit.set_max(s.max_connections);
                    }
                    _ => note(
                        "socks5",
                        format!(
                            "socks5 {} is no longer configured; it keeps serving until a restart",
                            l.listen
                        ),
                    ),
                },
            }
        }
        for (r, m) in config.routes.iter().zip(&matched) {
            if !m {
                note(r.kind.label(), format!("new {} listener {} needs a restart", r.kind.label(), r.listen));
            }
        }
        if let (Some(s), false) = (&config.socks5, socks_matched) {
            note("socks5", format!("new socks5 listener {} needs a restart", s.listen));
        }
        match self.shared.set_dns(&config.dns) {
            Ok(true) => info!("[dns] changed: new lookups use the new settings (cache emptied)"),
            Ok(false) => {}
            Err(e) => note("dns", format!("[dns] not applied, the running resolver stays: {e}")),
        }
        if self.threads > 0 && config.forwarding.thread_count() != self.threads {
            note(
                "forwarding",
                format!(
                    "forwarding.threads now asks for {} threads, {} are running: needs a restart",
                    config.forwarding.thread_count(),
                    self.threads
                ),
            );
        }
        self.shared.global.set_max(config.limits.max_connections);
        if let Some(a) = &config.admin {
            self.shared.metrics.admin.limit.set_max(a.max_connections);
        }
        self.shared.set_settings(Settings {
            policy: config.policy,
            timeouts: config.timeouts,
            forwarding: config.forwarding,
            admin: AdminTimeouts::from_config(config.admin.as_ref()),
        });
        notes
    }

    /// Stops accepting (listeners close), then waits up to `deadline` for in-flight
    /// connections to finish, checking in with `beat` as it waits (as often as the accept loops
    /// did). Returns as soon as the last connection ends (0), or at the deadline with how many
    /// were still open.
    pub async fn drain(mut self, deadline: Duration, beat: Option<&Beat>) -> usize {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        // No accept loop is left to spawn a connection task: the tracker only empties from now.
        self.connections.close();
        let until = tokio::time::sleep(deadline);
        tokio::pin!(until);
        let mut timer = watchdog::beat_timer(beat.and(self.beat_every));
        loop {
            if let Some(b) = beat {
                b.beat();
            }
            tokio::select! {
                () = self.connections.wait() => return 0,
                () = &mut until => return self.connections.len(),
                () = watchdog::next_tick(&mut timer) => {}
            }
        }
    }
}

/// The forwarding threads' runtimes and how many connections each is running: an accept loop
/// runs a new connection on the least loaded one (itself on a tie), so long-lived connections
/// that arrive together (envoy's to the enclave) do not end up on one thread.
struct Placement {
    runtimes: Vec<Handle>,
    /// Also read by [`Metrics`] (`vsockproxy_thread_connections`, see [`Metrics::set_threads`]).
    load: Arc<[AtomicUsize]>,
}

impl Placement {
    fn new(runtimes: &[Handle]) -> Placement {
        Placement {
            runtimes: runtimes.to_vec(),
            load: runtimes.iter().map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// The runtime for a connection accepted on runtime `local`, with its load counted until
    /// the returned guard drops.
    fn place(self: &Arc<Self>, local: usize) -> Placed {
        let mut best = local;
        let mut least = self.load[local].load(Ordering::Relaxed);
        for (i, load) in self.load.iter().enumerate() {
            let n = load.load(Ordering::Relaxed);
            if n < least {
                best = i;
                least = n;
            }
        }
        self.load[best].fetch_add(1, Ordering::Relaxed);
        Placed { placement: self.clone(), index: best }
    }
}

/// A connection's place in [`Placement`]'s count.
struct Placed {
    placement: Arc<Placement>,
    index: usize,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.placement.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(
    listener: Listener,
    state: Arc<ListenerState>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    connections: TaskTracker,
    beat: Option<(Beat, Duration)>,
    placement: Option<(Arc<Placement>, usize)>,
) {
    let mut timer = watchdog::beat_timer(beat.as_ref().map(|(_, every)| *every));
    loop {
        let accepted = tokio::select! {
            r = listener.accept_socket() => r,
            () = stop.cancelled() => break,
            // Checked in from inside this loop: it beats only while the loop is being run.
            () = watchdog::next_tick(&mut timer) => {
                if let Some((b, _)) = &beat {
                    b.beat();
                }
                continue;
            }
        };
        let accepted = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors or a connection reset before accept: the listener
                // stays; back off briefly so a full fd table does not spin.
                warn!(listener = %state.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        state.metrics.accepted.inc();
        let permit = match Permit::acquire(&shared.global, &state.metrics.limit) {
            Ok(p) => p,
            Err(refusal) => {
                state.metrics.refused(refusal.label());
                warn!(listener = %state.name, peer = %accepted.peer(), reason = refusal.label(), "connection refused: limit reached");
                drop(accepted);
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", id, listener = %state.name);
        let placed = placement.as_ref().map(|(p, local)| p.place(*local));
        let remote = match (&placed, &placement) {
            (Some(placed), Some((p, local))) if placed.index != *local => {
                shared.metrics.moved.inc();
                Some(&p.runtimes[placed.index])
            }
            _ => None,
        };
        let (state, shared) = (state.clone(), shared.clone());
        let task = async move {
            let _permit = permit;
            let _placed = placed;
            // Registered with the reactor of the runtime that runs the connection.
            let (stream, peer) = match accepted.into_stream() {
                Ok(x) => x,
                Err(e) => {
                    warn!(listener = %state.name, error = %e, "cannot register an accepted connection");
                    return;
                }
            };
            match &state.role {
                Role::Route { .. } => serve_route(stream, peer, &state, &shared).await,
                Role::Socks5 => serve_socks5(stream, peer, &state, &shared).await,
            }
        }
        .instrument(span);
        match remote {
            Some(runtime) => connections.spawn_on(task, runtime),
            None => connections.spawn(task),
        };
    }
    debug!(listener = %state.name, "accept loop stopped");
}

/// Why a connection ended before any byte was forwarded.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("resolve {name}: {source}")]
    Dns { name: String, source: DnsError },
    #[error("resolve {name}: timed out after {after:?}")]
    DnsTimeout { name: String, after: Duration },
    /// `dest` is the policy's own one-line explanation.
    #[error("{dest}")]
    Denied { dest: String, kind: &'static str },
    #[error("connect to {dest}: timed out after {after:?}")]
    Timeout { dest: String, after: Duration },
    #[error("connect to {dest}: {source}")]
    Io { dest: String, source: io::Error },
    #[error("{0}")]
    Transport(transport::ConnectError),
}

impl DialError {
    /// The refusal reason in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DialError::Dns { .. } | DialError::DnsTimeout { .. } => "dns",
            DialError::Denied { .. } => "policy",
            DialError::Timeout { .. } => "connect_timeout",
            DialError::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused => {
                "connect_refused"
            }
            DialError::Transport(e) if e.io_kind() == Some(io::ErrorKind::ConnectionRefused) => {
                "connect_refused"
            }
            DialError::Transport(e) if e.io_kind() == Some(io::ErrorKind::TimedOut) => "connect_timeout",
            _ => "connect_error",
        }
    }

    /// The SOCKS5 reply for this failure (RFC 1928 section 6).
    pub fn reply(&self) -> ReplyCode {
        match self {
            DialError::Dns { .. } | DialError::DnsTimeout { .. } => ReplyCode::HostUnreachable,
            DialError::Denied { .. } => ReplyCode::NotAllowed,
            DialError::Timeout { .. } => ReplyCode::TtlExpired,
            DialError::Io { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => ReplyCode::ConnectionRefused,
                io::ErrorKind::NetworkUnreachable => ReplyCode::NetworkUnreachable,
                io::ErrorKind::HostUnreachable => ReplyCode::HostUnreachable,
                io::ErrorKind::TimedOut => ReplyCode::TtlExpired,
                _ => ReplyCode::GeneralFailure,
            },
            DialError::Transport(_) => ReplyCode::GeneralFailure,
        }
    }
}

/// Resolves `name` through the shared resolver, timing it.
async fn resolve(shared: &Shared, name: &str, budget: Duration) -> Result<Arc<[IpAddr]>, DialError> {
    let t = Instant::now();
    let r = tokio::time::timeout(budget, shared.resolver().lookup(name)).await;
    shared.metrics.dns_seconds.observe(t.elapsed());
    match r {
        Ok(Ok(ips)) => Ok(ips),
        Ok(Err(source)) => Err(DialError::Dns { name: name.to_string(), source }),
        Err(_) => Err(DialError::DnsTimeout { name: name.to_string(), after: budget }),
    }
}

/// Tries each address in turn, each with its own timeout; the last failure is returned.
async fn connect_any(
    shared: &Shared,
    addrs: &[SocketAddr],
    budget: Duration,
) -> Result<TcpStream, DialError> {
    let mut last = None;
    for addr in addrs {
        let t = Instant::now();
        match tokio::time::timeout(budget, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                shared.metrics.tcp_seconds.observe(t.elapsed());
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(source)) => {
                debug!(dest = %addr, error = %source, "connect failed, trying the next address");
                last = Some(DialError::Io { dest: addr.to_string(), source });
            }
            Err(_) => last = Some(DialError::Timeout { dest: addr.to_string(), after: budget }),
        }
    }
    Err(last.unwrap_or_else(|| DialError::Io {
        dest: "(no address)".into(),
        source: io::Error::new(io::ErrorKind::NotFound, "no address to connect to"),
    }))
}

/// Keeps the addresses the policy allows (`None`: no policy applies, all pass).
fn allowed_addrs(
    shared: &Shared,
    policy: Option<&Policy>,
    name: Option<&str>,
    ips: &[IpAddr],
    port: u16,
) -> Result<Vec<SocketAddr>, DialError> {
    let mut allowed = Vec::with_capacity(ips.len());
    let mut first_denial = None;
    for ip in ips {
        match policy.map_or(Ok(()), |p| p.check_ip(name, *ip, port)) {
            Ok(()) => allowed.push(SocketAddr::new(*ip, port)),
            Err(d) => {
                shared.metrics.denied(d.kind());
                debug!(name, %ip, port, kind = d.kind(), "address refused by policy");
                first_denial.get_or_insert(d);
            }
        }
    }
    if allowed.is_empty() {
        return Err(match first_denial {
            Some(d) => DialError::Denied { dest: d.to_string(), kind: d.kind() },
            None => DialError::Denied { dest: format!("{}:{port}", name.unwrap_or("?")), kind: "no_address" },
        });
    }
    Ok(allowed)
}

/// Dials a fixed upstream (ingress, mapping, readiness probe). With a policy (mappings), every
/// address is checked before it is dialed.
pub async fn dial_fixed(
    shared: &Shared,
    endpoint: &Endpoint,
    policy: Option<&Policy>,
    budget: Duration,
) -> Result<Stream, DialError> {
    match endpoint {
        Endpoint::Tcp { host: Host::Name(name), port } => {
            let ips = resolve(shared, name, budget).await?;
            let addrs = allowed_addrs(shared, policy, Some(name), &ips, *port)?;
            Ok(Stream::Tcp(connect_any(shared, &addrs, budget).await?))
        }
        Endpoint::Tcp { host: Host::Ip(ip), port } => {
            let addrs = allowed_addrs(shared, policy, None, &[*ip], *port)?;
            Ok(Stream::Tcp(connect_any(shared, &addrs, budget).await?))
        }
        other => {
            let t = Instant::now();
            match tokio::time::timeout(budget, Stream::connect(other)).await {
                Ok(Ok(s)) => {
                    shared.metrics.tcp_seconds.observe(t.elapsed());
                    Ok(s)
                }
                Ok(Err(e)) => Err(DialError::Transport(e)),
                Err(_) => Err(DialError::Timeout { dest: other.to_string(), after: budget }),
            }
        }
    }
}

async fn serve_route(client: Stream, peer: PeerAddr, state: &ListenerState, shared: &Shared) {
    let started = Instant::now();
    let settings = shared.settings();
    let Some(upstream) = state.upstream() else { return };
    info!(%peer, dest = %upstream, "open");
    // Ingress dials the enclave (operator-chosen, not egress); mappings are egress.
    let policy = (!state.is_ingress()).then_some(&settings.policy);
    match dial_fixed(shared, &upstream, policy, settings.connect_timeout()).await {
        Ok(up) => {
            let conn = Conn { peer: &peer, started, state, shared };
            pipe(client, up, &conn, &upstream, &settings).await
        }
        Err(e) => {
            state.metrics.refused(e.reason());
            warn!(%peer, dest = %upstream, reason = e.reason(), error = %e,
                duration_ms = started.elapsed().as_millis() as u64, "close");
        }
    }
}

/// One accepted connection: who, when, on which listener.
struct Conn<'a> {
    peer: &'a PeerAddr,
    started: Instant,
    state: &'a ListenerState,
    shared: &'a Shared,
}

/// `dest` is spelled out only for the close line, when that is logged (a string field, as it
/// always was).
async fn pipe(
    client: Stream,
    upstream: Stream,
    conn: &Conn<'_>,
    dest: &(dyn Display + Sync),
    settings: &Settings,
) {
    let Conn { peer, started, state, shared } = conn;
    let counters = Counters::default();
    let result = forward::forward(
        client,
        upstream,
        settings.forward_options(),
        &counters,
        state.metrics.client_to_upstream.inner(),
        state.metrics.upstream_to_client.inner(),
        &shared.metrics.splice,
    )
    .await;
    let up = counters.client_to_upstream.load(Ordering::Relaxed);
    let down = counters.upstream_to_client.load(Ordering::Relaxed);
    let duration_ms = started.elapsed().as_millis() as u64;
    let dest = || dest.to_string();
    match result {
        Ok(()) => {
            info!(%peer, dest = dest().as_str(), bytes_up = up, bytes_down = down, duration_ms, "close")
        }
        Err(ForwardError::Idle(_)) => {
            info!(%peer, dest = dest().as_str(), bytes_up = up, bytes_down = down, duration_ms, "close: idle timeout")
        }
        Err(e) => {
            info!(%peer, dest = dest().as_str(), bytes_up = up, bytes_down = down, duration_ms, error = %e, "close")
        }
    }
}

/// A SOCKS5 "domain" that is an IP literal in any spelling (`127.1`, `0x7f000001`,
/// `[::ffff:127.0.0.1]`) is that address: it skips DNS (the policy already checked it as one).
fn literal_ip(name: &str) -> Option<IpAddr> {
    match policy::parse_ip_literal(&policy::normalised(name)) {
        Some(Ok(ip)) => Some(ip),
        _ => None,
    }
}

/// Where a SOCKS5 CONNECT goes after the policy's check before DNS ([`egress_target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressTarget<'a> {
    /// An address (given as one, or a name that is an IP literal in any spelling): checked with
    /// `check_ip(None, ..)`, never resolved.
    Ip(IpAddr, u16),
    /// A name that passed [`Policy::check_name`]: resolved next, and every address it resolves
    /// to checked with `check_ip(Some(name), ..)`.
    Name(&'a str, u16),
}

/// The policy's decision on a SOCKS5 destination before DNS: a refused name is never resolved.
/// Pure, so the fuzz target `socks5_policy` runs exactly what `egress_connect` runs.
pub fn egress_target<'a>(policy: &Policy, dest: &'a Address) -> Result<EgressTarget<'a>, policy::Denied> {
    match dest {
        Address::Ip(sa) => Ok(EgressTarget::Ip(sa.ip(), sa.port())),
        Address::Domain(name, port) => {
            policy.check_name(name, *port)?;
            Ok(match literal_ip(name) {
                Some(ip) => EgressTarget::Ip(ip, *port),
                None => EgressTarget::Name(name, *port),
            })
        }
    }
}

/// Policy check, resolution and connect for one SOCKS5 request.
async fn egress_connect(
    shared: &Shared,
    settings: &Settings,
    dest: &Address,
) -> Result<TcpStream, DialError> {
    let budget = settings.connect_timeout();
    let (name, port, ips): (Option<&str>, u16, Arc<[IpAddr]>) = match egress_target(&settings.policy, dest) {
        Ok(EgressTarget::Ip(ip, port)) => (None, port, Arc::from([ip])),
        Ok(EgressTarget::Name(name, port)) => (Some(name), port, resolve(shared, name, budget).await?),
        Err(d) => {
            shared.metrics.denied(d.kind());
            return Err(DialError::Denied { dest: d.to_string(), kind: d.kind() });
        }
    };
    let allowed = allowed_addrs(shared, Some(&settings.policy), name, &ips, port)?;
    connect_any(shared, &allowed, budget).await
}

async fn serve_socks5(mut client: Stream, peer: PeerAddr, state: &ListenerState, shared: &Shared) {
    let started = Instant::now();
    let handshake = Duration::from_millis(shared.settings().timeouts.handshake_ms);
    let request = match tokio::time::timeout(handshake, socks5::server_handshake(&mut client)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            state.metrics.refused("handshake");
            info!(%peer, error = %e, "close: bad SOCKS5 handshake");
            return;
        }
        Err(_) => {
            state.metrics.refused("handshake_timeout");
            info!(%peer, after_ms = handshake.as_millis() as u64, "close: SOCKS5 handshake timed out");
            return;
        }
    };
    // The request is decided under the settings in force now, not at accept: a SIGHUP that
    // revoked a rule while this client was in its handshake applies to it.
    let settings = shared.settings();
    // `HOST:PORT` in the log lines (a string field), spelled out only for a line that is logged.
    let dest = || request.dest.to_string();
    if !matches!(request.command, Command::Connect) {
        state.metrics.refused("command");
        let _ = socks5::send_reply(&mut client, ReplyCode::CommandNotSupported, None).await;
        info!(%peer, dest = dest().as_str(), command = ?request.command, "close: command not supported");
        return;
    }
    info!(%peer, dest = dest().as_str(), "open");
    match egress_connect(shared, &settings, &request.dest).await {
        Ok(up) => {
            let bound = up.local_addr().ok();
            if let Err(e) = socks5::send_reply(&mut client, ReplyCode::Succeeded, bound).await {
                info!(%peer, dest = dest().as_str(), error = %e, "close: client gone before the reply");
                return;
            }
            let conn = Conn { peer: &peer, started, state, shared };
            pipe(client, Stream::Tcp(up), &conn, &request.dest, &settings).await;
        }
        Err(e) => {
            state.metrics.refused(e.reason());
            let _ = socks5::send_reply(&mut client, e.reply(), None).await;
            warn!(%peer, dest = dest().as_str(), reason = e.reason(), reply = ?e.reply(), error = %e,
                duration_ms = started.elapsed().as_millis() as u64, "close");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_socks5_reply_codes_and_reasons() {
        let io = |kind: io::ErrorKind| DialError::Io { dest: "192.0.2.1:443".into(), source: kind.into() };
        let cases = [
            (
                DialError::Timeout { dest: "x".into(), after: Duration::from_secs(5) },
                ReplyCode::TtlExpired,
                "connect_timeout",
            ),
            (io(io::ErrorKind::ConnectionRefused), ReplyCode::ConnectionRefused, "connect_refused"),
            (io(io::ErrorKind::NetworkUnreachable), ReplyCode::NetworkUnreachable, "connect_error"),
            (io(io::ErrorKind::HostUnreachable), ReplyCode::HostUnreachable, "connect_error"),
            (io(io::ErrorKind::PermissionDenied), ReplyCode::GeneralFailure, "connect_error"),
            (
                DialError::DnsTimeout { name: "a.b".into(), after: Duration::from_secs(1) },
                ReplyCode::HostUnreachable,
                "dns",
            ),
            (DialError::Denied { dest: "x".into(), kind: "no_rule" }, ReplyCode::NotAllowed, "policy"),
        ];
        for (err, reply, reason) in cases {
            assert_eq!((err.reply(), err.reason()), (reply, reason), "{err}");
        }
    }

    #[test]
    fn egress_target_checks_names_before_dns_and_turns_literals_into_addresses() {
        let config = policy::PolicyConfig {
            allow: vec![policy::RuleConfig {
                host: Some("*.amazonaws.com".into()),
                ports: vec!["443".into()],
                ..Default::default()
            }],
        };
        let policy = Policy::new(&config).unwrap();
        let domain = |name: &str, port| Address::Domain(name.into(), port);
        let kms = domain("kms.us-east-1.amazonaws.com", 443);
        assert_eq!(egress_target(&policy, &kms), Ok(EgressTarget::Name("kms.us-east-1.amazonaws.com", 443)));
        assert_eq!(
            egress_target(&policy, &domain("kms.us-east-1.amazonaws.com", 80)).unwrap_err().kind(),
            "port"
        );
        assert_eq!(egress_target(&policy, &domain("example.com", 443)).unwrap_err().kind(), "no_rule");
        // IMDS spelled as a name is judged as the address, and no host rule opens it.
        assert_eq!(egress_target(&policy, &domain("0xa9fea9fe", 443)).unwrap_err().kind(), "special_address");
        let imds: IpAddr = "169.254.169.254".parse().unwrap();
        let allow_imds = Policy::new(&policy::PolicyConfig {
            allow: vec![policy::RuleConfig {
                ip: Some(imds.to_string()),
                ports: vec!["80".into()],
                ..Default::default()
            }],
        })
        .unwrap();
        assert_eq!(egress_target(&allow_imds, &domain("169.254.43518", 80)), Ok(EgressTarget::Ip(imds, 80)));
        // A given address is left to check_ip.
        let given = Address::Ip(SocketAddr::new(imds, 80));
        assert_eq!(egress_target(&policy, &given), Ok(EgressTarget::Ip(imds, 80)));
    }

    /// A proxy with one mapping to a local echo server, accepting; and a connection through it
    /// that has carried a byte each way (so its task runs).
    async fn proxy_with_a_connection() -> (Proxy, TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsockproxy.toml");
        let text = format!(
            "[[mapping]]\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{upstream}\"\n\
             [[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"*\"]\n"
        );
        std::fs::write(&path, text).unwrap();
        let config = crate::config::load(Some(&path), &Default::default()).unwrap();
        let mut proxy = Proxy::bind(config).await.unwrap();
        proxy.start(None, &[]).unwrap();
        let Endpoint::Tcp { host: Host::Ip(ip), port } = proxy.listeners[0].bound else {
            panic!("tcp listener")
        };
        let mut client = TcpStream::connect(SocketAddr::new(ip, port)).await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        client.read_exact(&mut b).await.unwrap();
        (proxy, client)
    }

    /// The drain wakes when the last connection ends, however long its deadline.
    #[tokio::test]
    async fn drain_returns_once_the_last_connection_ends() {
        let (proxy, client) = proxy_with_a_connection().await;
        let drain = tokio::spawn(proxy.drain(Duration::from_secs(600), None));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!drain.is_finished(), "the drain ended with a connection open");
        drop(client);
        let left = tokio::time::timeout(Duration::from_secs(2), drain).await;
        assert_eq!(left.expect("drained well before the deadline").unwrap(), 0);
    }

    /// At the deadline the drain returns how many connections are still open.
    #[tokio::test]
    async fn drain_counts_the_connections_open_at_its_deadline() {
        let (proxy, _client) = proxy_with_a_connection().await;
        let left = tokio::time::timeout(Duration::from_secs(5), proxy.drain(Duration::from_millis(50), None));
        assert_eq!(left.await.expect("the drain keeps its deadline"), 1);
    }

    #[test]
    fn literal_spellings_are_addresses() {
        assert_eq!(literal_ip("[::ffff:127.0.0.1]"), "::ffff:127.0.0.1".parse().ok());
        assert_eq!(literal_ip("10.0.0.1"), "10.0.0.1".parse().ok());
        assert_eq!(literal_ip("127.1"), "127.0.0.1".parse().ok());
        assert_eq!(literal_ip("0x7f000001"), "127.0.0.1".parse().ok());
        assert_eq!(literal_ip("kms.us-east-1.amazonaws.com"), None);
    }
}
