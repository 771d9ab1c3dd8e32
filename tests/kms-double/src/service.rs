//! The operations: one symmetric key, its policy, and the four calls a fleet key manager makes.
//!
//! Each call resolves the key, builds what the policy sees (action, caller, encryption context,
//! the recipient's PCRs), asks the policy, and only then touches key material. The outcome is an
//! [`Outcome`] for the server's log line, which names the decision and reason and never a key,
//! a plaintext or a ciphertext.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::attestation::Recipient;
use crate::blob::{BlobError, MasterKey};
use crate::cms::{self, CmsEncoding};
use crate::policy::{Decision, Policy, RequestContext};
use crate::wire::{self, KmsError, RecipientInfo};

/// The only encryption algorithm of a symmetric KMS key.
pub const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";
/// GenerateDataKey's NumberOfBytes range.
const MAX_DATA_KEY_BYTES: i64 = 1024;

/// The double's one key and who is calling.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub region: String,
    pub account: String,
    pub key_id: String,
    /// `alias/NAME`, if the key has one.
    pub alias: Option<String>,
    pub caller_arn: String,
    pub cms_encoding: CmsEncoding,
}

impl KeyConfig {
    pub fn key_arn(&self) -> String {
        format!("arn:aws:kms:{}:{}:key/{}", self.region, self.account, self.key_id)
    }

    /// Whether `name` (a key id, key ARN, alias name or alias ARN) names this key.
    fn names_this_key(&self, name: &str) -> bool {
        if name == self.key_id || name == self.key_arn() {
            return true;
        }
        self.alias.as_deref().is_some_and(|alias| {
            name == alias || name == format!("arn:aws:kms:{}:{}:{alias}", self.region, self.account)
        })
    }
}

/// A data key as the response carries it: exactly one of the two is set.
struct Delivery {
    plaintext: Option<Vec<u8>>,
    ciphertext_for_recipient: Option<Vec<u8>>,
}

/// What the server logs about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    pub reason: String,
}

pub struct KmsDouble {
    config: KeyConfig,
    key_arn: String,
    policy: Policy,
    master: MasterKey,
    created: f64,
}

impl std::fmt::Debug for KmsDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsDouble").field("key_arn", &self.key_arn).finish_non_exhaustive()
    }
}

impl KmsDouble {
    pub fn new(config: KeyConfig, policy: Policy) -> Result<Self, BlobError> {
        let created =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
        Ok(Self { key_arn: config.key_arn(), config, policy, master: MasterKey::random()?, created })
    }

    pub fn key_arn(&self) -> &str {
        &self.key_arn
    }

    /// Handles one call: `operation` is the part of `X-Amz-Target` after `TrentService.`.
    /// Returns the JSON response body, or the error, with what to log either way.
    pub fn handle(&self, operation: &str, body: &[u8]) -> (Result<Vec<u8>, KmsError>, Outcome) {
        let mut allowed_by = String::new();
        let result = match operation {
            "GenerateDataKey" => self.generate_data_key(wire::parse(operation, body), &mut allowed_by),
            "Decrypt" => self.decrypt(wire::parse(operation, body), &mut allowed_by),
            "Encrypt" => self.encrypt(wire::parse(operation, body), &mut allowed_by),
            "DescribeKey" => self.describe_key(wire::parse(operation, body), &mut allowed_by),
            other => {
                Err(KmsError::UnsupportedOperation(format!("the KMS double does not implement {other:?}")))
            }
        };
        let outcome = match &result {
            Ok(_) => Outcome { decision: "allow", reason: format!("statement {allowed_by}") },
            Err(KmsError::AccessDenied(reason)) => Outcome { decision: "deny", reason: reason.clone() },
            Err(KmsError::DryRun(_)) => {
                Outcome { decision: "allow", reason: format!("dry run, statement {allowed_by}") }
            }
            Err(e) => Outcome { decision: "error", reason: e.to_string() },
        };
        (result, outcome)
    }

    fn resolve(&self, key_id: &str) -> Result<(), KmsError> {
        if self.config.names_this_key(key_id) {
            Ok(())
        } else {
            Err(KmsError::NotFound(format!("Key '{key_id}' does not exist")))
        }
    }

