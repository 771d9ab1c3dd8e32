//! kv-server: the key-value server that runs inside the Nitro Enclave.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | flags, environment variables and the TOML file from one declaration per setting, checked before anything starts (`[aws]`, `[otlp]`, `[v2]` and fleet key settings included) |
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
//! | [`telemetry`] | OTLP metrics, spans and logs on the OpenTelemetry SDK to the collector on the parent (off unless configured) |
//! | [`server`] | `run(listener, app, shutdown)`: every service on one listener |
//! | [`idle`] | closing connections that carry no call for 5 minutes |
//! | [`fleet`], [`recipient`] | the fleet key set through KMS attestation; the RSA key KMS encrypts to |
//! | [`aws`] | AWS name checks and `S3Location` |
//!
//! The modules import each other without cycles; `config` depends only on `aws`, `data` and `ssm`.
#![forbid(unsafe_code)]

pub mod attestation;
pub mod aws;
pub mod config;
pub mod data;
pub mod egress;
pub mod fleet;
pub mod health;
pub mod idle;
pub mod keys;
pub mod loader;
pub mod pbvalue;
pub mod query;
pub mod recipient;
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

/// The generated gRPC code (the kv-proto crate, built from `proto/`), under the name this crate's
/// modules, tests and benchmarks use.
pub use kv_proto as proto;

/// The FileDescriptorSet of every service, imports included: served by reflection, read by
/// envoy's JSON transcoder (`kv-server descriptor-set --out FILE`).
pub use kv_proto::DESCRIPTOR_SET;
