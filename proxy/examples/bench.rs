//! Side-by-side benchmark: direct loopback, socat, HAProxy (splice on), envoy's `tcp_proxy` and
//! vsockproxy, in one run.
//!
//! ```sh
//! cargo build --release -p vsockproxy --bins --examples
//! target/release/examples/bench            # ~2 minutes; BENCH_SECS=1 for a quicker pass,
//!                                           # BENCH_ONLY=HAProxy,vsockproxy for some rows, BENCH_IDLE=0
//! ```
//! (`proxy/bench/run.sh` does both.) Shapes: TCP->TCP (one hop) and TCP->Unix->TCP (the
//! ingress and egress shapes chained: an ingress listener dials a Unix socket on which a
//! mapping listens; each proxy does both hops in one process). Figures: bulk throughput with 1
//! and 8 streams and the proxy's CPU seconds per GB moved, 1 KiB echo latency p50/p99 at
//! concurrency 1 and 64, new connections per second and CPU seconds per 1,000 of them, and the
//! proxy's RSS with 10,000 idle connections. CPU is the proxy processes' user + system time
//! (children included: socat forks one per connection) from `/proc/PID/stat`. HAProxy is
//! Debian's package (`apt-get install haproxy`; its rows are skipped with a note when it is
//! missing), envoy the project-local one (`scripts/setup-test-deps.sh --envoy-only`). All traffic
//! is on 127.0.0.1 and Unix sockets; every load loop is bounded in time. Prints Markdown tables.

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
    /// User + system CPU seconds of the peer's processes so far, their waited-for children
    /// included.
    fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = self
            .children
            .iter()
            .filter_map(|c| {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok()?;
                // Fields after the command name (which may hold spaces): state is field 3;
                // utime, stime, cutime, cstime are fields 14-17.
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                Some(fields.get(11..15)?.iter().filter_map(|f| f.parse::<u64>().ok()).sum::<u64>())
            })
            .sum();
        ticks as f64 / clock_ticks_per_second()
    }

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

#[allow(unsafe_code)]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory side effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
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

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// HAProxy in TCP mode with splice on, two threads (one per core, as vsockproxy's runtime), both
/// hops in one process for the Unix shape. maxconn 4500: HAProxy raises its descriptor limit to
/// fit maxconn and refuses to start when the hard limit is lower (20,000 on these machines);
/// the idle figure opens at most (limit - 300) / 6 connections anyway.
fn start_haproxy(dir: &Path, name: &str, server: SocketAddr, unix_hop: bool) -> Peer {
    let port = free_port();
    let sock = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let mut config = format!(
        "global\n  maxconn 4500\n  nbthread 2\n  log stderr local0 emerg\n\
         defaults\n  mode tcp\n  option splice-auto\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n  maxconn 4500\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
    );
    if unix_hop {
        config.push_str(&format!(
            "backend be\n  server s1 {s}\n\
             frontend fe_unix\n  bind {s}\n  default_backend be_tcp\n\
             backend be_tcp\n  server s2 {server}\n",
            s = sock.display()
        ));
    } else {
        config.push_str(&format!("backend be\n  server s1 {server}\n"));
    }
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, config).unwrap();
    let child =
        Command::new("haproxy").arg("-db").arg("-f").arg(&path).stderr(Stdio::null()).spawn().unwrap();
    let entry = SocketAddr::from(([127, 0, 0, 1], port));
    wait_port(entry);
    Peer { entry, children: vec![child] }
}