    /// Asks the policy; `Ok` carries the allowing statement.
    fn authorize(
        &self,
        action: &str,
        context: &BTreeMap<String, String>,
        recipient: Option<&Recipient>,
    ) -> Result<String, KmsError> {
        let request = RequestContext {
            action,
            resource: &self.key_arn,
            caller_arn: &self.config.caller_arn,
            encryption_context: context,
            recipient_pcrs: recipient.map(|r| &r.pcrs),
        };
        match self.policy.evaluate(&request) {
            Decision::Allow { statement } => Ok(statement),
            Decision::Deny { reason } => Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: {action} on resource: {} because {reason}",
                self.config.caller_arn, self.key_arn
            ))),
        }
    }

    fn recipient(info: Option<&RecipientInfo>) -> Result<Option<Recipient>, KmsError> {
        let Some(info) = info else { return Ok(None) };
        let algorithm = info.key_encryption_algorithm.as_deref().unwrap_or_default();
        Recipient::from_request(algorithm, &info.attestation_document, SystemTime::now())
            .map(Some)
            .map_err(|e| KmsError::Validation(e.to_string()))
    }

    fn refuse_grant_tokens(tokens: &[String]) -> Result<(), KmsError> {
        if tokens.is_empty() {
            Ok(())
        } else {
            Err(KmsError::Validation("the KMS double has no grants; GrantTokens must be empty".into()))
        }
    }

    /// Plaintext, or (with a recipient) the plaintext enveloped to it and no Plaintext.
    fn deliver(&self, plaintext: Vec<u8>, recipient: Option<&Recipient>) -> Result<Delivery, KmsError> {
        match recipient {
            None => Ok(Delivery { plaintext: Some(plaintext), ciphertext_for_recipient: None }),
            Some(r) => {
                let envelope =
                    cms::envelope(&r.public_key, &r.public_key_der, &plaintext, self.config.cms_encoding)
                        .map_err(|e| KmsError::Internal(e.to_string()))?;
                Ok(Delivery { plaintext: None, ciphertext_for_recipient: Some(envelope) })
            }
        }
    }

    fn generate_data_key(
        &self,
        request: Result<wire::GenerateDataKeyRequest, KmsError>,
        allowed_by: &mut String,
    ) -> Result<Vec<u8>, KmsError> {
        let request = request?;
        self.resolve(&request.key_id)?;
        Self::refuse_grant_tokens(&request.grant_tokens)?;
        let length = match (request.key_spec.as_deref(), request.number_of_bytes) {
            (Some("AES_256"), None) => 32,
            (Some("AES_128"), None) => 16,
            (None, Some(n)) if (1..=MAX_DATA_KEY_BYTES).contains(&n) => n as usize,
            (None, Some(n)) => {
                return Err(KmsError::Validation(format!("NumberOfBytes {n} is outside 1..=1024")));
            }
            (Some(spec), None) => {
                return Err(KmsError::Validation(format!("KeySpec {spec:?} is not AES_256 or AES_128")));
            }
            (Some(_), Some(_)) => {
                return Err(KmsError::Validation("give KeySpec or NumberOfBytes, not both".into()));
            }
            (None, None) => return Err(KmsError::Validation("KeySpec or NumberOfBytes is required".into())),
        };
        let recipient = Self::recipient(request.recipient.as_ref())?;
        *allowed_by =
            self.authorize("kms:GenerateDataKey", &request.encryption_context, recipient.as_ref())?;
        if request.dry_run {
            return Err(KmsError::DryRun(
                "The request would have succeeded, but the DryRun flag is set".into(),
            ));
        }

        let mut data_key = vec![0u8; length];
        getrandom::fill(&mut data_key).map_err(|_| KmsError::Internal("the system RNG failed".into()))?;
        let ciphertext_blob = self
            .master
            .seal(&self.key_arn, &request.encryption_context, &data_key)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        let Delivery { plaintext, ciphertext_for_recipient } = self.deliver(data_key, recipient.as_ref())?;
        json(&wire::GenerateDataKeyResponse {
            key_id: self.key_arn.clone(),
            ciphertext_blob,
            plaintext,
            ciphertext_for_recipient,
        })
    }

    fn decrypt(
        &self,
        request: Result<wire::DecryptRequest, KmsError>,
        allowed_by: &mut String,
    ) -> Result<Vec<u8>, KmsError> {
        let request = request?;
        Self::refuse_grant_tokens(&request.grant_tokens)?;
        if let Some(key_id) = &request.key_id {
            self.resolve(key_id)?;
        }
        if let Some(algorithm) = request.encryption_algorithm.as_deref().filter(|a| *a != SYMMETRIC_DEFAULT) {
            return Err(KmsError::Validation(format!(
                "EncryptionAlgorithm {algorithm:?}: the key is symmetric"
            )));
        }
        let invalid = || {
            KmsError::InvalidCiphertext(
                "The ciphertext is invalid for this key and encryption context".into(),
            )
        };
        // Real KMS reads the key from the blob; one that is not ours is simply invalid here.
        if MasterKey::key_arn_of(&request.ciphertext_blob).map_err(|_| invalid())? != self.key_arn {
            return Err(invalid());
        }
        let recipient = Self::recipient(request.recipient.as_ref())?;
        *allowed_by = self.authorize("kms:Decrypt", &request.encryption_context, recipient.as_ref())?;
        if request.dry_run {
            return Err(KmsError::DryRun(
                "The request would have succeeded, but the DryRun flag is set".into(),
            ));
        }
        let plaintext = self
            .master
            .open(&self.key_arn, &request.encryption_context, &request.ciphertext_blob)
            .map_err(|_| invalid())?;
        let Delivery { plaintext, ciphertext_for_recipient } = self.deliver(plaintext, recipient.as_ref())?;
        json(&wire::DecryptResponse {
            key_id: self.key_arn.clone(),
            plaintext,
            ciphertext_for_recipient,
            encryption_algorithm: SYMMETRIC_DEFAULT,
        })
    }

    fn encrypt(
        &self,
        request: Result<wire::EncryptRequest, KmsError>,
        allowed_by: &mut String,
    ) -> Result<Vec<u8>, KmsError> {
        let request = request?;
        self.resolve(&request.key_id)?;
        Self::refuse_grant_tokens(&request.grant_tokens)?;
        if let Some(algorithm) = request.encryption_algorithm.as_deref().filter(|a| *a != SYMMETRIC_DEFAULT) {
            return Err(KmsError::Validation(format!(
                "EncryptionAlgorithm {algorithm:?}: the key is symmetric"
            )));
        }
        if request.plaintext.is_empty() || request.plaintext.len() > 4096 {
            return Err(KmsError::Validation("Plaintext must be 1 to 4096 bytes".into()));
        }
        *allowed_by = self.authorize("kms:Encrypt", &request.encryption_context, None)?;
        if request.dry_run {
            return Err(KmsError::DryRun(
                "The request would have succeeded, but the DryRun flag is set".into(),
            ));
        }
        let ciphertext_blob = self
            .master
            .seal(&self.key_arn, &request.encryption_context, &request.plaintext)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        json(&wire::EncryptResponse {
            key_id: self.key_arn.clone(),
            ciphertext_blob,
            encryption_algorithm: SYMMETRIC_DEFAULT,
        })
    }

    fn describe_key(
        &self,
        request: Result<wire::DescribeKeyRequest, KmsError>,
        allowed_by: &mut String,
    ) -> Result<Vec<u8>, KmsError> {
        let request = request?;
        self.resolve(&request.key_id)?;
        Self::refuse_grant_tokens(&request.grant_tokens)?;
        *allowed_by = self.authorize("kms:DescribeKey", &BTreeMap::new(), None)?;
        json(&wire::DescribeKeyResponse {
            key_metadata: wire::KeyMetadata {
                aws_account_id: self.config.account.clone(),
                key_id: self.config.key_id.clone(),
                arn: self.key_arn.clone(),
                creation_date: self.created,
                enabled: true,
                description: "kms-double test key".into(),
                key_usage: "ENCRYPT_DECRYPT",
                key_state: "Enabled",
                origin: "AWS_KMS",
                key_manager: "CUSTOMER",
                key_spec: SYMMETRIC_DEFAULT,
                customer_master_key_spec: SYMMETRIC_DEFAULT,
                encryption_algorithms: vec![SYMMETRIC_DEFAULT],
                multi_region: false,
            },
        })
    }
}

fn json<T: serde::Serialize>(response: &T) -> Result<Vec<u8>, KmsError> {
    serde_json::to_vec(response).map_err(|e| KmsError::Internal(e.to_string()))
}
