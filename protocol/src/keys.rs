//! HPKE key pairs, the key set a server publishes, and how an attestation document binds it.
//!
//! **Key set digest** (`keySetSha256`): SHA-256 over the concatenation, in ascending key id
//! order, of one 39-byte record per key:
//!
//! ```text
//! key id (1 byte) || KEM id (2, BE) || KDF id (2, BE) || AEAD id (2, BE) || public key (32)
//! ```
//!
//! i.e. the request header the key is used with, followed by the raw X25519 public key. A set
//! with the same keys always has the same digest, whatever order they are listed in.
//!
//! **Binding**: the key endpoint's attestation document has `user_data` =
//! [`KEYSET_USER_DATA_PREFIX`] || the 32-byte digest, its `nonce` is the caller's, and its
//! `public_key` is empty. The general attestation endpoint always puts [`USER_DATA_PREFIX`] in
//! front of a caller's user data, so a caller can never obtain a document that looks like a key
//! set binding.

use base64::Engine;
use hpke::{Deserializable, Kem as _, Serializable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ProtocolError;
use crate::suite::{AEAD_ID, KDF_ID, KEM_ID, PUBLIC_KEY_LEN};

pub(crate) type Kem = hpke::kem::X25519HkdfSha256;

/// Prefix of `user_data` in the key endpoint's attestation document, before the key set digest.
pub const KEYSET_USER_DATA_PREFIX: &[u8] = b"nitro-kv:keyset:v1:";
/// Prefix the general attestation endpoint puts before a caller's `user_data`.
pub const USER_DATA_PREFIX: &[u8] = b"nitro-kv:user:v1:";

/// An X25519 private key. Zeroized on drop (x25519-dalek's `StaticSecret`); `Debug` shows no
/// key material.
#[derive(Clone)]
pub struct SecretKey(pub(crate) <Kem as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A key from its 32 raw bytes (tests, known-answer vectors, a fleet key set opened inside the
    /// enclave); servers generate theirs.
    pub fn from_bytes(bytes: &[u8]) -> Result<SecretKey, ProtocolError> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map(SecretKey)
            .map_err(|_| ProtocolError::InvalidKey("a private key is 32 bytes"))
    }

    /// The 32 raw bytes, zeroized when dropped: only for sealing a key set inside the enclave
    /// (kv-server's fleet keys); never log or send them.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&self.0.to_bytes());
        bytes
    }

    pub fn public_key(&self) -> PublicKey {
        let pk = Kem::sk_to_pk(&self.0);
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        bytes.copy_from_slice(&pk.to_bytes());
        PublicKey(bytes)
    }
}

/// An X25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, ProtocolError> {
        let bytes: [u8; PUBLIC_KEY_LEN] =
            bytes.try_into().map_err(|_| ProtocolError::InvalidKey("an X25519 public key is 32 bytes"))?;
        Ok(PublicKey(bytes))
    }

    /// From standard base64 (as the key endpoint writes it).
    pub fn from_base64(text: &str) -> Result<PublicKey, ProtocolError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| ProtocolError::InvalidKey("not base64"))?;
        PublicKey::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    pub(crate) fn to_hpke(self) -> Result<<Kem as hpke::Kem>::PublicKey, ProtocolError> {
        <Kem as hpke::Kem>::PublicKey::from_bytes(&self.0)
            .map_err(|_| ProtocolError::InvalidKey("not an X25519 public key"))
    }
}

/// A key pair with the 1-byte id that requests name it by.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub id: u8,
    pub secret: SecretKey,
    pub public: PublicKey,
}

impl KeyPair {
    /// A fresh pair from the operating system's random number generator (32 bytes of input
    /// keying material into DHKEM's DeriveKeyPair, as `Kem::gen_keypair` does, but failing
    /// instead of panicking when the generator fails).
    pub fn generate(id: u8) -> Result<KeyPair, ProtocolError> {
        let mut ikm = Zeroizing::new([0u8; 32]);
        getrandom::fill(ikm.as_mut()).map_err(|_| ProtocolError::Random)?;
        let (sk, _) = Kem::derive_keypair(ikm.as_ref());
        let secret = SecretKey(sk);
        let public = secret.public_key();
        Ok(KeyPair { id, secret, public })
    }
}

/// SHA-256 of the canonical serialization of a key set (see the module docs).
pub fn key_set_sha256<'a>(keys: impl IntoIterator<Item = (u8, &'a PublicKey)>) -> [u8; 32] {
    let mut keys: Vec<(u8, &PublicKey)> = keys.into_iter().collect();
    keys.sort_by_key(|(id, _)| *id);
    let mut hasher = Sha256::new();
    for (id, key) in keys {
        hasher.update([id]);
        hasher.update(KEM_ID.to_be_bytes());
        hasher.update(KDF_ID.to_be_bytes());
        hasher.update(AEAD_ID.to_be_bytes());
        hasher.update(key.as_bytes());
    }
    hasher.finalize().into()
}

/// `user_data` of the key endpoint's attestation document for a key set with this digest.
pub fn key_set_user_data(digest: &[u8; 32]) -> Vec<u8> {
    [KEYSET_USER_DATA_PREFIX, digest.as_slice()].concat()
}

/// The key endpoint's JSON (`GET /v2/keys?nonce=HEX`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeySet {
    /// Every key the server accepts requests for: the current one first, then the previous one
    /// while its grace period lasts.
    pub keys: Vec<PublicKeyEntry>,
    /// Lowercase hex of [`key_set_sha256`] over `keys`.
    pub key_set_sha256: String,
    /// Base64 of the NSM's COSE_Sign1 attestation document binding the digest (see the module
    /// docs); `null` outside a Nitro Enclave.
    pub attestation_document: Option<String>,
    /// Why there is no document (`null` when there is one).
    pub attestation_unavailable: Option<String>,
}

