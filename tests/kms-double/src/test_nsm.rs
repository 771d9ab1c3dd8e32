//! TEST DOUBLE of the Nitro Secure Module's `Attestation` call, for processes on the host.
//!
//! Its documents have the NSM's exact shape: an untagged COSE_Sign1 with `{1: -35}` (ES384) as
//! the protected header, an empty unprotected map, the CBOR `AttestationDoc` of
//! aws-nitro-enclaves-nsm-api as payload (module_id, digest SHA384, timestamp in ms, PCRs 0..15
//! of 48 bytes, certificate, cabundle, public_key, user_data, nonce), and a 96-byte signature.
//! The certificate, the cabundle entry and the signature are dummy bytes: these documents prove
//! nothing, and only a verifier that skips the signature and chain (the KMS double) accepts them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest};
use coset::{CborSerializable, CoseSign1Builder, HeaderBuilder, iana};

/// The NSM's PCR length with SHA-384.
pub const PCR_LEN: usize = 48;
/// The PCRs the NSM reports (0..15).
pub const PCR_COUNT: usize = 16;
/// An ES384 signature's length (r || s).
const SIGNATURE_LEN: usize = 96;

/// An "enclave" with fixed PCRs that attests on request.
#[derive(Debug, Clone)]
pub struct TestNsm {
    pub module_id: String,
    pcrs: BTreeMap<usize, Vec<u8>>,
}

impl TestNsm {
    /// PCR0, PCR1 and PCR2 as given, every other PCR of 0..15 zero (as in a real enclave that
    /// extended none of them).
    pub fn new(pcr0: [u8; PCR_LEN], pcr1: [u8; PCR_LEN], pcr2: [u8; PCR_LEN]) -> Self {
        let mut pcrs: BTreeMap<usize, Vec<u8>> = (0..PCR_COUNT).map(|i| (i, vec![0; PCR_LEN])).collect();
        pcrs.insert(0, pcr0.to_vec());
        pcrs.insert(1, pcr1.to_vec());
        pcrs.insert(2, pcr2.to_vec());
        Self { module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(), pcrs }
    }

    /// Sets one PCR (e.g. PCR8, the signing certificate's, or PCR4, the instance's).
    pub fn with_pcr(mut self, index: usize, value: [u8; PCR_LEN]) -> Self {
        self.pcrs.insert(index, value.to_vec());
        self
    }

    pub fn pcrs(&self) -> &BTreeMap<usize, Vec<u8>> {
        &self.pcrs
    }

    /// A document issued now, as the NSM's `Request::Attestation` answers.
    pub fn attest(
        &self,
        public_key: Option<&[u8]>,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
    ) -> Vec<u8> {
        let now_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
        self.attest_at(now_ms, public_key, user_data, nonce)
    }

