//! The request path end to end, every piece real: HTTP/gRPC client -> envoy (the repository's
//! envoy.yaml, the generated descriptor set) -> vsockproxy ingress on 127.0.0.1 -> Unix socket
//! (standing in for vsock 16:50051) -> kv-server on its built-in sample data.

use std::time::Duration;

use e2e_tests::{Stack, http_get, http_request, wait_until};
use kv_proto::grpc::health::v1::HealthCheckRequest;
use kv_proto::grpc::health::v1::health_check_response::ServingStatus;
use kv_proto::grpc::health::v1::health_client::HealthClient;
use kv_proto::kv_server::v1::GetValuesRequest;
use kv_proto::kv_server::v1::key_value_service_client::KeyValueServiceClient;
use kv_proto::kv_server::v1::v1_single_lookup_result::SingleLookupResult;

const READY: Duration = Duration::from_secs(30);

#[test]
fn getvalues_over_http_returns_the_reference_json_shape() {
    let stack = Stack::start(&["--sample-data"]);
    stack.wait_serving(READY);
    let r = stack.get("/v1/getvalues?keys=hello,missing");
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(r.header("ad-auction-allowed"), Some("true"));
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")));
    let v = r.json();
    assert_eq!(v["keys"]["hello"]["value"], "world", "{v}");
    // A missing key is a NOT_FOUND status, not an empty value.
    assert_eq!(v["keys"]["missing"]["status"]["code"], 5, "{v}");
    assert!(v["keys"]["missing"].get("value").is_none(), "{v}");
    // camelCase, and empty maps printed rather than omitted.
    for field in ["renderUrls", "adComponentRenderUrls", "kvInternal", "perInterestGroupData"] {
        assert!(v[field].is_object(), "{field} missing from {v}");
    }
    for snake in ["render_urls", "ad_component_render_urls", "kv_internal", "per_interest_group_data"] {
        assert!(v.get(snake).is_none(), "snake_case {snake} in {v}");
    }
    // Repeated parameters work as well as comma-separated values.
    let r = stack.get("/v1/getvalues?keys=hello&keys=example-key");
    let v = r.json();
    assert_eq!(v["keys"]["hello"]["value"], "world", "{v}");
    assert_eq!(v["keys"]["example-key"]["value"], "example-value", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getvalues_over_grpc_through_envoy() {
    let stack = tokio::task::spawn_blocking(|| {
        let s = Stack::start(&["--sample-data"]);
        s.wait_serving(READY);
        s
    })
    .await
    .unwrap();
    let url = format!("http://{}", stack.envoy.listen);
    let mut client = KeyValueServiceClient::connect(url.clone()).await.expect("connect to envoy");
    let response = client
        .get_values(GetValuesRequest { keys: vec!["hello".into(), "missing".into()], ..Default::default() })
        .await
        .expect("GetValues through envoy")
        .into_inner();
    let hello = response.keys.get("hello").and_then(|r| r.single_lookup_result.clone());
    match hello {
        Some(SingleLookupResult::Value(v)) => {
            assert_eq!(v.kind, Some(prost_types::value::Kind::StringValue("world".into())))
        }
        other => panic!("hello: {other:?}"),
    }
    match response.keys.get("missing").and_then(|r| r.single_lookup_result.clone()) {
        Some(SingleLookupResult::Status(s)) => assert_eq!(s.code, 5),
        other => panic!("missing: {other:?}"),
    }
    // The gRPC health service passes through envoy unchanged too.
    let mut health = HealthClient::connect(url).await.unwrap();
    let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);
}

#[test]
fn healthcheck_is_not_serving_during_the_initial_load_and_serving_after() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    // kv-server's test hook holds the initial load for 4 s so the state is observable.
    let stack = Stack::start(&["--data-dir", &data_dir, "--test-initial-load-delay-ms", "4000"]);
    let r = stack.get("/healthcheck");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "NOT_SERVING", "{}", r.body);
    // The named load-balancer status follows the load too; the autoscaler one is alive at once.
    let r = stack.get("/healthcheck?service=loadbalancer-healthcheck");
    assert_eq!(r.json()["status"], "NOT_SERVING", "{}", r.body);
    let r = stack.get("/healthcheck?service=autoscaler-healthcheck");
    assert_eq!(r.json()["status"], "SERVING", "{}", r.body);
    // The load balancer's check only sees status codes: envoy's own /healthz says 503.
    assert_eq!(stack.get("/healthz").status, 503);
    stack.wait_serving(READY);
    let r = stack.get("/healthcheck?service=loadbalancer-healthcheck");
    assert_eq!(r.json()["status"], "SERVING", "{}", r.body);
    // envoy's active health check runs every 2 s: /healthz follows within a few seconds.
    let ok = wait_until(Duration::from_secs(10), || (stack.get("/healthz").status == 200).then_some(()));
    assert!(ok.is_some(), "/healthz never 200 after the load; envoy log:\n{}", stack.envoy.proc.logs());
}

