//! `kv-server`: parse the configuration, bind, serve, load data (setting the source up in the
//! background), drain.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kv_server::config::{Cli, Command, Config, DataSourceConfig, LogFormat};
use kv_server::health::Health;
use kv_server::loader::{Loader, LoaderConfig, LoaderMetrics};
use kv_server::s3::S3SetupError;
use kv_server::server::{self, App};
use kv_server::source::LocalDir;
use kv_server::store::Store;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long in-flight calls (and the data loader) may take to finish after a shutdown signal;
/// the unit's and the runner's stop timeouts leave room after it.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long blocking work (a data file's parse) may delay the exit once serving stopped.
const BLOCKING_TASKS_DEADLINE: Duration = Duration::from_millis(500);

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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kv-server: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match config.otlp.clone() {
        None => None,
        Some(mut otlp) => {
            // Inside an enclave the NSM knows the image's PCR0; elsewhere there is none to report.
            if otlp.pcr0.is_none() {
                otlp.pcr0 = kv_server::attestation::describe_pcr(0);
            }
            // The exporters' gRPC channel spawns its worker on the runtime.
            let _entered = runtime.enter();
            match kv_server::telemetry::start(&otlp) {
                Ok(telemetry) => Some(telemetry),
                Err(e) => {
                    eprintln!("kv-server: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    init_tracing(config.log_format, telemetry.as_ref());
    // After telemetry started: the loader's load-time histogram is created on its meter provider.
    let store = Arc::new(Store::new());
    let loader_metrics = Arc::new(LoaderMetrics::default());
    if let Some(telemetry) = &telemetry {
        telemetry.observe(store.clone(), loader_metrics.clone());
    }
    let outcome = runtime.block_on(serve(config, store, loader_metrics));
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "kv-server failed");
    }
    // The last spans, metrics and logs, while the runtime still carries the connection.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    // A parse still running on a blocking thread (the loader abandoned it at shutdown) must not
    // hold the exit: dropping the runtime would wait for it.
    runtime.shutdown_timeout(BLOCKING_TASKS_DEADLINE);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, store: Arc<Store>, loader_metrics: Arc<LoaderMetrics>) -> anyhow::Result<()> {
    let listener = transport::Listener::bind(&config.listen).await?;
    let bound = listener.local_endpoint()?;
    tracing::info!(endpoint = %bound, "listening");
    // One line on stdout for whoever started us (tests, scripts) to learn the bound endpoint.
    println!("kv-server listening on {bound}");
    for (setting, endpoint) in config.dialled_endpoints() {
        // Resolved: `vsock://parent:PORT` shows the CID from ENCLAVE_PARENT_CID.
        tracing::info!(setting, endpoint = %endpoint, parent_cid = config.parent_cid, "dials");
    }

    // With fleet keys, serving also waits for the key set.
    let health =
        Arc::new(if config.fleet_keys.is_some() { Health::new_waiting_for_keys() } else { Health::new() });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let mut data = spawn_data_source(&config, store.clone(), health.clone(), loader_metrics, stopped.clone());
    let mut data_done = false;
    let attester: Arc<dyn kv_server::attestation::Attester> = Arc::new(kv_server::attestation::Nsm);
    let keys = match config.fleet_keys.clone() {
        Some(fleet) => {
            let keys = Arc::new(kv_server::keys::KeyManager::pending(&config.v2));
            let task = kv_server::fleet::run(
                fleet,
                attester.clone(),
                keys.clone(),
                health.clone(),
                config.v2,
                stopped(),
            );
            tokio::spawn(task);
            keys
        }
        None => {
            let keys = Arc::new(kv_server::keys::KeyManager::new(&config.v2)?);
            tokio::spawn(keys.clone().run(stopped()));
            keys
        }
    };
    tracing::info!(plaintext_lookups = config.plaintext_lookups, "lookups");
    let app = App {
        store,
        health,
        limits: config.limits,
        plaintext_lookups: config.plaintext_lookups,
        v2: config.v2,
        keys,
        attester,
    };
    let mut server = tokio::spawn(server::run(listener, app, stopped()));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM"); break Ok(()) }
            _ = sigint.recv() => { tracing::info!("SIGINT"); break Ok(()) }
            result = &mut server => return Ok(result??),
            result = &mut data, if !data_done => {
                data_done = true;
                match result {
                    // Only the sample data ends here without a shutdown: nothing to follow.
                    Ok(Ok(())) => {}
                    // A setting the S3 setup found wrong: stop serving and exit non-zero.
                    Ok(Err(e)) => break Err(e.into()),
                    Err(e) => break Err(anyhow::anyhow!("the data source task failed: {e}")),
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    // One deadline for everything: the loader stops at once (it abandons a file being loaded),
    // in-flight calls get what is left.
    let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
    if !data_done && tokio::time::timeout_at(deadline, data).await.is_err() {
        tracing::warn!("the data loader did not stop before the drain deadline");
    }
    match tokio::time::timeout_at(deadline, server).await {
        Ok(result) => result??,
        Err(_) => tracing::warn!(deadline_s = DRAIN_DEADLINE.as_secs(), "drain deadline passed; exiting"),
    }
    outcome
}

/// Fills the store in the background until `stopped` resolves. The server serves meanwhile
/// (`loadbalancer-healthcheck` NOT_SERVING until the initial load), also while the S3 source is
/// still being set up; the task ends early only with a permanent S3 setup error.
fn spawn_data_source<F>(
    config: &Config,
    store: Arc<Store>,
    health: Arc<Health>,
    metrics: Arc<LoaderMetrics>,
    stopped: impl Fn() -> F,
) -> JoinHandle<Result<(), S3SetupError>>
where
    F: Future<Output = ()> + Send + 'static,
{
    let loader_config = |poll_interval| LoaderConfig {
        poll_interval,
        tombstone_retention: config.tombstone_retention,
        max_commit_time_ahead: config.max_commit_time_ahead,
        max_fetch_attempts: config.max_fetch_attempts,
        max_staleness: config.max_staleness,
        clock: kv_server::loader::unix_micros,
        budget: config.budget,
        initial_load_delay: config.initial_load_delay,
    };
    match config.source.clone() {
        DataSourceConfig::Sample => {
            let stats = store.apply(kv_server::sample::records());
            tracing::info!(keys = stats.applied, "serving the built-in sample data");
            health.set_data_loaded();
            tokio::spawn(std::future::ready(Ok(())))
        }
        DataSourceConfig::LocalDir(dir) => {
            let loader =
                Loader::new(LocalDir::new(dir), store, health, metrics, loader_config(config.poll_interval));
            let stopped = stopped();
            tokio::spawn(async move {
                loader.run(stopped).await;
                Ok(())
            })
        }
        DataSourceConfig::S3(s3) => {
            let default_poll_interval = config.poll_interval;
            let (retries_stopped, loader_stopped) = (stopped(), stopped());
            let loader_config = loader_config(default_poll_interval);
            tokio::spawn(async move {
                let setup = kv_server::s3::setup_with_retries(
                    &s3,
                    default_poll_interval,
                    &metrics.source_errors,
                    retries_stopped,
                )
                .await?;
                let Some(setup) = setup else {
                    return Ok(()); // shutdown before the setup finished
                };
                let loader_config = LoaderConfig { poll_interval: setup.poll_interval, ..loader_config };
                Loader::new(setup.source, store, health, metrics, loader_config).run(loader_stopped).await;
                Ok(())
            })
        }
    }
}

/// The console (stderr: `nitro-cli console` in debug mode) always; OTLP logs when configured.
fn init_tracing(format: LogFormat, telemetry: Option<&kv_server::telemetry::Telemetry>) {
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
    let otlp = telemetry.and_then(|t| t.log_layer());
    tracing_subscriber::registry().with(console.with_filter(filter)).with(otlp).init();
}
