//! `kv_server.v2.KeyValueService` (lookups in the Protected Audience Key Value Services format)
//! and `kv_server.v2.KeyService` (the enclave's HPKE public keys with their attestation).
//!
//! Both lookup methods share [`Lookup::answer`]: the same store and semantics as v1
//! ([`crate::query`]): every namespace tag (`keys`, `renderUrls`, `adComponentRenderUrls`,
//! `interestGroupNames`) looks up the same keys; a string value is returned as is, a string set
//! as a JSON array of strings; a key without a value is left out of its key group, and a key
//! group with no value at all is left out (the draft's rule). An argument without a namespace tag
//! is ignored. Limits: `max_request_bytes` (the HTTP body), `max_keys_per_request` (all `data`
//! of all partitions), `max_partitions`; partition ids must be unique.
//!
//! `ObliviousGetValues` decrypts with [`crate::keys`], answers, compresses each compression group
//! separately (gzip if the request accepts it), pads and encrypts (the kv-protocol crate). What
//! goes wrong before the request is decrypted is answered INVALID_ARGUMENT naming the cause (the
//! parent sees those bytes anyway); what goes wrong after gets one generic INVALID_ARGUMENT, so
//! that the status tells the parent nothing about the plaintext; the reason is counted
//! (`kv_server.v2.errors`) and never logged per request.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use kv_protocol::cbor::{
    self, CompressionGroup, KeyGroupOutput, KeyValue, PartitionOutput, PlaintextCompressionGroup,
    PlaintextResponse, Request as V2Request, Response as V2Response,
};
use kv_protocol::keys::{PublicKeyEntry, PublicKeySet, key_set_sha256, key_set_user_data};
use kv_protocol::{ProtocolError, compression, framing, server, suite};
use tonic::{Request, Response, Status};

use crate::attestation::{AttestError, Attester, MAX_NONCE};
use crate::config::{Limits, V2Config};
use crate::keys::KeyManager;
use crate::proto::google::api::HttpBody;
use crate::proto::kv_server::v2::key_service_server::{KeyService, KeyServiceServer};
use crate::proto::kv_server::v2::key_value_service_server::{KeyValueService, KeyValueServiceServer};
use crate::proto::kv_server::v2::{GetPublicKeysRequest, GetValuesHttpRequest, ObliviousGetValuesRequest};
use crate::store::{Store, StoredValue};
use crate::telemetry::counters::{self, V2Error, V2Method};

pub use crate::query::PLAINTEXT_DISABLED;

pub const JSON: &str = "application/json";
/// The key endpoint's answer while the enclave holds no key (fleet keys not loaded).
pub const NO_KEYS: &str = "no HPKE key yet: the fleet key set is not loaded (see the server's log)";
/// The one answer to a request that decrypted but was not valid.
pub const INVALID_DECRYPTED_REQUEST: &str = "the decrypted request is not a valid request or exceeds a \
     limit; on the encrypted path the reason is not returned";

/// A refused lookup: the counted reason and, for plaintext callers, what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: V2Error,
    pub message: String,
}

impl Refusal {
    fn new(reason: V2Error, message: impl Into<String>) -> Refusal {
        Refusal { reason, message: message.into() }
    }
}

fn protocol_reason(e: &ProtocolError) -> V2Error {
    match e {
        ProtocolError::Truncated { .. } => V2Error::Truncated,
        ProtocolError::Oversize { .. } => V2Error::RequestTooLarge,
        ProtocolError::UnknownKeyId(_) => V2Error::UnknownKeyId,
        ProtocolError::UnsupportedKem(_) => V2Error::UnsupportedKem,
        ProtocolError::UnsupportedKdf(_) => V2Error::UnsupportedKdf,
        ProtocolError::UnsupportedAead(_) => V2Error::UnsupportedAead,
        ProtocolError::DecryptionFailed => V2Error::DecryptionFailed,
        ProtocolError::ReservedCompression(_)
        | ProtocolError::CompressedRequest(_)
        | ProtocolError::FramingLength { .. } => V2Error::BadFraming,
        ProtocolError::BadCbor { .. } => V2Error::BadCbor,
        ProtocolError::EncryptionFailed
        | ProtocolError::Random
        | ProtocolError::InvalidKey(_)
        | ProtocolError::UnsupportedCompression(_)
        | ProtocolError::Decompression(_) => V2Error::Internal,
    }
}

