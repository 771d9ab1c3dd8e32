//! The server's side: decrypt a request with one of its secret keys, encrypt the response.

use crate::ProtocolError;
use crate::encapsulation::{self, Draft, Receiver};
use crate::keys::SecretKey;

/// What the server keeps to encrypt the response to one request (the HPKE receiving context).
pub struct ServerContext(Receiver<Draft>);

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerContext(..)")
    }
}

/// Checks the header of an encapsulated request (length, KEM, KDF and AEAD ids) and returns its
/// key id, without decrypting.
pub fn request_key_id(request: &[u8]) -> Result<u8, ProtocolError> {
    encapsulation::parse_header::<Draft>(request)
}

/// Decrypts an encapsulated request with the secret key `lookup_secret` returns for its key id
/// (`None`: [`ProtocolError::UnknownKeyId`]). Returns the framed request and the context for the
/// response.
pub fn decrypt_request<'k>(
    lookup_secret: impl FnOnce(u8) -> Option<&'k SecretKey>,
    request: &[u8],
) -> Result<(Vec<u8>, ServerContext), ProtocolError> {
    let (plaintext, receiver) = encapsulation::open_request::<Draft>(lookup_secret, request)?;
    Ok((plaintext, ServerContext(receiver)))
}

impl ServerContext {
    /// Encapsulates a framed response ([`crate::framing::frame_response`]) with a fresh random
    /// response nonce: `response nonce (32 bytes) || ciphertext`.
    pub fn encrypt_response(&self, plaintext: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        self.0.seal(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;
    use crate::keys::KeyPair;
    use crate::suite::{HEADER_LEN, MIN_REQUEST_LEN};

    fn keys() -> (KeyPair, KeyPair) {
        (KeyPair::generate(1).unwrap(), KeyPair::generate(2).unwrap())
    }

    #[test]
    fn bad_requests_are_named_and_never_decrypted() {
        let (k1, k2) = keys();
        let lookup = |id: u8| match id {
            1 => Some(&k1.secret),
            2 => Some(&k2.secret),
            _ => None,
        };
        let (good, _) = client::encrypt_request(1, &k1.public, b"secret request").unwrap();
        assert_eq!(decrypt_request(lookup, &good).unwrap().0, b"secret request");
        assert_eq!(request_key_id(&good), Ok(1));

        let (unknown, _) = client::encrypt_request(9, &k1.public, b"x").unwrap();
        assert_eq!(decrypt_request(lookup, &unknown).unwrap_err(), ProtocolError::UnknownKeyId(9));

        // Encrypted to key 1 but labelled key 2: the info differs and the key is wrong.
        let mut relabelled = good.clone();
        relabelled[0] = 2;
        assert_eq!(decrypt_request(lookup, &relabelled).unwrap_err(), ProtocolError::DecryptionFailed);

        for (at, value, expected) in [
            (1, 0x00, ProtocolError::UnsupportedKem(0x0000)),
            (4, 0x03, ProtocolError::UnsupportedKdf(0x0003)),
            (6, 0x01, ProtocolError::UnsupportedAead(0x0001)),
        ] {
            let mut wrong = good.clone();
            wrong[at] = value;
            wrong[2] = if at == 1 { 0x00 } else { wrong[2] };
            assert_eq!(decrypt_request(lookup, &wrong).unwrap_err(), expected);
        }

        for at in [HEADER_LEN, HEADER_LEN + 40, good.len() - 1] {
            let mut tampered = good.clone();
            tampered[at] ^= 0x01;
            assert_eq!(
                decrypt_request(lookup, &tampered).unwrap_err(),
                ProtocolError::DecryptionFailed,
                "{at}"
            );
        }

        let short = &good[..MIN_REQUEST_LEN - 1];
        assert!(matches!(decrypt_request(lookup, short), Err(ProtocolError::Truncated { .. })));
        assert!(matches!(decrypt_request(lookup, &[]), Err(ProtocolError::Truncated { .. })));
    }

    #[test]
    fn responses_are_bound_to_their_request() {
        let (k1, _) = keys();
        let (m1, c1) = client::encrypt_request(1, &k1.public, b"one").unwrap();
        let (m2, c2) = client::encrypt_request(1, &k1.public, b"two").unwrap();
        let (_, s1) = decrypt_request(|_| Some(&k1.secret), &m1).unwrap();
        let (_, s2) = decrypt_request(|_| Some(&k1.secret), &m2).unwrap();
        let r1 = s1.encrypt_response(b"answer one").unwrap();
        let r2 = s2.encrypt_response(b"answer two").unwrap();
        assert_eq!(c1.decrypt_response(&r1).unwrap(), b"answer one");
        assert_eq!(c1.decrypt_response(&r2).unwrap_err(), ProtocolError::DecryptionFailed);
        assert_eq!(c2.decrypt_response(&r2).unwrap(), b"answer two");
        let mut tampered = r1.clone();
        tampered[0] ^= 1; // the response nonce feeds the key schedule
        assert_eq!(c1.decrypt_response(&tampered).unwrap_err(), ProtocolError::DecryptionFailed);
        assert!(matches!(c1.decrypt_response(&r1[..40]), Err(ProtocolError::Truncated { .. })));
        // Two responses to the same request differ (fresh nonce).
        assert_ne!(s1.encrypt_response(b"same").unwrap(), s1.encrypt_response(b"same").unwrap());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            static KEY: std::sync::OnceLock<KeyPair> = std::sync::OnceLock::new();
            let key = KEY.get_or_init(|| KeyPair::generate(1).unwrap());
            let _ = decrypt_request(|_| Some(&key.secret), &bytes);
            // Past the header checks too: a valid header in front of random bytes.
            let mut framed = vec![1, 0x00, 0x20, 0x00, 0x01, 0x00, 0x02];
            framed.extend_from_slice(&bytes);
            let _ = decrypt_request(|_| Some(&key.secret), &framed);
        }
    }
}
