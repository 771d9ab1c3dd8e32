//! `kv-client keys` and `kv-client get`, run as processes against the real parent stack (envoy
//! with the repository's envoy.yaml -> vsockproxy -> kv-server on sample data). The server runs
//! outside an enclave, so its key set has no attestation document: `--manifest` is refused with
//! the server's reason, and lookups need the loudly warned `--no-attestation-check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use e2e_tests::Stack;
use serde_json::{Value, json};

fn kv_client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kv-client")).args(args).output().expect("kv-client runs")
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "kv-client failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kv-client prints JSON")
}

fn manifest(dir: &Path) -> PathBuf {
    let path = dir.join("manifest.json");
    let pcr = hex::encode([0x11u8; 48]);
    let text = json!({"format": 1, "pcrs": {"HashAlgorithm": "Sha384 { ... }", "PCR0": pcr, "PCR1": pcr, "PCR2": pcr}});
    std::fs::write(&path, text.to_string()).unwrap();
    path
}

fn stack() -> (Stack, String) {
    let stack = Stack::start(&["--sample-data"]);
    stack.wait_serving(Duration::from_secs(30));
    let url = format!("http://{}", stack.envoy.listen);
    (stack, url)
}

/// Every key value of every group, as (partition id, key, value).
fn values(answer: &Value) -> Vec<(u64, String, String)> {
    let mut all = Vec::new();
    for group in answer["compressionGroups"].as_array().unwrap() {
        for partition in group["content"].as_array().unwrap() {
            for key_group in partition["keyGroupOutputs"].as_array().unwrap() {
                for (key, value) in key_group["keyValues"].as_object().unwrap() {
                    let id = partition["id"].as_u64().unwrap();
                    all.push((id, key.clone(), value["value"].as_str().unwrap().to_string()));
                }
            }
        }
    }
    all
}

#[test]
fn keys_are_fetched_and_their_digest_checked() {
    let (stack, url) = stack();
    let keys = stdout_json(&kv_client(&["keys", "--url", &url]));
    assert_eq!(keys["key_set_sha256_matches"], true);
    assert_eq!(keys["keys"][0]["id"], keys["current_key_id"]);
    assert_eq!(keys["nonce"].as_str().unwrap().len(), 64, "a fresh 32-byte nonce");
    assert_eq!(keys["attestation"]["verified"], false);
    assert!(keys["attestation"]["attestation_unavailable"].as_str().unwrap().contains("NSM"), "{keys}");

    // With a manifest, no document is a refusal that names the server's reason.
    let manifest = manifest(stack.dir.path());
    let out = kv_client(&["keys", "--url", &url, "--manifest", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("attestationUnavailable") && stderr.contains("NSM"), "{stderr}");
}

#[test]
fn get_returns_the_values_with_gzip_and_none_and_several_partitions() {
    let (_stack, url) = stack();
    for compression in ["gzip", "none"] {
        let out = kv_client(&[
            "get",
            "--url",
            &url,
            "--no-attestation-check",
            "--keys",
            "hello,missing",
            "--render-urls",
            "example-key",
            "--compression",
            compression,
            "--partitions",
            "3",
        ]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("--no-attestation-check"), "loudly warned");
        let answer = stdout_json(&out);
        assert_eq!(answer["attestation_verified"], false);
        assert_eq!(answer["compressionGroups"].as_array().unwrap().len(), 3, "{answer}");
        let values = values(&answer);
        for partition in 0..3 {
            assert!(values.contains(&(partition, "hello".into(), "world".into())), "{compression}: {answer}");
            assert!(values.contains(&(partition, "example-key".into(), "example-value".into())), "{answer}");
        }
        assert_eq!(answer["missing"], json!(["missing"]), "{answer}");
    }
}

#[test]
fn get_needs_an_attestation_or_the_explicit_flag() {
    let (stack, url) = stack();
    let manifest = manifest(stack.dir.path());
    let out = kv_client(&["get", "--url", &url, "--manifest", manifest.to_str().unwrap(), "--keys", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("attestationUnavailable"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing was looked up");

    let out = kv_client(&["get", "--url", &url, "--keys", "hello"]);
    assert_eq!(out.status.code(), Some(2), "neither --manifest nor --no-attestation-check");
    let out =
        kv_client(&["get", "--url", &url.replace("http", "https"), "--no-attestation-check", "--keys", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("load balancer"));
}

#[test]
fn server_errors_name_the_http_status() {
    // No server there at all: the transport side.
    let port = e2e_tests::free_port();
    let out = kv_client(&["keys", "--url", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no answer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
