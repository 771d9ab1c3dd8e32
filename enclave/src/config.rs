//! Command line and configuration file of `kv-server`.
//!
//! Every setting can come from a TOML file (`--config FILE`, unknown keys refused) and from a
//! flag; a flag wins over the file, the file over the default. [`Cli::resolve`] checks every value
//! before anything starts, and its errors name the flag or file key at fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use transport::Endpoint;

pub const DEFAULT_LISTEN: &str = "vsock://any:50051";
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_MAX_KEYS_PER_REQUEST: usize = 1_000;
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// One day, if commit times are in microseconds (the reference's data CLI default).
pub const DEFAULT_TOMBSTONE_RETENTION: i64 = 86_400_000_000;

#[derive(Debug, Parser)]
#[command(name = "kv-server", version, about = "Protected Audience Key/Value server for Nitro Enclaves")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the FileDescriptorSet of the query API (with imports) for envoy's JSON transcoder.
    DescriptorSet {
        /// Where to write it (`-` for stdout).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Endpoint to serve gRPC on: vsock://any:PORT, unix:///path or tcp://IP:PORT
    /// [default: vsock://any:50051].
    #[arg(long, value_name = "ENDPOINT")]
    pub listen: Option<String>,
    /// Directory holding SNAPSHOT_/DELTA_ data files (watched for new files).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve a small built-in sample data set instead of loading files.
    #[arg(long)]
    pub sample_data: bool,
    /// How often the data source is checked for new files, in milliseconds [default: 1000].
    #[arg(long, value_name = "MS")]
    pub poll_interval_ms: Option<u64>,
    /// Most keys one GetValues request may ask for, over all fields [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_keys_per_request: Option<usize>,
    /// Largest accepted GetValues request, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Tombstones older than the newest commit time minus this (in commit-time units) are
    /// removed after each file; records that old are then ignored [default: 86400000000].
    #[arg(long, value_name = "TIME")]
    pub tombstone_retention: Option<i64>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Test only: wait this long before the initial data load, so that tests can observe
    /// `loadbalancer-healthcheck` NOT_SERVING.
    #[arg(long, value_name = "MS", hide = true)]
    pub test_initial_load_delay_ms: Option<u64>,
    /// S3 data source, egress proxy and SSM parameters (see `crate::s3`).
    #[command(flatten)]
    pub aws: crate::s3::AwsArgs,
    /// OTLP export of metrics, spans and logs (see `crate::telemetry`).
    #[command(flatten)]
    pub otlp: crate::telemetry::OtlpArgs,
}

/// The configuration file. Every key is optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub sample_data: Option<bool>,
    pub poll_interval_ms: Option<u64>,
    pub max_keys_per_request: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub tombstone_retention: Option<i64>,
    pub log_format: Option<String>,
    /// `[aws]`: S3 data source, egress proxy, SSM parameters.
    pub aws: Option<crate::s3::AwsFileConfig>,
    /// `[otlp]`: metrics, spans and logs to the collector.
    pub otlp: Option<crate::telemetry::OtlpFileConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSourceConfig {
    LocalDir(PathBuf),
    Sample,
    S3(crate::s3::S3Config),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_keys_per_request: usize,
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keys_per_request: DEFAULT_MAX_KEYS_PER_REQUEST,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// The checked configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Endpoint,
    pub source: DataSourceConfig,
    pub poll_interval: Duration,
    pub limits: Limits,
    pub tombstone_retention: i64,
    pub log_format: LogFormat,
    pub initial_load_delay: Duration,
    /// `None`: no OTLP export.
    pub otlp: Option<crate::telemetry::OtlpConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{setting}: {reason}")]
    Invalid { setting: String, reason: String },
}

