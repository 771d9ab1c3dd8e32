//! `kv_server.v1.KeyValueService` generated a second time, by `build.rs` with tonic-build's
//! manual builder: the same route and codec as the proto-generated server, but GetValues answers
//! with an [`EncodedGetValuesResponse`], a `GetValuesResponse` the server has already encoded (it
//! writes the response straight from its stored bytes). Clients use the proto-generated client
//! and decode a `GetValuesResponse`: the bytes on the wire are the same.

use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, skip_field};

mod generated {
    tonic::include_proto!("kv_server.v1.KeyValueService");
}
pub use generated::key_value_service_server;
pub use generated::key_value_service_server::{KeyValueService, KeyValueServiceServer};

/// A `kv_server.v1.GetValuesResponse` in its wire encoding; decode it with
/// `GetValuesResponse::decode(response.as_bytes())`. Only encoded by the server: decoding into
/// it skips every field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncodedGetValuesResponse {
    bytes: Vec<u8>,
}

impl EncodedGetValuesResponse {
    /// `bytes` must be a `GetValuesResponse`'s encoding; they are sent as they are.
    pub fn from_encoded(bytes: Vec<u8>) -> EncodedGetValuesResponse {
        EncodedGetValuesResponse { bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Message for EncodedGetValuesResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.bytes);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_server::v1::{GetValuesResponse, V1SingleLookupResult};

    #[test]
    fn the_bytes_go_out_as_they_are_and_decode_as_the_generated_response() {
        let mut response = GetValuesResponse::default();
        response.keys.insert("a".into(), V1SingleLookupResult::default());
        let wire = response.encode_to_vec();
        let encoded = EncodedGetValuesResponse::from_encoded(wire.clone());
        assert_eq!(encoded.encoded_len(), wire.len());
        assert_eq!(encoded.encode_to_vec(), wire);
        assert_eq!(GetValuesResponse::decode(encoded.as_bytes()).unwrap(), response);
    }

    #[test]
    fn decoding_skips_every_field() {
        let mut response = GetValuesResponse::default();
        response.keys.insert("a".into(), V1SingleLookupResult::default());
        let decoded = EncodedGetValuesResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        assert!(decoded.as_bytes().is_empty());
    }

    #[test]
    fn the_descriptor_set_names_the_service_the_manual_server_routes() {
        let set = prost_types::FileDescriptorSet::decode(crate::DESCRIPTOR_SET).unwrap();
        let v1 = set.file.iter().find(|f| f.package() == "kv_server.v1").expect("kv_server.v1 in the set");
        let service = v1.service.iter().find(|s| s.name() == "KeyValueService").expect("KeyValueService");
        assert!(service.method.iter().any(|m| m.name() == "GetValues"));
        assert_eq!(
            <KeyValueServiceServer<()> as tonic::server::NamedService>::NAME,
            "kv_server.v1.KeyValueService"
        );
    }
}
