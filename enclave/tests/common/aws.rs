//! Real AWS-side processes for the integration tests: `moto_server` (the AWS API emulator) and
//! the real `vsockproxy` as the SOCKS5 egress proxy, each a child process killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(30);
/// moto_server takes over 10 s to start on a busy 2-core machine.
pub const STARTUP: Duration = Duration::from_secs(90);
const KV_SERVER: &str = env!("CARGO_BIN_EXE_kv-server");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("enclave/ has a parent").to_path_buf()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed on drop, its stderr collected.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &'static str, mut command: Command) -> Proc {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command:?}): {e}"));
        let logs = super::capture_stderr(&mut child);
        Proc { name, child, logs }
    }

    pub fn logs(&self) -> String {
        format!("--- {} stderr ---\n{}", self.name, self.logs.lock().unwrap().join("\n"))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `port` on loopback accepts connections (or the process dies).
    pub fn wait_for_port(&mut self, port: u16) {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(self.is_running(), "{} exited: {}", self.name, self.logs());
            assert!(started.elapsed() < STARTUP, "{} did not listen on {port}: {}", self.name, self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` from the project's venv (scripts/setup-test-deps.sh installs it).
pub struct Moto {
    pub proc: Proc,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let bin = repo_root().join(".tools/venv/bin/moto_server");
        assert!(bin.exists(), "{} is missing: run scripts/setup-test-deps.sh", bin.display());
        let port = free_port();
        let mut command = Command::new(bin);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut proc = Proc::spawn("moto_server", command);
        proc.wait_for_port(port);
        Moto { proc, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One unsigned HTTP/1.1 request; returns the status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        service: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto_server");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, \
             SignedHeaders=host, Signature=00\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response).to_string();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let (status, text) = self.request("PUT", &format!("/{bucket}"), "s3", &[], b"");
        assert_eq!(status, 200, "create bucket {bucket}: {text}");
    }

    pub fn put_object(&self, bucket: &str, key: &str, body: &str) {
        let (status, text) = self.request("PUT", &format!("/{bucket}/{key}"), "s3", &[], body.as_bytes());
        assert_eq!(status, 200, "put s3://{bucket}/{key}: {text}");
    }

    pub fn put_parameter(&self, name: &str, value: &str) {
        let body = format!(r#"{{"Name":"{name}","Value":"{value}","Type":"String","Overwrite":true}}"#);
        let (status, text) = self.request(
            "POST",
            "/",
            "ssm",
            &[("X-Amz-Target", "AmazonSSM.PutParameter"), ("Content-Type", "application/x-amz-json-1.1")],
            body.as_bytes(),
        );
        assert_eq!(status, 200, "put SSM parameter {name}: {text}");
    }
}

/// The real vsockproxy next to the kv-server binary. scripts/test.sh builds every workspace binary
/// before the tests; it is not built from here, because `cargo test` holds the target directory's
/// lock while tests run (a nested build would wait forever).
pub fn vsockproxy_bin() -> PathBuf {
    let bin = Path::new(KV_SERVER).with_file_name("vsockproxy");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p vsockproxy` (scripts/test.sh builds every binary)",
        bin.display()
    );
    bin
}

/// vsockproxy with only a SOCKS5 listener on loopback TCP and the given `[[policy.allow]]` rules.
pub struct Proxy {
    pub proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub fn start(allow_rules: &str) -> Proxy {
        Proxy::start_on(free_port(), allow_rules)
    }

    /// On a port chosen before (a kv-server may already be dialing it).
    pub fn start_on(port: u16, allow_rules: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vsockproxy.toml");
        std::fs::write(&config, format!("[socks5]\nlisten = \"tcp://127.0.0.1:{port}\"\n\n{allow_rules}"))
            .unwrap();
        let mut command = Command::new(vsockproxy_bin());
        command.arg("run").arg("--config").arg(&config).env("RUST_LOG", "info");
        let mut proc = Proc::spawn("vsockproxy", command);
        proc.wait_for_port(port);
        Proxy { proc, port, _dir: dir }
    }

    /// Allows only 127.0.0.1:`port` (the emulator).
    pub fn allowing_only(port: u16) -> Proxy {
        Proxy::start(&allow_only_rule(port))
    }

    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

pub fn allow_only_rule(port: u16) -> String {
    format!("[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"{port}\"]\n")
}
