//! The CBOR messages (the draft's §2.2.3 request schema, §2.3.3 response schema and §2.3.3.1
//! compression group content) as typed structs, and their encoding.
//!
//! Encoding is deterministic in the sense browsers check (RFC 8949 §4.2.3, "length-first" map key
//! order, as Chromium's CBOR reader requires): struct fields are declared in that order and
//! string-keyed maps are sorted by key length, then bytes. Decoding ignores unknown fields (a
//! newer client may send more), and its errors name the field path and the kind of mismatch,
//! never a value.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

use crate::ProtocolError;
use crate::compression;
use crate::framing::Compression;

/// The tags of a request argument that name what its `data` are (the draft's §2.2.3.1).
pub mod tags {
    pub const KEYS: &str = "keys";
    pub const RENDER_URLS: &str = "renderUrls";
    pub const AD_COMPONENT_RENDER_URLS: &str = "adComponentRenderUrls";
    pub const INTEREST_GROUP_NAMES: &str = "interestGroupNames";
    /// Every namespace tag.
    pub const ALL: [&str; 4] = [KEYS, RENDER_URLS, AD_COMPONENT_RENDER_URLS, INTEREST_GROUP_NAMES];
}

/// A request (`request` in the draft's CDDL).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Request-wide metadata (e.g. `hostname`).
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "canonical_opt")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// At least one.
    pub partitions: Vec<Partition>,
    /// `none`, `gzip`, `brotli`: what the client can read in the response's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_compression: Vec<String>,
}

/// Keys processed together; partitions are never processed together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "canonical_opt")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub arguments: Vec<Argument>,
    /// Partitions with the same compression group are compressed together in the response.
    pub compression_group_id: u64,
}

/// One group of keys (`data`) and what they are (`tags`, one of [`tags::ALL`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Argument {
    #[serde(default)]
    pub data: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The response (`response` in the draft's CDDL).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    #[serde(default)]
    pub compression_groups: Vec<CompressionGroup>,
}

/// One compression group: its partitions' outputs, a CBOR array compressed as the framing
/// header says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompressionGroup {
    /// Client-side caching time; unset: no caching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    #[serde(default)]
    pub compression_group_id: u64,
}

/// The output for one request partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionOutput {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_version: Option<u64>,
    #[serde(default)]
    pub key_group_outputs: Vec<KeyGroupOutput>,
}

/// The values found for one request argument: a key without a value is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyGroupOutput {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, serialize_with = "canonical")]
    pub key_values: BTreeMap<String, KeyValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The value as a string (a JSON text for structured values, e.g. a string set is a JSON
    /// array of strings).
    pub value: String,
}

/// The plaintext form of a response (`GetValuesHttp`, JSON): each group's content inline as
/// JSON instead of compressed CBOR bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaintextResponse {
    pub compression_groups: Vec<PlaintextCompressionGroup>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaintextCompressionGroup {
    pub compression_group_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    pub content: Vec<PartitionOutput>,
}

fn canonical_key_order(a: &&String, b: &&String) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

fn canonical<S: Serializer, V: Serialize>(map: &BTreeMap<String, V>, s: S) -> Result<S::Ok, S::Error> {
    let mut entries: Vec<(&String, &V)> = map.iter().collect();
    entries.sort_by(|a, b| canonical_key_order(&a.0, &b.0));
    s.collect_map(entries)
}

fn canonical_opt<S: Serializer, V: Serialize>(
    map: &Option<BTreeMap<String, V>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match map {
        Some(map) => canonical(map, s),
        None => s.serialize_none(),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| ProtocolError::BadCbor {
        path: String::new(),
        problem: format!("encoding failed: {e}"),
    })?;
    Ok(out)
}

/// Field names of the schema: the only map keys an error message may quote.
const SCHEMA_FIELDS: &[&str] = &[
    "metadata",
    "partitions",
    "acceptCompression",
    "id",
    "arguments",
    "compressionGroupId",
    "data",
    "tags",
    "compressionGroups",
    "ttlMs",
    "content",
    "dataVersion",
    "keyGroupOutputs",
    "keyValues",
    "value",
];

fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if SCHEMA_FIELDS.contains(&key.as_str()) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            // A key of a metadata or keyValues map is data: never quoted.
            Segment::Map { .. } | Segment::Enum { .. } | Segment::Unknown => out.push_str(".<entry>"),
        }
    }
    if out.is_empty() { "the top level".into() } else { out }
}

/// What kind of mismatch a serde message describes, without the value it quotes.
fn problem(message: &str) -> String {
    let expected = message.rsplit_once(", expected ").map(|(_, e)| e);
    if message.starts_with("missing field") || message.starts_with("duplicate field") {
        message.to_string()
    } else if message.starts_with("invalid type") {
        format!("wrong type, expected {}", expected.unwrap_or("another type"))
    } else if message.starts_with("invalid value") {
        format!("invalid value, expected {}", expected.unwrap_or("another value"))
    } else if message.starts_with("invalid length") {
        format!("wrong number of items, expected {}", expected.unwrap_or("another number"))
    } else {
        "does not match the schema".into()
    }
}

std::thread_local! {
    /// Where the last failed CBOR decode on this thread stopped (see [`Tracked`]).
    static FAILED_AT: std::cell::RefCell<Option<serde_path_to_error::Path>> = const { std::cell::RefCell::new(None) };
}

/// `T`, deserialized with its path tracked: ciborium's deserializer is not public, so the
/// tracking wraps it from inside `Deserialize` and leaves the path of a failure in [`FAILED_AT`].
struct Tracked<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tracked<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut track = serde_path_to_error::Track::new();
        match T::deserialize(serde_path_to_error::Deserializer::new(deserializer, &mut track)) {
            Ok(value) => Ok(Tracked(value)),
            Err(e) => {
                FAILED_AT.with(|at| *at.borrow_mut() = Some(track.path()));
                Err(e)
            }
        }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    FAILED_AT.with(|at| at.borrow_mut().take());
    ciborium::from_reader::<Tracked<T>, _>(bytes).map(|t| t.0).map_err(|e| {
        let path = FAILED_AT.with(|at| at.borrow_mut().take());
        let path = path.as_ref().map_or_else(|| "the top level".to_string(), render_path);
        let problem = match e {
            ciborium::de::Error::Io(_) => "truncated CBOR".to_string(),
            ciborium::de::Error::Syntax(offset) => format!("malformed CBOR (byte {offset})"),
            ciborium::de::Error::Semantic(_, message) => problem(&message),
            ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".to_string(),
        };
        ProtocolError::BadCbor { path, problem }
    })
}

pub fn encode_request(request: &Request) -> Result<Vec<u8>, ProtocolError> {
    encode(request)
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, ProtocolError> {
    decode(bytes)
}

/// A request in JSON (the plaintext `GetValuesHttp` body): the same schema, the same
/// value-free errors (as [`ProtocolError::BadCbor`] with a `JSON:` problem).
pub fn decode_request_json(bytes: &[u8]) -> Result<Request, ProtocolError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = render_path(e.path());
        let inner = e.into_inner();
        let problem = match inner.classify() {
            serde_json::error::Category::Data => {
                let text = inner.to_string();
                let text = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
                problem(text)
            }
            serde_json::error::Category::Eof => "truncated JSON".into(),
            _ => format!("malformed JSON (line {}, column {})", inner.line(), inner.column()),
        };
        ProtocolError::BadCbor { path, problem: format!("JSON: {problem}") }
    })
}