/// Looks requests up in the store.
#[derive(Clone)]
pub struct Lookup {
    pub store: Arc<Store>,
    pub limits: Limits,
    pub max_partitions: usize,
}

impl Lookup {
    /// The partition outputs of each compression group, in the order the groups first appear.
    pub fn answer(&self, request: &V2Request) -> Result<Vec<(u64, Vec<PartitionOutput>)>, Refusal> {
        let partitions = &request.partitions;
        if partitions.is_empty() {
            return Err(Refusal::new(V2Error::NoPartitions, "the request has no partitions"));
        }
        if partitions.len() > self.max_partitions {
            return Err(Refusal::new(
                V2Error::TooManyPartitions,
                format!(
                    "the request has {} partitions; the limit is {}",
                    partitions.len(),
                    self.max_partitions
                ),
            ));
        }
        let mut ids = HashSet::with_capacity(partitions.len());
        if let Some(dup) = partitions.iter().find(|p| !ids.insert(p.id)) {
            return Err(Refusal::new(
                V2Error::DuplicatePartition,
                format!("partition id {} appears twice; partition ids must be unique", dup.id),
            ));
        }
        let keys: usize = partitions.iter().flat_map(|p| &p.arguments).map(|a| a.data.len()).sum();
        if keys > self.limits.max_keys_per_request {
            return Err(Refusal::new(
                V2Error::TooManyKeys,
                format!(
                    "the request asks for {keys} keys; the limit is {} keys per request",
                    self.limits.max_keys_per_request
                ),
            ));
        }
        let mut groups: Vec<(u64, Vec<PartitionOutput>)> = Vec::new();
        // One view for the whole request: it never mixes two data files.
        let view = self.store.read();
        for partition in partitions {
            let output = PartitionOutput {
                id: partition.id,
                data_version: None,
                key_group_outputs: partition
                    .arguments
                    .iter()
                    .filter(|a| a.tags.iter().any(|t| cbor::tags::ALL.contains(&t.as_str())))
                    .filter_map(|a| {
                        let key_values: BTreeMap<String, KeyValue> = a
                            .data
                            .iter()
                            .filter_map(|key| {
                                view.get(key).map(|v| (key.clone(), KeyValue { value: render(v) }))
                            })
                            .collect();
                        (!key_values.is_empty()).then(|| KeyGroupOutput { tags: a.tags.clone(), key_values })
                    })
                    .collect(),
            };
            match groups.iter_mut().find(|(id, _)| *id == partition.compression_group_id) {
                Some((_, outputs)) => outputs.push(output),
                None => groups.push((partition.compression_group_id, vec![output])),
            }
        }
        Ok(groups)
    }
}

/// A stored value as the protocol's string: strings as they are (JSON text stays JSON text), a
/// string set as a JSON array of strings.
fn render(value: StoredValue) -> String {
    match value {
        StoredValue::String(s) => String::from(s),
        StoredValue::Json(json) => String::from(json.text),
        StoredValue::Set(members) => {
            let members: Vec<String> = members.into_vec().into_iter().map(String::from).collect();
            serde_json::Value::from(members).to_string()
        }
    }
}

/// The framed, padded, not yet encrypted response to a decrypted request.
fn oblivious_response(lookup: &Lookup, framed_request: &[u8]) -> Result<Vec<u8>, Refusal> {
    let protocol = |e: ProtocolError| Refusal::new(protocol_reason(&e), e.to_string());
    let payload = framing::unframe_request(framed_request).map_err(protocol)?;
    let request = cbor::decode_request(payload).map_err(protocol)?;
    let groups = lookup.answer(&request)?;
    let compression = compression::negotiate(&request.accept_compression);
    let compression_groups = groups
        .iter()
        .map(|(id, outputs)| CompressionGroup::new(*id, outputs, compression))
        .collect::<Result<Vec<_>, _>>()
        .map_err(protocol)?;
    let body = cbor::encode_response(&V2Response { compression_groups }).map_err(protocol)?;
    framing::frame_response(compression, &body)
        .map_err(|e| Refusal::new(V2Error::ResponseTooLarge, e.to_string()))
}

