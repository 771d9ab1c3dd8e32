//! packaging: the enclave image (EIF), its PCRs and the AMI bundle.
//!
//! - [`eif`]: the EIF v4 format, a streaming writer and reader, PCR0/1/2/8;
//! - [`cpio`]: a deterministic newc archive writer (the ramdisks);
//! - [`build`]: `eif build`, the native (docker-free) path and the nitro-cli path;
//! - [`manifest`]: the bundle manifest (one definition: types, reading, checking a listed file);
//! - [`bundle`]: the `dist/aws` layout, writing its manifest, and `verify`;
//! - [`key_policy`]: `key-policy lint`, no key material outside an attested enclave.

#![forbid(unsafe_code)]

pub mod build;
pub mod bundle;
pub mod cpio;
pub mod eif;
pub mod key_policy;
pub mod manifest;
pub mod progress;
