//! The real `kv-server` binary answering v2: the key endpoint, encrypted lookups with
//! kv-protocol's client side (several partitions and compression groups, gzip and none, missing
//! keys, the same answers as v1), plaintext JSON lookups, bad input refused and counted while the
//! process stays up, plaintext lookups turned off, key rotation, and the attestation oracle closed.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{MetricsSink, Server};
use kv_server::kv_protocol::cbor::{self, Argument, Partition, PartitionOutput, Request as V2Request};
use kv_server::kv_protocol::framing::{self, Compression};
use kv_server::kv_protocol::keys::{PublicKey, PublicKeySet};
use kv_server::kv_protocol::{client, suite};
use kv_server::proto::enclave::v1::GetAttestationDocumentRequest;
use kv_server::proto::enclave::v1::attestation_client::AttestationClient;
use kv_server::proto::google::api::HttpBody;
use kv_server::proto::kv_server::v1::GetValuesRequest;
use kv_server::proto::kv_server::v1::key_value_service_client::KeyValueServiceClient as V1Client;
use kv_server::proto::kv_server::v1::v1_single_lookup_result::SingleLookupResult;
use kv_server::proto::kv_server::v2::key_service_client::KeyServiceClient;
use kv_server::proto::kv_server::v2::key_value_service_client::KeyValueServiceClient as V2Client;
use kv_server::proto::kv_server::v2::{
    GetPublicKeysRequest, GetValuesHttpRequest, ObliviousGetValuesRequest,
};
use prost_types::value::Kind;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(20);

async fn key_set(channel: &Channel, nonce: &str) -> PublicKeySet {
    let body = KeyServiceClient::new(channel.clone())
        .get_public_keys(GetPublicKeysRequest { nonce: nonce.into() })
        .await
        .expect("GetPublicKeys")
        .into_inner();
    assert_eq!(body.content_type, "application/json");
    serde_json::from_slice(&body.data).expect("the key set is JSON")
}

/// The current key (listed first).
async fn current_key(channel: &Channel) -> (u8, PublicKey) {
    key_set(channel, "").await.parse_keys().unwrap()[0]
}

fn body(data: Vec<u8>, content_type: &str) -> Option<HttpBody> {
    Some(HttpBody { content_type: content_type.into(), data, extensions: Vec::new() })
}

async fn oblivious(channel: &Channel, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    V2Client::new(channel.clone())
        .oblivious_get_values(ObliviousGetValuesRequest { raw_body: body(message, suite::REQUEST_LABEL) })
        .await
        .map(|r| {
            let body = r.into_inner();
            assert_eq!(body.content_type, suite::RESPONSE_LABEL);
            body.data
        })
}

fn partition(id: u64, group: u64, arguments: &[(&str, &[&str])]) -> Partition {
    Partition {
        id,
        compression_group_id: group,
        metadata: None,
        arguments: arguments
            .iter()
            .map(|(tag, keys)| Argument {
                tags: vec![tag.to_string()],
                data: keys.iter().map(|k| k.to_string()).collect(),
            })
            .collect(),
    }
}

fn framed(request: &V2Request) -> Vec<u8> {
    framing::frame_request(&cbor::encode_request(request).unwrap()).unwrap()
}

/// Encrypts, sends, decrypts: the compression of the groups and their outputs by group id.
async fn lookup(
    channel: &Channel,
    request: &V2Request,
) -> (Compression, BTreeMap<u64, Vec<PartitionOutput>>) {
    let (id, key) = current_key(channel).await;
    let (message, context) = client::encrypt_request(id, &key, &framed(request)).unwrap();
    let response = oblivious(channel, message).await.expect("ObliviousGetValues");
    let plaintext = context.decrypt_response(&response).expect("the response decrypts");
    assert_eq!(response.len(), suite::RESPONSE_NONCE_LEN + plaintext.len() + suite::TAG_LEN);
    assert_eq!(plaintext.len(), framing::padded_len(plaintext.len()), "padded to one of the draft's sizes");
    let (compression, payload) = framing::unframe(&plaintext).unwrap();
    let response = cbor::decode_response(payload).unwrap();
    let groups = response
        .compression_groups
        .iter()
        .map(|g| (g.compression_group_id, g.partition_outputs(compression, 1 << 20).unwrap()))
        .collect();
    (compression, groups)
}

fn values(output: &PartitionOutput, tag: &str) -> BTreeMap<String, String> {
    output
        .key_group_outputs
        .iter()
        .filter(|g| g.tags.iter().any(|t| t == tag))
        .flat_map(|g| g.key_values.iter().map(|(k, v)| (k.clone(), v.value.clone())))
        .collect()
}

