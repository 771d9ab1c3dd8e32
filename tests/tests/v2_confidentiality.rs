//! Confidentiality asserted on bytes: a recording hop between vsockproxy's ingress and
//! kv-server (where the enclave's vsock port would be) keeps every byte that crosses it. An
//! encrypted lookup (`kv-client get`) of a unique key with a unique value leaves neither in the
//! recording; the same lookup over v1 shows both, so the test can fail.
//!
//! envoy (repository config) -> vsockproxy ingress -> recorder (Unix socket) -> kv-server (Unix).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::{Envoy, Proc, free_port, http_get, run_vsockproxy, wait_until, workspace_bin};

type Recording = Arc<Mutex<Vec<u8>>>;

/// Accepts on `listen`, connects each connection to `upstream`, copies both directions (passing
/// half-close on) and appends every byte either way to the recording.
fn start_recorder(listen: &Path, upstream: PathBuf) -> Recording {
    let listener = UnixListener::bind(listen).expect("bind the recorder socket");
    let recording: Recording = Arc::default();
    let shared = recording.clone();
    std::thread::spawn(move || {
        for downstream in listener.incoming() {
            let Ok(downstream) = downstream else { return };
            let Ok(upstream) = UnixStream::connect(&upstream) else { continue };
            for (from, to) in
                [(downstream.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, downstream)]
            {
                let recording = shared.clone();
                std::thread::spawn(move || copy_recording(from, to, &recording));
            }
        }
    });
    recording
}

fn copy_recording(mut from: UnixStream, mut to: UnixStream, recording: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                recording.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn unique(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    format!("{prefix}-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[test]
fn an_encrypted_lookup_shows_neither_key_nor_value_to_the_parent_and_v1_shows_both() {
    let dir = tempfile::tempdir().unwrap();
    let (key, value) = (unique("conf"), unique("secret"));
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("SNAPSHOT_0000000000000001"),
        format!("key,mutation_type,logical_commit_time,value,value_type\n{key},UPDATE,1,{value},string\n"),
    )
    .unwrap();

    let kv_socket = dir.path().join("kv.sock");
    let mut cmd = Command::new(workspace_bin("kv-server"));
    cmd.arg("--data-dir").arg(&data).arg("--listen").arg(format!("unix://{}", kv_socket.display()));
    let mut kv = Proc::spawn("kv-server", cmd, &dir.path().join("kv-server.log"));
    let up = wait_until(Duration::from_secs(30), || {
        kv.assert_running();
        kv.logs().contains("kv-server listening on").then_some(())
    });
    assert!(up.is_some(), "kv-server never listened:\n{}", kv.logs());

    let recorder_socket = dir.path().join("recorder.sock");
    let recording = start_recorder(&recorder_socket, kv_socket);

    let ingress = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[[ingress]]\nlisten = \"tcp://{ingress}\"\nupstream = \"unix://{}\"\n\n[admin]\nlisten = \"tcp://{admin}\"\n",
        recorder_socket.display()
    );
    let _proxy = run_vsockproxy(dir.path(), &config, admin);
    let descriptor = dir.path().join("query_api_descriptor_set.pb");
    let status = Command::new(workspace_bin("kv-server"))
        .args(["descriptor-set", "--out"])
        .arg(&descriptor)
        .status()
        .expect("run kv-server descriptor-set");
    assert!(status.success());
    let envoy = Envoy::start(dir.path(), ingress.port(), &descriptor);
    let serving = wait_until(Duration::from_secs(30), || {
        let r = http_get(envoy.listen, "/healthcheck").ok()?;
        (r.status == 200 && r.body.contains("\"SERVING\"")).then_some(())
    });
    assert!(serving.is_some(), "never SERVING:\n{}\n{}", kv.logs(), envoy.proc.logs());

    // Encrypted: the answer holds the value, the recording neither the key nor the value.
    recording.lock().unwrap().clear();
    let out = Command::new(workspace_bin("kv-client"))
        .args(["get", "--url", &format!("http://{}", envoy.listen), "--no-attestation-check", "--keys", &key])
        .output()
        .expect("run kv-client");
    assert!(out.status.success(), "kv-client: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = &answer["compressionGroups"][0]["content"][0]["keyGroupOutputs"][0]["keyValues"][&key]["value"];
    assert_eq!(got, &serde_json::Value::String(value.clone()), "{answer}");
    let encrypted = std::mem::take(&mut *recording.lock().unwrap());
    assert!(encrypted.len() > 200, "the lookup crossed the recorder ({} bytes)", encrypted.len());
    assert!(!contains(&encrypted, &key), "the key crossed the parent in plaintext");
    assert!(!contains(&encrypted, &value), "the value crossed the parent in plaintext");

    // v1, the same lookup: both cross the parent in plaintext (the test can see them).
    let r = http_get(envoy.listen, &format!("/v1/getvalues?keys={key}")).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(&value), "{}", r.body);
    let plaintext = std::mem::take(&mut *recording.lock().unwrap());
    assert!(contains(&plaintext, &key), "v1: the key is in the recording");
    assert!(contains(&plaintext, &value), "v1: the value is in the recording");
}
