//! Settings from SSM parameters, read once at start through the egress proxy.
//!
//! Parameters are named `<prefix>-<name>`, the reference server's scheme (`kv-server-prod` +
//! `data-bucket-id` = `kv-server-prod-data-bucket-id`). The names read:
//!
//! | name | meaning | required |
//! |---|---|---|
//! | `data-bucket-id` | the data bucket (reference name) | unless `--s3-bucket` is given |
//! | `backup-poll-frequency-secs` | how often S3 is listed, seconds, 1..=3600 (reference name) | no |
//! | `data-prefix` | key prefix of the data files in the bucket | no |
//! | `region` | region of the data bucket, if not the one SSM was reached in | no |
//! | `fleet-keys-s3-uri` | the fleet key set object, `s3://BUCKET/KEY` ([`crate::fleet`]) | with fleet keys, unless `--fleet-keys-s3-uri` is given |
//!
//! The fleet keys' KMS key is deliberately not among them: SSM is the parent's to change, and a
//! KMS key chosen by the parent could be one whose policy hands the parent the data key.
//!
//! A flag or config-file value wins over the parameter (the parameter is then not needed).

use std::collections::HashMap;
use std::time::Duration;

use crate::aws;

pub const DATA_BUCKET_ID: &str = "data-bucket-id";
pub const BACKUP_POLL_FREQUENCY_SECS: &str = "backup-poll-frequency-secs";
pub const DATA_PREFIX: &str = "data-prefix";
pub const REGION: &str = "region";
pub const FLEET_KEYS_S3_URI: &str = "fleet-keys-s3-uri";
/// Every name read, in the order above.
pub const NAMES: [&str; 5] =
    [DATA_BUCKET_ID, BACKUP_POLL_FREQUENCY_SECS, DATA_PREFIX, REGION, FLEET_KEYS_S3_URI];

/// `<prefix>-<name>`.
pub fn parameter_name(prefix: &str, name: &str) -> String {
    format!("{prefix}-{name}")
}

