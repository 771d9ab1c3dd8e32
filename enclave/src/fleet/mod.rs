//! Fleet keys: every enclave of a fleet serves the same HPKE key set, which exists outside an
//! enclave only sealed in one S3 object, under a data key that KMS hands out only to an enclave
//! whose attestation document the key policy accepts.
//!
//! At start the enclave generates an RSA key pair ([`crate::recipient`]) and reads the object: KMS
//! `Decrypt` of its data key with a `Recipient` (an NSM document over the RSA public key) returns
//! the data key encrypted to that key, which opens the set ([`keyset`]). If there is no object
//! yet, the enclave makes the set: KMS `GenerateDataKey` with a `Recipient`, a fresh key, sealed,
//! written with `If-None-Match: *`, so of two enclaves starting together one writes and the other
//! reads what it wrote. Every poll the object is read again (new keys are picked up without a
//! restart); when the newest key is older than the rotation interval, the enclave adds the next
//! key and writes with `If-Match: <etag>` (one writer wins, the others read its set).
//!
//! Until the set is loaded the key endpoint answers UNAVAILABLE and the load balancer's health
//! status stays NOT_SERVING. A refusal (KMS denies this enclave's measurements, the object does
//! not open) is retried with a backoff and logged, never served around.
//!
//! Trust: the KMS key comes only from the image's configuration (a parent-supplied key could be
//! the parent's own, with a policy that hands it the data key); the object's location may come
//! from SSM, since its contents are authenticated by the data key. A parent can withhold the
//! object, refuse writes or serve an older authentic object (a rollback to keys that were once
//! valid); it cannot make an enclave accept a key set it knows.

pub mod keyset;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyEncryptionMechanism, RecipientInfo};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use zeroize::Zeroizing;

use crate::attestation::{AttestError, Attester};
use crate::aws::describe;
use crate::config::V2Config;
use crate::health::Health;
use crate::keys::KeyManager;
use crate::recipient::{RecipientError, RecipientKey};
use crate::s3::Backoff;
use keyset::{ENCRYPTION_CONTEXT, KeySet, KeySetError, MAX_OBJECT_BYTES, Sealed};

