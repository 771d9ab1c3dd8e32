//! envoy/envoy.yaml: loads in the real envoy (`--mode validate`) with the descriptor set the
//! build generates (`kv-server descriptor-set`); every service it names is in that set, with a
//! route; the values that tests and scripts/run-local.sh substitute occur exactly once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::{EnvoyTarget, envoy_bin, envoy_yaml_path, render_envoy_config, workspace_bin};
use prost::Message;
use prost_types::FileDescriptorSet;
use serde_yaml::Value;

/// Writes the descriptor set with the real `kv-server descriptor-set --out FILE`.
fn generate_descriptor_set(dir: &Path) -> PathBuf {
    let out = dir.join("query_api_descriptor_set.pb");
    let status = Command::new(workspace_bin("kv-server"))
        .args(["descriptor-set", "--out"])
        .arg(&out)
        .status()
        .expect("run kv-server descriptor-set");
    assert!(status.success(), "kv-server descriptor-set failed: {status}");
    out
}

/// What the binary writes is kv-proto's set, byte for byte: the file the bundle ships and the set
/// the generated clients (and reflection) come from cannot drift apart.
#[test]
fn kv_server_writes_the_descriptor_set_of_kv_proto() {
    let dir = tempfile::tempdir().unwrap();
    let written = std::fs::read(generate_descriptor_set(dir.path())).unwrap();
    assert!(!written.is_empty());
    assert!(
        written == kv_proto::DESCRIPTOR_SET,
        "kv-server descriptor-set differs from kv_proto::DESCRIPTOR_SET"
    );
}

fn decode(path: &Path) -> FileDescriptorSet {
    let bytes = std::fs::read(path).unwrap();
    FileDescriptorSet::decode(bytes.as_slice()).expect("descriptor set decodes")
}

/// Fully qualified service names in a descriptor set.
fn services(set: &FileDescriptorSet) -> BTreeSet<String> {
    set.file
        .iter()
        .flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package(), s.name())))
        .collect()
}

fn envoy_yaml() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(envoy_yaml_path()).unwrap()).expect("envoy.yaml is YAML")
}

/// Finds the grpc_json_transcoder's typed_config anywhere in the file.
fn transcoder(v: &Value) -> Option<&Value> {
    match v {
        Value::Mapping(m) => {
            if m.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("grpc_json_transcoder.v3.GrpcJsonTranscoder"))
            {
                return Some(v);
            }
            m.values().find_map(transcoder)
        }
        Value::Sequence(s) => s.iter().find_map(transcoder),
        _ => None,
    }
}

fn route_prefixes(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            if let Some(p) = m.get("match").and_then(|mm| mm.get("prefix")).and_then(Value::as_str) {
                out.push(p.to_string());
            }
            m.values().for_each(|c| route_prefixes(c, out));
        }
        Value::Sequence(s) => s.iter().for_each(|c| route_prefixes(c, out)),
        _ => {}
    }
}

