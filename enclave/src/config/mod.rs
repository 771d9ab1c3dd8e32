//! Command line and configuration file of `kv-server`.
//!
//! Every setting can come from a TOML file (`--config FILE`, unknown keys refused) and from a
//! flag; a flag wins over the file, the file over the default. [`ServeArgs::resolve`] checks every
//! value before anything starts, and its errors name the flag or file key at fault.
//!
//! Dialled endpoints may name the parent instance as `vsock://parent:PORT`: it is resolved here,
//! once, with the CID in `ENCLAVE_PARENT_CID` (set by enclave-init; 3, Nitro's parent, when
//! unset), so that the same image reaches its parent under QEMU's `nitro-enclave` machine (CID 2).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use transport::Endpoint;

pub mod aws;
pub mod otlp;

/// `vsock://any:50051`: kv-server's port of the address plan, on every CID of the enclave.
pub fn default_listen() -> Endpoint {
    transport::plan::vsock_any(u32::from(transport::plan::KV_SERVER_PORT))
}

pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_MAX_KEYS_PER_REQUEST: usize = 1_000;
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// One day, if commit times are in microseconds (the reference's data CLI default).
pub const DEFAULT_TOMBSTONE_RETENTION: i64 = 86_400_000_000;
/// One hour in microseconds: how far ahead of the enclave's clock a commit time may be.
pub const DEFAULT_MAX_COMMIT_TIME_AHEAD: i64 = 3_600_000_000;
/// One day.
/// Fetch attempts of one data file before it is rejected (about 4 minutes at a 1 s poll).
pub const DEFAULT_MAX_FETCH_ATTEMPTS: u32 = 10;
/// Age of the last complete sync beyond which `kv-data-freshness` is NOT_SERVING.
pub const DEFAULT_MAX_STALENESS_SECS: u64 = 300;
/// A connection without a call for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
pub const DEFAULT_KEY_ROTATION_SECS: u64 = 86_400;
/// One hour.
pub const DEFAULT_KEY_GRACE_SECS: u64 = 3_600;
pub const DEFAULT_MAX_PARTITIONS: usize = 256;
/// The parent's CID as enclave-init hands it to the application (enclave/init/src/config.rs).
pub const PARENT_CID_VAR: &str = "ENCLAVE_PARENT_CID";

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
    /// Serve plaintext lookups (v1 GetValues, v2 GetValuesHttp): true or false [default: true].
    /// With false only ObliviousGetValues answers lookups, and the parent sees no key or value.
    #[arg(long, value_name = "BOOL")]
    pub plaintext_lookups: Option<bool>,
    /// Seconds between HPKE key rotations (v2) [default: 86400].
    #[arg(long, value_name = "SECS")]
    pub key_rotation_secs: Option<u64>,
    /// Seconds a rotated-out HPKE key still decrypts requests [default: 3600; at most the
    /// rotation interval].
    #[arg(long, value_name = "SECS")]
    pub key_grace_secs: Option<u64>,
    /// Most partitions in one v2 request [default: 256].
    #[arg(long, value_name = "N")]
    pub max_partitions: Option<usize>,
    /// Serve the fleet's HPKE key set instead of keys of this process alone: the KMS key (id,
    /// ARN, alias name or alias ARN) whose data key seals the set. Needs the AWS settings
    /// (--egress-socks5, ...). Never taken from SSM: see docs/fleet-keys.md.
    #[arg(long, value_name = "KEY")]
    pub fleet_keys_kms_key: Option<String>,
    /// The fleet key set object, s3://BUCKET/KEY [default: the SSM parameter
    /// PREFIX-fleet-keys-s3-uri].
    #[arg(long, value_name = "URI")]
    pub fleet_keys_s3_uri: Option<String>,
    /// Seconds between reads of the fleet key set object [default: 60].
    #[arg(long, value_name = "SECS")]
    pub fleet_keys_poll_secs: Option<u64>,
    /// KMS endpoint URL instead of the regional one (a test double).
    #[arg(long, value_name = "URL")]
    pub fleet_keys_kms_endpoint_url: Option<String>,
    /// Tombstones older than the newest commit time minus this (in commit-time units) are
    /// removed after each file; records that old are then ignored [default: 86400000000].
    #[arg(long, value_name = "TIME")]
    pub tombstone_retention: Option<i64>,
    /// A data file with a commit time (or a name) more than this ahead of the enclave's clock, in
    /// microseconds, is rejected whole [default: 3600000000].
    #[arg(long, value_name = "TIME")]
    pub max_commit_time_ahead: Option<i64>,
    /// Seconds a client connection may stay open without a call before it is closed (HTTP/2
    /// PINGs do not count) [default: 300].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Fetch attempts of one data file (retried with a doubling backoff from the poll interval
    /// up to 60 s) before it is rejected and its prefix moves on [default: 10].
    #[arg(long, value_name = "N")]
    pub max_fetch_attempts: Option<u32>,
    /// The `kv-data-freshness` health status is NOT_SERVING when the last poll that handled
    /// every listed file is older than this, in seconds [default: 300].
    #[arg(long, value_name = "SECS")]
    pub max_staleness_secs: Option<u64>,
    /// Largest data file, in bytes as stored; a larger one is rejected without being read whole
    /// [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    pub max_file_bytes: Option<u64>,
    /// Most bytes one data file may inflate to (Avro blocks after deflate, or CSV text); a file
    /// over it is rejected [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    pub max_file_inflated_bytes: Option<u64>,
    /// Most records in one data file; a file with more is rejected [default: 10000000].
    #[arg(long, value_name = "N")]
    pub max_file_records: Option<u64>,
    /// Most members of one set value in a data file; a file with a larger set is rejected
    /// [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_set_members: Option<u64>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Test only: wait this long before the initial data load, so that tests can observe
    /// `loadbalancer-healthcheck` NOT_SERVING.
    #[arg(long, value_name = "MS", hide = true)]
    pub test_initial_load_delay_ms: Option<u64>,
    /// S3 data source, egress proxy and SSM parameters (see `crate::s3`).
    #[command(flatten)]
    pub aws: aws::AwsArgs,
    /// OTLP export of metrics, spans and logs (see `crate::telemetry`).
    #[command(flatten)]
    pub otlp: otlp::OtlpArgs,
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
    pub max_commit_time_ahead: Option<i64>,
    pub max_fetch_attempts: Option<u32>,
    pub max_staleness_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub max_file_bytes: Option<u64>,
    pub max_file_inflated_bytes: Option<u64>,
    pub max_file_records: Option<u64>,
    pub max_set_members: Option<u64>,
    pub log_format: Option<String>,
    pub plaintext_lookups: Option<bool>,
    /// `[v2]`: HPKE keys and limits of the v2 API.
    pub v2: Option<V2FileConfig>,
    /// `[aws]`: S3 data source, egress proxy, SSM parameters.
    pub aws: Option<aws::AwsFileConfig>,
    /// `[otlp]`: metrics, spans and logs to the collector.
    pub otlp: Option<otlp::OtlpFileConfig>,
}

