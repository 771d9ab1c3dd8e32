//! The real `kv-server` binary on loopback TCP and Unix sockets, queried with the generated tonic
//! clients: GetValues, health across the initial load, a corrupt delta while serving, attestation
//! without NSM, reflection, and configuration errors.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Server};
use futures::StreamExt;
use kv_server::proto::enclave::v1::GetAttestationDocumentRequest;
use kv_server::proto::enclave::v1::attestation_client::AttestationClient;
use kv_server::proto::grpc::health::v1::HealthCheckRequest;
use kv_server::proto::grpc::health::v1::health_check_response::ServingStatus;
use kv_server::proto::grpc::health::v1::health_client::HealthClient;
use kv_server::proto::kv_server::v1::key_value_service_client::KeyValueServiceClient;
use kv_server::proto::kv_server::v1::v1_single_lookup_result::SingleLookupResult;
use kv_server::proto::kv_server::v1::{GetValuesRequest, GetValuesResponse, V1SingleLookupResult};
use prost_types::value::Kind;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(20);

fn string(s: &str) -> Option<SingleLookupResult> {
    Some(SingleLookupResult::Value(prost_types::Value { kind: Some(Kind::StringValue(s.into())) }))
}

fn result(
    map: &std::collections::HashMap<String, V1SingleLookupResult>,
    key: &str,
) -> Option<SingleLookupResult> {
    map.get(key).and_then(|r| r.single_lookup_result.clone())
}

fn is_not_found(r: Option<SingleLookupResult>) -> bool {
    matches!(r, Some(SingleLookupResult::Status(s)) if s.code == 5)
}

async fn get(client: &mut KeyValueServiceClient<Channel>, keys: &str) -> GetValuesResponse {
    client
        .get_values(GetValuesRequest { keys: vec![keys.into()], ..Default::default() })
        .await
        .expect("GetValues")
        .into_inner()
}

async fn check(client: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    client.check(HealthCheckRequest { service: service.into() }).await.expect("Check").into_inner().status()
}

