//! The kv-ami binary: dry-run makes no call, bad input is refused before any call, and a real
//! import against moto_server writes a Packer-shaped manifest.

mod common;

use common::{Moto, bundle_manifest, sparse_image};
use std::net::TcpListener;
use std::process::Command;

const SPEC: &str = r#"
name = "kv-{content_key}"
region = "us-east-1"
copy_to = ["eu-west-1"]
share_with = ["111122223333"]
ssm_parameter = "/kv/ami"
encrypt_copies = true
[kms_key_ids]
"eu-west-1" = "alias/kv-ami"
[upload]
wait_interval_secs = 0
"#;

fn kv_ami() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kv-ami"));
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("KV_AMI_ENDPOINT_URL");
    c
}

/// A listener that counts connections: any AWS call would have to connect to it.
fn trap() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

#[test]
fn dry_run_prints_the_calls_and_makes_none() {
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 2 << 20, &[0, 1 << 20]);
    let manifest = bundle_manifest(dir.path(), "aa");
    let spec = dir.path().join("amispec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let (listener, url) = trap();
    let out = kv_ami()
        .args(["import", "--dry-run", "--endpoint-url", &url, "--spec"])
        .arg(&spec)
        .arg("--image")
        .arg(&image)
        .arg("--bundle-manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("us-east-1 ebs:PutSnapshotBlock x2 "), "{stdout}");
    assert!(stdout.contains("eu-west-1 ec2:CopyImage source=us-east-1"), "{stdout}");
    assert!(stdout.contains("encrypted=true kms=alias/kv-ami"), "{stdout}");
    assert!(stdout.contains("eu-west-1 ssm:PutParameter /kv/ami"), "{stdout}");
    assert!(listener.accept().is_err(), "dry run connected to the endpoint");
}

#[test]
fn bad_input_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 4096, &[0]);
    let manifest = bundle_manifest(dir.path(), "aa");
    let (listener, url) = trap();
    let spec = dir.path().join("amispec.toml");
    let run = |spec_text: &str, image: &std::path::Path, extra: &[&str]| {
        std::fs::write(&spec, spec_text).unwrap();
        let out = kv_ami()
            .args(["import", "--endpoint-url", &url, "--spec"])
            .arg(&spec)
            .arg("--image")
            .arg(image)
            .arg("--bundle-manifest")
            .arg(&manifest)
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&format!("{SPEC}\nregionn = \"x\""), &image, &[]);
    assert!(e.contains("amispec.toml") && e.contains("regionn"), "{e}");
    let e = run(SPEC, &image, &["--workers", "0"]);
    assert!(e.contains("upload.workers"), "{e}");
    let e = run(SPEC, &image, &["--region", "nowhere"]);
    assert!(e.contains("region"), "{e}");
    let vmdk = dir.path().join("disk.vmdk");
    let mut data = b"KDMV".to_vec();
    data.resize(4096, 0);
    std::fs::write(&vmdk, data).unwrap();
    let e = run(SPEC, &vmdk, &[]);
    assert!(e.contains("disk.vmdk") && e.contains("VMDK"), "{e}");
    assert!(listener.accept().is_err(), "a refused run connected to the endpoint");
}

#[test]
fn import_against_moto_writes_a_packer_shaped_manifest() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 8192, &[100, 4000]);
    let manifest = bundle_manifest(dir.path(), "cc");
    let spec = dir.path().join("amispec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let out_path = dir.path().join("ami-manifest.json");
    let out = kv_ami()
        .args(["import", "--endpoint-url", &moto.url, "--workers", "2", "--spec"])
        .arg(&spec)
        .arg("--image")
        .arg(&image)
        .arg("--bundle-manifest")
        .arg(&manifest)
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    let artifact = m["builds"][0]["artifact_id"].as_str().unwrap();
    let parts: Vec<&str> = artifact.split(',').collect();
    assert_eq!(parts.len(), 2, "{artifact}");
    assert!(parts[0].starts_with("us-east-1:ami-") && parts[1].starts_with("eu-west-1:ami-"), "{artifact}");
    assert_eq!(m["last_run_uuid"], m["builds"][0]["packer_run_uuid"]);
    assert!(m["builds"][0]["timings_seconds"]["total"].as_f64().unwrap() > 0.0);
}