/// A v1 answer as the JSON value v2 carries as text.
fn v1_as_json(value: &prost_types::Value) -> serde_json::Value {
    match &value.kind {
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(v1_as_json).collect()),
        Some(Kind::StructValue(s)) => {
            serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), v1_as_json(v))).collect())
        }
        _ => serde_json::Value::Null,
    }
}

/// v2 text as JSON: JSON text parses, anything else is a string (as v1 does it); numbers as
/// f64, as protobuf's Value holds them.
fn v2_as_json(text: &str) -> serde_json::Value {
    fn floats(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Number(n) => serde_json::json!(n.as_f64()),
            serde_json::Value::Array(items) => items.into_iter().map(floats).collect(),
            serde_json::Value::Object(map) => map.into_iter().map(|(k, v)| (k, floats(v))).collect(),
            other => other,
        }
    }
    floats(serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.into())))
}

#[tokio::test]
async fn the_key_endpoint_publishes_a_key_and_fabricates_no_document() {
    let server = Server::tcp(&["--sample-data"]);
    let channel = server.channel().await;
    let set = key_set(&channel, "00ff").await;
    assert_eq!(set.keys.len(), 1);
    assert_eq!(set.keys[0].id.len(), 2, "the key id as two hex digits");
    assert_eq!(set.parse_keys().unwrap()[0].1.as_bytes().len(), 32);
    assert_eq!(hex::encode(set.computed_sha256().unwrap()), set.key_set_sha256);
    if !std::path::Path::new("/dev/nsm").exists() {
        assert_eq!(set.attestation_document, None, "no NSM, no document");
        assert!(set.attestation_unavailable.as_deref().unwrap_or_default().contains("/dev/nsm"), "{set:?}");
    }
    let err = KeyServiceClient::new(channel.clone())
        .get_public_keys(GetPublicKeysRequest { nonce: "not hex".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = KeyServiceClient::new(channel)
        .get_public_keys(GetPublicKeysRequest { nonce: "00".repeat(513) })
        .await
        .unwrap_err();
    assert!(err.message().contains("513 bytes"), "{}", err.message());
    let logs = server.logs();
    assert!(logs.contains("HPKE key pair generated"), "{logs}");
}

#[tokio::test]
async fn encrypted_lookups_give_the_same_answers_as_v1() {
    let server = Server::tcp(&["--sample-data"]);
    let channel = server.channel().await;
    let request = V2Request {
        metadata: Some(BTreeMap::from([("hostname".into(), "publisher.example".into())])),
        partitions: vec![
            partition(
                0,
                0,
                &[("interestGroupNames", &["interest-group-1"]), ("keys", &["hello", "json-key", "missing"])],
            ),
            partition(1, 0, &[("keys", &["example-set", "example-key"])]),
            partition(
                2,
                7,
                &[("renderUrls", &["https://ads.example/render/1"]), ("adComponentRenderUrls", &["nope"])],
            ),
            partition(3, 7, &[("keys", &["missing-too"])]),
        ],
        accept_compression: vec!["none".into(), "gzip".into()],
    };
    let (compression, groups) = lookup(&channel, &request).await;
    assert_eq!(compression, Compression::Gzip, "gzip accepted, gzip used");
    assert_eq!(groups.keys().copied().collect::<Vec<_>>(), [0, 7], "two compression groups");
    assert_eq!(groups[&0].iter().map(|p| p.id).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(groups[&7].iter().map(|p| p.id).collect::<Vec<_>>(), [2, 3]);
    let keys0 = values(&groups[&0][0], "keys");
    assert_eq!(keys0.keys().collect::<Vec<_>>(), ["hello", "json-key"], "missing keys are left out");
    assert_eq!(keys0["hello"], "world");
    assert_eq!(
        values(&groups[&0][0], "interestGroupNames")["interest-group-1"],
        r#"{"priorityVector":{"signal":1}}"#
    );
    assert_eq!(values(&groups[&0][1], "keys")["example-set"], r#"["alpha","beta","gamma"]"#);
    assert_eq!(values(&groups[&7][0], "renderUrls")["https://ads.example/render/1"], r#"{"size":"300x250"}"#);
    assert!(
        groups[&7][0].key_group_outputs.iter().all(|g| !g.tags.contains(&"adComponentRenderUrls".into()))
    );
    assert!(groups[&7][1].key_group_outputs.is_empty(), "nothing found: no key group");

    // The same keys over v1: equal values (v1 parses JSON text; v2 carries it as text).
    let all = [
        "hello",
        "json-key",
        "example-set",
        "example-key",
        "interest-group-1",
        "https://ads.example/render/1",
    ];
    let v1 = V1Client::new(channel.clone())
        .get_values(GetValuesRequest {
            keys: all.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let v2: BTreeMap<String, String> = groups
        .values()
        .flatten()
        .flat_map(|p| p.key_group_outputs.iter().flat_map(|g| g.key_values.iter()))
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    for key in all {
        let Some(SingleLookupResult::Value(value)) = v1.keys[key].single_lookup_result.clone() else {
            panic!("v1 has no value for {key}");
        };
        assert_eq!(v2_as_json(&v2[key]), v1_as_json(&value), "{key}");
    }

    // Only "none" accepted: the groups come uncompressed.
    let none = V2Request { accept_compression: vec!["none".into()], ..request };
    let (compression, groups) = lookup(&channel, &none).await;
    assert_eq!(compression, Compression::None);
    assert_eq!(values(&groups[&0][0], "keys")["hello"], "world");
}

#[tokio::test]
async fn plaintext_json_lookups_answer_inline_json() {
    let server = Server::tcp(&["--sample-data"]);
    let mut v2 = V2Client::new(server.channel().await);
    let json = br#"{"partitions":[{"id":5,"compressionGroupId":1,"arguments":[{"tags":["keys"],"data":["hello","missing"]}]}]}"#;
    let answer = v2
        .get_values_http(GetValuesHttpRequest { raw_body: body(json.to_vec(), "application/json") })
        .await
        .expect("GetValuesHttp")
        .into_inner();
    assert_eq!(answer.content_type, "application/json");
    let value: serde_json::Value = serde_json::from_slice(&answer.data).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"compressionGroups":[{"compressionGroupId":1,"content":[
            {"id":5,"keyGroupOutputs":[{"tags":["keys"],"keyValues":{"hello":{"value":"world"}}}]}
        ]}]})
    );
    let err = v2
        .get_values_http(GetValuesHttpRequest {
            raw_body: body(br#"{"partitions":[{"id":"x"}]}"#.to_vec(), ""),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("partitions[0].id"), "{}", err.message());
}

/// Every kind of bad input: a clear refusal, counted by reason, and the server keeps serving.
#[tokio::test]
async fn bad_input_is_refused_counted_and_the_server_stays_up() {
    let (sink, collector) = MetricsSink::start().await;
    let otlp = format!("tcp://{collector}");
    let mut server = Server::tcp(&[
        "--sample-data",
        "--max-partitions",
        "2",
        "--max-request-bytes",
        "4096",
        "--otlp-endpoint",
        &otlp,
        "--otlp-interval-ms",
        "200",
    ]);
    let channel = server.channel().await;
    let (id, key) = current_key(&channel).await;
    let good = framed(&V2Request {
        partitions: vec![partition(0, 0, &[("keys", &["hello"])])],
        ..Default::default()
    });
    let (message, _) = client::encrypt_request(id, &key, &good).unwrap();

    let with = |at: usize, value: u8| {
        let mut m = message.clone();
        m[at] = value;
        m
    };
    let encrypt = |plaintext: &[u8]| client::encrypt_request(id, &key, plaintext).unwrap().0;
    let too_many = framed(&V2Request {
        partitions: (0..3).map(|i| partition(i, 0, &[("keys", &["hello"])])).collect(),
        ..Default::default()
    });
    let mut long_frame = framing::frame_request(b"\xa0").unwrap();
    long_frame[1..5].copy_from_slice(&1000u32.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, &str, bool)> = vec![
        ("unknown key id", with(0, id.wrapping_add(1)), "unknown_key_id", true),
        ("wrong KEM", with(2, 0x21), "unsupported_kem", true),
        ("wrong KDF", with(4, 0x02), "unsupported_kdf", true),
        ("wrong AEAD", with(6, 0x01), "unsupported_aead", true),
        (
            "tampered ciphertext",
            with(message.len() - 1, message[message.len() - 1] ^ 1),
            "decryption_failed",
            true,
        ),
        ("truncated", message[..40].to_vec(), "truncated", true),
        ("oversized", vec![0; 5000], "request_too_large", true),
        ("framing longer than the message", encrypt(&long_frame), "bad_framing", false),
        (
            "compressed request framing",
            encrypt(&framing::frame(Compression::Gzip, b"", 0).unwrap()),
            "bad_framing",
            false,
        ),
        ("bad CBOR", encrypt(&framing::frame_request(b"\xff\xfe").unwrap()), "bad_cbor", false),
        (
            "CBOR not matching the schema",
            encrypt(&framing::frame_request(b"\xa0").unwrap()),
            "bad_cbor",
            false,
        ),
        ("too many partitions", encrypt(&too_many), "too_many_partitions", false),
    ];
    for (name, message, reason, named) in &cases {
        let err = oblivious(&channel, message.clone()).await.expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err}");
        if *named {
            assert!(
                !err.message().contains("decrypted request"),
                "{name}: the cause is named: {}",
                err.message()
            );
        } else {
            assert_eq!(
                err.message(),
                kv_server::v2::INVALID_DECRYPTED_REQUEST,
                "{name}: nothing about the plaintext"
            );
        }
        assert!(server.is_running(), "{name} ({reason}): the server died\n{}", server.logs());
    }
    // Still serving.
    let (compression, groups) = lookup(
        &channel,
        &V2Request { partitions: vec![partition(0, 0, &[("keys", &["hello"])])], ..Default::default() },
    )
    .await;
    assert_eq!((compression, values(&groups[&0][0], "keys")["hello"].as_str()), (Compression::None, "world"));

    let counted = |reason: &str| {
        sink.latest("kv_server.v2.errors", &[("rpc.method", "ObliviousGetValues"), ("reason", reason)])
    };
    let started = Instant::now();
    let expected: BTreeMap<&str, u64> = cases.iter().fold(BTreeMap::new(), |mut m, (_, _, r, _)| {
        *m.entry(*r).or_default() += 1;
        m
    });
    // Every refusal by its reason, and every call (the refused ones and the good one after them).
    let calls = || sink.latest("kv_server.v2.requests", &[("rpc.method", "ObliviousGetValues")]);
    while expected.iter().any(|(r, n)| counted(r) < *n) || calls() <= cases.len() as u64 {
        assert!(
            started.elapsed() < DEADLINE,
            "not all counted: {:?}, calls {}",
            expected.keys().map(|r| (r, counted(r))).collect::<Vec<_>>(),
            calls()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The logs carry no request content.
    assert!(!server.logs().contains("hello"), "{}", server.logs());
}

#[tokio::test]
async fn with_plaintext_lookups_off_only_encrypted_lookups_answer() {
    let server = Server::tcp(&["--sample-data", "--plaintext-lookups", "false"]);
    let channel = server.channel().await;
    let err = V1Client::new(channel.clone())
        .get_values(GetValuesRequest { keys: vec!["hello".into()], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("plaintext_lookups = false"), "{}", err.message());
    let json = br#"{"partitions":[{"id":0,"compressionGroupId":0,"arguments":[{"tags":["keys"],"data":["hello"]}]}]}"#;
    let err = V2Client::new(channel.clone())
        .get_values_http(GetValuesHttpRequest { raw_body: body(json.to_vec(), "application/json") })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let (_, groups) = lookup(
        &channel,
        &V2Request { partitions: vec![partition(0, 0, &[("keys", &["hello"])])], ..Default::default() },
    )
    .await;
    assert_eq!(values(&groups[&0][0], "keys")["hello"], "world");
}

#[tokio::test]
async fn keys_rotate_and_the_old_key_is_refused_after_its_grace_period() {
    let server = Server::tcp(&["--sample-data", "--key-rotation-secs", "2", "--key-grace-secs", "1"]);
    let channel = server.channel().await;
    let (old_id, old_key) = current_key(&channel).await;
    let request = framed(&V2Request {
        partitions: vec![partition(0, 0, &[("keys", &["hello"])])],
        ..Default::default()
    });
    let started = Instant::now();
    let rotated = loop {
        let set = key_set(&channel, "").await.parse_keys().unwrap();
        if set[0].0 != old_id {
            break set;
        }
        assert!(started.elapsed() < DEADLINE, "no rotation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rotated[0].0, old_id.wrapping_add(1));
    assert_ne!(rotated[0].1, old_key);
    // After the grace period the old key id is unknown.
    let started = Instant::now();
    loop {
        let (message, _) = client::encrypt_request(old_id, &old_key, &request).unwrap();
        match oblivious(&channel, message).await {
            Err(e) if e.message().contains("unknown key id") => break,
            _ => {}
        }
        assert!(started.elapsed() < DEADLINE, "the old key is still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.logs().contains("HPKE key rotated"), "{}", server.logs());
}

#[tokio::test]
async fn a_caller_supplied_public_key_never_reaches_a_document() {
    let server = Server::tcp(&["--sample-data"]);
    let mut client = AttestationClient::new(server.channel().await);
    #[allow(deprecated)]
    let request = GetAttestationDocumentRequest {
        nonce: b"nonce".to_vec(),
        public_key: vec![4; 65],
        user_data: Vec::new(),
    };
    let err = client.get_attestation_document(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("public_key is not accepted"), "{}", err.message());
}
