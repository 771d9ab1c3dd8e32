//! The parent instance's systemd units (systemd/): `systemd-analyze verify` on each, the
//! `security --offline=true` exposure score of vsockproxy.service, shellcheck of the enclave
//! supervisor script, and that script's behaviour against a nitro-cli test double.
//!
//! The units name production paths (/opt/privacysandbox/proxy, /usr/bin/docker, ...) that do
//! not exist on a test machine, and `verify` refuses a unit whose ExecStart is missing. Each
//! test therefore verifies a copy in a temp dir whose product paths point at executables that
//! exist: the supervisor script from the repo, the real vsockproxy when it is built, and
//! clearly-named stand-ins for programs of packages not installed here (docker, the collector).
//! Everything else in the unit, every directive and value, is verified as written.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::{Proc, repo_root, system_tool, wait_until};

fn systemd_dir() -> PathBuf {
    repo_root().join("systemd")
}

/// An executable that exists and does nothing: stands in for a program of a package that is
/// not installed on test machines. The name says what it stands in for.
fn stand_in(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("stand-in-for-{name}"));
    std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&p, perm).unwrap();
    p
}

/// A unit file standing in for one a package installs on the AMI (docker, the nitro enclaves
/// allocator, the collector), so dependencies on it resolve during `verify`.
fn stand_in_unit(dir: &Path, name: &str, exec: &Path) {
    std::fs::write(
        dir.join(name),
        format!(
            "[Unit]\nDescription=stand-in for the packaged {name} (not installed on test machines)\n\
             [Service]\nType=simple\nEnvironmentFile=-/nonexistent/.env\nExecStart={} $config\n",
            exec.display()
        ),
    )
    .unwrap();
}

/// Copies every unit into `dir`, with product paths replaced as described at the top.
fn render_units(dir: &Path) -> Vec<PathBuf> {
    let src = systemd_dir();
    let docker = stand_in(dir, "docker");
    let collector = stand_in(dir, "aws-otel-collector");
    let proxy = stand_in(dir, "vsockproxy");
    let supervisor = src.join("nitro-enclave-run");
    let env_file = src.join("enclave.env");
    let subst = |text: &str| -> String {
        text.replace("/opt/privacysandbox/proxy", proxy.to_str().unwrap())
            .replace("/opt/privacysandbox/nitro-enclave-run", supervisor.to_str().unwrap())
            .replace("/etc/nitro-enclave/enclave.env", env_file.to_str().unwrap())
            .replace("/usr/bin/docker", docker.to_str().unwrap())
            .replace("/opt/aws/aws-otel-collector/bin/aws-otel-collector", collector.to_str().unwrap())
    };
    stand_in_unit(dir, "docker.service", &docker);
    stand_in_unit(dir, "nitro-enclaves-allocator.service", &docker);
    stand_in_unit(dir, "aws-otel-collector.service", &collector);
    let mut units = Vec::new();
    for name in ["vsockproxy.service", "nitro-enclave.service", "envoy.service"] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        let out = dir.join(name);
        std::fs::write(&out, subst(&text)).unwrap();
        units.push(out);
    }
    let dropin_dir = dir.join("aws-otel-collector.service.d");
    std::fs::create_dir_all(&dropin_dir).unwrap();
    let dropin = std::fs::read_to_string(src.join("aws-otel-collector.service.d/10-nitro-kv.conf")).unwrap();
    std::fs::write(dropin_dir.join("10-nitro-kv.conf"), subst(&dropin)).unwrap();
    // The drop-in is verified through the unit it extends.
    units.push(dir.join("aws-otel-collector.service"));
    units
}

