//! Talking to kv-server inside a booted image: waiting for its gRPC health through the proxy,
//! and reading the payload of the attestation documents it returns. Shared by the boot tests.

use std::time::Duration;

use kv_proto::grpc::health::v1::HealthCheckRequest;
use kv_proto::grpc::health::v1::health_client::HealthClient;

/// A channel to `url` once `autoscaler-healthcheck` answers there (kv-server in the guest is
/// up), within `timeout`.
pub async fn wait_for_grpc(url: &str, timeout: Duration) -> tonic::transport::Channel {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.to_string())
            && let Ok(channel) = endpoint.connect_timeout(Duration::from_secs(5)).connect().await
        {
            let mut health = HealthClient::new(channel.clone());
            if health.check(HealthCheckRequest { service: "autoscaler-healthcheck".into() }).await.is_ok() {
                return channel;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "kv-server in the guest never answered at {url}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The payload of a COSE_Sign1 (optionally tagged 18): the attestation document's CBOR map.
pub fn cose_payload(document: &[u8]) -> Vec<u8> {
    let value: serde_cbor::Value = serde_cbor::from_slice(document).expect("the document is CBOR");
    let array = match value {
        serde_cbor::Value::Tag(18, inner) => *inner,
        v => v,
    };
    let serde_cbor::Value::Array(items) = array else { panic!("COSE_Sign1 is not an array: {array:?}") };
    assert_eq!(items.len(), 4, "COSE_Sign1 has protected, unprotected, payload, signature");
    match &items[2] {
        serde_cbor::Value::Bytes(b) => b.clone(),
        other => panic!("COSE_Sign1 payload is not a byte string: {other:?}"),
    }
}
