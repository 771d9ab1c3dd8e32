//! The checked-in generated code is what flatc generates from the schema today: regenerate it
//! with `flatc --rust` and compare byte for byte. On a difference, regenerate and commit:
//! `flatc --rust -o enclave/data-format/src enclave/schema/data_loading.fbs` (with the flatc of
//! `FLATC_VERSION`, which scripts/setup-test-deps.sh installs into .tools/venv).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `$FLATC`, else the project's `.tools/venv/bin/flatc`, else `flatc` on the PATH.
fn flatc() -> PathBuf {
    if let Some(f) = std::env::var_os("FLATC") {
        return f.into();
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/flatc");
    if local.exists() { local } else { "flatc".into() }
}

#[test]
fn generated_code_is_what_flatc_generates_from_the_schema() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = crate_dir.join("../schema/data_loading.fbs");
    let flatc = flatc();
    let version = Command::new(&flatc).arg("--version").output().unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run scripts/setup-test-deps.sh (it installs flatc into .tools/venv)",
            flatc.display()
        )
    });
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    assert_eq!(
        version,
        kv_data_format::FLATC_VERSION,
        "{} is not the flatc the code was generated with (it must match the flatbuffers crate's \
         version): run scripts/setup-test-deps.sh, or set FLATC",
        flatc.display()
    );
    let out = tempfile_dir();
    let status =
        Command::new(&flatc).args(["--rust", "-o"]).arg(&out).arg(&schema).status().expect("run flatc");
    assert!(status.success(), "flatc --rust failed");
    let fresh = std::fs::read(out.join("data_loading_generated.rs")).expect("flatc wrote no file");
    let checked_in = std::fs::read(crate_dir.join("src/data_loading_generated.rs")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        fresh == checked_in,
        "src/data_loading_generated.rs differs from what flatc generates from the schema: regenerate it \
         (flatc --rust -o enclave/data-format/src enclave/schema/data_loading.fbs) and commit"
    );
}

/// A fresh directory under the target dir's temporary directory.
fn tempfile_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("flatc-drift-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
