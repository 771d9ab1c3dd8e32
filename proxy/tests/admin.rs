//! The admin endpoint under abuse from a local process: connections that send nothing, keep
//! alive for ever, never read their answer, or come in floods are cut or refused, counted, and
//! never exhaust the daemon's file descriptors.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, http_get, try_http_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SOCKS: &str = "[socks5]\nname = \"s\"\nlisten = \"tcp://127.0.0.1:0\"\n";

/// Reads until the peer closes (end of stream or reset); how long that took, or `None` if the
/// connection was still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at((t + within).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One metrics series, `None` while the admin endpoint refuses (still at its cap).
fn metric(admin: std::net::SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = try_http_get(admin, "/metrics")?;
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `f` is true, for at most `within`.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test]
async fn silent_idle_and_excess_admin_connections_are_cut_and_counted() {
    let d = Daemon::start(&format!(
        "[admin]\nlisten = \"tcp://127.0.0.1:0\"\nmax_connections = 4\nheader_read_timeout_ms = 300\n\
         idle_timeout_ms = 1000\n{SOCKS}"
    ));
    let admin = d.admin();

    // Four connections that send nothing fill the cap...
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so a fifth is closed at once.
    let mut fifth = TcpStream::connect(admin).await.unwrap();
    let took = closed_within(&mut fifth, Duration::from_secs(2)).await.expect("over the cap: closed");
    assert!(took < Duration::from_millis(250), "refused at once, not after the header timeout: {took:?}");
    // The silent ones are cut after the header-read timeout.
    for s in &mut silent {
        let took = closed_within(s, Duration::from_secs(3)).await.expect("silent connection cut");
        assert!(took <= Duration::from_secs(3));
    }

    // Keep-alive: after one answer the next request head must come within the same timeout.
    let mut kept = TcpStream::connect(admin).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    closed_within(&mut kept, Duration::from_secs(3)).await.expect("idle keep-alive connection cut");

    // A client that pipelines requests and never reads the answers stalls the writes; no byte
    // moves, and the idle timeout cuts it.
    let mut greedy = TcpStream::connect(admin).await.unwrap();
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let _ = tokio::time::timeout(Duration::from_secs(5), greedy.write_all(&request)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let took = closed_within(&mut greedy, Duration::from_secs(5)).await;
    assert!(took.is_some(), "a stalled reader is cut by the idle timeout");

    drop(silent);
    let series = |reason: &str| format!("vsockproxy_admin_connections_closed_total{{reason=\"{reason}\"}}");
    assert!(
        eventually(Duration::from_secs(3), || metric(admin, &series("limit")).unwrap_or(0.0) >= 1.0).await,
        "refusal counted:\n{}",
        http_get(admin, "/metrics").1
    );
    assert!(d.metric(&series("header_timeout")).unwrap_or(0.0) >= 5.0);
    assert!(d.metric(&series("idle_timeout")).unwrap_or(0.0) >= 1.0);
    assert_eq!(d.metric("vsockproxy_admin_connections_limit"), Some(4.0));
    // Still answering.
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".into()));
}

/// With the default settings, a local process opening many connections and sending nothing
/// cannot grow the daemon's file descriptor table past the admin cap.
#[tokio::test]
async fn a_flood_of_silent_admin_connections_does_not_exhaust_file_descriptors() {
    let d = Daemon::start(&format!("[admin]\nlisten = \"tcp://127.0.0.1:0\"\n{SOCKS}"));
    let admin = d.admin();
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let before = d.fd_count();
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(admin).await.unwrap());
    }
    // Let the daemon accept (or refuse) all of them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = d.fd_count();
    assert!(
        during <= before + 64 + 8,
        "fds grew from {before} to {during} with 300 silent admin connections (cap 64)"
    );
    drop(flood);
    let refused = "vsockproxy_admin_connections_closed_total{reason=\"limit\"}";
    assert!(eventually(Duration::from_secs(3), || metric(admin, refused).unwrap_or(0.0) >= 200.0).await);
}
