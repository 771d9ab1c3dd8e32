//! TEST DOUBLE of the Nitro Secure Module's attestation signer. It makes documents shaped like
//! the NSM's (COSE_Sign1, ES384, the `AttestationDoc` payload of aws-nitro-enclaves-nsm-api)
//! under a throwaway PKI: a root CA, an intermediate and a P-384 leaf, made with rcgen for each
//! test. Its documents prove nothing about any enclave. It lives under `tests/` and uses
//! dev-dependencies, so no shipped binary contains it; the shipped `kv-client` trusts only the
//! AWS root and refuses these documents unless the chain check is skipped.
//!
//! It also makes the emulated NSM's unsigned placeholder (QEMU's `hw/virtio/virtio-nsm.c`:
//! algorithm -1, a 64-zero-byte certificate, cabundle entry and signature).

use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest};
use ciborium::Value;
use coset::{CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};
use kv_client::verify::PinnedRoot;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SigningKey,
};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};

/// Stand-in PCR values of an "enclave image".
pub const PCR0: [u8; 48] = [0x10; 48];
pub const PCR1: [u8; 48] = [0x11; 48];
pub const PCR2: [u8; 48] = [0x12; 48];

/// A throwaway root -> intermediate -> leaf PKI, as the Nitro PKI's shape (root first in the
/// cabundle, every key P-384, every signature ecdsa-with-SHA384).
pub struct TestNsmSigner {
    pub name: String,
    pub root_der: Vec<u8>,
    pub intermediate_der: Vec<u8>,
    pub leaf_der: Vec<u8>,
    leaf_key: KeyPair,
}

fn params(common_name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("no names");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "nitro-kv tests");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.not_before = not_before;
    p.not_after = not_after;
    p
}

fn p384_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("a P-384 key")
}

impl TestNsmSigner {
    /// A PKI whose leaf is valid from an hour ago for three hours (as the NSM's leaves are).
    pub fn new(name: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self::with_leaf_validity(name, now - Duration::hours(1), now + Duration::hours(3))
    }

    pub fn with_leaf_validity(name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        let now = OffsetDateTime::now_utc();
        let ca_from = now - Duration::days(400);
        let ca_to = now + Duration::days(400);

        let mut root_params = params(&format!("{name} test root"), ca_from, ca_to);
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_key = p384_key();
        let root_cert = root_params.self_signed(&root_key).expect("root certificate");
        let root = Issuer::new(root_params, root_key);

        let mut inter_params = params(&format!("{name} test intermediate"), ca_from, ca_to);
        inter_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        inter_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let inter_key = p384_key();
        let inter_cert = inter_params.signed_by(&inter_key, &root).expect("intermediate certificate");
        let inter = Issuer::new(inter_params, inter_key);

        let mut leaf_params = params(&format!("{name} test enclave"), not_before, not_after);
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_key = p384_key();
        let leaf_cert = leaf_params.signed_by(&leaf_key, &inter).expect("leaf certificate");

        Self {
            name: name.into(),
            root_der: root_cert.der().to_vec(),
            intermediate_der: inter_cert.der().to_vec(),
            leaf_der: leaf_cert.der().to_vec(),
            leaf_key,
        }
    }

    /// This PKI's root, pinned the way a test pins it (the shipped CLI cannot).
    pub fn pinned_root(&self) -> PinnedRoot {
        PinnedRoot::from_der(format!("{} test root", self.name), self.root_der.clone())
    }

    /// The leaf's subject, as the verifier names it.
    pub fn leaf_subject(&self) -> String {
        format!("CN={} test enclave,O=nitro-kv tests,C=US", self.name)
    }

    /// A signed document for `spec`.
    pub fn sign(&self, spec: &DocumentSpec) -> Vec<u8> {
        let payload =
            spec.payload(self.leaf_der.clone(), vec![self.root_der.clone(), self.intermediate_der.clone()]);
        self.sign_payload(payload, spec.tagged)
    }

    /// A COSE_Sign1 ES384 envelope around any payload, signed with the leaf's key.
    pub fn sign_payload(&self, payload: Vec<u8>, tagged: bool) -> Vec<u8> {
        let sign1 = CoseSign1Builder::new()
            .protected(HeaderBuilder::new().algorithm(iana::Algorithm::ES384).build())
            .payload(payload)
            .create_signature(b"", |tbs| {
                // ring signs ECDSA in ASN.1 DER; COSE wants the fixed-size r || s.
                let der = self.leaf_key.sign(tbs).expect("ES384 signature");
                p384::ecdsa::Signature::from_der(&der).expect("DER signature").to_bytes().to_vec()
            })
            .build();
        if tagged { sign1.to_tagged_vec() } else { sign1.to_vec() }.expect("COSE_Sign1 encodes")
    }
}

/// What goes into a document.
#[derive(Clone, Debug)]
pub struct DocumentSpec {
    pub module_id: String,
    pub timestamp_ms: u64,
    pub pcrs: BTreeMap<usize, Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
    /// COSE tag 18 in front of the array.
    pub tagged: bool,
}

impl DocumentSpec {
    /// PCR0/1/2 = [`PCR0`], [`PCR1`], [`PCR2`], the other locked PCRs 3, 4 and 8 zero, made now.
    pub fn new(nonce: &[u8]) -> Self {
        let timestamp_ms = u64::try_from(OffsetDateTime::now_utc().unix_timestamp() * 1000).unwrap();
        let pcrs = BTreeMap::from([
            (0, PCR0.to_vec()),
            (1, PCR1.to_vec()),
            (2, PCR2.to_vec()),
            (3, vec![0; 48]),
            (4, vec![0; 48]),
            (8, vec![0; 48]),
        ]);
        Self {
            module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
            timestamp_ms,
            pcrs,
            public_key: None,
            user_data: None,
            nonce: Some(nonce.to_vec()),
            tagged: false,
        }
    }

    /// The CBOR payload, as the NSM library encodes an `AttestationDoc`.
    pub fn payload(&self, certificate: Vec<u8>, cabundle: Vec<Vec<u8>>) -> Vec<u8> {
        AttestationDoc::new(
            self.module_id.clone(),
            Digest::SHA384,
            self.timestamp_ms,
            self.pcrs.clone(),
            certificate,
            cabundle,
            self.user_data.clone(),
            self.nonce.clone(),
            self.public_key.clone(),
        )
        .to_binary()
    }
}

/// The emulated NSM's document: unsigned, with its zero-byte placeholders.
pub fn emulated_nsm_document(spec: &DocumentSpec) -> Vec<u8> {
    let zeros = vec![0u8; 64];
    let payload = spec.payload(zeros.clone(), vec![zeros.clone()]);
    let mut protected = Vec::new();
    ciborium::into_writer(
        &Value::Map(vec![(Value::Integer(1.into()), Value::Integer((-1).into()))]),
        &mut protected,
    )
    .unwrap();
    let envelope = Value::Array(vec![
        Value::Bytes(protected),
        Value::Map(vec![]),
        Value::Bytes(payload),
        Value::Bytes(zeros),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&envelope, &mut out).unwrap();
    out
}
