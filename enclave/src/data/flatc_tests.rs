//! Interop with the FlatBuffers compiler (`flatc`, Debian `flatbuffers-compiler`, installed by
//! scripts/setup-test-deps.sh): records that flatc builds from JSON with the schema in
//! `enclave/schema/data_loading.fbs` decode here, and records encoded here read back through
//! flatc as the same JSON. This is what ties the hand-written slots and union ids to the schema.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::flatbuf::{Encoder, decode};
use super::{Mutation, Record, Value};

fn schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/data_loading.fbs")
}

fn flatc(args: &[&str], dir: &Path) {
    let out = Command::new("flatc")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("flatc not found: run scripts/setup-test-deps.sh (Debian flatbuffers-compiler)");
    assert!(out.status.success(), "flatc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn rec(key: &str, t: i64, mutation: Mutation) -> Record {
    Record { key: key.into(), logical_commit_time: t, mutation }
}

#[test]
fn records_built_by_flatc_decode() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema();
    let cases: Vec<(&str, Result<Record, &str>)> = vec![
        (
            r#"{"record_type":"KeyValueMutationRecord","record":{"mutation_type":"Update",
                "logical_commit_time":1700000000,"key":"ad-1","value_type":"StringValue",
                "value":{"value":"{\"x\": 1}"}}}"#,
            Ok(rec("ad-1", 1_700_000_000, Mutation::Update(Value::String("{\"x\": 1}".into())))),
        ),
        (
            r#"{"record_type":"KeyValueMutationRecord","record":{"logical_commit_time":-2,
                "key":"set","value_type":"StringSet","value":{"value":["a","","ü"]}}}"#,
            Ok(rec("set", -2, Mutation::Update(Value::StringSet(vec!["a".into(), "".into(), "ü".into()])))),
        ),
        (
            r#"{"record_type":"KeyValueMutationRecord","record":{"mutation_type":"Update",
                "logical_commit_time":3,"key":"u32","value_type":"UInt32Set","value":{"value":[0,4294967295]}}}"#,
            Ok(rec("u32", 3, Mutation::Update(Value::StringSet(vec!["0".into(), "4294967295".into()])))),
        ),
        (
            r#"{"record_type":"KeyValueMutationRecord","record":{"logical_commit_time":4,"key":"u64",
                "value_type":"UInt64Set","value":{"value":[18446744073709551615]}}}"#,
            Ok(rec("u64", 4, Mutation::Update(Value::StringSet(vec!["18446744073709551615".into()])))),
        ),
        (
            r#"{"record_type":"KeyValueMutationRecord","record":{"mutation_type":"Delete",
                "logical_commit_time":5,"key":"gone","value_type":"StringValue","value":{"value":""}}}"#,
            Ok(rec("gone", 5, Mutation::Delete)),
        ),
        (
            r#"{"record_type":"KeyValueMutationRecord","record":{"mutation_type":"Delete",
                "logical_commit_time":6,"key":"gone-set","value_type":"StringSet","value":{"value":["x"]}}}"#,
            Ok(rec("gone-set", 6, Mutation::Delete)),
        ),
        (
            r#"{"record_type":"UserDefinedFunctionsConfig","record":{"language":"Javascript",
                "code_snippet":"function f(){}","handler_name":"f","logical_commit_time":1,"version":1}}"#,
            Err("record is a UserDefinedFunctionsConfig"),
        ),
        (
            r#"{"record_type":"KeyValueMutationRecord","record":{"logical_commit_time":1,"key":"",
                "value_type":"StringValue","value":{"value":"v"}}}"#,
            Err("empty key"),
        ),
        (
            r#"{"record_type":"KeyValueMutationRecord","record":{"logical_commit_time":1,
                "value_type":"StringValue","value":{"value":"v"}}}"#,
            Err("key not set"),
        ),
        (
            r#"{"record_type":"KeyValueMutationRecord","record":{"logical_commit_time":1,"key":"k"}}"#,
            Err("update without a value"),
        ),
    ];
    for (i, (json, want)) in cases.into_iter().enumerate() {
        let name = format!("r{i}");
        std::fs::write(dir.path().join(format!("{name}.json")), json).unwrap();
        flatc(&["-b", schema.to_str().unwrap(), &format!("{name}.json")], dir.path());
        let bytes = std::fs::read(dir.path().join(format!("{name}.bin"))).unwrap();
        match (decode(&bytes), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "case {i}: {json}"),
            (Err(got), Err(want)) => assert!(got.starts_with(want), "case {i}: got {got:?}, want {want:?}"),
            (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn records_encoded_here_read_back_through_flatc() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema();
    let records = [
        rec("k", 42, Mutation::Update(Value::String("v \"quoted\"".into()))),
        rec("s", -1, Mutation::Update(Value::StringSet(vec!["a".into(), "b".into()]))),
        rec("d", i64::MAX, Mutation::Delete),
    ];
    let mut enc = Encoder::new();
    for (i, r) in records.iter().enumerate() {
        let name = format!("w{i}");
        std::fs::write(dir.path().join(format!("{name}.bin")), enc.encode(r)).unwrap();
        flatc(
            &[
                "--json",
                "--strict-json",
                "--defaults-json",
                "--raw-binary",
                schema.to_str().unwrap(),
                "--",
                &format!("{name}.bin"),
            ],
            dir.path(),
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!("{name}.json"))).unwrap()).unwrap();
        let kv = &json["record"];
        assert_eq!(json["record_type"], "KeyValueMutationRecord", "{json}");
        assert_eq!(kv["key"], r.key.as_str(), "{json}");
        assert_eq!(kv["logical_commit_time"], r.logical_commit_time, "{json}");
        match &r.mutation {
            Mutation::Update(Value::String(s)) => {
                assert_eq!(kv["mutation_type"], "Update", "{json}");
                assert_eq!(kv["value_type"], "StringValue", "{json}");
                assert_eq!(kv["value"]["value"], s.as_str(), "{json}");
            }
            Mutation::Update(Value::StringSet(m)) => {
                assert_eq!(kv["mutation_type"], "Update", "{json}");
                assert_eq!(kv["value_type"], "StringSet", "{json}");
                assert_eq!(kv["value"]["value"], serde_json::json!(m), "{json}");
            }
            Mutation::Delete => {
                assert_eq!(kv["mutation_type"], "Delete", "{json}");
                assert_eq!(kv["value_type"], "StringValue", "{json}");
                assert_eq!(kv["value"]["value"], "", "{json}");
            }
        }
    }
}
