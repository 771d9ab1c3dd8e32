//! Fleet keys end to end with real processes: `moto_server` (S3, with conditional writes), the
//! KMS TEST DOUBLE (`kms-double`: GenerateDataKey/Decrypt with a Recipient, evaluating the key
//! policy terraform renders, tests/fixtures/fleet-key-policy.json) and the real `vsockproxy` as the
//! only way out. The enclaves are kv-server's fleet key task in this process, each with its own
//! key manager, health and RSA key, attesting through the NSM TEST DOUBLE of kms-double (no NSM on
//! this machine) with the PCRs of the policy's image A, image B (a PCR rollover: both accepted),
//! or of an image the policy does not name.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use common::aws::{Moto, Proc, Proxy, free_port, repo_root};
use kms_double::test_nsm::TestNsm;
use kv_protocol::keys::PublicKey;
use kv_server::attestation::{AttestError, Attester};
use kv_server::config::V2Config;
use kv_server::fleet::{FleetConfig, S3Location};
use kv_server::health::{Health, LOADBALANCER};
use kv_server::keys::KeyManager;
use kv_server::proto::grpc::health::v1::health_check_response::ServingStatus;
use kv_server::recipient::RecipientKey;

const BUCKET: &str = "fleet-keys";
const OBJECT: &str = "kv/fleet-keys/keyset.json";
const ROLE: &str = "arn:aws:iam::123456789012:role/kv-fleet-test-instance";
const WAIT: Duration = Duration::from_secs(60);

/// An enclave's NSM on the host: kms-double's TEST DOUBLE with fixed PCRs.
struct DoubleNsm(TestNsm);

impl Attester for DoubleNsm {
    fn attest(&self, user_data: Option<Vec<u8>>, nonce: Option<Vec<u8>>) -> Result<Vec<u8>, AttestError> {
        Ok(self.0.attest(None, user_data.as_deref(), nonce.as_deref()))
    }

    fn attest_recipient(&self, key: &RecipientKey) -> Result<Vec<u8>, AttestError> {
        Ok(self.0.attest(Some(key.public_key_der()), Some(kv_server::attestation::RECIPIENT_USER_DATA), None))
    }
}

fn pcr(hex_text: &str) -> [u8; 48] {
    hex::decode(hex_text).unwrap().try_into().unwrap()
}

/// The NSM of image `index` of tests/fixtures/fleet-key-pcrs.json.
fn image(index: usize) -> DoubleNsm {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/fleet-key-pcrs.json")).unwrap();
    let sets: serde_json::Value = serde_json::from_str(&text).unwrap();
    let set = &sets["pcr_sets"][index];
    let get = |name: &str| pcr(set[name].as_str().unwrap());
    DoubleNsm(TestNsm::new(get("PCR0"), get("PCR1"), get("PCR2")))
}

/// The KMS double with the fixture policy, as the instance role.
struct Kms {
    proc: Proc,
    url: String,
}

impl Kms {
    fn start() -> Kms {
        let bin = PathBuf::from(common::BIN).with_file_name("kms-double");
        assert!(bin.exists(), "{} is missing: build it first (`cargo build -p kms-double`)", bin.display());
        let mut command = Command::new(bin);
        command
            .arg("--policy")
            .arg(repo_root().join("tests/fixtures/fleet-key-policy.json"))
            .args(["--caller-arn", ROLE, "--key-id", "fleet-test-key", "--alias", "alias/kv-fleet-test"])
            .stdin(Stdio::null());
        let mut proc = Proc::spawn("kms-double", command);
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(proc.child.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        let url = first
            .trim()
            .strip_prefix("kms-double listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}: {}", proc.logs()))
            .to_string();
        Kms { proc, url }
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}

struct Stack {
    moto: Moto,
    kms: Kms,
    proxy: Proxy,
}

impl Stack {
    fn start() -> Stack {
        let moto = Moto::start();
        moto.create_bucket(BUCKET);
        let kms = Kms::start();
        let rules = format!(
            "[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"{}\", \"{}\"]\n",
            moto.port,
            kms.port()
        );
        let proxy = Proxy::start_on(free_port(), &rules);
        Stack { moto, kms, proxy }
    }