/// `systemd-analyze verify` output for `unit`; it exits 0 even for unknown keys or bad values,
/// so the tests require the output to be empty.
fn verify(unit: &Path) -> (bool, String) {
    let out = Command::new(system_tool("systemd-analyze"))
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("run systemd-analyze verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let units = render_units(dir.path());
    assert_eq!(units.len(), 4);
    for unit in units {
        let (ok, text) = verify(&unit);
        assert!(ok && text.trim().is_empty(), "verify {}: ok={ok}\n{text}", unit.display());
    }
}

#[test]
fn verify_reports_a_broken_unit() {
    // The check above can fail: the same procedure flags a typo in a copy of a real unit.
    let dir = tempfile::tempdir().unwrap();
    let units = render_units(dir.path());
    let unit = &units[0];
    let text = std::fs::read_to_string(unit).unwrap().replace("Type=notify", "Type=notifiy");
    std::fs::write(unit, text).unwrap();
    let (_, out) = verify(unit);
    assert!(out.contains("notifiy"), "verify did not flag Type=notifiy:\n{out}");
}

fn exposure(unit: &Path) -> f64 {
    let out = Command::new(system_tool("systemd-analyze"))
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()
        .expect("run systemd-analyze security");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
    let score = line.rsplit(':').next().and_then(|s| s.split_whitespace().next()).unwrap_or("");
    score.parse().unwrap_or_else(|e| panic!("exposure score {score:?} in {line:?}: {e}"))
}

#[test]
fn unit_exposure_scores_are_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    render_units(dir.path());
    let score = exposure(&dir.path().join("vsockproxy.service"));
    println!("vsockproxy.service exposure: {score}");
    assert!(score <= 2.0, "vsockproxy.service exposure {score} > 2.0");
    // envoy.service only runs the docker client: no reason for it to score worse.
    let score = exposure(&dir.path().join("envoy.service"));
    println!("envoy.service exposure: {score}");
    assert!(score <= 2.0, "envoy.service exposure {score} > 2.0");
    // The collector drop-in sandboxes the packaged unit to the same level.
    let score = exposure(&dir.path().join("aws-otel-collector.service"));
    println!("aws-otel-collector.service (+ drop-in) exposure: {score}");
    assert!(score <= 2.0, "aws-otel-collector.service exposure {score} > 2.0");
}

