//! systemd readiness, SIGTERM drain, SIGHUP reload, and the admin endpoint.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, echo_roundtrip, echo_server, http_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn mapping(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n[timeouts]\ndrain_ms = 10000\n{extra}\n[[mapping]]\nname = \"m\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{upstream}\"\n[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"*\"]\n"
    )
}

async fn ping(s: &mut TcpStream, what: &[u8]) {
    s.write_all(what).await.unwrap();
    let mut back = vec![0u8; what.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, what);
}

#[tokio::test]
async fn sigterm_drains_in_flight_connections() {
    let echo = echo_server().await;
    let mut d = Daemon::start(&mapping(echo, ""));
    assert!(d.notes().iter().any(|n| n == "READY=1"));
    let addr = d.tcp("m");
    let mut live = TcpStream::connect(addr).await.unwrap();
    ping(&mut live, b"before").await;
    d.signal("TERM");
    d.wait_notify("STOPPING=1", Duration::from_secs(5));
    // No new connections once stopping...
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(addr).await {
            Err(_) => break,
            Ok(_) => assert!(Instant::now() < until, "listener still open after SIGTERM"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...but the one in flight still works, and the process waits for it.
    ping(&mut live, b"during the drain").await;
    assert!(d.wait_exit(Duration::from_millis(300)).is_none(), "exited with a connection in flight");
    live.shutdown().await.unwrap();
    let mut rest = Vec::new();
    live.read_to_end(&mut rest).await.unwrap();
    let status = d.wait_exit(Duration::from_secs(5)).expect("exits once drained");
    assert!(status.success(), "{status}");
    assert!(d.wait_log(&[("message", "drained")], Duration::from_secs(1)).is_some());
}

#[tokio::test]
async fn sighup_reloads_destination_and_limits_keeping_live_connections() {
    let old = echo_server().await;
    let new = echo_server().await;
    let mut d = Daemon::start(&mapping(old, ""));
    let addr = d.tcp("m");
    let mut live = TcpStream::connect(addr).await.unwrap();
    ping(&mut live, b"old upstream").await;

    std::fs::write(&d.config, mapping(new, "[limits]\nmax_connections = 50")).unwrap();
    d.signal("HUP");
    assert!(
        d.wait_log(&[("message", "upstream changed")], Duration::from_secs(5)).is_some(),
        "{}",
        d.log_text()
    );
    assert!(d.wait_log(&[("message", "configuration reloaded")], Duration::from_secs(5)).is_some());
    ping(&mut live, b"still alive after reload").await;
    assert_eq!(d.metric("vsockproxy_connections_limit{listener=\"*\",kind=\"global\"}"), Some(50.0));
    // New connections go to the new upstream.
    let s = TcpStream::connect(addr).await.unwrap();
    drop(s);
    assert_eq!(echo_roundtrip(addr, 3, 10_000).await, 10_000);
    let line = d.wait_log(&[("message", "open"), ("dest", &new.to_string())], Duration::from_secs(5));
    assert!(line.is_some(), "{}", d.log_text());

    // A bad new config is rejected and the running one stays.
    std::fs::write(&d.config, "[[mapping]]\nname = \"m\"\nlisten = \"tcp://127.0.0.1:0\"\nupstrem = \"x\"\n")
        .unwrap();
    d.signal("HUP");
    let rejected = d.wait_log(&[("message", "reload rejected")], Duration::from_secs(5)).expect("rejected");
    assert!(rejected["error"].as_str().unwrap().contains("upstrem"), "{rejected}");
    ping(&mut live, b"alive after a bad reload").await;
    assert_eq!(echo_roundtrip(addr, 4, 10_000).await, 10_000);
    assert_eq!(d.metric("vsockproxy_config_reloads_total{result=\"failed\"}"), Some(1.0));
    assert!(d.child.try_wait().unwrap().is_none());
}

#[tokio::test]
async fn admin_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = dir.path().join("enclave.sock");
    let d = Daemon::start_in(
        dir,
        &format!(
            "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n[[ingress]]\nname = \"in\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"unix://{}\"\n",
            enclave.display()
        ),
    );
    let admin = d.admin();
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".into()));
    let (code, body) = http_get(admin, "/readyz");
    assert_eq!(code, 503, "enclave not listening yet: {body}");
    assert!(body.contains("not accepting"), "{body}");
    let l = std::os::unix::net::UnixListener::bind(&enclave).unwrap();
    let (code, body) = http_get(admin, "/readyz");
    assert_eq!(code, 200, "{body}");
    drop(l);
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200);
    for series in [
        "vsockproxy_connections_active{listener=\"in\",kind=\"ingress\"} 0",
        "vsockproxy_connections_accepted_total{listener=\"in\",kind=\"ingress\"} 0",
        "vsockproxy_bytes_total{listener=\"in\",kind=\"ingress\",direction=\"client_to_upstream\"} 0",
        "vsockproxy_connect_seconds_bucket{phase=\"tcp\",le=\"+Inf\"}",
        "vsockproxy_connect_seconds_count{phase=\"dns\"} 0",
        "vsockproxy_dns_cache_total{result=\"hit\"}",
    ] {
        assert!(body.contains(series), "missing {series}:\n{body}");
    }
    assert_eq!(http_get(admin, "/nope").0, 404);
}