#[test]
fn unknown_paths_get_404_and_malformed_queries_a_400_class_error() {
    let stack = Stack::start(&["--sample-data"]);
    stack.wait_serving(READY);
    for path in ["/nope", "/v1/getvalue?keys=a", "/v2/getvalues", "/kv_server.v1.KeyValueService/Nope"] {
        let r = stack.get(path);
        assert_eq!(r.status, 404, "{path}: {} {}", r.status, r.body);
    }
    // An unknown parameter, a non-repeated field given twice: client errors, never a 5xx.
    for path in
        ["/v1/getvalues?bogus=1", "/v1/getvalues?subkey=a&subkey=b", "/healthcheck?service=a&service=b"]
    {
        let r = stack.get(path);
        assert!((400..500).contains(&r.status), "{path}: {} {}", r.status, r.body);
    }
    // A body that is not JSON for a JSON-mapped method.
    let r = http_request(
        stack.envoy.listen,
        "POST",
        "/v1/attestation",
        &[("content-type", "application/json")],
        b"{not json",
    )
    .unwrap();
    assert!((400..500).contains(&r.status), "bad JSON body: {} {}", r.status, r.body);
}

/// envoy's access log has a line for every failed request (an HTTP error, or a gRPC error inside
/// an HTTP 200) and, of the successful ones, the share set by the runtime key
/// `access_log.success_sampling` (1 % by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_every_failure_and_the_configured_share_of_successes() {
    let stack = tokio::task::spawn_blocking(|| {
        let s = Stack::start(&["--sample-data"]);
        s.wait_serving(READY);
        s
    })
    .await
    .unwrap();
    let share = |percent: u32| {
        let path = format!("/runtime_modify?access_log.success_sampling={percent}");
        let r = http_request(stack.envoy.admin, "POST", &path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    };
    let lines = |marker: &str| stack.envoy.proc.logs().lines().filter(|l| l.contains(marker)).count();
    // The log is written asynchronously (flushed about once a second).
    let wait_lines = |marker: &str, n: usize| {
        wait_until(Duration::from_secs(10), || (lines(marker) >= n).then_some(()))
            .unwrap_or_else(|| panic!("{n} lines with {marker}; envoy log:\n{}", stack.envoy.proc.logs()));
    };

    share(0);
    for i in 0..20 {
        assert_eq!(stack.get(&format!("/v1/getvalues?keys=quiet{i}")).status, 200);
    }
    // An HTTP error (an unknown query parameter: 400 from the transcoder).
    assert_eq!(stack.get("/v1/getvalues?keys=http-error&bogus=1").status, 400);
    // A gRPC error in an HTTP 200: more keys than kv-server's limit (1,000 by default).
    let mut client = KeyValueServiceClient::connect(format!("http://{}", stack.envoy.listen)).await.unwrap();
    let too_many = GetValuesRequest { keys: vec![vec!["k"; 1001].join(",")], ..Default::default() };
    let status = client.get_values(too_many).await.expect_err("over the key limit");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    wait_lines("keys=http-error", 1);
    wait_lines("grpc=InvalidArgument", 1);
    assert_eq!(lines("keys=quiet"), 0, "successes logged at a share of 0 %");

    share(100);
    for i in 0..5 {
        assert_eq!(stack.get(&format!("/v1/getvalues?keys=loud{i}")).status, 200);
    }
    wait_lines("keys=loud", 5);
}

