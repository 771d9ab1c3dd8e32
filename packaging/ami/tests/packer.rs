//! packaging/packer: `packer validate` (Debian's Packer 1.6.6, installed by
//! scripts/setup-test-deps.sh) and the install script's refusal of a bundle that does not match
//! its manifest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn packer_dir() -> PathBuf {
    common::repo_root().join("packaging/packer")
}

fn packer_validate(dir: &Path, bundle: &Path) -> std::process::Output {
    let found = Command::new("packer").arg("version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "packer is not installed: run scripts/setup-test-deps.sh (Debian package `packer`)"
    );
    Command::new("packer")
        .current_dir(dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_CONFIG_DIR", dir)
        .args(["validate", "-var"])
        .arg(format!("bundle_dir={}", bundle.display()))
        .arg(".")
        .output()
        .unwrap()
}

/// A copy of the template without plugins.pkr.hcl (Packer 1.6.6 predates required_plugins).
fn template_copy(dir: &Path, edit: impl Fn(String) -> String) {
    let src = packer_dir();
    let t = std::fs::read_to_string(src.join("kv-ami.pkr.hcl")).unwrap();
    std::fs::write(dir.join("kv-ami.pkr.hcl"), edit(t)).unwrap();
    std::fs::copy(src.join("install-bundle.sh"), dir.join("install-bundle.sh")).unwrap();
}

#[test]
fn packer_validate_accepts_the_template_and_rejects_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let work = dir.path().join("ok");
    std::fs::create_dir(&work).unwrap();
    template_copy(&work, |t| t);
    let out = packer_validate(&work, &bundle);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    template_copy(&bad, |t| t.replace("encrypt_boot", "encrypt_bootz"));
    let out = packer_validate(&bad, &bundle);
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("encrypt_bootz"), "{text}");
}

#[test]
fn install_script_refuses_a_bundle_that_does_not_match_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    std::fs::write(b.join("proxy"), b"binary").unwrap();
    std::fs::write(b.join("envoy.yaml"), b"static_resources: {}\n").unwrap();
    // sha256 of "binary" is right, the envoy.yaml entry's is not.
    let manifest = r#"{"format":1,"files":[
 {"path":"proxy","role":"vsockproxy","size":6,"sha256":"9a3a45d01531a20e89ac6ae10b0b0beb0492acd7216a368aa062d1a5fecaf9cd","mode":"0755","install_to":"/opt/privacysandbox/proxy"},
 {"path":"envoy.yaml","role":"envoy-config","size":21,"sha256":"0000000000000000000000000000000000000000000000000000000000000000","mode":"0644","install_to":"/etc/envoy/envoy.yaml"},
 {"path":"gone.service","role":"systemd-unit","size":1,"sha256":"00","mode":"0644","install_to":"/etc/systemd/system/gone.service"}]}"#;
    std::fs::write(b.join("manifest.json"), manifest).unwrap();
    let out = Command::new("bash").arg(packer_dir().join("install-bundle.sh")).arg(b).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("envoy.yaml: sha256"), "{err}");
    assert!(err.contains("gone.service: listed in manifest.json but missing"), "{err}");
    assert!(!err.contains("proxy:"), "the good file was reported: {err}");
    assert!(err.contains("nothing installed"), "{err}");
}