/// envoy with `tcp_proxy` listeners, two worker threads, both hops in one process for the Unix
/// shape (a `pipe` listener and cluster).
fn start_envoy(dir: &Path, name: &str, server: SocketAddr, unix_hop: bool) -> Peer {
    let port = free_port();
    let sock = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let listener = |lname: &str, address: String, cluster: &str| {
        format!(
            "  - name: {lname}\n    address: {address}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {lname}\n          cluster: {cluster}\n"
        )
    };
    let cluster = |cname: &str, address: String| {
        format!(
            "  - name: {cname}\n    type: STATIC\n    connect_timeout: 5s\n    load_assignment:\n      cluster_name: {cname}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address: {address}\n"
        )
    };
    let tcp = |addr: SocketAddr| {
        format!("{{socket_address: {{address: {}, port_value: {}}}}}", addr.ip(), addr.port())
    };
    let pipe = format!("{{pipe: {{path: {}}}}}", sock.display());
    let entry = SocketAddr::from(([127, 0, 0, 1], port));
    let (listeners, clusters) = if unix_hop {
        (
            listener("front", tcp(entry), "to_unix") + &listener("back", pipe.clone(), "to_server"),
            cluster("to_unix", pipe) + &cluster("to_server", tcp(server)),
        )
    } else {
        (listener("front", tcp(entry), "to_server"), cluster("to_server", tcp(server)))
    };
    let config = format!("static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}");
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new("envoy")
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", "2", "--log-level", "critical", "--disable-hot-restart"])
        .arg("--base-id")
        .arg((std::process::id() % 50_000 + port as u32).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("envoy on PATH (scripts/setup-test-deps.sh --envoy-only; source scripts/env.sh)");
    wait_port(entry);
    Peer { entry, children: vec![child] }
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

/// Gbit/s after the warm-up, and every byte moved (warm-up included, for CPU per GB).
async fn throughput(entry: SocketAddr, streams: usize) -> (f64, u64) {
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
    (moved as f64 * 8.0 / elapsed.as_secs_f64() / 1e9, bytes.load(Ordering::Relaxed))
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

/// New connections per second (connect, 1-byte echo, close; 8 at a time), and how many.
async fn conn_rate(entry: SocketAddr) -> (f64, u64) {
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
    let n = done.load(Ordering::Relaxed);
    (n as f64 / t.elapsed().as_secs_f64(), n)
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
    println!(
        "| path | 1 stream Gbit/s | 8 streams Gbit/s | CPU s/GB | c=1 p50/p99 µs | c=64 p50/p99 µs | new conn/s | CPU s/1k conn |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    type Start = Box<dyn Fn(SocketAddr) -> Option<Peer>>;
    let d = dir.path().to_path_buf();
    let haproxy = have("haproxy");
    let envoy = have("envoy");
    let mut shapes: Vec<(&str, Start)> = vec![("direct loopback", Box::new(|_| None))];
    for unix_hop in [false, true] {
        let shape = |tcp: &'static str, unix: &'static str| if unix_hop { unix } else { tcp };
        let d1 = d.clone();
        shapes.push((
            shape("socat TCP->TCP", "socat TCP->Unix->TCP"),
            Box::new(move |s| {
                Some(start_socat(&d1, if unix_hop { "socat-unix" } else { "socat-tcp" }, s, unix_hop))
            }),
        ));
        if haproxy {
            let d1 = d.clone();
            shapes.push((
                shape("HAProxy TCP->TCP", "HAProxy TCP->Unix->TCP"),
                Box::new(move |s| {
                    Some(start_haproxy(&d1, if unix_hop { "ha-unix" } else { "ha-tcp" }, s, unix_hop))
                }),
            ));
        }
        if envoy {
            let d1 = d.clone();
            shapes.push((
                shape("envoy tcp_proxy TCP->TCP", "envoy tcp_proxy TCP->Unix->TCP"),
                Box::new(move |s| {
                    Some(start_envoy(&d1, if unix_hop { "envoy-unix" } else { "envoy-tcp" }, s, unix_hop))
                }),
            ));
        }
        for mode in ["splice", "copy"] {
            let d1 = d.clone();
            let label = match (unix_hop, mode) {
                (false, "splice") => "vsockproxy TCP->TCP (splice)",
                (false, _) => "vsockproxy TCP->TCP (copy)",
                (true, "splice") => "vsockproxy TCP->Unix->TCP (splice)",
                (true, _) => "vsockproxy TCP->Unix->TCP (copy)",
            };
            let name = format!("vp-{}-{mode}", if unix_hop { "unix" } else { "tcp" });
            shapes.push((label, Box::new(move |s| Some(start_vsockproxy(&d1, &name, s, unix_hop, mode)))));
        }
    }
    if !haproxy {
        println!("(HAProxy rows skipped: `haproxy` is not installed; apt-get install haproxy)\n");
    }
    // BENCH_ONLY=a,b keeps the rows whose label contains one of the comma-separated words
    // (direct loopback always runs); BENCH_IDLE=0 skips the idle-connection figures.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let words: Vec<&str> = only.split(',').map(str::trim).filter(|w| !w.is_empty()).collect();
        shapes.retain(|(label, _)| *label == "direct loopback" || words.iter().any(|w| label.contains(w)));
    }
    // (label, 1-stream Gbit/s, c=1 p99 µs, CPU s/GB, conn/s, CPU s/1k conn, c=64 p50 µs)
    let mut rows: Vec<(&str, f64, f64, f64, f64, f64, f64)> = Vec::new();
    for (label, start) in &shapes {
        let tp_peer = start(sink);
        let tp_entry = tp_peer.as_ref().map(|p| p.entry).unwrap_or(sink);
        let cpu0 = tp_peer.as_ref().map_or(0.0, Peer::cpu_seconds);
        let (tp1, b1) = throughput(tp_entry, 1).await;
        let (tp8, b8) = throughput(tp_entry, 8).await;
        let cpu_gb =
            tp_peer.as_ref().map_or(f64::NAN, |p| (p.cpu_seconds() - cpu0) / ((b1 + b8) as f64 / 1e9));
        drop(tp_peer);
        let peer = start(echo);
        let entry = peer.as_ref().map(|p| p.entry).unwrap_or(echo);
        let (p50_1, p99_1) = latency(entry, 1).await;
        let (p50_64, p99_64) = latency(entry, 64).await;
        let cpu0 = peer.as_ref().map_or(0.0, Peer::cpu_seconds);
        let (rate, conns) = conn_rate(entry).await;
        let cpu_kconn =
            peer.as_ref().map_or(f64::NAN, |p| (p.cpu_seconds() - cpu0) / (conns.max(1) as f64 / 1000.0));
        drop(peer);
        println!(
            "| {label} | {tp1:.2} | {tp8:.2} | {cpu_gb:.3} | {p50_1:.0} / {p99_1:.0} | {p50_64:.0} / {p99_64:.0} | {rate:.0} | {cpu_kconn:.3} |"
        );
        rows.push((label, tp1, p99_1, cpu_gb, rate, cpu_kconn, p50_64));
    }
    let get = |name: &str| rows.iter().find(|r| r.0 == name).copied();
    let direct = get("direct loopback").unwrap();
    println!();
    for unix_hop in [false, true] {
        let (shape, vp) = if unix_hop {
            ("TCP->Unix->TCP", "vsockproxy TCP->Unix->TCP (splice)")
        } else {
            ("TCP->TCP", "vsockproxy TCP->TCP (splice)")
        };
        let Some(v) = get(vp) else { continue };
        println!("- {vp}: 1-stream {:.2}x direct, added p99 at c=1 {:.0} µs", v.1 / direct.1, v.2 - direct.2);
        for peer in ["socat", "HAProxy", "envoy tcp_proxy"] {
            let Some(p) = get(&format!("{peer} {shape}")) else { continue };
            println!(
                "  - vs {peer}: 1-stream {:.2}x, CPU/GB {:.2}x, new conn/s {:.2}x, CPU/1k conn {:.2}x, c=64 p50 {:.2}x",
                v.1 / p.1,
                v.3 / p.3,
                v.4 / p.4,
                v.5 / p.5,
                v.6 / p.6
            );
        }
    }
    // socat forks a process per connection: 10,000 idle connections would be 10,000
    // processes, so only vsockproxy is measured here. The echo server runs in a child process
    // so that no process needs more than two descriptors per connection; the count is capped
    // by the proxy's connection cap, which it derives from RLIMIT_NOFILE at 6 descriptors per
    // connection (a busy splice connection's two sockets and two pipes).
    if std::env::var("BENCH_IDLE").is_ok_and(|v| v == "0") {
        return;
    }
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
    println!();
    type StartIdle<'a> = Box<dyn Fn() -> Peer + 'a>;
    let mut idle: Vec<(&str, StartIdle)> =
        vec![("vsockproxy", Box::new(|| start_vsockproxy(&d, "vp-idle", remote_echo, false, "splice")))];
    if haproxy {
        idle.push(("HAProxy", Box::new(|| start_haproxy(&d, "ha-idle", remote_echo, false))));
    }
    if envoy {
        idle.push(("envoy tcp_proxy", Box::new(|| start_envoy(&d, "envoy-idle", remote_echo, false))));
    }
    for (name, start) in idle {
        let peer = start();
        match idle_rss(&peer, n).await {
            Some((n, before, after)) => println!(
                "- {name} RSS with {n} idle connections (TCP->TCP): {:.1} MiB (idle process: {:.1} MiB), {:.2} KiB per connection",
                after as f64 / 1024.0,
                before as f64 / 1024.0,
                after.saturating_sub(before) as f64 / n.max(1) as f64
            ),
            None => println!("- {name} idle RSS: not measured"),
        }
        drop(peer);
        // Let the closed connections drain before the next proxy opens its own.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let _ = echo_child.kill();
    let _ = echo_child.wait();
}