/// Writes a data file under a hidden name and renames it, as an operator should.
fn put_file(dir: &Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

const HEADER: &str = "key,mutation_type,logical_commit_time,value,value_type\n";

#[tokio::test]
async fn get_values_on_sample_data_splits_keys_and_reports_missing_ones() {
    let server = Server::tcp(&["--sample-data", "--max-keys-per-request", "5"]);
    let mut client = KeyValueServiceClient::new(server.channel().await);
    let response = client
        .get_values(GetValuesRequest {
            keys: vec!["hello,example-key".into(), "missing".into()],
            render_urls: vec!["example-set".into()],
            interest_group_names: vec!["interest-group-1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result(&response.keys, "hello"), string("world"));
    assert_eq!(result(&response.keys, "example-key"), string("example-value"));
    assert!(is_not_found(result(&response.keys, "missing")), "{:?}", response.keys);
    let Some(SingleLookupResult::Value(prost_types::Value { kind: Some(Kind::ListValue(list)) })) =
        result(&response.render_urls, "example-set")
    else {
        panic!("a set is a list: {:?}", response.render_urls);
    };
    let members: Vec<_> = list.values.iter().map(|v| v.kind.clone()).collect();
    assert_eq!(members, ["alpha", "beta", "gamma"].map(|m| Some(Kind::StringValue(m.into()))));
    assert!(matches!(
        result(&response.per_interest_group_data, "interest-group-1"),
        Some(SingleLookupResult::Value(prost_types::Value { kind: Some(Kind::StructValue(_)) }))
    ));

    let err = client
        .get_values(GetValuesRequest { keys: vec!["a,b,c,d,e,f".into()], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("6 keys"), "{}", err.message());
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}", dir.path().join("kv.sock").display());
    let server = Server::start(&["--sample-data", "--listen", &socket]);
    assert_eq!(server.endpoint, socket);
    let mut client = KeyValueServiceClient::new(server.channel().await);
    assert_eq!(result(&get(&mut client, "hello").await.keys, "hello"), string("world"));
}

#[tokio::test]
async fn health_turns_serving_for_the_load_balancer_after_the_initial_load() {
    let dir = tempfile::tempdir().unwrap();
    put_file(dir.path(), "SNAPSHOT_0000000000000010", &format!("{HEADER}k1,UPDATE,10,v1,string\n"));
    put_file(dir.path(), "DELTA_0000000000000011", &format!("{HEADER}k2,UPDATE,11,v2,string\n"));
    let data_dir = dir.path().to_str().unwrap();
    let server = Server::tcp(&["--data-dir", data_dir, "--test-initial-load-delay-ms", "1500"]);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut kv = KeyValueServiceClient::new(channel);

    let mut watch = health
        .watch(HealthCheckRequest { service: "loadbalancer-healthcheck".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check(&mut health, "autoscaler-healthcheck").await, ServingStatus::Serving);
    assert_eq!(check(&mut health, "loadbalancer-healthcheck").await, ServingStatus::NotServing);
    assert_eq!(check(&mut health, "").await, ServingStatus::NotServing);
    assert!(is_not_found(result(&get(&mut kv, "k1").await.keys, "k1")), "nothing loaded yet");
    let err = health.check(HealthCheckRequest { service: "no-such-service".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let first = watch.next().await.unwrap().unwrap().status();
    assert_eq!(first, ServingStatus::NotServing);
    let next = tokio::time::timeout(DEADLINE, watch.next()).await.expect("SERVING within the deadline");
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::Serving);
    assert_eq!(check(&mut health, "").await, ServingStatus::Serving);
    let response = get(&mut kv, "k1,k2").await;
    assert_eq!(result(&response.keys, "k1"), string("v1"));
    assert_eq!(result(&response.keys, "k2"), string("v2"), "the delta after the snapshot is loaded too");
    assert!(server.log_arrives("initial data load finished", DEADLINE).await, "{}", server.logs());
}

#[tokio::test]
async fn a_corrupt_delta_is_rejected_whole_while_older_data_stays_served() {
    let dir = tempfile::tempdir().unwrap();
    put_file(
        dir.path(),
        "SNAPSHOT_0000000000000001",
        &format!("{HEADER}stay,UPDATE,1,original,string\ngone,UPDATE,1,x,string\n"),
    );
    let server = Server::tcp(&["--data-dir", dir.path().to_str().unwrap(), "--poll-interval-ms", "100"]);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut kv = KeyValueServiceClient::new(channel);
    let started = Instant::now();
    while check(&mut health, "loadbalancer-healthcheck").await != ServingStatus::Serving {
        assert!(started.elapsed() < DEADLINE, "initial load did not finish: {}", server.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Record 1 is valid, record 2 is not: none of the file may be applied.
    put_file(
        dir.path(),
        "DELTA_0000000000000002",
        &format!("{HEADER}stay,UPDATE,2,overwritten,string\nbad,UPDATE,not-a-time,v,string\n"),
    );
    put_file(
        dir.path(),
        "DELTA_0000000000000003",
        &format!("{HEADER}gone,DELETE,3,,string\nnew,UPDATE,3,fresh,string\n"),
    );
    let started = Instant::now();
    loop {
        let response = get(&mut kv, "new").await;
        if result(&response.keys, "new") == string("fresh") {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the good delta was not loaded: {}", server.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = get(&mut kv, "stay,gone,bad").await;
    assert_eq!(result(&response.keys, "stay"), string("original"), "nothing of the corrupt delta applied");
    assert!(is_not_found(result(&response.keys, "bad")));
    assert!(is_not_found(result(&response.keys, "gone")), "the later delta's delete applied");
    let logs = server.logs();
    let rejection = logs
        .lines()
        .find(|l| l.contains("data file rejected"))
        .unwrap_or_else(|| panic!("no rejection logged: {logs}"));
    assert!(rejection.contains("DELTA_0000000000000002"), "{rejection}");
    assert!(rejection.contains("record 2"), "{rejection}");
    assert!(rejection.contains("files_rejected_total=1"), "{rejection}");
    assert_eq!(check(&mut health, "loadbalancer-healthcheck").await, ServingStatus::Serving);
}

/// Issue 14 item 5, end to end: `--max-file-bytes` reaches the loader; an oversize file is
/// rejected and counted like a corrupt one, and the files after it load.
#[tokio::test]
async fn a_file_over_max_file_bytes_is_rejected_and_later_files_load() {
    let dir = tempfile::tempdir().unwrap();
    put_file(dir.path(), "SNAPSHOT_0000000000000001", &format!("{HEADER}a,UPDATE,1,one,string\n"));
    put_file(
        dir.path(),
        "DELTA_0000000000000002",
        &format!("{HEADER}{}", "b,UPDATE,2,two,string\n".repeat(20)),
    );
    put_file(dir.path(), "DELTA_0000000000000003", &format!("{HEADER}c,UPDATE,3,three,string\n"));
    let server = Server::tcp(&["--data-dir", dir.path().to_str().unwrap(), "--max-file-bytes", "200"]);
    let mut kv = KeyValueServiceClient::new(server.channel().await);
    let started = Instant::now();
    while result(&get(&mut kv, "c").await.keys, "c") != string("three") {
        assert!(
            started.elapsed() < DEADLINE,
            "the file after the oversize one was not loaded: {}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = get(&mut kv, "a,b").await;
    assert_eq!(result(&response.keys, "a"), string("one"));
    assert!(is_not_found(result(&response.keys, "b")), "nothing of the oversize file applied");
    let logs = server.logs();
    let rejection = logs
        .lines()
        .find(|l| l.contains("data file rejected"))
        .unwrap_or_else(|| panic!("no rejection logged: {logs}"));
    assert!(rejection.contains("DELTA_0000000000000002"), "{rejection}");
    assert!(rejection.contains("larger than max_file_bytes (200 bytes)"), "{rejection}");
    assert!(rejection.contains("files_rejected_total=1"), "{rejection}");
}

#[tokio::test]
async fn attestation_without_nsm_fails_with_failed_precondition() {
    if Path::new("/dev/nsm").exists() {
        return; // a real enclave: the document would be real
    }
    let server = Server::tcp(&["--sample-data"]);
    let mut client = AttestationClient::new(server.channel().await);
    let err = client
        .get_attestation_document(GetAttestationDocumentRequest {
            nonce: b"nonce".to_vec(),
            user_data: b"data".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("/dev/nsm"), "{}", err.message());
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let server = Server::tcp(&["--sample-data"]);
    let mut client = ServerReflectionClient::new(server.channel().await);
    let ask = |message: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol("kv_server.v1.KeyValueService".into())),
        ]))
        .await
        .unwrap()
        .into_inner();
    let list: ServerReflectionResponse = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = list.message_response else {
        panic!("list services answer expected");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["kv_server.v1.KeyValueService", "grpc.health.v1.Health", "enclave.v1.Attestation"] {
        assert!(names.iter().any(|n| n == service), "{service} missing from {names:?}");
    }
    let file = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
        panic!("file descriptor answer expected");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// Issue 14 item 12: tonic leaves HTTP/2 concurrent streams unlimited unless told. The server's
/// first SETTINGS frame, read off a raw connection, must announce the cap.
#[tokio::test]
async fn the_http2_server_announces_a_concurrent_stream_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: u8 = 0x4;
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;

    let server = Server::tcp(&["--sample-data"]);
    let address = server.endpoint.strip_prefix("tcp://").unwrap().to_string();
    let mut conn = tokio::net::TcpStream::connect(address).await.unwrap();
    // The client preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    conn.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]).await.unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(DEADLINE, conn.read_exact(&mut header)).await.unwrap().unwrap();
    assert_eq!(header[3], SETTINGS, "the server's preface is a SETTINGS frame");
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
        .collect();
    let value = |id| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(
        value(MAX_CONCURRENT_STREAMS),
        Some(kv_server::server::MAX_CONCURRENT_STREAMS),
        "settings {settings:?}"
    );
    assert!(value(MAX_HEADER_LIST_SIZE).is_some_and(|v| v <= 16 * 1024), "settings {settings:?}");
}

/// Issue 14 item 12: the HTTP/2 rapid-reset mitigation (RUSTSEC-2024-0003) stays on. A client
/// that opens streams and resets them at once, faster than the server accepts them, gets GOAWAY
/// with ENHANCE_YOUR_CALM once it passes `MAX_PENDING_ACCEPT_RESET_STREAMS`, instead of keeping
/// the server busy setting up calls that are already gone.
#[tokio::test]
async fn a_rapid_reset_flood_gets_goaway_enhance_your_calm() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const END_HEADERS: u8 = 0x4;
    const CANCEL: u32 = 0x8;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    let server = Server::tcp(&["--sample-data"]);
    let address = server.endpoint.strip_prefix("tcp://").unwrap().to_string();
    let mut conn = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend(frame(SETTINGS, 0, 0, &[]));
    // HPACK static table: :method POST (3), :scheme http (6), :path / (4).
    let request_headers = [0x83, 0x86, 0x84];
    let streams = 10 * kv_server::server::MAX_PENDING_ACCEPT_RESET_STREAMS as u32;
    for i in 0..streams {
        let id = 2 * i + 1;
        flood.extend(frame(HEADERS, END_HEADERS, id, &request_headers));
        flood.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The server may close the connection before it has read all of this.
    let _ = conn.write_all(&flood).await;
    let goaway = tokio::time::timeout(DEADLINE, async {
        loop {
            let mut header = [0u8; 9];
            conn.read_exact(&mut header).await.ok()?;
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            conn.read_exact(&mut payload).await.ok()?;
            if header[3] == GOAWAY {
                return Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
            }
        }
    })
    .await
    .expect("an answer within the deadline");
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "GOAWAY's error code");
}

/// Issue 14 item 12: a connection without calls held its slot forever (it answers the
/// keepalive PINGs), so idle clients could hold all connection slots. Now a connection that
/// carries no call for `idle_timeout_secs` is closed, while one with an open call (a health Watch
/// stream) stays.
#[tokio::test]
async fn a_connection_without_calls_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::tcp(&["--sample-data", "--idle-timeout-secs", "1"]);
    let address = server.endpoint.strip_prefix("tcp://").unwrap().to_string();

    let mut watch = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest { service: "autoscaler-healthcheck".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);

    let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    idle.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    let opened = Instant::now();
    let mut sink = Vec::new();
    // Everything the server sends (its SETTINGS, the ack), then the end of the stream.
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut sink)).await;
    let closed_after = opened.elapsed();
    assert!(read.is_ok(), "the idle connection was still open after 10 s");
    assert!(closed_after >= Duration::from_millis(900), "closed too early: {closed_after:?}");

    // The Watch stream's connection is past the timeout too, but carries a call: still open.
    let next = tokio::time::timeout(Duration::from_millis(500), watch.message()).await;
    assert!(next.is_err(), "the Watch stream ended or failed: {next:?}");
}

#[test]
fn descriptor_set_subcommand_writes_the_built_in_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("query_api_descriptor_set.pb");
    let status = Command::new(BIN).args(["descriptor-set", "--out"]).arg(&out).status().unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes, kv_server::DESCRIPTOR_SET);
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(bytes.as_slice()).unwrap();
    let files: Vec<&str> = set.file.iter().filter_map(|f| f.name.as_deref()).collect();
    for needed in ["google/api/annotations.proto", "google/api/http.proto", "kv_server/v1/get_values.proto"] {
        assert!(files.contains(&needed), "{needed} missing from {files:?}");
    }
}

#[test]
fn bad_configuration_exits_non_zero_before_serving() {
    for (args, needle) in [
        (&["--sample-data", "--max-keys-per-request", "0"][..], "--max-keys-per-request"),
        (&["--sample-data", "--listen", "tcp://127.0.0.1:notaport"][..], "notaport"),
        (&["--data-dir", "/nonexistent/kv-server-test"][..], "/nonexistent/kv-server-test"),
    ] {
        let output = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "nothing served: {args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Every setting has an environment variable: below the flag, above the file, and named in
    // errors (a value clap could not parse as well as one the checks refuse).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kv.toml");
    std::fs::write(&config, "sample_data = true\nmax_keys_per_request = 0\n").unwrap();
    let config = config.to_str().unwrap();
    for (env, args, needle) in [
        ("0", &["--sample-data"][..], "environment variable KV_MAX_KEYS_PER_REQUEST: 0 is outside"),
        ("many", &["--sample-data"][..], "environment variable KV_MAX_KEYS_PER_REQUEST: \"many\""),
        ("5", &["--config", config, "--max-request-bytes", "10"][..], "--max-request-bytes"),
        (
            "0",
            &["--sample-data", "--max-keys-per-request", "5", "--max-request-bytes", "10"][..],
            "--max-request-bytes",
        ),
    ] {
        let output = Command::new(BIN).args(args).env("KV_MAX_KEYS_PER_REQUEST", env).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{env} {args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{env} {args:?}: {stderr}");
    }
    let output = Command::new(BIN).args(["--config", config]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("kv.toml key `max_keys_per_request` (line 2)"), "{stderr}");
    // The parent CID enclave-init hands over is checked like any other setting.
    let output = Command::new(BIN).arg("--sample-data").env("ENCLAVE_PARENT_CID", "one").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "nothing served");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("environment variable ENCLAVE_PARENT_CID") && stderr.contains("\"one\""),
        "{stderr}"
    );
}

#[test]
fn help_lists_every_flag_with_its_environment_variable_and_file_key() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    // An option's entry runs from its `--flag` line to the next one.
    let mut entries: Vec<String> = Vec::new();
    for line in help.lines().skip_while(|l| !l.starts_with("Options:")).skip(1) {
        match entries.last_mut() {
            Some(entry) if !line.trim_start().starts_with('-') => entry.push_str(line),
            _ => entries.push(line.to_string()),
        }
    }
    let mut flags = 0;
    for entry in &entries {
        let flag = entry.split_whitespace().find(|w| w.starts_with("--")).unwrap_or_default();
        if ["--help", "--version"].contains(&flag) {
            continue;
        }
        flags += 1;
        assert!(entry.contains("[env: KV_"), "{flag} has no environment variable: {entry}");
        assert!(entry.contains("[file: ") || flag == "--config", "{flag} has no file key: {entry}");
    }
    assert!(flags >= 36, "{flags} flags in:\n{help}");
}
