//! The builder's user data as kv-ami renders it: shellcheck-clean, and its embedded install
//! script (install-bundle.sh) run against a fake root (`KV_INSTALL_ROOT`): a good bundle lands
//! there with its modes, a tampered file or manifest is refused before anything is installed.

mod common;

use kv_ami::bake::BakeJob;
use kv_ami::spec::AmiSpec;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bundle(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    let files = [
        ("proxy", "#!/bin/sh\necho proxy\n", "/opt/privacysandbox/proxy", "0755", "vsockproxy"),
        ("envoy.yaml", "static_resources: {}\n", "/etc/envoy/envoy.yaml", "0644", "envoy-config"),
        (
            "units/vsockproxy.service",
            "[Unit]\nDescription=vsockproxy\n",
            "/etc/systemd/system/vsockproxy.service",
            "0644",
            "systemd-unit",
        ),
    ];
    let entries = common::write_bundle_files(&b, &files);
    std::fs::write(b.join("manifest.json"), common::manifest_json("00", &entries) + "\n").unwrap();
    b
}

fn job(bundle: &Path) -> BakeJob {
    let spec = AmiSpec::parse(&format!(
        "name = \"kv-{{content_key}}\"\nregion = \"eu-west-1\"\n[bake]\nbase_ami_ssm_parameter = \"/aws/service/x\"\n\
         instance_profile = \"kv-ami-builder\"\nbucket = \"bake-bucket\"\nenvoy_image = \"envoyproxy/envoy@sha256:{}\"\n",
        "0".repeat(64)
    ))
    .unwrap();
    BakeJob::prepare(spec, bundle).unwrap()
}

#[test]
fn rendered_user_data_passes_shellcheck() {
    let dir = tempfile::tempdir().unwrap();
    let ud = job(&bundle(dir.path())).user_data().unwrap();
    let p = dir.path().join("user-data.sh");
    std::fs::write(&p, &ud).unwrap();
    let out = Command::new("shellcheck")
        .arg(&p)
        .output()
        .expect("shellcheck is installed by scripts/setup-test-deps.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // shellcheck treats the heredoc as data: check the embedded script on its own too.
    let inner = dir.path().join("install.sh");
    std::fs::write(&inner, kv_ami::userdata::install_part(&ud).unwrap()).unwrap();
    let out = Command::new("shellcheck").arg(&inner).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // And a broken script would be caught: the check is not vacuous.
    std::fs::write(&p, format!("{ud}echo \"$never_assigned\"\n")).unwrap();
    assert!(!Command::new("shellcheck").arg(&p).output().unwrap().status.success());
}

/// Run the install part of the rendered user data `ud` against `root`.
fn install(dir: &Path, ud: &str, bundle: &Path, content_key: &str, root: &Path) -> Output {
    install_with(dir, ud, bundle, Some(content_key), root, None)
}

/// The same with the content key unset (None) and a TMPDIR of the test's.
fn install_with(
    dir: &Path,
    ud: &str,
    bundle: &Path,
    content_key: Option<&str>,
    root: &Path,
    tmp: Option<&Path>,
) -> Output {
    let script = dir.join("kv-install-bundle");
    std::fs::write(&script, kv_ami::userdata::install_part(ud).unwrap()).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new(&script);
    c.arg(bundle)
        .env("KV_INSTALL_ROOT", root)
        .env_remove("KV_CONTENT_KEY")
        .env("KV_ENVOY_IMAGE", format!("envoyproxy/envoy@sha256:{}", "0".repeat(64)));
    if let Some(k) = content_key {
        c.env("KV_CONTENT_KEY", k);
    }
    if let Some(t) = tmp {
        c.env("TMPDIR", t);
    }
    c.output().unwrap()
}

fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_install_part_installs_a_good_bundle_into_a_fake_root() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path());
    let j = job(&b);
    let root = dir.path().join("root");
    let out = install(dir.path(), &j.user_data().unwrap(), &b, &j.content_key, &root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        files_under(&root),
        vec![
            "etc/envoy/envoy.env",
            "etc/envoy/envoy.yaml",
            "etc/systemd/system/vsockproxy.service",
            "opt/privacysandbox/proxy"
        ]
    );
    // envoy.service (`--pull=never`) runs exactly the image pulled by digest.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/envoy/envoy.env")).unwrap(),
        format!("ENVOY_IMAGE=envoyproxy/envoy@sha256:{}\n", "0".repeat(64))
    );
    let mode = std::fs::metadata(root.join("opt/privacysandbox/proxy")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    assert_eq!(std::fs::read(root.join("etc/envoy/envoy.yaml")).unwrap(), b"static_resources: {}\n");
    // Host steps are named, not run, under a fake root.
    assert!(err.contains("skipped (KV_INSTALL_ROOT): docker pull --quiet envoyproxy/envoy@sha256:"), "{err}");
    assert!(err.contains("skipped (KV_INSTALL_ROOT): systemctl enable vsockproxy.service"), "{err}");
}

