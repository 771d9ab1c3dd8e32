//! The enclave image booted for real under QEMU's `nitro-enclave` machine (TCG, emulated NSM)
//! by `enclave-runner`, behind the real parent runtime: vsockproxy (ingress over
//! `vsock-hybrid://`, SOCKS5 egress and the `otel` mapping on the vsock backend's Unix sockets),
//! envoy, the AWS API emulator and an OTLP receiver. No test double stands in for the enclave:
//! kv-server and enclave-init are the static binaries `scripts/build-dist.sh` ships.
//!
//! The tests skip with one line where QEMU with `nitro-enclave` is not installed, except when
//! `NITRO_KV_REQUIRE_QEMU` is set (scripts/test.sh sets it). nextest runs them one at a time
//! (`.config/nextest.toml`, group `qemu`): each boot keeps a core busy.

#[path = "support/guest.rs"]
mod guest;
use guest::{cose_payload, wait_for_grpc};

// Shared with observability.rs, which uses more of it.
#[allow(dead_code)]
#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use e2e_tests::enclave::{Moto, Runner, TestImage, build_dist, build_test_eif, qemu_available};
use e2e_tests::{Envoy, Proc, free_port, http_get, repo_root, run_vsockproxy, wait_until, workspace_bin};
use kv_client::verify::{Expectations, SignatureCheck, VerifyOptions, verify_attestation};
use kv_proto::enclave::v1::GetAttestationDocumentRequest;
use kv_proto::enclave::v1::attestation_client::AttestationClient;
use kv_proto::grpc::health::v1::HealthCheckRequest;
use kv_proto::grpc::health::v1::health_check_response::ServingStatus;
use kv_proto::grpc::health::v1::health_client::HealthClient;
use kv_proto::kv_server::v1::GetValuesRequest;
use kv_proto::kv_server::v1::key_value_service_client::KeyValueServiceClient;
use kv_proto::kv_server::v1::v1_single_lookup_result::SingleLookupResult;
use otlp_receiver::{Receiver, attr, attr_text};

/// Generous: a TCG boot of a 30 MB ramdisk on a busy 2-core machine.
const SERVING: Duration = Duration::from_secs(120);

/// vsockproxy's config for one enclave: ingress from loopback into the guest's port 50051, the
/// SOCKS5 egress and the `otel` mapping where the guest's connections to the parent arrive
/// (`UDS_PORT`), `policy` appended as is (empty: default deny).
fn proxy_config(
    uds: &Path,
    ingress: SocketAddr,
    admin: SocketAddr,
    otel: Option<SocketAddr>,
    policy: &str,
) -> String {
    let uds = uds.display();
    let mut c = format!(
        "[admin]\nlisten = \"tcp://{admin}\"\n\n[[ingress]]\nname = \"kv\"\nlisten = \"tcp://{ingress}\"\n\
         upstream = \"vsock-hybrid://{uds}:50051\"\n\n[socks5]\nname = \"egress\"\nlisten = \"unix://{uds}_8888\"\n\n"
    );
    if let Some(otel) = otel {
        c.push_str(&format!(
            "[[mapping]]\nname = \"otel\"\nlisten = \"unix://{uds}_4317\"\nupstream = \"tcp://{otel}\"\n\n"
        ));
    }
    c.push_str(policy);
    c
}

