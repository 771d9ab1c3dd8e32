//! The `kms-double` binary, started on loopback and called with `aws-sdk-kms` as the enclave's key
//! manager calls KMS: attested GenerateDataKey and Decrypt, and what the policy refuses.

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_kms::Client;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyEncryptionMechanism, RecipientInfo};
use base64::Engine as _;
use kms_double::cms;
use kms_double::policy::hex;
use kms_double::test_nsm::TestNsm;
use rsa::pkcs8::EncodePublicKey;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const CALLER: &str = "arn:aws:iam::123456789012:role/kv-enclave";
const KEY_ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";
const KEY_ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const RELEASE: ([u8; 48], [u8; 48], [u8; 48]) = ([0xa0; 48], [0xa1; 48], [0xa2; 48]);

/// The enclave's policy: data keys only to the attested release, never in plaintext.
fn attested_policy() -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "EnclaveRelease",
                "Effect": "Allow",
                "Principal": {"AWS": CALLER},
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                "Resource": "*",
                "Condition": {"StringEqualsIgnoreCase": {
                    "kms:RecipientAttestation:ImageSha384": hex(&RELEASE.0),
                    "kms:RecipientAttestation:PCR1": hex(&RELEASE.1),
                    "kms:RecipientAttestation:PCR2": hex(&RELEASE.2)
                }}
            },
            {
                "Sid": "NoPlaintextDataKeys",
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
                "Resource": "*",
                "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}
            }
        ]
    })
}

/// The account may do anything (an operator's view, and the reference for the attested path).
fn permissive_policy() -> serde_json::Value {
    serde_json::json!({"Version": "2012-10-17", "Statement": [{
        "Sid": "Account", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "kms:*", "Resource": "*"
    }]})
}

/// One running double; killed when dropped.
struct Double {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Double {
    async fn start(policy: &serde_json::Value, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key-policy.json");
        std::fs::write(&path, policy.to_string()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kms-double"))
            .args(["--listen", "127.0.0.1:0", "--caller-arn", CALLER, "--key-id", KEY_ID])
            .arg("--policy")
            .arg(&path)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("the double announced itself within 10 s")
            .unwrap();
        let url =
            line.trim_end().strip_prefix("kms-double listening on ").expect("the listening line").to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Self { child, url, _dir: dir }
    }

    fn client(&self) -> Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new(
                "AKIDKMSDOUBLETEST",
                "kms-double-test-secret",
                None,
                None,
                "test",
            ))
            .build();
        Client::from_conf(config)
    }

    /// SIGTERM, then the exit status and everything logged to stderr.
    async fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.unwrap().unwrap();
        let mut log = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut log).await.unwrap();
        (status, log)
    }
}

/// The enclave's RSA key (one per test binary: generation is the slow part).
fn enclave_key() -> &'static (rsa::PrivateKey, Vec<u8>) {
    static KEY: OnceLock<(rsa::PrivateKey, Vec<u8>)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let spki = key.to_public_key().to_public_key_der().unwrap().into_vec();
        (key, spki)
    })
}

fn recipient(nsm: &TestNsm) -> RecipientInfo {
    RecipientInfo::builder()
        .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
        .attestation_document(Blob::new(nsm.attest(Some(&enclave_key().1), None, None)))
        .build()
}

fn release() -> TestNsm {
    TestNsm::new(RELEASE.0, RELEASE.1, RELEASE.2)
}

fn open(envelope: &Blob) -> Vec<u8> {
    cms::open(&enclave_key().0, envelope.as_ref()).expect("the enclave opens CiphertextForRecipient")
}

fn code<E: ProvideErrorMetadata>(err: &E) -> String {
    err.code().unwrap_or("(no code)").to_string()
}

