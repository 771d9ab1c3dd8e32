//! The S3 data source end to end with real components: `moto_server` (the AWS API emulator) on
//! loopback, the real `vsockproxy` with a SOCKS5 listener and a policy that allows only the
//! emulator, and the real `kv-server` reaching the emulator only through that proxy
//! (`--egress-socks5`). Static test credentials, region us-east-1; never a real AWS endpoint.
//!
//! The emulator is filled with plain unsigned HTTP requests (moto checks no signatures; the
//! Authorization header only tells it which service is meant).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_server::proto::enclave::v1::GetAttestationDocumentRequest;
use kv_server::proto::enclave::v1::attestation_client::AttestationClient;
use kv_server::proto::grpc::health::v1::HealthCheckRequest;
use kv_server::proto::grpc::health::v1::health_check_response::ServingStatus;
use kv_server::proto::grpc::health::v1::health_client::HealthClient;
use kv_server::proto::kv_server::v1::GetValuesRequest;
use kv_server::proto::kv_server::v1::key_value_service_client::KeyValueServiceClient;
use kv_server::proto::kv_server::v1::v1_single_lookup_result::SingleLookupResult;
use prost_types::value::Kind;
use tonic::transport::Channel;

use common::aws::{DEADLINE, Moto, Proc, Proxy, allow_only_rule, free_port};

const KV_SERVER: &str = env!("CARGO_BIN_EXE_kv-server");
const HEADER: &str = "key,mutation_type,logical_commit_time,value,value_type\n";

/// kv-server with static test credentials and no way to AWS but the given proxy.
struct KvServer {
    proc: Proc,
    endpoint: String,
}

fn kv_command(args: &[&str]) -> Command {
    let mut command = Command::new(KV_SERVER);
    command
        .arg("--listen")
        .arg("tcp://127.0.0.1:0")
        .args(args)
        .env("RUST_LOG", "info")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/nonexistent/kv-s3-test/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/kv-s3-test/credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE");
    command
}