impl ServeArgs {
    /// Merges flags over the file over the defaults and checks every value.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let origin = |flag: &str, key: &str, from_flag: bool| -> String {
            match (&self.config, from_flag) {
                (Some(path), false) => format!("{} key `{key}`", path.display()),
                _ => format!("--{flag}"),
            }
        };
        let invalid = |setting: String, reason: String| ConfigError::Invalid { setting, reason };

        let listen_text = self.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: Endpoint = listen_text.parse().map_err(|e: transport::EndpointError| {
            invalid(origin("listen", "listen", self.listen.is_some()), e.to_string())
        })?;
        if matches!(listen, Endpoint::HybridVsock { .. }) {
            return Err(invalid(
                origin("listen", "listen", self.listen.is_some()),
                format!("{listen}: a vsock-hybrid endpoint can only be dialed, not listened on"),
            ));
        }

        let sample = self.sample_data || file.sample_data.unwrap_or(false);
        let data_dir = self.data_dir.clone().or(file.data_dir);
        let poll_set = self.poll_interval_ms.is_some() || file.poll_interval_ms.is_some();
        let s3 = crate::s3::resolve(&self.aws, file.aws, self.config.as_deref(), poll_set)?;
        let otlp = self.otlp.resolve(file.otlp, self.config.as_deref())?;
        if s3.is_some() && (sample || data_dir.is_some()) {
            return Err(invalid(
                "S3 data source (--s3-bucket/--ssm-prefix)".into(),
                "cannot be combined with --sample-data or a data directory".into(),
            ));
        }
        let source = match (sample, data_dir) {
            (true, Some(dir)) => {
                return Err(invalid(
                    "--sample-data".into(),
                    format!("cannot be combined with a data directory ({})", dir.display()),
                ));
            }
            (true, None) => DataSourceConfig::Sample,
            (false, Some(dir)) => {
                let setting = origin("data-dir", "data_dir", self.data_dir.is_some());
                match std::fs::metadata(&dir) {
                    Ok(m) if m.is_dir() => DataSourceConfig::LocalDir(dir),
                    Ok(_) => return Err(invalid(setting, format!("{} is not a directory", dir.display()))),
                    Err(e) => return Err(invalid(setting, format!("{}: {e}", dir.display()))),
                }
            }
            (false, None) => match s3 {
                Some(s3) => DataSourceConfig::S3(s3),
                None => {
                    return Err(invalid(
                        "data source".into(),
                        "none given: use --data-dir DIR (or `data_dir` in the config file), --s3-bucket, \
                         --ssm-prefix or --sample-data"
                            .into(),
                    ));
                }
            },
        };

        let poll_ms = self.poll_interval_ms.or(file.poll_interval_ms).unwrap_or(DEFAULT_POLL_INTERVAL_MS);
        if poll_ms == 0 || poll_ms > 3_600_000 {
            return Err(invalid(
                origin("poll-interval-ms", "poll_interval_ms", self.poll_interval_ms.is_some()),
                format!("{poll_ms} is outside 1..=3600000 milliseconds"),
            ));
        }
        let max_keys =
            self.max_keys_per_request.or(file.max_keys_per_request).unwrap_or(DEFAULT_MAX_KEYS_PER_REQUEST);
        if max_keys == 0 || max_keys > 1_000_000 {
            return Err(invalid(
                origin("max-keys-per-request", "max_keys_per_request", self.max_keys_per_request.is_some()),
                format!("{max_keys} is outside 1..=1000000"),
            ));
        }
        let max_bytes =
            self.max_request_bytes.or(file.max_request_bytes).unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
        if !(1024..=64 * 1024 * 1024).contains(&max_bytes) {
            return Err(invalid(
                origin("max-request-bytes", "max_request_bytes", self.max_request_bytes.is_some()),
                format!("{max_bytes} is outside 1024..=67108864 bytes"),
            ));
        }
        let retention =
            self.tombstone_retention.or(file.tombstone_retention).unwrap_or(DEFAULT_TOMBSTONE_RETENTION);
        if retention < 0 {
            return Err(invalid(
                origin("tombstone-retention", "tombstone_retention", self.tombstone_retention.is_some()),
                format!("{retention} is negative"),
            ));
        }
        let log_format = match self.log_format.clone().or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    origin("log-format", "log_format", self.log_format.is_some()),
                    format!("{other:?} is not `text` or `json`"),
                ));
            }
        };
        Ok(Config {
            listen,
            source,
            poll_interval: Duration::from_millis(poll_ms),
            limits: Limits { max_keys_per_request: max_keys, max_request_bytes: max_bytes },
            tombstone_retention: retention,
            log_format,
            initial_load_delay: Duration::from_millis(self.test_initial_load_delay_ms.unwrap_or(0)),
            otlp,
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: shown, message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> ServeArgs {
        let mut argv = vec!["kv-server"];
        argv.extend_from_slice(list);
        Cli::try_parse_from(argv).expect("flags parse").serve
    }

    #[test]
    fn defaults_with_sample_data() {
        let config = args(&["--sample-data"]).resolve().unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.source, DataSourceConfig::Sample);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.poll_interval, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (flags, needle) in [
            (&["--sample-data", "--listen", "tcp://nowhere"][..], "--listen"),
            (&["--sample-data", "--listen", "vsock-hybrid:///tmp/x:5"][..], "--listen"),
            (&["--sample-data", "--max-keys-per-request", "0"][..], "--max-keys-per-request"),
            (&["--sample-data", "--max-request-bytes", "10"][..], "--max-request-bytes"),
            (&["--sample-data", "--poll-interval-ms", "0"][..], "--poll-interval-ms"),
            (&["--sample-data", "--log-format", "xml"][..], "--log-format"),
            (&["--data-dir", "/nonexistent/kv-core-test"][..], "--data-dir"),
            (&[][..], "data source"),
        ] {
            let err = args(flags).resolve().unwrap_err().to_string();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn the_enclave_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/enclave.toml");
        let config = args(&["--config", path]).resolve().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.to_string(), "vsock://any:50051");
        assert!(matches!(config.source, DataSourceConfig::S3(_)));
        let otlp = config.otlp.expect("[otlp] is set");
        assert_eq!(otlp.endpoint.to_string(), "vsock://3:4317");
        assert_eq!(otlp.log_level, Some(tracing::Level::INFO));
    }

    #[test]
    fn file_values_apply_flags_override_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"tcp://127.0.0.1:0\"\ndata_dir = \"{}\"\nmax_keys_per_request = 7\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let config = args(&["--config", p]).resolve().unwrap();
        assert_eq!(config.limits.max_keys_per_request, 7);
        assert_eq!(config.source, DataSourceConfig::LocalDir(dir.path().to_path_buf()));
        let config = args(&["--config", p, "--max-keys-per-request", "9"]).resolve().unwrap();
        assert_eq!(config.limits.max_keys_per_request, 9);

        std::fs::write(&path, "sample_data = true\nmax_keys_per_request = 0\n").unwrap();
        let err = args(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("kv.toml key `max_keys_per_request`"), "{err}");

        std::fs::write(&path, "sample_data = true\n[otlp]\nendpoint = \"vsock://3:4317\"\nsampler = 1\n")
            .unwrap();
        let err = args(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("kv.toml") && err.contains("sampler"), "unknown [otlp] keys too: {err}");

        std::fs::write(&path, "sample_data = true\nlisten_on = \"x\"\n").unwrap();
        let err = args(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("kv.toml") && err.contains("listen_on"), "{err}");
    }
}