#[tokio::test]
async fn the_attested_release_gets_a_data_key_only_it_can_open_and_decrypt_returns_it_again() {
    let double = Double::start(&attested_policy(), &[]).await;
    let kms = double.client();
    let generated = kms
        .generate_data_key()
        .key_id(KEY_ID)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("purpose", "fleet-keys")
        .recipient(recipient(&release()))
        .send()
        .await
        .expect("GenerateDataKey for the attested release");
    assert_eq!(generated.key_id(), Some(KEY_ARN));
    assert!(generated.plaintext().is_none(), "no Plaintext when a Recipient is given");
    let envelope = generated.ciphertext_for_recipient().expect("CiphertextForRecipient");
    assert_eq!(&envelope.as_ref()[..2], &[0x30, 0x80], "BER with indefinite lengths, as KMS sends");
    let data_key = open(envelope);
    assert_eq!(data_key.len(), 32);

    // Another enclave of the fleet (same image, its own RSA key would do as well) recovers it.
    let blob = generated.ciphertext_blob().unwrap().clone();
    let decrypted = kms
        .decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("purpose", "fleet-keys")
        .recipient(recipient(&release()))
        .send()
        .await
        .expect("Decrypt for the attested release");
    assert_eq!(decrypted.key_id(), Some(KEY_ARN));
    assert_eq!(decrypted.encryption_algorithm().map(|a| a.as_str()), Some("SYMMETRIC_DEFAULT"));
    assert!(decrypted.plaintext().is_none());
    assert_eq!(open(decrypted.ciphertext_for_recipient().unwrap()), data_key);

    // A tampered blob, or another encryption context: InvalidCiphertextException.
    let mut tampered = blob.clone().into_inner();
    *tampered.last_mut().unwrap() ^= 0x01;
    let err = kms
        .decrypt()
        .ciphertext_blob(Blob::new(tampered))
        .encryption_context("purpose", "fleet-keys")
        .recipient(recipient(&release()))
        .send()
        .await
        .expect_err("a tampered blob decrypts");
    assert!(err.as_service_error().is_some_and(|e| e.is_invalid_ciphertext_exception()), "{err:?}");
    let err = kms
        .decrypt()
        .ciphertext_blob(blob)
        .encryption_context("purpose", "something-else")
        .recipient(recipient(&release()))
        .send()
        .await
        .expect_err("another context decrypts");
    assert!(err.as_service_error().is_some_and(|e| e.is_invalid_ciphertext_exception()), "{err:?}");

    let (status, log) = double.stop().await;
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    assert!(log.contains("op=GenerateDataKey decision=allow"), "{log}");
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(&data_key);
    assert!(!log.contains(&key_b64) && !log.contains(&hex(&data_key)), "the log holds the data key: {log}");
}

