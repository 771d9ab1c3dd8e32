//! `[otlp]` and the `--otlp-*` flags: where kv-server sends its metrics, spans and logs
//! ([`crate::telemetry`] does the sending).

use std::time::Duration;

use clap::Args;
use tracing::Level;
use transport::Endpoint;

use super::ConfigError;

pub const DEFAULT_INTERVAL_MS: u64 = 10_000;

/// OTLP flags (`kv-server --help`); each has a key in the config file's `[otlp]` table.
#[derive(Debug, Args, Default, Clone)]
pub struct OtlpArgs {
    /// Collector to export OTLP metrics, spans and logs to over gRPC: tcp://HOST:PORT,
    /// unix:///path or vsock://parent:4317 (a vsockproxy mapping to the parent's collector). Off when
    /// not set.
    #[arg(long, value_name = "ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How often metrics are exported, and the longest a span or log record waits, in
    /// milliseconds [default: 10000].
    #[arg(long, value_name = "MS")]
    pub otlp_interval_ms: Option<u64>,
    /// Resource attribute `service.instance.id` (e.g. the EC2 instance id).
    #[arg(long, value_name = "ID", env = "KV_INSTANCE_ID")]
    pub otlp_instance_id: Option<String>,
    /// Resource attribute `aws.nitro_enclave.pcr0`: the enclave image's PCR0 (read from the NSM
    /// when not given and running in an enclave).
    #[arg(long, value_name = "HEX", env = "KV_PCR0")]
    pub otlp_pcr0: Option<String>,
    /// Also export kv-server's log events at this level and above as OTLP logs: error, warn,
    /// info, debug or trace [default: none, logs go to the console only].
    #[arg(long, value_name = "LEVEL")]
    pub otlp_log_level: Option<String>,
}

/// `[otlp]` in the configuration file; the flags override it.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpFileConfig {
    pub endpoint: Option<String>,
    pub interval_ms: Option<u64>,
    pub instance_id: Option<String>,
    pub pcr0: Option<String>,
    pub log_level: Option<String>,
}

/// The checked OTLP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    pub endpoint: Endpoint,
    pub interval: Duration,
    pub instance_id: Option<String>,
    pub pcr0: Option<String>,
    /// `None`: no OTLP logs.
    pub log_level: Option<tracing::Level>,
}

impl OtlpArgs {
    /// Flags over `[otlp]`; `None` when export is off. Errors name the flag or the file key.
    pub fn resolve(
        &self,
        file: Option<OtlpFileConfig>,
        config_path: Option<&std::path::Path>,
    ) -> Result<Option<OtlpConfig>, ConfigError> {
        let file = file.unwrap_or_default();
        let origin = |flag: &str, key: &str, from_flag: bool| match (config_path, from_flag) {
            (Some(path), false) => format!("{} key `otlp.{key}`", path.display()),
            _ => format!("--otlp-{flag}"),
        };
        let invalid = |setting: String, reason: String| ConfigError::Invalid { setting, reason };
        let endpoint_flag = self.otlp_endpoint.is_some();
        let Some(text) = self.otlp_endpoint.clone().or(file.endpoint) else {
            let stray = [
                ("interval-ms", "interval_ms", self.otlp_interval_ms.is_some(), file.interval_ms.is_some()),
                ("log-level", "log_level", self.otlp_log_level.is_some(), file.log_level.is_some()),
            ];
            if let Some((flag, key, from_flag, _)) = stray.iter().find(|(_, _, f, k)| *f || *k) {
                return Err(invalid(
                    origin(flag, key, *from_flag),
                    "needs an OTLP endpoint (--otlp-endpoint or `otlp.endpoint`)".into(),
                ));
            }
            return Ok(None);
        };
        let endpoint: Endpoint = text.parse().map_err(|e: transport::EndpointError| {
            invalid(origin("endpoint", "endpoint", endpoint_flag), e.to_string())
        })?;
        let interval_ms = self.otlp_interval_ms.or(file.interval_ms).unwrap_or(DEFAULT_INTERVAL_MS);
        if interval_ms == 0 || interval_ms > 3_600_000 {
            return Err(invalid(
                origin("interval-ms", "interval_ms", self.otlp_interval_ms.is_some()),
                format!("{interval_ms} is outside 1..=3600000 milliseconds"),
            ));
        }
        let pcr0 = self.otlp_pcr0.clone().or(file.pcr0);
        if let Some(pcr0) = &pcr0
            && (pcr0.is_empty() || !pcr0.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(
                origin("pcr0", "pcr0", self.otlp_pcr0.is_some()),
                format!("{pcr0:?} is not hexadecimal"),
            ));
        }
        let log_level = match self.otlp_log_level.clone().or(file.log_level) {
            None => None,
            Some(text) => Some(parse_level(&text).map_err(|reason| {
                invalid(origin("log-level", "log_level", self.otlp_log_level.is_some()), reason)
            })?),
        };
        Ok(Some(OtlpConfig {
            endpoint,
            interval: Duration::from_millis(interval_ms),
            instance_id: self.otlp_instance_id.clone().or(file.instance_id).filter(|s| !s.is_empty()),
            pcr0,
            log_level,
        }))
    }
}

/// Parses `--otlp-log-level`.
pub fn parse_level(text: &str) -> Result<Level, String> {
    match text.to_ascii_lowercase().as_str() {
        "error" => Ok(Level::ERROR),
        "warn" => Ok(Level::WARN),
        "info" => Ok(Level::INFO),
        "debug" => Ok(Level::DEBUG),
        "trace" => Ok(Level::TRACE),
        _ => Err(format!("{text:?} is not one of error, warn, info, debug, trace")),
    }
}
