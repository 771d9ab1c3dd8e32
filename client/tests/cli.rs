//! The `kv-client verify-attestation` command, run as a process: it trusts only the AWS root,
//! so a test signer's document passes only with `--insecure-skip-certificate-chain`, which warns
//! on stderr each time; exit 1 names what differed, exit 2 is bad usage.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use support::test_nsm_signer::{DocumentSpec, PCR0, PCR1, PCR2, TestNsmSigner, emulated_nsm_document};

const NONCE: &[u8] = b"cli-nonce-0123456789";
const INSECURE: &str = "--insecure-skip-certificate-chain";

fn manifest(dir: &Path) -> PathBuf {
    let path = dir.join("manifest.json");
    let text = serde_json::json!({
        "format": 1,
        "pcrs": {
            "HashAlgorithm": "Sha384 { ... }",
            "PCR0": hex::encode(PCR0),
            "PCR1": hex::encode(PCR1),
            "PCR2": hex::encode(PCR2),
        },
    });
    std::fs::write(&path, text.to_string()).unwrap();
    path
}

fn kv_client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kv-client")).args(args).output().expect("kv-client runs")
}

fn verify(document: &Path, manifest: &Path, nonce: &[u8], extra: &[&str]) -> Output {
    let (document, manifest, nonce) =
        (document.to_str().unwrap(), manifest.to_str().unwrap(), hex::encode(nonce));
    let mut args =
        vec!["verify-attestation", "--document", document, "--manifest", manifest, "--nonce", &nonce];
    args.extend_from_slice(extra);
    kv_client(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_test_signed_document_is_refused_without_the_insecure_flag_and_accepted_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let signer = TestNsmSigner::new("cli");
    let mut spec = DocumentSpec::new(NONCE);
    spec.user_data = Some(b"nitro-kv:keyset:v1:abc".to_vec());
    let document = dir.path().join("doc.cose");
    std::fs::write(&document, signer.sign(&spec)).unwrap();

    let out = verify(&document, &manifest, NONCE, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("attestation document refused: certificate chain:"), "{stderr}");
    assert!(stderr.contains("AWS Nitro Enclaves Root-G1"), "{stderr}");
    assert!(out.stdout.is_empty());

    let user_data = hex::encode(b"nitro-kv:keyset:v1:abc");
    let out = verify(&document, &manifest, NONCE, &[INSECURE, "--user-data-hex", &user_data]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("kv-client: WARNING: --insecure-skip-certificate-chain")),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(summary["verified"], true);
    assert_eq!(summary["module_id"], spec.module_id.as_str());
    assert_eq!(summary["pcrs"]["PCR0"], hex::encode(PCR0));
    assert_eq!(summary["nonce"], hex::encode(NONCE));
    assert_eq!(summary["checks"]["certificate_chain"]["status"], "skipped-insecure");
    assert_eq!(summary["checks"]["signature"]["status"], "verified");
    assert_eq!(summary["checks"]["signature"]["leaf_subject"], signer.leaf_subject().as_str());
    assert_eq!(summary["checks"]["pcrs"]["checked"], serde_json::json!(["PCR0", "PCR1", "PCR2"]));
    assert_eq!(summary["checks"]["user_data"]["status"], "match");
}

#[test]
fn base64_documents_are_read_and_a_mismatch_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let signer = TestNsmSigner::new("b64");
    let document = dir.path().join("doc.b64");
    let encoded = base64::engine::general_purpose::STANDARD.encode(signer.sign(&DocumentSpec::new(NONCE)));
    std::fs::write(&document, format!("{encoded}\n")).unwrap();

    assert_eq!(verify(&document, &manifest, NONCE, &[INSECURE]).status.code(), Some(0));

    let out = verify(&document, &manifest, b"another nonce", &[INSECURE]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nonce mismatch"), "{}", text(&out.stderr));

    let mut spec = DocumentSpec::new(NONCE);
    spec.pcrs.insert(2, vec![0xab; 48]);
    std::fs::write(&document, signer.sign(&spec)).unwrap();
    let out = verify(&document, &manifest, NONCE, &[INSECURE]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("PCR2 mismatch: expected {}", hex::encode(PCR2))), "{stderr}");
}

#[test]
fn the_emulated_nsm_document_passes_with_the_flag_and_two_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let document = dir.path().join("qemu.cose");
    std::fs::write(&document, emulated_nsm_document(&DocumentSpec::new(NONCE))).unwrap();

    let out = verify(&document, &manifest, NONCE, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unsigned"), "{}", text(&out.stderr));

    let out = verify(&document, &manifest, NONCE, &[INSECURE]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("WARNING")).count(), 2, "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["checks"]["signature"]["status"], "absent-emulated-nsm");
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let document = dir.path().join("doc.cose");
    std::fs::write(&document, TestNsmSigner::new("usage").sign(&DocumentSpec::new(NONCE))).unwrap();
    let (doc, man) = (document.to_str().unwrap(), manifest.to_str().unwrap());

    let out = kv_client(&["verify-attestation", "--document", doc, "--manifest", man, "--nonce", "xyz"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = kv_client(&["verify-attestation", "--document", doc, "--manifest", man]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    let missing = dir.path().join("missing.json");
    let out = verify(&document, &missing, NONCE, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing.json"), "{}", text(&out.stderr));

    let out = verify(&dir.path().join("no-doc"), &manifest, NONCE, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no-doc"), "{}", text(&out.stderr));
}
