//! Where and how to reach AWS: the clients of one region ([`Clients`]), how they are made
//! ([`Target`]: the standard chain, a custom endpoint, or clients made elsewhere for tests), and
//! [`AwsError`], a failed call naming region, operation, resource and the AWS error code. The
//! calls themselves live in one module per operation family (`ebs`, `images`, `import_task`,
//! `instances`, `s3`, `ssm`).

use aws_sdk_ebs::error::{ProvideErrorMetadata, SdkError};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// `code()` for an operation family's error type whose `Call` variant holds an [`AwsError`]:
/// the AWS error code when the error came from a call.
macro_rules! call_code {
    ($error:ty) => {
        impl $error {
            pub fn code(&self) -> Option<&str> {
                match self {
                    Self::Call(e) => Some(&e.code),
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use call_code;

/// A failed AWS call: which region, operation, resource, and the AWS error code.
#[derive(Debug, thiserror::Error)]
#[error("{region}: {operation} on {resource} failed: {code}: {message}")]
pub struct AwsError {
    pub region: String,
    pub operation: &'static str,
    pub resource: String,
    pub code: String,
    pub message: String,
}

impl AwsError {
    pub fn from_sdk<E, R>(
        region: &str,
        operation: &'static str,
        resource: &str,
        e: &SdkError<E, R>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: Debug,
    {
        AwsError {
            region: region.to_string(),
            operation,
            resource: resource.to_string(),
            code: e.code().unwrap_or("NoErrorCode").to_string(),
            message: e
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| aws_sdk_ebs::error::DisplayErrorContext(e).to_string()),
        }
    }
}

/// Makes the clients of a region (tests: clients of aws-smithy-mocks).
pub type ClientFactory = Arc<dyn Fn(&str) -> Clients + Send + Sync>;

/// Where and how to reach AWS.
#[derive(Clone, Default)]
pub struct Target {
    /// Custom endpoint (tests: moto_server on loopback).
    pub endpoint_url: Option<String>,
    /// Static credentials instead of the standard chain (tests only).
    pub static_credentials: Option<(String, String)>,
    /// Clients made elsewhere instead of from the chain (tests only).
    pub factory: Option<ClientFactory>,
}

impl Target {
    /// A custom endpoint is taken for an emulator (tests: moto_server), as for S3's path-style
    /// addressing below: moto implements CreateImage without snapshot TagSpecifications.
    pub fn is_emulator(&self) -> bool {
        self.endpoint_url.is_some()
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint_url", &self.endpoint_url)
            .field("static_credentials", &self.static_credentials.as_ref().map(|(id, _)| id))
            .field("factory", &self.factory.is_some())
            .finish()
    }
}

/// The clients of one region.
#[derive(Clone)]
pub struct Clients {
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub ebs: aws_sdk_ebs::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Clients {
    /// From clients built elsewhere (tests: aws-smithy-mocks).
    pub fn from_parts(
        region: &str,
        ec2: aws_sdk_ec2::Client,
        ebs: aws_sdk_ebs::Client,
        ssm: aws_sdk_ssm::Client,
        s3: aws_sdk_s3::Client,
    ) -> Clients {
        Clients { region: region.to_string(), ec2, ebs, ssm, s3 }
    }

    pub async fn new(region: &str, target: &Target) -> Clients {
        if let Some(f) = &target.factory {
            return f(region);
        }
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .timeout_config(timeouts);
        if let Some(url) = &target.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some((id, secret)) = &target.static_credentials {
            loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
                id, secret, None, None, "static",
            ));
        }
        let conf = loader.load().await;
        // Our own bounded retry wraps PutSnapshotBlock; the SDK's standard retry covers the rest.
        let ebs_conf = aws_sdk_ebs::config::Builder::from(&conf)
            .retry_config(aws_sdk_ebs::config::retry::RetryConfig::disabled())
            .build();
        // Emulators serve S3 on one host: path-style addressing there.
        let s3_conf =
            aws_sdk_s3::config::Builder::from(&conf).force_path_style(target.endpoint_url.is_some()).build();
        Clients {
            region: region.to_string(),
            ec2: aws_sdk_ec2::Client::new(&conf),
            ebs: aws_sdk_ebs::Client::from_conf(ebs_conf),
            ssm: aws_sdk_ssm::Client::new(&conf),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
        }
    }
}
