//! Booting the real enclave image for the tests: the QEMU `nitro-enclave` machine behind
//! `enclave-runner` (the local stand-in for nitro-cli), the images `scripts/build-dist.sh` makes
//! and images of the same binaries with a test configuration, and the AWS API emulator.
//!
//! Nothing here opens a vsock socket: the host reaches the guest through the vsock backend's
//! Unix sockets (`vsock-hybrid://UDS:PORT` for host -> guest, `UDS_PORT` listeners for guest ->
//! host).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{Proc, free_port, repo_root, wait_until, workspace_bin};

/// The target `scripts/build-dist.sh` builds the static binaries for.
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Whether QEMU with the `nitro-enclave` machine is installed (scripts/setup-qemu.sh). When it
/// is not, the test prints one line and returns early, unless `NITRO_KV_REQUIRE_QEMU` is set
/// (scripts/test.sh sets it: CI builds QEMU, so there a missing one is a failure, not a skip).
pub fn qemu_available() -> bool {
    let qemu = repo_root().join(".tools/bin/qemu-system-x86_64");
    let listed = Command::new(&qemu).args(["-M", "help"]).output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some("nitro-enclave"))
    });
    if !listed {
        assert!(
            std::env::var_os("NITRO_KV_REQUIRE_QEMU").is_none(),
            "{} with the nitro-enclave machine is missing: run scripts/setup-qemu.sh",
            qemu.display()
        );
        eprintln!(
            "SKIP: no QEMU with the nitro-enclave machine at {} (scripts/setup-qemu.sh builds it)",
            qemu.display()
        );
    }
    listed
}

/// A binary of the static release build (`scripts/build-dist.sh` builds them; scripts/test.sh
/// runs it before the tests).
pub fn static_bin(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let p = target.join(STATIC_TARGET).join("release").join(name);
    assert!(p.is_file(), "{} is missing: run scripts/build-dist.sh (scripts/test.sh does)", p.display());
    p
}

/// Runs `scripts/build-dist.sh --out OUT ARGS` and returns OUT; panics with its output on failure.
pub fn build_dist(out: &Path, args: &[&str]) -> PathBuf {
    let output = Command::new(repo_root().join("scripts/build-dist.sh"))
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("run scripts/build-dist.sh");
    assert!(
        output.status.success(),
        "scripts/build-dist.sh failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    out.to_path_buf()
}

/// What goes into a test image besides the shipped binaries.
pub struct TestImage<'a> {
    /// kv-server's `/etc/kv/config.toml`.
    pub config: &'a str,
    /// The application's environment (`KEY=VALUE`).
    pub env: &'a [&'a str],
    /// Words after ` -- ` on the kernel command line (enclave-init's options), if any.
    pub init_args: Option<&'a str>,
}