    /// What the enclave's SDK would load: static test credentials, every connection through the
    /// SOCKS5 proxy, S3 at the emulator.
    fn sdk(&self) -> SdkConfig {
        let egress = self.proxy.endpoint().parse().unwrap();
        SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "test", "test", None, None, "test",
            )))
            .http_client(kv_server::egress::EgressHttpClient::shared(egress))
            .endpoint_url(self.moto.url())
            .build()
    }

    fn config(&self) -> FleetConfig {
        FleetConfig {
            aws: kv_server::s3::S3Config {
                egress: self.proxy.endpoint().parse().unwrap(),
                bucket: None,
                prefix: None,
                region: Some("us-east-1".into()),
                endpoint_url: Some(self.moto.url()),
                force_path_style: true,
                ssm_prefix: None,
                poll_interval_set: false,
            },
            kms_key: "arn:aws:kms:us-east-1:123456789012:alias/kv-fleet-test".into(),
            location: Some(S3Location { bucket: BUCKET.into(), key: OBJECT.into() }),
            kms_endpoint_url: Some(self.kms.url.clone()),
            poll_interval: Duration::from_secs(1),
        }
    }

    fn logs(&self) -> String {
        format!("{}\n{}\n{}", self.kms.proc.logs(), self.proxy.proc.logs(), self.moto.proc.logs())
    }
}