    /// A document with the given timestamp (ms since the epoch), for freshness tests.
    pub fn attest_at(
        &self,
        timestamp_ms: u64,
        public_key: Option<&[u8]>,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
    ) -> Vec<u8> {
        let doc = AttestationDoc::new(
            self.module_id.clone(),
            Digest::SHA384,
            timestamp_ms,
            self.pcrs.clone(),
            vec![0x30; 64],
            vec![vec![0x30; 64]],
            user_data.map(<[u8]>::to_vec),
            nonce.map(<[u8]>::to_vec),
            public_key.map(<[u8]>::to_vec),
        );
        CoseSign1Builder::new()
            .protected(HeaderBuilder::new().algorithm(iana::Algorithm::ES384).build())
            .payload(doc.to_binary())
            .signature(vec![0; SIGNATURE_LEN])
            .build()
            .to_vec()
            .expect("a COSE_Sign1 encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::{Recipient, RecipientError};
    use coset::CoseSign1;
    use rsa::pkcs8::EncodePublicKey;
    use std::time::Duration;

    fn spki() -> Vec<u8> {
        crate::cms::tests::test_key().1.clone()
    }

    /// QEMU's emulated NSM writes the protected header `{1: -1}` (a reserved algorithm, which
    /// strict COSE parsers refuse) and 64 zero bytes as signature; KMS checks the signature, the
    /// double does not, so it must still read the payload.
    #[test]
    fn a_document_shaped_like_the_emulated_nsm_is_read() {
        let nsm = TestNsm::new([4; 48], [5; 48], [6; 48]);
        let document = nsm.attest(Some(&spki()), None, None);
        let sign1 = CoseSign1::from_slice(&document).unwrap();
        let mut protected = Vec::new();
        let header = ciborium::Value::Map(vec![(1.into(), (-1).into())]);
        ciborium::into_writer(&header, &mut protected).unwrap();
        let emulated = ciborium::Value::Array(vec![
            ciborium::Value::Bytes(protected),
            ciborium::Value::Map(vec![]),
            ciborium::Value::Bytes(sign1.payload.clone().unwrap()),
            ciborium::Value::Bytes(vec![0; 64]),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&emulated, &mut bytes).unwrap();
        assert!(CoseSign1::from_slice(&bytes).is_err(), "a strict COSE parser refuses it");
        let recipient = Recipient::from_request("RSAES_OAEP_SHA_256", &bytes, SystemTime::now()).unwrap();
        assert_eq!(recipient.pcrs[&0], vec![4; 48]);
    }

    #[test]
    fn a_document_has_the_nsm_shape_and_passes_the_recipient_checks() {
        let nsm = TestNsm::new([1; 48], [2; 48], [3; 48]);
        let document = nsm.attest(Some(&spki()), None, Some(b"nonce"));
        let sign1 = CoseSign1::from_slice(&document).expect("an untagged COSE_Sign1");
        assert_eq!(sign1.protected.header.alg, Some(coset::Algorithm::Assigned(iana::Algorithm::ES384)));
        let doc = AttestationDoc::from_binary(sign1.payload.as_deref().unwrap()).unwrap();
        assert_eq!(doc.pcrs.len(), 16);
        assert!(doc.pcrs.values().all(|v| v.len() == 48));
        assert_eq!(doc.digest, Digest::SHA384);
        assert_eq!(doc.nonce.as_deref().map(|n| n.as_slice()), Some(&b"nonce"[..]));

        let recipient = Recipient::from_request("RSAES_OAEP_SHA_256", &document, SystemTime::now()).unwrap();
        assert_eq!(recipient.pcrs[&2], vec![3; 48]);
        assert_eq!(recipient.public_key_der, spki());
    }

    #[test]
    fn the_recipient_checks_refuse_what_kms_refuses() {
        let nsm = TestNsm::new([1; 48], [2; 48], [3; 48]);
        let now = SystemTime::now();
        let fresh = nsm.attest(Some(&spki()), None, None);
        assert_eq!(
            Recipient::from_request("RSAES_OAEP_SHA_1", &fresh, now).unwrap_err(),
            RecipientError::Algorithm("RSAES_OAEP_SHA_1".into())
        );
        let no_key = nsm.attest(None, None, None);
        assert_eq!(
            Recipient::from_request("RSAES_OAEP_SHA_256", &no_key, now).unwrap_err(),
            RecipientError::NoPublicKey
        );
        let stale_ms = now.duration_since(UNIX_EPOCH).unwrap() - Duration::from_secs(301);
        let stale = nsm.attest_at(stale_ms.as_millis() as u64, Some(&spki()), None, None);
        assert!(matches!(
            Recipient::from_request("RSAES_OAEP_SHA_256", &stale, now).unwrap_err(),
            RecipientError::Timestamp(301)
        ));
        let small = rsa::PrivateKey::new(&mut getrandom::SysRng, 1024).unwrap();
        let small_spki = small.to_public_key().to_public_key_der().unwrap().into_vec();
        let small_doc = nsm.attest(Some(&small_spki), None, None);
        assert_eq!(
            Recipient::from_request("RSAES_OAEP_SHA_256", &small_doc, now).unwrap_err(),
            RecipientError::KeySize(1024)
        );
        assert!(matches!(
            Recipient::from_request("RSAES_OAEP_SHA_256", b"not cbor", now).unwrap_err(),
            RecipientError::Cose(_)
        ));
    }
}
