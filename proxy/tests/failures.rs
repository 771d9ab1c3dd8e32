//! Failures end one connection, are counted with a reason, and never stop the daemon.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, echo_roundtrip, echo_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn closed_port() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn upstream_refuses() {
    let dead = closed_port().await;
    let d = Daemon::start(&format!(
        "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n[[mapping]]\nname = \"m\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{dead}\"\n[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"*\"]\n"
    ));
    let t = Instant::now();
    let mut c = TcpStream::connect(d.tcp("m")).await.unwrap();
    let mut buf = [0u8; 16];
    let n = c.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "the client is closed without data");
    assert!(t.elapsed() < Duration::from_secs(3));
    let series =
        "vsockproxy_connections_refused_total{listener=\"m\",kind=\"mapping\",reason=\"connect_refused\"}";
    assert_eq!(d.metric(series), Some(1.0));
    let line = d.wait_log(&[("message", "close"), ("reason", "connect_refused")], Duration::from_secs(2));
    assert!(line.is_some(), "{}", d.log_text());
    assert!(
        d.wait_log(&[("error", &dead.to_string())], Duration::from_secs(1)).is_some(),
        "names the upstream"
    );
}

/// The upstream resets mid-stream: the client sees an error (a reset), not a clean end that
/// would pass for a complete response.
#[tokio::test]
async fn upstream_reset_mid_stream_is_passed_on() {
    for mode in ["splice", "copy"] {
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let d = Daemon::start(&format!(
            "[[ingress]]\nname = \"in\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{}\"\n[forwarding]\nmode = \"{mode}\"\n",
            up.local_addr().unwrap()
        ));
        let mut c = TcpStream::connect(d.tcp("in")).await.unwrap();
        let (s, _) = up.accept().await.unwrap();
        let mut s = s;
        s.write_all(&[1u8; 100_000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        #[allow(deprecated)] // set_zero_linger is newer than some toolchains' tokio
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s); // RST
        let mut got = 0;
        let mut buf = vec![0u8; 65536];
        let outcome = loop {
            match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("not hung") {
                Ok(0) => break Ok(()),
                Ok(n) => got += n,
                Err(e) => break Err(e),
            }
        };
        let err = outcome.expect_err("a reset must not look like a clean end");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{mode}: {err}");
        assert!(got <= 100_000);
        // The daemon is still serving.
        let _c2 = TcpStream::connect(d.tcp("in")).await.unwrap();
        let _s2 = up.accept().await.unwrap();
    }
}

#[tokio::test]
async fn limits_refuse_at_once_and_count() {
    let echo = echo_server().await;
    let d = Daemon::start(&format!(
        "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n[limits]\nmax_connections = 100\n[[mapping]]\nname = \"m\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{echo}\"\nmax_connections = 2\n[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"*\"]\n"
    ));
    let addr = d.tcp("m");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap(); // served
        held.push(c);
    }
    let t = Instant::now();
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"x").await;
    let mut b = [0u8; 1];
    let n = third.read(&mut b).await.unwrap_or(0);
    assert_eq!(n, 0, "over the limit: closed, not served");
    assert!(t.elapsed() < Duration::from_secs(2), "refused at once, not queued");
    let series =
        "vsockproxy_connections_refused_total{listener=\"m\",kind=\"mapping\",reason=\"limit_listener\"}";
    assert_eq!(d.metric(series), Some(1.0));
    assert_eq!(d.metric("vsockproxy_connections_active{listener=\"m\",kind=\"mapping\"}"), Some(2.0));
    drop(held);
    // Places are given back when connections end.
    let until = Instant::now() + Duration::from_secs(5);
    while d.metric("vsockproxy_connections_active{listener=\"m\",kind=\"mapping\"}") != Some(0.0) {
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(echo_roundtrip(addr, 9, 1000).await, 1000);
}

#[tokio::test]
async fn idle_connections_time_out() {
    let echo = echo_server().await;
    let d = Daemon::start(&format!(
        "[timeouts]\nidle_ms = 300\n[[mapping]]\nname = \"m\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{echo}\"\n[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"*\"]\n"
    ));
    let mut c = TcpStream::connect(d.tcp("m")).await.unwrap();
    let t = Instant::now();
    let mut b = [0u8; 1];
    let n =
        tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await.expect("closed by idle timeout");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(d.wait_log(&[("message", "idle")], Duration::from_secs(2)).is_some());
}

/// A mapping's name that resolves to a special address (loopback here) is refused at connect
/// time unless a rule names that address, like a SOCKS5 destination.
#[tokio::test]
async fn mapping_name_resolving_to_loopback_is_refused() {
    let echo = echo_server().await;
    let d = Daemon::start(&format!(
        "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n[[mapping]]\nname = \"m\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://kms.test:{port}\"\n[dns.static_hosts]\n\"kms.test\" = [\"127.0.0.1\"]\n[[policy.allow]]\nhost = \"kms.test\"\nports = [\"*\"]\n",
        port = echo.port()
    ));
    let mut c = TcpStream::connect(d.tcp("m")).await.unwrap();
    let _ = c.write_all(b"x").await;
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).await.unwrap_or(0), 0, "not forwarded");
    let series = "vsockproxy_connections_refused_total{listener=\"m\",kind=\"mapping\",reason=\"policy\"}";
    assert_eq!(d.metric(series), Some(1.0));
    assert_eq!(d.metric("vsockproxy_policy_denials_total{kind=\"special_address\"}"), Some(1.0));
}
