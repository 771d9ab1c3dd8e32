//! The enclave's KMS recipient key: an RSA key pair generated here, whose public half the NSM puts
//! in an attestation document (KMS's `Recipient`), and the reading of KMS's answer to it.
//!
//! KMS returns `CiphertextForRecipient` as CMS (RFC 5652) `EnvelopedData`: one
//! `KeyTransRecipientInfo` with the content-encryption key under RSAES-OAEP with SHA-256, and the
//! plaintext under AES-256-CBC (PKCS#7 padding) with the IV as the algorithm's parameter. KMS
//! encodes it in BER with indefinite lengths (the AWS Nitro Enclaves SDK for C reads it with a BER
//! parser), so it is decoded with rasn's BER decoder: a DER-only parser refuses it.
//!
//! A [`RecipientKey`] can only be generated, never built from bytes, so an attestation document
//! asked for with one ([`crate::attestation::Attester::attest_recipient`]) can only carry a key
//! whose private half never left this process. The private key is not logged (its `Debug` shows
//! nothing) and is dropped with the [`RecipientKey`].

use rasn::types::{Any, ObjectIdentifier, OctetString, Oid};
use rasn_cms::{CONTENT_ENVELOPED_DATA, ContentInfo, EnvelopedData, RecipientInfo};
use rsa::pkcs8::EncodePublicKey;
use zeroize::Zeroizing;

/// RSA modulus size. 2048 is the smallest KMS accepts; generation is the slow part of the start
/// (a fraction of a second natively, a few seconds under QEMU's emulation).
pub const RSA_BITS: usize = 2048;
/// `KeyEncryptionAlgorithm` of the `Recipient` parameter.
pub const KEY_ENCRYPTION_ALGORITHM: &str = "RSAES_OAEP_SHA_256";
/// id-RSAES-OAEP (PKCS #1, RFC 8017).
const RSAES_OAEP: &Oid = Oid::const_new(&[1, 2, 840, 113549, 1, 1, 7]);
/// Largest CMS answer accepted (a data key's is under 1 KiB).
const MAX_CMS_BYTES: usize = 64 * 1024;

/// Why KMS's `CiphertextForRecipient` could not be read. Names the part of the structure, never
/// any key or plaintext byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error("the RSA key pair could not be generated: {0}")]
    Generate(String),
    #[error("the RSA public key could not be encoded: {0}")]
    Encode(String),
    #[error("CiphertextForRecipient is {0} bytes; at most {MAX_CMS_BYTES} are accepted")]
    TooLarge(usize),
    #[error("CiphertextForRecipient is not CMS: {0}")]
    Cms(String),
    #[error("CiphertextForRecipient: {0}")]
    Unsupported(String),
    #[error("CiphertextForRecipient: the content-encryption key did not decrypt with the enclave's RSA key")]
    KeyDecrypt,
    #[error("CiphertextForRecipient: the content did not decrypt (bad padding)")]
    ContentDecrypt,
}

/// An RSA key pair generated in this process for one run.
pub struct RecipientKey {
    private: rsa::PrivateKey,
    public_der: Vec<u8>,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey").field("bits", &RSA_BITS).finish_non_exhaustive()
    }
}

