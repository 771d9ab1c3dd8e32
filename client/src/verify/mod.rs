//! Verification of an NSM attestation document, in this order:
//!
//! 1. the COSE_Sign1 envelope (tagged or untagged) and its payload parse, field by field;
//! 2. the envelope's ES384 signature verifies with the P-384 key of the document's own leaf
//!    certificate;
//! 3. the leaf chains through the document's `cabundle` to the pinned root (by default AWS
//!    Nitro Enclaves Root-G1, [`root`]), every certificate valid at the chosen time;
//! 4. PCR0/1/2 (and PCR8 when expected) equal the enclave image's;
//! 5. the nonce is the one this client sent (the document was made for this request);
//! 6. `user_data`, when expected, is exactly the expected bytes.
//!
//! Step 3 is skipped only with `VerifyOptions::insecure_skip_chain`: then anyone who can make
//! a P-384 key can make a document that passes, so it is for the emulated NSM under QEMU and for
//! test signers, never for a real deployment. Steps 2, 4, 5 and 6 still run. The emulated NSM
//! signs nothing (its certificate and signature are zero bytes): that exact shape is accepted
//! under the same option, with step 2 reported as absent, and refused without it.

mod chain;
mod document;
pub mod expect;
pub mod root;

use aws_nitro_enclaves_nsm_api::api::AttestationDoc;
use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};
use p384::pkcs8::DecodePublicKey;
use serde_bytes::ByteBuf;
use std::time::{SystemTime, UNIX_EPOCH};
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};

pub use expect::{Expectations, ExpectedPcrs, ManifestError, fresh_nonce};
pub use root::{PinnedRoot, PinnedRootError};

/// Larger than any NSM document (they are about 4.5 KiB); bounds what is parsed.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// When the certificates must be valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertificateTime {
    /// This machine's clock: a document is accepted only while its leaf (valid for about three
    /// hours) is. The default.
    #[default]
    Now,
    /// The document's own `timestamp`: for re-checking a saved document later.
    DocumentTimestamp,
    /// A given time, seconds since the Unix epoch.
    At(u64),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// INSECURE: do not check that the certificate chain ends in the pinned root. Only for the
    /// emulated NSM's documents (a dummy chain) and test signers.
    pub insecure_skip_chain: bool,
    pub certificate_time: CertificateTime,
}

impl VerifyOptions {
    /// The chain is not checked: see the field `insecure_skip_chain`.
    pub fn insecure_skip_chain() -> Self {
        Self { insecure_skip_chain: true, ..Self::default() }
    }
}

/// How the document's signature was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// ES384 over the COSE_Sign1 structure, with the leaf certificate's key.
    Es384 { leaf_subject: String },
    /// None: the emulated NSM's unsigned placeholder (accepted only with the insecure option).
    AbsentEmulatedNsm,
}

/// How the certificate chain was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainCheck {
    /// The leaf chains to this root, all certificates valid at `at` (seconds since the epoch).
    Verified { root_name: String, root_sha256: String, at: u64 },
    /// Not checked: `VerifyOptions::insecure_skip_chain`.
    SkippedInsecure,
}

/// A document that passed every check, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedDocument {
    pub document: AttestationDoc,
    pub signature: SignatureCheck,
    pub chain: ChainCheck,
    /// The PCR indices compared with the expected values.
    pub pcrs_checked: Vec<usize>,
    pub user_data_checked: bool,
}

/// Why a document was refused. Each variant says what differed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the document is {len} bytes, more than the {MAX_DOCUMENT_BYTES} an attestation document can be")]
    TooLarge { len: usize },
    #[error("not a COSE_Sign1 structure: {reason}")]
    NotCoseSign1 { reason: String },
    #[error("the COSE_Sign1 algorithm is {got}, not ES384")]
    Algorithm { got: String },
    #[error("the COSE_Sign1 has no payload")]
    NoPayload,
    /// A field of the attestation document (the COSE payload) is missing, of the wrong CBOR type
    /// or size.
    #[error("malformed attestation document: {field}: {reason}")]
    Malformed { field: String, reason: String },
    #[error(
        "bad signature: the ES384 signature does not verify with the key of the certificate {subject}: {reason}"
    )]
    BadSignature { subject: String, reason: String },
    #[error(
        "the document is unsigned (the emulated NSM's placeholder: algorithm -1, zero certificate and \
         signature); only the insecure skip-certificate-chain option accepts it"
    )]
    Unsigned,
    #[error("certificate chain: {subject}: {reason}")]
    Chain { subject: String, reason: String },
    #[error(transparent)]
    PinnedRoot(#[from] PinnedRootError),
    #[error("PCR{index} mismatch: expected {expected}, the document has {got}")]
    PcrMismatch { index: usize, expected: String, got: String },
    #[error("PCR{index} is not in the document (expected {expected})")]
    PcrMissing { index: usize, expected: String },
    #[error("no expected nonce: freshness needs the nonce this client sent")]
    NoExpectedNonce,
    #[error("nonce mismatch: sent {expected}, the document has {got}: not an answer to this request")]
    NonceMismatch { expected: String, got: String },
    #[error("user_data mismatch: expected {expected}, the document has {got}")]
    UserDataMismatch { expected: String, got: String },
}

