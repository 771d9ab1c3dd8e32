//! kv-client: the client side of nitro-kv's confidential queries, for operators and tests.
//!
//! - [`verify`]: checks an enclave's NSM attestation document: the COSE_Sign1 ES384 signature,
//!   the certificate chain to the pinned AWS Nitro Enclaves root, the PCRs of the enclave image
//!   (a bundle's `manifest.json`), the nonce this client sent and the expected `user_data`;
//! - [`v2`]: the v2 API over HTTP: the key set (fetched and checked) and encrypted lookups,
//!   with kv-protocol's wire format;
//! - [`cli`]: the `kv-client` command, one module per verb.

#![forbid(unsafe_code)]

pub mod cli;
pub mod v2;
pub mod verify;