pub fn encode_response(response: &Response) -> Result<Vec<u8>, ProtocolError> {
    encode(response)
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, ProtocolError> {
    decode(bytes)
}

/// A compression group's content before compression: a CBOR array of partition outputs.
pub fn encode_partition_outputs(outputs: &[PartitionOutput]) -> Result<Vec<u8>, ProtocolError> {
    encode(&outputs)
}

pub fn decode_partition_outputs(bytes: &[u8]) -> Result<Vec<PartitionOutput>, ProtocolError> {
    decode(bytes)
}

impl CompressionGroup {
    /// A group with `outputs` encoded and compressed.
    pub fn new(
        compression_group_id: u64,
        outputs: &[PartitionOutput],
        compression: Compression,
    ) -> Result<CompressionGroup, ProtocolError> {
        let content = compression::compress(compression, &encode_partition_outputs(outputs)?)?;
        Ok(CompressionGroup { ttl_ms: None, content, compression_group_id })
    }

    /// The group's partition outputs: decompressed (at most `max_len` bytes) and decoded.
    pub fn partition_outputs(
        &self,
        compression: Compression,
        max_len: usize,
    ) -> Result<Vec<PartitionOutput>, ProtocolError> {
        decode_partition_outputs(&compression::decompress(compression, &self.content, max_len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request() -> Request {
        Request {
            metadata: Some(BTreeMap::from([("hostname".into(), "example.com".into())])),
            partitions: vec![
                Partition {
                    id: 0,
                    compression_group_id: 0,
                    metadata: Some(BTreeMap::from([
                        ("slotSize".into(), "100,200".into()),
                        ("experimentGroupId".into(), "12345".into()),
                    ])),
                    arguments: vec![
                        Argument {
                            tags: vec!["interestGroupNames".into()],
                            data: vec!["InterestGroup1".into()],
                        },
                        Argument {
                            tags: vec!["keys".into()],
                            data: vec!["keyAfromInterestGroup1".into(), "keyBfromInterestGroup1".into()],
                        },
                    ],
                },
                Partition {
                    id: 1,
                    compression_group_id: 0,
                    metadata: None,
                    arguments: vec![Argument {
                        tags: vec!["keys".into()],
                        data: vec!["keyMfromInterestGroup2".into()],
                    }],
                },
            ],
            accept_compression: vec!["none".into(), "gzip".into()],
        }
    }

    /// Map keys of every CBOR map in `value`, checked for length-first order.
    fn assert_canonical(value: &ciborium::Value) {
        match value {
            ciborium::Value::Map(entries) => {
                let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_text().expect("text keys")).collect();
                let mut sorted = keys.clone();
                sorted.sort_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
                assert_eq!(keys, sorted, "map keys in length-first order");
                entries.iter().for_each(|(_, v)| assert_canonical(v));
            }
            ciborium::Value::Array(items) => items.iter().for_each(assert_canonical),
            _ => {}
        }
    }

    #[test]
    fn the_drafts_example_request_round_trips_canonically() {
        let request = sample_request();
        let bytes = encode_request(&request).unwrap();
        let value: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_canonical(&value);
        assert_eq!(decode_request(&bytes).unwrap(), request);
    }

    #[test]
    fn a_request_from_another_encoder_decodes_and_unknown_fields_are_ignored() {
        // As a browser might build it: keys in its own order, an extra field, integers small.
        let value = ciborium::Value::Map(vec![
            ("acceptCompression".into(), ciborium::Value::Array(vec!["gzip".into()])),
            ("futureField".into(), ciborium::Value::Bool(true)),
            (
                "partitions".into(),
                ciborium::Value::Array(vec![ciborium::Value::Map(vec![
                    ("compressionGroupId".into(), 3.into()),
                    ("id".into(), 7.into()),
                    (
                        "arguments".into(),
                        ciborium::Value::Array(vec![ciborium::Value::Map(vec![
                            ("tags".into(), ciborium::Value::Array(vec!["renderUrls".into()])),
                            ("data".into(), ciborium::Value::Array(vec!["https://a.example/1".into()])),
                        ])]),
                    ),
                ])]),
            ),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&value, &mut bytes).unwrap();
        let request = decode_request(&bytes).unwrap();
        assert_eq!(request.accept_compression, ["gzip"]);
        assert_eq!((request.partitions[0].id, request.partitions[0].compression_group_id), (7, 3));
        assert_eq!(request.partitions[0].arguments[0].data, ["https://a.example/1"]);
    }

    #[test]
    fn errors_name_the_field_but_never_the_value() {
        let bad_id = ciborium::Value::Map(vec![(
            "partitions".into(),
            ciborium::Value::Array(vec![ciborium::Value::Map(vec![
                ("id".into(), "SECRET-VALUE".into()),
                ("compressionGroupId".into(), 0.into()),
            ])]),
        )]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&bad_id, &mut bytes).unwrap();
        let err = decode_request(&bytes).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("partitions[0].id") && text.contains("wrong type"), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
        assert_eq!(err.reason(), "bad_cbor");

        let secret_key_in_metadata = ciborium::Value::Map(vec![
            (
                "metadata".into(),
                ciborium::Value::Map(vec![("SECRET-KEY".into(), ciborium::Value::Integer(1.into()))]),
            ),
            ("partitions".into(), ciborium::Value::Array(vec![])),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&secret_key_in_metadata, &mut bytes).unwrap();
        let text = decode_request(&bytes).unwrap_err().to_string();
        assert!(text.contains("metadata.<entry>") && !text.contains("SECRET"), "{text}");

        let missing = encode(&BTreeMap::from([("acceptCompression", vec!["gzip"])])).unwrap();
        let text = decode_request(&missing).unwrap_err().to_string();
        assert!(text.contains("missing field `partitions`"), "{text}");
        for garbage in [&b""[..], &[0xff, 0x00][..], &[0xa1, 0x61][..], b"not cbor at all"] {
            let err = decode_request(garbage).unwrap_err();
            assert_eq!(err.reason(), "bad_cbor", "{garbage:?}: {err}");
        }
        let err =
            decode_request_json(br#"{"partitions":[{"id":"SECRET","compressionGroupId":0}]}"#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("partitions[0].id") && !text.contains("SECRET"), "{text}");
        assert!(decode_request_json(b"{").unwrap_err().to_string().contains("truncated JSON"));
    }

    #[test]
    fn response_and_groups_round_trip_with_each_compression() {
        let outputs = vec![PartitionOutput {
            id: 0,
            data_version: None,
            key_group_outputs: vec![KeyGroupOutput {
                tags: vec!["keys".into()],
                key_values: BTreeMap::from([
                    ("bb".into(), KeyValue { value: "2".into() }),
                    ("a".into(), KeyValue { value: "1".into() }),
                    ("ab".into(), KeyValue { value: "[\"x\",\"y\"]".into() }),
                ]),
            }],
        }];
        for compression in [Compression::None, Compression::Gzip] {
            let group = CompressionGroup::new(4, &outputs, compression).unwrap();
            let response = Response { compression_groups: vec![group] };
            let bytes = encode_response(&response).unwrap();
            let value: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
            assert_canonical(&value);
            let decoded = decode_response(&bytes).unwrap();
            assert_eq!(decoded, response);
            let group = &decoded.compression_groups[0];
            assert_eq!(group.compression_group_id, 4);
            assert_eq!(group.partition_outputs(compression, 1 << 20).unwrap(), outputs);
            let content: ciborium::Value = ciborium::from_reader(
                compression::decompress(compression, &group.content, 1 << 20).unwrap().as_slice(),
            )
            .unwrap();
            assert_canonical(&content);
        }
        // The draft's example compression group decodes.
        let example = ciborium::Value::Array(vec![ciborium::Value::Map(vec![
            ("id".into(), 0.into()),
            (
                "keyGroupOutputs".into(),
                ciborium::Value::Array(vec![ciborium::Value::Map(vec![
                    ("tags".into(), ciborium::Value::Array(vec!["keys".into()])),
                    (
                        "keyValues".into(),
                        ciborium::Value::Map(vec![(
                            "keyAfromInterestGroup1".into(),
                            ciborium::Value::Map(vec![("value".into(), "valueForA".into())]),
                        )]),
                    ),
                ])]),
            ),
        ])]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&example, &mut bytes).unwrap();
        let outputs = decode_partition_outputs(&bytes).unwrap();
        assert_eq!(outputs[0].key_group_outputs[0].key_values["keyAfromInterestGroup1"].value, "valueForA");
    }

    proptest::proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
            let _ = decode_partition_outputs(&bytes);
            let _ = decode_request_json(&bytes);
        }
    }
}
