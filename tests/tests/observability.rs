//! OTLP export end to end: the real kv-server exports to an OTLP receiver standing in for the
//! collector (`support/otlp_receiver.rs`); the counts it receives match the requests made, the
//! request span joins the caller's trace (W3C traceparent), and with the receiver gone the server
//! keeps answering and counts what it dropped.

#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use e2e_tests::{
    EnvoyTarget, Proc, envoy_bin, free_port, http_get, prometheus_text, render_envoy_config, run_vsockproxy,
    system_tool, wait_until, workspace_bin,
};
use kv_proto::kv_server::v1::GetValuesRequest;
use kv_proto::kv_server::v1::key_value_service_client::KeyValueServiceClient;
use otlp_receiver::{Receiver, attr, attr_text, latest_value};
use tonic::transport::Channel;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

fn start_kv_server(dir: &std::path::Path, collector: SocketAddr) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(workspace_bin("kv-server"));
    cmd.args(["--sample-data", "--listen", "tcp://127.0.0.1:0"])
        .arg("--otlp-endpoint")
        .arg(format!("tcp://{collector}"))
        .args(["--otlp-interval-ms", "200", "--otlp-instance-id", "i-0123test", "--otlp-pcr0", "ab12"])
        .args(["--otlp-log-level", "info"])
        .env("RUST_LOG", "info");
    let mut kv = Proc::spawn("kv-server", cmd, &dir.join("kv-server.log"));
    let addr = wait_until(Duration::from_secs(30), || {
        kv.assert_running();
        let logs = kv.logs();
        let line = logs.lines().find(|l| l.starts_with("kv-server listening on tcp://"))?;
        line.trim_start_matches("kv-server listening on tcp://").trim().parse::<SocketAddr>().ok()
    });
    let addr = addr.unwrap_or_else(|| panic!("kv-server never listened; log:\n{}", kv.logs()));
    (kv, addr)
}

