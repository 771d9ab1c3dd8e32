//! Process-wide counters of the v2 API and of attestation refusals: plain atomics, counted whether
//! or not OTLP export is on, exported as `kv_server.v2.requests`, `kv_server.v2.errors` and
//! `kv_server.attestation.refused` (see [`super::metrics_request`]). Attributes are fixed
//! labels: a method name and a reason, never anything from a request.

use std::sync::atomic::{AtomicU64, Ordering};

/// The v2 methods (and the key endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Method {
    GetValuesHttp,
    ObliviousGetValues,
    GetPublicKeys,
}

impl V2Method {
    pub const ALL: [V2Method; 3] =
        [V2Method::GetValuesHttp, V2Method::ObliviousGetValues, V2Method::GetPublicKeys];

    pub fn name(self) -> &'static str {
        match self {
            V2Method::GetValuesHttp => "GetValuesHttp",
            V2Method::ObliviousGetValues => "ObliviousGetValues",
            V2Method::GetPublicKeys => "GetPublicKeys",
        }
    }
}

/// Why a v2 call failed. On the oblivious path the reasons after decryption (from `BadFraming`
/// on) are visible here in aggregate only; the caller gets one generic status for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Error {
    PlaintextDisabled,
    RequestTooLarge,
    Truncated,
    UnknownKeyId,
    UnsupportedKem,
    UnsupportedKdf,
    UnsupportedAead,
    DecryptionFailed,
    BadFraming,
    BadCbor,
    BadJson,
    NoPartitions,
    DuplicatePartition,
    TooManyPartitions,
    TooManyKeys,
    ResponseTooLarge,
    BadNonce,
    Internal,
}

impl V2Error {
    pub const ALL: [V2Error; 18] = [
        V2Error::PlaintextDisabled,
        V2Error::RequestTooLarge,
        V2Error::Truncated,
        V2Error::UnknownKeyId,
        V2Error::UnsupportedKem,
        V2Error::UnsupportedKdf,
        V2Error::UnsupportedAead,
        V2Error::DecryptionFailed,
        V2Error::BadFraming,
        V2Error::BadCbor,
        V2Error::BadJson,
        V2Error::NoPartitions,
        V2Error::DuplicatePartition,
        V2Error::TooManyPartitions,
        V2Error::TooManyKeys,
        V2Error::ResponseTooLarge,
        V2Error::BadNonce,
        V2Error::Internal,
    ];

    /// The `reason` attribute.
    pub fn label(self) -> &'static str {
        match self {
            V2Error::PlaintextDisabled => "plaintext_disabled",
            V2Error::RequestTooLarge => "request_too_large",
            V2Error::Truncated => "truncated",
            V2Error::UnknownKeyId => "unknown_key_id",
            V2Error::UnsupportedKem => "unsupported_kem",
            V2Error::UnsupportedKdf => "unsupported_kdf",
            V2Error::UnsupportedAead => "unsupported_aead",
            V2Error::DecryptionFailed => "decryption_failed",
            V2Error::BadFraming => "bad_framing",
            V2Error::BadCbor => "bad_cbor",
            V2Error::BadJson => "bad_json",
            V2Error::NoPartitions => "no_partitions",
            V2Error::DuplicatePartition => "duplicate_partition",
            V2Error::TooManyPartitions => "too_many_partitions",
            V2Error::TooManyKeys => "too_many_keys",
            V2Error::ResponseTooLarge => "response_too_large",
            V2Error::BadNonce => "bad_nonce",
            V2Error::Internal => "internal",
        }
    }
}

/// Why `GetAttestationDocument` refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestationRefusal {
    /// The request carried a `public_key`.
    CallerPublicKey,
    /// A nonce or user data over the limit.
    Oversize,
}

impl AttestationRefusal {
    pub const ALL: [AttestationRefusal; 2] =
        [AttestationRefusal::CallerPublicKey, AttestationRefusal::Oversize];

    pub fn label(self) -> &'static str {
        match self {
            AttestationRefusal::CallerPublicKey => "caller_public_key",
            AttestationRefusal::Oversize => "oversize",
        }
    }
}

const METHODS: usize = V2Method::ALL.len();
const REASONS: usize = V2Error::ALL.len();

static V2_REQUESTS: [AtomicU64; METHODS] = [const { AtomicU64::new(0) }; METHODS];
static V2_ERRORS: [[AtomicU64; REASONS]; METHODS] =
    [const { [const { AtomicU64::new(0) }; REASONS] }; METHODS];
static ATTESTATION_REFUSED: [AtomicU64; AttestationRefusal::ALL.len()] =
    [const { AtomicU64::new(0) }; AttestationRefusal::ALL.len()];

pub fn v2_request(method: V2Method) {
    V2_REQUESTS[method as usize].fetch_add(1, Ordering::Relaxed);
}

pub fn v2_error(method: V2Method, reason: V2Error) {
    V2_ERRORS[method as usize][reason as usize].fetch_add(1, Ordering::Relaxed);
}

pub fn attestation_refused(reason: AttestationRefusal) {
    ATTESTATION_REFUSED[reason as usize].fetch_add(1, Ordering::Relaxed);
}

pub fn v2_requests(method: V2Method) -> u64 {
    V2_REQUESTS[method as usize].load(Ordering::Relaxed)
}

pub fn v2_errors(method: V2Method, reason: V2Error) -> u64 {
    V2_ERRORS[method as usize][reason as usize].load(Ordering::Relaxed)
}

pub fn attestation_refusals(reason: AttestationRefusal) -> u64 {
    ATTESTATION_REFUSED[reason as usize].load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_slot() {
        for (i, m) in V2Method::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
        }
        for (i, r) in V2Error::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.label());
        }
        for (i, r) in AttestationRefusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