/// The sum of a vsockproxy counter over its labels, from `/metrics`.
fn proxy_counter(admin: SocketAddr, name: &str) -> u64 {
    let Ok(r) = http_get(admin, "/metrics") else { return 0 };
    r.body
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A test image with kv-server's `config`, no extra environment, and `init_args` for enclave-init.
fn image_with(dir: &Path, config: &str, init_args: Option<&str>) -> std::path::PathBuf {
    build_test_eif(&dir.join("image"), &TestImage { config, env: &[], init_args })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn dist_is_reproducible_and_its_image_boots_and_attests_the_manifest_pcrs() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = build_dist(&dir.path().join("a"), &[]);
    let b = build_dist(&dir.path().join("b"), &[]);
    let manifest_a = std::fs::read(a.join("aws/manifest.json")).unwrap();
    assert_eq!(manifest_a, std::fs::read(b.join("aws/manifest.json")).unwrap(), "two builds, two manifests");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_a).unwrap();
    let pcrs = &manifest["pcrs"];
    assert_eq!(pcrs["PCR0"].as_str().map(str::len), Some(96), "{manifest}");

    // The shipped image, as is: its config reads settings from SSM through the parent's SOCKS5
    // port, which this parent's default-deny policy refuses.
    let uds = dir.path().join("vm.vsock");
    let ingress = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = run_vsockproxy(dir.path(), &proxy_config(&uds, ingress, admin, None, ""), admin);
    let runner = Runner::new(&dir.path().join("state"));
    let eif = a.join("aws/server_enclave_image.eif");
    let enclave = runner.boot(&eif, "shipped", &uds);
    assert_eq!(enclave.info["EnclaveCID"], 16, "{}", enclave.info);

    // describe-enclaves: RUNNING, the PCRs of the manifest.
    let described = runner.describe();
    let entry = &described[0];
    assert_eq!(entry["EnclaveName"], "shipped", "{described}");
    assert_eq!(entry["State"], "RUNNING", "{described}");
    for pcr in ["PCR0", "PCR1", "PCR2"] {
        assert_eq!(entry["Measurements"][pcr], pcrs[pcr], "{pcr} in {described}");
    }

    // The attestation document comes from the emulated NSM in the guest, through the proxy.
    let nonce = b"nitro-kv-boot-test-nonce".to_vec();
    let document = runtime().block_on(async {
        let url = format!("http://{ingress}");
        let channel = wait_for_grpc(&url, SERVING).await;
        let mut health = HealthClient::new(channel.clone());
        let autoscaler = health
            .check(HealthCheckRequest { service: "autoscaler-healthcheck".into() })
            .await
            .expect("health check in the guest")
            .into_inner();
        assert_eq!(autoscaler.status, ServingStatus::Serving as i32);
        let mut client = AttestationClient::new(channel);
        client
            .get_attestation_document(GetAttestationDocumentRequest {
                nonce: nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("GetAttestationDocument: {s}\nconsole:\n{}", enclave.console()))
            .into_inner()
            .document
    });
    // kv-client's verifier accepts it against the manifest and the nonce; the emulated NSM signs
    // nothing (a dummy chain and signature), so only with the loudly named insecure option.
    let expect = Expectations::from_manifest(&a.join("aws/manifest.json"), nonce.clone()).unwrap();
    let verified = verify_attestation(&document, &expect, &VerifyOptions::insecure_skip_chain())
        .unwrap_or_else(|e| panic!("kv-client refuses the emulated NSM's document: {e}"));
    assert_eq!(verified.signature, SignatureCheck::AbsentEmulatedNsm);
    assert!(
        verify_attestation(&document, &expect, &VerifyOptions::default()).is_err(),
        "no chain: refused by default"
    );
    let doc = aws_nitro_enclaves_nsm_api::api::AttestationDoc::from_binary(&cose_payload(&document))
        .expect("the COSE payload is an attestation document");
    assert_eq!(doc.nonce.as_ref().map(|n| n.to_vec()), Some(nonce.clone()), "the caller's nonce");
    for (index, pcr) in [(0usize, "PCR0"), (1, "PCR1"), (2, "PCR2")] {
        let got = doc.pcrs.get(&index).map(|v| hex(v)).unwrap_or_default();
        assert_eq!(Some(got.as_str()), pcrs[pcr].as_str(), "{pcr} the NSM reports");
    }

    // Egress from inside the VM reached the parent's SOCKS5 port and was refused by the policy.
    let refused = wait_until(Duration::from_secs(60), || {
        (proxy_counter(admin, "vsockproxy_policy_denials_total") > 0).then_some(())
    });
    assert!(
        refused.is_some(),
        "no policy denial counted\nvsockproxy:\n{}\nconsole:\n{}",
        proxy.logs(),
        enclave.console()
    );
    // kv-server keeps running (retrying), the enclave stays up.
    assert_eq!(runner.describe()[0]["State"], "RUNNING");

    let out = enclave.terminate();
    assert!(out.status.success(), "terminate-enclave: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(runner.describe(), serde_json::json!([]));
    let left = wait_until(Duration::from_secs(20), || runner.processes().is_empty().then_some(()));
    assert!(left.is_some(), "processes left after terminate-enclave: {:?}", runner.processes());
}

#[test]
fn queries_health_egress_and_otlp_from_inside_the_vm() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    assert_eq!(moto.s3("PUT", "/kv-data", b"").0, 200);
    let snapshot = "key,mutation_type,logical_commit_time,value,value_type\nhello,UPDATE,1,from-s3,string\n\
                    boot,UPDATE,2,qemu,string\n";
    assert_eq!(moto.s3("PUT", "/kv-data/SNAPSHOT_0000000000000001", snapshot.as_bytes()).0, 200);
    let mut receiver = Receiver::start(SocketAddr::from(([127, 0, 0, 1], 0)));

    // A test image: the shipped binaries with a config pointing at the emulator. The egress
    // endpoints say `parent`: enclave-init hands kv-server the CID it heartbeated to.
    let config = format!(
        "listen = \"vsock://any:50051\"\npoll_interval_ms = 500\n\n[aws]\negress_socks5 = \"vsock://parent:8888\"\n\
         s3_bucket = \"kv-data\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{}\"\n\
         s3_force_path_style = true\n\n[otlp]\nendpoint = \"vsock://parent:4317\"\ninterval_ms = 1000\n",
        moto.port
    );
    let image_dir = dir.path().join("image");
    let eif = build_test_eif(
        &image_dir,
        &TestImage {
            config: &config,
            env: &["AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "RUST_LOG=info"],
            init_args: None,
        },
    );

    // First the policy allows only the collector: the S3 listing is refused.
    let uds = dir.path().join("vm.vsock");
    let ingress = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let collector = receiver.addr;
    let only_collector =
        format!("[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"{}\"]\n", collector.port());
    let proxy = run_vsockproxy(
        dir.path(),
        &proxy_config(&uds, ingress, admin, Some(collector), &only_collector),
        admin,
    );
    let descriptor = dir.path().join("descriptor.pb");
    let status = std::process::Command::new(workspace_bin("kv-server"))
        .args(["descriptor-set", "--out"])
        .arg(&descriptor)
        .status()
        .unwrap();
    assert!(status.success());
    let envoy = Envoy::start(dir.path(), ingress.port(), &descriptor);

    let runner = Runner::new(&dir.path().join("state"));
    let enclave = runner.boot(&eif, "moto", &uds);
    let not_serving = wait_until(SERVING, || {
        let r = http_get(envoy.listen, "/healthcheck").ok()?;
        (r.status == 200 && r.body.contains("NOT_SERVING")).then_some(())
    });
    assert!(
        not_serving.is_some(),
        "/healthcheck never NOT_SERVING through envoy\nconsole:\n{}\nvsockproxy:\n{}",
        enclave.console(),
        proxy.logs()
    );
    let denied = wait_until(Duration::from_secs(30), || {
        (proxy_counter(admin, "vsockproxy_policy_denials_total") > 0).then_some(())
    });
    assert!(denied.is_some(), "the refused S3 call was not counted\n{}", proxy.logs());

    // Then the policy also allows the emulator (SIGHUP reloads it): the data loads.
    let with_moto =
        format!("{only_collector}\n[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"{}\"]\n", moto.port);
    std::fs::write(
        dir.path().join("vsockproxy.toml"),
        proxy_config(&uds, ingress, admin, Some(collector), &with_moto),
    )
    .unwrap();
    proxy.signal("HUP");
    let serving = wait_until(SERVING, || {
        let r = http_get(envoy.listen, "/healthcheck").ok()?;
        (r.status == 200 && r.body.contains("\"SERVING\"")).then_some(())
    });
    assert!(serving.is_some(), "never SERVING after the policy allowed S3\nconsole:\n{}", enclave.console());

    let r = http_get(envoy.listen, "/v1/getvalues?keys=hello,boot,missing").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["keys"]["hello"]["value"], "from-s3", "{v}");
    assert_eq!(v["keys"]["boot"]["value"], "qemu", "{v}");
    assert_eq!(v["keys"]["missing"]["status"]["code"], 5, "{v}");

    runtime().block_on(async {
        let mut client = KeyValueServiceClient::connect(format!("http://{}", envoy.listen)).await.unwrap();
        let response = client
            .get_values(GetValuesRequest { keys: vec!["boot".into()], ..Default::default() })
            .await
            .expect("gRPC GetValues through envoy")
            .into_inner();
        match response.keys.get("boot").and_then(|r| r.single_lookup_result.clone()) {
            Some(SingleLookupResult::Value(v)) => {
                assert_eq!(v.kind, Some(prost_types::value::Kind::StringValue("qemu".into())))
            }
            other => panic!("boot: {other:?}"),
        }
    });

    // OTLP from inside the VM through the `otel` mapping: metrics of service kv-server.
    let exported = wait_until(Duration::from_secs(60), || {
        receiver
            .metrics()
            .iter()
            .flat_map(|m| &m.resource_metrics)
            .filter_map(|rm| rm.resource.as_ref())
            .any(|r| attr(&r.attributes, "service.name").and_then(attr_text).as_deref() == Some("kv-server"))
            .then_some(())
    });
    assert!(exported.is_some(), "no OTLP metrics from the guest\n{}", proxy.logs());
    receiver.stop();
    drop(enclave);
}

#[test]
fn an_app_that_exits_is_reported_and_the_supervisor_exits_for_a_restart() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A config kv-server refuses (unknown key): it exits 2 right after the boot.
    let eif =
        image_with(dir.path(), "listen = \"vsock://any:50051\"\nsample_data = true\nno_such_key = 1\n", None);
    let state = dir.path().join("state");
    let runner = Runner::new(&state);
    let mut cmd = runner.with_env(std::process::Command::new(repo_root().join("systemd/nitro-enclave-run")));
    cmd.env("NITRO_CLI", workspace_bin("enclave-runner"))
        .env("ENCLAVE_EIF_PATH", &eif)
        .env("ENCLAVE_CPU_COUNT", "1")
        .env("ENCLAVE_MEMORY_MIB", "1024")
        .env("ENCLAVE_NAME", "exits")
        .env("ENCLAVE_POLL_SECONDS", "1");
    let mut supervisor = Proc::spawn("nitro-enclave-run", cmd, &dir.path().join("supervisor.log"));
    let status = supervisor.wait_timeout(SERVING);
    let log = supervisor.logs();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the supervisor must exit 1 (systemd restarts it)\n{log}"
    );
    assert!(log.contains("starting enclave exits"), "{log}");
    assert!(
        log.contains("exiting so systemd restarts it") || log.contains("right after run-enclave"),
        "{log}"
    );
    let console = std::fs::read_to_string(state.join("exits/console.log")).unwrap_or_default();
    assert!(console.contains("no_such_key"), "kv-server's error on the console:\n{console}");
    let runner_log = std::fs::read_to_string(state.join("exits/runner.log")).unwrap_or_default();
    assert!(runner_log.contains("application exited with 2"), "the runner reports the exit:\n{runner_log}");
    assert!(runner.processes().is_empty(), "left running: {:?}", runner.processes());
}

