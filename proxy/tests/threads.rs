//! The forwarding threads: every listener accepts on each thread, a connection runs on the
//! least loaded one, and the per-thread counts are on `/metrics`.

mod common;

use std::time::Duration;

use common::{Daemon, echo_roundtrip, echo_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(echo: std::net::SocketAddr, threads: usize) -> String {
    format!(
        "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n\
         [[mapping]]\nname = \"m\"\nlisten = \"tcp://127.0.0.1:0\"\nupstream = \"tcp://{echo}\"\n\
         [[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"*\"]\n\
         [forwarding]\nthreads = {threads}\n"
    )
}

/// Long-lived connections that arrive together (envoy's to the enclave) are spread evenly,
/// whichever thread's accept loop takes them: without the placement one thread takes the whole
/// burst.
#[tokio::test]
async fn a_burst_of_long_lived_connections_is_spread_evenly_over_the_threads() {
    let echo = echo_server().await;
    let d = Daemon::start(&config(echo, 2));
    let entry = d.tcp("m");
    for round in 1..=3u64 {
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(TcpStream::connect(entry));
        }
        let mut held = Vec::new();
        for c in conns {
            held.push(c.await.unwrap());
        }
        // A round trip through every connection: each is being served.
        for (i, s) in held.iter_mut().enumerate() {
            let sent = vec![(round * 10 + i as u64) as u8; 1000];
            s.write_all(&sent).await.unwrap();
            let mut back = vec![0u8; 1000];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, sent);
        }
        let counts: Vec<f64> = (0..2)
            .map(|t| d.metric(&format!("vsockproxy_thread_connections{{thread=\"{t}\"}}")).expect("series"))
            .collect();
        assert_eq!(counts, vec![2.0, 2.0], "round {round}: connections per thread");
        drop(held);
        // Closed connections leave their thread's count.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while d.metric("vsockproxy_thread_connections{thread=\"0\"}") != Some(0.0)
            || d.metric("vsockproxy_thread_connections{thread=\"1\"}") != Some(0.0)
        {
            assert!(std::time::Instant::now() < until, "counts back to 0 after the close");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The data path still works through a fresh connection.
    assert_eq!(echo_roundtrip(entry, 7, 256 * 1024).await, 256 * 1024);
}

/// `threads = 0` is one thread per CPU the daemon may use; the count is in the log and on
/// `/metrics`.
#[tokio::test]
async fn zero_threads_means_one_per_cpu() {
    let echo = echo_server().await;
    let d = Daemon::start(&config(echo, 0));
    let cpus = std::thread::available_parallelism().unwrap().get();
    let line =
        d.wait_log(&[("message", "forwarding threads started")], Duration::from_secs(5)).expect("start line");
    assert_eq!(line["threads"].as_u64(), Some(cpus as u64), "{line}");
    let (_, body) = common::http_get(d.admin(), "/metrics");
    let series = body.lines().filter(|l| l.starts_with("vsockproxy_thread_connections{")).count();
    assert_eq!(series, cpus, "{body}");
}
