//! The checks `run-enclave` makes before it starts anything, and the verbs on an empty state
//! directory. No QEMU: stand-in tools record whether they were called.

mod common;

use common::{Runner, script};
use packaging::build::{self, Arch, NativeArgs};
use packaging::progress::Progress;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A small EIF from stand-in files (nothing boots it; only its bytes are checked).
fn small_eif(dir: &Path) -> PathBuf {
    let w = |p: &str, data: &[u8]| {
        let path = dir.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    };
    w("in/bzImage", &[0x42; 200_000]);
    w("in/init", &[0x17; 5_000]);
    w("in/rootfs/bin/app", b"app");
    let args = NativeArgs {
        kernel: Some(dir.join("in/bzImage")),
        cmdline: Some("console=ttyS0".into()),
        init: Some(dir.join("in/init")),
        nsm_ko: None,
        modules: vec![],
        blobs: None,
        rootfs: Some(dir.join("in/rootfs")),
        cmd: Some("/bin/app".into()),
        env: vec![],
        signing_certificate: None,
        private_key: None,
    };
    let spec = build::resolve(args, Arch::X86_64, 0, "app".into(), "1".into()).unwrap();
    let out = dir.join("app.eif");
    build::build_native(&spec, &out, Progress::hidden()).unwrap();
    out
}

/// Stand-in QEMU and backend: QEMU answers `-M help` like one with the Nitro machine; any
/// other call of either is recorded in `calls`.
fn fake_tools(dir: &Path) -> (Runner, PathBuf) {
    let calls = dir.join("calls");
    let qemu = dir.join("qemu");
    script(
        &qemu,
        &format!(
            "if [ \"$1 $2\" = '-M help' ]; then echo 'nitro-enclave        AWS Nitro Enclave'; exit 0; fi\n\
             echo \"qemu $*\" >> '{}'\n",
            calls.display()
        ),
    );
    let vhost = dir.join("vhost");
    script(&vhost, &format!("echo \"vhost $*\" >> '{}'\n", calls.display()));
    let runner = Runner::new(dir).env("ENCLAVE_RUNNER_QEMU", &qemu).env("ENCLAVE_RUNNER_VHOST_VSOCK", &vhost);
    (runner, calls)
}

fn run_args(eif: &Path) -> Vec<String> {
    ["run-enclave", "--cpu-count", "1", "--memory", "256", "--enclave-cid", "16", "--eif-path"]
        .iter()
        .map(|s| s.to_string())
        .chain([eif.display().to_string()])
        .collect()
}

/// Nothing was started and no enclave directory was made.
fn assert_nothing_started(r: &Runner, calls: &Path) {
    assert!(!calls.exists(), "a tool was started: {}", fs::read_to_string(calls).unwrap());
    let dirs: Vec<_> = fs::read_dir(&r.state)
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "enclave directories were created: {dirs:?}");
}

#[test]
fn a_corrupt_eif_fails_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let eif = small_eif(tmp.path());
    let mut bytes = fs::read(&eif).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&eif, bytes).unwrap();
    let (r, calls) = fake_tools(tmp.path());

    let out = r.run(&run_args(&eif), T);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr.contains(&eif.display().to_string()) && out.stderr.contains("CRC mismatch"),
        "{out:?}"
    );
    assert_nothing_started(&r, &calls);
}

#[test]
fn an_unreadable_eif_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, calls) = fake_tools(tmp.path());
    let missing = tmp.path().join("missing.eif");
    let out = r.run(&run_args(&missing), T);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("missing.eif: cannot open"), "{out:?}");

    let short = tmp.path().join("short.eif");
    fs::write(&short, b"EIF?").unwrap();
    let out = r.run(&run_args(&short), T);
    assert!(out.stderr.contains("short.eif: file is 4 bytes"), "{out:?}");
    assert_nothing_started(&r, &calls);
}

#[test]
fn bad_arguments_and_missing_tools_fail_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let eif = small_eif(tmp.path());
    let (r, calls) = fake_tools(tmp.path());
    let mut args = run_args(&eif);
    args[2] = "0".into();
    let out = r.run(&args, T);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("--cpu-count 0: must be at least 1"), "{out:?}");

    let out = r.run(&[&run_args(&eif)[..], &["--enclave-name".into(), "../x".into()]].concat(), T);
    assert!(out.stderr.contains("--enclave-name ../x"), "{out:?}");
    assert_nothing_started(&r, &calls);

    let r = Runner::new(tmp.path()).env("ENCLAVE_RUNNER_QEMU", tmp.path().join("no-qemu"));
    let out = r.run(&run_args(&eif), T);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("no-qemu") && out.stderr.contains("ENCLAVE_RUNNER_QEMU"), "{out:?}");

    // A QEMU without the emulated machine (Debian's) is refused too.
    let plain = tmp.path().join("plain-qemu");
    script(&plain, "echo 'pc                   Standard PC'\n");
    let r = Runner::new(tmp.path()).env("ENCLAVE_RUNNER_QEMU", &plain);
    let out = r.run(&run_args(&eif), T);
    assert!(out.stderr.contains("has no `nitro-enclave` machine"), "{out:?}");
}

#[test]
fn verbs_on_an_empty_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Runner::new(tmp.path());
    assert!(r.describe().is_empty());

    let out = r.run(&["terminate-enclave", "--enclave-name", "nope"], T);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("no running enclave named nope"), "{out:?}");
    let out = r.run(&["terminate-enclave", "--all"], T);
    out.assert_success("terminate-enclave --all");
    assert!(out.stdout.is_empty());

    let out = r.run(&["console", "--enclave-id", "i-local-enc-0000000000000000"], T);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("no enclave with ID"), "{out:?}");
}
