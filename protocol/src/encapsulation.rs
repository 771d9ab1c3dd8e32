//! Request and response encapsulation, generic over the AEAD and the two labels so that the same
//! code is checked against RFC 9458's worked example (AES-128-GCM, `message/bhttp request`) in
//! the tests, and used with the draft's suite (AES-256-GCM, `message/ad-auction-trusted-signals-*`)
//! everywhere else.
//!
//! Request (the draft's §2.2.1, like OHTTP §4.3):
//! `hdr = key_id || kem_id || kdf_id || aead_id`, `info = request_label || 0x00 || hdr`,
//! `enc, ctx = SetupBaseS(pkR, info)`, `ct = ctx.Seal("", request)`, message `hdr || enc || ct`.
//!
//! Response (the draft's §2.3.1, like OHTTP §4.4):
//! `secret = ctx.Export(response_label, max(Nn, Nk))`, `nonce = random(max(Nn, Nk))`,
//! `prk = Extract(enc || nonce, secret)`, `key = Expand(prk, "key", Nk)`,
//! `iv = Expand(prk, "nonce", Nn)`, message `nonce || Seal(key, iv, "", response)`.

use aes_gcm::aead::{Aead as _, KeyInit};
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::ProtocolError;
use crate::keys::{Kem, PublicKey, SecretKey};
use crate::suite::{ENC_LEN, HEADER_LEN, KDF_ID, KEM_ID, TAG_LEN};

type Kdf = hpke::kdf::HkdfSha256;
type Hkdf = hkdf::Hkdf<sha2::Sha256>;

/// An AEAD and the labels of one use of the encapsulation.
pub(crate) trait Suite {
    type HpkeAead: hpke::aead::Aead;
    type ResponseAead: KeyInit + aes_gcm::aead::Aead;
    /// Nk
    const KEY_LEN: usize;
    /// Nn
    const NONCE_LEN: usize = 12;
    const REQUEST_LABEL: &'static [u8];
    const RESPONSE_LABEL: &'static [u8];

    /// max(Nn, Nk)
    fn response_nonce_len() -> usize {
        Self::KEY_LEN.max(Self::NONCE_LEN)
    }
}

/// The draft's suite.
pub(crate) struct Draft;

impl Suite for Draft {
    type HpkeAead = hpke::aead::AesGcm256;
    type ResponseAead = aes_gcm::Aes256Gcm;
    const KEY_LEN: usize = 32;
    const REQUEST_LABEL: &'static [u8] = crate::suite::REQUEST_LABEL.as_bytes();
    const RESPONSE_LABEL: &'static [u8] = crate::suite::RESPONSE_LABEL.as_bytes();
}

fn header<S: Suite>(key_id: u8) -> [u8; HEADER_LEN] {
    let aead_id = <S::HpkeAead as hpke::aead::Aead>::AEAD_ID;
    let [k0, k1] = KEM_ID.to_be_bytes();
    let [d0, d1] = KDF_ID.to_be_bytes();
    let [a0, a1] = aead_id.to_be_bytes();
    [key_id, k0, k1, d0, d1, a0, a1]
}

fn info<S: Suite>(hdr: &[u8; HEADER_LEN]) -> Vec<u8> {
    [S::REQUEST_LABEL, &[0u8][..], hdr.as_slice()].concat()
}

/// The sender's state for decrypting the response.
pub(crate) struct Sender<S: Suite> {
    ctx: hpke::aead::AeadCtxS<S::HpkeAead, Kdf, Kem>,
    enc: [u8; ENC_LEN],
}

/// The receiver's state for encrypting the response.
pub(crate) struct Receiver<S: Suite> {
    ctx: hpke::aead::AeadCtxR<S::HpkeAead, Kdf, Kem>,
    enc: [u8; ENC_LEN],
}

