//! The real `kv-data` binary: convert, validate, dump and generate, on files in a temp dir.

use std::path::Path;
use std::process::{Command, Output};

fn kv_data(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kv-data")).args(args).output().expect("run kv-data")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

const CSV: &str = "key,mutation_type,logical_commit_time,value,value_type\n\
                   alpha,UPDATE,10,\"hello, world\",string\n\
                   colors,update,11,red|green|blue,string_set\n\
                   gone,DELETE,12,,string\n";

#[test]
fn convert_validate_dump_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("input.csv");
    std::fs::write(&csv, CSV).unwrap();
    let delta = dir.path().join("DELTA_0000000000000005");

    let out = kv_data(&["convert", "--in", path(&csv), "--out", path(&delta)]);
    assert!(out.status.success(), "convert: {}", text(&out.stderr));
    let bytes = std::fs::read(&delta).unwrap();
    assert!(bytes.starts_with(b"Obj\x01"), "convert writes Avro by default");
    // No temporary file is left beside the output.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

    let out = kv_data(&["validate", path(&delta), path(&csv)]);
    assert!(out.status.success(), "validate: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("DELTA_0000000000000005: ok, 3 records (2 updates, 1 deletes)"), "{stdout}");
    assert!(stdout.contains("input.csv: ok, 3 records"), "{stdout}");
    assert!(text(&out.stderr).contains("input.csv is not named DELTA_"), "{}", text(&out.stderr));

    let out = kv_data(&["dump", path(&delta)]);
    assert!(out.status.success(), "dump: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "key,mutation_type,logical_commit_time,value,value_type\n\
         alpha,UPDATE,10,\"hello, world\",string\n\
         colors,UPDATE,11,red|green|blue,string_set\n\
         gone,DELETE,12,,string\n"
    );

    // Back to CSV with --format csv, and the dump of that equals the dump of the Avro file.
    let again = dir.path().join("DELTA_0000000000000006");
    let out = kv_data(&["convert", "--in", path(&delta), "--out", path(&again), "--format", "csv"]);
    assert!(out.status.success(), "convert to csv: {}", text(&out.stderr));
    assert_eq!(
        text(&kv_data(&["dump", path(&again)]).stdout),
        text(&kv_data(&["dump", path(&delta)]).stdout)
    );
}

#[test]
fn validate_names_the_bad_file_and_record_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("DELTA_0000000000000001");
    std::fs::write(&good, CSV).unwrap();
    let bad_csv = dir.path().join("DELTA_0000000000000002");
    std::fs::write(&bad_csv, format!("{CSV}k,UPDATE,later,v,string\n")).unwrap();

    // A truncated Avro file.
    let avro = dir.path().join("SNAPSHOT_0000000000000003");
    let out = kv_data(&["convert", "--in", path(&good), "--out", path(&avro)]);
    assert!(out.status.success());
    let bytes = std::fs::read(&avro).unwrap();
    std::fs::write(&avro, &bytes[..bytes.len() - 5]).unwrap();

    let out = kv_data(&["validate", path(&good), path(&bad_csv), path(&avro)]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: record 4 (line 5): logical_commit_time is not a 64-bit integer",
            bad_csv.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{}: record 1: Avro block 1: sync marker", avro.display())), "{stderr}");
    assert!(stderr.contains("2 of 3 files are invalid"), "{stderr}");
    assert!(text(&out.stdout).contains("DELTA_0000000000000001: ok, 3 records"));

    let out = kv_data(&["validate", path(&dir.path().join("missing"))]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("missing: read:"), "{}", text(&out.stderr));
}

#[test]
fn generate_is_deterministic_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("SNAPSHOT_0000000000000001");
    let b = dir.path().join("SNAPSHOT_0000000000000002");
    for p in [&a, &b] {
        let out = kv_data(&[
            "generate",
            "--records",
            "2000",
            "--key-len",
            "16",
            "--value-len",
            "100",
            "--out",
            path(p),
        ]);
        assert!(out.status.success(), "generate: {}", text(&out.stderr));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let out = kv_data(&["validate", path(&a)]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("ok, 2000 records (2000 updates, 0 deletes)"),
        "{}",
        text(&out.stdout)
    );

    let dump = text(&kv_data(&["dump", path(&a)]).stdout);
    let rows: Vec<&str> = dump.lines().skip(1).collect();
    assert_eq!(rows.len(), 2000);
    let mut keys = std::collections::HashSet::new();
    for row in rows {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields.len(), 5, "{row}");
        assert_eq!(fields[0].len(), 16);
        assert_eq!(fields[3].len(), 100);
        assert!(keys.insert(fields[0].to_owned()), "duplicate key {}", fields[0]);
    }

    let out = kv_data(&["generate", "--records", "1000", "--key-len", "2", "--out", path(&a)]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--key-len 2 cannot hold 1000 unique keys"), "{}", text(&out.stderr));
}

#[test]
fn dump_into_a_pipe_closed_early_is_not_an_error() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("SNAPSHOT_0000000000000001");
    let out = kv_data(&["generate", "--records", "20000", "--out", path(&file)]);
    assert!(out.status.success(), "generate: {}", text(&out.stderr));

    let mut child = Command::new(env!("CARGO_BIN_EXE_kv-data"))
        .args(["dump", path(&file)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the header line's worth (the output is about 2.6 MB, far more than a pipe holds),
    // then close the pipe as `head -1` would.
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"key,mutation_type,"));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "dump into a closed pipe: {:?} {}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn convert_of_a_bad_file_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("input.csv");
    std::fs::write(&csv, format!("{CSV}\"\",UPDATE,1,v,string\n")).unwrap();
    let out_path = dir.path().join("DELTA_0000000000000001");
    let out = kv_data(&["convert", "--in", path(&csv), "--out", path(&out_path)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("{}: record 4 (line 5): empty key", csv.display())),
        "{}",
        text(&out.stderr)
    );
    // Only the input is there: no output, no temporary file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
