//! Command line, environment and configuration file of `kv-server`.
//!
//! Every setting is declared once (the [`settings!`] lists here, in `aws.rs` and in `otlp.rs`)
//! and can come from a flag, its environment variable (`KV_...`) or a key of the TOML file
//! (`--config FILE`, unknown keys refused); a flag wins over the environment, the environment
//! over the file, the file over the default. [`ServeArgs::resolve`] checks every value before
//! anything starts, and its errors name where the bad value came from ([`Origin`]).
//!
//! Dialled endpoints may name the parent instance as `vsock://parent:PORT`: it is resolved here,
//! once, with the CID in `ENCLAVE_PARENT_CID` (set by enclave-init; 3, Nitro's parent, when
//! unset), so that the same image reaches its parent under QEMU's `nitro-enclave` machine (CID 2).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use transport::Endpoint;

pub mod aws;
pub mod otlp;
pub mod setting;

use setting::settings;
pub use setting::{FileAt, Origin, Setting};

/// `vsock://any:50051`: kv-server's port of the address plan, on every CID of the enclave.
pub fn default_listen() -> Endpoint {
    transport::plan::vsock_any(u32::from(transport::plan::KV_SERVER_PORT))
}

pub const DEFAULT_MAX_KEYS_PER_REQUEST: usize = 1_000;
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// A connection without a call for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
/// One day.
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
    /// TOML configuration file; flags and environment variables override its values.
    #[arg(long, value_name = "FILE", env = "KV_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub v2: V2Args,
    #[command(flatten)]
    pub aws: aws::AwsArgs,
    #[command(flatten)]
    pub otlp: otlp::OtlpArgs,
    /// Test only: wait this long before the initial data load, so that tests can observe
    /// `loadbalancer-healthcheck` NOT_SERVING.
    #[arg(long, value_name = "MS", hide = true)]
    pub test_initial_load_delay_ms: Option<u64>,
}

settings! {
    /// The top-level settings: listener, data source, limits, logs.
    pub struct ServerArgs, file FileConfig in "", merged ServerSettings {
        /// Endpoint to serve gRPC on: vsock://any:PORT, unix:///path or tcp://IP:PORT.
        listen: String = default_listen().to_string(), value ENDPOINT, env KV_LISTEN, key listen;
        /// Directory holding SNAPSHOT_/DELTA_ data files (watched for new files).
        data_dir: PathBuf, value DIR, env KV_DATA_DIR, key data_dir;
        /// Serve a small built-in sample data set instead of loading files.
        sample_data: bool, env KV_SAMPLE_DATA, key sample_data;
        /// How often the data source is checked for new files, in milliseconds.
        poll_interval_ms: u64 = 1_000, value MS, env KV_POLL_INTERVAL_MS, key poll_interval_ms;
        /// Most keys one GetValues request may ask for, over all fields.
        max_keys_per_request: usize = DEFAULT_MAX_KEYS_PER_REQUEST,
            value N, env KV_MAX_KEYS_PER_REQUEST, key max_keys_per_request;
        /// Largest accepted GetValues request, in bytes.
        max_request_bytes: usize = DEFAULT_MAX_REQUEST_BYTES,
            value BYTES, env KV_MAX_REQUEST_BYTES, key max_request_bytes;
        /// Serve plaintext lookups (v1 GetValues, v2 GetValuesHttp): true or false. With false only
        /// ObliviousGetValues answers lookups, and the parent sees no key or value.
        plaintext_lookups: bool = true, value BOOL, env KV_PLAINTEXT_LOOKUPS, key plaintext_lookups;
        /// Tombstones older than the newest commit time minus this (in commit-time units) are
        /// removed after each file; records that old are then ignored.
        // One day, if commit times are in microseconds (the reference's data CLI default).
        tombstone_retention: i64 = 86_400_000_000,
            value TIME, env KV_TOMBSTONE_RETENTION, key tombstone_retention;
        /// A data file with a commit time (or a name) more than this ahead of the enclave's clock, in
        /// microseconds, is rejected whole.
        // One hour.
        max_commit_time_ahead: i64 = 3_600_000_000,
            value TIME, env KV_MAX_COMMIT_TIME_AHEAD, key max_commit_time_ahead;
        /// Seconds a client connection may stay open without a call before it is closed (HTTP/2
        /// PINGs do not count).
        idle_timeout_secs: u64 = DEFAULT_IDLE_TIMEOUT_SECS,
            value SECS, env KV_IDLE_TIMEOUT_SECS, key idle_timeout_secs;
        /// Fetch attempts of one data file (retried with a doubling backoff from the poll interval
        /// up to 60 s) before it is rejected and its prefix moves on.
        max_fetch_attempts: u32 = 10, value N, env KV_MAX_FETCH_ATTEMPTS, key max_fetch_attempts;
        /// The `kv-data-freshness` health status is NOT_SERVING when the last poll that handled
        /// every listed file is older than this, in seconds.
        max_staleness_secs: u64 = 300, value SECS, env KV_MAX_STALENESS_SECS, key max_staleness_secs;
        /// Largest data file, in bytes as stored; a larger one is rejected without being read whole.
        max_file_bytes: u64 = crate::data::DEFAULT_MAX_FILE_BYTES,
            value BYTES, env KV_MAX_FILE_BYTES, key max_file_bytes;
        /// Most bytes one data file may inflate to (Avro blocks after deflate, or CSV text); a file
        /// over it is rejected.
        max_file_inflated_bytes: u64 = crate::data::DEFAULT_MAX_INFLATED_BYTES,
            value BYTES, env KV_MAX_FILE_INFLATED_BYTES, key max_file_inflated_bytes;
        /// Most records in one data file; a file with more is rejected.
        max_file_records: u64 = crate::data::DEFAULT_MAX_RECORDS,
            value N, env KV_MAX_FILE_RECORDS, key max_file_records;
        /// Most members of one set value in a data file; a file with a larger set is rejected.
        max_set_members: u64 = crate::data::DEFAULT_MAX_SET_MEMBERS,
            value N, env KV_MAX_SET_MEMBERS, key max_set_members;
        /// Log format: text or json.
        log_format: String = "text".to_owned(), value FORMAT, env KV_LOG_FORMAT, key log_format;
    }
    tables { v2: V2FileConfig, aws: aws::AwsFileConfig, otlp: otlp::OtlpFileConfig }
}