pub(crate) fn seal_request<S: Suite>(
    key_id: u8,
    public_key: &PublicKey,
    request: &[u8],
) -> Result<(Vec<u8>, Sender<S>), ProtocolError> {
    let pk = public_key.to_hpke()?;
    let hdr = header::<S>(key_id);
    let (encapped, mut ctx) =
        hpke::setup_sender::<S::HpkeAead, Kdf, Kem>(&OpModeS::Base, &pk, &info::<S>(&hdr))
            .map_err(|_| ProtocolError::EncryptionFailed)?;
    let ct = ctx.seal(request, b"").map_err(|_| ProtocolError::EncryptionFailed)?;
    let mut enc = [0u8; ENC_LEN];
    enc.copy_from_slice(&encapped.to_bytes());
    let message = [hdr.as_slice(), enc.as_slice(), ct.as_slice()].concat();
    Ok((message, Sender { ctx, enc }))
}

/// The ids of a request's header, checked against the suite in the order the draft parses them.
pub(crate) fn parse_header<S: Suite>(message: &[u8]) -> Result<u8, ProtocolError> {
    let min = HEADER_LEN + ENC_LEN + TAG_LEN;
    if message.len() < min {
        return Err(ProtocolError::Truncated { what: "encapsulated request", len: message.len(), min });
    }
    let id = |at: usize| u16::from_be_bytes([message[at], message[at + 1]]);
    let (kem, kdf, aead) = (id(1), id(3), id(5));
    if kem != KEM_ID {
        return Err(ProtocolError::UnsupportedKem(kem));
    }
    if kdf != KDF_ID {
        return Err(ProtocolError::UnsupportedKdf(kdf));
    }
    if aead != <S::HpkeAead as hpke::aead::Aead>::AEAD_ID {
        return Err(ProtocolError::UnsupportedAead(aead));
    }
    Ok(message[0])
}

pub(crate) fn open_request<'k, S: Suite>(
    lookup_secret: impl FnOnce(u8) -> Option<&'k SecretKey>,
    message: &[u8],
) -> Result<(Vec<u8>, Receiver<S>), ProtocolError> {
    let key_id = parse_header::<S>(message)?;
    let secret = lookup_secret(key_id).ok_or(ProtocolError::UnknownKeyId(key_id))?;
    let hdr = header::<S>(key_id);
    let mut enc = [0u8; ENC_LEN];
    enc.copy_from_slice(&message[HEADER_LEN..HEADER_LEN + ENC_LEN]);
    let encapped =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc).map_err(|_| ProtocolError::DecryptionFailed)?;
    let mut ctx =
        hpke::setup_receiver::<S::HpkeAead, Kdf, Kem>(&OpModeR::Base, &secret.0, &encapped, &info::<S>(&hdr))
            .map_err(|_| ProtocolError::DecryptionFailed)?;
    let plaintext =
        ctx.open(&message[HEADER_LEN + ENC_LEN..], b"").map_err(|_| ProtocolError::DecryptionFailed)?;
    Ok((plaintext, Receiver { ctx, enc }))
}