/// `Key=Value` lines of a unit file (continuation lines joined).
fn directives(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap().replace("\\\n", " ");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

fn value<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

#[test]
fn vsockproxy_unit_runs_the_proxy_as_a_notify_service_with_watchdog() {
    let d = directives(&systemd_dir().join("vsockproxy.service"));
    assert_eq!(value(&d, "Type"), ["notify"]);
    assert_eq!(value(&d, "NotifyAccess"), ["main"]);
    assert_eq!(value(&d, "Restart"), ["always"]);
    assert_eq!(
        value(&d, "ExecStart"),
        ["/opt/privacysandbox/proxy run --config /etc/vsockproxy/vsockproxy.toml"]
    );
    assert_eq!(value(&d, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert!(!value(&d, "WatchdogSec").is_empty(), "no WatchdogSec");
}

/// A systemd time span as the units write it (`45s`, `2min`, `1min 30s`, a bare number of
/// seconds) in milliseconds.
fn timespan_ms(v: &str) -> u64 {
    v.split_whitespace()
        .map(|part| {
            let unit_at = part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len());
            let n: u64 = part[..unit_at].parse().unwrap_or_else(|e| panic!("time span {v:?}: {e}"));
            n * match &part[unit_at..] {
                "" | "s" | "sec" => 1000,
                "ms" | "msec" => 1,
                "m" | "min" => 60_000,
                other => panic!("time span {v:?}: unit {other:?} not handled here"),
            }
        })
        .sum()
}

#[test]
fn vsockproxy_unit_stop_timeout_leaves_room_after_the_drain_deadline() {
    // SIGTERM starts vsockproxy's drain, which lasts up to `[timeouts] drain_ms`; then the
    // runtime shuts down and the process exits. systemd sends SIGKILL at TimeoutStopSec=, so
    // that must come well after the drain deadline or it cuts the drain it was meant to allow.
    const MARGIN_MS: u64 = 5_000;
    let d = directives(&systemd_dir().join("vsockproxy.service"));
    let stop = value(&d, "TimeoutStopSec");
    assert_eq!(stop.len(), 1, "one TimeoutStopSec= in vsockproxy.service: {stop:?}");
    let stop_ms = timespan_ms(stop[0]);
    let example = std::fs::read_to_string(repo_root().join("proxy/examples/vsockproxy.toml")).unwrap();
    // The deployed config's drain deadline, or vsockproxy's default (docs/vsockproxy.md).
    let drain_ms: u64 = example
        .lines()
        .filter_map(|l| l.split('#').next()?.trim().strip_prefix("drain_ms"))
        .find_map(|rest| rest.trim().strip_prefix('=')?.trim().replace('_', "").parse().ok())
        .unwrap_or(30_000);
    assert!(
        stop_ms >= drain_ms + MARGIN_MS,
        "TimeoutStopSec={} ({stop_ms} ms) must exceed the example config's drain_ms ({drain_ms} ms) \
         by at least {MARGIN_MS} ms",
        stop[0]
    );
}

#[test]
fn vsockproxy_unit_file_limit_covers_the_example_config_caps() {
    // `vsockproxy run` refuses connection caps the descriptor limit cannot honour (6 per busy
    // splice connection); `check` says how many the example config needs at its caps.
    let d = directives(&systemd_dir().join("vsockproxy.service"));
    let limit: u64 = value(&d, "LimitNOFILE")[0].parse().expect("LimitNOFILE= is a number");
    let bin = e2e_tests::workspace_bin("vsockproxy");
    let out = Command::new(&bin)
        .arg("check")
        .arg(repo_root().join("proxy/examples/vsockproxy.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let needed: u64 = text
        .split("up to ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no descriptor count in: {text}"));
    assert!(limit >= needed, "LimitNOFILE={limit} but the example config needs {needed}: {text}");
}

#[test]
fn envoy_unit_uses_host_network_and_etc_envoy() {
    let d = directives(&systemd_dir().join("envoy.service"));
    let exec = value(&d, "ExecStart").join(" ");
    for want in [
        "--network host",
        "/etc/envoy:/etc/envoy:ro",
        "${ENVOY_IMAGE}",
        "/etc/envoy/envoy.yaml",
        "--pull=never",
    ] {
        assert!(exec.contains(want), "envoy ExecStart lacks {want:?}: {exec}");
    }
    let image = value(&d, "Environment").join(" ");
    assert!(image.contains("envoyproxy/envoy-distroless"), "default image: {image}");
}

/// envoy writes its access log to stdout, which docker keeps: the unit bounds it (rotated files)
/// unless /etc/envoy/envoy.env says otherwise, so the daemon's default of one file without a size
/// limit cannot fill the disk.
#[test]
fn envoy_unit_bounds_the_container_log() {
    let d = directives(&systemd_dir().join("envoy.service"));
    let exec = value(&d, "ExecStart").join(" ");
    assert!(exec.contains(" $ENVOY_LOG_OPTS "), "ExecStart does not pass ENVOY_LOG_OPTS: {exec}");
    let opts = value(&d, "Environment")
        .into_iter()
        .find_map(|v| v.trim_matches('"').strip_prefix("ENVOY_LOG_OPTS="))
        .expect("a default ENVOY_LOG_OPTS");
    for want in ["--log-opt max-size=", "--log-opt max-file="] {
        assert!(opts.contains(want), "ENVOY_LOG_OPTS lacks {want:?}: {opts}");
    }
    assert_eq!(value(&d, "EnvironmentFile"), ["-/etc/envoy/envoy.env"], "the operator's override file");
}

#[test]
fn enclave_unit_supervises_with_watchdog_and_env_file() {
    let d = directives(&systemd_dir().join("nitro-enclave.service"));
    assert_eq!(value(&d, "Type"), ["notify"]);
    assert_eq!(value(&d, "Restart"), ["always"]);
    assert_eq!(value(&d, "EnvironmentFile"), ["/etc/nitro-enclave/enclave.env"]);
    assert!(!value(&d, "WatchdogSec").is_empty());
    // Every key the supervisor reads is documented in the environment file.
    let env = std::fs::read_to_string(systemd_dir().join("enclave.env")).unwrap();
    let script = std::fs::read_to_string(systemd_dir().join("nitro-enclave-run")).unwrap();
    for key in [
        "ENCLAVE_EIF_PATH",
        "ENCLAVE_CID",
        "ENCLAVE_CPU_COUNT",
        "ENCLAVE_MEMORY_MIB",
        "ENCLAVE_NAME",
        "ENCLAVE_DEBUG_MODE",
        "ENCLAVE_POLL_SECONDS",
    ] {
        assert!(env.contains(&format!("\n{key}=")), "enclave.env lacks {key}");
        assert!(script.contains(&format!("${{{key}:-")), "nitro-enclave-run does not read {key}");
    }
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let root = repo_root();
    let out = Command::new(system_tool("shellcheck"))
        .arg("-x")
        .arg(root.join("systemd/nitro-enclave-run"))
        .arg(root.join("tests/fixtures/nitro-cli-test-double"))
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The enclave supervisor run against the nitro-cli test double, with a Unix datagram socket
/// as NOTIFY_SOCKET standing in for systemd's.
struct Supervisor {
    _dir: tempfile::TempDir,
    state: PathBuf,
    /// Every notify datagram received so far. A thread keeps reading: systemd-notify waits
    /// for its BARRIER fd to be consumed, so an unread socket would slow the script down.
    notified: Arc<Mutex<String>>,
    proc: Proc,
}

impl Supervisor {
    fn start(extra_env: &[(&str, &str)], leftover: bool) -> Supervisor {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nitro-state");
        std::fs::create_dir_all(state.join("enclaves")).unwrap();
        if leftover {
            std::fs::write(state.join("enclaves/kv-server"), "16\n").unwrap();
        }
        let eif = dir.path().join("image.eif");
        std::fs::write(&eif, b"not a real eif: the test double never reads it").unwrap();
        let sock = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        let notified = Arc::new(Mutex::new(String::new()));
        let sink = Arc::downgrade(&notified);
        notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the test drops its Supervisor.
            while let Some(sink) = sink.upgrade() {
                if let Ok(n) = notify.recv(&mut buf) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    s.push('\n');
                }
            }
        });
        let mut cmd = Command::new(systemd_dir().join("nitro-enclave-run"));
        cmd.env("NITRO_CLI", repo_root().join("tests/fixtures/nitro-cli-test-double"))
            .env("NITRO_CLI_TEST_DOUBLE_STATE", &state)
            .env("NOTIFY_SOCKET", &sock)
            .env("ENCLAVE_EIF_PATH", &eif)
            .env("ENCLAVE_POLL_SECONDS", "1");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("nitro-enclave-run", cmd, &dir.path().join("supervisor.log"));
        Supervisor { _dir: dir, state, notified, proc }
    }

    /// Waits for a notify datagram containing `want`; returns everything received meanwhile.
    fn wait_notify(&self, want: &str, timeout: Duration) -> String {
        let found = wait_until(timeout, || {
            let seen = self.notified.lock().unwrap();
            seen.contains(want).then(|| seen.clone())
        });
        if let Some(seen) = found {
            return seen;
        }
        let seen = self.notified.lock().unwrap().clone();
        panic!("no {want} within {timeout:?}; got {seen:?}; log:\n{}", self.proc.logs());
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.state.join("calls.log")).unwrap_or_default()
    }
}