impl RecipientKey {
    /// A fresh key pair from the operating system's random number generator (inside a Nitro
    /// Enclave the kernel's generator is seeded by the NSM). Slow: call it off the async workers.
    pub fn generate() -> Result<RecipientKey, RecipientError> {
        let private = rsa::PrivateKey::new(&mut getrandom::SysRng, RSA_BITS)
            .map_err(|e| RecipientError::Generate(e.to_string()))?;
        let public_der = private
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| RecipientError::Encode(e.to_string()))?
            .into_vec();
        Ok(RecipientKey { private, public_der })
    }

    /// The public key as DER `SubjectPublicKeyInfo`: what the attestation document carries.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_der
    }

    /// Reads KMS's `CiphertextForRecipient`: returns the plaintext (a data key), zeroized when
    /// dropped.
    pub fn open(&self, cms: &[u8]) -> Result<Zeroizing<Vec<u8>>, RecipientError> {
        if cms.len() > MAX_CMS_BYTES {
            return Err(RecipientError::TooLarge(cms.len()));
        }
        let bad = |what: &str, e: rasn::error::DecodeError| RecipientError::Cms(format!("{what}: {e}"));
        let info: ContentInfo = rasn::ber::decode(cms).map_err(|e| bad("ContentInfo", e))?;
        if info.content_type != *CONTENT_ENVELOPED_DATA {
            return Err(RecipientError::Unsupported(format!(
                "content type {} is not enveloped-data",
                oid_text(&info.content_type)
            )));
        }
        let enveloped: EnvelopedData =
            rasn::ber::decode(info.content.as_bytes()).map_err(|e| bad("EnvelopedData", e))?;
        let mut recipients = enveloped.recipient_infos.to_vec().into_iter();
        let (Some(recipient), None) = (recipients.next(), recipients.next()) else {
            return Err(RecipientError::Unsupported("expected exactly one RecipientInfo".into()));
        };
        let RecipientInfo::KeyTransRecipientInfo(transport) = recipient else {
            return Err(RecipientError::Unsupported("the RecipientInfo is not key transport (RSA)".into()));
        };
        if transport.key_encryption_algorithm.algorithm != *RSAES_OAEP {
            return Err(RecipientError::Unsupported(format!(
                "key encryption algorithm {} is not RSAES-OAEP",
                oid_text(&transport.key_encryption_algorithm.algorithm)
            )));
        }
        let content = &enveloped.encrypted_content_info;
        if content.content_encryption_algorithm.algorithm != *rasn_cms::algorithms::AES256_CBC {
            return Err(RecipientError::Unsupported(format!(
                "content encryption algorithm {} is not AES-256-CBC",
                oid_text(&content.content_encryption_algorithm.algorithm)
            )));
        }
        let iv = content
            .content_encryption_algorithm
            .parameters
            .as_ref()
            .ok_or_else(|| RecipientError::Unsupported("AES-256-CBC without an IV".into()))
            .and_then(decode_iv)?;
        let ciphertext = content
            .encrypted_content
            .as_ref()
            .ok_or_else(|| RecipientError::Unsupported("no encrypted content".into()))?;

        let cek = Zeroizing::new(
            self.private
                .oaep_decrypt::<rsa::sha2::Sha256>(&transport.encrypted_key)
                .map_err(|_| RecipientError::KeyDecrypt)?,
        );
        let cek: &[u8; 32] = cek.as_slice().try_into().map_err(|_| RecipientError::KeyDecrypt)?;
        use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
        let decryptor = cbc::Decryptor::<aes::Aes256>::new(cek.into(), (&iv).into());
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let len = decryptor
            .decrypt_padded::<cbc::cipher::block_padding::Pkcs7>(&mut buffer)
            .map_err(|_| RecipientError::ContentDecrypt)?
            .len();
        buffer.truncate(len);
        Ok(buffer)
    }
}

fn decode_iv(parameters: &Any) -> Result<[u8; 16], RecipientError> {
    let iv: OctetString = rasn::ber::decode(parameters.as_bytes())
        .map_err(|e| RecipientError::Cms(format!("the AES-256-CBC IV: {e}")))?;
    iv.as_ref()
        .try_into()
        .map_err(|_| RecipientError::Unsupported(format!("the AES-256-CBC IV is {} bytes, not 16", iv.len())))
}

fn oid_text(oid: &ObjectIdentifier) -> String {
    oid.iter().map(|arc| arc.to_string()).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kms_double::cms::{CmsEncoding, envelope};
    use rsa::pkcs8::DecodePublicKey;

    fn envelope_for(key: &RecipientKey, plaintext: &[u8], encoding: CmsEncoding) -> Vec<u8> {
        let public = rsa::PublicKey::from_public_key_der(key.public_key_der()).unwrap();
        envelope(&public, key.public_key_der(), plaintext, encoding).unwrap()
    }

    /// KMS sends BER with indefinite lengths; a DER-only reader would refuse it. Both forms open.
    #[test]
    fn kms_envelopes_open_in_ber_and_der() {
        let key = RecipientKey::generate().unwrap();
        for encoding in [CmsEncoding::Ber, CmsEncoding::Der] {
            let data_key = [0x5a; 32];
            let cms = envelope_for(&key, &data_key, encoding);
            assert_eq!(key.open(&cms).unwrap().as_slice(), data_key, "{encoding:?}");
        }
        assert!(format!("{key:?}").contains("2048") && !format!("{key:?}").contains("private"));
    }

    #[test]
    fn an_envelope_for_another_key_or_garbage_is_refused_by_name() {
        let (ours, theirs) = (RecipientKey::generate().unwrap(), RecipientKey::generate().unwrap());
        let cms = envelope_for(&theirs, b"secret data key material 32 byte", CmsEncoding::Ber);
        assert_eq!(ours.open(&cms).unwrap_err(), RecipientError::KeyDecrypt);
        assert!(matches!(ours.open(b"not CMS"), Err(RecipientError::Cms(_))));
        assert!(matches!(ours.open(&vec![0; MAX_CMS_BYTES + 1]), Err(RecipientError::TooLarge(_))));
        // A flipped byte in the content: the padding check (or the RSA layer) refuses it.
        let mut cms = envelope_for(&ours, &[1; 32], CmsEncoding::Der);
        let last = cms.len() - 1;
        cms[last] ^= 0xff;
        assert!(ours.open(&cms).is_err());
    }
}
