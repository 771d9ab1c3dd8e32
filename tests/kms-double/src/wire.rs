//! KMS's AWS JSON 1.1 protocol, as `aws-sdk-kms` speaks it.
//!
//! A request is `POST /` with `X-Amz-Target: TrentService.<Operation>` and
//! `Content-Type: application/x-amz-json-1.1`; its body is a JSON object with AWS's field names
//! and blobs in standard base64. An error is an HTTP 4xx/5xx whose body is
//! `{"__type": "<ShapeName>", "message": "..."}`; the SDK maps `__type` to its typed errors
//! (`DecryptError::InvalidCiphertextException`, ...). Field names and shapes are those of the
//! SDK's generated serializers (`protocol_serde/shape_*_input.rs` of aws-sdk-kms 1.129).
//!
//! Request fields the double does not know are refused (ValidationException naming the field)
//! rather than ignored, so a test never passes because something it sent was dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `X-Amz-Target` prefix of KMS.
pub const TARGET_PREFIX: &str = "TrentService.";
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// An error as KMS returns it; the variant docs are the `__type` names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    /// AccessDeniedException
    #[error("AccessDeniedException: {0}")]
    AccessDenied(String),
    /// NotFoundException
    #[error("NotFoundException: {0}")]
    NotFound(String),
    /// InvalidCiphertextException
    #[error("InvalidCiphertextException: {0}")]
    InvalidCiphertext(String),
    /// ValidationException
    #[error("ValidationException: {0}")]
    Validation(String),
    /// UnsupportedOperationException
    #[error("UnsupportedOperationException: {0}")]
    UnsupportedOperation(String),
    /// DryRunOperationException: the request would have succeeded.
    #[error("DryRunOperationException: {0}")]
    DryRun(String),
    /// KMSInternalException: the double itself failed (RNG, encoding).
    #[error("KMSInternalException: {0}")]
    Internal(String),
}

impl KmsError {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::AccessDenied(_) => "AccessDeniedException",
            Self::NotFound(_) => "NotFoundException",
            Self::InvalidCiphertext(_) => "InvalidCiphertextException",
            Self::Validation(_) => "ValidationException",
            Self::UnsupportedOperation(_) => "UnsupportedOperationException",
            Self::DryRun(_) => "DryRunOperationException",
            Self::Internal(_) => "KMSInternalException",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::AccessDenied(m)
            | Self::NotFound(m)
            | Self::InvalidCiphertext(m)
            | Self::Validation(m)
            | Self::UnsupportedOperation(m)
            | Self::DryRun(m)
            | Self::Internal(m) => m,
        }
    }

    /// KMS answers client errors with 400, a dry run with 412, its own failures with 500.
    pub fn status(&self) -> u16 {
        match self {
            Self::DryRun(_) => 412,
            Self::Internal(_) => 500,
            _ => 400,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"__type": self.type_name(), "message": self.message()}))
            .unwrap_or_default()
    }
}

/// Base64 (standard alphabet, padded) for blob fields.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;
        use serde::Serialize;

        pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            bytes.as_ref().map(|b| STANDARD.encode(b)).serialize(s)
        }
    }
}

/// `RecipientInfo`, sent as `Recipient`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RecipientInfo {
    pub key_encryption_algorithm: Option<String>,
    #[serde(with = "b64", default)]
    pub attestation_document: Vec<u8>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct GenerateDataKeyRequest {
    pub key_id: String,
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
    pub number_of_bytes: Option<i64>,
    pub key_spec: Option<String>,
    #[serde(default)]
    pub grant_tokens: Vec<String>,
    pub recipient: Option<RecipientInfo>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyResponse {
    pub key_id: String,
    #[serde(with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    #[serde(with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Vec<u8>>,
    #[serde(with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub ciphertext_for_recipient: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DecryptRequest {
    #[serde(with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
    #[serde(default)]
    pub grant_tokens: Vec<String>,
    pub key_id: Option<String>,
    pub encryption_algorithm: Option<String>,
    pub recipient: Option<RecipientInfo>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptResponse {
    pub key_id: String,
    #[serde(with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Vec<u8>>,
    #[serde(with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub ciphertext_for_recipient: Option<Vec<u8>>,
    pub encryption_algorithm: &'static str,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct EncryptRequest {
    pub key_id: String,
    #[serde(with = "b64")]
    pub plaintext: Vec<u8>,
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
    #[serde(default)]
    pub grant_tokens: Vec<String>,
    pub encryption_algorithm: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptResponse {
    pub key_id: String,
    #[serde(with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    pub encryption_algorithm: &'static str,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeKeyRequest {
    pub key_id: String,
    #[serde(default)]
    pub grant_tokens: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeKeyResponse {
    pub key_metadata: KeyMetadata,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    pub key_id: String,
    pub arn: String,
    /// Seconds since the epoch, as AWS JSON writes timestamps.
    pub creation_date: f64,
    pub enabled: bool,
    pub description: String,
    pub key_usage: &'static str,
    pub key_state: &'static str,
    pub origin: &'static str,
    pub key_manager: &'static str,
    pub key_spec: &'static str,
    pub customer_master_key_spec: &'static str,
    pub encryption_algorithms: Vec<&'static str>,
    pub multi_region: bool,
}

/// Parses a request body, mapping serde's complaint to a ValidationException.
pub fn parse<'a, T: Deserialize<'a>>(operation: &str, body: &'a [u8]) -> Result<T, KmsError> {
    serde_json::from_slice(body)
        .map_err(|e| KmsError::Validation(format!("{operation}: malformed request: {e}")))
}
