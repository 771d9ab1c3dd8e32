//! Shared by the integration tests: a real moto_server on loopback, one per test.
// Each test binary uses part of this module.
#![allow(dead_code)]

pub mod booted;
pub mod builder;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One bundle file: (path in the bundle, content, install_to, mode, role).
pub type BundleFile<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);

/// Writes `files` under the bundle directory `b` and returns their manifest `files` entries
/// (JSON objects joined by commas) with the real size and SHA-256 of each.
pub fn write_bundle_files(b: &std::path::Path, files: &[BundleFile]) -> String {
    use sha2::{Digest, Sha256};
    let mut entries = Vec::new();
    for (path, body, dest, mode, role) in files {
        let file = b.join(path);
        std::fs::create_dir_all(file.parent().expect("a file in the bundle")).unwrap();
        std::fs::write(&file, body).unwrap();
        entries.push(format!(
            "{{\"path\":\"{path}\",\"role\":\"{role}\",\"size\":{},\"sha256\":\"{}\",\"mode\":\"{mode}\",\"install_to\":\"{dest}\"}}",
            body.len(),
            hex::encode(Sha256::digest(body))
        ));
    }
    entries.join(",")
}

pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("scripts/setup-test-deps.sh").exists())
        .map(PathBuf::from)
        .unwrap_or(here)
}

pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub fn start() -> Moto {
        let bin = repo_root().join(".tools/venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup-test-deps.sh (it installs moto[server] into .tools/venv)",
            bin.display()
        );
        // moto_server cannot report a port it chose, so take a free one from the kernel and hand
        // it over; retry if another process grabs it in between.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn moto_server");
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Moto { child, url: format!("http://127.0.0.1:{port}") };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server did not start");
    }

    pub fn target(&self) -> kv_ami::aws::Target {
        kv_ami::aws::Target {
            endpoint_url: Some(self.url.clone()),
            static_credentials: Some(("testing".into(), "testing".into())),
            ..Default::default()
        }
    }
}

/// A sparse raw image: `len` bytes, non-zero data at the given offsets (a few bytes each).
pub fn sparse_image(dir: &std::path::Path, len: usize, at: &[usize]) -> PathBuf {
    let mut img = vec![0u8; len];
    for (n, &o) in at.iter().enumerate() {
        for (i, b) in img[o..(o + 7).min(len)].iter_mut().enumerate() {
            *b = (n * 31 + i * 7 + 1) as u8;
        }
    }
    let p = dir.join("disk.raw");
    std::fs::write(&p, img).unwrap();
    p
}

pub fn bundle_manifest(dir: &std::path::Path, pcr0: &str) -> PathBuf {
    let p = dir.join("manifest.json");
    std::fs::write(&p, manifest_json(pcr0, "")).unwrap();
    p
}

/// A bundle manifest (`packaging::manifest`) with this PCR0 and these `files` entries (JSON
/// objects joined by commas, as [`write_bundle_files`] returns them).
pub fn manifest_json(pcr0: &str, files: &str) -> String {
    format!(
        "{{\"format\":1,\"build_time\":\"2026-01-01T00:00:00Z\",\"git_commit\":\"unknown\",\"versions\":{{}},\
         \"enclave_image\":\"server_enclave_image.eif\",\"pcrs\":{{\"HashAlgorithm\":\"Sha384 {{ ... }}\",\"PCR0\":\"{pcr0}\",\
         \"PCR1\":\"01\",\"PCR2\":\"02\"}},\"files\":[{files}]}}"
    )
}

/// Collects a run's log lines (runs log from several tasks).
#[derive(Default)]
pub struct Log(pub std::sync::Mutex<Vec<String>>);

impl Log {
    pub fn push(&self, l: &str) {
        self.0.lock().unwrap().push(l.to_string());
    }
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Run options against moto with a log collector.
pub fn opts<'a>(target: &'a kv_ami::aws::Target, log: &'a (dyn Fn(&str) + Sync)) -> kv_ami::RunOptions<'a> {
    kv_ami::RunOptions { target, state_path: None, progress_bar: false, log }
}

/// A future that never ends (no interrupt).
pub fn never() -> std::future::Pending<()> {
    std::future::pending()
}