fn named_services() -> Vec<String> {
    let yaml = envoy_yaml();
    let t = transcoder(&yaml).expect("envoy.yaml has a grpc_json_transcoder");
    t.get("services")
        .and_then(Value::as_sequence)
        .expect("transcoder services")
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn transcoder_settings_are_the_documented_ones() {
    let yaml = envoy_yaml();
    let t = transcoder(&yaml).unwrap();
    assert_eq!(t["proto_descriptor"].as_str(), Some("/etc/envoy/query_api_descriptor_set.pb"));
    assert_eq!(t["print_options"]["preserve_proto_field_names"].as_bool(), Some(false), "camelCase JSON");
    assert_eq!(t["print_options"]["always_print_primitive_fields"].as_bool(), Some(true));
    assert_eq!(t["request_validation_options"]["reject_unknown_method"].as_bool(), Some(true));
    let mut svc = named_services();
    svc.sort();
    assert_eq!(
        svc,
        [
            "enclave.v1.Attestation",
            "grpc.health.v1.Health",
            "kv_server.v1.KeyValueService",
            "kv_server.v2.KeyService",
            "kv_server.v2.KeyValueService"
        ]
    );
}

#[test]
fn descriptor_set_contains_every_service_envoy_names_and_each_has_a_route() {
    let dir = tempfile::tempdir().unwrap();
    let set = decode(&generate_descriptor_set(dir.path()));
    let have = services(&set);
    let mut prefixes = Vec::new();
    route_prefixes(&envoy_yaml(), &mut prefixes);
    for svc in named_services() {
        assert!(have.contains(&svc), "envoy.yaml names {svc}, the descriptor set has only {have:?}");
        assert!(
            prefixes.iter().any(|p| p.starts_with(&format!("/{svc}/"))),
            "no route for {svc}; prefixes: {prefixes:?}"
        );
    }
    // The transcoder resolves HTTP rules through these imports: the set must carry them.
    let files: BTreeSet<&str> = set.file.iter().map(|f| f.name()).collect();
    for f in [
        "google/api/annotations.proto",
        "google/api/http.proto",
        "google/api/httpbody.proto",
        "google/protobuf/struct.proto",
    ] {
        assert!(files.contains(f), "descriptor set lacks import {f}: {files:?}");
    }
}

/// The v2 methods take and return google.api.HttpBody (what lets envoy carry ciphertext without
/// looking into it), and their HTTP rules are the reference's routes (POST /v2/getvalues, POST
/// /v2/oblivious_getvalues, body `raw_body`) plus GET /v2/keys.
#[test]
fn v2_methods_pass_http_bodies_on_the_reference_routes() {
    let dir = tempfile::tempdir().unwrap();
    let path = generate_descriptor_set(dir.path());
    let set = decode(&path);
    let method = |service: &str, name: &str| {
        set.file
            .iter()
            .filter(|f| f.package() == "kv_server.v2")
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == service)
            .flat_map(|s| s.method.iter())
            .find(|m| m.name() == name)
            .cloned()
            .unwrap_or_else(|| panic!("kv_server.v2.{service}/{name} missing"))
    };
    for (service, name) in [
        ("KeyValueService", "GetValuesHttp"),
        ("KeyValueService", "ObliviousGetValues"),
        ("KeyService", "GetPublicKeys"),
    ] {
        assert_eq!(method(service, name).output_type(), ".google.api.HttpBody", "{name}");
    }
    // The google.api.http options are extensions prost_types does not decode: look at the bytes.
    let raw = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string();
    for route in ["/v2/getvalues", "/v2/oblivious_getvalues", "/v2/keys", "raw_body"] {
        assert!(raw.contains(route), "{route} not in the descriptor set's HTTP rules");
    }
}

fn validate(config: &Path) -> (bool, String) {
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--config-path"])
        .arg(config)
        .output()
        .expect("run envoy --mode validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn render_to(dir: &Path, descriptor: &Path) -> PathBuf {
    let target = EnvoyTarget {
        listen_port: 51052,
        admin_port: 9902,
        upstream_port: 50051,
        descriptor_set: descriptor.to_path_buf(),
    };
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, render_envoy_config(&target).unwrap()).unwrap();
    path
}

#[test]
fn envoy_validates_the_config_with_the_generated_descriptor_set() {
    let dir = tempfile::tempdir().unwrap();
    let fds = generate_descriptor_set(dir.path());
    let (ok, text) = validate(&render_to(dir.path(), &fds));
    assert!(ok, "envoy --mode validate failed:\n{text}");
    assert!(!text.to_lowercase().contains("deprecated"), "envoy warns about deprecated fields:\n{text}");
}

#[test]
fn envoy_rejects_the_config_when_a_named_service_is_missing() {
    // Same procedure, descriptor set without the attestation service: validation must fail,
    // so the test above really exercises the transcoder's service lookup.
    let dir = tempfile::tempdir().unwrap();
    let mut set = decode(&generate_descriptor_set(dir.path()));
    let before = set.file.len();
    set.file.retain(|f| f.package() != "enclave.v1");
    assert!(set.file.len() < before, "no enclave.v1 file to remove");
    let fds = dir.path().join("partial.pb");
    std::fs::write(&fds, set.encode_to_vec()).unwrap();
    let (ok, text) = validate(&render_to(dir.path(), &fds));
    assert!(!ok, "envoy accepted a descriptor set without enclave.v1.Attestation:\n{text}");
    assert!(text.contains("enclave.v1.Attestation"), "error does not name the service:\n{text}");
}

#[test]
fn rendering_replaces_each_production_value_once() {
    let target = EnvoyTarget {
        listen_port: 1111,
        admin_port: 2222,
        upstream_port: 3333,
        descriptor_set: PathBuf::from("/tmp/x.pb"),
    };
    let text = render_envoy_config(&target).unwrap();
    let code: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let count = |s: &str| code.iter().filter(|l| l.contains(s)).count();
    assert_eq!(count("port_value: 1111"), 1);
    assert_eq!(count("port_value: 2222"), 1);
    assert_eq!(count("port_value: 3333"), 1);
    assert_eq!(count("/tmp/x.pb"), 1);
    assert_eq!(count("0.0.0.0"), 0, "a rendered copy must not listen on all interfaces");
    for prod in ["51052", "9902", "50051", "/etc/envoy/query_api_descriptor_set.pb"] {
        assert_eq!(count(prod), 0, "{prod} left in the rendered config");
    }
}