#[test]
fn enclave_supervisor_reports_ready_pings_watchdog_and_exits_when_the_enclave_dies() {
    let mut s = Supervisor::start(&[("ENCLAVE_CPU_COUNT", "4"), ("ENCLAVE_MEMORY_MIB", "8192")], false);
    s.wait_notify("READY=1", Duration::from_secs(10));
    s.wait_notify("WATCHDOG=1", Duration::from_secs(10));
    let calls = s.calls();
    assert!(
        calls.contains("run-enclave --eif-path ")
            && calls.contains("--enclave-cid 16 --cpu-count 4 --memory 8192 --enclave-name kv-server"),
        "run-enclave arguments: {calls}"
    );
    assert!(!calls.contains("--debug-mode"), "debug mode must be off by default: {calls}");
    // The enclave dies (as far as nitro-cli can tell): the supervisor must exit non-zero so
    // that systemd (Restart=always) starts it again.
    std::fs::remove_file(s.state.join("enclaves/kv-server")).unwrap();
    let status = s.proc.wait_timeout(Duration::from_secs(10)).expect("supervisor did not exit");
    assert_eq!(status.code(), Some(1), "log:\n{}", s.proc.logs());
    assert!(s.proc.logs().contains("kv-server is ABSENT"), "log:\n{}", s.proc.logs());
}

