//! The daemon's life: load and validate, bind, READY=1, serve, reload on SIGHUP, drain on
//! SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};
use transport::Endpoint;

use crate::cli::RunArgs;
use crate::config::NotApplied;
use crate::config::{Config, ForwardMode, Source};
use crate::fds::{self, Fit};
use crate::logging::Logging;
use crate::server::Proxy;
use crate::workers::Workers;
use crate::{admin, notify, sys, watchdog};

/// Exit code for an invalid configuration (nothing was started).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when a listener cannot be bound or the daemon fails at run time.
pub const EXIT_RUNTIME: u8 = 1;

/// `vsockproxy check FILE`.
pub fn check(path: &std::path::Path) -> ExitCode {
    let source = Source { path: Some(path.to_path_buf()), overrides: Default::default() };
    match source.load() {
        Ok(c) => {
            // The descriptor limit is the running process's (systemd's LimitNOFILE=), so `check`
            // reports what the caps need and `run` compares it with the real limit.
            println!(
                "{}: ok ({} ingress/mapping listener(s), socks5 {}, admin {}; up to {} file descriptors \
                 at the connection caps: {} connections x {} + {})",
                c.source,
                c.routes.len(),
                c.socks5.as_ref().map(|s| s.listen.to_string()).unwrap_or_else(|| "off".into()),
                c.admin.as_ref().map(|a| a.listen.to_string()).unwrap_or_else(|| "off".into()),
                fds::needed(&c),
                fds::in_flight(&c),
                fds::PER_CONNECTION,
                fds::overhead(&c),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The soft `RLIMIT_NOFILE` after raising it to the hard limit (`u64::MAX` if unknown).
fn raise_nofile() -> (u64, Result<(u64, u64), std::io::Error>) {
    let raised = sys::raise_nofile_limit();
    let nofile = match &raised {
        Ok((_, after)) => *after,
        Err(_) => sys::nofile_limit().map_or(u64::MAX, |(soft, _)| soft),
    };
    (nofile, raised)
}

/// `vsockproxy run`.
pub fn run(args: RunArgs) -> ExitCode {
    let source = args.source();
    // Validated before the runtime, the logger or any socket exists; the caps against the
    // descriptor limit too.
    let mut config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (nofile, raised) = raise_nofile();
    let fit = match fds::fit(&mut config, nofile) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let logging = Logging::init(&config.log);
    match raised {
        Ok((before, after)) => info!(before, after, needed = fds::needed(&config), "RLIMIT_NOFILE"),
        Err(e) => warn!(error = %e, nofile, "cannot raise RLIMIT_NOFILE"),
    }
    log_fit(fit, nofile);
    warn_pipe_size(&config);
    // The control plane (signals, reload, admin) runs here; connections run on the forwarding
    // threads, a runtime each (src/workers.rs).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let threads = config.forwarding.thread_count();
    let workers = match Workers::start(threads) {
        Ok(w) => w,
        Err(e) => {
            error!(error = %e, threads, "cannot start the forwarding threads");
            eprintln!("error: cannot start {threads} forwarding threads: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    info!(threads, "forwarding threads started");
    let code = runtime.block_on(serve(source, config, nofile, logging, workers.handles()));
    // Connections still open after the drain deadline are cut here.
    workers.stop();
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

fn log_fit(fit: Fit, nofile: u64) {
    if let Fit::Lowered { from, to } = fit {
        info!(
            from,
            to,
            nofile,
            "limits.max_connections derived from RLIMIT_NOFILE ({} file descriptors per connection)",
            fds::PER_CONNECTION
        );
    }
}

/// Pipes above `fs.pipe-max-size` need CAP_SYS_RESOURCE, which the unit does not grant.
fn warn_pipe_size(config: &Config) {
    let size = config.forwarding.buffer_size;
    if config.forwarding.mode == ForwardMode::Splice
        && let Some(max) = sys::pipe_max_size()
        && size > max
    {
        warn!(
            buffer_size = size,
            pipe_max_size = max,
            "forwarding.buffer_size is above fs.pipe-max-size: without CAP_SYS_RESOURCE the \
             kernel keeps splice pipes at their default size (vsockproxy_splice_pipe_errors_total{{op=\"resize\"}})"
        );
    }
}

/// What runs beside the proxy and a reload may change: the logger, and the admin endpoint's
/// address (which needs a restart).
struct Sidecars {
    logging: Logging,
    admin_listen: Option<Endpoint>,
}

impl Sidecars {
    /// Applies `[log]`; reports an `[admin]` address change, which needs a restart (its caps
    /// and deadlines are applied by [`Proxy::reload`]).
    fn reload(&mut self, config: &Config) -> Vec<NotApplied> {
        let mut notes = self.logging.reload(&config.log);
        let listen = config.admin.as_ref().map(|a| &a.listen);
        if listen != self.admin_listen.as_ref() {
            let shown = |e: Option<&Endpoint>| e.map_or("none".to_string(), |e| e.to_string());
            notes.push(NotApplied {
                section: "admin",
                note: format!(
                    "admin.listen changed from {} to {}: needs a restart (the endpoint stays where it is)",
                    shown(self.admin_listen.as_ref()),
                    shown(listen)
                ),
            });
        }
        notes
    }
}

async fn serve(
    source: Source,
    config: Config,
    nofile: u64,
    logging: Logging,
    runtimes: &[tokio::runtime::Handle],
) -> ExitCode {
    let admin_ep = config.admin.as_ref().map(|a| a.listen.clone());
    let config_name = config.source.clone();
    let mut proxy = match Proxy::bind(config).await {
        Ok(p) => p,
        Err(e) => {
            error!(error = %e, "start failed");
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let (stop_admin, stop_rx) = watch::channel(false);
    if let Some(ep) = &admin_ep {
        let listener = match transport::Listener::bind(ep).await {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "admin endpoint");
                eprintln!("error: admin.listen: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        match listener.local_endpoint() {
            Ok(bound) => info!(listen = %bound, "admin listening"),
            Err(e) => warn!(error = %e, "admin endpoint address"),
        }
        let listeners = Arc::new(proxy.listeners.clone());
        tokio::spawn(admin::run(listener, proxy.shared.clone(), listeners, stop_rx));
    }
    let mut sidecars = Sidecars { logging, admin_listen: admin_ep };
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            error!("cannot install signal handlers");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // WATCHDOG=1 only while every accept loop and this main loop check in (src/watchdog.rs).
    let ping_every = notify::watchdog_interval();
    let beat_every = ping_every.map(watchdog::beat_every);
    if let Err(e) = proxy.start(beat_every, runtimes) {
        error!(error = %e, "start failed");
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    let main_beat = proxy.heartbeats.register("main");
    let mut beat_timer = watchdog::beat_timer(beat_every);
    match notify::notify(NotifyState::Ready) {
        Ok(true) => info!("READY=1 sent to systemd"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "sd_notify READY=1 failed"),
    }
    info!(config = %config_name, "vsockproxy ready");
    if let Some(every) = ping_every {
        info!(every_ms = every.as_millis() as u64, "watchdog on: WATCHDOG=1 while every loop checks in");
        tokio::spawn(watchdog::run(proxy.heartbeats.clone(), every, || {
            notify::notify(NotifyState::Watchdog)
        }));
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&proxy, &source, nofile, &mut sidecars).await,
            () = watchdog::next_tick(&mut beat_timer) => main_beat.beat(),
        }
    }
    let _ = notify::notify(NotifyState::Stopping);
    let deadline = Duration::from_millis(proxy.shared.settings().timeouts.drain_ms);
    let active = proxy.shared.global.active();
    info!(active, deadline_ms = deadline.as_millis() as u64, "stopping: listeners closed, draining");
    let left = proxy.drain(deadline, Some(&main_beat)).await;
    let _ = stop_admin.send(true);
    if left > 0 {
        warn!(cut = left, "drain deadline reached; closing the remaining connections");
    } else {
        info!("drained");
    }
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the file (off the runtime's threads) and applies what can be applied live;
/// every section whose change needs a restart is logged, counted and named in the result line.
async fn reload(proxy: &Proxy, source: &Source, nofile: u64, sidecars: &mut Sidecars) {
    let _ = notify::notify(NotifyState::Reloading);
    let source = source.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        source.load().and_then(|mut c| fds::fit(&mut c, nofile).map(|fit| (c, fit)))
    })
    .await;
    let metrics = &proxy.shared.metrics;
    match loaded {
        Ok(Ok((config, fit))) => {
            log_fit(fit, nofile);
            warn_pipe_size(&config);
            let mut notes = sidecars.reload(&config);
            notes.extend(proxy.reload(config));
            let mut sections: Vec<&str> = notes.iter().map(|n| n.section).collect();
            sections.sort_unstable();
            sections.dedup();
            for n in &notes {
                warn!(section = n.section, note = %n.note, "reload: not applied");
            }
            for section in &sections {
                metrics.reload_not_applied(section);
            }
            metrics.reloads_ok.inc();
            if sections.is_empty() {
                info!("configuration reloaded");
            } else {
                info!(not_applied = %sections.join(","), "configuration reloaded");
            }
        }
        Ok(Err(e)) => {
            metrics.reloads_failed.inc();
            error!(error = %e, "reload rejected; the previous configuration stays in force");
        }
        Err(e) => {
            metrics.reloads_failed.inc();
            error!(error = %e, "reload failed; the previous configuration stays in force");
        }
    }
    let _ = notify::notify(NotifyState::Ready);
}