/// `[v2]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V2FileConfig {
    pub key_rotation_secs: Option<u64>,
    pub key_grace_secs: Option<u64>,
    pub max_partitions: Option<usize>,
    pub fleet_keys_kms_key: Option<String>,
    pub fleet_keys_s3_uri: Option<String>,
    pub fleet_keys_poll_secs: Option<u64>,
    pub fleet_keys_kms_endpoint_url: Option<String>,
}

/// The checked v2 settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V2Config {
    /// A new HPKE key pair every this long.
    pub key_rotation: Duration,
    /// How long the previous key pair keeps decrypting after a rotation.
    pub key_grace: Duration,
    pub max_partitions: usize,
}

impl Default for V2Config {
    fn default() -> Self {
        V2Config {
            key_rotation: Duration::from_secs(DEFAULT_KEY_ROTATION_SECS),
            key_grace: Duration::from_secs(DEFAULT_KEY_GRACE_SECS),
            max_partitions: DEFAULT_MAX_PARTITIONS,
        }
    }
}

/// How often the fleet key set object is read again by default.
pub const DEFAULT_FLEET_KEYS_POLL: Duration = Duration::from_secs(60);

/// The checked fleet key settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The egress proxy, region and endpoints (the `[aws]` settings).
    pub aws: aws::S3Config,
    /// The KMS key (id, ARN, alias name or alias ARN), from the image's configuration only.
    pub kms_key: String,
    /// `None`: from the SSM parameter `<prefix>-fleet-keys-s3-uri`.
    pub location: Option<crate::aws::S3Location>,
    /// KMS endpoint URL instead of the regional one (a test double).
    pub kms_endpoint_url: Option<String>,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSourceConfig {
    LocalDir(PathBuf),
    Sample,
    S3(aws::S3Config),
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
    /// A connection without a call for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
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
    /// Whether v1 GetValues and v2 GetValuesHttp answer (false: only encrypted lookups).
    pub plaintext_lookups: bool,
    pub v2: V2Config,
    /// Serve the fleet's key set ([`crate::fleet`]) instead of keys of this process alone.
    pub fleet_keys: Option<FleetConfig>,
    pub tombstone_retention: i64,
    /// In commit-time units (microseconds).
    pub max_commit_time_ahead: i64,
    pub max_fetch_attempts: u32,
    pub max_staleness: Duration,
    /// What one data file may cost (size, inflated bytes, records, set members).
    pub budget: crate::data::Budget,
    pub log_format: LogFormat,
    pub initial_load_delay: Duration,
    /// `None`: no OTLP export.
    pub otlp: Option<otlp::OtlpConfig>,
    /// What `vsock://parent:PORT` was resolved to (from `ENCLAVE_PARENT_CID`, default 3).
    pub parent_cid: u32,
}