settings! {
    /// HPKE keys and limits of the v2 API; the fleet's key set.
    pub struct V2Args, file V2FileConfig in "v2.", merged V2Settings {
        /// Seconds between HPKE key rotations (v2).
        key_rotation_secs: u64 = DEFAULT_KEY_ROTATION_SECS,
            value SECS, env KV_KEY_ROTATION_SECS, key key_rotation_secs;
        /// Seconds a rotated-out HPKE key still decrypts requests [default: 3600; at most the
        /// rotation interval].
        key_grace_secs: u64, value SECS, env KV_KEY_GRACE_SECS, key key_grace_secs;
        /// Most partitions in one v2 request.
        max_partitions: usize = DEFAULT_MAX_PARTITIONS, value N, env KV_MAX_PARTITIONS, key max_partitions;
        /// Serve the fleet's HPKE key set instead of keys of this process alone: the KMS key (id,
        /// ARN, alias name or alias ARN) whose data key seals the set. Needs the AWS settings
        /// (--egress-socks5, ...). Never taken from SSM: see docs/fleet-keys.md.
        fleet_keys_kms_key: String, value KEY, env KV_FLEET_KEYS_KMS_KEY, key fleet_keys_kms_key;
        /// The fleet key set object, s3://BUCKET/KEY [default: the SSM parameter
        /// PREFIX-fleet-keys-s3-uri].
        fleet_keys_s3_uri: String, value URI, env KV_FLEET_KEYS_S3_URI, key fleet_keys_s3_uri;
        /// Seconds between reads of the fleet key set object.
        fleet_keys_poll_secs: u64 = DEFAULT_FLEET_KEYS_POLL.as_secs(),
            value SECS, env KV_FLEET_KEYS_POLL_SECS, key fleet_keys_poll_secs;
        /// KMS endpoint URL instead of the regional one (a test double).
        fleet_keys_kms_endpoint_url: String,
            value URL, env KV_FLEET_KEYS_KMS_ENDPOINT_URL, key fleet_keys_kms_endpoint_url;
    }
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
    /// Merges flags over the environment over the file over the defaults and checks every
    /// value; `vsock://parent` follows `ENCLAVE_PARENT_CID` from this process's environment.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        self.resolve_with_parent_cid(std::env::var_os(PARENT_CID_VAR).as_deref())
    }

    /// [`ServeArgs::resolve`] with the value of `ENCLAVE_PARENT_CID` given (`None`: unset).
    pub fn resolve_with_parent_cid(&self, parent_cid_var: Option<&OsStr>) -> Result<Config, ConfigError> {
        let parent_cid = parent_cid(parent_cid_var)?;
        let (file, at) = match &self.config {
            Some(path) => load_file(path)?,
            None => (FileConfig::default(), FileAt::new(None)),
        };
        let s = self.server.settings(Some(&file), &at);
        let v2 = self.v2.settings(file.v2.as_ref(), &at);

        let listen: Endpoint =
            s.listen.value.parse().map_err(|e: transport::EndpointError| s.listen.invalid(e.to_string()))?;
        if matches!(listen, Endpoint::HybridVsock { .. }) {
            return Err(s
                .listen
                .invalid(format!("{listen}: a vsock-hybrid endpoint can only be dialed, not listened on")));
        }
        if listen.names_parent() {
            return Err(s
                .listen
                .invalid(format!("{listen}: `parent` can only be dialed; listen on vsock://any:PORT")));
        }

        let sample = s.sample_data.value.unwrap_or(false);
        let aws_settings = self.aws.settings(file.aws.as_ref(), &at);
        let mut aws = aws::check(aws_settings, s.poll_interval_ms.given(), v2.fleet_keys_kms_key.given())?;
        let mut otlp = otlp::resolve(self.otlp.settings(file.otlp.as_ref(), &at))?;
        // Every dialled endpoint; a numeric CID (vsock://3:PORT) keeps its meaning.
        if let Some(aws) = &mut aws {
            aws.egress = aws.egress.clone().with_parent_cid(parent_cid);
        }
        let s3 = aws.clone().filter(|aws| aws.bucket.is_some() || aws.ssm_prefix.is_some());
        if let Some(otlp) = &mut otlp {
            otlp.endpoint = otlp.endpoint.clone().with_parent_cid(parent_cid);
        }
        if s3.is_some() && (sample || s.data_dir.given()) {
            return Err(ConfigError::Invalid {
                setting: "S3 data source (--s3-bucket/--ssm-prefix)".into(),
                reason: "cannot be combined with --sample-data or a data directory".into(),
            });
        }
        let source = match (sample, &s.data_dir.value) {
            (true, Some(dir)) => {
                return Err(s
                    .sample_data
                    .invalid(format!("cannot be combined with a data directory ({})", dir.display())));
            }
            (true, None) => DataSourceConfig::Sample,
            (false, Some(dir)) => match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => DataSourceConfig::LocalDir(dir.clone()),
                Ok(_) => return Err(s.data_dir.invalid(format!("{} is not a directory", dir.display()))),
                Err(e) => return Err(s.data_dir.invalid(format!("{}: {e}", dir.display()))),
            },
            (false, None) => match s3 {
                Some(s3) => DataSourceConfig::S3(s3),
                None => {
                    return Err(ConfigError::Invalid {
                        setting: "data source".into(),
                        reason: "none given: use --data-dir DIR (or `data_dir` in the config file), \
                                 --s3-bucket, --ssm-prefix or --sample-data"
                            .into(),
                    });
                }
            },
        };

        let poll_ms = s.poll_interval_ms.within(1..=3_600_000, " milliseconds")?;
        let max_keys = s.max_keys_per_request.within(1..=1_000_000, "")?;
        let max_bytes = s.max_request_bytes.within(1024..=64 * 1024 * 1024, " bytes")?;
        let not_negative = |v: &i64| if *v < 0 { Err(format!("{v} is negative")) } else { Ok(()) };
        let retention = s.tombstone_retention.check(not_negative)?;
        let ahead = s.max_commit_time_ahead.check(not_negative)?;
        let max_fetch_attempts = s.max_fetch_attempts.within(1..=1000, "")?;
        let max_staleness_secs = s.max_staleness_secs.within(1..=31_536_000, " seconds")?;
        let idle_timeout_secs = s.idle_timeout_secs.within(1..=86_400, " seconds")?;
        let at_least_one = |rejects: &'static str| {
            move |v: &u64| {
                if *v == 0 { Err(format!("0 would reject {rejects}; the least is 1")) } else { Ok(()) }
            }
        };
        let budget = crate::data::Budget {
            max_file_bytes: s.max_file_bytes.check(at_least_one("every file"))?,
            max_inflated_bytes: s.max_file_inflated_bytes.check(at_least_one("every file"))?,
            max_records: s.max_file_records.check(at_least_one("every file"))?,
            max_set_members: s.max_set_members.check(at_least_one("every file with a non-empty set"))?,
        };
        let log_format = match s.log_format.value.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(s.log_format.invalid(format!("{other:?} is not `text` or `json`"))),
        };

        let rotation = v2.key_rotation_secs.within(1..=31_536_000, " seconds")?;
        let grace = v2.key_grace_secs.or(DEFAULT_KEY_GRACE_SECS.min(rotation)).check(|&grace| {
            if grace > rotation {
                return Err(format!(
                    "{grace} is longer than the rotation interval ({rotation} s): one previous key is kept"
                ));
            }
            Ok(())
        })?;
        let max_partitions = v2.max_partitions.within(1..=100_000, "")?;
        let kms_key = v2.fleet_keys_kms_key;
        let fleet_keys = match (&kms_key.value, aws) {
            (Some(key), Some(aws)) => {
                if key.is_empty() || key.len() > 2048 || key.chars().any(char::is_whitespace) {
                    return Err(kms_key.invalid("is not a KMS key id, ARN or alias"));
                }
                let uri = &v2.fleet_keys_s3_uri;
                let location = match &uri.value {
                    Some(text) => {
                        Some(text.parse().map_err(|reason| uri.invalid(format!("{text:?} {reason}")))?)
                    }
                    None if aws.ssm_prefix.is_none() => {
                        return Err(uri.invalid(
                            "required for fleet keys without --ssm-prefix (where is the key set object?)",
                        ));
                    }
                    None => None,
                };
                let poll_secs = v2.fleet_keys_poll_secs.within(1..=3600, " seconds")?;
                let kms_endpoint_url = v2.fleet_keys_kms_endpoint_url.check_some(|url| http_url(url))?;
                Some(FleetConfig {
                    aws,
                    kms_key: key.clone(),
                    location,
                    kms_endpoint_url,
                    poll_interval: Duration::from_secs(poll_secs),
                })
            }
            (Some(_), None) => {
                return Err(
                    kms_key.invalid("needs the AWS settings (--egress-socks5 and the rest of `[aws]`)")
                );
            }
            (None, _) => {
                let stray = [
                    &v2.fleet_keys_s3_uri.origin,
                    &v2.fleet_keys_poll_secs.origin,
                    &v2.fleet_keys_kms_endpoint_url.origin,
                ];
                if let Some(origin) = stray.into_iter().find(|o| o.given()) {
                    return Err(origin.invalid("only applies to fleet keys: add --fleet-keys-kms-key"));
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
            plaintext_lookups: s.plaintext_lookups.value,
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
    let origin = Origin::Env(PARENT_CID_VAR);
    let text = value.to_str().ok_or_else(|| origin.invalid(format!("{value:?} is not a number")))?;
    let cid: u32 = text.trim().parse().map_err(|_| origin.invalid(format!("{text:?} is not a number")))?;
    if cid < 2 || cid == transport::CID_ANY {
        return Err(
            origin.invalid(format!("CID {cid} cannot be the parent (0, 1 and 4294967295 are reserved)"))
        );
    }
    Ok(cid)
}

/// An endpoint URL of AWS or of a test double.
fn http_url(url: &str) -> Result<(), String> {
    let ok = url
        .parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if ok { Ok(()) } else { Err(format!("{url:?} is not an http:// or https:// URL with a host")) }
}

/// The file's settings, and the line of each key for the errors.
fn load_file(path: &Path) -> Result<(FileConfig, FileAt), ConfigError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
    let file =
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: shown, message: e.to_string() })?;
    Ok((file, FileAt::with_lines(path, &text)))
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
    fn errors_name_the_file_line_or_the_environment_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.toml");
        let p = path.to_str().unwrap();
        std::fs::write(&path, "sample_data = true\n\n[v2]\nmax_partitions = 0\n").unwrap();
        let err = args(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("kv.toml key `v2.max_partitions` (line 4): 0 is outside"), "{err}");
        std::fs::write(
            &path,
            "sample_data = true\notlp.endpoint = \"tcp://127.0.0.1:1\"\notlp.interval_ms = 0\n",
        )
        .unwrap();
        let err = args(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("kv.toml key `otlp.interval_ms` (line 3)"), "dotted keys too: {err}");

        // What clap read from KV_MAX_PARTITIONS: over the file, under the flag (clap's part).
        std::fs::write(&path, "sample_data = true\n[v2]\nmax_partitions = 0\n").unwrap();
        let mut from_env = args(&["--config", p]);
        from_env.v2.max_partitions = Some(0);
        from_env.v2.from_env.push("max_partitions");
        let err = from_env.resolve().unwrap_err().to_string();
        assert!(err.starts_with("environment variable KV_MAX_PARTITIONS: 0 is outside"), "{err}");
        from_env.v2.max_partitions = Some(3);
        assert_eq!(from_env.resolve().unwrap().v2.max_partitions, 3, "the environment wins over the file");

        let defaults = args(&["--sample-data"]).server.settings(None, &FileAt::new(None));
        assert_eq!(defaults.poll_interval_ms.origin, Origin::Default("poll_interval_ms"));
        assert!(!defaults.poll_interval_ms.given() && defaults.sample_data.given());
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