#[test]
fn enclave_supervisor_terminates_the_enclave_on_sigterm() {
    let mut s = Supervisor::start(&[("ENCLAVE_DEBUG_MODE", "true")], false);
    s.wait_notify("READY=1", Duration::from_secs(10));
    assert!(s.state.join("enclaves/kv-server").exists());
    s.proc.signal("TERM");
    let status = s.proc.wait_timeout(Duration::from_secs(10)).expect("supervisor did not exit");
    assert_eq!(status.code(), Some(0), "log:\n{}", s.proc.logs());
    assert!(!s.state.join("enclaves/kv-server").exists(), "enclave still running after stop");
    let calls = s.calls();
    assert!(calls.contains("--debug-mode"), "ENCLAVE_DEBUG_MODE=true not passed on: {calls}");
    assert!(calls.contains("terminate-enclave --enclave-name kv-server"), "{calls}");
}

#[test]
fn enclave_supervisor_replaces_a_leftover_enclave() {
    let s = Supervisor::start(&[], true);
    s.wait_notify("READY=1", Duration::from_secs(10));
    let calls = s.calls();
    let term = calls.find("terminate-enclave").expect("leftover not terminated");
    let run = calls.find("run-enclave").expect("no run-enclave");
    assert!(term < run, "terminate must come before run: {calls}");
}

#[test]
fn enclave_supervisor_rejects_bad_settings_by_name() {
    for (key, val) in [("ENCLAVE_CID", "3"), ("ENCLAVE_MEMORY_MIB", "lots"), ("ENCLAVE_DEBUG_MODE", "maybe")]
    {
        let mut s = Supervisor::start(&[(key, val)], false);
        let status = s.proc.wait_timeout(Duration::from_secs(10)).expect("did not exit");
        assert_eq!(status.code(), Some(1));
        let log = s.proc.logs();
        assert!(log.contains(&format!("{key}={val}")), "error does not name {key}: {log}");
        assert!(!s.calls().contains("run-enclave"), "started despite {key}={val}");
    }
}

#[test]
fn enclave_supervisor_exits_when_run_enclave_fails() {
    let mut s = Supervisor::start(&[("NITRO_CLI_TEST_DOUBLE_FAIL_RUN", "1")], false);
    let status = s.proc.wait_timeout(Duration::from_secs(10)).expect("did not exit");
    assert_eq!(status.code(), Some(1), "log:\n{}", s.proc.logs());
    assert!(s.proc.logs().contains("run-enclave failed for kv-server"), "log:\n{}", s.proc.logs());
    assert!(!s.state.join("enclaves/kv-server").exists());
}

/// Datagrams received on a Unix socket standing in for systemd's notify socket.
fn notify_listener(path: &Path) -> Arc<Mutex<String>> {
    let sock = UnixDatagram::bind(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = Arc::downgrade(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Some(sink) = sink.upgrade() {
            if let Ok(n) = sock.recv(&mut buf) {
                let mut s = sink.lock().unwrap();
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                s.push('\n');
            }
        }
    });
    seen
}