/// The response AEAD's key and nonce from the exported secret, `enc` and the response nonce.
fn response_cipher<S: Suite>(
    export: impl FnOnce(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    enc: &[u8; ENC_LEN],
    response_nonce: &[u8],
) -> Result<(S::ResponseAead, Zeroizing<Vec<u8>>), ProtocolError> {
    let mut secret = Zeroizing::new(vec![0u8; S::response_nonce_len()]);
    export(S::RESPONSE_LABEL, &mut secret).map_err(|_| ProtocolError::EncryptionFailed)?;
    let salt = [enc.as_slice(), response_nonce].concat();
    let prk = Hkdf::new(Some(&salt), &secret);
    let mut key = Zeroizing::new(vec![0u8; S::KEY_LEN]);
    let mut nonce = Zeroizing::new(vec![0u8; S::NONCE_LEN]);
    prk.expand(b"key", &mut key).map_err(|_| ProtocolError::EncryptionFailed)?;
    prk.expand(b"nonce", &mut nonce).map_err(|_| ProtocolError::EncryptionFailed)?;
    let cipher = S::ResponseAead::new_from_slice(&key).map_err(|_| ProtocolError::EncryptionFailed)?;
    Ok((cipher, nonce))
}

impl<S: Suite> Receiver<S> {
    /// Seals a response with this response nonce (random in production: [`Receiver::seal`]).
    pub(crate) fn seal_with_nonce(
        &self,
        response_nonce: &[u8],
        response: &[u8],
    ) -> Result<Vec<u8>, ProtocolError> {
        let (cipher, nonce) = response_cipher::<S>(|l, o| self.ctx.export(l, o), &self.enc, response_nonce)?;
        let nonce = aes_gcm::aead::Nonce::<S::ResponseAead>::try_from(nonce.as_slice())
            .map_err(|_| ProtocolError::EncryptionFailed)?;
        let ct = cipher.encrypt(&nonce, response).map_err(|_| ProtocolError::EncryptionFailed)?;
        Ok([response_nonce, ct.as_slice()].concat())
    }

    pub(crate) fn seal(&self, response: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let mut response_nonce = vec![0u8; S::response_nonce_len()];
        getrandom::fill(&mut response_nonce).map_err(|_| ProtocolError::Random)?;
        self.seal_with_nonce(&response_nonce, response)
    }
}

impl<S: Suite> Sender<S> {
    pub(crate) fn open_response(&self, message: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let nonce_len = S::response_nonce_len();
        let min = nonce_len + TAG_LEN;
        if message.len() < min {
            return Err(ProtocolError::Truncated { what: "encapsulated response", len: message.len(), min });
        }
        let (response_nonce, ct) = message.split_at(nonce_len);
        let (cipher, nonce) = response_cipher::<S>(|l, o| self.ctx.export(l, o), &self.enc, response_nonce)?;
        let nonce = aes_gcm::aead::Nonce::<S::ResponseAead>::try_from(nonce.as_slice())
            .map_err(|_| ProtocolError::DecryptionFailed)?;
        cipher.decrypt(&nonce, ct).map_err(|_| ProtocolError::DecryptionFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9458 (Oblivious HTTP) Appendix A: the same construction with AES-128-GCM and the
    /// `message/bhttp` labels. The draft publishes no test vectors of its own.
    struct Rfc9458;

    impl Suite for Rfc9458 {
        type HpkeAead = hpke::aead::AesGcm128;
        type ResponseAead = aes_gcm::Aes128Gcm;
        const KEY_LEN: usize = 16;
        const REQUEST_LABEL: &'static [u8] = b"message/bhttp request";
        const RESPONSE_LABEL: &'static [u8] = b"message/bhttp response";
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    const SECRET: &str = "3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a";
    const PUBLIC: &str = "31e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e798155";
    const REQUEST: &str = "00034745540568747470730b6578616d706c652e636f6d012f";
    const ENCAPSULATED_REQUEST: &str = "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e7965e7d86b83dd440b2c0185204b4d63525";
    const RESPONSE: &str = "0140c8";
    const RESPONSE_NONCE: &str = "c789e7151fcba46158ca84b04464910d";
    const ENCAPSULATED_RESPONSE: &str =
        "c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd";

    #[test]
    fn rfc_9458_appendix_a_known_answers() {
        let secret = SecretKey::from_bytes(&unhex(SECRET)).unwrap();
        assert_eq!(secret.public_key().as_bytes().as_slice(), unhex(PUBLIC));
        let (request, receiver) =
            open_request::<Rfc9458>(|id| (id == 1).then_some(&secret), &unhex(ENCAPSULATED_REQUEST)).unwrap();
        assert_eq!(request, unhex(REQUEST));
        let response = receiver.seal_with_nonce(&unhex(RESPONSE_NONCE), &unhex(RESPONSE)).unwrap();
        assert_eq!(hex::encode(response), ENCAPSULATED_RESPONSE);
    }

    #[test]
    fn round_trip_in_both_suites() {
        fn round_trip<S: Suite>() {
            let pair = crate::keys::KeyPair::generate(9).unwrap();
            let (message, sender) = seal_request::<S>(9, &pair.public, b"question").unwrap();
            assert_eq!(&message[..HEADER_LEN], &header::<S>(9));
            let (request, receiver) = open_request::<S>(|_| Some(&pair.secret), &message).unwrap();
            assert_eq!(request, b"question");
            let response = receiver.seal(b"answer").unwrap();
            assert_eq!(response.len(), S::response_nonce_len() + 6 + TAG_LEN);
            assert_eq!(sender.open_response(&response).unwrap(), b"answer");
        }
        round_trip::<Draft>();
        round_trip::<Rfc9458>();
    }
}
