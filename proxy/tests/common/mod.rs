//! Helpers for tests that start the real `vsockproxy` binary on loopback and Unix sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_vsockproxy");

/// A running daemon with its JSON log lines and its systemd notify socket.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    lines: Arc<Mutex<Vec<Value>>>,
    notify: UnixDatagram,
    notes: Vec<String>,
}

impl Daemon {
    /// Writes `config` (with `{dir}` replaced by a fresh temp dir) and starts the daemon; returns
    /// once it sent READY=1.
    pub fn start(config: &str) -> Daemon {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Daemon {
        Self::start_with_env(dir, config, &[])
    }

    pub fn start_with_env(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_wrapped(dir, config, env, &[])
    }

    /// Like [`Daemon::start_with_env`], with the binary started through `wrapper` (a command
    /// that execs its arguments, e.g. `sh -c 'ulimit -n 512 && exec "$0" "$@"'`). An env value
    /// of "" removes that variable.
    pub fn start_wrapped(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Daemon {
        let path = dir.path().join("vsockproxy.toml");
        std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(["run", "--log-format", "json", "--config"])
            .arg(&path)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied().filter(|(_, v)| !v.is_empty()));
        for (k, _) in env.iter().filter(|(_, v)| v.is_empty()) {
            cmd.env_remove(k);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn vsockproxy");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(v);
            }
        });
        let mut d = Daemon { child, dir, config: path, lines, notify, notes: Vec::new() };
        d.wait_notify("READY=1", Duration::from_secs(20));
        d
    }

    /// Waits for a notify assignment containing `what`; panics with the log on timeout.
    pub fn wait_notify(&mut self, what: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.notes.iter().any(|n| n.contains(what)) {
                return;
            }
            let mut buf = [0u8; 512];
            if let Ok(n) = self.notify.recv(&mut buf) {
                self.notes.extend(assignments(&buf[..n]));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("vsockproxy exited ({status}) before {what}; log:\n{}", self.log_text());
            }
        }
        panic!("no {what} from vsockproxy within {timeout:?}; log:\n{}", self.log_text());
    }

    /// Collects notify assignments for `dur`.
    pub fn collect_notes(&mut self, dur: Duration) {
        let until = Instant::now() + dur;
        while Instant::now() < until {
            let mut buf = [0u8; 512];
            if let Ok(n) = self.notify.recv(&mut buf) {
                self.notes.extend(assignments(&buf[..n]));
            }
        }
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn log_text(&self) -> String {
        self.lines.lock().unwrap().iter().map(|v| format!("{v}\n")).collect()
    }

    pub fn logs(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// The first log line whose fields all match, waiting up to `timeout`.
    pub fn wait_log(&self, fields: &[(&str, &str)], timeout: Duration) -> Option<Value> {
        let until = Instant::now() + timeout;
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|v| {
                    fields
                        .iter()
                        .all(|(k, want)| v.get(*k).and_then(|x| x.as_str()).is_some_and(|s| s.contains(want)))
                })
                .cloned();
            if found.is_some() {
                return found;
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The bound endpoint of the listener named `name` (from its "listening" log line).
    pub fn endpoint(&self, name: &str) -> String {
        let v = self
            .wait_log(&[("message", "listening"), ("listener", name)], Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no listener {name}; log:\n{}", self.log_text()));
        v["listen"].as_str().unwrap().to_string()
    }

    pub fn tcp(&self, name: &str) -> SocketAddr {
        let ep = self.endpoint(name);
        ep.strip_prefix("tcp://").unwrap().parse().unwrap()
    }

    pub fn admin(&self) -> SocketAddr {
        let v = self
            .wait_log(&[("message", "admin listening")], Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no admin; log:\n{}", self.log_text()));
        v["listen"].as_str().unwrap().strip_prefix("tcp://").unwrap().parse().unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory of the daemon in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Open file descriptors of the daemon.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).unwrap().count()
    }

    /// The value of one metrics series (exact line prefix up to the value).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(self.admin(), "/metrics");
        body.lines().find_map(|l| {
            l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok())
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Like [`http_get`], `None` when the connection is refused or reset (e.g. over the admin cap).
pub fn try_http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok())?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// `GET path` over HTTP/1.1; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Runs `config` through `vsockproxy check`; returns (success, stdout + stderr).
pub fn check(path: &Path) -> (bool, String) {
    let out = Command::new(BIN).arg("check").arg(path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A TCP echo server on 127.0.0.1:0 that half-closes after echoing everything.
pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A deterministic byte stream per seed (xorshift64*), so the reader can verify every byte.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Sends `len` bytes of pattern `seed` on a fresh connection to `addr` (half-closing after),
/// while reading back and verifying the echo; returns the number of verified bytes.
pub async fn echo_roundtrip(addr: SocketAddr, seed: u64, len: usize) -> usize {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            p.fill(&mut buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
    });
    let mut p = Pattern::new(seed);
    let mut got = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        // Fill whole 64 KiB blocks so the pattern stays aligned with the writer's blocks.
        let mut filled = 0;
        while filled < got.len() {
            let n = r.read(&mut got[filled..]).await.unwrap();
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        p.fill(&mut want[..filled]);
        assert!(got[..filled] == want[..filled], "stream {seed}: corrupt data after {total} bytes");
        total += filled;
        if filled < got.len() {
            break;
        }
    }
    writer.await.unwrap();
    total
}

/// A one-shot HTTP server on 127.0.0.1:0 answering every request with `body`.
pub async fn http_server(body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// The assignments (`READY=1`, ...) of one notify datagram: newline-separated, as systemd reads
/// them.
fn assignments(datagram: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(datagram).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}
