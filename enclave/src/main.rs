//! `kv-server`: parse the configuration, bind, load data, serve, drain.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kv_server::config::{Cli, Command, Config, DataSourceConfig, LogFormat};
use kv_server::health::Health;
use kv_server::loader::{Loader, LoaderConfig, LoaderMetrics};
use kv_server::server::{self, App};
use kv_server::source::LocalDir;
use kv_server::store::Store;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// How long in-flight calls may take to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::DescriptorSet { out }) = cli.command {
        let written = if out.as_os_str() == "-" {
            std::io::stdout().write_all(kv_server::DESCRIPTOR_SET)
        } else {
            std::fs::write(&out, kv_server::DESCRIPTOR_SET)
        };
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kv-server: write descriptor set to {}: {e}", out.display());
                ExitCode::FAILURE
            }
        };
    }
    let config = match cli.serve.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kv-server: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // OTLP logs: a second layer beside the console's, its queue drained by the exporter.
    let (log_layer, log_queue) = match config.otlp.as_ref().and_then(|o| o.log_level) {
        Some(level) => {
            let (layer, queue) = kv_server::telemetry::logs::channel(level);
            (Some((layer, level)), Some(queue))
        }
        None => (None, None),
    };
    init_tracing(config.log_format, log_layer);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kv-server: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, log_queue)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "kv-server failed");
            eprintln!("kv-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Config,
    log_queue: Option<tokio::sync::mpsc::Receiver<kv_server::telemetry::logs::LogRecord>>,
) -> anyhow::Result<()> {
    let listener = transport::Listener::bind(&config.listen).await?;
    let bound = listener.local_endpoint()?;
    tracing::info!(endpoint = %bound, "listening");
    // One line on stdout for whoever started us (tests, scripts) to learn the bound endpoint.
    println!("kv-server listening on {bound}");

    let store = Arc::new(Store::new());
    let health = Arc::new(Health::new());
    let loader_metrics = Arc::new(LoaderMetrics::default());
    if let Some(otlp) = config.otlp.clone() {
        kv_server::telemetry::start(otlp, store.clone(), loader_metrics.clone(), log_queue);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let loader = match config.source.clone() {
        DataSourceConfig::Sample => {
            let stats = store.apply(kv_server::sample::records());
            tracing::info!(keys = stats.applied, "serving the built-in sample data");
            health.set_data_loaded();
            None
        }
        DataSourceConfig::LocalDir(dir) => {
            let loader = Loader::new(
                LocalDir::new(dir),
                store.clone(),
                health.clone(),
                loader_metrics.clone(),
                LoaderConfig {
                    poll_interval: config.poll_interval,
                    tombstone_retention: config.tombstone_retention,
                    initial_load_delay: config.initial_load_delay,
                },
            );
            Some(tokio::spawn(loader.run(stopped())))
        }
        DataSourceConfig::S3(s3) => {
            // Reads the SSM parameters (if asked) before serving: a missing one ends the process.
            let setup = kv_server::s3::setup(&s3, config.poll_interval).await?;
            let loader = Loader::new(
                setup.source,
                store.clone(),
                health.clone(),
                loader_metrics.clone(),
                LoaderConfig {
                    poll_interval: setup.poll_interval,
                    tombstone_retention: config.tombstone_retention,
                    initial_load_delay: config.initial_load_delay,
                },
            );
            Some(tokio::spawn(loader.run(stopped())))
        }
    };

    let app = App { store, health, limits: config.limits };
    let mut server = tokio::spawn(server::run(listener, app, stopped()));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM"),
        _ = sigint.recv() => tracing::info!("SIGINT"),
        result = &mut server => return Ok(result??),
    }
    let _ = stop_tx.send(true);
    if let Some(loader) = loader {
        let _ = loader.await;
    }
    match tokio::time::timeout(DRAIN_DEADLINE, server).await {
        Ok(result) => result??,
        Err(_) => tracing::warn!(deadline_s = DRAIN_DEADLINE.as_secs(), "drain deadline passed; exiting"),
    }
    Ok(())
}

/// The console (stderr: `nitro-cli console` in debug mode) always; OTLP logs when configured.
fn init_tracing(format: LogFormat, otlp: Option<(kv_server::telemetry::logs::OtlpLogLayer, tracing::Level)>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let console = match format {
        LogFormat::Text => console.boxed(),
        LogFormat::Json => console.json().boxed(),
    };
    // Each layer has its own filter: RUST_LOG for the console, the configured level for OTLP.
    let otlp = otlp.map(|(layer, level)| layer.with_filter(kv_server::telemetry::logs::filter(level)));
    tracing_subscriber::registry().with(console.with_filter(filter)).with(otlp).init();
}
