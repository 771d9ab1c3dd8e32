//! packaging/packer: `packer validate` (Debian's Packer 1.6.6, installed by
//! scripts/setup-test-deps.sh) and the install script's refusal of a bundle that does not match
//! its manifest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn packer_dir() -> PathBuf {
    common::repo_root().join("packaging/packer")
}

/// A content key of the right shape (64 hex digits).
const KEY: &str = "0f3c5a1b2d4e6f708192a3b4c5d6e7f80112233445566778899aabbccddeeff0";

fn packer_validate(dir: &Path, bundle: &Path) -> std::process::Output {
    packer_validate_with(dir, bundle, Some(KEY))
}

fn packer_validate_with(dir: &Path, bundle: &Path, content_key: Option<&str>) -> std::process::Output {
    let found = Command::new("packer").arg("version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "packer is not installed: run scripts/setup-test-deps.sh (Debian package `packer`)"
    );
    let mut c = Command::new("packer");
    c.current_dir(dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_CONFIG_DIR", dir)
        .args(["validate", "-var"])
        .arg(format!("bundle_dir={}", bundle.display()));
    if let Some(k) = content_key {
        c.arg("-var").arg(format!("content_key={k}"));
    }
    c.arg(".").output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
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
fn packer_validate_requires_a_content_key_of_64_hex_digits() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    template_copy(dir.path(), |t| t);
    let out = packer_validate_with(dir.path(), &bundle, None);
    assert!(!out.status.success() && text(&out).contains("content_key"), "{}", text(&out));
    for bad in ["unset", &KEY[..63], &format!("{}g", &KEY[..63]), &format!("{KEY}0")] {
        let out = packer_validate_with(dir.path(), &bundle, Some(bad));
        assert!(!out.status.success(), "{bad}: {}", text(&out));
        assert!(text(&out).contains("SHA-256"), "{bad}: {}", text(&out));
    }
    let out = packer_validate_with(dir.path(), &bundle, Some(KEY));
    assert!(out.status.success(), "{}", text(&out));
}

/// What `packer validate` cannot show: the install step gets the content key, and the bundle is
/// uploaded to a directory only the SSH user can read, made fresh (mkdir fails if it exists),
/// and removed before the image is taken.
#[test]
fn the_template_passes_the_content_key_and_stages_the_bundle_privately() {
    let t = std::fs::read_to_string(packer_dir().join("kv-ami.pkr.hcl")).unwrap();
    assert!(t.contains("\"KV_CONTENT_KEY=${var.content_key}\""), "{t}");
    assert!(!t.contains("/tmp"), "nothing staged in /tmp: {t}");
    let stage = "/home/ec2-user/kv-ami";
    assert!(t.contains(&format!("mkdir -m 0700 {stage} {stage}/bundle")), "{t}");
    assert!(t.contains(&format!("destination = \"{stage}/bundle/\"")), "{t}");
    assert!(t.contains(&format!("remote_folder    = \"{stage}\"")), "{t}");
    assert!(t.contains(&format!("{{{{ .Path }}}} {stage}/bundle\"")), "{t}");
    assert!(t.contains(&format!("rm -rf {stage}")), "{t}");
    // The order: make the directory, upload, install, remove.
    let at = |s: &str| t.find(s).unwrap_or_else(|| panic!("{s} missing"));
    assert!(
        at("mkdir -m 0700") < at("provisioner \"file\"")
            && at("provisioner \"file\"") < at("install-bundle.sh\"")
            && at("install-bundle.sh\"") < at("rm -rf")
    );
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
    let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest));
    let root = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(packer_dir().join("install-bundle.sh"))
        .arg(b)
        .env("KV_CONTENT_KEY", key)
        .env("KV_INSTALL_ROOT", root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("envoy.yaml: sha256"), "{err}");
    assert!(err.contains("gone.service: listed in manifest.json but missing"), "{err}");
    assert!(!err.contains("proxy:"), "the good file was reported: {err}");
    assert!(err.contains("nothing installed"), "{err}");
}
