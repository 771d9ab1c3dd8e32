//! The fleet key set: its keys, how it is sealed in the S3 object, and which keys are in force.
//!
//! **Object** (JSON, the only form the key set ever takes outside an enclave):
//!
//! ```json
//! {"format": "nitro-kv fleet key set v1", "kms_key_id": "arn:aws:kms:...",
//!  "data_key": "<base64 KMS CiphertextBlob>", "nonce": "<base64, 12 bytes>", "sealed": "<base64>"}
//! ```
//!
//! `data_key` is a 256-bit data key from KMS `GenerateDataKey` (encryption context
//! [`ENCRYPTION_CONTEXT`]), whose plaintext only an attested enclave ever receives (through its
//! `Recipient`). `sealed` is the key set under that data key with AES-256-GCM, the additional data
//! being the format string, a zero byte and the `data_key` blob, so a set cannot be moved under
//! another data key.
//!
//! **Plaintext** (inside the seal): `NKVKS1`, a count byte, then per key (oldest first) its id (1
//! byte), its creation time (8 bytes, big-endian Unix seconds) and its X25519 secret key (32).
//!
//! **In force** at time `now`: the newest key is current; an older key is accepted until its
//! successor's creation time plus the grace period. A key set whose newest key is older than the
//! rotation interval is due for rotation: the next key takes the next id.

use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use kv_protocol::keys::{KeyPair, SecretKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::KeyRing;

/// The `format` of the object.
pub const FORMAT: &str = "nitro-kv fleet key set v1";
/// The encryption context of every KMS call for the key set's data key (the key policy may
/// condition on it).
pub const ENCRYPTION_CONTEXT: (&str, &str) = ("purpose", "nitro-kv fleet key set v1");
const MAGIC: &[u8] = b"NKVKS1";
const KEY_RECORD: usize = 1 + 8 + 32;
/// Most keys one set holds (rotation prunes keys past their grace period long before).
pub const MAX_KEYS: usize = 16;
/// Largest object accepted (a full set is under 2 KiB).
pub const MAX_OBJECT_BYTES: usize = 64 * 1024;
const NONCE_LEN: usize = 12;

/// Why a key set object could not be read or written. Names the field; never prints a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("the key set object is {0} bytes; at most {MAX_OBJECT_BYTES} are accepted")]
    TooLarge(usize),
    #[error("the key set object is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("the key set object's format is not {FORMAT:?}")]
    Format,
    #[error("the key set object's field `{0}` is not valid base64")]
    Base64(&'static str),
    #[error("the key set object's `nonce` is {0} bytes, not 12")]
    Nonce(usize),
    #[error(
        "the key set did not decrypt with its data key (tampered with, or sealed under another data key)"
    )]
    Seal,
    #[error("the decrypted key set is malformed: {0}")]
    Malformed(&'static str),
    #[error("the random number generator failed")]
    Random,
    #[error("the data key is {0} bytes, not 32")]
    DataKey(usize),
}

/// One key of the set.
#[derive(Clone, Debug)]
pub struct FleetKey {
    pub pair: KeyPair,
    /// Unix seconds.
    pub created: u64,
}

/// The keys of the fleet, oldest first. Never empty once made.
#[derive(Clone, Debug)]
pub struct KeySet {
    keys: Vec<FleetKey>,
}

impl KeySet {
    /// A new set with one fresh key under a random id.
    pub fn generate(now: u64) -> Result<KeySet, KeySetError> {
        let mut id = [0u8; 1];
        getrandom::fill(&mut id).map_err(|_| KeySetError::Random)?;
        let pair = KeyPair::generate(id[0]).map_err(|_| KeySetError::Random)?;
        Ok(KeySet { keys: vec![FleetKey { pair, created: now }] })
    }

    pub fn keys(&self) -> &[FleetKey] {
        &self.keys
    }

    pub fn newest(&self) -> &FleetKey {
        // Never empty: `generate` makes one key, `decode` refuses zero.
        &self.keys[self.keys.len() - 1]
    }

    /// Whether the newest key is `rotation` old at `now`.
    pub fn rotation_due(&self, now: u64, rotation: Duration) -> bool {
        now >= self.newest().created.saturating_add(rotation.as_secs())
    }