/// Verifies `document` (COSE_Sign1 bytes) against AWS Nitro Enclaves Root-G1 and `expect`.
pub fn verify_attestation(
    document: &[u8],
    expect: &Expectations,
    opts: &VerifyOptions,
) -> Result<VerifiedDocument, VerifyError> {
    verify_attestation_with_root(document, expect, opts, &PinnedRoot::aws_nitro_enclaves_g1()?)
}

/// [`verify_attestation`] with another pinned root (a private PKI, a test signer's root).
pub fn verify_attestation_with_root(
    document: &[u8],
    expect: &Expectations,
    opts: &VerifyOptions,
    root: &PinnedRoot,
) -> Result<VerifiedDocument, VerifyError> {
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(VerifyError::TooLarge { len: document.len() });
    }
    if expect.nonce.is_empty() {
        return Err(VerifyError::NoExpectedNonce);
    }

    let (doc, signature) = match document::emulated_nsm_placeholder(document) {
        Some(_) if !opts.insecure_skip_chain => return Err(VerifyError::Unsigned),
        Some(payload) => (document::parse_payload(&payload)?, SignatureCheck::AbsentEmulatedNsm),
        None => {
            let sign1 = document::parse_cose_sign1(document)?;
            let es384 = coset::Algorithm::Assigned(coset::iana::Algorithm::ES384);
            match &sign1.protected.header.alg {
                Some(alg) if *alg == es384 => {}
                Some(alg) => return Err(VerifyError::Algorithm { got: format!("{alg:?}") }),
                None => return Err(VerifyError::Algorithm { got: "absent".into() }),
            }
            let payload = sign1.payload.as_deref().ok_or(VerifyError::NoPayload)?;
            let doc = document::parse_payload(payload)?;
            let leaf_subject = verify_signature(&sign1, &doc.certificate)?;
            (doc, SignatureCheck::Es384 { leaf_subject })
        }
    };

    let chain = if opts.insecure_skip_chain {
        ChainCheck::SkippedInsecure
    } else {
        let at = match opts.certificate_time {
            CertificateTime::Now => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            CertificateTime::DocumentTimestamp => doc.timestamp / 1000,
            CertificateTime::At(secs) => secs,
        };
        let cabundle: Vec<Vec<u8>> = doc.cabundle.iter().map(|c| c.to_vec()).collect();
        chain::verify_chain(&doc.certificate, &cabundle, root, at)?;
        ChainCheck::Verified { root_name: root.name().into(), root_sha256: root.sha256_hex(), at }
    };

    let mut pcrs_checked = Vec::new();
    for (index, expected) in expect.pcrs.iter() {
        match doc.pcrs.get(&index) {
            None => return Err(VerifyError::PcrMissing { index, expected: hex::encode(expected) }),
            Some(got) if got.as_slice() != expected.as_slice() => {
                return Err(VerifyError::PcrMismatch {
                    index,
                    expected: hex::encode(expected),
                    got: hex::encode(got),
                });
            }
            Some(_) => pcrs_checked.push(index),
        }
    }

    if bytes(&doc.nonce) != Some(expect.nonce.as_slice()) {
        return Err(VerifyError::NonceMismatch {
            expected: hex::encode(&expect.nonce),
            got: describe(bytes(&doc.nonce)),
        });
    }
    if let Some(expected) = &expect.user_data
        && bytes(&doc.user_data) != Some(expected.as_slice())
    {
        return Err(VerifyError::UserDataMismatch {
            expected: hex::encode(expected),
            got: describe(bytes(&doc.user_data)),
        });
    }

    Ok(VerifiedDocument {
        document: doc,
        signature,
        chain,
        pcrs_checked,
        user_data_checked: expect.user_data.is_some(),
    })
}

/// The COSE_Sign1 signature with the leaf's key; returns the leaf's subject.
fn verify_signature(sign1: &coset::CoseSign1, leaf: &[u8]) -> Result<String, VerifyError> {
    let cert = Certificate::from_der(leaf)
        .map_err(|e| VerifyError::Malformed { field: "certificate".into(), reason: e.to_string() })?;
    let subject = cert.tbs_certificate.subject.to_string();
    let key = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .ok()
        .and_then(|spki| VerifyingKey::from_public_key_der(&spki).ok())
        .ok_or_else(|| VerifyError::Malformed {
            field: "certificate".into(),
            reason: format!("the key of {subject} is not an ECDSA P-384 key"),
        })?;
    sign1.verify_signature(b"", |signature, signed| {
        let signature = Signature::from_slice(signature).map_err(|_| VerifyError::BadSignature {
            subject: subject.clone(),
            reason: format!("{} bytes, not a 96-byte r || s", signature.len()),
        })?;
        key.verify(signed, &signature).map_err(|_| VerifyError::BadSignature {
            subject: subject.clone(),
            reason: "the signature does not match the signed content".into(),
        })
    })?;
    Ok(subject)
}

/// An optional field of the document as a slice.
pub fn bytes(field: &Option<ByteBuf>) -> Option<&[u8]> {
    field.as_ref().map(|b| b.as_slice())
}

fn describe(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(|| "none".into(), hex::encode)
}

/// Formats seconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(secs: u64) -> String {
    chain::rfc3339(secs)
}