impl Config {
    /// Every endpoint the server dials, by setting (already resolved: no `parent` left).
    pub fn dialled_endpoints(&self) -> Vec<(&'static str, &Endpoint)> {
        let mut out = Vec::new();
        if let DataSourceConfig::S3(s3) = &self.source {
            out.push(("aws.egress_socks5", &s3.egress));
        }
        if let Some(otlp) = &self.otlp {
            out.push(("otlp.endpoint", &otlp.endpoint));
        }
        out
    }
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
    /// Merges flags over the file over the defaults and checks every value; `vsock://parent`
    /// follows `ENCLAVE_PARENT_CID` from this process's environment.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        self.resolve_with_parent_cid(std::env::var_os(PARENT_CID_VAR).as_deref())
    }

    /// [`ServeArgs::resolve`] with the value of `ENCLAVE_PARENT_CID` given (`None`: unset).
    pub fn resolve_with_parent_cid(&self, parent_cid_var: Option<&OsStr>) -> Result<Config, ConfigError> {
        let parent_cid = parent_cid(parent_cid_var)?;
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

        let listen_text = self.listen.clone().or(file.listen).unwrap_or_else(|| default_listen().to_string());
        let listen: Endpoint = listen_text.parse().map_err(|e: transport::EndpointError| {
            invalid(origin("listen", "listen", self.listen.is_some()), e.to_string())
        })?;
        if matches!(listen, Endpoint::HybridVsock { .. }) {
            return Err(invalid(
                origin("listen", "listen", self.listen.is_some()),
                format!("{listen}: a vsock-hybrid endpoint can only be dialed, not listened on"),
            ));
        }
        if listen.names_parent() {
            return Err(invalid(
                origin("listen", "listen", self.listen.is_some()),
                format!("{listen}: `parent` can only be dialed; listen on vsock://any:PORT"),
            ));
        }

        let sample = self.sample_data || file.sample_data.unwrap_or(false);
        let data_dir = self.data_dir.clone().or(file.data_dir);
        let poll_set = self.poll_interval_ms.is_some() || file.poll_interval_ms.is_some();
        let v2_file = file.v2.unwrap_or_default();
        let fleet_kms_key = self.fleet_keys_kms_key.clone().or(v2_file.fleet_keys_kms_key.clone());
        let mut aws =
            aws::resolve(&self.aws, file.aws, self.config.as_deref(), poll_set, fleet_kms_key.is_some())?;
        let mut otlp = self.otlp.resolve(file.otlp, self.config.as_deref())?;
        // Every dialled endpoint; a numeric CID (vsock://3:PORT) keeps its meaning.
        if let Some(aws) = &mut aws {
            aws.egress = aws.egress.clone().with_parent_cid(parent_cid);
        }
        let s3 = aws.clone().filter(|aws| aws.bucket.is_some() || aws.ssm_prefix.is_some());
        if let Some(otlp) = &mut otlp {
            otlp.endpoint = otlp.endpoint.clone().with_parent_cid(parent_cid);
        }
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
        let ahead = self
            .max_commit_time_ahead
            .or(file.max_commit_time_ahead)
            .unwrap_or(DEFAULT_MAX_COMMIT_TIME_AHEAD);
        if ahead < 0 {
            return Err(invalid(
                origin(
                    "max-commit-time-ahead",
                    "max_commit_time_ahead",
                    self.max_commit_time_ahead.is_some(),
                ),
                format!("{ahead} is negative"),
            ));
        }
        let max_fetch_attempts =
            self.max_fetch_attempts.or(file.max_fetch_attempts).unwrap_or(DEFAULT_MAX_FETCH_ATTEMPTS);
        if !(1..=1000).contains(&max_fetch_attempts) {
            return Err(invalid(
                origin("max-fetch-attempts", "max_fetch_attempts", self.max_fetch_attempts.is_some()),
                format!("{max_fetch_attempts} is outside 1..=1000"),
            ));
        }
        let max_staleness_secs =
            self.max_staleness_secs.or(file.max_staleness_secs).unwrap_or(DEFAULT_MAX_STALENESS_SECS);
        if !(1..=31_536_000).contains(&max_staleness_secs) {
            return Err(invalid(
                origin("max-staleness-secs", "max_staleness_secs", self.max_staleness_secs.is_some()),
                format!("{max_staleness_secs} is outside 1..=31536000 seconds"),
            ));
        }
        let idle_timeout_secs =
            self.idle_timeout_secs.or(file.idle_timeout_secs).unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
        if !(1..=86_400).contains(&idle_timeout_secs) {
            return Err(invalid(
                origin("idle-timeout-secs", "idle_timeout_secs", self.idle_timeout_secs.is_some()),
                format!("{idle_timeout_secs} is outside 1..=86400 seconds"),
            ));
        }
        let defaults = crate::data::Budget::default();
        let mut budget = defaults;
        for (flag, key, from_flag, from_file, default, field, zero_rejects) in [
            (
                "max-file-bytes",
                "max_file_bytes",
                self.max_file_bytes,
                file.max_file_bytes,
                defaults.max_file_bytes,
                &mut budget.max_file_bytes,
                "every file",
            ),
            (
                "max-file-inflated-bytes",
                "max_file_inflated_bytes",
                self.max_file_inflated_bytes,
                file.max_file_inflated_bytes,
                defaults.max_inflated_bytes,
                &mut budget.max_inflated_bytes,
                "every file",
            ),
            (
                "max-file-records",
                "max_file_records",
                self.max_file_records,
                file.max_file_records,
                defaults.max_records,
                &mut budget.max_records,
                "every file",
            ),
            (
                "max-set-members",
                "max_set_members",
                self.max_set_members,
                file.max_set_members,
                defaults.max_set_members,
                &mut budget.max_set_members,
                "every file with a non-empty set",
            ),
        ] {
            *field = from_flag.or(from_file).unwrap_or(default);
            if *field == 0 {
                return Err(invalid(
                    origin(flag, key, from_flag.is_some()),
                    format!("0 would reject {zero_rejects}; the least is 1"),
                ));
            }
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
        let plaintext_lookups = self.plaintext_lookups.or(file.plaintext_lookups).unwrap_or(true);
        let v2_origin = |flag: &str, key: &str, from_flag: bool| match (&self.config, from_flag) {
            (Some(path), false) => format!("{} key `v2.{key}`", path.display()),
            _ => format!("--{flag}"),
        };
        let rotation =
            self.key_rotation_secs.or(v2_file.key_rotation_secs).unwrap_or(DEFAULT_KEY_ROTATION_SECS);
        if !(1..=31_536_000).contains(&rotation) {
            return Err(invalid(
                v2_origin("key-rotation-secs", "key_rotation_secs", self.key_rotation_secs.is_some()),
                format!("{rotation} is outside 1..=31536000 seconds"),
            ));
        }
        let grace =
            self.key_grace_secs.or(v2_file.key_grace_secs).unwrap_or(DEFAULT_KEY_GRACE_SECS.min(rotation));
        if grace > rotation {
            return Err(invalid(
                v2_origin("key-grace-secs", "key_grace_secs", self.key_grace_secs.is_some()),
                format!(
                    "{grace} is longer than the rotation interval ({rotation} s): one previous key is kept"
                ),
            ));
        }
        let max_partitions = self.max_partitions.or(v2_file.max_partitions).unwrap_or(DEFAULT_MAX_PARTITIONS);
        if !(1..=100_000).contains(&max_partitions) {
            return Err(invalid(
                v2_origin("max-partitions", "max_partitions", self.max_partitions.is_some()),
                format!("{max_partitions} is outside 1..=100000"),
            ));
        }
        let fleet_keys = match (fleet_kms_key, aws) {
            (Some(kms_key), Some(aws)) => {
                let key_setting =
                    v2_origin("fleet-keys-kms-key", "fleet_keys_kms_key", self.fleet_keys_kms_key.is_some());
                if kms_key.is_empty() || kms_key.len() > 2048 || kms_key.chars().any(char::is_whitespace) {
                    return Err(invalid(key_setting, "is not a KMS key id, ARN or alias".into()));
                }
                let uri_from_flag = self.fleet_keys_s3_uri.is_some();
                let location = match self.fleet_keys_s3_uri.clone().or(v2_file.fleet_keys_s3_uri) {
                    Some(text) => Some(text.parse().map_err(|reason| {
                        invalid(
                            v2_origin("fleet-keys-s3-uri", "fleet_keys_s3_uri", uri_from_flag),
                            format!("{text:?} {reason}"),
                        )
                    })?),
                    None if aws.ssm_prefix.is_none() => {
                        return Err(invalid(
                            v2_origin("fleet-keys-s3-uri", "fleet_keys_s3_uri", true),
                            "required for fleet keys without --ssm-prefix (where is the key set object?)"
                                .into(),
                        ));
                    }
                    None => None,
                };
                let poll_secs = self
                    .fleet_keys_poll_secs
                    .or(v2_file.fleet_keys_poll_secs)
                    .unwrap_or(DEFAULT_FLEET_KEYS_POLL.as_secs());
                if !(1..=3600).contains(&poll_secs) {
                    return Err(invalid(
                        v2_origin(
                            "fleet-keys-poll-secs",
                            "fleet_keys_poll_secs",
                            self.fleet_keys_poll_secs.is_some(),
                        ),
                        format!("{poll_secs} is outside 1..=3600 seconds"),
                    ));
                }
                let endpoint_from_flag = self.fleet_keys_kms_endpoint_url.is_some();
                let kms_endpoint_url =
                    self.fleet_keys_kms_endpoint_url.clone().or(v2_file.fleet_keys_kms_endpoint_url);
                if let Some(url) = &kms_endpoint_url {
                    let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                    });
                    if !ok {
                        return Err(invalid(
                            v2_origin(
                                "fleet-keys-kms-endpoint-url",
                                "fleet_keys_kms_endpoint_url",
                                endpoint_from_flag,
                            ),
                            format!("{url:?} is not an http:// or https:// URL with a host"),
                        ));
                    }
                }
                Some(FleetConfig {
                    aws,
                    kms_key,
                    location,
                    kms_endpoint_url,
                    poll_interval: Duration::from_secs(poll_secs),
                })
            }
            (Some(_), None) => {
                return Err(invalid(
                    "--fleet-keys-kms-key".into(),
                    "needs the AWS settings (--egress-socks5 and the rest of `[aws]`)".into(),
                ));
            }
            (None, _) => {
                let stray = [
                    (
                        "fleet-keys-s3-uri",
                        self.fleet_keys_s3_uri.is_some() || v2_file.fleet_keys_s3_uri.is_some(),
                    ),
                    (
                        "fleet-keys-poll-secs",
                        self.fleet_keys_poll_secs.is_some() || v2_file.fleet_keys_poll_secs.is_some(),
                    ),
                    (
                        "fleet-keys-kms-endpoint-url",
                        self.fleet_keys_kms_endpoint_url.is_some()
                            || v2_file.fleet_keys_kms_endpoint_url.is_some(),
                    ),
                ];
                if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
                    return Err(invalid(
                        format!("--{flag}"),
                        "only applies to fleet keys: add --fleet-keys-kms-key".into(),
                    ));
                }
                None
            }
        };
        Ok(Config {
            listen,
            source,
            poll_interval: Duration::from_millis(poll_ms),
            limits: Limits {
                max_keys_per_request: max_keys,
                max_request_bytes: max_bytes,
                idle_timeout: Duration::from_secs(idle_timeout_secs),
            },
            plaintext_lookups,
            v2: V2Config {
                key_rotation: Duration::from_secs(rotation),
                key_grace: Duration::from_secs(grace),
                max_partitions,
            },
            fleet_keys,
            tombstone_retention: retention,
            max_commit_time_ahead: ahead,
            max_fetch_attempts,
            max_staleness: Duration::from_secs(max_staleness_secs),
            budget,
            log_format,
            initial_load_delay: Duration::from_millis(self.test_initial_load_delay_ms.unwrap_or(0)),
            otlp,
            parent_cid,
        })
    }
}

