//! `vsockproxy check` and `run` with good and bad configuration files.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, check};

#[test]
fn the_reference_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vsockproxy.toml");
    let (ok, out) = check(&example);
    assert!(ok, "{out}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn bad_configs_name_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "typo.toml",
            "[socks5]\nlisten = \"tcp://127.0.0.1:0\"\nlisen = \"x\"\n",
            &[":3:", "socks5.lisen", "unknown field"],
        ),
        (
            "cid.toml",
            "[[ingress]]\nlisten = \"tcp://127.0.0.1:50051\"\nupstream = \"vsock://enclave:50051\"\n",
            &[":3:", "ingress.upstream", "no host names"],
        ),
        ("scheme.toml", "[socks5]\nlisten = \"127.0.0.1:8888\"\n", &[":2:", "socks5.listen", "SCHEME://"]),
        (
            "policy.toml",
            "[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n[[policy.allow]]\nhost = \"*.amazonaws.com\"\nports = [\"443\"]\n[[policy.allow]]\ncidr = \"10.0.0.0/33\"\nports = [\"443\"]\n",
            &["policy.allow[1].cidr"],
        ),
        (
            "dup.toml",
            "[socks5]\nlisten = \"tcp://127.0.0.1:7000\"\n[[mapping]]\nlisten = \"tcp://127.0.0.1:7000\"\nupstream = \"tcp://kms.us-east-1.amazonaws.com:443\"\n",
            &["mapping[0].listen", "socks5.listen"],
        ),
        (
            "admin.toml",
            "[admin]\nlisten = \"tcp://0.0.0.0:9901\"\n[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n",
            &["admin.listen", "loopback"],
        ),
        (
            "mode.toml",
            "[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n[forwarding]\nmode = \"fast\"\n",
            &[":4:", "forwarding.mode"],
        ),
        (
            "limit.toml",
            "[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n[limits]\nmax_connections = 0\n",
            &["limits.max_connections"],
        ),
        (
            "dns.toml",
            "[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n[dns]\nmin_ttl_secs = 600\nmax_ttl_secs = 60\n",
            &["dns.min_ttl_secs"],
        ),
        ("empty.toml", "", &["nothing to listen on"]),
        (
            "unlisted.toml",
            "[[mapping]]\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://kms.us-east-1.amazonaws.com:443\"\n",
            &["mapping[0].upstream", "not allowed by [policy]"],
        ),
        ("syntax.toml", "[socks5\nlisten = 1\n", &[":1:"]),
        (
            "otlp.toml",
            "[socks5]\nlisten = \"tcp://127.0.0.1:0\"\n[otlp]\nendpoint = \"tcp://127.0.0.1:4317\"\n",
            &["key `otlp`", "[otlp] section was removed", "collector scrapes /metrics"],
        ),
    ];
    for (name, text, wants) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (ok, out) = check(&path);
        assert!(!ok, "{name} accepted: {out}");
        assert!(out.contains(&path.display().to_string()), "{name}: file not named: {out}");
        for want in *wants {
            assert!(out.contains(want), "{name}: expected {want:?} in: {out}");
        }
        // `run` refuses it the same way, before opening any socket, with exit code 2.
        let run = Command::new(BIN).args(["run", "--config"]).arg(&path).output().unwrap();
        assert_eq!(run.status.code(), Some(2), "{name}");
        assert!(String::from_utf8_lossy(&run.stderr).contains(wants[0]), "{name}");
    }
    let missing = dir.path().join("missing.toml");
    let (ok, out) = check(&missing);
    assert!(!ok && out.contains("missing.toml") && out.contains("cannot read"), "{out}");
}

#[test]
fn a_bad_config_opens_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("in.sock");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[[ingress]]\nlisten = \"unix://{}\"\nupstream = \"vsock://16:1\"\n[timeouts]\nidle = 3\n",
            sock.display()
        ),
    )
    .unwrap();
    let run = Command::new(BIN).args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(!sock.exists(), "a listener was bound before the config was validated");
}

#[test]
fn cli_flags_are_validated_and_named() {
    let out = Command::new(BIN).args(["run", "--ingress-upstream", "vsock://enclave:5"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ingress-upstream") && err.contains("no host names"), "{err}");
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--ingress-listen",
        "--ingress-upstream",
        "--socks5-listen",
        "--admin-listen",
        "--forwarding",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

/// `sh -c 'ulimit -n N && exec BIN ...'`: the daemon under a file descriptor limit of `n` (soft
/// and hard), as systemd's `LimitNOFILE=` would set it.
fn nofile_wrapper(n: u32) -> [String; 3] {
    ["sh".into(), "-c".into(), format!("ulimit -n {n} && exec \"$0\" \"$@\"")]
}

const ONE_LISTENER: &str =
    "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n[socks5]\nname = \"s\"\nlisten = \"tcp://127.0.0.1:0\"\n";

#[test]
fn connection_caps_beyond_the_file_descriptor_limit_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("{ONE_LISTENER}[limits]\nmax_connections = 1000\n")).unwrap();
    let [sh, c, script] = nofile_wrapper(512);
    let mut child = Command::new(sh)
        .args([c, script])
        .arg(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vsockproxy started with 1000 connections x 6 descriptors under RLIMIT_NOFILE 512");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    for want in ["limits.max_connections", "1000", "RLIMIT_NOFILE", "512", &path.display().to_string()] {
        assert!(err.contains(want), "expected {want:?} in: {err}");
    }
}

#[test]
fn connection_caps_not_set_are_derived_from_the_file_descriptor_limit() {
    let [sh, c, script] = nofile_wrapper(512);
    let d =
        common::Daemon::start_wrapped(tempfile::tempdir().unwrap(), ONE_LISTENER, &[], &[&sh, &c, &script]);
    let global = d.metric("vsockproxy_connections_limit{listener=\"*\",kind=\"global\"}").unwrap();
    // 512 descriptors, 6 per busy connection, less what the daemon itself needs.
    assert!((1.0..=512.0 / 6.0).contains(&global), "derived global cap {global}");
    let line = d.wait_log(&[("message", "derived")], std::time::Duration::from_secs(2));
    assert!(line.is_some(), "the derived cap is logged:\n{}", d.log_text());
}

#[test]
fn check_reports_the_file_descriptors_the_caps_need() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("{ONE_LISTENER}[limits]\nmax_connections = 1000\n")).unwrap();
    let (ok, out) = check(&path);
    // `check` judges the file, not this machine's limits: it says what `run` will need.
    assert!(ok, "{out}");
    assert!(out.contains("file descriptors"), "{out}");
}
