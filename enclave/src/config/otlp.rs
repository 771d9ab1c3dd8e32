//! `[otlp]` and the `--otlp-*` flags: where kv-server sends its metrics, spans and logs
//! ([`crate::telemetry`] does the sending).

use std::time::Duration;

use tracing::Level;
use transport::Endpoint;

use super::ConfigError;
use super::setting::{FileAt, settings};

pub const DEFAULT_INTERVAL_MS: u64 = 10_000;

settings! {
    /// OTLP flags (`kv-server --help`); each has a key in the config file's `[otlp]` table.
    pub struct OtlpArgs, file OtlpFileConfig in "otlp.", merged OtlpSettings {
        /// Collector to export OTLP metrics, spans and logs to over gRPC: tcp://HOST:PORT,
        /// unix:///path or vsock://parent:4317 (a vsockproxy mapping to the parent's collector). Off
        /// when not set.
        otlp_endpoint: String, value ENDPOINT, env KV_OTLP_ENDPOINT, key endpoint;
        /// How often metrics are exported, and the longest a span or log record waits, in
        /// milliseconds.
        otlp_interval_ms: u64 = DEFAULT_INTERVAL_MS, value MS, env KV_OTLP_INTERVAL_MS, key interval_ms;
        /// Resource attribute `service.instance.id` (e.g. the EC2 instance id).
        otlp_instance_id: String, value ID, env KV_INSTANCE_ID, key instance_id;
        /// Resource attribute `aws.nitro_enclave.pcr0`: the enclave image's PCR0 (read from the NSM
        /// when not given and running in an enclave).
        otlp_pcr0: String, value HEX, env KV_PCR0, key pcr0;
        /// Also export kv-server's log events at this level and above as OTLP logs: error, warn,
        /// info, debug or trace [default: none, logs go to the console only].
        otlp_log_level: String, value LEVEL, env KV_OTLP_LOG_LEVEL, key log_level;
    }
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
        resolve(self.settings(file.as_ref(), &FileAt::new(config_path)))
    }
}

/// The checked `[otlp]` settings; `None` when export is off.
pub fn resolve(s: OtlpSettings) -> Result<Option<OtlpConfig>, ConfigError> {
    let Some(text) = &s.otlp_endpoint.value else {
        let stray = [&s.otlp_interval_ms.origin, &s.otlp_log_level.origin];
        if let Some(origin) = stray.into_iter().find(|o| o.given()) {
            return Err(origin.invalid("needs an OTLP endpoint (--otlp-endpoint or `otlp.endpoint`)"));
        }
        return Ok(None);
    };
    let endpoint: Endpoint =
        text.parse().map_err(|e: transport::EndpointError| s.otlp_endpoint.invalid(e.to_string()))?;
    let interval_ms = s.otlp_interval_ms.within(1..=3_600_000, " milliseconds")?;
    let pcr0 = s.otlp_pcr0.check_some(|pcr0| {
        match pcr0.is_empty() || !pcr0.bytes().all(|b| b.is_ascii_hexdigit()) {
            true => Err(format!("{pcr0:?} is not hexadecimal")),
            false => Ok(()),
        }
    })?;
    let log_level = match &s.otlp_log_level.value {
        None => None,
        Some(text) => Some(parse_level(text).map_err(|reason| s.otlp_log_level.invalid(reason))?),
    };
    Ok(Some(OtlpConfig {
        endpoint,
        interval: Duration::from_millis(interval_ms),
        instance_id: s.otlp_instance_id.value.filter(|s| !s.is_empty()),
        pcr0,
        log_level,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_resolve() {
        assert_eq!(OtlpArgs::default().resolve(None, None).unwrap(), None);
        let only_interval = OtlpArgs { otlp_interval_ms: Some(5), ..Default::default() };
        assert!(only_interval.resolve(None, None).unwrap_err().to_string().contains("--otlp-interval-ms"));
        let only_logs = OtlpArgs { otlp_log_level: Some("info".into()), ..Default::default() };
        assert!(only_logs.resolve(None, None).unwrap_err().to_string().contains("--otlp-log-level"));
        let bad = OtlpArgs { otlp_endpoint: Some("http://x".into()), ..Default::default() };
        assert!(bad.resolve(None, None).unwrap_err().to_string().contains("--otlp-endpoint"));
        let level = OtlpArgs {
            otlp_endpoint: Some("tcp://127.0.0.1:4317".into()),
            otlp_log_level: Some("chatty".into()),
            ..Default::default()
        };
        assert!(level.resolve(None, None).unwrap_err().to_string().contains("--otlp-log-level"));
        let pcr = OtlpArgs {
            otlp_endpoint: Some("tcp://127.0.0.1:4317".into()),
            otlp_pcr0: Some("xyz".into()),
            ..Default::default()
        };
        assert!(pcr.resolve(None, None).unwrap_err().to_string().contains("--otlp-pcr0"));
        let ok = OtlpArgs { otlp_endpoint: Some("vsock://3:4317".into()), ..Default::default() };
        let config = ok.resolve(None, None).unwrap().unwrap();
        assert_eq!(config.interval, Duration::from_millis(DEFAULT_INTERVAL_MS));
        assert_eq!(config.endpoint.to_string(), "vsock://3:4317");
        assert_eq!(config.log_level, None);
    }

    #[test]
    fn file_keys_apply_and_flags_override_them() {
        let path = std::path::Path::new("/etc/kv/config.toml");
        let file = OtlpFileConfig {
            endpoint: Some("vsock://3:4317".into()),
            interval_ms: Some(2000),
            log_level: Some("warn".into()),
            ..Default::default()
        };
        let config = OtlpArgs::default().resolve(Some(file.clone()), Some(path)).unwrap().unwrap();
        assert_eq!(config.interval, Duration::from_millis(2000));
        assert_eq!(config.log_level, Some(tracing::Level::WARN));
        let flags = OtlpArgs { otlp_interval_ms: Some(500), ..Default::default() };
        let config = flags.resolve(Some(file.clone()), Some(path)).unwrap().unwrap();
        assert_eq!(config.interval, Duration::from_millis(500));
        let bad = OtlpFileConfig { interval_ms: Some(0), ..file };
        let err = OtlpArgs::default().resolve(Some(bad), Some(path)).unwrap_err().to_string();
        assert!(err.contains("/etc/kv/config.toml key `otlp.interval_ms`"), "{err}");
        let stray = OtlpFileConfig { log_level: Some("info".into()), ..Default::default() };
        let err = OtlpArgs::default().resolve(Some(stray), Some(path)).unwrap_err().to_string();
        assert!(err.contains("`otlp.log_level`") && err.contains("needs an OTLP endpoint"), "{err}");
    }
}