fn body_text(record: &opentelemetry_proto::tonic::logs::v1::LogRecord) -> String {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => s.clone(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn get_values(client: &mut KeyValueServiceClient<Channel>, traceparent: Option<&str>) {
    let mut request = tonic::Request::new(GetValuesRequest {
        keys: vec!["hello,no-such-key".into()],
        ..Default::default()
    });
    if let Some(tp) = traceparent {
        request.metadata_mut().insert("traceparent", tp.parse().expect("ascii"));
    }
    let response = client.get_values(request).await.expect("GetValues").into_inner();
    assert_eq!(response.keys.len(), 2);
}

#[test]
fn kv_server_exports_metrics_and_spans_and_survives_the_collector_going_away() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut receiver = Receiver::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let collector = receiver.addr;
    let (mut kv, kv_addr) = start_kv_server(dir.path(), collector);
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut client = client_rt.block_on(async {
        KeyValueServiceClient::connect(format!("http://{kv_addr}")).await.expect("connect to kv-server")
    });

    const N: u64 = 6;
    client_rt.block_on(async {
        get_values(&mut client, Some(&format!("00-{TRACE_ID}-{PARENT_SPAN}-01"))).await;
        for _ in 1..N {
            get_values(&mut client, None).await;
        }
    });

    // Cumulative counters: the newest export says N requests, 2N keys, N of them not found.
    let counted = wait_until(Duration::from_secs(30), || {
        let m = receiver.metrics();
        let ok = latest_value(&m, "kv_server.requests", &[("rpc.grpc.status_code", "0")]) == Some(N as f64)
            && latest_value(&m, "kv_server.keys.looked_up", &[]) == Some(2.0 * N as f64)
            && latest_value(&m, "kv_server.keys.not_found", &[]) == Some(N as f64)
            && latest_value(&m, "kv_server.request.duration", &[("rpc.method", "GetValues")])
                == Some(N as f64)
            && receiver.spans().len() as u64 >= N;
        ok.then_some(())
    });
    assert!(
        counted.is_some(),
        "the receiver never got the expected counts; {} metric exports, {} spans; kv-server log:\n{}",
        receiver.metrics().len(),
        receiver.spans().len(),
        kv.logs()
    );
    let m = receiver.metrics();
    assert!(latest_value(&m, "kv_server.store.keys", &[]).is_some_and(|k| k > 0.0), "store size exported");
    assert!(latest_value(&m, "kv_server.store.bytes", &[]).is_some_and(|b| b > 0.0), "store bytes exported");

    // kv-server's own log lines arrive as OTLP logs (the console has them too), never key data.
    let logs = wait_until(Duration::from_secs(30), || {
        let logs = receiver.logs();
        logs.iter().any(|(_, r)| body_text(r).contains("serving the built-in sample data")).then_some(logs)
    });
    let logs =
        logs.unwrap_or_else(|| panic!("no OTLP log of the sample data; received {:?}", receiver.logs()));
    let (resource, record) = logs
        .iter()
        .find(|(_, r)| body_text(r).contains("serving the built-in sample data"))
        .expect("found above");
    assert_eq!(record.severity_text, "INFO");
    assert_eq!(attr(resource, "service.name").and_then(attr_text).as_deref(), Some("kv-server"));
    assert!(kv.logs().contains("serving the built-in sample data"), "the console has the same line");
    for (_, r) in &logs {
        let text = format!("{r:?}");
        assert!(!text.contains("no-such-key"), "key data in a log record: {text}");
    }
    let resource = &m[0].resource_metrics[0].resource.as_ref().expect("resource").attributes;
    for (key, want) in [
        ("service.name", "kv-server"),
        ("service.instance.id", "i-0123test"),
        ("aws.nitro_enclave.pcr0", "ab12"),
    ] {
        assert_eq!(
            attr(resource, key).and_then(attr_text).as_deref(),
            Some(want),
            "resource attribute {key}"
        );
    }

    // The span of the first request joined the caller's trace; the others started their own.
    let spans = receiver.spans();
    let joined: Vec<_> = spans.iter().filter(|(_, s)| hex(&s.trace_id) == TRACE_ID).collect();
    assert_eq!(joined.len(), 1, "exactly one span in the caller's trace: {spans:?}");
    let (_, span) = joined[0];
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN);
    assert_eq!(span.name, "kv_server.v1.KeyValueService/GetValues");
    assert_eq!(attr(&span.attributes, "kv.keys").and_then(attr_text).as_deref(), Some("2"));
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    for (_, s) in &spans {
        assert_eq!(s.trace_id.len(), 16);
        assert_eq!(s.span_id.len(), 8);
        // Spans never carry the keys or values asked for.
        let text = format!("{:?}", s.attributes);
        assert!(!text.contains("hello") && !text.contains("no-such-key"), "key data in a span: {text}");
    }

    // More spans than one export call carries (2048) all arrive: batches go out as they fill.
    const BURST: u64 = 2600;
    client_rt.block_on(async {
        for _ in 0..BURST {
            get_values(&mut client, None).await;
        }
    });
    let all =
        wait_until(Duration::from_secs(60), || (receiver.spans().len() as u64 >= N + BURST).then_some(()));
    assert!(all.is_some(), "{} of {} spans arrived", receiver.spans().len(), N + BURST);

    // The collector goes away: every request is still answered (a bounded loop, no timing).
    receiver.stop();
    const M: u64 = 300;
    client_rt.block_on(async {
        for _ in 0..M {
            get_values(&mut client, None).await;
        }
    });
    // Metrics and spans are exported by separate tasks: wait until both have failed, so that the
    // spans of the 300 calls were dropped (and counted) before the collector comes back.
    let failing = wait_until(Duration::from_secs(30), || {
        let logs = kv.logs();
        let failed = |signal: &str| {
            logs.lines()
                .any(|l| l.contains("OTLP export failing") && l.contains(&format!("signal=\"{signal}\"")))
        };
        (failed("metrics") && failed("traces")).then_some(())
    });
    assert!(failing.is_some(), "kv-server never noticed the collector was gone; log:\n{}", kv.logs());
    kv.assert_running();

    // A collector back on the same address gets the whole count and the drops.
    let receiver = Receiver::start(collector);
    let recovered = wait_until(Duration::from_secs(30), || {
        let m = receiver.metrics();
        let requests = latest_value(&m, "kv_server.requests", &[("rpc.grpc.status_code", "0")])?;
        let dropped = latest_value(&m, "kv_server.telemetry.spans_dropped", &[])?;
        let failed = latest_value(&m, "kv_server.telemetry.exports_failed", &[("signal", "metrics")])?;
        (requests == (N + BURST + M) as f64 && dropped > 0.0 && failed > 0.0).then_some((dropped, failed))
    });
    let (dropped, failed) = recovered.unwrap_or_else(|| {
        panic!("no complete export after the collector came back; kv-server log:\n{}", kv.logs())
    });
    eprintln!("while the collector was down: {dropped} spans dropped, {failed} metric exports failed");
    // The receiver stores the request before kv-server has its answer and logs: wait for the line.
    let logged =
        wait_until(Duration::from_secs(30), || kv.logs().contains("OTLP export working").then_some(()));
    assert!(logged.is_some(), "recovery is logged; kv-server log:\n{}", kv.logs());
}

