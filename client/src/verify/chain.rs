//! The certificate chain: the document's leaf, through its `cabundle`, to the pinned root.
//!
//! Path validation is rustls-webpki's (signatures, validity at the chosen time, CA basic
//! constraints and path lengths, critical extensions), with the pinned root as the only trust
//! anchor and ECDSA P-384 with SHA-384 as the only signature algorithm (every certificate of the
//! AWS Nitro Attestation PKI uses it). The bundle's own copy of the root is never trusted: it is
//! only dropped from the candidates when it is byte-for-byte the pinned one. When webpki refuses,
//! the certificates are looked at once more only to name the one at fault in the message.

use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use std::time::Duration;
use webpki::{EndEntityCert, KeyPurposeIdIter};
use x509_cert::Certificate;
use x509_cert::der::Decode;

use super::{PinnedRoot, VerifyError};

/// Nitro certificates carry no extended key usage; none is required of them.
struct AnyExtendedKeyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyExtendedKeyUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        // A malformed extension is still an error.
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// Checks `leaf` <- `cabundle` <- `root` at `at` (seconds since the Unix epoch).
pub(crate) fn verify_chain(
    leaf: &[u8],
    cabundle: &[Vec<u8>],
    root: &PinnedRoot,
    at: u64,
) -> Result<(), VerifyError> {
    let root_der = CertificateDer::from(root.der());
    let anchor = webpki::anchor_from_trusted_cert(&root_der).map_err(|e| VerifyError::Chain {
        subject: format!("the pinned root {}", root.name()),
        reason: format!("unusable as a trust anchor: {e}"),
    })?;
    let intermediates: Vec<CertificateDer<'_>> = cabundle
        .iter()
        .filter(|c| c.as_slice() != root.der())
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf);
    let time = UnixTime::since_unix_epoch(Duration::from_secs(at));
    let verified = EndEntityCert::try_from(&leaf_der).and_then(|ee| {
        ee.verify_for_usage(
            &[webpki::ring::ECDSA_P384_SHA384],
            &[anchor],
            &intermediates,
            time,
            AnyExtendedKeyUsage,
            None,
            None,
        )
        .map(|_| ())
    });
    verified.map_err(|e| diagnose(e, leaf, cabundle, root, at))
}

/// The chain error, naming the certificate at fault where that can be told.
fn diagnose(
    error: webpki::Error,
    leaf: &[u8],
    cabundle: &[Vec<u8>],
    root: &PinnedRoot,
    at: u64,
) -> VerifyError {
    let leaf_subject = subject(leaf);
    match error {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            // The leaf first, then the bundle from the leaf's issuer up.
            let chain = std::iter::once(leaf).chain(cabundle.iter().rev().map(Vec::as_slice));
            for der in chain {
                if let Some((not_before, not_after)) = validity(der)
                    && !(not_before..=not_after).contains(&at)
                {
                    return VerifyError::Chain {
                        subject: subject(der),
                        reason: format!(
                            "not valid at {}: valid from {} to {}",
                            rfc3339(at),
                            rfc3339(not_before),
                            rfc3339(not_after)
                        ),
                    };
                }
            }
            VerifyError::Chain { subject: leaf_subject, reason: format!("{error} at {}", rfc3339(at)) }
        }
        webpki::Error::UnknownIssuer => match cabundle.first() {
            Some(first) if first.as_slice() != root.der() => VerifyError::Chain {
                subject: subject(first),
                reason: format!(
                    "the bundle's root (SHA-256 {}) is not the pinned {} (SHA-256 {}), and no path from \
                     the certificate {leaf_subject} leads to the pinned root",
                    hex::encode(Sha256::digest(first)),
                    root.name(),
                    root.sha256_hex()
                ),
            },
            _ => VerifyError::Chain {
                subject: leaf_subject,
                reason: format!("no path through the cabundle to the pinned {}", root.name()),
            },
        },
        other => VerifyError::Chain { subject: leaf_subject, reason: other.to_string() },
    }
}

/// A certificate's subject (RFC 4514), or a note that it does not parse.
pub(crate) fn subject(der: &[u8]) -> String {
    match Certificate::from_der(der) {
        Ok(c) => c.tbs_certificate.subject.to_string(),
        Err(_) => format!("(an unparsable certificate, SHA-256 {})", hex::encode(Sha256::digest(der))),
    }
}

fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let c = Certificate::from_der(der).ok()?;
    let v = &c.tbs_certificate.validity;
    Some((v.not_before.to_unix_duration().as_secs(), v.not_after.to_unix_duration().as_secs()))
}

/// Seconds since the epoch as RFC 3339 (UTC), for messages.
pub(crate) fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs} s after the epoch"))
}
