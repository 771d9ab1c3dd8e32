//! kv-server: the key-value server that runs inside the Nitro Enclave.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | flags and the TOML file, checked before anything starts |
//! | [`data`] | data file names and formats (CSV, Avro of FlatBuffers records) |
//! | [`source`] | where data files come from ([`source::Source`]; [`source::LocalDir`]) |
//! | [`s3`] | [`s3::S3Source`]: a bucket + prefix through the parent's SOCKS5 egress |
//! | [`egress`] | the AWS SDK's HTTP client: SOCKS5 over any endpoint, then TLS |
//! | [`ssm`] | settings from SSM parameters `<prefix>-<name>` |
//! | [`loader`] | which files to load, in which order; rejection of bad files |
//! | [`store`] | the in-memory map: newest commit time wins, tombstones |
//! | [`pbvalue`] | stored values as `google.protobuf.Value`, written from the stored bytes |
//! | [`query`] | `kv_server.v1.KeyValueService/GetValues` |
//! | [`v2`] | `kv_server.v2.KeyValueService` (plaintext JSON and HPKE-encrypted lookups), `kv_server.v2.KeyService` |
//! | [`keys`] | the enclave's HPKE key pairs: generated in-process, rotated, never exported |
//! | [`health`] | `grpc.health.v1.Health` with the named load-balancer and autoscaler statuses |
//! | [`attestation`] | documents from `/dev/nsm` only, never over a caller's key; `enclave.v1.Attestation` |
//! | [`telemetry`] | OTLP metrics and spans to the collector on the parent (off unless configured) |
//! | [`server`] | `run(listener, app, shutdown)`: every service on one listener |
//! | [`idle`] | closing connections that carry no call for 5 minutes |
#![forbid(unsafe_code)]

pub mod attestation;
pub mod config;
pub mod data;
pub mod egress;
pub mod health;
pub mod idle;
pub mod keys;
pub mod loader;
pub mod pbvalue;
pub mod query;
pub mod s3;
pub mod sample;
pub mod server;
pub mod source;
pub mod ssm;
pub mod store;
pub mod telemetry;
pub mod v2;

/// The protocol crate, for the tests and tools that speak v2 through this crate.
pub use kv_protocol;

/// Code generated from `proto/` at the repository root (see `build.rs`).
pub mod proto {
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
}

/// The FileDescriptorSet of every service above, imports included: served by reflection, read by
/// envoy's JSON transcoder (`kv-server descriptor-set --out FILE`).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/query_api_descriptor_set.pb"));