impl KvServer {
    fn start(args: &[&str]) -> KvServer {
        let mut proc = Proc::spawn("kv-server", kv_command(args));
        let mut first = String::new();
        BufReader::new(proc.child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let endpoint = first
            .trim()
            .strip_prefix("kv-server listening on tcp://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}: {}", proc.logs()))
            .to_string();
        KvServer { proc, endpoint: format!("http://{endpoint}") }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone()).unwrap().connect().await.expect("connect to kv-server")
    }

    async fn wait_loaded(&self, health: &mut HealthClient<Channel>) {
        let started = Instant::now();
        while status(health, "loadbalancer-healthcheck").await != ServingStatus::Serving {
            assert!(started.elapsed() < DEADLINE, "initial load did not finish: {}", self.proc.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `count` log lines match `wanted`; returns the last of them.
    async fn wait_for_log_lines(&mut self, count: usize, wanted: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let logs = self.proc.logs();
            let found: Vec<&str> = logs.lines().filter(|l| wanted(l)).collect();
            if found.len() >= count {
                return found[count - 1].to_string();
            }
            assert!(self.proc.is_running(), "kv-server exited: {logs}");
            assert!(started.elapsed() < DEADLINE, "fewer than {count} such log lines: {logs}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (as the enclave's supervisor would), then the exit status. Async, so that this
    /// test's own client connections can close while the server drains.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.proc.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.proc.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < DEADLINE, "kv-server did not stop on SIGTERM: {}", self.proc.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for_value(&self, kv: &mut KeyValueServiceClient<Channel>, key: &str, want: &str) {
        let started = Instant::now();
        loop {
            if value(kv, key).await.as_deref() == Some(want) {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "{key} never became {want:?}: {}", self.proc.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn status(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    health.check(HealthCheckRequest { service: service.into() }).await.expect("Check").into_inner().status()
}

/// The string value served for `key`, `None` for NOT_FOUND.
async fn value(kv: &mut KeyValueServiceClient<Channel>, key: &str) -> Option<String> {
    let response = kv
        .get_values(GetValuesRequest { keys: vec![key.into()], ..Default::default() })
        .await
        .expect("GetValues")
        .into_inner();
    match response.keys.get(key).and_then(|r| r.single_lookup_result.clone()) {
        Some(SingleLookupResult::Value(prost_types::Value { kind: Some(Kind::StringValue(s)) })) => Some(s),
        Some(SingleLookupResult::Status(s)) if s.code == 5 => None,
        other => panic!("unexpected result for {key}: {other:?}"),
    }
}

fn csv(rows: &[(&str, i64, &str)]) -> String {
    let mut out = HEADER.to_string();
    for (key, time, value) in rows {
        out.push_str(&format!("{key},UPDATE,{time},{value},string\n"));
    }
    out
}

#[tokio::test]
async fn s3_data_through_vsockproxy_is_served_and_new_deltas_are_picked_up() {
    let mut moto = Moto::start();
    moto.create_bucket("kv-data");
    moto.put_object("kv-data", "kv/SNAPSHOT_0000000000000001", &csv(&[("a", 1, "one"), ("b", 1, "old")]));
    moto.put_object("kv-data", "kv/DELTA_0000000000000002", &csv(&[("b", 2, "two")]));
    // Not data files, or outside the prefix: ignored.
    moto.put_object("kv-data", "kv/README", "not data");
    moto.put_object("kv-data", "other/SNAPSHOT_0000000000000009", &csv(&[("a", 9, "wrong prefix")]));
    let mut proxy = Proxy::allowing_only(moto.port);
    let server = KvServer::start(&[
        "--s3-bucket",
        "kv-data",
        "--s3-prefix",
        "kv",
        "--egress-socks5",
        &proxy.endpoint(),
        "--aws-endpoint-url",
        &moto.url(),
        "--s3-force-path-style",
        "--poll-interval-ms",
        "200",
    ]);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut kv = KeyValueServiceClient::new(channel);
    server.wait_loaded(&mut health).await;
    assert_eq!(value(&mut kv, "a").await.as_deref(), Some("one"), "{}", server.proc.logs());
    assert_eq!(value(&mut kv, "b").await.as_deref(), Some("two"));

    // A delta uploaded while serving is found by the next poll.
    moto.put_object("kv-data", "kv/DELTA_0000000000000003", &csv(&[("c", 3, "three"), ("a", 3, "uno")]));
    server.wait_for_value(&mut kv, "c", "three").await;
    assert_eq!(value(&mut kv, "a").await.as_deref(), Some("uno"));
    let logs = server.proc.logs();
    assert!(logs.contains("s3://kv-data/kv/"), "{logs}");
    assert!(!logs.contains("SNAPSHOT_0000000000000009"), "a file outside the prefix was loaded: {logs}");
    assert!(proxy.proc.is_running() && moto.proc.is_running());
}

#[tokio::test]
async fn a_policy_without_the_emulator_is_refused_and_the_server_keeps_running() {
    let moto = Moto::start();
    moto.create_bucket("kv-data");
    moto.put_object("kv-data", "SNAPSHOT_0000000000000001", &csv(&[("a", 1, "one")]));
    // Loopback, but another port: the emulator is not allowed.
    let other = if moto.port == 65535 { moto.port - 1 } else { moto.port + 1 };
    let proxy = Proxy::allowing_only(other);
    let server = KvServer::start(&[
        "--s3-bucket",
        "kv-data",
        "--egress-socks5",
        &proxy.endpoint(),
        "--aws-endpoint-url",
        &moto.url(),
        "--s3-force-path-style",
        "--poll-interval-ms",
        "200",
    ]);
    let mut server = server;
    let started = Instant::now();
    let refusal = loop {
        let logs = server.proc.logs();
        if let Some(line) = logs.lines().find(|l| l.contains("initial data load failed")) {
            break line.to_string();
        }
        assert!(started.elapsed() < DEADLINE, "no load failure logged: {logs}\n{}", proxy.proc.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refusal.contains("not allowed"), "{refusal}");
    assert!(refusal.contains("(0x02)"), "the SOCKS5 reply code is named: {refusal}");
    assert!(refusal.contains(&proxy.endpoint()), "the proxy is named: {refusal}");
    assert!(refusal.contains("s3://kv-data/"), "the bucket is named: {refusal}");
    assert!(refusal.contains("ListObjectsV2"), "the failed call is named: {refusal}");

    let channel = server.channel().await;
    let mut health = HealthClient::new(channel);
    assert_eq!(status(&mut health, "autoscaler-healthcheck").await, ServingStatus::Serving);
    assert_eq!(status(&mut health, "loadbalancer-healthcheck").await, ServingStatus::NotServing);
    assert!(server.proc.is_running(), "kv-server must keep running: {}", server.proc.logs());
}

#[tokio::test]
async fn settings_come_from_ssm_parameters_through_the_proxy() {
    let moto = Moto::start();
    moto.create_bucket("ssm-bucket");
    moto.put_object("ssm-bucket", "from-ssm/SNAPSHOT_0000000000000001", &csv(&[("k", 1, "via-ssm")]));
    moto.put_parameter("kv-server-test-data-bucket-id", "ssm-bucket");
    moto.put_parameter("kv-server-test-data-prefix", "from-ssm");
    moto.put_parameter("kv-server-test-backup-poll-frequency-secs", "2");
    let proxy = Proxy::allowing_only(moto.port);
    let server = KvServer::start(&[
        "--ssm-prefix",
        "kv-server-test",
        "--egress-socks5",
        &proxy.endpoint(),
        "--aws-endpoint-url",
        &moto.url(),
        "--s3-force-path-style",
    ]);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut kv = KeyValueServiceClient::new(channel);
    server.wait_loaded(&mut health).await;
    assert_eq!(value(&mut kv, "k").await.as_deref(), Some("via-ssm"));
    let logs = server.proc.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("S3 data source"))
        .unwrap_or_else(|| panic!("no data source line: {logs}"));
    assert!(line.contains("poll_interval_ms=2000"), "{line}");
    assert!(line.contains("bucket=ssm-bucket"), "{line}");
    // A flag wins over the parameter.
    drop(server);
    let server = KvServer::start(&[
        "--ssm-prefix",
        "kv-server-test",
        "--egress-socks5",
        &proxy.endpoint(),
        "--aws-endpoint-url",
        &moto.url(),
        "--s3-force-path-style",
        "--poll-interval-ms",
        "300",
    ]);
    let mut health = HealthClient::new(server.channel().await);
    server.wait_loaded(&mut health).await;
    let logs = server.proc.logs();
    assert!(
        logs.lines().any(|l| l.contains("S3 data source") && l.contains("poll_interval_ms=300")),
        "{logs}"
    );
}

/// Runs kv-server with settings from SSM under `prefix` until it exits; its status and logs.
fn run_until_exit(moto: &Moto, proxy: &Proxy, prefix: &str) -> (std::process::ExitStatus, String) {
    let mut proc = Proc::spawn(
        "kv-server",
        kv_command(&[
            "--ssm-prefix",
            prefix,
            "--egress-socks5",
            &proxy.endpoint(),
            "--aws-endpoint-url",
            &moto.url(),
        ]),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < DEADLINE, "kv-server did not exit: {}", proc.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    // Give the stderr reader a moment to collect the last lines.
    std::thread::sleep(Duration::from_millis(100));
    (status, proc.logs())
}

#[tokio::test]
async fn a_missing_or_invalid_ssm_parameter_ends_the_process_non_zero() {
    let moto = Moto::start();
    moto.put_parameter("kv-server-partial-data-prefix", "x");
    moto.put_parameter("kv-server-badpoll-data-bucket-id", "kv-data");
    moto.put_parameter("kv-server-badpoll-backup-poll-frequency-secs", "soon");
    let proxy = Proxy::allowing_only(moto.port);

    let (status, logs) = run_until_exit(&moto, &proxy, "kv-server-partial");
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(logs.contains("SSM parameter kv-server-partial-data-bucket-id does not exist"), "{logs}");

    let (status, logs) = run_until_exit(&moto, &proxy, "kv-server-badpoll");
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(
        logs.contains("SSM parameter kv-server-badpoll-backup-poll-frequency-secs: the value is not"),
        "{logs}"
    );
    assert!(!logs.contains("soon"), "an SSM value reached the logs: {logs}");
}

#[tokio::test]
async fn a_refused_ssm_call_is_retried_while_health_and_attestation_answer() {
    // No emulator needed: the policy refuses the destination before anything is dialed.
    let settings_port = free_port();
    let other = if settings_port == 65535 { settings_port - 1 } else { settings_port + 1 };
    let proxy = Proxy::allowing_only(other);
    let mut server = KvServer::start(&[
        "--ssm-prefix",
        "kv-server-refused",
        "--egress-socks5",
        &proxy.endpoint(),
        "--aws-endpoint-url",
        &format!("http://127.0.0.1:{settings_port}"),
    ]);
    let retrying = |l: &str| l.contains("WARN") && l.contains("kv-server-refused") && l.contains("retry");
    let first = server.wait_for_log_lines(1, retrying).await;
    assert!(first.contains("GetParameters"), "the failed call is named: {first}");
    assert!(first.contains("(0x02)"), "the proxy's refusal is named: {first}");
    // Retried, not given up on.
    server.wait_for_log_lines(2, retrying).await;

    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    assert_eq!(status(&mut health, "autoscaler-healthcheck").await, ServingStatus::Serving);
    assert_eq!(status(&mut health, "loadbalancer-healthcheck").await, ServingStatus::NotServing);
    if !Path::new("/dev/nsm").exists() {
        let err = AttestationClient::new(channel)
            .get_attestation_document(GetAttestationDocumentRequest {
                nonce: b"nonce".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "attestation answers: {err}");
    }
    assert!(server.proc.is_running(), "kv-server must keep running: {}", server.proc.logs());
    drop(health); // an open client connection would hold the drain until its deadline

    // SIGTERM between two attempts stops it cleanly.
    let started = Instant::now();
    let exit = server.terminate().await;
    assert!(started.elapsed() < Duration::from_secs(5), "stopped at once: {}", server.proc.logs());
    assert!(exit.success(), "{exit}: {}", server.proc.logs());
}

#[tokio::test]
async fn settings_are_read_once_the_egress_proxy_comes_up() {
    let moto = Moto::start();
    moto.create_bucket("late-bucket");
    moto.put_object("late-bucket", "SNAPSHOT_0000000000000001", &csv(&[("k", 1, "late")]));
    moto.put_parameter("kv-server-late-data-bucket-id", "late-bucket");
    // Nothing listens there yet: the parent's proxy is not up.
    let proxy_port = free_port();
    let mut server = KvServer::start(&[
        "--ssm-prefix",
        "kv-server-late",
        "--egress-socks5",
        &format!("tcp://127.0.0.1:{proxy_port}"),
        "--aws-endpoint-url",
        &moto.url(),
        "--s3-force-path-style",
        "--poll-interval-ms",
        "200",
    ]);
    let warning = server
        .wait_for_log_lines(1, |l| l.contains("WARN") && l.contains("kv-server-late") && l.contains("retry"))
        .await;
    assert!(warning.contains(&format!("tcp://127.0.0.1:{proxy_port}")), "the proxy is named: {warning}");
    let dials =
        server.wait_for_log_lines(1, |l| l.contains("dials") && l.contains("aws.egress_socks5")).await;
    assert!(dials.contains(&format!("endpoint=tcp://127.0.0.1:{proxy_port}")), "{dials}");
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut kv = KeyValueServiceClient::new(channel);
    assert_eq!(status(&mut health, "autoscaler-healthcheck").await, ServingStatus::Serving);
    assert_eq!(status(&mut health, "loadbalancer-healthcheck").await, ServingStatus::NotServing);

    let _proxy = Proxy::start_on(proxy_port, &allow_only_rule(moto.port));
    server.wait_loaded(&mut health).await;
    assert_eq!(value(&mut kv, "k").await.as_deref(), Some("late"));
    let logs = server.proc.logs();
    assert!(logs.lines().any(|l| l.contains("S3 data source") && l.contains("bucket=late-bucket")), "{logs}");
}

/// Issue 14 item 16: SIGTERM while a data load was running waited for the load (here a listing
/// that S3 never answers: the SDK's 30 s read timeout, then its retries) instead of the drain
/// deadline, so the supervisor's SIGKILL would race it.
#[tokio::test]
async fn sigterm_during_a_stalled_load_exits_within_the_drain_deadline() {
    // An S3 endpoint that accepts connections and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in blackhole.incoming() {
            held.push(stream);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let proxy = Proxy::allowing_only(port);
    let mut server = KvServer::start(&[
        "--s3-bucket",
        "kv-data",
        "--egress-socks5",
        &proxy.endpoint(),
        "--aws-endpoint-url",
        &format!("http://127.0.0.1:{port}"),
        "--s3-force-path-style",
    ]);
    let started = Instant::now();
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < DEADLINE,
            "the listing never reached the endpoint: {}",
            server.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    let status = server.terminate().await;
    let took = stopping.elapsed();
    assert!(status.success(), "{status}: {}", server.proc.logs());
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} during a stalled load: {}",
        server.proc.logs()
    );
}
