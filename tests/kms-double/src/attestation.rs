//! The `Recipient` of a request: an NSM attestation document over an RSA public key.
//!
//! What is checked, as AWS documents for KMS: the key encryption algorithm is
//! `RSAES_OAEP_SHA_256`; the document is a COSE_Sign1 (tagged 18 or not) whose payload is the
//! NSM's `AttestationDoc`; it carries a `public_key` that is a DER SubjectPublicKeyInfo of an RSA
//! key of at least 2048 bits; its timestamp is within five minutes of now.
//!
//! What is NOT checked: the COSE signature and the certificate chain. Real KMS verifies both up
//! to the AWS Nitro Enclaves root; the double cannot, since the only documents here come from
//! QEMU's emulated NSM (an unsigned placeholder) and from [`crate::test_nsm::TestNsm`]. A test
//! against the double therefore proves the policy and the envelope, never the signature path.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_nitro_enclaves_nsm_api::api::AttestationDoc;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;

/// The only key encryption algorithm KMS accepts in a `Recipient`.
pub const KEY_ENCRYPTION_ALGORITHM: &str = "RSAES_OAEP_SHA_256";
/// The smallest recipient key KMS accepts.
pub const MIN_RSA_BITS: usize = 2048;
/// How far the document's timestamp may be from the double's clock.
pub const MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// Why a `Recipient` was refused (a ValidationException on the wire).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipientError {
    /// the KeyEncryptionAlgorithm is not RSAES_OAEP_SHA_256
    #[error("Recipient.KeyEncryptionAlgorithm {0:?} is not supported; use RSAES_OAEP_SHA_256")]
    Algorithm(String),
    /// the document is not a COSE_Sign1
    #[error("Recipient.AttestationDocument is not a COSE_Sign1: {0}")]
    Cose(String),
    /// the COSE payload is not an NSM AttestationDoc
    #[error("Recipient.AttestationDocument's payload is not an attestation document: {0}")]
    Payload(String),
    /// no public_key in the document
    #[error("the attestation document carries no public_key")]
    NoPublicKey,
    /// public_key is not an RSA SubjectPublicKeyInfo
    #[error("the attestation document's public_key is not a DER RSA SubjectPublicKeyInfo: {0}")]
    PublicKey(String),
    /// the key is too small
    #[error("the attestation document's RSA key has {0} bits; at least 2048 are required")]
    KeySize(usize),
    /// stale or future document
    #[error("the attestation document's timestamp is {0} s away from now (at most 300 s allowed)")]
    Timestamp(u64),
}

/// A recipient whose document passed the checks above.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// PCR index -> value, as the document states them.
    pub pcrs: BTreeMap<usize, Vec<u8>>,
    pub public_key: rsa::PublicKey,
    /// The DER SubjectPublicKeyInfo as the document carried it (the CMS rid derives from it).
    pub public_key_der: Vec<u8>,
}

/// The payload of a COSE_Sign1 (`[protected, unprotected, payload, signature]`, optionally with
/// tag 18), read as plain CBOR: the double verifies no signature, so it does not interpret the
/// headers (QEMU's emulated NSM writes a protected header that strict COSE parsers refuse).
fn cose_sign1_payload(document: &[u8]) -> Result<Vec<u8>, RecipientError> {
    let value: ciborium::Value =
        ciborium::from_reader(document).map_err(|e| RecipientError::Cose(format!("not CBOR: {e}")))?;
    let value = match value {
        ciborium::Value::Tag(18, inner) => *inner,
        other => other,
    };
    let ciborium::Value::Array(items) = value else {
        return Err(RecipientError::Cose("not a COSE_Sign1 array".into()));
    };
    match <[ciborium::Value; 4]>::try_from(items) {
        Ok([_, _, ciborium::Value::Bytes(payload), ciborium::Value::Bytes(_)]) => Ok(payload),
        Ok(_) => Err(RecipientError::Cose("the payload or the signature is not a byte string".into())),
        Err(items) => Err(RecipientError::Cose(format!("{} elements, not 4", items.len()))),
    }
}

impl Recipient {
    pub fn from_request(algorithm: &str, document: &[u8], now: SystemTime) -> Result<Self, RecipientError> {
        if algorithm != KEY_ENCRYPTION_ALGORITHM {
            return Err(RecipientError::Algorithm(algorithm.to_string()));
        }
        let payload = cose_sign1_payload(document)?;
        let doc =
            AttestationDoc::from_binary(&payload).map_err(|e| RecipientError::Payload(format!("{e:?}")))?;

        let issued = UNIX_EPOCH + Duration::from_millis(doc.timestamp);
        let skew = now.duration_since(issued).or_else(|e| Ok::<_, ()>(e.duration())).unwrap_or_default();
        if skew > MAX_AGE {
            return Err(RecipientError::Timestamp(skew.as_secs()));
        }

        let public_key_der = doc.public_key.ok_or(RecipientError::NoPublicKey)?.into_vec();
        let public_key = rsa::PublicKey::from_public_key_der(&public_key_der)
            .map_err(|e| RecipientError::PublicKey(e.to_string()))?;
        let bits = public_key.n().bit_width() as usize;
        if bits < MIN_RSA_BITS {
            return Err(RecipientError::KeySize(bits));
        }
        let pcrs = doc.pcrs.into_iter().map(|(i, v)| (i, v.into_vec())).collect();
        Ok(Self { pcrs, public_key, public_key_der })
    }
}
