//! `[aws]` and the S3/SSM/egress flags: where kv-server's data (and the fleet key set) comes
//! from ([`crate::s3`] and [`crate::ssm`] use them). Precedence: flag, then config file, then
//! SSM parameter, then default.

use std::path::Path;

use clap::Args;
use serde::Deserialize;
use transport::Endpoint;

use super::ConfigError;
use crate::aws::{check_bucket, check_prefix, check_region};
use crate::ssm;

/// S3 and SSM flags (part of `kv-server`'s command line).
#[derive(Debug, Args, Default, Clone)]
pub struct AwsArgs {
    /// Load data files from this S3 bucket (through --egress-socks5).
    #[arg(long, value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix of the data files in the bucket (`a/b` lists `a/b/...`) [default: none].
    #[arg(long, value_name = "PREFIX")]
    pub s3_prefix: Option<String>,
    /// The parent's SOCKS5 egress proxy that every AWS connection goes through:
    /// vsock://parent:8888 in the enclave, tcp://127.0.0.1:PORT or unix:///path locally.
    #[arg(long, value_name = "ENDPOINT")]
    pub egress_socks5: Option<String>,
    /// AWS region [default: the SDK's chain: AWS_REGION, profile, IMDS].
    #[arg(long, value_name = "REGION")]
    pub aws_region: Option<String>,
    /// Endpoint URL for S3 and SSM instead of the regional AWS endpoints (an emulator).
    #[arg(long, value_name = "URL")]
    pub aws_endpoint_url: Option<String>,
    /// Path-style S3 requests (`URL/bucket/key`), as emulators need.
    #[arg(long)]
    pub s3_force_path_style: bool,
    /// Read settings at start from SSM parameters named `PREFIX-NAME` (e.g. `kv-server-prod`:
    /// `kv-server-prod-data-bucket-id`); see docs/kv-server-s3.md for the names.
    #[arg(long, value_name = "PREFIX")]
    pub ssm_prefix: Option<String>,
}

/// The `[aws]` table of the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsFileConfig {
    pub s3_bucket: Option<String>,
    pub s3_prefix: Option<String>,
    pub egress_socks5: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub s3_force_path_style: Option<bool>,
    pub ssm_prefix: Option<String>,
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
    /// Whether the poll interval was given by flag or file (then SSM does not override it).
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
    let file = file.unwrap_or_default();
    let origin = |flag: &str, key: &str, from_flag: bool| match (config_path, from_flag) {
        (Some(path), false) => format!("{} key `aws.{key}`", path.display()),
        _ => format!("--{flag}"),
    };
    let invalid = |setting: String, reason: String| ConfigError::Invalid { setting, reason };

    let bucket = args.s3_bucket.clone().or(file.s3_bucket);
    let ssm_prefix = args.ssm_prefix.clone().or(file.ssm_prefix);
    if bucket.is_none() && ssm_prefix.is_none() && !aws_needed {
        let stray = [
            ("s3-prefix", args.s3_prefix.is_some() || file.s3_prefix.is_some()),
            ("aws-endpoint-url", args.aws_endpoint_url.is_some() || file.endpoint_url.is_some()),
            ("s3-force-path-style", args.s3_force_path_style || file.s3_force_path_style.is_some()),
        ];
        if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(invalid(
                format!("--{flag}"),
                "only applies to an S3 data source: add --s3-bucket or --ssm-prefix".into(),
            ));
        }
        return Ok(None);
    }
    if let Some(b) = &bucket {
        check_bucket(b).map_err(|reason| {
            invalid(origin("s3-bucket", "s3_bucket", args.s3_bucket.is_some()), format!("{b:?} {reason}"))
        })?;
    }
    if let Some(p) = &ssm_prefix {
        ssm::check_prefix(p).map_err(|reason| {
            invalid(origin("ssm-prefix", "ssm_prefix", args.ssm_prefix.is_some()), reason)
        })?;
    }
    let prefix = args.s3_prefix.clone().or(file.s3_prefix);
    if let Some(p) = &prefix {
        check_prefix(p).map_err(|reason| {
            invalid(origin("s3-prefix", "s3_prefix", args.s3_prefix.is_some()), format!("{p:?} {reason}"))
        })?;
    }
    let egress_setting = origin("egress-socks5", "egress_socks5", args.egress_socks5.is_some());
    let egress_text = args.egress_socks5.clone().or(file.egress_socks5).ok_or_else(|| {
        invalid(
            "--egress-socks5".into(),
            "required for an S3 data source and for fleet keys (the enclave reaches AWS only \
             through the parent's SOCKS5 proxy): e.g. vsock://parent:8888"
                .into(),
        )
    })?;
    let egress: Endpoint = egress_text
        .parse()
        .map_err(|e: transport::EndpointError| invalid(egress_setting.clone(), e.to_string()))?;
    if matches!(&egress, Endpoint::Vsock { cid: transport::VsockCid::Any, .. }) {
        return Err(invalid(
            egress_setting,
            format!("{egress}: `any` is for listening; name the parent (vsock://parent:PORT)"),
        ));
    }
    let region = args.aws_region.clone().or(file.region);
    if let Some(r) = &region {
        check_region(r).map_err(|reason| {
            invalid(origin("aws-region", "region", args.aws_region.is_some()), format!("{r:?} {reason}"))
        })?;
    }
    let endpoint_url = args.aws_endpoint_url.clone().or(file.endpoint_url);
    if let Some(url) = &endpoint_url {
        let setting = origin("aws-endpoint-url", "endpoint_url", args.aws_endpoint_url.is_some());
        let uri: http::Uri = url.parse().map_err(|e| invalid(setting.clone(), format!("{url:?}: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(invalid(setting, format!("{url:?} is not an http:// or https:// URL with a host")));
        }
    }
    Ok(Some(S3Config {
        egress,
        bucket,
        prefix,
        region,
        endpoint_url,
        force_path_style: args.s3_force_path_style || file.s3_force_path_style.unwrap_or(false),
        ssm_prefix,
        poll_interval_set,
    }))
}