#[test]
fn vsockproxy_unit_command_lines_drive_the_real_binary() {
    // The unit's ExecStartPre/ExecStart/ExecReload as written, with only the binary and config
    // paths swapped: the real vsockproxy accepts them, reports READY=1, pings the watchdog at
    // the rate WatchdogSec= asks for, survives the reload signal and stops cleanly.
    let d = directives(&systemd_dir().join("vsockproxy.service"));
    let dir = tempfile::tempdir().unwrap();
    let bin = e2e_tests::workspace_bin("vsockproxy");
    let config = dir.path().join("vsockproxy.toml");
    let (ingress, admin) = (e2e_tests::free_port(), e2e_tests::free_port());
    std::fs::write(
        &config,
        format!(
            "[[ingress]]\nlisten = \"tcp://127.0.0.1:{ingress}\"\nupstream = \"unix://{}/kv.sock\"\n\n\
             [admin]\nlisten = \"tcp://127.0.0.1:{admin}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let argv = |line: &str| -> Vec<String> {
        line.replace("/opt/privacysandbox/proxy", bin.to_str().unwrap())
            .replace("/etc/vsockproxy/vsockproxy.toml", config.to_str().unwrap())
            .split_whitespace()
            .map(String::from)
            .collect()
    };

    let pre = argv(value(&d, "ExecStartPre")[0]);
    let status = Command::new(&pre[0]).args(&pre[1..]).status().unwrap();
    assert!(status.success(), "ExecStartPre {pre:?}: {status}");
    // ...and it is what stops a broken config before anything binds.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[[ingress]]\nlisten = \"tcp://127.0.0.1:1\"\nupstrem = \"x\"\n").unwrap();
    let status = Command::new(&pre[0]).args(&pre[1..pre.len() - 1]).arg(&broken).status().unwrap();
    assert!(!status.success(), "check accepted a config with an unknown key");

    let start = argv(value(&d, "ExecStart")[0]);
    let sock = dir.path().join("notify.sock");
    let seen = notify_listener(&sock);
    let watchdog: u64 = value(&d, "WatchdogSec")[0].trim_end_matches('s').parse().unwrap();
    let mut cmd = Command::new(&start[0]);
    // As systemd would set them for this unit; a 2 s watchdog instead of the unit's
    // value keeps the test short while checking the same mechanism.
    assert!(watchdog >= 2);
    cmd.args(&start[1..]).env("NOTIFY_SOCKET", &sock).env("WATCHDOG_USEC", "2000000");
    let mut proxy = Proc::spawn("vsockproxy", cmd, &dir.path().join("vsockproxy.log"));
    let wait_for = |what: &str, proxy: &mut Proc| {
        let got = wait_until(Duration::from_secs(15), || {
            proxy.assert_running();
            seen.lock().unwrap().contains(what).then_some(())
        });
        assert!(got.is_some(), "no {what}; notify: {:?}; log:\n{}", seen.lock().unwrap(), proxy.logs());
    };
    wait_for("READY=1", &mut proxy);
    wait_for("WATCHDOG=1", &mut proxy);
    // ExecReload: kill -HUP $MAINPID.
    let reload = value(&d, "ExecReload")[0].replace("$MAINPID", &proxy.pid().to_string());
    let reload: Vec<&str> = reload.split_whitespace().collect();
    assert!(Command::new(reload[0]).args(&reload[1..]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    proxy.assert_running();
    proxy.signal("TERM");
    let status = proxy.wait_timeout(Duration::from_secs(40)).expect("no exit after SIGTERM");
    assert!(status.success(), "exit after SIGTERM: {status}; log:\n{}", proxy.logs());
    assert!(seen.lock().unwrap().contains("STOPPING=1"), "{:?}", seen.lock().unwrap());
}