#[test]
fn a_corrupt_eif_is_refused_before_anything_starts() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let eif = image_with(dir.path(), "sample_data = true\n", None);
    let mut bytes = std::fs::read(&eif).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let corrupt = dir.path().join("corrupt.eif");
    std::fs::write(&corrupt, bytes).unwrap();
    let runner = Runner::new(&dir.path().join("state"));
    let out = runner.run_enclave(&corrupt, "corrupt", &dir.path().join("vm.vsock"), 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("corrupt.eif"), "the error names the file: {stderr}");
    assert!(stderr.to_lowercase().contains("crc"), "and the reason: {stderr}");
    assert!(runner.processes().is_empty(), "left running: {:?}", runner.processes());
    assert_eq!(runner.describe(), serde_json::json!([]));
}

#[test]
fn a_boot_without_heartbeat_fails_with_the_console_lines() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // enclave-init told to skip the heartbeat: the kernel boots, the runner hears nothing.
    let eif = image_with(
        dir.path(),
        "listen = \"vsock://any:50051\"\nsample_data = true\n",
        Some("--no-heartbeat"),
    );
    let runner = Runner::new(&dir.path().join("state"));
    let out = runner.run_enclave(&eif, "silent", &dir.path().join("vm.vsock"), 40);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("heartbeat"), "names what is missing: {stderr}");
    assert!(stderr.contains("enclave-init"), "shows the console's last lines: {stderr}");
    let left = wait_until(Duration::from_secs(20), || runner.processes().is_empty().then_some(()));
    assert!(left.is_some(), "left running: {:?}", runner.processes());
    assert_eq!(runner.describe(), serde_json::json!([]));
}
