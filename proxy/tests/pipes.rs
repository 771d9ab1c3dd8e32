//! splice pipes the kernel will not size as asked: the transfer goes on with what the kernel
//! gave, and every failure is counted and logged (rate-limited), never silently ignored.

mod common;

use common::{Daemon, echo_roundtrip, echo_server};

/// The largest pipe an unprivileged process may ask for (`fs.pipe-max-size`).
fn pipe_max_size() -> usize {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size").unwrap().trim().parse().unwrap()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[tokio::test]
async fn pipe_resize_failures_are_counted_and_logged() {
    const ASKED: usize = 16 << 20;
    if pipe_max_size() >= ASKED {
        eprintln!("skipped: fs.pipe-max-size allows {ASKED}-byte pipes here");
        return;
    }
    let echo = echo_server().await;
    // Above fs.pipe-max-size F_SETPIPE_SZ needs CAP_SYS_RESOURCE, which the unit's empty
    // CapabilityBoundingSet= takes away; as root the test drops it the same way.
    let wrapper: &[&str] = if is_root() { &["setpriv", "--bounding-set=-sys_resource"] } else { &[] };
    let d = Daemon::start_wrapped(
        tempfile::tempdir().unwrap(),
        &format!(
            "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n[forwarding]\nmode = \"splice\"\nbuffer_size = {ASKED}\n\
             [[mapping]]\nname = \"m\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{echo}\"\n\
             [[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"*\"]\n"
        ),
        &[],
        wrapper,
    );
    let addr = d.tcp("m");
    for seed in 0..3 {
        assert_eq!(echo_roundtrip(addr, seed, 1 << 20).await, 1 << 20, "the transfer goes on");
    }
    let resize = d.metric("vsockproxy_splice_pipe_errors_total{op=\"resize\"}").unwrap_or(0.0);
    assert!(resize >= 6.0, "two pipes per connection, three connections: {resize}\n{}", d.log_text());
    assert_eq!(d.metric("vsockproxy_splice_pipe_errors_total{op=\"create\"}"), Some(0.0));
    // TCP sockets splice both ways: no direction fell back to copy.
    for op in ["read", "write"] {
        let series = format!("vsockproxy_splice_fallbacks_total{{op=\"{op}\"}}");
        assert_eq!(d.metric(&series), Some(0.0), "{series}");
    }
    let logged = d
        .logs()
        .iter()
        .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("splice pipe")))
        .count();
    assert_eq!(logged, 1, "logged once, not once per pipe:\n{}", d.log_text());
}
