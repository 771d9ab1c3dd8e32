//! The one error type of the crate. Each variant says what was wrong with a message (which part,
//! which limit, which id); none carries a byte of a decrypted message, a key or a value, so an
//! error can be logged, counted or returned without leaking what was protected.

use crate::framing::Compression;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A message shorter than its fixed-size parts.
    #[error("{what} is truncated: {len} bytes, at least {min} are needed")]
    Truncated { what: &'static str, len: usize, min: usize },
    /// A message or a part of one over a limit.
    #[error("{what} is {len} bytes; at most {max} are allowed")]
    Oversize { what: &'static str, len: usize, max: usize },
    /// The request names a key the server does not hold (never had it, or rotated it out).
    #[error("unknown key id {0:#04x}: fetch the server's current keys and encrypt again")]
    UnknownKeyId(u8),
    #[error("unsupported HPKE KEM id {0:#06x}; the protocol uses 0x0020, DHKEM(X25519, HKDF-SHA256)")]
    UnsupportedKem(u16),
    #[error("unsupported HPKE KDF id {0:#06x}; the protocol uses 0x0001, HKDF-SHA256")]
    UnsupportedKdf(u16),
    #[error("unsupported HPKE AEAD id {0:#06x}; the protocol uses 0x0002, AES-256-GCM")]
    UnsupportedAead(u16),
    /// Authentication failed: another key was used, or the message was altered.
    #[error("decryption failed: the message was not encrypted to this key or was altered")]
    DecryptionFailed,
    /// The AEAD refused to seal (a message over the AES-GCM size limit).
    #[error("encryption failed")]
    EncryptionFailed,
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// The framing header's 2-bit compression field holds the reserved value 3.
    #[error("framing: reserved compression value {0}")]
    ReservedCompression(u8),
    /// A request's framing must say "uncompressed".
    #[error("framing: a request must be uncompressed, this one says {0}")]
    CompressedRequest(Compression),
    /// A compression the receiver does not support (brotli).
    #[error("{0} compression is not supported")]
    UnsupportedCompression(Compression),
    /// The framing header declares more payload than the message holds.
    #[error("framing: the header declares {declared} bytes of payload, the message holds {available}")]
    FramingLength { declared: usize, available: usize },
    /// CBOR that does not decode, or does not match the schema. `path` names the place
    /// (`partitions[2].compressionGroupId`), `problem` what kind of mismatch; neither quotes data.
    #[error("CBOR: {problem} at {path}")]
    BadCbor { path: String, problem: String },
    /// Compressed content that does not inflate.
    #[error("decompression failed: {0}")]
    Decompression(String),
}

impl ProtocolError {
    /// A short stable label (metrics attribute values, log fields).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::Truncated { .. } => "truncated",
            ProtocolError::Oversize { .. } => "oversize",
            ProtocolError::UnknownKeyId(_) => "unknown_key_id",
            ProtocolError::UnsupportedKem(_) => "unsupported_kem",
            ProtocolError::UnsupportedKdf(_) => "unsupported_kdf",
            ProtocolError::UnsupportedAead(_) => "unsupported_aead",
            ProtocolError::DecryptionFailed => "decryption_failed",
            ProtocolError::EncryptionFailed => "encryption_failed",
            ProtocolError::Random => "random",
            ProtocolError::InvalidKey(_) => "invalid_key",
            ProtocolError::ReservedCompression(_)
            | ProtocolError::CompressedRequest(_)
            | ProtocolError::FramingLength { .. } => "bad_framing",
            ProtocolError::UnsupportedCompression(_) => "unsupported_compression",
            ProtocolError::BadCbor { .. } => "bad_cbor",
            ProtocolError::Decompression(_) => "decompression",
        }
    }
}
