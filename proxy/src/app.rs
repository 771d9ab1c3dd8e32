//! The daemon's life: load and validate, bind, READY=1, serve, reload on SIGHUP, drain on
//! SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::cli::RunArgs;
use crate::config::{Config, LogConfig, LogFormat, Source};
use crate::server::Proxy;
use crate::{admin, notify, sys};

/// Exit code for an invalid configuration (nothing was started).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when a listener cannot be bound or the daemon fails at run time.
pub const EXIT_RUNTIME: u8 = 1;

/// `vsockproxy check FILE`.
pub fn check(path: &std::path::Path) -> ExitCode {
    let source = Source { path: Some(path.to_path_buf()), overrides: Default::default() };
    match source.load() {
        Ok(c) => {
            println!(
                "{}: ok ({} ingress/mapping listener(s), socks5 {}, admin {})",
                c.source,
                c.routes.len(),
                c.socks5.as_ref().map(|s| s.listen.to_string()).unwrap_or_else(|| "off".into()),
                c.admin.as_ref().map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn init_logging(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// `vsockproxy run`.
pub fn run(args: RunArgs) -> ExitCode {
    let source = args.source();
    // Validated before the runtime, the logger or any socket exists.
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(serve(source, config));
    // Connections still open after the drain deadline are cut here.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn serve(source: Source, config: Config) -> ExitCode {
    match sys::raise_nofile_limit() {
        Ok((before, after)) => info!(before, after, "RLIMIT_NOFILE"),
        Err(e) => warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let admin_ep = config.admin.clone();
    let otlp = config.otlp.clone();
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
    if let Some(ep) = admin_ep {
        let listener = match transport::Listener::bind(&ep).await {
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
    if let Some(otlp) = otlp {
        info!(endpoint = %otlp.endpoint, interval_ms = otlp.interval_ms, "OTLP metrics export on");
        tokio::spawn(crate::otlp::run(otlp, proxy.shared.clone(), stop_admin.subscribe()));
    }
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
    proxy.start();
    match notify::notify("READY=1") {
        Ok(true) => info!("READY=1 sent to systemd"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "sd_notify READY=1 failed"),
    }
    info!(config = %config_name, "vsockproxy ready");
    if let Some(every) = notify::watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = notify::notify("WATCHDOG=1") {
                    warn!(error = %e, "sd_notify WATCHDOG=1 failed");
                }
            }
        });
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&proxy, &source),
        }
    }
    let _ = notify::notify("STOPPING=1");
    let deadline = Duration::from_millis(proxy.shared.settings().timeouts.drain_ms);
    let active = proxy.shared.global.active();
    info!(active, deadline_ms = deadline.as_millis() as u64, "stopping: listeners closed, draining");
    let left = proxy.drain(deadline).await;
    let _ = stop_admin.send(true);
    if left > 0 {
        warn!(cut = left, "drain deadline reached; closing the remaining connections");
    } else {
        info!("drained");
    }
    ExitCode::SUCCESS
}

fn reload(proxy: &Proxy, source: &Source) {
    let _ = notify::notify("RELOADING=1");
    match source.load() {
        Ok(config) => {
            for note in proxy.reload(config) {
                warn!(note, "reload: not applied");
            }
            proxy.shared.metrics.reloads_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!("configuration reloaded");
        }
        Err(e) => {
            proxy.shared.metrics.reloads_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            error!(error = %e, "reload rejected; the previous configuration stays in force");
        }
    }
    let _ = notify::notify("READY=1");
}
