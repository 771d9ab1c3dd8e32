//! `kv_server.v1.KeyValueService/GetValues`.
//!
//! Every repeated field may carry several keys in one comma-separated string (browsers send
//! `?keys=a,b`); the pieces are split, empty pieces dropped and duplicates merged. The
//! `max_keys_per_request` limit counts the pieces as sent, before splitting. Every requested
//! key gets an entry: its value, or a NOT_FOUND status. All namespaces (`keys`, `renderUrls`,
//! `adComponentRenderUrls`, `kvInternal`, interest group names) are looked up in the one store;
//! `subkey`/`hostname` are accepted and not used for lookups (as in the reference's v1 path without
//! user-defined functions).
//!
//! A string value that is valid JSON is returned as that JSON value (an object stays an object,
//! `"12"` becomes the number 12), any other string as a string: the reference server does the same,
//! so clients see the same responses. A string set is a list of strings. Whether a string is JSON
//! is decided once, at load, and the response is written straight from the stored bytes
//! ([`crate::pbvalue`]).

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use crate::config::Limits;
use crate::pbvalue::{field_len, put_field_header};
use crate::proto::encoded::EncodedGetValuesResponse;
use crate::proto::google::rpc;
use crate::proto::kv_server::v1::GetValuesRequest;
use crate::store::{ReadView, Store, StoredValue};
use crate::telemetry::QueryStats;

/// GetValues' answer while plaintext lookups are off (also ObliviousGetValues' hint in v2).
pub const PLAINTEXT_DISABLED: &str = "plaintext lookups are turned off on this server (plaintext_lookups = \
     false): send an encrypted request to ObliviousGetValues (POST /v2/oblivious_getvalues) with a key \
     from GET /v2/keys";

pub use crate::proto::encoded::{KeyValueService, KeyValueServiceServer};

/// google.rpc.Code NOT_FOUND.
const CODE_NOT_FOUND: i32 = 5;

/// `V1SingleLookupResult.value` and `.status`.
const RESULT_VALUE: u32 = 1;
const RESULT_STATUS: u32 = 2;
/// The key and value of a protobuf map entry.
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;

/// A `kv_server.v1.GetValuesResponse` in its wire encoding, written by [`QueryService::answer`]
/// straight from the stored bytes (see [`crate::pbvalue`]), with what telemetry counts of it;
/// decode it with `GetValuesResponse::decode(response.as_bytes())`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncodedResponse {
    bytes: Vec<u8>,
    /// Keys answered (for telemetry; not part of the encoding).
    keys: u64,
    /// Keys answered NOT_FOUND.
    not_found: u64,
}

impl EncodedResponse {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

pub struct QueryService {
    store: Arc<Store>,
    limits: Limits,
    plaintext_lookups: bool,
    /// The encoded `V1SingleLookupResult` of a key without a value (the same for every key).
    not_found: Box<[u8]>,
}

impl QueryService {
    pub fn new(store: Arc<Store>, limits: Limits) -> QueryService {
        let status =
            rpc::Status { code: CODE_NOT_FOUND, message: "Key not found".into(), details: Vec::new() };
        let status = status.encode_to_vec();
        let mut not_found = Vec::new();
        put_field_header(RESULT_STATUS, status.len(), &mut not_found);
        not_found.extend_from_slice(&status);
        QueryService { store, limits, plaintext_lookups: true, not_found: not_found.into_boxed_slice() }
    }

    /// With `false`, GetValues answers FAILED_PRECONDITION ([`PLAINTEXT_DISABLED`]).
    pub fn with_plaintext_lookups(self, enabled: bool) -> QueryService {
        QueryService { plaintext_lookups: enabled, ..self }
    }

    /// The tonic service, with a hard decoding cap well above the configured request limit so
    /// that requests between the two get INVALID_ARGUMENT from [`QueryService::get_values`].
    pub fn into_service(self) -> KeyValueServiceServer<QueryService> {
        let cap = self.limits.max_request_bytes.saturating_mul(4).max(4 * 1024 * 1024);
        KeyValueServiceServer::new(self).max_decoding_message_size(cap)
    }

