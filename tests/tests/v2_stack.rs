//! v2 through the real parent stack (envoy with the repository's envoy.yaml and descriptor set ->
//! vsockproxy -> kv-server): the key endpoint, an encrypted lookup as a browser sends it (HTTP
//! POST of the binary body, curl as the client), plaintext JSON, and a refusal as an HTTP status.

use std::process::Command;
use std::time::Duration;

use e2e_tests::{Stack, http_request, system_tool};
use kv_protocol::cbor::{self, Argument, Partition, Request};
use kv_protocol::keys::PublicKeySet;
use kv_protocol::{client, framing, suite};

const READY: Duration = Duration::from_secs(30);

/// POSTs `body` with curl; returns the HTTP status, the content type and the body bytes.
fn curl_post(stack: &Stack, path: &str, content_type: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let dir = stack.dir.path();
    let (request, response) = (dir.join("request.bin"), dir.join("response.bin"));
    std::fs::write(&request, body).unwrap();
    let out = Command::new(system_tool("curl"))
        .args(["-sS", "-X", "POST", "-H"])
        .arg(format!("Content-Type: {content_type}"))
        .arg("--data-binary")
        .arg(format!("@{}", request.display()))
        .arg("-o")
        .arg(&response)
        .args(["-w", "%{http_code} %{content_type}"])
        .arg(format!("http://{}{path}", stack.envoy.listen))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let written = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, content_type) = written.split_once(' ').unwrap_or((&written, ""));
    (status.parse().unwrap(), content_type.to_string(), std::fs::read(&response).unwrap_or_default())
}

#[test]
fn v2_through_envoy_keys_encrypted_and_plaintext_lookups() {
    let stack = Stack::start(&["--sample-data"]);
    stack.wait_serving(READY);

    let r = stack.get("/v2/keys?nonce=00ff10");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", r.headers);
    let set: PublicKeySet = serde_json::from_str(&r.body).expect("the key set JSON");
    let (id, key) = set.parse_keys().unwrap()[0];
    let digest: String = set.computed_sha256().unwrap().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, set.key_set_sha256);
    assert!(set.attestation_document.is_none(), "no NSM on this machine: {}", r.body);
    assert_eq!(stack.get("/v2/keys?nonce=zz").status, 400, "a nonce that is not hex");

    // An encrypted lookup, as a browser posts it.
    let request = Request {
        partitions: vec![Partition {
            id: 0,
            compression_group_id: 0,
            metadata: None,
            arguments: vec![Argument {
                tags: vec!["keys".into()],
                data: vec!["hello".into(), "missing".into()],
            }],
        }],
        accept_compression: vec!["none".into(), "gzip".into()],
        ..Default::default()
    };
    let framed = framing::frame_request(&cbor::encode_request(&request).unwrap()).unwrap();
    let (message, context) = client::encrypt_request(id, &key, &framed).unwrap();
    let (status, content_type, body) =
        curl_post(&stack, "/v2/oblivious_getvalues", suite::REQUEST_LABEL, &message);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, suite::RESPONSE_LABEL);
    let plaintext = context.decrypt_response(&body).expect("the answer decrypts");
    let (compression, payload) = framing::unframe(&plaintext).unwrap();
    let response = cbor::decode_response(payload).unwrap();
    let outputs = response.compression_groups[0].partition_outputs(compression, 1 << 20).unwrap();
    let values = &outputs[0].key_group_outputs[0].key_values;
    assert_eq!(values["hello"].value, "world");
    assert!(!values.contains_key("missing"));

    // A key id the server does not hold: a client error, with the reason.
    let (wrong, _) = client::encrypt_request(id.wrapping_add(1), &key, &framed).unwrap();
    let (status, _, body) = curl_post(&stack, "/v2/oblivious_getvalues", suite::REQUEST_LABEL, &wrong);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("unknown key id"), "{}", String::from_utf8_lossy(&body));

    // Plaintext JSON.
    let json = br#"{"partitions":[{"id":1,"compressionGroupId":2,"arguments":[{"tags":["keys"],"data":["example-key"]}]}]}"#;
    let r = http_request(
        stack.envoy.listen,
        "POST",
        "/v2/getvalues",
        &[("Content-Type", "application/json")],
        json,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["compressionGroups"][0]["compressionGroupId"], 2, "{v}");
    assert_eq!(
        v["compressionGroups"][0]["content"][0]["keyGroupOutputs"][0]["keyValues"]["example-key"]["value"],
        "example-value",
        "{v}"
    );
    // GET is not a v2 lookup.
    assert_eq!(stack.get("/v2/getvalues").status, 404);
}

#[test]
fn with_plaintext_lookups_off_v1_is_refused_through_envoy() {
    let stack = Stack::start(&["--sample-data", "--plaintext-lookups", "false"]);
    stack.wait_serving(READY);
    let r = stack.get("/v1/getvalues?keys=hello");
    assert_eq!(r.status, 400, "FAILED_PRECONDITION maps to 400: {}", r.body);
    assert!(r.body.contains("plaintext_lookups = false"), "{}", r.body);
    assert!(!r.body.contains("world"));
}