/// `kv_server.v2.KeyValueService`.
#[derive(Clone)]
pub struct V2Service {
    lookup: Lookup,
    keys: Arc<KeyManager>,
    plaintext_lookups: bool,
}

impl V2Service {
    pub fn new(
        store: Arc<Store>,
        limits: Limits,
        v2: &V2Config,
        keys: Arc<KeyManager>,
        plaintext_lookups: bool,
    ) -> V2Service {
        V2Service {
            lookup: Lookup { store, limits, max_partitions: v2.max_partitions },
            keys,
            plaintext_lookups,
        }
    }

    /// The tonic service, with the same hard decoding cap as v1 above the configured limit.
    pub fn into_service(self) -> KeyValueServiceServer<V2Service> {
        let cap = self.lookup.limits.max_request_bytes.saturating_mul(4).max(4 * 1024 * 1024);
        KeyValueServiceServer::new(self).max_decoding_message_size(cap)
    }

    fn check_size(&self, method: V2Method, len: usize) -> Result<(), Status> {
        let max = self.lookup.limits.max_request_bytes;
        if len > max {
            counters::v2_error(method, V2Error::RequestTooLarge);
            return Err(Status::invalid_argument(format!(
                "request body is {len} bytes; the limit is {max} bytes"
            )));
        }
        Ok(())
    }
}

fn refused(method: V2Method, refusal: Refusal) -> Status {
    counters::v2_error(method, refusal.reason);
    Status::invalid_argument(refusal.message)
}

#[tonic::async_trait]
impl KeyValueService for V2Service {
    async fn get_values_http(
        &self,
        request: Request<GetValuesHttpRequest>,
    ) -> Result<Response<HttpBody>, Status> {
        let method = V2Method::GetValuesHttp;
        counters::v2_request(method);
        if !self.plaintext_lookups {
            counters::v2_error(method, V2Error::PlaintextDisabled);
            return Err(Status::failed_precondition(PLAINTEXT_DISABLED));
        }
        let body = request.into_inner().raw_body.unwrap_or_default().data;
        self.check_size(method, body.len())?;
        let request = cbor::decode_request_json(&body)
            .map_err(|e| refused(method, Refusal::new(V2Error::BadJson, e.to_string())))?;
        let groups = self.lookup.answer(&request).map_err(|r| refused(method, r))?;
        let response = PlaintextResponse {
            compression_groups: groups
                .into_iter()
                .map(|(compression_group_id, content)| PlaintextCompressionGroup {
                    compression_group_id,
                    ttl_ms: None,
                    content,
                })
                .collect(),
        };
        let data = serde_json::to_vec(&response).map_err(|e| {
            counters::v2_error(method, V2Error::Internal);
            Status::internal(format!("encoding the answer: {e}"))
        })?;
        Ok(Response::new(HttpBody { content_type: JSON.into(), data, extensions: Vec::new() }))
    }

    async fn oblivious_get_values(
        &self,
        request: Request<ObliviousGetValuesRequest>,
    ) -> Result<Response<HttpBody>, Status> {
        let method = V2Method::ObliviousGetValues;
        counters::v2_request(method);
        let body = request.into_inner().raw_body.unwrap_or_default().data;
        self.check_size(method, body.len())?;
        let (lookup, keys) = (self.lookup.clone(), self.keys.clone());
        // Decryption, lookups, compression and encryption are CPU work: off the async workers.
        let outcome = tokio::task::spawn_blocking(move || {
            let ring = keys.ring();
            let (framed, context) = match server::decrypt_request(|id| ring.secret(id), &body) {
                Ok(decrypted) => decrypted,
                Err(e) => return Err(Refusal::new(protocol_reason(&e), e.to_string())),
            };
            // From here on the reason is counted but not returned.
            let generic = |r: Refusal| Refusal::new(r.reason, INVALID_DECRYPTED_REQUEST);
            let response = oblivious_response(&lookup, &framed).map_err(generic)?;
            context.encrypt_response(&response).map_err(|e| generic(Refusal::new(protocol_reason(&e), "")))
        })
        .await
        .map_err(|e| {
            counters::v2_error(method, V2Error::Internal);
            Status::internal(format!("the lookup task failed: {e}"))
        })?;
        let data = outcome.map_err(|r| refused(method, r))?;
        Ok(Response::new(HttpBody {
            content_type: suite::RESPONSE_LABEL.into(),
            data,
            extensions: Vec::new(),
        }))
    }
}