    /// Answers one request (the gRPC method without the transport around it).
    pub fn answer(&self, request: &GetValuesRequest) -> Result<EncodedResponse, Status> {
        let size = request.encoded_len();
        if size > self.limits.max_request_bytes {
            return Err(Status::invalid_argument(format!(
                "request is {size} bytes; the limit is {} bytes",
                self.limits.max_request_bytes
            )));
        }
        let all = [
            &request.keys,
            &request.render_urls,
            &request.ad_component_render_urls,
            &request.kv_internal,
            &request.interest_group_names,
        ];
        // Counted before anything is split or allocated: a field of millions of commas costs one
        // vectorised byte count, not millions of pieces to sort and de-duplicate.
        let total: usize = all.iter().map(|fields| pieces(fields)).sum();
        if total > self.limits.max_keys_per_request {
            return Err(Status::invalid_argument(format!(
                "request asks for {total} keys; the limit is {} keys per request (comma-separated \
                 pieces as sent, empty pieces and duplicates included)",
                self.limits.max_keys_per_request
            )));
        }
        let fields = all.map(|fields| split(fields));
        // A first guess at the size (key + a short value per key); the buffer grows if needed.
        let guess: usize = fields.iter().flatten().map(|k| k.len() + 64).sum();
        let mut response = EncodedResponse { bytes: Vec::with_capacity(guess), keys: 0, not_found: 0 };
        // One view for the whole request: it never mixes two data files.
        let view = self.store.read();
        // GetValuesResponse's five maps are fields 1 to 5, in the order of the request's fields.
        for (field, keys) in (1u32..).zip(fields) {
            for key in keys {
                let found = self.put_entry(&view, field, key, &mut response.bytes);
                response.keys += 1;
                response.not_found += u64::from(!found);
            }
        }
        Ok(response)
    }

