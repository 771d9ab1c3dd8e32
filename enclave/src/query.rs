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
//! so clients see the same responses. A string set is a list of strings.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use tonic::{Request, Response, Status};

use crate::config::Limits;
use crate::proto::google::rpc;
use crate::proto::kv_server::v1::key_value_service_server::{KeyValueService, KeyValueServiceServer};
use crate::proto::kv_server::v1::v1_single_lookup_result::SingleLookupResult;
use crate::proto::kv_server::v1::{GetValuesRequest, GetValuesResponse, V1SingleLookupResult};
use crate::store::{ReadView, Store, StoredValue};

/// google.rpc.Code NOT_FOUND.
const CODE_NOT_FOUND: i32 = 5;

pub struct QueryService {
    store: Arc<Store>,
    limits: Limits,
    plaintext_lookups: bool,
}

impl QueryService {
    pub fn new(store: Arc<Store>, limits: Limits) -> QueryService {
        QueryService { store, limits, plaintext_lookups: true }
    }

    /// With `false`, GetValues answers FAILED_PRECONDITION ([`crate::v2::PLAINTEXT_DISABLED`]).
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
    pub fn answer(&self, request: &GetValuesRequest) -> Result<GetValuesResponse, Status> {
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
        // One view for the whole request: it never mixes two data files.
        let view = self.store.read();
        let [keys, render_urls, ad_component_render_urls, kv_internal, interest_group_names] =
            fields.map(|keys| lookup(&view, keys));
        Ok(GetValuesResponse {
            keys,
            render_urls,
            ad_component_render_urls,
            kv_internal,
            per_interest_group_data: interest_group_names,
        })
    }
}

fn lookup(view: &ReadView<'_>, keys: Vec<&str>) -> HashMap<String, V1SingleLookupResult> {
    keys.into_iter()
        .map(|key| {
            let result = match view.get(key) {
                Some(value) => SingleLookupResult::Value(to_proto_value(value)),
                None => SingleLookupResult::Status(rpc::Status {
                    code: CODE_NOT_FOUND,
                    message: "Key not found".into(),
                    details: Vec::new(),
                }),
            };
            (key.to_string(), V1SingleLookupResult { single_lookup_result: Some(result) })
        })
        .collect()
}

#[tonic::async_trait]
impl KeyValueService for QueryService {
    async fn get_values(
        &self,
        request: Request<GetValuesRequest>,
    ) -> Result<Response<GetValuesResponse>, Status> {
        let started = crate::telemetry::request_started();
        let result = if self.plaintext_lookups {
            self.answer(request.get_ref())
        } else {
            Err(Status::failed_precondition(crate::v2::PLAINTEXT_DISABLED))
        };
        crate::telemetry::record_get_values(started, request.metadata(), &result, |s| s.code() as i32);
        result.map(Response::new)
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

fn to_proto_value(value: StoredValue) -> Value {
    match value {
        StoredValue::String(s) => json_or_string(String::from(s)),
        StoredValue::Set(members) => Value {
            kind: Some(Kind::ListValue(ListValue {
                values: members
                    .into_vec()
                    .into_iter()
                    .map(|m| Value { kind: Some(Kind::StringValue(m.into())) })
                    .collect(),
            })),
        },
    }
}

fn json_or_string(s: String) -> Value {
    // Only text that can start a JSON value is tried, so plain strings cost one byte check.
    let candidate = matches!(
        s.trim_start().bytes().next(),
        Some(b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
    );
    if candidate && let Ok(json) = serde_json::from_str::<serde_json::Value>(&s) {
        return from_json(json);
    }
    Value { kind: Some(Kind::StringValue(s)) }
}

fn from_json(json: serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(ListValue { values: items.into_iter().map(from_json).collect() })
        }
        serde_json::Value::Object(map) => {
            Kind::StructValue(Struct { fields: map.into_iter().map(|(k, v)| (k, from_json(v))).collect() })
        }
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Mutation, Record, Value as DataValue};
    use std::time::{Duration, Instant};

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
        let response = svc
            .answer(&GetValuesRequest {
                keys: vec!["a,missing".into(), "a".into(), ",".into()],
                render_urls: vec!["s".into()],
                ad_component_render_urls: vec!["n".into()],
                kv_internal: vec!["b".into()],
                interest_group_names: vec!["a,s".into()],
                ..Default::default()
            })
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
        assert!(svc.answer(&ok).is_ok());
        let dup = GetValuesRequest { keys: vec!["a,a,b".into()], ..Default::default() };
        let answer = svc.answer(&dup).unwrap();
        assert_eq!(answer.keys.len(), 2, "duplicates are answered once");
        let dup = GetValuesRequest { keys: vec!["a,a,a,b".into()], ..Default::default() };
        assert!(svc.answer(&dup).is_err(), "pieces count as sent, duplicates included");
        let many = GetValuesRequest {
            keys: vec!["a,b".into()],
            kv_internal: vec!["c,d".into()],
            ..Default::default()
        };
        let err = svc.answer(&many).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("4 keys") && err.message().contains("limit is 3"),
            "{}",
            err.message()
        );
        let big = GetValuesRequest { keys: vec!["x".repeat(2000)], ..Default::default() };
        let err = svc.answer(&big).unwrap_err();
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
        let err = svc.answer(&request).unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("4000001 keys") && err.message().contains("limit is 1000"),
            "{}",
            err.message()
        );
        assert!(elapsed < limit, "refused in {elapsed:?}");
        let empty_fields = GetValuesRequest { kv_internal: vec![String::new(); 2_000], ..Default::default() };
        assert!(svc.answer(&empty_fields).is_err(), "an empty field is a piece too");
    }
}
