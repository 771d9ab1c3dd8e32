//! Fleet keys from inside the enclave image booted under QEMU's `nitro-enclave` machine: the
//! emulated NSM attests kv-server's own RSA key, KMS (the KMS TEST DOUBLE `kms-double`, with the
//! key policy terraform renders, its first PCR set replaced by this image's PCRs) hands the data
//! key only to that document, S3 is the AWS emulator, and every call leaves the VM through
//! vsockproxy's SOCKS5 egress. The first boot creates the key set; a second boot of the same image
//! serves the same keys, and answers a request encrypted to a key fetched from the first.
//!
//! Skips with one line where QEMU with `nitro-enclave` is not installed, except when
//! `NITRO_KV_REQUIRE_QEMU` is set; nextest runs it in the `qemu` group (`.config/nextest.toml`).

// Shared with the other boot tests, which use more of it.
#[allow(dead_code)]
#[path = "support/guest.rs"]
mod guest;
use guest::wait_for_grpc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e_tests::enclave::{Moto, Runner, TestImage, build_test_eif, qemu_available};
use e2e_tests::{Proc, free_port, repo_root, run_vsockproxy, wait_until, workspace_bin};
use kv_proto::google::api::HttpBody;
use kv_proto::kv_server::v2::key_service_client::KeyServiceClient;
use kv_proto::kv_server::v2::key_value_service_client::KeyValueServiceClient;
use kv_proto::kv_server::v2::{GetPublicKeysRequest, ObliviousGetValuesRequest};
use kv_protocol::cbor::{self, Argument, Partition, Request};
use kv_protocol::keys::PublicKeySet;
use kv_protocol::{client, framing, suite};
use tonic::transport::Channel;

/// Generous: a TCG boot on a busy 2-core machine, then an RSA key generated under emulation.
const SERVING: Duration = Duration::from_secs(180);
const ROLE: &str = "arn:aws:iam::123456789012:role/kv-fleet-test-instance";

fn proxy_config(uds: &Path, ingress: SocketAddr, admin: SocketAddr, allow_ports: [u16; 2]) -> String {
    let uds = uds.display();
    format!(
        "[admin]\nlisten = \"tcp://{admin}\"\n\n[[ingress]]\nname = \"kv\"\nlisten = \"tcp://{ingress}\"\n\
         upstream = \"vsock-hybrid://{uds}:50051\"\n\n[socks5]\nname = \"egress\"\nlisten = \"unix://{uds}_8888\"\n\n\
         [[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"{}\", \"{}\"]\n",
        allow_ports[0], allow_ports[1]
    )
}

/// PCR0..2 of the image, as `kv-packager eif describe` measures them.
fn measurements(eif: &Path) -> serde_json::Value {
    let out = Command::new(workspace_bin("kv-packager")).args(["eif", "describe"]).arg(eif).output().unwrap();
    assert!(out.status.success(), "eif describe: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Measurements"].clone()
}

/// The rendered fixture policy with its first image's PCRs replaced by `pcrs`.
fn policy_for(pcrs: &serde_json::Value, path: &Path) {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/fleet-key-policy.json")).unwrap();
    let mut policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    let statement = policy["Statement"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["Sid"] == "FleetKeySetForImage0")
        .expect("the fixture's first image statement");
    for pcr in ["PCR0", "PCR1", "PCR2"] {
        statement["Condition"]["StringEqualsIgnoreCase"][format!("kms:RecipientAttestation:{pcr}")] =
            pcrs[pcr].clone();
    }
    std::fs::write(path, serde_json::to_vec_pretty(&policy).unwrap()).unwrap();
}

/// The key set once the enclave holds one (UNAVAILABLE until then).
async fn key_set(channel: Channel, console: impl Fn() -> String) -> PublicKeySet {
    let started = std::time::Instant::now();
    loop {
        let answer =
            KeyServiceClient::new(channel.clone()).get_public_keys(GetPublicKeysRequest::default()).await;
        match answer {
            Ok(body) => return serde_json::from_slice(&body.into_inner().data).expect("the key set JSON"),
            Err(status) if status.code() == tonic::Code::Unavailable && started.elapsed() < SERVING => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => panic!("GetPublicKeys: {status}\nconsole:\n{}", console()),
        }
    }
}

struct Boot {
    dir: PathBuf,
    ingress: SocketAddr,
}

impl Boot {
    fn new(root: &Path, name: &str) -> Boot {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Boot { dir, ingress: SocketAddr::from(([127, 0, 0, 1], free_port())) }
    }
}

