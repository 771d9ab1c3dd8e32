//! Running the real `enclave-runner` binary against a state directory of the test's own, with
//! every wait bounded.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// What one command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }

    pub fn assert_success(&self, what: &str) -> &Output {
        assert!(
            self.status.success(),
            "{what}: {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// `enclave-runner` with `ENCLAVE_RUNNER_STATE_DIR` and tool paths set for one test.
pub struct Runner {
    pub state: PathBuf,
    env: Vec<(OsString, OsString)>,
    scratch: PathBuf,
}

impl Runner {
    /// State and captured output live under `dir`.
    pub fn new(dir: &Path) -> Runner {
        let scratch = dir.join("runner-output");
        fs::create_dir_all(&scratch).unwrap();
        Runner { state: dir.join("state"), env: Vec::new(), scratch }
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Runner {
        self.env.push((key.as_ref().into(), value.as_ref().into()));
        self
    }

    /// Runs `enclave-runner ARGS`, killing it (and failing the test) after `timeout`.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Output {
        let out_path = self.scratch.join("stdout");
        let err_path = self.scratch.join("stderr");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_enclave-runner"));
        cmd.args(args)
            .env("ENCLAVE_RUNNER_STATE_DIR", &self.state)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap());
        let mut child = cmd.spawn().expect("start enclave-runner");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{cmd:?} still running after {timeout:?}\nstderr:\n{}",
                    fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Output {
            status,
            stdout: fs::read_to_string(&out_path).unwrap(),
            stderr: fs::read_to_string(&err_path).unwrap(),
        }
    }

    pub fn describe(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["describe-enclaves"], Duration::from_secs(30));
        out.assert_success("describe-enclaves");
        out.json().as_array().expect("describe-enclaves prints an array").clone()
    }
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}
