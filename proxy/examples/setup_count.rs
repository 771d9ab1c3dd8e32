//! Connection set-up cost without a clock: drives a fixed number of short connections through
//! one vsockproxy started under a counting wrapper (`strace -c -f`, `valgrind --tool=callgrind`),
//! so that instructions and system calls per connection can be read off the wrapper's totals.
//! Nothing here is timed: the figures do not depend on the machine's load.
//!
//! ```sh
//! cargo build --release -p vsockproxy --bins --examples
//! target/release/examples/setup_count KIND COUNT LEVEL [WRAPPER ARGS...]
//! ```
//! `KIND` is `mapping` (a TCP->TCP fixed mapping) or `socks5` (a SOCKS5 CONNECT by name,
//! `localhost`, answered from the DNS cache after the first lookup); `LEVEL` is the `[log]
//! level`. Each connection: connect, (SOCKS5 handshake), one byte each way, close; one at a time,
//! to a local echo server in this process. `proxy/bench/setup-count.sh` runs it twice per figure
//! (200 and 2,200 connections) and divides the difference by 2,000, so start-up and shutdown
//! cancel out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use transport::socks5::{self, Address};

fn vsockproxy_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("vsockproxy");
    assert!(bin.exists(), "{} not built: cargo build --release -p vsockproxy --bins", bin.display());
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The deepest process under `pid` (the proxy itself, under `strace`; `pid` under valgrind).
fn leaf(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    match children.split_whitespace().next().and_then(|c| c.parse().ok()) {
        Some(child) => leaf(child),
        None => pid,
    }
}

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn one(entry: SocketAddr, socks_dest: Option<&Address>) {
    let mut s = TcpStream::connect(entry).await.expect("connect to the proxy");
    if let Some(dest) = socks_dest {
        socks5::client_connect(&mut s, dest).await.expect("SOCKS5 CONNECT");
    }
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("the echo");
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, count, level, wrapper @ ..] = args.as_slice() else {
        eprintln!("usage: setup_count mapping|socks5 COUNT LEVEL [WRAPPER ARGS...]");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("COUNT is a number");
    let echo = echo_server().await;
    let port = free_port();
    let entry = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match kind.as_str() {
        "mapping" => {
            format!("[[mapping]]\nname = \"m\"\nlisten = \"tcp://{entry}\"\nupstream = \"tcp://{echo}\"\n")
        }
        "socks5" => format!("[socks5]\nname = \"s\"\nlisten = \"tcp://{entry}\"\n"),
        other => panic!("unknown kind {other}"),
    };
    let config = format!(
        "{listener}[log]\nlevel = \"{level}\"\n\
         [[policy.allow]]\nhost = \"localhost\"\nports = [\"*\"]\n\
         [[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"*\"]\n\
         [[policy.allow]]\nip = \"::1\"\nports = [\"*\"]\n"
    );
    let dir = std::env::temp_dir().join(format!("setup-count-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vsockproxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(vsockproxy_bin());
            c
        }
        None => Command::new(vsockproxy_bin()),
    };
    let mut child = cmd
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::null())
        .spawn()
        .expect("start the proxy");
    // Up under a slow wrapper (valgrind) within a minute; this probe is one connection more in
    // every run, so it cancels out.
    let until = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(entry).await.is_err() {
        assert!(Instant::now() < until, "vsockproxy does not listen on {entry}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dest = Address::Domain("localhost".into(), echo.port());
    let socks_dest = (kind == "socks5").then_some(&dest);
    for _ in 0..count {
        one(entry, socks_dest).await;
    }
    let pid = leaf(child.id());
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status = child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{count} {kind} connections through vsockproxy; it exited with {status}");
}
