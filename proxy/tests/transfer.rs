//! Bulk data through the real daemon: client -TCP-> ingress -Unix-> mapping -TCP-> echo server,
//! so both the ingress (TCP->Unix) and the egress (Unix->TCP) shapes carry every byte.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, echo_roundtrip, echo_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn chain_config(mode: &str, echo: std::net::SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "tcp://127.0.0.1:0"

[[ingress]]
name = "in"
listen = "tcp://127.0.0.1:0"
upstream = "unix://{{dir}}/m.sock"

[[mapping]]
name = "map"
listen = "unix://{{dir}}/m.sock"
upstream = "tcp://{echo}"

[forwarding]
mode = "{mode}"

[[policy.allow]]
ip = "127.0.0.1"
ports = ["{port}"]
"#,
        port = echo.port()
    )
}

async fn fifty_streams_of_8_mib(mode: &str) {
    let echo = echo_server().await;
    let d = Daemon::start(&chain_config(mode, echo));
    let addr = d.tcp("in");
    const LEN: usize = 8 << 20;
    let tasks: Vec<_> = (0..50u64).map(|i| tokio::spawn(echo_roundtrip(addr, i + 1, LEN))).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), LEN, "stream {i} came back short");
    }
    // Every byte crossed both listeners in both directions.
    let want = (50 * LEN) as f64;
    for (listener, kind) in [("in", "ingress"), ("map", "mapping")] {
        for dir in ["client_to_upstream", "upstream_to_client"] {
            let series = format!(
                "vsockproxy_bytes_total{{listener=\"{listener}\",kind=\"{kind}\",direction=\"{dir}\"}}"
            );
            assert_eq!(d.metric(&series), Some(want), "{series}");
        }
    }
    let close = d.wait_log(&[("message", "close")], Duration::from_secs(5)).expect("a close line");
    assert!(close.get("bytes_up").is_some() && close.get("duration_ms").is_some(), "{close}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_8_mib_streams_splice() {
    fifty_streams_of_8_mib("splice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_8_mib_streams_copy() {
    fifty_streams_of_8_mib("copy").await;
}

/// The client shuts its write side first and still reads the whole reply.
#[tokio::test]
async fn half_close_in_both_directions() {
    for mode in ["splice", "copy"] {
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let d = Daemon::start(&format!(
            "[[ingress]]\nname = \"in\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{}\"\n[forwarding]\nmode = \"{mode}\"\n",
            up.local_addr().unwrap()
        ));
        let mut c = TcpStream::connect(d.tcp("in")).await.unwrap();
        let (mut s, _) = up.accept().await.unwrap();
        c.write_all(b"request").await.unwrap();
        c.shutdown().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap(); // EOF arrives: the half-close was passed on
        assert_eq!(req, b"request");
        s.write_all(b"reply after your EOF").await.unwrap();
        s.shutdown().await.unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after your EOF", "{mode}");
    }
}

/// An upstream that sends fast to a client that does not read: the daemon's memory stays
/// bounded (backpressure), and every byte still arrives once the client reads.
#[tokio::test]
async fn slow_reader_keeps_memory_bounded() {
    for mode in ["splice", "copy"] {
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let d = Daemon::start(&format!(
            "[[ingress]]\nname = \"in\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{}\"\n[forwarding]\nmode = \"{mode}\"\n",
            up.local_addr().unwrap()
        ));
        let before = d.rss_kib();
        const LEN: usize = 256 << 20;
        let mut c = TcpStream::connect(d.tcp("in")).await.unwrap();
        let (mut s, _) = up.accept().await.unwrap();
        let sender = tokio::spawn(async move {
            let buf = vec![7u8; 1 << 20];
            for _ in 0..LEN / buf.len() {
                s.write_all(&buf).await.unwrap();
            }
            s.shutdown().await.unwrap();
        });
        // Let the sender fill every buffer on the way while nobody reads.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let stalled = d.rss_kib();
        assert!(!sender.is_finished(), "256 MiB cannot fit in bounded buffers");
        assert!(
            stalled < before + 16 * 1024,
            "{mode}: RSS grew from {before} KiB to {stalled} KiB with a stalled reader"
        );
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 20];
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let n = c.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(buf[..n].iter().all(|b| *b == 7));
            total += n;
            assert!(Instant::now() < until, "transfer too slow");
        }
        assert_eq!(total, LEN, "{mode}");
        sender.await.unwrap();
        let after = d.rss_kib();
        assert!(after < before + 16 * 1024, "{mode}: RSS {before} KiB -> {after} KiB after 256 MiB");
    }
}

/// socat as the upstream (a Unix echo) and as the client.
#[tokio::test]
async fn socat_as_upstream_and_client() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("socat.sock");
    let mut upstream = std::process::Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
        .arg("EXEC:cat")
        .spawn()
        .expect("socat installed (scripts/setup-test-deps.sh)");
    let until = Instant::now() + Duration::from_secs(5);
    while !sock.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = Daemon::start(&format!(
        "[[ingress]]\nname = \"in\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"unix://{}\"\n",
        sock.display()
    ));
    let payload: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let mut client = std::process::Command::new("socat")
        .args(["-t", "5", "-", &format!("TCP:{}", d.tcp("in"))])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let p = payload.clone();
    let w = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, p.as_bytes()).unwrap());
    let out = client.wait_with_output().unwrap();
    w.join().unwrap();
    let _ = upstream.kill();
    let _ = upstream.wait();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).len(), payload.len());
    assert!(out.stdout == payload.as_bytes());
}

/// Ingress to a guest vsock port behind a VMM's Unix socket (Firecracker-style hybrid vsock):
/// the daemon sends `CONNECT <port>\n`, waits for `OK <n>\n`, then forwards.
#[tokio::test]
async fn ingress_to_a_hybrid_vsock_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = dir.path().join("vmm.sock");
    let listener = tokio::net::UnixListener::bind(&vmm).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(s);
                let mut line = String::new();
                tokio::io::AsyncBufReadExt::read_line(&mut s, &mut line).await.unwrap();
                assert_eq!(line, "CONNECT 50051\n");
                let mut s = s.into_inner();
                s.write_all(b"OK 1073741824\n").await.unwrap();
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let d = Daemon::start_in(
        dir,
        &format!(
            "[[ingress]]\nname = \"in\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"vsock-hybrid://{}:50051\"\n",
            vmm.display()
        ),
    );
    assert_eq!(echo_roundtrip(d.tcp("in"), 77, 1 << 20).await, 1 << 20);
}