/// Starts the real vsockproxy with the OTLP mapping of the reference deployment, on loopback:
/// `listen` (standing in for vsock port 4317) -> the receiver, allowed by the egress policy.
/// Returns it, the mapping's address and its admin endpoint (whose `/metrics` the collector
/// scrapes).
fn start_vsockproxy_mapping(dir: &std::path::Path, collector: SocketAddr) -> (Proc, SocketAddr, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[admin]\nlisten = \"tcp://{admin}\"\n\n[[mapping]]\nname = \"otel\"\nlisten = \"tcp://{listen}\"\n\
         upstream = \"tcp://{collector}\"\n\n[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"{}\"]\n",
        collector.port()
    );
    (run_vsockproxy(dir, &config, admin), listen, admin)
}

/// The repository's envoy.yaml rendered for the test, with its `otel_collector` cluster pointed
/// at the receiver; returns envoy and its listener address.
fn start_envoy(dir: &std::path::Path, upstream_port: u16, collector: SocketAddr) -> (Proc, SocketAddr) {
    let descriptor = dir.join("query_api_descriptor_set.pb");
    let status = Command::new(workspace_bin("kv-server"))
        .args(["descriptor-set", "--out"])
        .arg(&descriptor)
        .status()
        .expect("run kv-server descriptor-set");
    assert!(status.success(), "kv-server descriptor-set: {status}");
    let target = EnvoyTarget { listen_port: 0, admin_port: 0, upstream_port, descriptor_set: descriptor };
    let rendered = render_envoy_config(&target).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rendered.matches(OTEL_COLLECTOR_PORT).count(), 1, "envoy.yaml names the collector port once");
    let rendered = rendered.replace(OTEL_COLLECTOR_PORT, &format!("port_value: {}", collector.port()));
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, rendered).expect("write envoy config");
    let admin_path = dir.join("envoy-admin-address");
    let mut cmd = Command::new(envoy_bin());
    cmd.arg("--config-path")
        .arg(&config)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .arg("--base-id")
        .arg((std::process::id() % 100_000 + 1).to_string())
        .args(["--log-level", "warn", "--concurrency", "1", "--disable-hot-restart"]);
    let mut proc = Proc::spawn("envoy", cmd, &dir.join("envoy.log"));
    let admin = wait_until(Duration::from_secs(30), || {
        proc.assert_running();
        std::fs::read_to_string(&admin_path).ok()?.trim().parse::<SocketAddr>().ok()
    })
    .unwrap_or_else(|| panic!("envoy admin address never written; log:\n{}", proc.logs()));
    let listen = wait_until(Duration::from_secs(30), || {
        proc.assert_running();
        let v = http_get(admin, "/listeners?format=json").ok()?.json();
        let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
        (port != 0).then(|| SocketAddr::from(([127, 0, 0, 1], port as u16)))
    })
    .unwrap_or_else(|| panic!("envoy listener never bound; log:\n{}", proc.logs()));
    let live =
        wait_until(Duration::from_secs(30), || (http_get(admin, "/ready").ok()?.status == 200).then_some(()));
    assert!(live.is_some(), "envoy never LIVE; log:\n{}", proc.logs());
    // envoy.yaml traces 1 % of requests; this test follows every one, through the runtime
    // override an operator would use (a whole percentage).
    let set = Command::new(system_tool("curl"))
        .args(["-fsS", "-X", "POST"])
        .arg(format!("http://{admin}/runtime_modify?tracing.random_sampling=100"))
        .output()
        .expect("run curl");
    assert!(set.status.success(), "runtime_modify: {}", String::from_utf8_lossy(&set.stderr));
    let runtime = http_get(admin, "/runtime").expect("GET /runtime").body;
    assert!(runtime.contains("tracing.random_sampling"), "{runtime}");
    (proc, listen)
}