#[test]
fn the_install_part_refuses_a_tampered_bundle_and_installs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path());
    let j = job(&b);
    let (ud, key) = (j.user_data().unwrap(), j.content_key.clone());
    // A file changed after the manifest was written (same size, other bytes), e.g. in S3.
    std::fs::write(b.join("envoy.yaml"), "static_resources: []\n").unwrap();
    // kv-ami itself refuses it before any AWS call...
    let spec = j.spec.clone();
    let e = BakeJob::prepare(spec, &b).unwrap_err();
    assert!(e.contains("envoy.yaml") && e.contains("sha256"), "{e}");
    // ...and so does the builder, should the object change after the upload.
    let root = dir.path().join("root");
    let out = install(dir.path(), &ud, &b, &key, &root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("envoy.yaml: sha256") && err.contains("nothing installed"), "{err}");
    assert!(!err.contains("proxy: sha256"), "only the changed file is reported: {err}");
    assert!(files_under(&root).is_empty(), "{:?}", files_under(&root));

    // A manifest that is not the one the content key names (edited to match the tampered file).
    let text = std::fs::read_to_string(b.join("manifest.json")).unwrap();
    let old = hex::encode(Sha256::digest("static_resources: {}\n"));
    let new = hex::encode(Sha256::digest("static_resources: []\n"));
    std::fs::write(b.join("manifest.json"), text.replace(&old, &new)).unwrap();
    let out = install(dir.path(), &ud, &b, &key, &root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("expected content key") && err.contains("nothing installed"), "{err}");
    assert!(files_under(&root).is_empty());
}

#[test]
fn the_install_part_refuses_a_missing_malformed_or_wrong_content_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path());
    let j = job(&b);
    let ud = j.user_data().unwrap();
    let root = dir.path().join("root");
    let other = hex::encode(Sha256::digest(b"another manifest"));
    for (key, says) in [
        (None, "KV_CONTENT_KEY is not set"),
        (Some(""), "KV_CONTENT_KEY is not set"),
        (Some("unset"), "KV_CONTENT_KEY \"unset\" is not a SHA-256"),
        (Some(&j.content_key[..63]), "is not a SHA-256"),
        (Some(other.as_str()), "expected content key"),
    ] {
        let out = install_with(dir.path(), &ud, &b, key, &root, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key:?}: {err}");
        assert!(err.contains(says) && err.contains("nothing installed"), "{key:?}: {err}");
        assert!(files_under(&root).is_empty(), "{key:?}: {:?}", files_under(&root));
    }
    // The key in upper case is the same digest.
    let out = install_with(dir.path(), &ud, &b, Some(&j.content_key.to_uppercase()), &root, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_install_part_checks_and_installs_a_private_copy_and_leaves_none_behind() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path());
    let j = job(&b);
    let ud = j.user_data().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();

    let root = dir.path().join("root");
    let out = install_with(dir.path(), &ud, &b, Some(&j.content_key), &root, Some(&tmp));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let staged = err
        .lines()
        .find_map(|l| l.strip_prefix("[install-bundle] staged in "))
        .unwrap_or_else(|| panic!("no staging line: {err}"));
    let (path, mode) = staged.split_once(" (mode ").unwrap();
    assert!(Path::new(path).starts_with(&tmp), "{staged}");
    assert_eq!(mode, "700)", "{staged}");
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none(), "the private copy was left behind");

    // A bundle file that is a symlink (whose target has the right bytes) is refused: only regular
    // files are copied, checked and installed.
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "static_resources: {}\n").unwrap();
    std::fs::remove_file(b.join("envoy.yaml")).unwrap();
    std::os::unix::fs::symlink(&target, b.join("envoy.yaml")).unwrap();
    let root = dir.path().join("root2");
    let out = install_with(dir.path(), &ud, &b, Some(&j.content_key), &root, Some(&tmp));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("envoy.yaml: not a regular file") && err.contains("nothing installed"), "{err}");
    assert!(files_under(&root).is_empty(), "{:?}", files_under(&root));
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none(), "the private copy was left behind");
}
