//! Data files from an S3 bucket (+ prefix), reached through the parent's SOCKS5 egress
//! ([`crate::egress`]); settings from flags, the `[aws]` table of the config file and, optionally,
//! SSM parameters ([`crate::ssm`]).
//!
//! Precedence for every setting: flag, then config file, then SSM parameter, then default.
//! Credentials and (unless given) the region come from the SDK's normal provider chain:
//! environment, profile files, then the instance metadata service (IMDS), which is also reached
//! through the egress proxy (its policy must allow `169.254.169.254:80`).
//!
//! The setup runs while the server already serves ([`setup_with_retries`]): a failure on the way
//! to AWS is retried with a capped backoff, a wrong setting ends the process
//! ([`S3SetupError::is_transient`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

pub use crate::aws::{chain, check_bucket, check_prefix, check_region, describe};
pub use crate::config::aws::{AwsArgs, AwsFileConfig, S3Config, resolve};
use crate::data::{DataFileName, FileKind};
use crate::egress::{self, EgressHttpClient};
use crate::source::{Source, SourceError, initial_capacity};
use crate::ssm::{self, SsmSettings};

/// Why the S3 source could not be set up. Transient ones are retried while the server serves;
/// the others end the process with status 1 ([`S3SetupError::is_transient`]).
#[derive(Debug, thiserror::Error)]
pub enum S3SetupError {
    /// Transient: IMDS, the last link of the region chain, may be unreachable for now (proxy not
    /// up, policy not yet allowing it, IMDS slow at boot).
    #[error(
        "no AWS region: give --aws-region (or `aws.region`), set AWS_REGION, or let IMDS answer through the egress proxy"
    )]
    NoRegion,
    /// Transient for a failed call (`SsmError::Call`); permanent for a parameter that does not
    /// exist or a value that fails its check.
    #[error(transparent)]
    Ssm(#[from] ssm::SsmError),
    /// Permanent: neither a flag nor a parameter names the bucket.
    #[error("no data bucket: give --s3-bucket or the SSM parameter {0}")]
    NoBucket(String),
}

impl S3SetupError {
    /// True when trying again can succeed without changing the deployment: the way to AWS or AWS
    /// itself failed (the proxy unreachable or refusing by policy, a timeout, an error answer such
    /// as a 5xx, throttling or denied access, no credentials or region from IMDS yet). False for
    /// what the settings themselves say: a required parameter that does not exist, a value that
    /// fails its check, no bucket at all; restarting would read the same answer.
    pub fn is_transient(&self) -> bool {
        match self {
            S3SetupError::NoRegion => true,
            S3SetupError::Ssm(ssm::SsmError::Call { .. }) => true,
            S3SetupError::Ssm(ssm::SsmError::Missing { .. } | ssm::SsmError::Invalid { .. }) => false,
            S3SetupError::NoBucket(_) => false,
        }
    }
}

/// First wait after a transient setup failure; it doubles after each further one.
pub const SETUP_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two setup attempts.
pub const SETUP_RETRY_MAX: Duration = Duration::from_secs(30);

/// Capped exponential backoff: `first`, `2 × first`, ... up to `max`, then `max` for good.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first.min(max), max }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }
}

/// Everything the server needs from the S3 configuration once SSM has been read.
pub struct S3Setup {
    pub source: S3Source,
    /// From flag or file, else from SSM, else `default_poll_interval`.
    pub poll_interval: Duration,
}

/// The SDK configuration shared by S3, SSM and the credential providers: every connection
/// through `egress`.
pub async fn sdk_config(config: &S3Config) -> Result<aws_config::SdkConfig, S3SetupError> {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(egress::DEFAULT_CONNECT_TIMEOUT)
        .read_timeout(Duration::from_secs(30))
        .operation_attempt_timeout(Duration::from_secs(120))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(EgressHttpClient::shared(config.egress.clone()))
        .timeout_config(timeouts);
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(S3SetupError::NoRegion);
    }
    Ok(sdk)
}