/// `kv_server.v2.KeyService`.
#[derive(Clone)]
pub struct KeyEndpoint {
    keys: Arc<KeyManager>,
    attester: Arc<dyn Attester>,
}

impl KeyEndpoint {
    pub fn new(keys: Arc<KeyManager>, attester: Arc<dyn Attester>) -> KeyEndpoint {
        KeyEndpoint { keys, attester }
    }

    pub fn into_service(self) -> KeyServiceServer<KeyEndpoint> {
        KeyServiceServer::new(self)
    }

    /// The key set JSON for a decoded nonce (empty: none).
    pub async fn key_set(&self, nonce: Vec<u8>) -> Result<PublicKeySet, Status> {
        let ring = self.keys.ring();
        let keys = ring.public_keys();
        if keys.is_empty() {
            // Fleet keys not loaded yet (or refused by KMS): no key set, and no document.
            return Err(Status::unavailable(NO_KEYS));
        }
        let digest = key_set_sha256(keys.iter().map(|(id, k)| (*id, k)));
        let user_data = key_set_user_data(&digest);
        let nonce = (!nonce.is_empty()).then_some(nonce);
        let attester = self.attester.clone();
        let attested = tokio::task::spawn_blocking(move || attester.attest(Some(user_data), nonce))
            .await
            .map_err(|e| Status::internal(format!("attestation task failed: {e}")))?;
        let (attestation_document, attestation_unavailable) = match attested {
            Ok(document) => (Some(base64::engine::general_purpose::STANDARD.encode(document)), None),
            Err(AttestError::NoNsm) => (None, Some(AttestError::NoNsm.to_string())),
            // An enclave whose NSM fails serves no keys rather than keys without their proof.
            Err(e) => return Err(Status::from(e)),
        };
        Ok(PublicKeySet {
            keys: keys.iter().map(|(id, key)| PublicKeyEntry::new(*id, key)).collect(),
            key_set_sha256: hex::encode(digest),
            attestation_document,
            attestation_unavailable,
        })
    }
}

