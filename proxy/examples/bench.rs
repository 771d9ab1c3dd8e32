//! Side-by-side benchmark: direct loopback, socat and vsockproxy, in one run.
//!
//! ```sh
//! cargo build --release -p vsockproxy --bins --examples
//! target/release/examples/bench            # ~2 minutes; BENCH_SECS=1 for a quicker pass
//! ```
//! (`proxy/bench/run.sh` does both.) Shapes: TCP->TCP (one hop) and TCP->Unix->TCP (the
//! ingress and egress shapes chained: an ingress listener dials a Unix socket on which a
//! mapping listens). Figures: bulk throughput with 1 and 8 streams, 1 KiB echo latency
//! p50/p99 at concurrency 1 and 64, new connections per second, and the proxy's RSS with
//! 10,000 idle connections. All traffic is on 127.0.0.1 and Unix sockets; every load loop is
//! bounded in time. Prints a Markdown table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IDLE_CONNS: usize = 10_000;

fn secs() -> Duration {
    let s: f64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(s)
}

/// A running peer under test (nothing for "direct").
struct Peer {
    entry: SocketAddr,
    children: Vec<Child>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Peer {
    fn rss_kib(&self) -> Option<u64> {
        let pid = self.children.first()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn wait_port(addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vsockproxy_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/examples/bench -> target/<profile>/vsockproxy
    let bin = exe.parent().and_then(Path::parent).unwrap().join("vsockproxy");
    assert!(bin.exists(), "{} not built: cargo build --release -p vsockproxy --bins", bin.display());
    bin
}

fn socat(args: &[String]) -> Child {
    Command::new("socat").args(args).stderr(Stdio::null()).spawn().expect("socat installed")
}

fn start_vsockproxy(dir: &Path, name: &str, server: SocketAddr, unix_hop: bool, mode: &str) -> Peer {
    let port = free_port();
    let sock = dir.join(format!("{name}.sock"));
    let config = if unix_hop {
        format!(
            "[[ingress]]\nlisten = \"tcp://127.0.0.1:{port}\"\nupstream = \"unix://{s}\"\n\
             [[mapping]]\nlisten = \"unix://{s}\"\nupstream = \"tcp://{server}\"\n",
            s = sock.display()
        )
    } else {
        format!("[[mapping]]\nlisten = \"tcp://127.0.0.1:{port}\"\nupstream = \"tcp://{server}\"\n")
    };
    // No global cap: vsockproxy derives it from RLIMIT_NOFILE (6 descriptors per connection).
    let config = format!(
        "{config}[forwarding]\nmode = \"{mode}\"\n[limits]\nlistener_max_connections = 30000\n[log]\nlevel = \"warn\"\n[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"*\"]\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(vsockproxy_bin())
        .args(["run", "--config"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let entry = SocketAddr::from(([127, 0, 0, 1], port));
    wait_port(entry);
    Peer { entry, children: vec![child] }
}

fn start_socat(dir: &Path, name: &str, server: SocketAddr, unix_hop: bool) -> Peer {
    let port = free_port();
    let entry = SocketAddr::from(([127, 0, 0, 1], port));
    let children = if unix_hop {
        let sock = dir.join(format!("{name}.sock"));
        // socat does not replace a stale socket file left by the previous run of this shape.
        let _ = std::fs::remove_file(&sock);
        let back =
            socat(&[format!("UNIX-LISTEN:{},fork,backlog=1024", sock.display()), format!("TCP:{server}")]);
        let until = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < until, "socat does not listen on {}", sock.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        vec![
            back,
            socat(&[
                format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024"),
                format!("UNIX-CONNECT:{}", sock.display()),
            ]),
        ]
    } else {
        vec![socat(&[
            format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024"),
            format!("TCP:{server}"),
        ])]
    };
    wait_port(entry);
    Peer { entry, children }
}

/// A server that echoes (for latency, connection rate, idle) or discards (for throughput).
async fn server(echo: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; if echo { 4096 } else { 256 * 1024 }];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if echo => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

async fn throughput(entry: SocketAddr, streams: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (stop, bytes) = (stop.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(entry).await.unwrap();
            let buf = vec![0x5au8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&buf).await.is_err() {
                    break;
                }
                bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    // Skip the first 10% (slow start, socat forking).
    let warm = secs() / 10;
    tokio::time::sleep(warm).await;
    let start_bytes = bytes.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(secs()).await;
    let moved = bytes.load(Ordering::Relaxed) - start_bytes;
    let elapsed = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    moved as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

/// 1 KiB request/response round trips; returns (p50, p99) in microseconds.
async fn latency(entry: SocketAddr, concurrency: usize) -> (f64, f64) {
    let until = Instant::now() + secs();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let msg = [0xa5u8; 1024];
            let mut back = [0u8; 1024];
            let mut samples = Vec::new();
            let Ok(mut s) = TcpStream::connect(entry).await else { return (samples, 1) };
            s.set_nodelay(true).unwrap();
            for _ in 0..10 {
                if s.write_all(&msg).await.is_err() || s.read_exact(&mut back).await.is_err() {
                    return (samples, 1);
                }
            }
            while Instant::now() < until {
                let t = Instant::now();
                if s.write_all(&msg).await.is_err() || s.read_exact(&mut back).await.is_err() {
                    return (samples, 1);
                }
                samples.push(t.elapsed().as_nanos() as u64);
            }
            (samples, 0)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (samples, f) = t.await.unwrap();
        all.extend(samples);
        failed += f;
    }
    if failed > 0 {
        eprintln!("latency c={concurrency} via {entry}: {failed} connection(s) failed");
    }
    if all.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    (pct(0.50), pct(0.99))
}

/// New connections per second: connect, 1-byte echo, close; 8 at a time.
async fn conn_rate(entry: SocketAddr) -> f64 {
    let until = Instant::now() + secs();
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let Ok(mut s) = TcpStream::connect(entry).await else { continue };
                #[allow(deprecated)] // no TIME_WAIT pile-up on the client
                let _ = s.set_linger(Some(Duration::ZERO));
                if s.write_all(b"x").await.is_err() {
                    continue;
                }
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// RSS of the proxy with `n` idle connections open through it (each with its upstream leg).
async fn idle_rss(peer: &Peer, n: usize) -> Option<(usize, u64, u64)> {
    let before = peer.rss_kib()?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(peer.entry).await {
            Ok(s) => conns.push(s),
            Err(e) => {
                eprintln!("idle: stopped at {} connections: {e}", conns.len());
                break;
            }
        }
    }
    // Let the proxy accept and dial everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One byte through the last connection proves the proxy is still serving.
    if let Some(s) = conns.last_mut() {
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b)).await.ok()?.ok()?;
    }
    let after = peer.rss_kib()?;
    Some((conns.len(), before, after))
}

#[allow(unsafe_code)]
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid rlimit pointers; raising the hard limit only succeeds with CAP_SYS_RESOURCE.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let raised = libc::rlimit { rlim_cur: want, rlim_max: want.max(lim.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nofile = raise_nofile(65_536);
    if std::env::args().any(|a| a == "--echo-server") {
        println!("{}", server(true).await);
        std::future::pending::<()>().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = server(false).await;
    let echo = server(true).await;
    println!("# vsockproxy benchmark ({} s per figure, RLIMIT_NOFILE {nofile})\n", secs().as_secs_f64());
    println!("| path | 1 stream Gbit/s | 8 streams Gbit/s | c=1 p50/p99 µs | c=64 p50/p99 µs | new conn/s |");
    println!("|---|---|---|---|---|---|");
    type Start = Box<dyn Fn(SocketAddr) -> Option<Peer>>;
    let d = dir.path().to_path_buf();
    let shapes: Vec<(&str, Start)> = vec![
        ("direct loopback", Box::new(|_| None)),
        (
            "socat TCP->TCP",
            Box::new({
                let d = d.clone();
                move |s| Some(start_socat(&d, "socat-tcp", s, false))
            }),
        ),
        (
            "vsockproxy TCP->TCP (splice)",
            Box::new({
                let d = d.clone();
                move |s| Some(start_vsockproxy(&d, "vp-tcp", s, false, "splice"))
            }),
        ),
        (
            "vsockproxy TCP->TCP (copy)",
            Box::new({
                let d = d.clone();
                move |s| Some(start_vsockproxy(&d, "vp-tcp-copy", s, false, "copy"))
            }),
        ),
        (
            "socat TCP->Unix->TCP",
            Box::new({
                let d = d.clone();
                move |s| Some(start_socat(&d, "socat-unix", s, true))
            }),
        ),
        (
            "vsockproxy TCP->Unix->TCP (splice)",
            Box::new({
                let d = d.clone();
                move |s| Some(start_vsockproxy(&d, "vp-unix", s, true, "splice"))
            }),
        ),
    ];
    let mut rows: Vec<(&str, f64, f64)> = Vec::new(); // (label, 1-stream Gbit/s, c=1 p99 µs)
    for (label, start) in &shapes {
        let tp_peer = start(sink);
        let tp_entry = tp_peer.as_ref().map(|p| p.entry).unwrap_or(sink);
        let tp1 = throughput(tp_entry, 1).await;
        let tp8 = throughput(tp_entry, 8).await;
        drop(tp_peer);
        let peer = start(echo);
        let entry = peer.as_ref().map(|p| p.entry).unwrap_or(echo);
        let (p50_1, p99_1) = latency(entry, 1).await;
        let (p50_64, p99_64) = latency(entry, 64).await;
        let rate = conn_rate(entry).await;
        drop(peer);
        println!(
            "| {label} | {tp1:.2} | {tp8:.2} | {p50_1:.0} / {p99_1:.0} | {p50_64:.0} / {p99_64:.0} | {rate:.0} |"
        );
        rows.push((label, tp1, p99_1));
    }
    let get = |name: &str| rows.iter().find(|r| r.0 == name).copied().unwrap();
    let direct = get("direct loopback");
    println!();
    for (vp, so) in [
        ("vsockproxy TCP->TCP (splice)", "socat TCP->TCP"),
        ("vsockproxy TCP->TCP (copy)", "socat TCP->TCP"),
        ("vsockproxy TCP->Unix->TCP (splice)", "socat TCP->Unix->TCP"),
    ] {
        let (v, s) = (get(vp), get(so));
        println!(
            "- {vp}: 1-stream {:.2}x direct, {:.2}x {so}; added p99 at c=1: {:.0} µs",
            v.1 / direct.1,
            v.1 / s.1,
            v.2 - direct.2
        );
    }
    // socat forks a process per connection: 10,000 idle connections would be 10,000
    // processes, so only vsockproxy is measured here. The echo server runs in a child process
    // so that no process needs more than two descriptors per connection; the count is capped
    // by the proxy's connection cap, which it derives from RLIMIT_NOFILE at 6 descriptors per
    // connection (a busy splice connection's two sockets and two pipes).
    let mut echo_child = Command::new(std::env::current_exe().unwrap())
        .arg("--echo-server")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(echo_child.stdout.take().unwrap()), &mut line)
        .unwrap();
    let remote_echo: SocketAddr = line.trim().parse().unwrap();
    let n = IDLE_CONNS.min((nofile as usize).saturating_sub(300) / 6);
    let peer = start_vsockproxy(&d, "vp-idle", remote_echo, false, "splice");
    let measured = idle_rss(&peer, n).await;
    let _ = echo_child.kill();
    let _ = echo_child.wait();
    match measured {
        Some((n, before, after)) => println!(
            "\nvsockproxy RSS with {n} idle connections (TCP->TCP): {:.1} MiB (idle process: {:.1} MiB)",
            after as f64 / 1024.0,
            before as f64 / 1024.0
        ),
        None => println!("\nvsockproxy idle RSS: not measured"),
    }
}