/// Reads SSM (if asked), applies the settings by precedence and builds the source.
pub async fn setup(config: &S3Config, default_poll_interval: Duration) -> Result<S3Setup, S3SetupError> {
    let sdk = sdk_config(config).await?;
    let from_ssm = match &config.ssm_prefix {
        Some(prefix) => {
            let client = aws_sdk_ssm::Client::new(&sdk);
            let settings = ssm::read(&client, prefix, config.bucket.is_none()).await?;
            tracing::info!(prefix = %prefix, parameters = settings.found.len(), "read settings from SSM");
            settings
        }
        None => SsmSettings::default(),
    };
    let bucket = match (&config.bucket, from_ssm.bucket) {
        (Some(b), _) => b.clone(),
        (None, Some(b)) => b,
        (None, None) => {
            let name = config.ssm_prefix.as_deref().map(|p| ssm::parameter_name(p, ssm::DATA_BUCKET_ID));
            return Err(S3SetupError::NoBucket(name.unwrap_or_else(|| ssm::DATA_BUCKET_ID.to_string())));
        }
    };
    let prefix = config.prefix.clone().or(from_ssm.prefix).unwrap_or_default();
    let mut s3 = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(config.force_path_style);
    // The bucket's region from SSM, unless the region was given explicitly.
    if let (None, Some(region)) = (&config.region, from_ssm.region) {
        s3 = s3.region(aws_config::Region::new(region));
    }
    let client = aws_sdk_s3::Client::from_conf(s3.build());
    let poll_interval = match from_ssm.poll_interval {
        Some(from_ssm) if !config.poll_interval_set => from_ssm,
        _ => default_poll_interval,
    };
    let source = S3Source::new(client, bucket, &prefix);
    tracing::info!(
        bucket = %source.bucket,
        prefix = %source.key_prefix,
        region = %client_region(&source.client),
        poll_interval_ms = poll_interval.as_millis() as u64,
        egress = %config.egress,
        "S3 data source"
    );
    Ok(S3Setup { source, poll_interval })
}

/// [`setup`] until it succeeds, while the server already serves: a transient failure is logged
/// (warn: the SSM prefix, the egress proxy and the error, never a parameter value), counted in
/// `errors` (`kv_server.data.source_errors`) and tried again after a [`Backoff`] of
/// [`SETUP_RETRY_FIRST`] doubling to [`SETUP_RETRY_MAX`]; a permanent one is returned.
/// `Ok(None)`: `shutdown` resolved first (also in the middle of an attempt).
pub async fn setup_with_retries(
    config: &S3Config,
    default_poll_interval: Duration,
    errors: &AtomicU64,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<S3Setup>, S3SetupError> {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(SETUP_RETRY_FIRST, SETUP_RETRY_MAX);
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let result = tokio::select! {
            result = setup(config, default_poll_interval) => result,
            _ = &mut shutdown => return Ok(None),
        };
        let error = match result {
            Ok(setup) => return Ok(Some(setup)),
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        errors.fetch_add(1, Ordering::Relaxed);
        let delay = backoff.next_delay();
        tracing::warn!(
            ssm_prefix = config.ssm_prefix.as_deref().unwrap_or("(none)"),
            egress = %config.egress,
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            error = %error,
            "S3 data source setup failed; will retry"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return Ok(None),
        }
    }
}

fn client_region(client: &aws_sdk_s3::Client) -> String {
    client.config().region().map(|r| r.to_string()).unwrap_or_default()
}

/// A bucket and key prefix holding data files.
#[derive(Debug, Clone)]
pub struct S3Source {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Empty, or the prefix with one trailing `/`.
    key_prefix: String,
}

/// One failed S3 call; says which call, which object and which side failed.
#[derive(Debug, thiserror::Error)]
#[error("S3 {operation} s3://{bucket}/{key}: {detail}")]
pub struct S3Error {
    pub operation: &'static str,
    pub bucket: String,
    pub key: String,
    pub detail: String,
}

impl S3Source {
    pub fn new(client: aws_sdk_s3::Client, bucket: String, prefix: &str) -> S3Source {
        let trimmed = prefix.trim_matches('/');
        let key_prefix = if trimmed.is_empty() { String::new() } else { format!("{trimmed}/") };
        S3Source { client, bucket, key_prefix }
    }

    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        operation: &'static str,
        key: &str,
        err: &SdkError<E, HttpResponse>,
    ) -> S3Error {
        S3Error { operation, bucket: self.bucket.clone(), key: key.to_string(), detail: describe(err) }
    }
}

impl S3Source {
    /// Data file names (relative to the source's prefix) of the keys under `key_prefix`, after
    /// `start_after` (a whole key), sorted.
    async fn list_keys(
        &self,
        key_prefix: &str,
        start_after: Option<String>,
    ) -> Result<Vec<String>, SourceError> {
        let mut names = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(key_prefix)
            .set_start_after(start_after)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| SourceError::List {
                location: self.location(),
                source: Box::new(self.error("ListObjectsV2", key_prefix, &e)),
            })?;
            for object in page.contents() {
                let Some(name) = object.key().and_then(|k| k.strip_prefix(self.key_prefix.as_str())) else {
                    continue;
                };
                // Only data file names: the bucket may hold anything else besides.
                if DataFileName::parse(name).is_some() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

impl Source for S3Source {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key_prefix)
    }