#[tonic::async_trait]
impl KeyService for KeyEndpoint {
    async fn get_public_keys(
        &self,
        request: Request<GetPublicKeysRequest>,
    ) -> Result<Response<HttpBody>, Status> {
        let method = V2Method::GetPublicKeys;
        counters::v2_request(method);
        let text = request.into_inner().nonce;
        let nonce = hex::decode(text.trim()).map_err(|_| {
            counters::v2_error(method, V2Error::BadNonce);
            Status::invalid_argument("nonce must be hexadecimal (an even number of 0-9, a-f)")
        })?;
        if nonce.len() > MAX_NONCE {
            counters::v2_error(method, V2Error::BadNonce);
            return Err(Status::invalid_argument(format!(
                "nonce is {} bytes; at most {MAX_NONCE} are allowed",
                nonce.len()
            )));
        }
        let set = self.key_set(nonce).await.inspect_err(|_| counters::v2_error(method, V2Error::Internal))?;
        let data =
            serde_json::to_vec(&set).map_err(|e| Status::internal(format!("encoding the key set: {e}")))?;
        Ok(Response::new(HttpBody { content_type: JSON.into(), data, extensions: Vec::new() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Mutation, Record, Value as DataValue};
    use kv_protocol::cbor::{Argument, Partition};
    use kv_protocol::client;
    use kv_protocol::framing::Compression;

    fn store() -> Arc<Store> {
        let store = Arc::new(Store::new());
        let update = |key: &str, value: DataValue| Record {
            key: key.into(),
            logical_commit_time: 1,
            mutation: Mutation::Update(value),
        };
        store.apply(vec![
            update("a", DataValue::String("alpha".into())),
            update("j", DataValue::String("{\"x\":1}".into())),
            update("s", DataValue::StringSet(vec!["m1".into(), "m\"2".into()])),
        ]);
        store
    }

    fn lookup(max_keys: usize, max_partitions: usize) -> Lookup {
        Lookup {
            store: store(),
            limits: Limits { max_keys_per_request: max_keys, ..Limits::default() },
            max_partitions,
        }
    }

    fn partition(id: u64, group: u64, tag: &str, keys: &[&str]) -> Partition {
        Partition {
            id,
            compression_group_id: group,
            metadata: None,
            arguments: vec![Argument {
                tags: vec![tag.into()],
                data: keys.iter().map(|k| k.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn answers_group_partitions_and_leave_missing_keys_out() {
        let request = V2Request {
            partitions: vec![
                partition(0, 5, "keys", &["a", "missing", "s"]),
                partition(1, 9, "renderUrls", &["j"]),
                partition(2, 5, "interestGroupNames", &["missing"]),
                Partition {
                    arguments: vec![Argument { tags: vec!["structured".into()], data: vec!["a".into()] }],
                    ..partition(3, 9, "keys", &[])
                },
            ],
            ..Default::default()
        };
        let groups = lookup(10, 10).answer(&request).unwrap();
        assert_eq!(groups.iter().map(|(id, o)| (*id, o.len())).collect::<Vec<_>>(), [(5, 2), (9, 2)]);
        let first = &groups[0].1[0];
        assert_eq!(first.id, 0);
        let values = &first.key_group_outputs[0].key_values;
        assert_eq!(values["a"].value, "alpha");
        assert_eq!(values["s"].value, r#"["m1","m\"2"]"#, "a set is a JSON array of strings");
        assert!(!values.contains_key("missing"));
        assert_eq!(groups[1].1[0].key_group_outputs[0].key_values["j"].value, "{\"x\":1}", "JSON text as is");
        assert!(groups[0].1[1].key_group_outputs.is_empty(), "a group with nothing found is left out");
        assert!(
            groups[1].1[1].key_group_outputs.is_empty(),
            "an argument without a namespace tag is ignored"
        );
    }

    #[test]
    fn limits_and_malformed_requests_are_refused_with_a_reason() {
        let lookup = lookup(3, 2);
        let cases = [
            (V2Request::default(), V2Error::NoPartitions),
            (
                V2Request {
                    partitions: vec![
                        partition(0, 0, "keys", &["a"]),
                        partition(1, 0, "keys", &["a"]),
                        partition(2, 0, "keys", &[]),
                    ],
                    ..Default::default()
                },
                V2Error::TooManyPartitions,
            ),
            (
                V2Request {
                    partitions: vec![partition(4, 0, "keys", &["a"]), partition(4, 1, "keys", &["a"])],
                    ..Default::default()
                },
                V2Error::DuplicatePartition,
            ),
            (
                V2Request {
                    partitions: vec![partition(0, 0, "keys", &["a", "b", "c", "d"])],
                    ..Default::default()
                },
                V2Error::TooManyKeys,
            ),
        ];
        for (request, reason) in cases {
            let refusal = lookup.answer(&request).unwrap_err();
            assert_eq!(refusal.reason, reason, "{}", refusal.message);
        }
        let refusal = lookup
            .answer(&V2Request {
                partitions: vec![partition(0, 0, "keys", &["a", "b", "c", "d"])],
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            refusal.message.contains("4 keys") && refusal.message.contains("limit is 3"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn the_oblivious_response_is_framed_compressed_and_padded() {
        let request = V2Request {
            partitions: vec![partition(0, 0, "keys", &["a"]), partition(1, 1, "keys", &["s"])],
            accept_compression: vec!["none".into(), "gzip".into()],
            ..Default::default()
        };
        let framed = framing::frame_request(&cbor::encode_request(&request).unwrap()).unwrap();
        let response = oblivious_response(&lookup(10, 10), &framed).unwrap();
        assert_eq!(response.len(), framing::padded_len(response.len()), "padded to a bucket");
        let (compression, payload) = framing::unframe(&response).unwrap();
        assert_eq!(compression, Compression::Gzip);
        let decoded = cbor::decode_response(payload).unwrap();
        assert_eq!(decoded.compression_groups.len(), 2, "each group compressed on its own");
        let outputs = decoded.compression_groups[1].partition_outputs(compression, 1 << 20).unwrap();
        assert_eq!(outputs[0].key_group_outputs[0].key_values["s"].value, r#"["m1","m\"2"]"#);

        let bad = oblivious_response(&lookup(10, 10), &framing::frame_request(b"\xff").unwrap()).unwrap_err();
        assert_eq!(bad.reason, V2Error::BadCbor);
        let compressed = framing::frame(Compression::Gzip, b"", 0).unwrap();
        assert_eq!(oblivious_response(&lookup(10, 10), &compressed).unwrap_err().reason, V2Error::BadFraming);
    }

    #[tokio::test]
    async fn oblivious_errors_after_decryption_are_generic_and_counted() {
        let keys = Arc::new(KeyManager::new(&V2Config::default()).unwrap());
        let service = V2Service::new(
            store(),
            Limits::default(),
            &V2Config { max_partitions: 1, ..V2Config::default() },
            keys.clone(),
            true,
        );
        let ring = keys.ring();
        let (id, public) = ring.public_keys()[0];
        let too_many = V2Request {
            partitions: vec![partition(0, 0, "keys", &["a"]), partition(1, 0, "keys", &["a"])],
            ..Default::default()
        };
        let framed = framing::frame_request(&cbor::encode_request(&too_many).unwrap()).unwrap();
        let (message, _) = client::encrypt_request(id, &public, &framed).unwrap();
        let before = counters::v2_errors(V2Method::ObliviousGetValues, V2Error::TooManyPartitions);
        let err = service
            .oblivious_get_values(Request::new(ObliviousGetValuesRequest {
                raw_body: Some(HttpBody {
                    content_type: suite::REQUEST_LABEL.into(),
                    data: message,
                    extensions: vec![],
                }),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), INVALID_DECRYPTED_REQUEST, "no detail of the plaintext in the status");
        assert!(counters::v2_errors(V2Method::ObliviousGetValues, V2Error::TooManyPartitions) > before);

        let (unknown, _) = client::encrypt_request(id.wrapping_add(7), &public, &framed).unwrap();
        let err = service
            .oblivious_get_values(Request::new(ObliviousGetValuesRequest {
                raw_body: Some(HttpBody { content_type: String::new(), data: unknown, extensions: vec![] }),
            }))
            .await
            .unwrap_err();
        assert!(
            err.message().contains("unknown key id"),
            "before decryption the cause is named: {}",
            err.message()
        );
    }

    #[tokio::test]
    async fn the_key_set_binds_its_digest_and_the_nonce() {
        let keys = Arc::new(KeyManager::new(&V2Config::default()).unwrap());
        keys.rotate().unwrap();
        let double = Arc::new(crate::attestation::tests::RecordingAttester::default());
        let endpoint = KeyEndpoint::new(keys.clone(), double.clone());
        let set = endpoint.key_set(b"fresh".to_vec()).await.unwrap();
        assert_eq!(set.keys.len(), 2, "current and previous");
        assert_eq!(set.keys[0].key_id().unwrap(), keys.ring().current_id().unwrap());
        let digest = set.computed_sha256().unwrap();
        assert_eq!(hex::encode(digest), set.key_set_sha256);
        let asked = double.asked.lock().unwrap().clone();
        let mut expected_user_data = b"nitro-kv:keyset:v1:".to_vec();
        expected_user_data.extend_from_slice(&digest);
        assert_eq!(asked, [(Some(expected_user_data), Some(b"fresh".to_vec()))]);
        assert_eq!(
            set.attestation_document,
            Some(base64::engine::general_purpose::STANDARD.encode(b"document from the test double"))
        );

        if !std::path::Path::new(crate::attestation::NSM_DEVICE).exists() {
            let real = KeyEndpoint::new(keys, Arc::new(crate::attestation::Nsm));
            let set = real.key_set(Vec::new()).await.unwrap();
            assert_eq!(set.attestation_document, None, "nothing is fabricated outside an enclave");
            assert_eq!(set.attestation_unavailable.as_deref(), Some(crate::attestation::NO_NSM));
        }
        let err = endpoint
            .get_public_keys(Request::new(GetPublicKeysRequest { nonce: "xyz".into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
