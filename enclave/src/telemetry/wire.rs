//! The trace export request, encoded straight to protobuf bytes.
//!
//! Building `opentelemetry-proto`'s message types costs about fifteen allocations per span (a
//! `String` per attribute key and value, the name, the id vectors) before prost encodes them, and
//! at tens of thousands of requests per second that background work takes CPU from serving. Every
//! span of kv-server has the same shape, so this encoder writes the constant parts (resource,
//! scope, span name, kind, the string attributes, the attribute keys) once at start and per span
//! only the ids, the times and three integers, into one buffer per batch. A unit test decodes the
//! bytes with prost and compares them with the same batch built from the message types.
//!
//! Wire layout (opentelemetry/proto/collector/trace/v1 and trace/v1):
//! `ExportTraceServiceRequest{1: ResourceSpans{1: Resource, 2: ScopeSpans{1: scope, 2: Span...}}}`;
//! `Span{1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 7/8 start/end (fixed64),
//! 9 attributes, 15 status, 16 flags (fixed32)}`.

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as pt;
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::{METHOD, SERVICE, SpanRecord, str_attr};

/// gRPC path of the collector's trace export.
pub const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

const LEN: u8 = 2;
const fn tag(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

/// Field 9 (attributes) header + a KeyValue's `key` field, for the integer attributes.
fn key_prefix(key: &str) -> Vec<u8> {
    let mut out = vec![tag(1, LEN)];
    encode_varint(key.len() as u64, &mut out);
    out.extend_from_slice(key.as_bytes());
    out
}

/// A message as a length-delimited field.
fn field(number: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![tag(number, LEN)];
    encode_varint(message.len() as u64, &mut out);
    out.extend_from_slice(message);
    out
}

pub struct SpanEncoder {
    /// `ResourceSpans.resource` (field 1), encoded.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), encoded.
    scope: Vec<u8>,
    /// name (5), kind (6) and the string attributes (9), the same for every span.
    constant: Vec<u8>,
    status_code_key: Vec<u8>,
    keys_key: Vec<u8>,
    not_found_key: Vec<u8>,
}

impl SpanEncoder {
    pub fn new(resource: &Resource, scope: &InstrumentationScope) -> SpanEncoder {
        let mut constant = field(5, format!("{SERVICE}/{METHOD}").as_bytes());
        constant.push(tag(6, 0));
        encode_varint(pt::span::SpanKind::Server as u64, &mut constant);
        for kv in
            [str_attr("rpc.system", "grpc"), str_attr("rpc.service", SERVICE), str_attr("rpc.method", METHOD)]
        {
            constant.extend(field(9, &kv.encode_to_vec()));
        }
        SpanEncoder {
            resource: field(1, &resource.encode_to_vec()),
            scope: field(1, &scope.encode_to_vec()),
            constant,
            status_code_key: key_prefix("rpc.grpc.status_code"),
            keys_key: key_prefix("kv.keys"),
            not_found_key: key_prefix("kv.keys_not_found"),
        }
    }

    /// One attribute `key = value` (an int): `9: KeyValue{1: key, 2: AnyValue{3: value}}`.
    fn int_attribute(out: &mut Vec<u8>, key_prefix: &[u8], value: i64) {
        let any_len = 1 + encoded_len_varint(value as u64);
        let kv_len = key_prefix.len() + 1 + encoded_len_varint(any_len as u64) + any_len;
        out.push(tag(9, LEN));
        encode_varint(kv_len as u64, out);
        out.extend_from_slice(key_prefix);
        out.push(tag(2, LEN));
        encode_varint(any_len as u64, out);
        out.push(tag(3, 0));
        encode_varint(value as u64, out);
    }

    fn span(&self, s: &SpanRecord, out: &mut Vec<u8>) {
        out.push(tag(1, LEN));
        out.push(16);
        out.extend_from_slice(&s.trace_id);
        out.push(tag(2, LEN));
        out.push(8);
        out.extend_from_slice(&s.span_id);
        if let Some(parent) = s.parent_span_id {
            out.push(tag(4, LEN));
            out.push(8);
            out.extend_from_slice(&parent);
        }
        out.extend_from_slice(&self.constant);
        out.push(tag(7, 1));
        out.extend_from_slice(&s.start_ns.to_le_bytes());
        out.push(tag(8, 1));
        out.extend_from_slice(&s.end_ns.to_le_bytes());
        Self::int_attribute(out, &self.status_code_key, i64::from(s.code));
        Self::int_attribute(out, &self.keys_key, s.keys as i64);
        if s.code == 0 {
            Self::int_attribute(out, &self.not_found_key, s.keys_not_found as i64);
            // Status{} (UNSET): present and empty.
            out.extend_from_slice(&[tag(15, LEN), 0]);
        } else {
            out.extend_from_slice(&[tag(15, LEN), 2, tag(3, 0), pt::status::StatusCode::Error as u8]);
        }
        if s.sampled {
            // Field 16, wire type 5 (fixed32): the key is the varint 133.
            out.extend_from_slice(&[0x85, 0x01, 1, 0, 0, 0]);
        }
    }

    /// The whole export request for `batch`.
    pub fn encode(&self, batch: &[SpanRecord]) -> Bytes {
        let mut spans = Vec::with_capacity(batch.len() * 230);
        let mut body = Vec::with_capacity(230);
        for s in batch {
            body.clear();
            self.span(s, &mut body);
            spans.push(tag(2, LEN));
            encode_varint(body.len() as u64, &mut spans);
            spans.extend_from_slice(&body);
        }
        let scope_spans_len = self.scope.len() + spans.len();
        let resource_spans_len =
            self.resource.len() + 1 + encoded_len_varint(scope_spans_len as u64) + scope_spans_len;
        let mut out = Vec::with_capacity(resource_spans_len + 11);
        out.push(tag(1, LEN));
        encode_varint(resource_spans_len as u64, &mut out);
        out.extend_from_slice(&self.resource);
        out.push(tag(2, LEN));
        encode_varint(scope_spans_len as u64, &mut out);
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(&spans);
        Bytes::from(out)
    }
}

/// A gRPC codec that sends bytes already encoded and ignores the answer's body (an
/// `ExportTraceServiceResponse`, whose partial-success counts kv-server does not act on).
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn record(code: i32, parent: bool) -> SpanRecord {
        SpanRecord {
            trace_id: [0x4b; 16],
            span_id: [7; 8],
            parent_span_id: parent.then_some([9; 8]),
            sampled: true,
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_000_000_250_000,
            keys: 300,
            keys_not_found: 2,
            code,
        }
    }

    #[test]
    fn bytes_decode_to_the_same_request_as_the_message_types() {
        let config = super::super::OtlpArgs {
            otlp_endpoint: Some("tcp://127.0.0.1:1".into()),
            otlp_instance_id: Some("i-0123".into()),
            otlp_pcr0: Some("ab".repeat(48)),
            ..Default::default()
        }
        .resolve(None, None)
        .unwrap()
        .unwrap();
        let resource = super::super::resource(&config);
        let batch = vec![record(0, true), record(3, false), record(0, false)];
        let encoder = SpanEncoder::new(&resource, &super::super::scope());
        let decoded = ExportTraceServiceRequest::decode(encoder.encode(&batch)).expect("valid protobuf");
        assert_eq!(decoded, super::super::trace_request(&resource, &batch));
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 3);
        let empty = ExportTraceServiceRequest::decode(encoder.encode(&[])).expect("valid protobuf");
        assert_eq!(empty, super::super::trace_request(&resource, &[]));
    }

    #[test]
    fn large_values_use_multi_byte_varints() {
        let resource = Resource::default();
        let encoder = SpanEncoder::new(&resource, &super::super::scope());
        let mut big = record(0, true);
        big.keys = u64::from(u32::MAX) + 5;
        // A batch over 16 KiB: every length prefix above is a multi-byte varint.
        let batch = vec![big; 200];
        let decoded = ExportTraceServiceRequest::decode(encoder.encode(&batch)).expect("valid protobuf");
        assert_eq!(decoded, super::super::trace_request(&resource, &batch));
    }
}
