//! scripts/run-local.sh, the README's run command, end to end: it starts the real kv-server,
//! vsockproxy and envoy, answers the example query and stops everything. Run with `--no-build`
//! (scripts/test.sh has built the binaries) and free ports, so it never touches the defaults a
//! developer's own run-local may be using.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e_tests::{Proc, free_port, repo_root, wait_until, workspace_bin};

/// `$CARGO_TARGET_DIR` for the script: the one holding the binaries the tests use.
fn target_dir() -> PathBuf {
    let bin = workspace_bin("kv-server");
    let _ = workspace_bin("vsockproxy");
    bin.parent().and_then(|d| d.parent()).expect("binary is in TARGET/debug").to_path_buf()
}

fn run_local(args: &[&str], log: &std::path::Path) -> (Proc, Vec<u16>) {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut cmd = Command::new(repo_root().join("scripts/run-local.sh"));
    cmd.arg("--no-build")
        .args(["--envoy-port", &ports[0].to_string()])
        .args(["--envoy-admin-port", &ports[1].to_string()])
        .args(["--ingress-port", &ports[2].to_string()])
        .args(["--proxy-admin-port", &ports[3].to_string()])
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir());
    (Proc::spawn("run-local.sh", cmd, log), ports)
}

#[test]
fn run_local_once_starts_the_stack_and_answers_the_example_query() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = run_local(&["--once"], &dir.path().join("run-local.log"));
    let status = p.wait_timeout(Duration::from_secs(120)).expect("run-local.sh --once did not finish");
    let out = p.logs();
    assert!(status.success(), "run-local.sh --once failed ({status}):\n{out}");
    assert!(out.contains(r#""hello":{"value":"world"}"#), "no answer in:\n{out}");
    assert!(out.contains(r#""missing":{"status":{"code":5"#), "no NOT_FOUND in:\n{out}");
    assert!(out.contains("curl 'http://127.0.0.1:"), "no example requests printed:\n{out}");
}

/// `--enclave`: the local image (the shipped binaries, sample-data config) booted under QEMU, the
/// example query answered from inside the VM through envoy and vsockproxy's `vsock-hybrid://`
/// ingress. Runs in the `qemu` test group (one boot at a time).
#[test]
fn run_local_enclave_once_answers_from_inside_the_vm() {
    if !e2e_tests::enclave::qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = e2e_tests::enclave::build_dist(
        &dir.path().join("local"),
        &["--eif-only", "--enclave-config", "enclave/examples/enclave-local.toml"],
    );
    let eif = image.join("server_enclave_image.eif");
    let (mut p, _) = run_local(
        &["--once", "--enclave", "--eif", eif.to_str().unwrap()],
        &dir.path().join("run-local.log"),
    );
    let status =
        p.wait_timeout(Duration::from_secs(240)).expect("run-local.sh --enclave --once did not finish");
    let out = p.logs();
    assert!(status.success(), "run-local.sh --enclave --once failed ({status}):\n{out}");
    assert!(out.contains("enclave boot: heartbeat after"), "{out}");
    assert!(out.contains("vsock-hybrid://"), "the ingress dials the VM:\n{out}");
    assert!(out.contains(r#""hello":{"value":"world"}"#), "no answer in:\n{out}");
    assert!(out.contains("terminating the enclave"), "{out}");
    // Nothing of the VM is left: no QEMU or vsock backend with the run's work dir.
    let work = out
        .lines()
        .find_map(|l| {
            l.split("ENCLAVE_RUNNER_STATE_DIR=").nth(1)?.split_whitespace().next().map(PathBuf::from)
        })
        .expect("state dir in the log");
    let left = Command::new("pgrep").arg("-af").arg(&work).output().unwrap();
    assert!(left.stdout.is_empty(), "left running: {}", String::from_utf8_lossy(&left.stdout));
}

#[test]
fn run_local_without_envoy_answers_over_grpc_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = run_local(&["--once", "--no-envoy"], &dir.path().join("run-local.log"));
    let status = p.wait_timeout(Duration::from_secs(120)).expect("did not finish");
    let out = p.logs();
    assert!(status.success(), "run-local.sh --once --no-envoy failed ({status}):\n{out}");
    assert!(out.contains("hello") && out.contains("world"), "{out}");
    assert!(!out.contains("envoy:"), "envoy started despite --no-envoy:\n{out}");
}

#[test]
fn run_local_stops_every_process_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, ports) = run_local(&[], &dir.path().join("run-local.log"));
    let up = wait_until(Duration::from_secs(120), || {
        p.assert_running();
        p.logs().contains("running; Ctrl-C stops everything").then_some(())
    });
    assert!(up.is_some(), "never came up:\n{}", p.logs());
    let work = p
        .logs()
        .lines()
        .find_map(|l| l.split("(logs in ").nth(1).map(|s| PathBuf::from(s.trim_end_matches(')'))))
        .expect("work dir in the log");
    assert!(work.is_dir());
    p.signal("TERM");
    let status = p.wait_timeout(Duration::from_secs(30)).expect("run-local.sh ignored SIGTERM");
    assert_eq!(status.code(), Some(143), "{}", p.logs());
    // Every listener is gone (envoy, envoy admin, proxy ingress, proxy admin) and so is the dir.
    for port in ports {
        let closed = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err().then_some(())
        });
        assert!(closed.is_some(), "127.0.0.1:{port} still accepts after stop");
    }
    assert!(!work.exists(), "{} left behind", work.display());
}

#[test]
fn run_local_rejects_a_bad_port_naming_the_flag() {
    let out = Command::new(repo_root().join("scripts/run-local.sh"))
        .args(["--no-build", "--ingress-port", "70000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ingress-port") && err.contains("70000"), "{err}");
}
