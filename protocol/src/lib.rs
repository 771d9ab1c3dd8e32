//! kv-protocol: the wire format of the Protected Audience Key Value Services protocol
//! (draft-ietf-protected-audience-key-value-services), both sides, for kv-server and kv-client.
//!
//! A request goes: [`cbor::Request`] → [`cbor::encode_request`] → [`framing::frame_request`] →
//! [`client::encrypt_request`] → (network) → [`server::decrypt_request`] →
//! [`framing::unframe_request`] → [`cbor::decode_request`]. The response comes back the same way
//! with [`cbor::CompressionGroup::new`], [`cbor::encode_response`], [`framing::frame_response`],
//! [`server::ServerContext::encrypt_response`] and [`client::ClientContext::decrypt_response`].
//!
//! | module | owns |
//! |---|---|
//! | [`suite`] | HPKE ids, media-type labels, sizes |
//! | [`client`], [`server`] | HPKE encapsulation of requests and responses (OHTTP-style) |
//! | [`keys`] | X25519 key pairs, the key set digest, the attestation `user_data` binding, the key endpoint's JSON |
//! | [`framing`] | the 5-byte header (compression, length) and padding |
//! | [`compression`] | none / gzip, per compression group, with an output limit |
//! | [`cbor`] | the request and response schema as typed structs |
//!
//! Errors are one enum, [`ProtocolError`], whose messages never contain decrypted data.
#![forbid(unsafe_code)]

pub mod cbor;
pub mod client;
pub mod compression;
mod encapsulation;
mod error;
pub mod framing;
pub mod keys;
pub mod server;
pub mod suite;

pub use error::ProtocolError;