// Multi-threaded: the echo server's tasks must run while this test blocks on the notify socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_when_the_unit_asks_for_them() {
    let echo = echo_server().await;
    let env = [("WATCHDOG_USEC", "200000")];
    let mut d = Daemon::start_with_env(tempfile::tempdir().unwrap(), &mapping(echo, ""), &env);
    d.wait_notify("WATCHDOG=1", Duration::from_secs(5));
    d.collect_notes(Duration::from_millis(700));
    let pings = d.notes().iter().filter(|n| n.as_str() == "WATCHDOG=1").count();
    assert!(pings >= 3, "WATCHDOG=1 every 100 ms expected: {:?}", d.notes());
    assert!(d.wait_log(&[("message", "watchdog on")], Duration::from_secs(1)).is_some());

    // The pings follow the loops' progress, and the drain is progress: with a connection in
    // flight after SIGTERM (accept loops gone), WATCHDOG=1 keeps coming until the exit.
    let mut live = TcpStream::connect(d.tcp("m")).await.unwrap();
    ping(&mut live, b"in flight").await;
    d.signal("TERM");
    d.wait_notify("STOPPING=1", Duration::from_secs(5));
    let at_stop = d.notes().len();
    d.collect_notes(Duration::from_millis(700));
    let during_drain = d.notes()[at_stop..].iter().filter(|n| n.as_str() == "WATCHDOG=1").count();
    assert!(during_drain >= 3, "WATCHDOG=1 during the drain: {:?}", &d.notes()[at_stop..]);
    drop(live);
    let status = d.wait_exit(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", d.log_text());
}