// The settings live in `config` and `aws` (no module imports back into `fleet`).
pub use crate::aws::S3Location;
pub use crate::config::FleetConfig;

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// One failure of the fleet key task; names the call and the side that failed, never a key.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("AWS set-up: {0}")]
    Setup(String),
    #[error("no key set location: give --fleet-keys-s3-uri or the SSM parameter {0}")]
    NoLocation(String),
    #[error("KMS {operation} with key {key}: {detail}")]
    Kms { operation: &'static str, key: String, detail: String },
    #[error(
        "KMS {operation} answered without CiphertextForRecipient (was the Recipient dropped on the way?)"
    )]
    NoRecipientCiphertext { operation: &'static str },
    #[error("S3 {operation} {location}: {detail}")]
    S3 { operation: &'static str, location: S3Location, detail: String },
    #[error("{location}: {source}")]
    KeySet { location: S3Location, source: KeySetError },
    #[error("the NSM attestation document for KMS: {0}")]
    Attest(AttestError),
    #[error(transparent)]
    Recipient(#[from] RecipientError),
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What an enclave holds once the set is loaded.
struct Held {
    etag: String,
    data_key_blob: Vec<u8>,
    data_key: Zeroizing<Vec<u8>>,
    set: KeySet,
}

/// The KMS and S3 calls of the fleet key task.
pub struct FleetKeys {
    kms: aws_sdk_kms::Client,
    s3: aws_sdk_s3::Client,
    kms_key: String,
    location: S3Location,
    attester: Arc<dyn Attester>,
    recipient: Arc<RecipientKey>,
}

enum Written {
    Yes(String),
    /// Another writer was first (HTTP 412).
    Conflict,
}

impl FleetKeys {
    /// Builds the clients (reading SSM for the location if needed) and generates the RSA key.
    pub async fn setup(config: &FleetConfig, attester: Arc<dyn Attester>) -> Result<FleetKeys, FleetError> {
        let sdk = crate::s3::sdk_config(&config.aws).await.map_err(|e| FleetError::Setup(e.to_string()))?;
        FleetKeys::from_sdk(&sdk, config, attester).await
    }

    /// As [`FleetKeys::setup`] with a given SDK configuration (`config.aws` is then not used).
    pub async fn from_sdk(
        sdk: &aws_config::SdkConfig,
        config: &FleetConfig,
        attester: Arc<dyn Attester>,
    ) -> Result<FleetKeys, FleetError> {
        let sdk = sdk.clone();
        let location = match (&config.location, &config.aws.ssm_prefix) {
            (Some(location), _) => location.clone(),
            (None, Some(prefix)) => {
                let client = aws_sdk_ssm::Client::new(&sdk);
                let settings = crate::ssm::read(&client, prefix, false)
                    .await
                    .map_err(|e| FleetError::Setup(e.to_string()))?;
                settings.fleet_keys_location.ok_or_else(|| {
                    FleetError::NoLocation(crate::ssm::parameter_name(prefix, crate::ssm::FLEET_KEYS_S3_URI))
                })?
            }
            (None, None) => return Err(FleetError::NoLocation(crate::ssm::FLEET_KEYS_S3_URI.into())),
        };
        let mut kms = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(url) = &config.kms_endpoint_url {
            kms = kms.endpoint_url(url);
        }
        let s3 = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(config.aws.force_path_style);
        let recipient = tokio::task::spawn_blocking(RecipientKey::generate)
            .await
            .map_err(|e| FleetError::Setup(format!("RSA key generation task: {e}")))??;
        Ok(FleetKeys {
            kms: aws_sdk_kms::Client::from_conf(kms.build()),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            kms_key: config.kms_key.clone(),
            location,
            attester,
            recipient: Arc::new(recipient),
        })
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// A fresh attestation document over the RSA key (KMS accepts documents a few minutes old).
    async fn recipient_info(&self) -> Result<RecipientInfo, FleetError> {
        let (attester, key) = (self.attester.clone(), self.recipient.clone());
        let document = tokio::task::spawn_blocking(move || attester.attest_recipient(&key))
            .await
            .map_err(|e| FleetError::Attest(AttestError::Refused(format!("attestation task: {e}"))))?
            .map_err(FleetError::Attest)?;
        Ok(RecipientInfo::builder()
            .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
            .attestation_document(Blob::new(document))
            .build())
    }

    fn kms_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        operation: &'static str,
        err: &SdkError<E, HttpResponse>,
    ) -> FleetError {
        FleetError::Kms { operation, key: self.kms_key.clone(), detail: describe(err) }
    }

    fn s3_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        operation: &'static str,
        err: &SdkError<E, HttpResponse>,
    ) -> FleetError {
        FleetError::S3 { operation, location: self.location.clone(), detail: describe(err) }
    }

    fn keyset_error(&self, source: KeySetError) -> FleetError {
        FleetError::KeySet { location: self.location.clone(), source }
    }

    /// A new data key: (plaintext, KMS blob).
    async fn generate_data_key(&self) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), FleetError> {
        let output = self
            .kms
            .generate_data_key()
            .key_id(&self.kms_key)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context(ENCRYPTION_CONTEXT.0, ENCRYPTION_CONTEXT.1)
            .recipient(self.recipient_info().await?)
            .send()
            .await
            .map_err(|e| self.kms_error("GenerateDataKey", &e))?;
        let operation = "GenerateDataKey";
        let cms = output.ciphertext_for_recipient().ok_or(FleetError::NoRecipientCiphertext { operation })?;
        let blob = output.ciphertext_blob().ok_or(FleetError::NoRecipientCiphertext { operation })?;
        Ok((self.recipient.open(cms.as_ref())?, blob.as_ref().to_vec()))
    }

    /// The plaintext of a data key blob.
    async fn decrypt_data_key(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, FleetError> {
        let output = self
            .kms
            .decrypt()
            .key_id(&self.kms_key)
            .ciphertext_blob(Blob::new(blob))
            .encryption_context(ENCRYPTION_CONTEXT.0, ENCRYPTION_CONTEXT.1)
            .recipient(self.recipient_info().await?)
            .send()
            .await
            .map_err(|e| self.kms_error("Decrypt", &e))?;
        let cms = output
            .ciphertext_for_recipient()
            .ok_or(FleetError::NoRecipientCiphertext { operation: "Decrypt" })?;
        Ok(self.recipient.open(cms.as_ref())?)
    }

    /// The object and its ETag; `None` when it does not exist.
    async fn get(&self) -> Result<Option<(Vec<u8>, String)>, FleetError> {
        let result = self.s3.get_object().bucket(&self.location.bucket).key(&self.location.key).send().await;
        let output = match result {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.s3_error("GetObject", &e)),
        };
        let length = output.content_length().unwrap_or(0);
        if usize::try_from(length).map_or(true, |l| l > MAX_OBJECT_BYTES) {
            return Err(
                self.keyset_error(KeySetError::TooLarge(usize::try_from(length).unwrap_or(usize::MAX)))
            );
        }
        let etag = output.e_tag().unwrap_or_default().to_string();
        let bytes = output.body.collect().await.map_err(|e| FleetError::S3 {
            operation: "GetObject",
            location: self.location.clone(),
            detail: format!("reading the body: {e}"),
        })?;
        Ok(Some((bytes.to_vec(), etag)))
    }

    /// Writes the object if it does not exist (`previous` `None`) or still has ETag `previous`.
    async fn put(&self, body: Vec<u8>, previous: Option<&str>) -> Result<Written, FleetError> {
        let request = self
            .s3
            .put_object()
            .bucket(&self.location.bucket)
            .key(&self.location.key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        let request = match previous {
            None => request.if_none_match("*"),
            Some(etag) => request.if_match(etag),
        };
        match request.send().await {
            Ok(output) => Ok(Written::Yes(output.e_tag().unwrap_or_default().to_string())),
            Err(SdkError::ServiceError(e)) if matches!(e.raw().status().as_u16(), 409 | 412) => {
                Ok(Written::Conflict)
            }
            Err(e) => Err(self.s3_error("PutObject", &e)),
        }
    }

    fn open(&self, sealed: &Sealed, data_key: &[u8]) -> Result<KeySet, FleetError> {
        sealed.open(data_key).map_err(|e| self.keyset_error(e))
    }

    /// One step: read the object (making it if missing), then rotate if due. Returns what is held
    /// afterwards. `held` is what the last step returned (its data key saves a KMS call when the
    /// object's data key blob has not changed).
    async fn step(&self, held: Option<Held>, v2: &V2Config) -> Result<Held, FleetError> {
        let mut held = held;
        // A conflict means another enclave wrote in between: read again (bounded: each round
        // some writer made progress).
        for _ in 0..8 {
            let Some((bytes, etag)) = self.get().await? else {
                let (data_key, blob) = self.generate_data_key().await?;
                let set = KeySet::generate(unix_now()).map_err(|e| self.keyset_error(e))?;
                let sealed =
                    Sealed::seal(&set, &self.kms_key, &data_key, &blob).map_err(|e| self.keyset_error(e))?;
                match self.put(sealed.to_json(), None).await? {
                    Written::Yes(etag) => {
                        tracing::info!(location = %self.location, key_id = set.newest().pair.id, "created the fleet key set");
                        return Ok(Held { etag, data_key_blob: blob, data_key, set });
                    }
                    Written::Conflict => continue,
                }
            };
            let sealed = Sealed::from_json(&bytes).map_err(|e| self.keyset_error(e))?;
            let (data_key, set) = match held.take() {
                Some(h) if h.etag == etag => (h.data_key, h.set),
                Some(h) if h.data_key_blob == sealed.data_key_blob => {
                    let set = self.open(&sealed, &h.data_key)?;
                    (h.data_key, set)
                }
                _ => {
                    let data_key = self.decrypt_data_key(&sealed.data_key_blob).await?;
                    let set = self.open(&sealed, &data_key)?;
                    (data_key, set)
                }
            };
            let now = unix_now();
            if !set.rotation_due(now, v2.key_rotation) {
                return Ok(Held { etag, data_key_blob: sealed.data_key_blob, data_key, set });
            }
            let rotated = set.rotated(now, v2.key_grace).map_err(|e| self.keyset_error(e))?;
            let resealed = Sealed::seal(&rotated, &self.kms_key, &data_key, &sealed.data_key_blob)
                .map_err(|e| self.keyset_error(e))?;
            match self.put(resealed.to_json(), Some(&etag)).await? {
                Written::Yes(etag) => {
                    tracing::info!(
                        location = %self.location,
                        key_id = rotated.newest().pair.id,
                        previous_key_id = set.newest().pair.id,
                        "rotated the fleet key set"
                    );
                    return Ok(Held { etag, data_key_blob: sealed.data_key_blob, data_key, set: rotated });
                }
                Written::Conflict => {
                    held = Some(Held { etag, data_key_blob: sealed.data_key_blob, data_key, set });
                }
            }
        }
        Err(FleetError::S3 {
            operation: "PutObject",
            location: self.location.clone(),
            detail: "8 conditional writes in a row lost to other writers".into(),
        })
    }
}

/// Loads the fleet key set into `keys`, keeps it current and rotates it, until `shutdown`.
/// Marks `health` ready once the first set is installed; failures are logged and retried.
pub async fn run(
    config: FleetConfig,
    attester: Arc<dyn Attester>,
    keys: Arc<KeyManager>,
    health: Arc<Health>,
    v2: V2Config,
    shutdown: impl Future<Output = ()>,
) {
    let setup = || FleetKeys::setup(&config, attester.clone());
    serve(setup, &config, keys, health, v2, shutdown).await
}

/// As [`run`] with a given SDK configuration (credentials, region, HTTP client).
pub async fn run_with_sdk(
    sdk: aws_config::SdkConfig,
    config: FleetConfig,
    attester: Arc<dyn Attester>,
    keys: Arc<KeyManager>,
    health: Arc<Health>,
    v2: V2Config,
    shutdown: impl Future<Output = ()>,
) {
    let setup = || FleetKeys::from_sdk(&sdk, &config, attester.clone());
    serve(setup, &config, keys, health, v2, shutdown).await
}

async fn serve<F, Fut>(
    setup: F,
    config: &FleetConfig,
    keys: Arc<KeyManager>,
    health: Arc<Health>,
    v2: V2Config,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<FleetKeys, FleetError>>,
{
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    let fleet = loop {
        let attempt = tokio::select! {
            result = setup() => result,
            _ = &mut shutdown => return,
        };
        match attempt {
            Ok(fleet) => break fleet,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "fleet keys set-up failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut shutdown => return,
                }
            }
        }
    };
    tracing::info!(location = %fleet.location(), kms_key = %config.kms_key, "fleet keys");
    let mut held: Option<Held> = None;
    let mut installed_etag: Option<String> = None;
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        let result = tokio::select! {
            result = fleet.step(held.take(), &v2) => result,
            _ = &mut shutdown => return,
        };
        let delay = match result {
            Ok(now_held) => {
                backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
                if installed_etag.as_deref() != Some(now_held.etag.as_str()) {
                    keys.install(now_held.set.ring(unix_now(), v2.key_grace));
                    let ring = keys.ring();
                    tracing::info!(
                        key_ids = ?ring.public_keys().iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                        "fleet key set installed"
                    );
                    if installed_etag.is_none() {
                        health.set_keys_ready();
                    }
                    installed_etag = Some(now_held.etag.clone());
                }
                held = Some(now_held);
                config.poll_interval
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "fleet key set");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_name_what_is_wrong() {
        let l: S3Location = "s3://kv-keys/fleet/keyset.json".parse().unwrap();
        assert_eq!((l.bucket.as_str(), l.key.as_str()), ("kv-keys", "fleet/keyset.json"));
        assert_eq!(l.to_string(), "s3://kv-keys/fleet/keyset.json");
        for (bad, why) in [
            ("kv-keys/k", "s3://"),
            ("s3://kv-keys", "no object key"),
            ("s3://kv-keys/", "no object key"),
            ("s3://Bad_Bucket/k", "bucket"),
        ] {
            let err = bad.parse::<S3Location>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
