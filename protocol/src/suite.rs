//! The protocol's constants, from draft-ietf-protected-audience-key-value-services ("Protected
//! Audience Key Value Services"), §2.1.1 (HPKE configuration) and §2.2.1 / §2.3.1 (media types).

/// HPKE KEM: DHKEM(X25519, HKDF-SHA256) (RFC 9180 §7.1).
pub const KEM_ID: u16 = 0x0020;
/// HPKE KDF: HKDF-SHA256 (RFC 9180 §7.2).
pub const KDF_ID: u16 = 0x0001;
/// HPKE AEAD: AES-256-GCM (RFC 9180 §7.3).
pub const AEAD_ID: u16 = 0x0002;

/// The media type of an encapsulated request; also the HPKE `info` prefix (followed by a zero
/// byte and the request header).
pub const REQUEST_LABEL: &str = "message/ad-auction-trusted-signals-request";
/// The media type of an encapsulated response; also the HPKE exporter context from which the
/// response key is derived.
pub const RESPONSE_LABEL: &str = "message/ad-auction-trusted-signals-response";

/// Key id (1 byte), KEM, KDF and AEAD ids (2 bytes each, big-endian).
pub const HEADER_LEN: usize = 7;
/// Nenc of DHKEM(X25519, HKDF-SHA256): the encapsulated key.
pub const ENC_LEN: usize = 32;
/// Npk of DHKEM(X25519, HKDF-SHA256).
pub const PUBLIC_KEY_LEN: usize = 32;
/// The AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// Nk of AES-256-GCM.
pub const AEAD_KEY_LEN: usize = 32;
/// Nn of AES-256-GCM.
pub const AEAD_NONCE_LEN: usize = 12;
/// max(Nn, Nk): the random nonce that starts an encapsulated response.
pub const RESPONSE_NONCE_LEN: usize = 32;

/// The smallest encapsulated request: header, encapsulated key and an AEAD tag.
pub const MIN_REQUEST_LEN: usize = HEADER_LEN + ENC_LEN + TAG_LEN;
/// The smallest encapsulated response: response nonce and an AEAD tag.
pub const MIN_RESPONSE_LEN: usize = RESPONSE_NONCE_LEN + TAG_LEN;