/// `ENCLAVE_PARENT_CID`: unset means Nitro's parent CID; otherwise a CID that can be a peer
/// (not 0, 1 or `u32::MAX`, as enclave-init checks it).
fn parent_cid(value: Option<&OsStr>) -> Result<u32, ConfigError> {
    let Some(value) = value else {
        return Ok(transport::plan::PARENT_CID);
    };
    let invalid = |reason: String| ConfigError::Invalid {
        setting: format!("environment variable {PARENT_CID_VAR}"),
        reason,
    };
    let text = value.to_str().ok_or_else(|| invalid(format!("{value:?} is not a number")))?;
    let cid: u32 = text.trim().parse().map_err(|_| invalid(format!("{text:?} is not a number")))?;
    if cid < 2 || cid == transport::CID_ANY {
        return Err(invalid(format!("CID {cid} cannot be the parent (0, 1 and 4294967295 are reserved)")));
    }
    Ok(cid)
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
    fn fleet_key_settings_need_the_aws_settings_and_name_the_flag() {
        let base = ["--sample-data", "--egress-socks5", "tcp://127.0.0.1:1080", "--aws-region", "us-east-1"];
        let with = |extra: &[&str]| {
            let mut list = base.to_vec();
            list.extend_from_slice(extra);
            args(&list).resolve()
        };
        let config =
            with(&["--fleet-keys-kms-key", "alias/kv", "--fleet-keys-s3-uri", "s3://kv-keys/k.json"])
                .unwrap();
        let fleet = config.fleet_keys.expect("fleet keys on");
        assert_eq!(fleet.kms_key, "alias/kv");
        assert_eq!(fleet.location.unwrap().to_string(), "s3://kv-keys/k.json");
        assert_eq!(fleet.poll_interval, DEFAULT_FLEET_KEYS_POLL);
        assert_eq!(config.source, DataSourceConfig::Sample, "the AWS settings alone are no S3 data source");
        assert_eq!(args(&base).resolve().unwrap().fleet_keys, None);

        for (extra, names) in [
            (&["--fleet-keys-kms-key", "alias/kv"][..], "--fleet-keys-s3-uri"),
            (
                &["--fleet-keys-kms-key", "alias/kv", "--fleet-keys-s3-uri", "https://x/y"][..],
                "--fleet-keys-s3-uri",
            ),
            (
                &["--fleet-keys-kms-key", "a b", "--fleet-keys-s3-uri", "s3://kv-keys/k"][..],
                "--fleet-keys-kms-key",
            ),
            (
                &[
                    "--fleet-keys-kms-key",
                    "k",
                    "--fleet-keys-s3-uri",
                    "s3://kv-keys/k",
                    "--fleet-keys-poll-secs",
                    "0",
                ][..],
                "--fleet-keys-poll-secs",
            ),
            (&["--fleet-keys-s3-uri", "s3://kv-keys/k"][..], "--fleet-keys-s3-uri"),
        ] {
            let err = with(extra).unwrap_err().to_string();
            assert!(err.contains(names), "{extra:?}: {err}");
        }
        let err =
            args(&["--sample-data", "--fleet-keys-kms-key", "k", "--fleet-keys-s3-uri", "s3://kv-keys/k"])
                .resolve()
                .unwrap_err()
                .to_string();
        assert!(err.contains("--egress-socks5"), "{err}");
    }

    #[test]
    fn defaults_with_sample_data() {
        let config = args(&["--sample-data"]).resolve().unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.listen.to_string(), "vsock://any:50051");
        assert_eq!(config.source, DataSourceConfig::Sample);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.poll_interval, Duration::from_secs(1));
        assert!(config.plaintext_lookups, "plaintext lookups stay on by default (compatibility)");
        assert_eq!(config.v2, V2Config::default());
        assert_eq!(config.v2.key_rotation, Duration::from_secs(86_400));
        assert_eq!(config.budget, crate::data::Budget::default());
    }

    #[test]
    fn data_file_limits_from_flags_and_file() {
        let config = args(&[
            "--sample-data",
            "--max-file-bytes",
            "1000",
            "--max-file-records",
            "7",
            "--max-set-members",
            "3",
        ])
        .resolve()
        .unwrap();
        assert_eq!(config.budget.max_file_bytes, 1000);
        assert_eq!(config.budget.max_records, 7);
        assert_eq!(config.budget.max_set_members, 3);
        assert_eq!(config.budget.max_inflated_bytes, crate::data::DEFAULT_MAX_INFLATED_BYTES);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.toml");
        std::fs::write(
            &path,
            "sample_data = true\nmax_file_bytes = 5\nmax_file_inflated_bytes = 6\nmax_file_records = 8\n\
             max_set_members = 9\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let config = args(&["--config", p]).resolve().unwrap();
        let want = crate::data::Budget {
            max_file_bytes: 5,
            max_inflated_bytes: 6,
            max_records: 8,
            max_set_members: 9,
        };
        assert_eq!(config.budget, want);
        let config = args(&["--config", p, "--max-file-inflated-bytes", "60"]).resolve().unwrap();
        assert_eq!(config.budget.max_inflated_bytes, 60, "the flag wins over the file");

        std::fs::write(&path, "sample_data = true\nmax_file_records = 0\n").unwrap();
        let err = args(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("kv.toml key `max_file_records`") && err.contains("the least is 1"), "{err}");
        std::fs::write(&path, "sample_data = true\nmax_file_size = 1\n").unwrap();
        let err = args(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("max_file_size"), "unknown keys are still refused: {err}");
    }

    #[test]
    fn plaintext_and_v2_settings_from_flags_and_file() {
        let config = args(&["--sample-data", "--plaintext-lookups", "false", "--max-partitions", "3"])
            .resolve()
            .unwrap();
        assert!(!config.plaintext_lookups);
        assert_eq!(config.v2.max_partitions, 3);
        let config = args(&["--sample-data", "--key-rotation-secs", "60"]).resolve().unwrap();
        assert_eq!(
            config.v2.key_grace,
            Duration::from_secs(60),
            "the default grace is capped by the rotation"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.toml");
        std::fs::write(
            &path,
            "sample_data = true\nplaintext_lookups = false\n[v2]\nkey_rotation_secs = 600\nkey_grace_secs = 30\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let config = args(&["--config", p]).resolve().unwrap();
        assert!(!config.plaintext_lookups);
        assert_eq!(config.v2.key_rotation, Duration::from_secs(600));
        assert_eq!(config.v2.key_grace, Duration::from_secs(30));
        let config = args(&["--config", p, "--plaintext-lookups", "true"]).resolve().unwrap();
        assert!(config.plaintext_lookups, "the flag wins over the file");

        std::fs::write(&path, "sample_data = true\n[v2]\nkey_rotation_secs = 10\nkey_grace_secs = 20\n")
            .unwrap();
        let err = args(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("kv.toml key `v2.key_grace_secs`") && err.contains("longer than"), "{err}");
        std::fs::write(&path, "sample_data = true\n[v2]\nkeys = 1\n").unwrap();
        let err = args(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("kv.toml") && err.contains("keys"), "unknown [v2] keys are refused: {err}");
        std::fs::write(&path, "sample_data = true\nplaintext_lookups = \"no\"\n").unwrap();
        assert!(args(&["--config", p]).resolve().is_err());
    }

    #[test]
    fn the_local_enclave_config_keeps_plaintext_lookups() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/enclave-local.toml");
        let config =
            args(&["--config", path]).resolve_with_parent_cid(None).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.plaintext_lookups);
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
            (&["--sample-data", "--key-rotation-secs", "0"][..], "--key-rotation-secs"),
            (
                &["--sample-data", "--key-rotation-secs", "60", "--key-grace-secs", "61"][..],
                "--key-grace-secs",
            ),
            (&["--sample-data", "--max-partitions", "0"][..], "--max-partitions"),
            (&["--sample-data", "--max-commit-time-ahead=-1"][..], "--max-commit-time-ahead"),
            (&["--sample-data", "--max-file-bytes", "0"][..], "--max-file-bytes"),
            (&["--sample-data", "--max-file-inflated-bytes", "0"][..], "--max-file-inflated-bytes"),
            (&["--sample-data", "--max-file-records", "0"][..], "--max-file-records"),
            (&["--sample-data", "--max-set-members", "0"][..], "--max-set-members"),
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
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("\"vsock://parent:8888\"") && text.contains("\"vsock://parent:4317\""));
        let config =
            args(&["--config", path]).resolve_with_parent_cid(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.to_string(), "vsock://any:50051");
        let DataSourceConfig::S3(s3) = &config.source else { panic!("not S3: {:?}", config.source) };
        assert_eq!(s3.egress.to_string(), "vsock://3:8888");
        let otlp = config.otlp.as_ref().expect("[otlp] is set");
        assert_eq!(otlp.endpoint.to_string(), "vsock://3:4317");
        assert_eq!(otlp.log_level, Some(tracing::Level::INFO));
        assert!(!config.plaintext_lookups, "the enclave's reference config serves encrypted lookups only");
        // Under QEMU's nitro-enclave machine enclave-init hands over CID 2.
        let config = args(&["--config", path]).resolve_with_parent_cid(Some(OsStr::new("2"))).unwrap();
        let dialled: Vec<String> =
            config.dialled_endpoints().iter().map(|(k, e)| format!("{k}={e}")).collect();
        assert_eq!(dialled, ["aws.egress_socks5=vsock://2:8888", "otlp.endpoint=vsock://2:4317"]);
    }

    #[test]
    fn parent_cid_resolves_parent_endpoints_only() {
        let flags = |egress: &str| {
            args(&[
                "--s3-bucket",
                "kv-data",
                "--egress-socks5",
                egress,
                "--otlp-endpoint",
                "vsock://parent:4317",
            ])
        };
        let two = Some(OsStr::new("2"));
        let config = flags("vsock://parent:8888").resolve_with_parent_cid(two).unwrap();
        assert_eq!(config.parent_cid, 2);
        let dialled: Vec<String> = config.dialled_endpoints().iter().map(|(_, e)| e.to_string()).collect();
        assert_eq!(dialled, ["vsock://2:8888", "vsock://2:4317"]);
        // A number is a number: vsock://3 stays CID 3 whatever the parent.
        let config = flags("vsock://3:8888").resolve_with_parent_cid(two).unwrap();
        assert_eq!(config.dialled_endpoints()[0].1.to_string(), "vsock://3:8888");
        let config = flags("vsock://parent:8888").resolve_with_parent_cid(None).unwrap();
        assert_eq!(config.parent_cid, 3);
        assert_eq!(config.dialled_endpoints()[0].1.to_string(), "vsock://3:8888");

        for bad in ["x", "", "1", "4294967295", "-3"] {
            let err = flags("vsock://parent:8888")
                .resolve_with_parent_cid(Some(OsStr::new(bad)))
                .unwrap_err()
                .to_string();
            assert!(err.contains("ENCLAVE_PARENT_CID"), "{bad:?}: {err}");
        }
        let err = args(&["--sample-data", "--listen", "vsock://parent:50051"])
            .resolve_with_parent_cid(None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--listen") && err.contains("only be dialed"), "{err}");
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