/// One in-process enclave: its keys and health, fed by the fleet key task.
struct Enclave {
    keys: Arc<KeyManager>,
    health: Arc<Health>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Enclave {
    fn start(stack: &Stack, nsm: DoubleNsm, v2: V2Config) -> Enclave {
        let keys = Arc::new(KeyManager::pending(&v2));
        let health = Arc::new(Health::new_waiting_for_keys());
        health.set_data_loaded();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(kv_server::fleet::run_with_sdk(
            stack.sdk(),
            stack.config(),
            Arc::new(nsm),
            keys.clone(),
            health.clone(),
            v2,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        Enclave { keys, health, stop }
    }

    fn public_keys(&self) -> Vec<(u8, PublicKey)> {
        self.keys.ring().public_keys()
    }

    async fn wait_for(&self, stack: &Stack, what: &str, done: impl Fn(&Enclave) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(started.elapsed() < WAIT, "{what}: not within {WAIT:?}\n{}", stack.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Enclave {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn v2(rotation_secs: u64, grace_secs: u64) -> V2Config {
    V2Config {
        key_rotation: Duration::from_secs(rotation_secs),
        key_grace: Duration::from_secs(grace_secs),
        ..V2Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_images_converge_on_one_key_set_and_an_unlisted_image_is_refused() {
    let stack = Stack::start();
    // Image A (running) and image B (being rolled out) start together: one creates the set with
    // If-None-Match, the other reads it.
    let a = Enclave::start(&stack, image(0), v2(3600, 600));
    let b = Enclave::start(&stack, image(1), v2(3600, 600));
    a.wait_for(&stack, "image A holds keys", |e| !e.public_keys().is_empty()).await;
    b.wait_for(&stack, "image B holds keys", |e| !e.public_keys().is_empty()).await;
    assert_eq!(a.public_keys(), b.public_keys(), "one key set for the fleet");
    assert_eq!(a.health.status(LOADBALANCER), Some(ServingStatus::Serving));

    // A request encrypted to the key fetched from A is decrypted by B.
    let (id, public) = a.public_keys()[0];
    let (request, _) = kv_protocol::client::encrypt_request(id, &public, b"lookup").unwrap();
    let ring = b.keys.ring();
    let (framed, _) = kv_protocol::server::decrypt_request(|id| ring.secret(id), &request)
        .expect("B decrypts a request made with A's key");
    assert!(!framed.is_empty());

    // The object holds no secret key in the clear.
    let (status, body) = stack.moto.request("GET", &format!("/{BUCKET}/{OBJECT}"), "s3", &[], b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("nitro-kv fleet key set v1"), "{body}");
    let secret = ring.secret(id).unwrap().to_bytes();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret.as_ref());
    assert!(
        !body.contains(&b64) && !body.contains(&hex::encode(secret.as_ref())),
        "a secret key in the object"
    );

    // An image the policy does not name gets nothing and does not serve.
    let other = TestNsm::new([9; 48], [9; 48], [9; 48]);
    let c = Enclave::start(&stack, DoubleNsm(other), v2(3600, 600));
    let started = Instant::now();
    while !stack.kms.proc.logs().contains("decision=deny") {
        assert!(started.elapsed() < WAIT, "the KMS double never refused C\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.public_keys().is_empty(), "an unlisted image holds no key");
    assert_eq!(c.health.status(LOADBALANCER), Some(ServingStatus::NotServing), "and does not serve");
    let logs = stack.kms.proc.logs();
    assert!(logs.contains("kms:RecipientAttestation:"), "the refusal names the condition: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_by_one_enclave_reaches_the_other_without_a_restart() {
    let stack = Stack::start();
    let a = Enclave::start(&stack, image(0), v2(4, 60));
    a.wait_for(&stack, "A holds keys", |e| !e.public_keys().is_empty()).await;
    let first = a.keys.ring().current_id().unwrap();
    let b = Enclave::start(&stack, image(0), v2(4, 60));
    b.wait_for(&stack, "B holds the same key", |e| e.keys.ring().current_id() == Some(first)).await;
    // After 4 s the first poll that sees the set due rotates it (If-Match: one writer wins).
    a.wait_for(&stack, "the set rotated", |e| e.keys.ring().current_id() != Some(first)).await;
    let started = Instant::now();
    while b.public_keys() != a.public_keys() {
        assert!(started.elapsed() < WAIT, "B never held A's rotated set\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<u8> = b.public_keys().iter().map(|(id, _)| *id).collect();
    assert_ne!(ids[0], first, "a new current key");
    assert!(ids.contains(&first), "the old key stays in its grace period: {ids:?}");
    assert_eq!(ids[0], ids[1].wrapping_add(1), "the next id: {ids:?}");
}

/// The real binary on a machine without an NSM: with fleet keys it serves no key and stays out of
/// the load balancer, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_without_an_nsm_serves_no_key_and_is_not_ready() {
    let stack = Stack::start();
    let mut command = Command::new(common::BIN);
    command
        .args(["--listen", "tcp://127.0.0.1:0", "--sample-data", "--aws-region", "us-east-1"])
        .args(["--egress-socks5", &stack.proxy.endpoint(), "--aws-endpoint-url", &stack.moto.url()])
        .args(["--s3-force-path-style", "--fleet-keys-kms-key", "alias/kv-fleet-test"])
        .args(["--fleet-keys-s3-uri", &format!("s3://{BUCKET}/{OBJECT}")])
        .args(["--fleet-keys-kms-endpoint-url", &stack.kms.url, "--fleet-keys-poll-secs", "1"])
        .env("RUST_LOG", "info")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/kv-fleet-test/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/kv-fleet-test/credentials")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE");
    let mut server = Proc::spawn("kv-server", command);
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let endpoint = first.trim().strip_prefix("kv-server listening on tcp://").expect("the listening line");
    let started = Instant::now();
    while !server.logs().contains(kv_server::attestation::NO_NSM) {
        assert!(server.is_running(), "kv-server exited: {}", server.logs());
        assert!(started.elapsed() < WAIT, "no NSM error logged: {}", server.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = kv_server::proto::grpc::health::v1::health_client::HealthClient::new(channel.clone());
    let request = kv_server::proto::grpc::health::v1::HealthCheckRequest { service: LOADBALANCER.into() };
    let status = health.check(request).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::NotServing as i32, "data loaded, but no keys: not ready");
    let mut keys = kv_server::proto::kv_server::v2::key_service_client::KeyServiceClient::new(channel);
    let err = keys
        .get_public_keys(kv_server::proto::kv_server::v2::GetPublicKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert_eq!(err.message(), kv_server::v2::NO_KEYS);
    // The enclave created nothing: without a document there is no data key.
    let (status, _) = stack.moto.request("GET", &format!("/{BUCKET}/{OBJECT}"), "s3", &[], b"");
    assert_eq!(status, 404, "no key set object was written");
}