#[tokio::test]
async fn other_pcrs_and_plaintext_requests_are_denied_by_the_attested_policy() {
    let double = Double::start(&attested_policy(), &[]).await;
    let kms = double.client();
    let other_image = TestNsm::new([0xb0; 48], RELEASE.1, RELEASE.2);
    let err = kms
        .generate_data_key()
        .key_id(KEY_ARN)
        .key_spec(DataKeySpec::Aes256)
        .recipient(recipient(&other_image))
        .send()
        .await
        .expect_err("another image gets a data key");
    assert_eq!(code(&err), "AccessDeniedException", "{err:?}");
    let message = err.message().unwrap_or_default();
    assert!(message.contains("kms:GenerateDataKey"), "{message}");
    assert!(
        message.contains("kms:RecipientAttestation:ImageSha384") && message.contains(&hex(&[0xb0; 48])),
        "{message}"
    );

    let err = kms
        .generate_data_key()
        .key_id(KEY_ID)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await
        .expect_err("a plaintext data key is handed out");
    assert_eq!(code(&err), "AccessDeniedException", "{err:?}");
    assert!(err.message().unwrap_or_default().contains("NoPlaintextDataKeys"), "{err:?}");

    // A blob of this key, under the attested policy: Decrypt without a Recipient is refused too.
    let generated = kms
        .generate_data_key()
        .key_id(KEY_ID)
        .number_of_bytes(32)
        .recipient(recipient(&release()))
        .send()
        .await
        .unwrap();
    let err = kms
        .decrypt()
        .ciphertext_blob(generated.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .expect_err("Decrypt without a Recipient is allowed");
    assert_eq!(code(&err), "AccessDeniedException", "{err:?}");
    let (status, log) = double.stop().await;
    assert!(status.success());
    assert!(log.contains("op=GenerateDataKey decision=deny"), "{log}");
}

#[tokio::test]
async fn the_enveloped_key_is_the_plaintext_decrypt_returns_under_a_permissive_policy() {
    let double = Double::start(&permissive_policy(), &["--alias", "alias/fleet-keys"]).await;
    let kms = double.client();
    let generated = kms
        .generate_data_key()
        .key_id("alias/fleet-keys")
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("purpose", "fleet-keys")
        .recipient(recipient(&release()))
        .send()
        .await
        .unwrap();
    let from_envelope = open(generated.ciphertext_for_recipient().unwrap());
    let decrypted = kms
        .decrypt()
        .ciphertext_blob(generated.ciphertext_blob().unwrap().clone())
        .encryption_context("purpose", "fleet-keys")
        .key_id(KEY_ARN)
        .send()
        .await
        .unwrap();
    assert!(decrypted.ciphertext_for_recipient().is_none());
    assert_eq!(decrypted.plaintext().unwrap().as_ref(), from_envelope.as_slice());

    let plain = kms.generate_data_key().key_id(KEY_ID).key_spec(DataKeySpec::Aes128).send().await.unwrap();
    assert_eq!(plain.plaintext().unwrap().as_ref().len(), 16);
    assert!(plain.ciphertext_for_recipient().is_none());

    let encrypted =
        kms.encrypt().key_id(KEY_ID).plaintext(Blob::new(b"hello".to_vec())).send().await.unwrap();
    let decrypted =
        kms.decrypt().ciphertext_blob(encrypted.ciphertext_blob().unwrap().clone()).send().await.unwrap();
    assert_eq!(decrypted.plaintext().unwrap().as_ref(), b"hello");

    let described = kms.describe_key().key_id("alias/fleet-keys").send().await.unwrap();
    assert_eq!(described.key_metadata().unwrap().arn(), Some(KEY_ARN));

    let err = kms.describe_key().key_id("alias/other").send().await.expect_err("an unknown alias resolves");
    assert!(err.as_service_error().is_some_and(|e| e.is_not_found_exception()), "{err:?}");
    let err = kms.list_keys().send().await.expect_err("ListKeys is implemented");
    assert_eq!(code(&err), "UnsupportedOperationException", "{err:?}");
    let stale = release().attest_at(1_000, Some(&enclave_key().1), None, None);
    let err = kms
        .generate_data_key()
        .key_id(KEY_ID)
        .key_spec(DataKeySpec::Aes256)
        .recipient(
            RecipientInfo::builder()
                .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
                .attestation_document(Blob::new(stale))
                .build(),
        )
        .send()
        .await
        .expect_err("a document from 1970 is fresh");
    assert_eq!(code(&err), "ValidationException", "{err:?}");
}

#[tokio::test]
async fn the_der_flag_gives_definite_lengths() {
    let double = Double::start(&permissive_policy(), &["--cms-encoding", "der"]).await;
    let generated = double
        .client()
        .generate_data_key()
        .key_id(KEY_ID)
        .key_spec(DataKeySpec::Aes256)
        .recipient(recipient(&release()))
        .send()
        .await
        .unwrap();
    let envelope = generated.ciphertext_for_recipient().unwrap();
    assert_eq!(&envelope.as_ref()[..2], &[0x30, 0x82]);
    assert_eq!(open(envelope).len(), 32);
}

#[tokio::test]
async fn a_bad_policy_stops_the_double_before_it_listens_naming_the_file_and_statement() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-policy.json");
    let mut policy = attested_policy();
    policy["Statement"][0]["Condition"] =
        serde_json::json!({"StringLike": {"kms:RecipientAttestation:PCR0": "a*"}});
    std::fs::write(&path, policy.to_string()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kms-double"))
        .args(["--caller-arn", CALLER, "--key-id", KEY_ID, "--policy"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "it announced a listener");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad-policy.json"), "{stderr}");
    assert!(stderr.contains("statement \"EnclaveRelease\": condition operator \"StringLike\""), "{stderr}");
}