/// An EIF of the static kv-server and enclave-init (as `scripts/build-dist.sh` makes it, the
/// Debian kernel and modules from `.tools/kernel`) with a test configuration.
pub fn build_test_eif(dir: &Path, image: &TestImage) -> PathBuf {
    let kernel = repo_root().join(".tools/kernel");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc/kv")).unwrap();
    std::fs::copy(static_bin("kv-server"), rootfs.join("bin/kv-server")).unwrap();
    std::fs::write(rootfs.join("etc/kv/config.toml"), image.config).unwrap();
    let mut cmdline = "reboot=k panic=30 pci=off console=ttyS0".to_string();
    if let Some(args) = image.init_args {
        cmdline.push_str(" -- ");
        cmdline.push_str(args);
    }
    let eif = dir.join("test.eif");
    let mut cmd = Command::new(workspace_bin("kv-packager"));
    cmd.args(["eif", "build", "--kernel"])
        .arg(kernel.join("bzImage"))
        .arg("--cmdline")
        .arg(&cmdline)
        .arg("--init")
        .arg(static_bin("enclave-init"))
        .arg("--nsm-ko")
        .arg(kernel.join("modules/nsm.ko"));
    for m in ["virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"] {
        cmd.arg("--module").arg(kernel.join(format!("modules/{m}.ko")));
    }
    cmd.arg("--rootfs")
        .arg(&rootfs)
        .args(["--cmd", r#"["/bin/kv-server","--config","/etc/kv/config.toml"]"#]);
    for e in image.env {
        cmd.args(["--env", e]);
    }
    let out = cmd.arg("--out").arg(&eif).output().expect("run kv-packager eif build");
    assert!(out.status.success(), "kv-packager eif build: {}", String::from_utf8_lossy(&out.stderr));
    eif
}

/// `enclave-runner` with its own state directory.
pub struct Runner {
    pub state_dir: PathBuf,
}

impl Runner {
    pub fn new(state_dir: &Path) -> Runner {
        Runner { state_dir: state_dir.to_path_buf() }
    }

    /// `enclave-runner` with this state directory and the project's QEMU and vsock backend.
    pub fn command(&self) -> Command {
        self.with_env(Command::new(workspace_bin("enclave-runner")))
    }

    /// `cmd` with the environment that points enclave-runner at this state directory and the
    /// project's tools (for programs that run enclave-runner themselves).
    pub fn with_env(&self, mut cmd: Command) -> Command {
        cmd.env("ENCLAVE_RUNNER_STATE_DIR", &self.state_dir)
            .env("ENCLAVE_RUNNER_QEMU", repo_root().join(".tools/bin/qemu-system-x86_64"))
            .env("ENCLAVE_RUNNER_VHOST_VSOCK", repo_root().join(".tools/bin/vhost-device-vsock"));
        cmd
    }

    /// `run-enclave` with one CPU and 1 GiB; `uds` is the vsock backend's Unix socket.
    pub fn run_enclave(&self, eif: &Path, name: &str, uds: &Path, boot_timeout_s: u32) -> Output {
        self.command()
            .arg("run-enclave")
            .arg("--eif-path")
            .arg(eif)
            .args(["--cpu-count", "1", "--memory", "1024", "--enclave-cid", "16", "--enclave-name", name])
            .arg("--vsock-uds")
            .arg(uds)
            .args(["--boot-timeout", &boot_timeout_s.to_string()])
            .output()
            .expect("run enclave-runner run-enclave")
    }

    /// Boots `eif`; panics with the runner's output when the boot fails.
    pub fn boot(&self, eif: &Path, name: &str, uds: &Path) -> Enclave<'_> {
        let out = self.run_enclave(eif, name, uds, 180);
        assert!(
            out.status.success(),
            "run-enclave {name} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("run-enclave printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        });
        Enclave { runner: self, name: name.to_string(), info }
    }

    pub fn describe(&self) -> serde_json::Value {
        let out = self.command().arg("describe-enclaves").output().expect("run describe-enclaves");
        assert!(out.status.success(), "describe-enclaves: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("describe-enclaves prints JSON")
    }

    /// Processes (qemu, the vsock backend, the runner's monitor) whose command line names this
    /// runner's state directory.
    pub fn processes(&self) -> Vec<String> {
        let out =
            Command::new("pgrep").arg("-af").arg(self.state_dir.as_os_str()).output().expect("run pgrep");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

/// A booted enclave, terminated when dropped.
pub struct Enclave<'a> {
    runner: &'a Runner,
    pub name: String,
    /// What run-enclave printed.
    pub info: serde_json::Value,
}

impl Enclave<'_> {
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.runner.state_dir.join(&self.name).join("console.log"))
            .unwrap_or_default()
    }

    pub fn runner_log(&self) -> String {
        std::fs::read_to_string(self.runner.state_dir.join(&self.name).join("runner.log")).unwrap_or_default()
    }

    pub fn terminate(&self) -> Output {
        self.runner
            .command()
            .args(["terminate-enclave", "--enclave-name", &self.name])
            .output()
            .expect("run terminate-enclave")
    }
}

impl Drop for Enclave<'_> {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// `moto_server` (the AWS API emulator) from the project's venv, filled with plain HTTP
/// requests (it checks no signatures).
pub struct Moto {
    pub proc: Proc,
    pub port: u16,
}

impl Moto {
    pub fn start(dir: &Path) -> Moto {
        let bin = repo_root().join(".tools/venv/bin/moto_server");
        assert!(bin.exists(), "{} is missing: run scripts/setup-test-deps.sh", bin.display());
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut proc = Proc::spawn("moto_server", cmd, &dir.join("moto.log"));
        let up = wait_until(Duration::from_secs(60), || {
            proc.assert_running();
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "moto_server never listened; log:\n{}", proc.logs());
        Moto { proc, port }
    }

    /// One unsigned S3 request; returns the status line's code and the whole response.
    pub fn s3(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto_server");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=00\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut response = Vec::new();
        s.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response).to_string();
        (text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text)
    }
}
