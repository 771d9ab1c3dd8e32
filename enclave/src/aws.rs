//! What the S3 source and the SSM settings share: the checks of bucket, prefix and region names,
//! and the one-line description of a failed AWS SDK call that names the side that failed.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// S3 bucket naming rules (the general-purpose bucket subset): 3-63 characters of `a-z 0-9 . -`,
/// starting and ending with a letter or digit.
pub fn check_bucket(name: &str) -> Result<(), String> {
    let ok_chars =
        name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || !ends_ok(name.as_bytes().first())
        || !ends_ok(name.as_bytes().last())
    {
        return Err(
            "is not an S3 bucket name (3-63 characters of a-z, 0-9, '.', '-', starting and ending with a letter or digit)"
                .into(),
        );
    }
    Ok(())
}

/// The checks below return a reason without the value (`is not ...`): a flag's error quotes its
/// value in front of it, an SSM parameter's names only the parameter (its value may be secret).
///
/// A key prefix: no empty segments, no `.`/`..`, at most 512 bytes.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.len() > 512
        || (!trimmed.is_empty() && trimmed.split('/').any(|s| s.is_empty() || s == "." || s == ".."))
    {
        return Err("is not a key prefix (segments separated by single '/', no '.' or '..')".into());
    }
    Ok(())
}

/// A region name such as `us-east-1`: lowercase letters, digits and `-`.
pub fn check_region(region: &str) -> Result<(), String> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err("is not an AWS region name (e.g. us-east-1)".into()) }
}

/// Which side failed: S3's answer (HTTP status, error code, message), or the way there (the
/// egress proxy's refusal with its SOCKS5 reply code, a connect failure, a timeout).
pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> String {
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            format!(
                "the service answered HTTP {status}, error code {}: {}",
                err.code().unwrap_or("(none)"),
                err.message().unwrap_or("(no message)")
            )
        }
        SdkError::DispatchFailure(_) => format!("the request did not reach the service: {}", chain(err)),
        SdkError::TimeoutError(_) => format!("timed out: {}", chain(err)),
        _ => chain(err),
    }
}

/// The error's message and those of its sources, joined with `: `; a source whose message the
/// text already contains is left out (many errors repeat their source's message).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let message = e.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        current = e.source();
    }
    text
}

/// An S3 object, `s3://BUCKET/KEY` (the fleet key set's location).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl std::str::FromStr for S3Location {
    type Err = String;

    /// `s3://bucket/key`; the reason names what is wrong, not the value.
    fn from_str(text: &str) -> Result<S3Location, String> {
        let rest = text.strip_prefix("s3://").ok_or("is not an s3://BUCKET/KEY URI")?;
        let (bucket, key) = rest.split_once('/').ok_or("has no object key after the bucket")?;
        check_bucket(bucket)?;
        if key.is_empty() || key.len() > 1024 || key.ends_with('/') {
            return Err("has no object key (or one ending in '/')".into());
        }
        Ok(S3Location { bucket: bucket.to_string(), key: key.to_string() })
    }
}
