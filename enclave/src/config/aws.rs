//! `[aws]` and the S3/SSM/egress flags: where kv-server's data (and the fleet key set) comes
//! from ([`crate::s3`] and [`crate::ssm`] use them). Precedence: flag, then environment variable,
//! then config file, then SSM parameter, then default.

use std::path::Path;

use transport::Endpoint;

use super::ConfigError;
use super::setting::{FileAt, settings};
use crate::aws::{check_bucket, check_prefix, check_region};
use crate::ssm;

settings! {
    /// S3 and SSM flags (part of `kv-server`'s command line).
    pub struct AwsArgs, file AwsFileConfig in "aws.", merged AwsSettings {
        /// Load data files from this S3 bucket (through --egress-socks5).
        s3_bucket: String, value BUCKET, env KV_S3_BUCKET, key s3_bucket;
        /// Key prefix of the data files in the bucket (`a/b` lists `a/b/...`) [default: none].
        s3_prefix: String, value PREFIX, env KV_S3_PREFIX, key s3_prefix;
        /// The parent's SOCKS5 egress proxy that every AWS connection goes through:
        /// vsock://parent:8888 in the enclave, tcp://127.0.0.1:PORT or unix:///path locally.
        egress_socks5: String, value ENDPOINT, env KV_EGRESS_SOCKS5, key egress_socks5;
        /// AWS region [default: the SDK's chain: AWS_REGION, profile, IMDS].
        aws_region: String, value REGION, env KV_AWS_REGION, key region;
        /// Endpoint URL for S3 and SSM instead of the regional AWS endpoints (an emulator).
        aws_endpoint_url: String, value URL, env KV_AWS_ENDPOINT_URL, key endpoint_url;
        /// Path-style S3 requests (`URL/bucket/key`), as emulators need.
        s3_force_path_style: bool, env KV_S3_FORCE_PATH_STYLE, key s3_force_path_style;
        /// Read settings at start from SSM parameters named `PREFIX-NAME` (e.g. `kv-server-prod`:
        /// `kv-server-prod-data-bucket-id`); see docs/kv-server-s3.md for the names.
        ssm_prefix: String, value PREFIX, env KV_SSM_PREFIX, key ssm_prefix;
    }
}

/// The checked S3 settings, before SSM parameters are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub egress: Endpoint,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    pub ssm_prefix: Option<String>,
    /// Whether the poll interval was given by flag, environment or file (then SSM does not
    /// override it).
    pub poll_interval_set: bool,
}

/// Merges the flags over the file's `[aws]` table and checks them. `Ok(None)`: no S3 source was
/// asked for (neither a bucket nor an SSM prefix) and `aws_needed` (fleet keys) is false.
pub fn resolve(
    args: &AwsArgs,
    file: Option<AwsFileConfig>,
    config_path: Option<&Path>,
    poll_interval_set: bool,
    aws_needed: bool,
) -> Result<Option<S3Config>, ConfigError> {
    check(args.settings(file.as_ref(), &FileAt::new(config_path)), poll_interval_set, aws_needed)
}

/// [`resolve`] of settings already merged.
pub fn check(
    s: AwsSettings,
    poll_interval_set: bool,
    aws_needed: bool,
) -> Result<Option<S3Config>, ConfigError> {
    if !s.s3_bucket.given() && !s.ssm_prefix.given() && !aws_needed {
        let stray = [&s.s3_prefix.origin, &s.aws_endpoint_url.origin, &s.s3_force_path_style.origin];
        if let Some(origin) = stray.into_iter().find(|o| o.given()) {
            return Err(origin.invalid("only applies to an S3 data source: add --s3-bucket or --ssm-prefix"));
        }
        return Ok(None);
    }
    let quoted = |check: fn(&str) -> Result<(), String>| {
        move |v: &String| check(v).map_err(|reason| format!("{v:?} {reason}"))
    };
    let bucket = s.s3_bucket.check_some(quoted(check_bucket))?;
    let ssm_prefix = s.ssm_prefix.check_some(|p| ssm::check_prefix(p))?;
    let prefix = s.s3_prefix.check_some(quoted(check_prefix))?;
    let Some(egress_text) = &s.egress_socks5.value else {
        return Err(s.egress_socks5.invalid(
            "required for an S3 data source and for fleet keys (the enclave reaches AWS only through \
             the parent's SOCKS5 proxy): e.g. vsock://parent:8888",
        ));
    };
    let egress: Endpoint =
        egress_text.parse().map_err(|e: transport::EndpointError| s.egress_socks5.invalid(e.to_string()))?;
    if matches!(&egress, Endpoint::Vsock { cid: transport::VsockCid::Any, .. }) {
        return Err(s
            .egress_socks5
            .invalid(format!("{egress}: `any` is for listening; name the parent (vsock://parent:PORT)")));
    }
    let region = s.aws_region.check_some(quoted(check_region))?;
    let endpoint_url = s.aws_endpoint_url.check_some(|url| super::http_url(url))?;
    Ok(Some(S3Config {
        egress,
        bucket,
        prefix,
        region,
        endpoint_url,
        force_path_style: s.s3_force_path_style.value.unwrap_or(false),
        ssm_prefix,
        poll_interval_set,
    }))
}
