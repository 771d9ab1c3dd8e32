//! kv-proto: the gRPC code generated from the `.proto` files in this crate's folder (tonic +
//! prost, see `build.rs`) and their FileDescriptorSet. kv-server serves these services; the
//! end-to-end tests and benchmarks call them with the generated clients, without linking the
//! server.
//!
//! | item | owns |
//! |---|---|
//! | [`kv_server`], [`grpc`], [`enclave`], [`google`] | the messages, clients and servers, one module per proto package |
//! | [`encoded`] | `kv_server.v1.KeyValueService` once more, answering with bytes encoded beforehand |
//! | [`DESCRIPTOR_SET`] | every service above with its imports: reflection, envoy's JSON transcoder |
#![forbid(unsafe_code)]

pub mod encoded;

pub mod kv_server {
    pub mod v1 {
        tonic::include_proto!("kv_server.v1");
    }
    pub mod v2 {
        tonic::include_proto!("kv_server.v2");
    }
}
pub mod grpc {
    pub mod health {
        pub mod v1 {
            tonic::include_proto!("grpc.health.v1");
        }
    }
}
pub mod enclave {
    pub mod v1 {
        tonic::include_proto!("enclave.v1");
    }
}
pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The FileDescriptorSet of every service above, imports included: served by reflection, read by
/// envoy's JSON transcoder (`kv-server descriptor-set --out FILE` writes it as
/// `query_api_descriptor_set.pb`).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/query_api_descriptor_set.pb"));