#[test]
fn two_boots_of_the_image_serve_one_fleet_key_set_obtained_through_kms_with_the_nsm_document() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    assert_eq!(moto.s3("PUT", "/fleet-keys", b"").0, 200);
    let kms_port = free_port();
    let config = format!(
        "listen = \"vsock://any:50051\"\nsample_data = true\nplaintext_lookups = false\n\n[aws]\n\
         egress_socks5 = \"vsock://parent:8888\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{}\"\n\
         s3_force_path_style = true\n\n[v2]\n\
         fleet_keys_kms_key = \"arn:aws:kms:us-east-1:123456789012:alias/kv-fleet-test\"\n\
         fleet_keys_s3_uri = \"s3://fleet-keys/kv/fleet-keys/keyset.json\"\n\
         fleet_keys_kms_endpoint_url = \"http://127.0.0.1:{kms_port}\"\nfleet_keys_poll_secs = 1\n",
        moto.port
    );
    let eif = build_test_eif(
        &dir.path().join("image"),
        &TestImage {
            config: &config,
            env: &["AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "RUST_LOG=info"],
            init_args: None,
        },
    );
    let policy = dir.path().join("key-policy.json");
    policy_for(&measurements(&eif), &policy);
    let mut kms_command = Command::new(workspace_bin("kms-double"));
    kms_command.args(["--listen", &format!("127.0.0.1:{kms_port}"), "--policy"]).arg(&policy).args([
        "--caller-arn",
        ROLE,
        "--key-id",
        "fleet-test-key",
        "--alias",
        "alias/kv-fleet-test",
    ]);
    let kms = Proc::spawn("kms-double", kms_command, &dir.path().join("kms-double.log"));
    let up =
        wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", kms_port)).ok());
    assert!(up.is_some(), "kms-double never listened:\n{}", kms.logs());

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let runner = Runner::new(&dir.path().join("state"));

    // First boot: no key set yet, the enclave makes it (GenerateDataKey with its document).
    let first = Boot::new(dir.path(), "first");
    let uds = first.dir.join("vm.vsock");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy =
        run_vsockproxy(&first.dir, &proxy_config(&uds, first.ingress, admin, [moto.port, kms_port]), admin);
    let enclave = runner.boot(&eif, "first", &uds);
    let set = runtime.block_on(async {
        let channel = wait_for_grpc(&format!("http://{}", first.ingress), SERVING).await;
        key_set(channel, || {
            format!("{}\nkms-double:\n{}\nvsockproxy:\n{}", enclave.console(), kms.logs(), proxy.logs())
        })
        .await
    });
    assert!(set.attestation_document.is_some(), "the key set comes with the NSM's document");
    let (status, object) = moto.s3("GET", "/fleet-keys/kv/fleet-keys/keyset.json", b"");
    assert_eq!(status, 200, "the key set object: {object}");
    assert!(object.contains("nitro-kv fleet key set v1"), "{object}");
    let log = kms.logs();
    assert!(log.contains("op=GenerateDataKey decision=allow"), "the data key came from KMS:\n{log}");
    let out = enclave.terminate();
    assert!(out.status.success(), "terminate-enclave: {}", String::from_utf8_lossy(&out.stderr));
    drop(proxy);

    // Second boot of the same image: it reads the set (Decrypt with its own document) and
    // answers a request encrypted to the first boot's key.
    let second = Boot::new(dir.path(), "second");
    let uds = second.dir.join("vm.vsock");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _proxy =
        run_vsockproxy(&second.dir, &proxy_config(&uds, second.ingress, admin, [moto.port, kms_port]), admin);
    let enclave = runner.boot(&eif, "second", &uds);
    runtime.block_on(async {
        let channel = wait_for_grpc(&format!("http://{}", second.ingress), SERVING).await;
        let again =
            key_set(channel.clone(), || format!("{}\nkms-double:\n{}", enclave.console(), kms.logs())).await;
        assert_eq!(again.keys, set.keys, "the second boot serves the fleet's keys");

        let (id, key) = set.parse_keys().unwrap()[0];
        let request = Request {
            partitions: vec![Partition {
                id: 0,
                compression_group_id: 0,
                metadata: None,
                arguments: vec![Argument { tags: vec!["keys".into()], data: vec!["hello".into()] }],
            }],
            ..Default::default()
        };
        let framed = framing::frame_request(&cbor::encode_request(&request).unwrap()).unwrap();
        let (message, context) = client::encrypt_request(id, &key, &framed).unwrap();
        let raw_body =
            HttpBody { content_type: suite::REQUEST_LABEL.into(), data: message, extensions: vec![] };
        let answer = KeyValueServiceClient::new(channel)
            .oblivious_get_values(ObliviousGetValuesRequest { raw_body: Some(raw_body) })
            .await
            .unwrap_or_else(|s| panic!("ObliviousGetValues in the second VM: {s}\n{}", enclave.console()))
            .into_inner();
        let plaintext = context.decrypt_response(&answer.data).expect("the answer decrypts");
        let (compression, payload) = framing::unframe(&plaintext).unwrap();
        let outputs = cbor::decode_response(payload).unwrap().compression_groups[0]
            .partition_outputs(compression, 1 << 20)
            .unwrap();
        assert_eq!(outputs[0].key_group_outputs[0].key_values["hello"].value, "world");
    });
    let log = kms.logs();
    assert!(log.contains("op=Decrypt decision=allow"), "the second boot decrypted the data key:\n{log}");
    assert_eq!(log.matches("op=GenerateDataKey decision=allow").count(), 1, "one key set, made once:\n{log}");
    drop(enclave);
}
