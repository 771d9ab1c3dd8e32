//! TEST DOUBLE of AWS KMS's attestation-aware API, for the end-to-end tests of issue 17 (fleet
//! keys through KMS attestation). It is a real process (`kms-double`) that the tests start on
//! loopback; no shipped binary contains it.
//!
//! It speaks KMS's AWS JSON 1.1 protocol as `aws-sdk-kms` sends it, for one symmetric key:
//! `GenerateDataKey`, `Decrypt`, `Encrypt` and `DescribeKey`, with `Recipient` (an NSM
//! attestation document over an RSA key) answered by a CMS `CiphertextForRecipient` in the BER
//! form real KMS returns. Requests are authorized by a real key policy document, evaluated with
//! IAM's rules and the `kms:RecipientAttestation:*` condition keys.
//!
//! What it does not do, unlike KMS:
//! - SigV4 signatures are not checked; every request comes from the principal given with
//!   `--caller-arn`.
//! - The attestation document's COSE signature and certificate chain are not verified (real KMS
//!   verifies them up to the AWS Nitro Enclaves root); see [`attestation`].
//! - An account-root principal matches every caller of the account; real KMS would then also
//!   consult the caller's IAM policies. Grants, key rotation and other keys do not exist.
//! - Its `CiphertextBlob` is its own format, valid only for the life of the process.
//!
//! Modules: [`policy`] (loading and evaluating the key policy), [`attestation`] (checking a
//! `Recipient`), [`cms`] (the enveloped data key), [`blob`] (the `CiphertextBlob`), [`wire`]
//! (the JSON protocol and error shapes), [`service`] (the operations), [`server`] (HTTP,
//! `run(listener, shutdown)`), [`test_nsm`] (a test NSM that makes attestation documents for
//! host-side tests).

#![forbid(unsafe_code)]

pub mod attestation;
pub mod blob;
pub mod cms;
pub mod policy;
pub mod server;
pub mod service;
pub mod test_nsm;
pub mod wire;
