//! `verify_attestation` on documents from the test double of the NSM signer: a good document
//! passes, and each thing that can differ (a PCR, the nonce, user_data, the signature, the
//! chain, the time) makes it fail with an error that names it.

mod support;

use kv_client::verify::{
    CertificateTime, ChainCheck, Expectations, ExpectedPcrs, SignatureCheck, VerifyError, VerifyOptions,
    verify_attestation, verify_attestation_with_root,
};
use support::test_nsm_signer::{DocumentSpec, PCR0, PCR1, PCR2, TestNsmSigner, emulated_nsm_document};
use time::{Duration, OffsetDateTime};

const NONCE: &[u8] = b"nonce-sent-by-this-client-0123456";

fn expect() -> Expectations {
    Expectations::new(ExpectedPcrs::new(PCR0, PCR1, PCR2), NONCE)
}

fn secure() -> VerifyOptions {
    VerifyOptions::default()
}

#[test]
fn a_good_document_verifies_against_its_pinned_root() {
    let signer = TestNsmSigner::new("good");
    let mut spec = DocumentSpec::new(NONCE);
    spec.public_key = Some(b"a key the enclave made".to_vec());
    let document = signer.sign(&spec);
    let verified = verify_attestation_with_root(&document, &expect(), &secure(), &signer.pinned_root())
        .expect("a good document verifies");
    assert_eq!(verified.signature, SignatureCheck::Es384 { leaf_subject: signer.leaf_subject() });
    match &verified.chain {
        ChainCheck::Verified { root_name, root_sha256, .. } => {
            assert_eq!(root_name, "good test root");
            assert_eq!(root_sha256, &signer.pinned_root().sha256_hex());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(verified.pcrs_checked, vec![0, 1, 2]);
    assert_eq!(verified.document.module_id, spec.module_id);
    assert_eq!(
        verified.document.public_key.as_deref().map(|k| k.as_slice()),
        Some(&b"a key the enclave made"[..])
    );
    assert!(!verified.user_data_checked);
}

#[test]
fn a_tagged_document_verifies_too() {
    let signer = TestNsmSigner::new("tagged");
    let mut spec = DocumentSpec::new(NONCE);
    spec.tagged = true;
    let document = signer.sign(&spec);
    assert_eq!(document[0], 0xd2, "COSE_Sign1 tag 18");
    verify_attestation_with_root(&document, &expect(), &secure(), &signer.pinned_root()).unwrap();
}

#[test]
fn a_different_pcr_fails_and_names_the_pcr_and_both_values() {
    let signer = TestNsmSigner::new("pcr");
    let mut spec = DocumentSpec::new(NONCE);
    spec.pcrs.insert(1, vec![0xee; 48]);
    let document = signer.sign(&spec);
    let e = verify_attestation_with_root(&document, &expect(), &secure(), &signer.pinned_root()).unwrap_err();
    match &e {
        VerifyError::PcrMismatch { index, expected, got } => {
            assert_eq!(*index, 1);
            assert_eq!(expected, &hex::encode(PCR1));
            assert_eq!(got, &hex::encode([0xee; 48]));
        }
        other => panic!("{other}"),
    }
    let message = e.to_string();
    assert!(message.starts_with("PCR1 mismatch: expected 1111"), "{message}");

    // PCR8 expected (a signed image), absent from the document.
    let mut spec = DocumentSpec::new(NONCE);
    spec.pcrs.remove(&8);
    let document = signer.sign(&spec);
    let mut expect = expect();
    expect.pcrs = expect.pcrs.with_pcr8([0x18; 48]);
    let e = verify_attestation_with_root(&document, &expect, &secure(), &signer.pinned_root()).unwrap_err();
    assert!(matches!(e, VerifyError::PcrMissing { index: 8, .. }), "{e}");
}

#[test]
fn another_nonce_fails_as_not_fresh() {
    let signer = TestNsmSigner::new("nonce");
    let document = signer.sign(&DocumentSpec::new(b"an older request's nonce"));
    let e = verify_attestation_with_root(&document, &expect(), &secure(), &signer.pinned_root()).unwrap_err();
    assert!(matches!(e, VerifyError::NonceMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&hex::encode(NONCE)), "{e}");

    let mut spec = DocumentSpec::new(NONCE);
    spec.nonce = None;
    let e = verify_attestation_with_root(&signer.sign(&spec), &expect(), &secure(), &signer.pinned_root())
        .unwrap_err();
    assert!(e.to_string().contains("the document has none"), "{e}");

    let mut no_nonce = expect();
    no_nonce.nonce.clear();
    let e = verify_attestation_with_root(
        &signer.sign(&DocumentSpec::new(b"")),
        &no_nonce,
        &secure(),
        &signer.pinned_root(),
    )
    .unwrap_err();
    assert!(matches!(e, VerifyError::NoExpectedNonce), "{e}");
}

#[test]
fn user_data_is_checked_when_expected() {
    let signer = TestNsmSigner::new("user-data");
    let keyset = b"nitro-kv:keyset:v1:0123456789abcdef0123456789abcdef".to_vec();
    let mut spec = DocumentSpec::new(NONCE);
    spec.user_data = Some(keyset.clone());
    let document = signer.sign(&spec);
    let root = signer.pinned_root();

    let verified =
        verify_attestation_with_root(&document, &expect().with_user_data(keyset.clone()), &secure(), &root)
            .unwrap();
    assert!(verified.user_data_checked);

    let mut other = keyset.clone();
    *other.last_mut().unwrap() ^= 1;
    let e = verify_attestation_with_root(&document, &expect().with_user_data(other), &secure(), &root)
        .unwrap_err();
    assert!(matches!(e, VerifyError::UserDataMismatch { .. }), "{e}");

    spec.user_data = None;
    let e =
        verify_attestation_with_root(&signer.sign(&spec), &expect().with_user_data(keyset), &secure(), &root)
            .unwrap_err();
    assert!(e.to_string().contains("the document has none"), "{e}");
}

#[test]
fn a_flipped_byte_in_the_signature_or_the_payload_fails_the_signature() {
    let signer = TestNsmSigner::new("flip");
    let document = signer.sign(&DocumentSpec::new(NONCE));
    let root = signer.pinned_root();

    let mut bad_signature = document.clone();
    *bad_signature.last_mut().unwrap() ^= 0x01;
    let e = verify_attestation_with_root(&bad_signature, &expect(), &secure(), &root).unwrap_err();
    match &e {
        VerifyError::BadSignature { subject, .. } => assert_eq!(subject, &signer.leaf_subject()),
        other => panic!("{other}"),
    }

    // The module_id's last character is in the signed payload.
    let at = document.windows(5).position(|w| w == b"cdef0").expect("module_id in the payload") + 4;
    let mut bad_payload = document.clone();
    bad_payload[at] = b'1';
    let e = verify_attestation_with_root(&bad_payload, &expect(), &secure(), &root).unwrap_err();
    assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");

    // Even with the chain skipped, the signature is checked.
    let e =
        verify_attestation_with_root(&bad_signature, &expect(), &VerifyOptions::insecure_skip_chain(), &root)
            .unwrap_err();
    assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");
}

#[test]
fn a_document_signed_by_another_key_than_its_leaf_fails() {
    let genuine = TestNsmSigner::new("genuine");
    let forger = TestNsmSigner::new("forger");
    // The genuine chain, but the forger's signature.
    let spec = DocumentSpec::new(NONCE);
    let payload = spec
        .payload(genuine.leaf_der.clone(), vec![genuine.root_der.clone(), genuine.intermediate_der.clone()]);
    let document = forger.sign_payload(payload, false);
    let e =
        verify_attestation_with_root(&document, &expect(), &secure(), &genuine.pinned_root()).unwrap_err();
    assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");
}

#[test]
fn a_chain_to_another_root_fails_and_names_the_certificate() {
    let signer = TestNsmSigner::new("signer");
    let other = TestNsmSigner::new("other");
    let document = signer.sign(&DocumentSpec::new(NONCE));
    let e = verify_attestation_with_root(&document, &expect(), &secure(), &other.pinned_root()).unwrap_err();
    match &e {
        VerifyError::Chain { subject, reason } => {
            assert_eq!(subject, "CN=signer test root,O=nitro-kv tests,C=US");
            assert!(reason.contains("not the pinned other test root"), "{reason}");
        }
        other => panic!("{other}"),
    }

    // The bundle claims the pinned root, but the intermediate was not issued by it.
    let spec = DocumentSpec::new(NONCE);
    let payload =
        spec.payload(signer.leaf_der.clone(), vec![other.root_der.clone(), signer.intermediate_der.clone()]);
    let document = signer.sign_payload(payload, false);
    let e = verify_attestation_with_root(&document, &expect(), &secure(), &other.pinned_root()).unwrap_err();
    assert!(matches!(e, VerifyError::Chain { .. }), "{e}");
    assert!(e.to_string().contains(&signer.leaf_subject()), "{e}");
}

#[test]
fn only_the_insecure_option_accepts_a_chain_that_is_not_aws() {
    let signer = TestNsmSigner::new("test-signer");
    let document = signer.sign(&DocumentSpec::new(NONCE));

    // The shipped entry point knows only the AWS root.
    let e = verify_attestation(&document, &expect(), &secure()).unwrap_err();
    match &e {
        VerifyError::Chain { reason, .. } => {
            assert!(reason.contains("AWS Nitro Enclaves Root-G1"), "{reason}");
            assert!(
                reason.contains("641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    }

    let verified = verify_attestation(&document, &expect(), &VerifyOptions::insecure_skip_chain()).unwrap();
    assert_eq!(verified.chain, ChainCheck::SkippedInsecure);
    assert!(matches!(verified.signature, SignatureCheck::Es384 { .. }));

    // The other checks still run.
    let mut spec = DocumentSpec::new(NONCE);
    spec.pcrs.insert(2, vec![0; 48]);
    let e = verify_attestation(&signer.sign(&spec), &expect(), &VerifyOptions::insecure_skip_chain())
        .unwrap_err();
    assert!(matches!(e, VerifyError::PcrMismatch { index: 2, .. }), "{e}");
    let e = verify_attestation(
        &signer.sign(&DocumentSpec::new(b"stale")),
        &expect(),
        &VerifyOptions::insecure_skip_chain(),
    )
    .unwrap_err();
    assert!(matches!(e, VerifyError::NonceMismatch { .. }), "{e}");
}

#[test]
fn certificates_are_checked_at_the_chosen_time() {
    let now = OffsetDateTime::now_utc();
    let signer =
        TestNsmSigner::with_leaf_validity("expired", now - Duration::days(2), now - Duration::days(1));
    let mut spec = DocumentSpec::new(NONCE);
    spec.timestamp_ms = u64::try_from((now - Duration::hours(36)).unix_timestamp() * 1000).unwrap();
    let document = signer.sign(&spec);
    let root = signer.pinned_root();

    let e = verify_attestation_with_root(&document, &expect(), &secure(), &root).unwrap_err();
    match &e {
        VerifyError::Chain { subject, reason } => {
            assert_eq!(subject, &signer.leaf_subject());
            assert!(reason.starts_with("not valid at "), "{reason}");
        }
        other => panic!("{other}"),
    }

    let at_document =
        VerifyOptions { certificate_time: CertificateTime::DocumentTimestamp, ..VerifyOptions::default() };
    let verified = verify_attestation_with_root(&document, &expect(), &at_document, &root).unwrap();
    assert!(matches!(verified.chain, ChainCheck::Verified { at, .. } if at == spec.timestamp_ms / 1000));

    let later = VerifyOptions {
        certificate_time: CertificateTime::At(u64::try_from(now.unix_timestamp()).unwrap()),
        ..VerifyOptions::default()
    };
    assert!(verify_attestation_with_root(&document, &expect(), &later, &root).is_err());
}

#[test]
fn the_emulated_nsm_placeholder_is_accepted_only_with_the_insecure_option() {
    let document = emulated_nsm_document(&DocumentSpec::new(NONCE));
    let e = verify_attestation(&document, &expect(), &secure()).unwrap_err();
    assert!(matches!(e, VerifyError::Unsigned), "{e}");

    let verified = verify_attestation(&document, &expect(), &VerifyOptions::insecure_skip_chain()).unwrap();
    assert_eq!(verified.signature, SignatureCheck::AbsentEmulatedNsm);
    assert_eq!(verified.chain, ChainCheck::SkippedInsecure);

    let mut spec = DocumentSpec::new(NONCE);
    spec.pcrs.insert(0, vec![0; 48]);
    let e =
        verify_attestation(&emulated_nsm_document(&spec), &expect(), &VerifyOptions::insecure_skip_chain())
            .unwrap_err();
    assert!(matches!(e, VerifyError::PcrMismatch { index: 0, .. }), "{e}");
    let e = verify_attestation(
        &emulated_nsm_document(&DocumentSpec::new(b"other")),
        &expect(),
        &VerifyOptions::insecure_skip_chain(),
    )
    .unwrap_err();
    assert!(matches!(e, VerifyError::NonceMismatch { .. }), "{e}");
}

#[test]
fn other_algorithms_and_garbage_are_refused() {
    let signer = TestNsmSigner::new("alg");
    let document = signer.sign(&DocumentSpec::new(NONCE));
    let mut sign1 = <coset::CoseSign1 as coset::CborSerializable>::from_slice(&document).unwrap();
    sign1.protected = coset::ProtectedHeader {
        original_data: None,
        header: coset::HeaderBuilder::new().algorithm(coset::iana::Algorithm::ES256).build(),
    };
    let es256 = coset::CborSerializable::to_vec(sign1).unwrap();
    let e = verify_attestation_with_root(&es256, &expect(), &secure(), &signer.pinned_root()).unwrap_err();
    assert!(matches!(e, VerifyError::Algorithm { .. }), "{e}");

    let e =
        verify_attestation(b"not a document", &expect(), &VerifyOptions::insecure_skip_chain()).unwrap_err();
    assert!(matches!(e, VerifyError::NotCoseSign1 { .. }), "{e}");
    let e = verify_attestation(&vec![0x84; 70_000], &expect(), &secure()).unwrap_err();
    assert!(matches!(e, VerifyError::TooLarge { .. }), "{e}");

    // A payload that is not an attestation document, validly signed.
    let document = signer.sign_payload(b"\xa1\x63abc\x01".to_vec(), false);
    let e = verify_attestation_with_root(&document, &expect(), &secure(), &signer.pinned_root()).unwrap_err();
    assert!(e.to_string().contains("malformed attestation document: module_id: missing"), "{e}");
}

/// Bytes the real emulated NSM returned (tests/fixtures/README.md says how they were captured).
#[test]
fn the_real_emulated_nsm_document_passes_only_with_the_insecure_option() {
    let document = include_bytes!("fixtures/emulated-nsm-document.cose");
    let pcr = |h: &str| kv_client::verify::expect::parse_pcr(h).unwrap();
    let pcrs = ExpectedPcrs::new(
        pcr(
            "2ff0600d1b962b63634f0313e646634a143f95d798eccdd210564ac3313f53262057af4fde74e8f0dad2025402dc8398",
        ),
        pcr(
            "9da17983a5534d581283dffe90cc72487e6c7a9eeede83643032569fe8fab9960fa074382dc8a66d886e6fec14e5f026",
        ),
        pcr(
            "969a042cf7e82866ffe73d1be27a3719c47f87ab4b1f0f36b9151106559593556846ea8d40d73679ed37bb2bec3c105b",
        ),
    );
    let expect = Expectations::new(pcrs.clone(), b"kv-client-qemu-nonce".to_vec());

    let e = verify_attestation(document, &expect, &secure()).unwrap_err();
    assert!(matches!(e, VerifyError::Unsigned), "{e}");

    let verified = verify_attestation(document, &expect, &VerifyOptions::insecure_skip_chain()).unwrap();
    assert_eq!(verified.signature, SignatureCheck::AbsentEmulatedNsm);
    assert_eq!(verified.document.module_id, "capture");
    assert_eq!(verified.pcrs_checked, vec![0, 1, 2]);

    let stale = Expectations::new(pcrs.clone(), b"another nonce".to_vec());
    let e = verify_attestation(document, &stale, &VerifyOptions::insecure_skip_chain()).unwrap_err();
    assert!(matches!(e, VerifyError::NonceMismatch { .. }), "{e}");
    let other_image = Expectations::new(pcrs.with_pcr8([0x88; 48]), b"kv-client-qemu-nonce".to_vec());
    let e = verify_attestation(document, &other_image, &VerifyOptions::insecure_skip_chain()).unwrap_err();
    assert!(matches!(e, VerifyError::PcrMismatch { index: 8, .. }), "{e}");
}
