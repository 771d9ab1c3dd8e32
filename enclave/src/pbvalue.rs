//! Stored values as `google.protobuf.Value`, written straight from the stored bytes.
//!
//! GetValues answers every key with a `google.protobuf.Value`. Building prost structs for each key
//! (a map entry, a `Value`, a copy of the value, and a JSON parse of every string on every
//! request) was most of a request's cost. Instead:
//!
//! - whether a string is JSON is decided once, when the record is loaded ([`json_value`]): a JSON
//!   string is kept with its `Value` encoding beside its text, so answering it is one copy;
//! - any other string is written as its bytes behind a field key and a length ([`put_string`]);
//! - a string set is a `ListValue` of such strings ([`put_set`]).
//!
//! The `*_len` functions give the exact encoded length first, so a caller can write the length
//! prefix of the enclosing message before the value and never encodes anything twice.

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// `google.protobuf.Value.string_value`.
const VALUE_STRING: u32 = 3;
/// `google.protobuf.Value.list_value`.
const VALUE_LIST: u32 = 6;
/// `google.protobuf.ListValue.values`.
const LIST_VALUES: u32 = 1;

/// The `google.protobuf.Value` a string is answered with if it is JSON: an object stays an object,
/// `"12"` becomes the number 12 (as the reference server does). `None` for any other string.
pub fn json_value(text: &str) -> Option<Box<[u8]>> {
    // Only text that can start a JSON value is tried, so plain strings cost one byte check.
    let candidate = matches!(
        text.trim_start().bytes().next(),
        Some(b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
    );
    if !candidate {
        return None;
    }
    let json = serde_json::from_str::<serde_json::Value>(text).ok()?;
    Some(from_json(json).encode_to_vec().into_boxed_slice())
}

pub(crate) fn from_json(json: serde_json::Value) -> Value {
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

/// The length of a length-delimited field `tag` whose body is `body` bytes.
pub fn field_len(tag: u32, body: usize) -> usize {
    key_len(tag) + encoded_len_varint(body as u64) + body
}

/// Writes the key and length prefix of a length-delimited field `tag` whose body is `body` bytes.
pub fn put_field_header(tag: u32, body: usize, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(body as u64, out);
}

/// The encoded length of the `Value` holding string `s`.
pub fn string_len(s: &str) -> usize {
    field_len(VALUE_STRING, s.len())
}

/// Writes the `Value` holding string `s` ([`string_len`] bytes).
pub fn put_string(s: &str, out: &mut Vec<u8>) {
    put_field_header(VALUE_STRING, s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

fn list_body_len(members: &[Box<str>]) -> usize {
    members.iter().map(|m| field_len(LIST_VALUES, string_len(m))).sum()
}

/// The encoded length of the `Value` holding a list of the strings `members`.
pub fn set_len(members: &[Box<str>]) -> usize {
    field_len(VALUE_LIST, list_body_len(members))
}

/// Writes the `Value` holding a list of the strings `members` ([`set_len`] bytes).
pub fn put_set(members: &[Box<str>], out: &mut Vec<u8>) {
    put_field_header(VALUE_LIST, list_body_len(members), out);
    for m in members {
        put_field_header(LIST_VALUES, string_len(m), out);
        put_string(m, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Value {
        Value::decode(bytes).expect("a valid google.protobuf.Value")
    }

    #[test]
    fn strings_and_sets_decode_as_prost_builds_them() {
        for s in ["", "plain", "x".repeat(200).as_str(), "ünïcødé"] {
            let mut out = Vec::new();
            put_string(s, &mut out);
            assert_eq!(out.len(), string_len(s));
            assert_eq!(decode(&out), Value { kind: Some(Kind::StringValue(s.into())) });
        }
        let sets: [Vec<Box<str>>; 3] =
            [vec![], vec!["a".into()], (0..300).map(|i| i.to_string().repeat(i % 7).into()).collect()];
        for members in sets {
            let mut out = Vec::new();
            put_set(&members, &mut out);
            assert_eq!(out.len(), set_len(&members));
            let expected = Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: members
                        .iter()
                        .map(|m| Value { kind: Some(Kind::StringValue(m.to_string())) })
                        .collect(),
                })),
            };
            assert_eq!(decode(&out), expected);
        }
    }

    #[test]
    fn json_is_decided_by_parsing_once() {
        let object = decode(&json_value(r#" {"x":[1,true,null],"y":"z"}"#).unwrap());
        let Some(Kind::StructValue(s)) = object.kind else { panic!("an object: {object:?}") };
        let Some(Kind::ListValue(items)) = &s.fields["x"].kind else { panic!("a list") };
        assert_eq!(items.values[0].kind, Some(Kind::NumberValue(1.0)));
        assert_eq!(items.values[1].kind, Some(Kind::BoolValue(true)));
        assert_eq!(items.values[2].kind, Some(Kind::NullValue(0)));
        assert_eq!(decode(&json_value("12").unwrap()).kind, Some(Kind::NumberValue(12.0)));
        assert_eq!(decode(&json_value("\"q\"").unwrap()).kind, Some(Kind::StringValue("q".into())));
        for not_json in ["alpha", "not json: 1", "1 2", "{", "nul", "", "tru"] {
            assert_eq!(json_value(not_json), None, "{not_json:?}");
        }
    }
}