    async fn list(&self) -> Result<Vec<String>, SourceError> {
        self.list_keys(&self.key_prefix, None).await
    }

    async fn list_newer(
        &self,
        prefix: &str,
        kind: FileKind,
        after: Option<&str>,
    ) -> Result<Vec<String>, SourceError> {
        let dir =
            if prefix.is_empty() { self.key_prefix.clone() } else { format!("{}{prefix}/", self.key_prefix) };
        let start_after = after.map(|a| format!("{dir}{a}"));
        let mut names = self.list_keys(&format!("{dir}{}", kind.name_prefix()), start_after).await?;
        // Only files directly in `prefix` (a key could nest below a name-like folder).
        names.retain(|n| DataFileName::parse(n).is_some_and(|d| d.prefix == prefix && d.kind == kind));
        Ok(names)
    }

    async fn fetch(&self, name: &str, max_bytes: u64) -> Result<Vec<u8>, SourceError> {
        let key = format!("{}{name}", self.key_prefix);
        let fetch_err = |source: crate::source::BoxError| SourceError::Fetch {
            location: self.location(),
            file: name.to_string(),
            source,
        };
        let object_url = || format!("s3://{}/{key}", self.bucket);
        let mut object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| fetch_err(Box::new(self.error("GetObject", &key, &e))))?;
        // The stated length first, so that an object known to be too large is not read at all;
        // then the bytes as they arrive, since the length may be absent (chunked) or wrong.
        let stated = object.content_length().and_then(|n| u64::try_from(n).ok());
        if let Some(len) = stated.filter(|len| *len > max_bytes) {
            return Err(SourceError::too_large(
                name,
                object_url(),
                max_bytes,
                format!("Content-Length {len} bytes"),
            ));
        }
        let mut bytes = Vec::with_capacity(initial_capacity(stated.unwrap_or(0)));
        while let Some(chunk) = object.body.next().await {
            let chunk = chunk.map_err(|e| {
                fetch_err(Box::new(S3Error {
                    operation: "GetObject",
                    bucket: self.bucket.clone(),
                    key: key.clone(),
                    detail: format!("reading the body failed: {}", chain(&e)),
                }))
            })?;
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(SourceError::too_large(
                    name,
                    object_url(),
                    max_bytes,
                    "more bytes arrived than that (the Content-Length was missing or wrong)",
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use transport::Endpoint;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(SETUP_RETRY_FIRST, SETUP_RETRY_MAX);
        let waits: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(30));
        assert_eq!(b.next_delay(), Duration::from_secs(30));
    }

    #[test]
    fn the_way_to_aws_is_retried_the_settings_are_not() {
        let call = ssm::SsmError::Call { names: "p-data-bucket-id".into(), detail: "timed out".into() };
        assert!(S3SetupError::from(call).is_transient());
        assert!(S3SetupError::NoRegion.is_transient());
        let missing = ssm::SsmError::Missing { parameter: "p-data-bucket-id".into(), why: "no --s3-bucket" };
        assert!(!S3SetupError::from(missing).is_transient());
        let invalid = ssm::SsmError::Invalid { parameter: "p-region".into(), reason: "Mars".into() };
        assert!(!S3SetupError::from(invalid).is_transient());
        assert!(!S3SetupError::NoBucket("p-data-bucket-id".into()).is_transient());
    }

    #[tokio::test]
    async fn shutdown_ends_a_setup_that_cannot_finish() {
        // A proxy that accepts and never answers: every attempt hangs or fails, never succeeds.
        let proxy = transport::Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).await.unwrap();
        let egress = proxy.local_endpoint().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = proxy.accept().await {
                open.push(stream);
            }
        });
        let config = S3Config {
            egress,
            bucket: None,
            prefix: None,
            region: Some("us-east-1".into()),
            endpoint_url: Some("http://127.0.0.1:9".into()),
            force_path_style: true,
            ssm_prefix: Some("kv-server-unit".into()),
            poll_interval_set: false,
        };
        let errors = AtomicU64::new(0);
        let shutdown = tokio::time::sleep(Duration::from_millis(300));
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            setup_with_retries(&config, Duration::from_secs(1), &errors, shutdown),
        )
        .await
        .expect("shutdown ends the retries");
        assert!(matches!(result, Ok(None)), "{:?}", result.err());
        held.abort();
    }

    /// What the fake S3 answers to every GET, after its SOCKS5 handshake (it is the egress proxy
    /// and the endpoint in one).
    #[derive(Clone)]
    enum Answer {
        /// `Content-Length` as given, then `body`; the connection stays open afterwards.
        Length { stated: u64, body: Vec<u8> },
        /// No length: the body ends when the connection closes.
        UntilClose(Vec<u8>),
        /// `Content-Length` as given, then `body`, then the connection closes.
        Truncated { stated: u64, body: Vec<u8> },
        /// `Transfer-Encoding: chunked` and a `Content-Length` that lies (HTTP lets the chunks
        /// win, so the client sees no length); 64 KiB chunks.
        ChunkedWithFalseLength { stated: u64, body: Vec<u8> },
    }

    /// Serves `answer` on loopback; returns the endpoint to give as the egress proxy.
    async fn fake_s3(answer: Answer) -> Endpoint {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = transport::Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).await.unwrap();
        let endpoint = listener.local_endpoint().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    transport::socks5::server_handshake(&mut stream).await.map_err(std::io::Error::other)?;
                    transport::socks5::send_reply(&mut stream, transport::socks5::ReplyCode::Succeeded, None)
                        .await?;
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if stream.read(&mut byte).await? == 0 {
                            return Ok(());
                        }
                        head.push(byte[0]);
                    }
                    assert!(head.starts_with(b"GET /kv-data/kv/DELTA_0000000000000001"), "{head:?}");
                    match answer {
                        Answer::Length { stated, body } => {
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {stated}\r\n\r\n");
                            stream.write_all(head.as_bytes()).await?;
                            stream.write_all(&body).await?;
                            // Hold the connection: a client that waited for the stated bytes would hang.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        Answer::Truncated { stated, body } => {
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {stated}\r\n\r\n");
                            stream.write_all(head.as_bytes()).await?;
                            stream.write_all(&body).await?;
                            stream.shutdown().await?;
                        }
                        Answer::UntilClose(body) => {
                            stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await?;
                            stream.write_all(&body).await?;
                            stream.shutdown().await?;
                        }
                        Answer::ChunkedWithFalseLength { stated, body } => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {stated}\r\nTransfer-Encoding: chunked\r\n\r\n"
                            );
                            stream.write_all(head.as_bytes()).await?;
                            for chunk in body.chunks(64 * 1024) {
                                stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                                stream.write_all(chunk).await?;
                                stream.write_all(b"\r\n").await?;
                            }
                            stream.write_all(b"0\r\n\r\n").await?;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        endpoint
    }

    fn source_through(egress: Endpoint) -> S3Source {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test"))
            .endpoint_url("http://s3.test")
            .force_path_style(true)
            .http_client(EgressHttpClient::shared(egress))
            .build();
        S3Source::new(aws_sdk_s3::Client::from_conf(config), "kv-data".into(), "kv")
    }

    /// Issue 14 item 5: the body was collected whole, whatever its size. An object over the limit
    /// is refused by its Content-Length before its body is read, and by counting the bytes when
    /// the length is absent or false; either way the error names the object and the limit.
    #[tokio::test]
    async fn an_object_over_the_limit_is_refused_whether_its_length_is_stated_absent_or_false() {
        const FILE: &str = "DELTA_0000000000000001";
        const LIMIT: u64 = 1024 * 1024;
        let big = vec![b'x'; 3 * LIMIT as usize];
        let fetch = |answer: Answer| async move {
            let source = source_through(fake_s3(answer).await);
            tokio::time::timeout(Duration::from_secs(20), source.fetch(FILE, LIMIT))
                .await
                .expect("the fetch ends without the rest of the body")
        };

        let small = fetch(Answer::Length { stated: 5, body: b"hello".to_vec() }).await.unwrap();
        assert_eq!(small, b"hello");
        let exact = fetch(Answer::UntilClose(big[..LIMIT as usize].to_vec())).await.unwrap();
        assert_eq!(exact.len() as u64, LIMIT);

        let cases = [
            (
                Answer::Length { stated: 50_000_000, body: b"only the start".to_vec() },
                "Content-Length 50000000 bytes",
            ),
            (
                Answer::UntilClose(big.clone()),
                "more bytes arrived than that (the Content-Length was missing or wrong)",
            ),
            (
                Answer::ChunkedWithFalseLength { stated: 100, body: big.clone() },
                "more bytes arrived than that (the Content-Length was missing or wrong)",
            ),
        ];
        for (answer, found) in cases {
            let err = fetch(answer).await.map(|b| b.len()).unwrap_err();
            assert!(matches!(err, SourceError::TooLarge(_)), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "{FILE}: s3://kv-data/kv/{FILE} is larger than max_file_bytes ({LIMIT} bytes): {found}"
                )
            );
        }
    }

    /// A Content-Length is a claim: the buffer is not sized by it (an allocation of 8 EiB aborts
    /// the process), also when the limit is set as high as it goes.
    #[tokio::test]
    async fn a_huge_stated_length_within_the_limit_allocates_nothing_up_front() {
        let egress =
            fake_s3(Answer::Truncated { stated: i64::MAX as u64, body: b"three bytes".to_vec() }).await;
        let source = source_through(egress);
        let result =
            tokio::time::timeout(Duration::from_secs(20), source.fetch("DELTA_0000000000000001", u64::MAX))
                .await
                .expect("the fetch ends when the connection does");
        let err = result.map(|b| b.len()).unwrap_err();
        assert!(matches!(err, SourceError::Fetch { .. }), "a cut body is a source error, retried: {err}");
    }

    fn args(list: &[&str]) -> AwsArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            aws: AwsArgs,
        }
        let mut argv = vec!["t"];
        argv.extend_from_slice(list);
        T::try_parse_from(argv).expect("flags parse").aws
    }

    #[test]
    fn resolve_checks_values_and_names_the_flag() {
        assert_eq!(resolve(&args(&[]), None, None, false, false).unwrap(), None);
        let ok = resolve(
            &args(&[
                "--s3-bucket",
                "kv-data",
                "--egress-socks5",
                "tcp://127.0.0.1:1080",
                "--s3-prefix",
                "a/b",
            ]),
            None,
            None,
            false,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.bucket.as_deref(), Some("kv-data"));
        assert_eq!(ok.prefix.as_deref(), Some("a/b"));
        for (flags, needle) in [
            (&["--s3-bucket", "kv-data"][..], "--egress-socks5"),
            (&["--s3-bucket", "Bad_Bucket", "--egress-socks5", "tcp://127.0.0.1:1"][..], "--s3-bucket"),
            (&["--s3-bucket", "kv-data", "--egress-socks5", "tcp://nowhere"][..], "--egress-socks5"),
            (&["--s3-bucket", "kv-data", "--egress-socks5", "vsock://any:8888"][..], "--egress-socks5"),
            (
                &["--s3-bucket", "kv-data", "--egress-socks5", "tcp://127.0.0.1:1", "--aws-region", "US"][..],
                "--aws-region",
            ),
            (
                &["--s3-bucket", "kv-data", "--egress-socks5", "tcp://127.0.0.1:1", "--s3-prefix", "a//b"][..],
                "--s3-prefix",
            ),
            (
                &[
                    "--s3-bucket",
                    "kv-data",
                    "--egress-socks5",
                    "tcp://127.0.0.1:1",
                    "--aws-endpoint-url",
                    "ftp://x",
                ][..],
                "--aws-endpoint-url",
            ),
            (&["--ssm-prefix", "bad prefix", "--egress-socks5", "tcp://127.0.0.1:1"][..], "--ssm-prefix"),
            (&["--s3-prefix", "a"][..], "--s3-prefix"),
        ] {
            let err = resolve(&args(flags), None, None, false, false).unwrap_err().to_string();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let file = AwsFileConfig {
            s3_bucket: Some("from-file".into()),
            egress_socks5: Some("tcp://127.0.0.1:1080".into()),
            region: Some("eu-west-1".into()),
            ..Default::default()
        };
        let path = Path::new("/etc/kv.toml");
        let config = resolve(&args(&[]), Some(file.clone()), Some(path), true, false).unwrap().unwrap();
        assert_eq!(config.bucket.as_deref(), Some("from-file"));
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert!(config.poll_interval_set);
        let config =
            resolve(&args(&["--s3-bucket", "from-flag"]), Some(file.clone()), Some(path), false, false)
                .unwrap()
                .unwrap();
        assert_eq!(config.bucket.as_deref(), Some("from-flag"));
        let bad = AwsFileConfig { region: Some("Nope".into()), ..file };
        let err = resolve(&args(&[]), Some(bad), Some(path), false, false).unwrap_err().to_string();
        assert!(err.contains("/etc/kv.toml key `aws.region`"), "{err}");
    }

    #[test]
    fn bucket_names() {
        for good in ["abc", "kv-server-prod-data", "a.b.c", "0123456789"] {
            assert!(check_bucket(good).is_ok(), "{good}");
        }
        for bad in ["ab", "-abc", "abc-", "ABC", "a_b_c", &"a".repeat(64)] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
    }
}