/// SSM parameter names allow `a-z A-Z 0-9 _ . - /`; keep room for the longest suffix.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 1000
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(format!("{prefix:?} is not an SSM parameter name prefix (letters, digits, '_', '.', '-', '/')"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SsmError {
    /// The GetParameters call failed (which side: see the detail).
    #[error("SSM GetParameters for {names}: {detail}")]
    Call { names: String, detail: String },
    #[error("SSM parameter {parameter} does not exist (it is required: {why})")]
    Missing { parameter: String, why: &'static str },
    #[error("SSM parameter {parameter}: {reason}")]
    Invalid { parameter: String, reason: String },
}

/// The values found; `None` where the parameter does not exist.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SsmSettings {
    pub bucket: Option<String>,
    pub poll_interval: Option<Duration>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub fleet_keys_location: Option<crate::aws::S3Location>,
    /// Full names of the parameters that exist.
    pub found: Vec<String>,
}

/// Reads every parameter of [`NAMES`] under `prefix` in one call.
pub async fn read(
    client: &aws_sdk_ssm::Client,
    prefix: &str,
    bucket_required: bool,
) -> Result<SsmSettings, SsmError> {
    let names: Vec<String> = NAMES.iter().map(|n| parameter_name(prefix, n)).collect();
    let output = client
        .get_parameters()
        .set_names(Some(names.clone()))
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| SsmError::Call { names: names.join(", "), detail: aws::describe(&e) })?;
    let values: HashMap<String, String> = output
        .parameters()
        .iter()
        .filter_map(|p| Some((p.name()?.to_string(), p.value()?.to_string())))
        .collect();
    parse(prefix, &values, bucket_required)
}

/// Checks the values (by full parameter name) and turns them into settings.
pub fn parse(
    prefix: &str,
    values: &HashMap<String, String>,
    bucket_required: bool,
) -> Result<SsmSettings, SsmError> {
    let get = |name: &str| {
        let full = parameter_name(prefix, name);
        values.get(&full).map(|v| (full, v.trim().to_string()))
    };
    let invalid = |parameter: String, reason: String| SsmError::Invalid { parameter, reason };
    let mut settings = SsmSettings::default();
    match get(DATA_BUCKET_ID) {
        Some((full, value)) => {
            aws::check_bucket(&value)
                .map_err(|reason| invalid(full.clone(), format!("the value {reason}")))?;
            settings.bucket = Some(value);
            settings.found.push(full);
        }
        None if bucket_required => {
            return Err(SsmError::Missing {
                parameter: parameter_name(prefix, DATA_BUCKET_ID),
                why: "no --s3-bucket was given",
            });
        }
        None => {}
    }
    if let Some((full, value)) = get(BACKUP_POLL_FREQUENCY_SECS) {
        let secs = value.parse::<u64>().ok().filter(|s| (1..=3600).contains(s)).ok_or_else(|| {
            invalid(full.clone(), "the value is not a whole number of seconds in 1..=3600".into())
        })?;
        settings.poll_interval = Some(Duration::from_secs(secs));
        settings.found.push(full);
    }
    if let Some((full, value)) = get(DATA_PREFIX) {
        aws::check_prefix(&value).map_err(|reason| invalid(full.clone(), format!("the value {reason}")))?;
        settings.prefix = Some(value);
        settings.found.push(full);
    }
    if let Some((full, value)) = get(REGION) {
        aws::check_region(&value).map_err(|reason| invalid(full.clone(), format!("the value {reason}")))?;
        settings.region = Some(value);
        settings.found.push(full);
    }
    if let Some((full, value)) = get(FLEET_KEYS_S3_URI) {
        let location =
            value.parse().map_err(|reason| invalid(full.clone(), format!("the value {reason}")))?;
        settings.fleet_keys_location = Some(location);
        settings.found.push(full);
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(list: &[(&str, &str)]) -> HashMap<String, String> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_the_documented_names() {
        let v = values(&[
            ("kv-server-prod-data-bucket-id", "kv-data"),
            ("kv-server-prod-backup-poll-frequency-secs", " 5 "),
            ("kv-server-prod-data-prefix", "shard1"),
            ("kv-server-prod-region", "eu-west-1"),
            ("kv-server-prod-fleet-keys-s3-uri", "s3://kv-keys/fleet/keyset.json"),
            ("kv-server-dev-data-bucket-id", "other"),
        ]);
        let s = parse("kv-server-prod", &v, true).unwrap();
        assert_eq!(s.bucket.as_deref(), Some("kv-data"));
        assert_eq!(s.poll_interval, Some(Duration::from_secs(5)));
        assert_eq!(s.prefix.as_deref(), Some("shard1"));
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.fleet_keys_location.unwrap().to_string(), "s3://kv-keys/fleet/keyset.json");
        assert_eq!(s.found.len(), 5);
    }

    #[test]
    fn missing_and_bad_values_name_the_parameter() {
        let err = parse("kv-server-prod", &values(&[]), true).unwrap_err().to_string();
        assert!(err.contains("kv-server-prod-data-bucket-id") && err.contains("does not exist"), "{err}");
        assert_eq!(parse("kv-server-prod", &values(&[]), false).unwrap(), SsmSettings::default());
        for (name, value) in [
            ("p-data-bucket-id", "Not_A_Bucket"),
            ("p-backup-poll-frequency-secs", "0"),
            ("p-backup-poll-frequency-secs", "soon"),
            ("p-data-prefix", "../x"),
            ("p-region", "Mars"),
            ("p-fleet-keys-s3-uri", "https://kv-keys/k"),
        ] {
            let err = parse("p", &values(&[(name, value)]), false).unwrap_err().to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }

    /// Issue 14 item 10: a rejected SSM value was quoted in the error, which is logged (and logs
    /// go to CloudWatch); a SecureString put in the wrong parameter would leak. The error names
    /// the parameter and the reason only.
    #[test]
    fn a_rejected_value_is_never_quoted() {
        for name in [
            "p-data-bucket-id",
            "p-backup-poll-frequency-secs",
            "p-data-prefix",
            "p-region",
            "p-fleet-keys-s3-uri",
        ] {
            let secret = "Secret/../Value With Spaces";
            let err = parse("p", &values(&[(name, secret)]), false).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
            assert!(!err.contains("Secret") && !err.contains("Spaces"), "{name}: {err}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("kv-server-prod").is_ok());
        assert!(check_prefix("/kv/prod").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("kv server").is_err());
    }
}