    /// Writes one map entry `key -> V1SingleLookupResult` of map field `field`; whether the key
    /// has a value.
    fn put_entry(&self, view: &ReadView<'_>, field: u32, key: &str, out: &mut Vec<u8>) -> bool {
        view.with(key, |value| {
            let result_len = match value {
                Some(value) => field_len(RESULT_VALUE, value_len(value)),
                None => self.not_found.len(),
            };
            let entry_len = field_len(ENTRY_KEY, key.len()) + field_len(ENTRY_VALUE, result_len);
            out.reserve(field_len(field, entry_len));
            put_field_header(field, entry_len, out);
            put_field_header(ENTRY_KEY, key.len(), out);
            out.extend_from_slice(key.as_bytes());
            put_field_header(ENTRY_VALUE, result_len, out);
            match value {
                Some(value) => {
                    put_field_header(RESULT_VALUE, value_len(value), out);
                    put_value(value, out);
                }
                None => out.extend_from_slice(&self.not_found),
            }
            value.is_some()
        })
    }
}

/// The encoded length of the `google.protobuf.Value` answering `value`.
fn value_len(value: &StoredValue) -> usize {
    match value {
        StoredValue::String(s) => crate::pbvalue::string_len(s),
        StoredValue::Json(json) => json.value.len(),
        StoredValue::Set(members) => crate::pbvalue::set_len(members),
    }
}

/// Writes the `google.protobuf.Value` answering `value` ([`value_len`] bytes).
fn put_value(value: &StoredValue, out: &mut Vec<u8>) {
    match value {
        StoredValue::String(s) => crate::pbvalue::put_string(s, out),
        StoredValue::Json(json) => out.extend_from_slice(&json.value),
        StoredValue::Set(members) => crate::pbvalue::put_set(members, out),
    }
}

#[tonic::async_trait]
impl KeyValueService for QueryService {
    async fn get_values(
        &self,
        request: Request<GetValuesRequest>,
    ) -> Result<Response<EncodedGetValuesResponse>, Status> {
        let result = if self.plaintext_lookups {
            self.answer(request.get_ref())
        } else {
            Err(Status::failed_precondition(PLAINTEXT_DISABLED))
        };
        // Telemetry's layer reads the counts from the response (see telemetry::layer).
        result.map(|response| {
            let stats = QueryStats { keys: response.keys, not_found: response.not_found };
            let mut response = Response::new(EncodedGetValuesResponse::from_encoded(response.bytes));
            response.extensions_mut().insert(stats);
            response
        })
    }
}

/// How many comma-separated pieces `fields` hold as sent (an empty field is one empty piece).
fn pieces(fields: &[String]) -> usize {
    fields.iter().map(|f| f.bytes().filter(|&b| b == b',').count() + 1).sum()
}

/// Splits comma-separated keys, drops empty pieces and duplicates.
fn split(fields: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for piece in fields.iter().flat_map(|f| f.split(',')) {
        if !piece.is_empty() {
            out.push(piece);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Mutation, Record, Value as DataValue};
    use crate::proto::kv_server::v1::v1_single_lookup_result::SingleLookupResult;
    use crate::proto::kv_server::v1::{GetValuesResponse, V1SingleLookupResult};
    use prost_types::value::Kind;
    use prost_types::{ListValue, Value};
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    /// [`QueryService::answer`], decoded as a client decodes it.
    fn answer(svc: &QueryService, request: &GetValuesRequest) -> Result<GetValuesResponse, Status> {
        let encoded = svc.answer(request)?;
        Ok(GetValuesResponse::decode(encoded.as_bytes()).expect("the encoded response decodes"))
    }

    fn service(limits: Limits) -> QueryService {
        let store = Arc::new(Store::new());
        let update = |key: &str, value: DataValue| Record {
            key: key.into(),
            logical_commit_time: 1,
            mutation: Mutation::Update(value),
        };
        store.apply(vec![
            update("a", DataValue::String("alpha".into())),
            update("b", DataValue::String("{\"x\":[1,true,null]}".into())),
            update("s", DataValue::StringSet(vec!["m1".into(), "m2".into()])),
            update("n", DataValue::String("not json: 1".into())),
        ]);
        QueryService::new(store, limits)
    }

    fn value_of(map: &HashMap<String, V1SingleLookupResult>, key: &str) -> Option<SingleLookupResult> {
        map.get(key).and_then(|r| r.single_lookup_result.clone())
    }

    fn string(s: &str) -> SingleLookupResult {
        SingleLookupResult::Value(Value { kind: Some(Kind::StringValue(s.into())) })
    }

    #[test]
    fn every_namespace_answers_every_key_split_on_commas() {
        let svc = service(Limits::default());
        let response = answer(
            &svc,
            &GetValuesRequest {
                keys: vec!["a,missing".into(), "a".into(), ",".into()],
                render_urls: vec!["s".into()],
                ad_component_render_urls: vec!["n".into()],
                kv_internal: vec!["b".into()],
                interest_group_names: vec!["a,s".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(response.keys.len(), 2);
        assert_eq!(value_of(&response.keys, "a"), Some(string("alpha")));
        match value_of(&response.keys, "missing") {
            Some(SingleLookupResult::Status(s)) => {
                assert_eq!((s.code, s.message.as_str()), (5, "Key not found"))
            }
            other => panic!("missing key: {other:?}"),
        }
        let list = Value {
            kind: Some(Kind::ListValue(ListValue { values: vec![string_value("m1"), string_value("m2")] })),
        };
        assert_eq!(value_of(&response.render_urls, "s"), Some(SingleLookupResult::Value(list)));
        assert_eq!(value_of(&response.ad_component_render_urls, "n"), Some(string("not json: 1")));
        let Some(SingleLookupResult::Value(Value { kind: Some(Kind::StructValue(obj)) })) =
            value_of(&response.kv_internal, "b")
        else {
            panic!("JSON object value expected");
        };
        let Some(Kind::ListValue(items)) = &obj.fields["x"].kind else { panic!("list expected") };
        assert_eq!(items.values[0].kind, Some(Kind::NumberValue(1.0)));
        assert_eq!(items.values[1].kind, Some(Kind::BoolValue(true)));
        assert_eq!(items.values[2].kind, Some(Kind::NullValue(0)));
        assert_eq!(response.per_interest_group_data.len(), 2);
        assert_eq!(value_of(&response.per_interest_group_data, "a"), Some(string("alpha")));
    }

    /// The response as prost builds it from the old per-request path (JSON parsed per request,
    /// one `Value` per key), for comparison with the encoded one.
    fn reference(store: &Store, fields: [&[&str]; 5]) -> GetValuesResponse {
        let result = |key: &str| {
            let result = match store.get(key) {
                None => SingleLookupResult::Status(rpc::Status {
                    code: CODE_NOT_FOUND,
                    message: "Key not found".into(),
                    details: Vec::new(),
                }),
                Some(StoredValue::Set(members)) => SingleLookupResult::Value(Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: members.iter().map(|m| string_value(m)).collect(),
                    })),
                }),
                Some(v) => {
                    let text = v.as_str().unwrap();
                    SingleLookupResult::Value(
                        serde_json::from_str(text)
                            .map(crate::pbvalue::from_json)
                            .unwrap_or_else(|_| string_value(text)),
                    )
                }
            };
            (key.to_string(), V1SingleLookupResult { single_lookup_result: Some(result) })
        };
        let map = |keys: &[&str]| keys.iter().map(|k| result(k)).collect::<HashMap<_, _>>();
        GetValuesResponse {
            keys: map(fields[0]),
            render_urls: map(fields[1]),
            ad_component_render_urls: map(fields[2]),
            kv_internal: map(fields[3]),
            per_interest_group_data: map(fields[4]),
        }
    }

    #[test]
    fn the_encoded_answer_decodes_to_what_prost_builds() {
        let long = "L".repeat(300);
        let strings = [
            "",
            "alpha",
            "12",
            "-3.5e2",
            "\"quoted\"",
            "[1,\"two\",{\"three\":null}]",
            " {\"a\":{\"b\":[]}}",
            "true",
            "nul",
            "{not json",
            "ünïcødé ✓",
            long.as_str(),
        ];
        let mut records = Vec::new();
        for (i, s) in strings.iter().enumerate() {
            records.push(Record {
                key: format!("s{i}").into(),
                logical_commit_time: 1,
                mutation: Mutation::Update(DataValue::String(s.to_string())),
            });
        }
        let sets: [Vec<String>; 3] = [
            vec![],
            vec!["only".into()],
            (0..200).map(|i| format!("member-{i}-{}", "x".repeat(i % 9))).collect(),
        ];
        for (i, members) in sets.iter().enumerate() {
            records.push(Record {
                key: format!("set{i}").into(),
                logical_commit_time: 1,
                mutation: Mutation::Update(DataValue::StringSet(members.clone())),
            });
        }
        records.push(Record { key: "gone".into(), logical_commit_time: 1, mutation: Mutation::Delete });
        let store = Arc::new(Store::new());
        store.apply(records);
        let svc = QueryService::new(store.clone(), Limits::default());
        let mut all: Vec<String> = (0..strings.len()).map(|i| format!("s{i}")).collect();
        all.extend((0..sets.len()).map(|i| format!("set{i}")));
        all.extend(["gone".to_string(), "never".to_string(), "k".repeat(200)]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (a, b) = all.split_at(7);
        for fields in
            [[&all[..], &[][..], &[][..], &[][..], &[][..]], [a, b, a, &[], b], [&[], &[], &[], &[], &all]]
        {
            let request = GetValuesRequest {
                keys: vec![fields[0].join(",")],
                render_urls: fields[1].iter().map(|k| k.to_string()).collect(),
                ad_component_render_urls: vec![fields[2].join(",")],
                kv_internal: vec![fields[3].join(",")],
                interest_group_names: fields[4].iter().map(|k| k.to_string()).collect(),
                ..Default::default()
            };
            assert_eq!(answer(&svc, &request).unwrap(), reference(&store, fields), "fields {fields:?}");
        }
    }

    fn string_value(s: &str) -> Value {
        Value { kind: Some(Kind::StringValue(s.into())) }
    }

    #[tokio::test]
    async fn plaintext_lookups_off_refuses_get_values() {
        let svc = service(Limits::default()).with_plaintext_lookups(false);
        let request = Request::new(GetValuesRequest { keys: vec!["a".into()], ..Default::default() });
        let err = svc.get_values(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("plaintext_lookups = false"), "{}", err.message());
    }

    #[test]
    fn limits_give_invalid_argument() {
        let svc = service(Limits { max_keys_per_request: 3, max_request_bytes: 1024, ..Limits::default() });
        let ok = GetValuesRequest {
            keys: vec!["a,b".into()],
            render_urls: vec!["c".into()],
            ..Default::default()
        };
        assert!(answer(&svc, &ok).is_ok());
        let dup = GetValuesRequest { keys: vec!["a,a,b".into()], ..Default::default() };
        let response = answer(&svc, &dup).unwrap();
        assert_eq!(response.keys.len(), 2, "duplicates are answered once");
        let dup = GetValuesRequest { keys: vec!["a,a,a,b".into()], ..Default::default() };
        assert!(answer(&svc, &dup).is_err(), "pieces count as sent, duplicates included");
        let many = GetValuesRequest {
            keys: vec!["a,b".into()],
            kv_internal: vec!["c,d".into()],
            ..Default::default()
        };
        let err = answer(&svc, &many).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("4 keys") && err.message().contains("limit is 3"),
            "{}",
            err.message()
        );
        let big = GetValuesRequest { keys: vec!["x".repeat(2000)], ..Default::default() };
        let err = answer(&svc, &big).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("limit is 1024 bytes"), "{}", err.message());
    }

    /// Issue 14 item 12: the limit was checked after splitting, sorting and de-duplicating, so
    /// one 8 MB field of `a,a,a,...` cost millions of allocations and then passed as one key.
    #[test]
    fn a_request_with_millions_of_commas_is_refused_before_splitting() {
        let svc =
            service(Limits { max_keys_per_request: 1_000, max_request_bytes: 64 << 20, ..Limits::default() });
        let request = GetValuesRequest { keys: vec!["a,".repeat(4_000_000)], ..Default::default() };
        let limit = if cfg!(debug_assertions) { Duration::from_secs(2) } else { Duration::from_millis(200) };
        let started = Instant::now();
        let err = answer(&svc, &request).unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("4000001 keys") && err.message().contains("limit is 1000"),
            "{}",
            err.message()
        );
        assert!(elapsed < limit, "refused in {elapsed:?}");
        let empty_fields = GetValuesRequest { kv_internal: vec![String::new(); 2_000], ..Default::default() };
        assert!(answer(&svc, &empty_fields).is_err(), "an empty field is a piece too");
    }
}
