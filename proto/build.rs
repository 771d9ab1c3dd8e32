//! Generates the gRPC code (tonic 0.14 + prost) from the `.proto` files beside this script and
//! writes the FileDescriptorSet (with every import) that reflection, envoy's JSON transcoder and
//! the packager use: `$OUT_DIR/query_api_descriptor_set.pb`, exposed as `kv_proto::DESCRIPTOR_SET`.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "kv_server/v1/get_values.proto",
    "kv_server/v2/get_values.proto",
    "kv_server/v2/keys.proto",
    "grpc/health/v1/health.proto",
    "enclave/v1/attestation.proto",
];

/// Where the .proto files (and the googleapis imports) live.
const PROTO_DIRS: &[&str] = &["kv_server", "grpc", "enclave", "google"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // A pinned protoc from a crate (protoc-bin-vendored), so the build needs nothing from the system and the
    // generated code does not depend on which protoc a machine happens to have.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let wkt_include = protoc_bin_vendored::include_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    let includes = vec![proto_root.clone(), wkt_include];
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out_dir.join("query_api_descriptor_set.pb"))
        .compile_with_config(config, &protos, &includes)?;

    // GetValues's server again, answering with `crate::encoded::EncodedGetValuesResponse`: a
    // response the server writes straight from the stored bytes, the same bytes on the wire as
    // `GetValuesResponse` (clients keep the proto-generated client and decode that).
    let get_values = tonic_build::manual::Method::builder()
        .name("get_values")
        .route_name("GetValues")
        .input_type("crate::kv_server::v1::GetValuesRequest")
        .output_type("crate::encoded::EncodedGetValuesResponse")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("KeyValueService")
        .package("kv_server.v1")
        .method(get_values)
        .build();
    tonic_build::manual::Builder::new().build_client(false).out_dir(&out_dir).compile(&[service]);

    // The folders of .proto files (not src/ or Cargo.toml beside them), and each file in them.
    for dir in PROTO_DIRS {
        let dir = proto_root.join(dir);
        println!("cargo:rerun-if-changed={}", dir.display());
        for entry in walk(&dir)? {
            println!("cargo:rerun-if-changed={}", entry.display());
        }
    }
    Ok(())
}

fn walk(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}