#[test]
fn request_size_limit_and_kv_content_type() {
    let stack = Stack::start(&["--sample-data"]);
    stack.wait_serving(READY);
    let big = vec![b'a'; 2 * 1024 * 1024];
    let r = http_request(
        stack.envoy.listen,
        "POST",
        "/v1/attestation",
        &[("content-type", "application/json")],
        &big,
    )
    .unwrap();
    assert_eq!(r.status, 413, "2 MiB body: {} {}", r.status, r.body);
    // Outside an enclave the server refuses attestation (no /dev/nsm) with a client-visible
    // error; what matters here is that it got there with the original content type.
    let r = http_request(
        stack.envoy.listen,
        "POST",
        "/v1/attestation",
        &[("content-type", "application/json; charset=utf-8")],
        br#"{"nonce":"AAEC"}"#,
    )
    .unwrap();
    assert!(r.status < 500 || r.status == 503, "attestation: {} {}", r.status, r.body);
    assert!(r.body.contains("/dev/nsm") || r.body.contains("enclave"), "{}", r.body);
    // envoy's access log records the kv-content-type header it sent upstream.
    let logged = wait_until(Duration::from_secs(10), || {
        stack.envoy.proc.logs().contains("kv-content-type=application/json; charset=utf-8").then_some(())
    });
    assert!(logged.is_some(), "kv-content-type not passed on; envoy log:\n{}", stack.envoy.proc.logs());
}

#[test]
fn kv_server_restart_behind_the_proxy_heals_without_restarting_envoy() {
    let mut stack = Stack::start(&["--sample-data"]);
    stack.wait_serving(READY);
    let envoy_pid = stack.envoy.proc.pid();
    assert_eq!(stack.get("/v1/getvalues?keys=hello").json()["keys"]["hello"]["value"], "world");

    stack.stop_kv_server();
    // While the server is down: a prompt 5xx from envoy (no hang), never a success.
    let r = stack.get("/v1/getvalues?keys=hello");
    assert!(r.status >= 500, "server down but got {} {}", r.status, r.body);

    stack.start_kv_server_again();
    let healed = wait_until(Duration::from_secs(20), || {
        let r = http_get(stack.envoy.listen, "/v1/getvalues?keys=hello").ok()?;
        (r.status == 200 && r.json()["keys"]["hello"]["value"] == "world").then_some(())
    });
    assert!(healed.is_some(), "no answer after the restart; envoy log:\n{}", stack.envoy.proc.logs());
    stack.envoy.proc.assert_running();
    assert_eq!(stack.envoy.proc.pid(), envoy_pid);

    // And again with a restart in one go (stop + start back to back).
    stack.restart_kv_server();
    let healed = wait_until(Duration::from_secs(20), || {
        let r = http_get(stack.envoy.listen, "/v1/getvalues?keys=hello").ok()?;
        (r.status == 200).then_some(())
    });
    assert!(healed.is_some(), "no answer after the second restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_pass_envoy_unbuffered() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let stack = tokio::task::spawn_blocking(|| {
        let s = Stack::start(&["--sample-data"]);
        s.wait_serving(READY);
        s
    })
    .await
    .unwrap();
    let url = format!("http://{}", stack.envoy.listen);

    // Reflection is a bidirectional stream. The request stream stays open while the answer is
    // awaited: if envoy buffered the request (the size-limit filter does on other routes) no
    // answer would come before the client half-closes.
    let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    })
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        let mut answers = reflection
            .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("reflection call")
            .into_inner();
        answers.message().await
    })
    .await
    .expect("no reflection answer while the request stream is open: buffered?")
    .unwrap()
    .expect("reflection stream ended");
    let names: Vec<String> = match first.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    };
    for want in ["kv_server.v1.KeyValueService", "grpc.health.v1.Health", "enclave.v1.Attestation"] {
        assert!(names.iter().any(|n| n == want), "{want} not listed: {names:?}");
    }
    drop(tx);

    // Health Watch is a server stream: its first status arrives and the stream stays open past
    // the 10 s unary route timeout would allow (checked by waiting for a second update: none
    // comes, and the stream is not reset meanwhile).
    let mut health = HealthClient::connect(url).await.unwrap();
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    let status = watch.message().await.unwrap().expect("watch stream ended at once");
    assert_eq!(status.status, ServingStatus::Serving as i32);
    let next = tokio::time::timeout(Duration::from_secs(12), watch.message()).await;
    assert!(next.is_err(), "watch stream ended or errored early: {next:?}");
}