    /// The set after a rotation at `now`: a new key with the next id, and only the keys still
    /// accepted after it (each until its successor's creation plus `grace`).
    pub fn rotated(&self, now: u64, grace: Duration) -> Result<KeySet, KeySetError> {
        let next =
            KeyPair::generate(self.newest().pair.id.wrapping_add(1)).map_err(|_| KeySetError::Random)?;
        let mut keys = self.keys.clone();
        keys.push(FleetKey { pair: next, created: now.max(self.newest().created) });
        let mut kept: Vec<FleetKey> = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let accepted = match keys.get(i + 1) {
                Some(successor) => successor.created.saturating_add(grace.as_secs()) > now,
                None => true,
            };
            if accepted {
                kept.push(key.clone());
            }
        }
        let excess = kept.len().saturating_sub(MAX_KEYS);
        kept.drain(..excess);
        Ok(KeySet { keys: kept })
    }

    /// The ring in force at `now` (Unix seconds), with deadlines on the async clock.
    pub fn ring(&self, now: u64, grace: Duration) -> KeyRing {
        let instant = tokio::time::Instant::now();
        let current = self.newest().pair.clone();
        let previous = self
            .keys
            .windows(2)
            .filter_map(|pair| {
                let until = pair[1].created.saturating_add(grace.as_secs());
                (until > now).then(|| (pair[0].pair.clone(), instant + Duration::from_secs(until - now)))
            })
            .collect();
        KeyRing::new(current, previous)
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(MAGIC.len() + 1 + self.keys.len() * KEY_RECORD));
        out.extend_from_slice(MAGIC);
        out.push(self.keys.len() as u8);
        for key in &self.keys {
            out.push(key.pair.id);
            out.extend_from_slice(&key.created.to_be_bytes());
            out.extend_from_slice(key.pair.secret.to_bytes().as_ref());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<KeySet, KeySetError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(KeySetError::Malformed("no NKVKS1 header"))?;
        let (&count, records) = rest.split_first().ok_or(KeySetError::Malformed("no key count"))?;
        let count = usize::from(count);
        if count == 0 || count > MAX_KEYS {
            return Err(KeySetError::Malformed("the key count is outside 1..=16"));
        }
        if records.len() != count * KEY_RECORD {
            return Err(KeySetError::Malformed("the length does not match the key count"));
        }
        let mut keys = Vec::with_capacity(count);
        for record in records.chunks_exact(KEY_RECORD) {
            let id = record[0];
            let mut created = [0u8; 8];
            created.copy_from_slice(&record[1..9]);
            let secret =
                SecretKey::from_bytes(&record[9..]).map_err(|_| KeySetError::Malformed("a secret key"))?;
            let public = secret.public_key();
            keys.push(FleetKey {
                pair: KeyPair { id, secret, public },
                created: u64::from_be_bytes(created),
            });
        }
        if keys.windows(2).any(|w| w[0].created > w[1].created) {
            return Err(KeySetError::Malformed("the keys are not oldest first"));
        }
        Ok(KeySet { keys })
    }
}

/// The S3 object's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedObject {
    pub format: String,
    pub kms_key_id: String,
    /// Base64 of KMS's `CiphertextBlob` of the data key.
    pub data_key: String,
    pub nonce: String,
    pub sealed: String,
}

/// The parsed object, blobs decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub kms_key_id: String,
    pub data_key_blob: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

fn aad(data_key_blob: &[u8]) -> Vec<u8> {
    [FORMAT.as_bytes(), &[0], data_key_blob].concat()
}

fn cipher(data_key: &[u8]) -> Result<aes_gcm::Aes256Gcm, KeySetError> {
    aes_gcm::Aes256Gcm::new_from_slice(data_key).map_err(|_| KeySetError::DataKey(data_key.len()))
}