/// One key: `id` is the key id byte as two lowercase hex digits (what a coordinator-style key id
/// starts with), `key` the raw X25519 public key in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyEntry {
    pub id: String,
    pub key: String,
}

impl PublicKeyEntry {
    pub fn new(id: u8, key: &PublicKey) -> PublicKeyEntry {
        PublicKeyEntry { id: format!("{id:02x}"), key: key.to_base64() }
    }

    /// The key id: the first two hex digits of `id`.
    pub fn key_id(&self) -> Result<u8, ProtocolError> {
        self.id
            .get(..2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(ProtocolError::InvalidKey("a key id is two hex digits"))
    }

    pub fn public_key(&self) -> Result<PublicKey, ProtocolError> {
        PublicKey::from_base64(&self.key)
    }
}

impl PublicKeySet {
    /// The keys as (id, key) pairs.
    pub fn parse_keys(&self) -> Result<Vec<(u8, PublicKey)>, ProtocolError> {
        self.keys.iter().map(|k| Ok((k.key_id()?, k.public_key()?))).collect()
    }

    /// The attestation document's bytes (decoded from base64); `None` when there is none.
    pub fn attestation_document_bytes(&self) -> Result<Option<Vec<u8>>, ProtocolError> {
        self.attestation_document
            .as_deref()
            .map(|text| {
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| ProtocolError::InvalidKey("the attestation document is not base64"))
            })
            .transpose()
    }

    /// The digest computed from `keys`, which a client compares with `keySetSha256` and with
    /// the document's `user_data`.
    pub fn computed_sha256(&self) -> Result<[u8; 32], ProtocolError> {
        let keys = self.parse_keys()?;
        Ok(key_set_sha256(keys.iter().map(|(id, k)| (*id, k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pairs_are_distinct_and_consistent() {
        let a = KeyPair::generate(1).unwrap();
        let b = KeyPair::generate(1).unwrap();
        assert_ne!(a.public, b.public);
        assert_eq!(a.secret.public_key(), a.public);
        assert_eq!(format!("{:?}", a.secret), "SecretKey(..)", "no key material in Debug");
    }

    #[test]
    fn key_set_digest_is_canonical() {
        let k1 = PublicKey::from_bytes(&[1; 32]).unwrap();
        let k2 = PublicKey::from_bytes(&[2; 32]).unwrap();
        let d = key_set_sha256([(7, &k1), (3, &k2)]);
        assert_eq!(d, key_set_sha256([(3, &k2), (7, &k1)]), "order of listing does not matter");
        assert_ne!(d, key_set_sha256([(7, &k2), (3, &k1)]), "ids are bound to their keys");
        // The serialization spelled out: 03 0020 0001 0002 02*32 || 07 0020 0001 0002 01*32.
        let mut bytes = vec![3, 0x00, 0x20, 0x00, 0x01, 0x00, 0x02];
        bytes.extend_from_slice(&[2; 32]);
        bytes.extend_from_slice(&[7, 0x00, 0x20, 0x00, 0x01, 0x00, 0x02]);
        bytes.extend_from_slice(&[1; 32]);
        assert_eq!(d, <[u8; 32]>::from(Sha256::digest(&bytes)));
        let user_data = key_set_user_data(&d);
        assert_eq!(&user_data[..KEYSET_USER_DATA_PREFIX.len()], b"nitro-kv:keyset:v1:");
        assert_eq!(&user_data[KEYSET_USER_DATA_PREFIX.len()..], &d);
        assert!(!KEYSET_USER_DATA_PREFIX.starts_with(USER_DATA_PREFIX));
        assert!(!USER_DATA_PREFIX.starts_with(KEYSET_USER_DATA_PREFIX));
    }

    #[test]
    fn key_set_json_shape() {
        let pair = KeyPair::generate(0xa3).unwrap();
        let set = PublicKeySet {
            keys: vec![PublicKeyEntry::new(pair.id, &pair.public)],
            key_set_sha256: hex::encode(key_set_sha256([(pair.id, &pair.public)])),
            attestation_document: None,
            attestation_unavailable: Some("no NSM".into()),
        };
        let json: serde_json::Value = serde_json::to_value(&set).unwrap();
        assert_eq!(json["keys"][0]["id"], "a3");
        assert_eq!(json["keys"][0]["key"], pair.public.to_base64());
        assert!(json["attestationDocument"].is_null());
        assert_eq!(json["attestationUnavailable"], "no NSM");
        assert_eq!(set.parse_keys().unwrap(), vec![(0xa3, pair.public)]);
        assert_eq!(hex::encode(set.computed_sha256().unwrap()), set.key_set_sha256);
        assert_eq!(set.attestation_document_bytes().unwrap(), None);
        let with_document = PublicKeySet { attestation_document: Some("AAEC".into()), ..set.clone() };
        assert_eq!(with_document.attestation_document_bytes().unwrap(), Some(vec![0, 1, 2]));
        // A coordinator-style 16-digit id names the same key id.
        let long = PublicKeyEntry { id: "a300000000000000".into(), key: pair.public.to_base64() };
        assert_eq!(long.key_id().unwrap(), 0xa3);
        assert!(PublicKeyEntry { id: "z".into(), key: String::new() }.key_id().is_err());
        assert!(PublicKey::from_base64("AAAA").is_err());
    }
}
