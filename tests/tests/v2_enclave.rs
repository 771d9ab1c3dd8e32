//! v2 from inside the enclave image booted under QEMU's `nitro-enclave` machine (emulated NSM),
//! behind vsockproxy: the key endpoint's document is the NSM's own, and binds the key set
//! (`user_data` = `nitro-kv:keyset:v1:` || SHA-256 of the key set), the caller's nonce and no
//! public key; an encrypted lookup answers from inside the VM; with `plaintext_lookups = false`
//! v1 is refused; the attestation endpoint refuses a caller's public key.
//!
//! Skips with one line where QEMU with `nitro-enclave` is not installed, except when
//! `NITRO_KV_REQUIRE_QEMU` is set; nextest runs it in the `qemu` group (`.config/nextest.toml`).

#[path = "support/guest.rs"]
mod guest;
use guest::{cose_payload, wait_for_grpc};

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use e2e_tests::enclave::{Runner, TestImage, build_test_eif, qemu_available};
use e2e_tests::{free_port, run_vsockproxy};
use kv_proto::enclave::v1::GetAttestationDocumentRequest;
use kv_proto::enclave::v1::attestation_client::AttestationClient;
use kv_proto::google::api::HttpBody;
use kv_proto::kv_server::v1::GetValuesRequest;
use kv_proto::kv_server::v1::key_value_service_client::KeyValueServiceClient as V1Client;
use kv_proto::kv_server::v2::key_service_client::KeyServiceClient;
use kv_proto::kv_server::v2::key_value_service_client::KeyValueServiceClient as V2Client;
use kv_proto::kv_server::v2::{GetPublicKeysRequest, ObliviousGetValuesRequest};
use kv_protocol::cbor::{self, Argument, Partition, Request};
use kv_protocol::keys::{KEYSET_USER_DATA_PREFIX, PublicKeySet, key_set_user_data};
use kv_protocol::{client, framing, suite};

/// Generous: a TCG boot on a busy 2-core machine.
const SERVING: Duration = Duration::from_secs(120);

fn proxy_config(uds: &Path, ingress: SocketAddr, admin: SocketAddr) -> String {
    let uds = uds.display();
    format!(
        "[admin]\nlisten = \"tcp://{admin}\"\n\n[[ingress]]\nname = \"kv\"\nlisten = \"tcp://{ingress}\"\n\
         upstream = \"vsock-hybrid://{uds}:50051\"\n"
    )
}

#[test]
fn the_vms_key_endpoint_binds_its_key_set_in_the_nsm_document_and_serves_encrypted_lookups() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let eif = build_test_eif(
        &dir.path().join("image"),
        &TestImage {
            config: "listen = \"vsock://any:50051\"\nsample_data = true\nplaintext_lookups = false\n",
            env: &[],
            init_args: None,
        },
    );
    let uds = dir.path().join("vm.vsock");
    let ingress = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _proxy = run_vsockproxy(dir.path(), &proxy_config(&uds, ingress, admin), admin);
    let runner = Runner::new(&dir.path().join("state"));
    let enclave = runner.boot(&eif, "v2", &uds);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let channel = wait_for_grpc(&format!("http://{ingress}"), SERVING).await;
        let nonce = b"nitro-kv-v2-nonce";
        let nonce_hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let body = KeyServiceClient::new(channel.clone())
            .get_public_keys(GetPublicKeysRequest { nonce: nonce_hex })
            .await
            .unwrap_or_else(|s| panic!("GetPublicKeys: {s}\nconsole:\n{}", enclave.console()))
            .into_inner();
        let set: PublicKeySet = serde_json::from_slice(&body.data).expect("the key set JSON");
        let document = set
            .attestation_document_bytes()
            .unwrap()
            .unwrap_or_else(|| panic!("no document from the emulated NSM: {set:?}"));
        let doc = aws_nitro_enclaves_nsm_api::api::AttestationDoc::from_binary(&cose_payload(&document))
            .expect("the COSE payload is an attestation document");
        let digest = set.computed_sha256().unwrap();
        let user_data = doc.user_data.as_ref().map(|u| u.to_vec()).expect("user_data is set");
        assert_eq!(&user_data[..KEYSET_USER_DATA_PREFIX.len()], KEYSET_USER_DATA_PREFIX);
        assert_eq!(user_data, key_set_user_data(&digest), "the document binds this key set");
        assert_eq!(doc.nonce.as_ref().map(|n| n.to_vec()), Some(nonce.to_vec()), "the caller's nonce");
        assert!(doc.public_key.is_none(), "no public key in the document");
        assert!(doc.pcrs.contains_key(&0), "PCR0 is in the document");

        // An encrypted lookup answered inside the VM.
        let (id, key) = set.parse_keys().unwrap()[0];
        let request = Request {
            partitions: vec![Partition {
                id: 0,
                compression_group_id: 0,
                metadata: None,
                arguments: vec![Argument { tags: vec!["keys".into()], data: vec!["hello".into()] }],
            }],
            accept_compression: vec!["gzip".into()],
            ..Default::default()
        };
        let framed = framing::frame_request(&cbor::encode_request(&request).unwrap()).unwrap();
        let (message, context) = client::encrypt_request(id, &key, &framed).unwrap();
        let raw_body =
            HttpBody { content_type: suite::REQUEST_LABEL.into(), data: message, extensions: vec![] };
        let answer = V2Client::new(channel.clone())
            .oblivious_get_values(ObliviousGetValuesRequest { raw_body: Some(raw_body) })
            .await
            .expect("ObliviousGetValues in the VM")
            .into_inner();
        let plaintext = context.decrypt_response(&answer.data).expect("the answer decrypts");
        let (compression, payload) = framing::unframe(&plaintext).unwrap();
        let outputs = cbor::decode_response(payload).unwrap().compression_groups[0]
            .partition_outputs(compression, 1 << 20)
            .unwrap();
        assert_eq!(outputs[0].key_group_outputs[0].key_values["hello"].value, "world");

        // plaintext_lookups = false in the image: v1 is refused.
        let err = V1Client::new(channel.clone())
            .get_values(GetValuesRequest { keys: vec!["hello".into()], ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

        // The oracle is closed in the image too.
        #[allow(deprecated)]
        let request = GetAttestationDocumentRequest {
            nonce: b"n".to_vec(),
            public_key: vec![4; 65],
            user_data: Vec::new(),
        };
        let err = AttestationClient::new(channel).get_attestation_document(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    });
    let out = enclave.terminate();
    assert!(out.status.success(), "terminate-enclave: {}", String::from_utf8_lossy(&out.stderr));
}