/// `[dns]`, `[log]` level and the `[admin]` caps apply on SIGHUP; what cannot change without a
/// restart (`[admin] listen` here) is named in the reload's result and counted.
#[tokio::test]
async fn sighup_applies_dns_log_and_admin_and_names_what_needs_a_restart() {
    use transport::socks5::{self, Address};
    let echo = echo_server().await;
    let other_admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let config = |host: &str, extra: &str| {
        format!(
            "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n{extra}\n[socks5]\nname = \"s\"\nlisten = \"tcp://127.0.0.1:0\"\n\
             [dns.static_hosts]\n\"{host}\" = [\"127.0.0.1\"]\n\
             [[policy.allow]]\nhost = \"a.test\"\nports = [\"*\"]\n[[policy.allow]]\nhost = \"b.test\"\nports = [\"*\"]\n\
             [[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"{}\"]\n",
            echo.port()
        )
    };
    let env = [("RUST_LOG", "")];
    let mut d = Daemon::start_with_env(
        tempfile::tempdir().unwrap(),
        &config("a.test", "[log]\nlevel = \"info\""),
        &env,
    );
    let proxy = d.tcp("s");
    let connect = |name: &'static str| async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            socks5::client_connect(&mut s, &Address::Domain(name.into(), echo.port())),
        )
        .await
        .expect("SOCKS5 reply");
        r.is_ok()
    };
    assert!(connect("a.test").await);
    assert!(!connect("b.test").await, "b.test is not a static host yet");
    let denied = || async {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let dest = Address::Ip(std::net::SocketAddr::from(([127, 0, 0, 2], echo.port())));
        let _ = tokio::time::timeout(Duration::from_secs(5), socks5::client_connect(&mut s, &dest)).await;
    };
    denied().await;
    assert!(d.wait_log(&[("message", "address refused by policy")], Duration::from_millis(300)).is_none());
    let lookups = |d: &Daemon| {
        ["hit", "miss"]
            .iter()
            .map(|r| d.metric(&format!("vsockproxy_dns_cache_total{{result=\"{r}\"}}")).unwrap())
            .sum::<f64>()
    };
    let before = lookups(&d);
    assert!(before >= 2.0, "a.test and b.test were looked up: {before}");

    let extra = "max_connections = 7\n[log]\nlevel = \"info,vsockproxy::server=debug\"\n";
    let new = config("b.test", extra).replacen("tcp://127.0.0.1:0", &format!("tcp://{other_admin}"), 1);
    std::fs::write(&d.config, new).unwrap();
    d.signal("HUP");
    let line =
        d.wait_log(&[("message", "configuration reloaded")], Duration::from_secs(5)).expect("reloaded");
    assert_eq!(line["not_applied"].as_str(), Some("admin"), "{line}");
    let note = d.wait_log(&[("message", "not applied"), ("section", "admin")], Duration::from_secs(1));
    assert!(note.is_some_and(|n| n["note"].as_str().unwrap().contains("restart")), "{}", d.log_text());

    // [dns]: the new static host resolves, the old one is gone.
    assert!(connect("b.test").await, "[dns] applied:\n{}", d.log_text());
    assert!(!connect("a.test").await);
    // The new resolver counts on from the old one's totals.
    assert!(lookups(&d) >= before + 2.0, "{before} -> {}", lookups(&d));
    // [log]: the new level is in force.
    denied().await;
    let debug = d.wait_log(&[("message", "address refused by policy")], Duration::from_secs(3));
    assert!(debug.is_some(), "[log] level applied:\n{}", d.log_text());
    // [admin]: the cap is applied live; the listen address needs a restart, and is counted.
    assert_eq!(d.metric("vsockproxy_admin_connections_limit"), Some(7.0));
    assert_eq!(d.metric("vsockproxy_config_reload_not_applied_total{section=\"admin\"}"), Some(1.0));
    assert_eq!(d.metric("vsockproxy_config_reload_not_applied_total{section=\"dns\"}"), Some(0.0));
    d.wait_notify("READY=1", Duration::from_secs(1));

    // A file that still has the removed [otlp] section is refused; the running config stays.
    let with_otlp = format!(
        "{}[otlp]\nendpoint = \"tcp://127.0.0.1:4317\"\n",
        std::fs::read_to_string(&d.config).unwrap()
    );
    std::fs::write(&d.config, with_otlp).unwrap();
    d.signal("HUP");
    let rejected = d.wait_log(&[("message", "reload rejected")], Duration::from_secs(5)).expect("rejected");
    let error = rejected["error"].as_str().unwrap();
    assert!(error.contains("`otlp`") && error.contains("[otlp] section was removed"), "{rejected}");
    assert!(error.contains(&d.config.display().to_string()), "names the file: {rejected}");
    assert_eq!(d.metric("vsockproxy_config_reloads_total{result=\"failed\"}"), Some(1.0));
    assert!(connect("b.test").await, "the previous [dns] is still in force");
}