impl Sealed {
    /// Seals `set` under the data key (plaintext `data_key`, KMS blob `data_key_blob`).
    pub fn seal(
        set: &KeySet,
        kms_key_id: &str,
        data_key: &[u8],
        data_key_blob: &[u8],
    ) -> Result<Sealed, KeySetError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| KeySetError::Random)?;
        let plaintext = set.encode();
        let ciphertext = cipher(data_key)?
            .encrypt(&nonce.into(), Payload { msg: &plaintext, aad: &aad(data_key_blob) })
            .map_err(|_| KeySetError::Seal)?;
        Ok(Sealed {
            kms_key_id: kms_key_id.to_string(),
            data_key_blob: data_key_blob.to_vec(),
            nonce,
            ciphertext,
        })
    }

    /// Opens the set with the plaintext data key.
    pub fn open(&self, data_key: &[u8]) -> Result<KeySet, KeySetError> {
        let plaintext = Zeroizing::new(
            cipher(data_key)?
                .decrypt(
                    &self.nonce.into(),
                    Payload { msg: &self.ciphertext, aad: &aad(&self.data_key_blob) },
                )
                .map_err(|_| KeySetError::Seal)?,
        );
        KeySet::decode(&plaintext)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let object = SealedObject {
            format: FORMAT.to_string(),
            kms_key_id: self.kms_key_id.clone(),
            data_key: b64(&self.data_key_blob),
            nonce: b64(&self.nonce),
            sealed: b64(&self.ciphertext),
        };
        // A struct of strings always serializes.
        serde_json::to_vec_pretty(&object).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Sealed, KeySetError> {
        if bytes.len() > MAX_OBJECT_BYTES {
            return Err(KeySetError::TooLarge(bytes.len()));
        }
        let object: SealedObject =
            serde_json::from_slice(bytes).map_err(|e| KeySetError::Json(e.to_string()))?;
        if object.format != FORMAT {
            return Err(KeySetError::Format);
        }
        let b64 = |field: &'static str, text: &str| {
            base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| KeySetError::Base64(field))
        };
        let nonce = b64("nonce", &object.nonce)?;
        let nonce: [u8; NONCE_LEN] =
            nonce.as_slice().try_into().map_err(|_| KeySetError::Nonce(nonce.len()))?;
        Ok(Sealed {
            kms_key_id: object.kms_key_id,
            data_key_blob: b64("data_key", &object.data_key)?,
            nonce,
            ciphertext: b64("sealed", &object.sealed)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const HOUR: Duration = Duration::from_secs(3_600);

    #[test]
    fn a_sealed_set_opens_with_its_data_key_only() {
        let set = KeySet::generate(1_000).unwrap();
        let key = [7u8; 32];
        let sealed = Sealed::seal(&set, "arn:key", &key, b"blob").unwrap();
        let json = sealed.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        let secret =
            base64::engine::general_purpose::STANDARD.encode(set.keys()[0].pair.secret.to_bytes().as_ref());
        assert!(!text.contains(&secret), "the object never holds a secret key in the clear");
        let back = Sealed::from_json(&json).unwrap();
        let opened = back.open(&key).unwrap();
        assert_eq!(opened.keys()[0].pair.public, set.keys()[0].pair.public);
        assert_eq!(opened.keys()[0].created, 1_000);
        assert_eq!(back.open(&[8u8; 32]).unwrap_err(), KeySetError::Seal, "another data key");
        // The same sealed bytes claimed under another KMS blob do not open.
        let mut moved = back.clone();
        moved.data_key_blob = b"other blob".to_vec();
        assert_eq!(moved.open(&key).unwrap_err(), KeySetError::Seal);
    }

    #[test]
    fn malformed_objects_name_the_field() {
        let sealed = Sealed::seal(&KeySet::generate(1).unwrap(), "k", &[1; 32], b"b").unwrap();
        let mut object: serde_json::Value = serde_json::from_slice(&sealed.to_json()).unwrap();
        object["nonce"] = "%%%".into();
        let err = Sealed::from_json(object.to_string().as_bytes()).unwrap_err();
        assert_eq!(err, KeySetError::Base64("nonce"));
        object["nonce"] = "AAAA".into();
        assert_eq!(Sealed::from_json(object.to_string().as_bytes()).unwrap_err(), KeySetError::Nonce(3));
        object["format"] = "v0".into();
        assert_eq!(Sealed::from_json(object.to_string().as_bytes()).unwrap_err(), KeySetError::Format);
        let err = Sealed::from_json(b"{\"format\": 1}").unwrap_err();
        assert!(matches!(err, KeySetError::Json(_)), "{err}");
        assert!(matches!(
            Sealed::from_json(&vec![b' '; MAX_OBJECT_BYTES + 1]),
            Err(KeySetError::TooLarge(_))
        ));
        for bad in [&b"NKVKS1\x00"[..], b"NKVKS1\x01short", b"XXXXXX\x01"] {
            assert!(matches!(KeySet::decode(bad), Err(KeySetError::Malformed(_))));
        }
    }

    #[test]
    fn rotation_adds_the_next_id_and_prunes_keys_past_their_grace() {
        let t0 = 1_000_000;
        let set = KeySet::generate(t0).unwrap();
        let first = set.newest().pair.id;
        assert!(!set.rotation_due(t0 + DAY.as_secs() - 1, DAY));
        assert!(set.rotation_due(t0 + DAY.as_secs(), DAY));
        let t1 = t0 + DAY.as_secs();
        let two = set.rotated(t1, HOUR).unwrap();
        assert_eq!(two.keys().len(), 2);
        assert_eq!(two.newest().pair.id, first.wrapping_add(1));
        assert_eq!(two.keys()[0].pair.public, set.keys()[0].pair.public, "the old key is kept for its grace");
        // A day later the first key's grace (an hour after its successor) is long over.
        let three = two.rotated(t1 + DAY.as_secs(), HOUR).unwrap();
        assert_eq!(three.keys().len(), 2);
        assert_eq!(three.keys()[0].pair.id, first.wrapping_add(1));
        let encoded = KeySet::decode(&three.encode()).unwrap();
        assert_eq!(encoded.keys().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ring_accepts_older_keys_until_their_successor_plus_grace() {
        let t0 = 5_000;
        let set = KeySet::generate(t0).unwrap().rotated(t0 + 100, Duration::from_secs(50)).unwrap();
        let (old, new) = (set.keys()[0].pair.id, set.keys()[1].pair.id);
        let ring = set.ring(t0 + 120, Duration::from_secs(50));
        assert_eq!(ring.current_id(), Some(new));
        assert!(ring.secret(old).is_some(), "30 s of grace left");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(ring.secret(old).is_none(), "the grace period is over");
        assert_eq!(ring.public_keys().len(), 1);
        let later = set.ring(t0 + 151, Duration::from_secs(50));
        assert_eq!(later.public_keys().len(), 1, "built after the grace: only the current key");
    }
}
