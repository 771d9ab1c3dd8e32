//! `CiphertextBlob`: the double's own format, opaque to callers as KMS's is.
//!
//! ```text
//! "KMSD" | version 1 | key ARN length (u8) | key ARN | nonce (12) | AES-256-GCM ciphertext+tag
//! ```
//!
//! Sealed under a master key drawn at start (so blobs do not outlive the process), with the
//! associated data `key ARN || 0x00 || canonical encryption context` (the context as JSON with
//! sorted keys). A blob made for another key, another context, or altered in any byte fails to
//! open: `InvalidCiphertextException`.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

const MAGIC: &[u8; 4] = b"KMSD";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    /// not a blob of this double (wrong magic, version or truncated)
    #[error("the ciphertext is not a blob of this KMS double")]
    Format,
    /// authentication failed: another key, another encryption context, or altered bytes
    #[error("the ciphertext does not authenticate under this key and encryption context")]
    Authentication,
    /// the system RNG failed
    #[error("the system random number generator failed")]
    Random,
}

/// The master key of one double process.
pub struct MasterKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

fn associated_data(key_arn: &str, context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut aad = key_arn.as_bytes().to_vec();
    aad.push(0);
    aad.extend(serde_json::to_vec(context).unwrap_or_default());
    aad
}

impl MasterKey {
    pub fn random() -> Result<Self, BlobError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| BlobError::Random)?;
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| BlobError::Random)?;
        key.fill(0);
        Ok(Self { cipher })
    }

    pub fn seal(
        &self,
        key_arn: &str,
        context: &BTreeMap<String, String>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BlobError> {
        let arn_len = u8::try_from(key_arn.len()).map_err(|_| BlobError::Format)?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| BlobError::Random)?;
        let aad = associated_data(key_arn, context);
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: &aad })
            .map_err(|_| BlobError::Random)?;
        let mut blob = Vec::with_capacity(6 + key_arn.len() + NONCE_LEN + sealed.len());
        blob.extend(MAGIC);
        blob.extend([VERSION, arn_len]);
        blob.extend(key_arn.as_bytes());
        blob.extend(nonce);
        blob.extend(sealed);
        Ok(blob)
    }

    /// The key ARN a blob names, before it is authenticated (to know which key to authorize).
    pub fn key_arn_of(blob: &[u8]) -> Result<&str, BlobError> {
        let rest = blob.strip_prefix(MAGIC.as_slice()).ok_or(BlobError::Format)?;
        let [VERSION, arn_len, rest @ ..] = rest else { return Err(BlobError::Format) };
        let arn = rest.get(..usize::from(*arn_len)).ok_or(BlobError::Format)?;
        std::str::from_utf8(arn).map_err(|_| BlobError::Format)
    }

    pub fn open(
        &self,
        key_arn: &str,
        context: &BTreeMap<String, String>,
        blob: &[u8],
    ) -> Result<Vec<u8>, BlobError> {
        if Self::key_arn_of(blob)? != key_arn {
            return Err(BlobError::Authentication);
        }
        let body = &blob[MAGIC.len() + 2 + key_arn.len()..];
        if body.len() < NONCE_LEN {
            return Err(BlobError::Format);
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| BlobError::Format)?;
        let aad = associated_data(key_arn, context);
        self.cipher.decrypt(&nonce, Payload { msg: sealed, aad: &aad }).map_err(|_| BlobError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/fleet";

    #[test]
    fn a_blob_opens_only_under_its_key_context_and_bytes() {
        let master = MasterKey::random().unwrap();
        let context = BTreeMap::from([("purpose".to_string(), "fleet-keys".to_string())]);
        let blob = master.seal(ARN, &context, b"data key").unwrap();
        assert_eq!(MasterKey::key_arn_of(&blob).unwrap(), ARN);
        assert_eq!(master.open(ARN, &context, &blob).unwrap(), b"data key");

        assert_eq!(master.open(ARN, &BTreeMap::new(), &blob), Err(BlobError::Authentication));
        assert_eq!(
            master.open("arn:aws:kms:us-east-1:123456789012:key/other", &context, &blob),
            Err(BlobError::Authentication)
        );
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(master.open(ARN, &context, &tampered), Err(BlobError::Authentication));
        assert_eq!(master.open(ARN, &context, &blob[..10]), Err(BlobError::Format));
        let other_process = MasterKey::random().unwrap();
        assert_eq!(other_process.open(ARN, &context, &blob), Err(BlobError::Authentication));
    }
}