/// envoy.yaml's collector port (the `otel_collector` cluster).
const OTEL_COLLECTOR_PORT: &str = "port_value: 4317";

#[test]
fn envoy_span_and_kv_server_span_share_a_trace_through_the_proxy_mapping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let (mut proxy, mapping, proxy_admin) = start_vsockproxy_mapping(dir.path(), receiver.addr);
    // kv-server exports through the proxy's mapping, as it does from the enclave (vsock 3:4317).
    let (mut kv, kv_addr) = start_kv_server(dir.path(), mapping);
    let (mut envoy, envoy_addr) = start_envoy(dir.path(), kv_addr.port(), receiver.addr);

    let answered = wait_until(Duration::from_secs(30), || {
        let r = http_get(envoy_addr, "/v1/getvalues?keys=hello").ok()?;
        (r.status == 200 && r.body.contains("world")).then_some(())
    });
    assert!(answered.is_some(), "no answer through envoy; envoy log:\n{}", envoy.logs());

    // Some kv-server span has the trace id of an envoy span, and that envoy span as its parent.
    let joined = wait_until(Duration::from_secs(60), || {
        let spans = receiver.spans();
        let service = |r: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
            attr(r, "service.name").and_then(attr_text).unwrap_or_default()
        };
        let envoy_spans: Vec<_> =
            spans.iter().filter(|(r, _)| service(r) == "envoy").map(|(_, s)| s).collect();
        spans.iter().filter(|(r, _)| service(r) == "kv-server").find_map(|(_, kv_span)| {
            envoy_spans
                .iter()
                .find(|e| e.trace_id == kv_span.trace_id)
                .map(|e| (hex(&e.trace_id), (*e).clone(), kv_span.clone()))
        })
    });
    let Some((trace, envoy_span, kv_span)) = joined else {
        panic!(
            "no kv-server span in an envoy trace; spans: {:?}\nenvoy log:\n{}\nkv-server log:\n{}\nvsockproxy log:\n{}",
            receiver.spans().iter().map(|(_, s)| (&s.name, hex(&s.trace_id))).collect::<Vec<_>>(),
            envoy.logs(),
            kv.logs(),
            proxy.logs()
        )
    };
    eprintln!("trace {trace}: envoy span {:?} -> kv-server span {:?}", envoy_span.name, kv_span.name);
    assert_eq!(kv_span.parent_span_id.len(), 8, "the kv-server span has a parent");
    // kv-server metrics came through the mapping too.
    let counted = wait_until(Duration::from_secs(30), || {
        latest_value(&receiver.metrics(), "kv_server.requests", &[("rpc.grpc.status_code", "0")])
            .filter(|n| *n >= 1.0)
    });
    assert!(counted.is_some(), "no kv-server request count through the mapping");
    // vsockproxy's own series are what the collector scrapes from its admin endpoint: valid
    // Prometheus text, in which the mapping accepted kv-server's connection.
    let scraped = http_get(proxy_admin, "/metrics").expect("GET vsockproxy /metrics");
    assert_eq!(scraped.status, 200, "{}", scraped.body);
    let content_type = scraped.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "Content-Type {content_type:?}");
    let exposition = prometheus_text::parse(&scraped.body)
        .unwrap_or_else(|e| panic!("vsockproxy /metrics is not Prometheus text: {e}\n{}", scraped.body));
    assert_eq!(
        exposition.types.get("vsockproxy_connections_accepted_total").map(String::as_str),
        Some("counter")
    );
    let accepted: Vec<f64> = exposition
        .find("vsockproxy_connections_accepted_total", &[("listener", "otel"), ("kind", "mapping")])
        .map(|s| s.value)
        .collect();
    assert!(
        accepted.len() == 1 && accepted[0] > 0.0,
        "vsockproxy_connections_accepted_total{{listener=\"otel\"}}: {accepted:?}\n{}\nvsockproxy log:\n{}",
        scraped.body,
        proxy.logs()
    );
    kv.assert_running();
    proxy.assert_running();
    envoy.assert_running();
}
