//! `scripts/build-dist.sh`: the application ramdisk (PCR2) does not depend on the kernel the image
//! was built with, so the image booted locally (Debian kernel, modules in the bootstrap ramdisk)
//! and the one built with AWS's blobs attest the same PCR2. AWS's blobs are not installable here;
//! a directory laid out like them (bzImage, cmdline, init, nsm.ko) with AWS's command line
//! exercises the `--blobs` path.

use std::process::Command;

use e2e_tests::enclave::{build_dist, static_bin};
use e2e_tests::repo_root;

fn measurements(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("server_enclave_image.json")).expect("eif describe output");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    v["Measurements"].clone()
}

#[test]
fn pcr2_is_the_same_whichever_kernel_the_image_is_built_with() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = repo_root().join(".tools/kernel");
    let debian = build_dist(&dir.path().join("debian"), &["--eif-only"]);

    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::copy(kernel.join("bzImage"), blobs.join("bzImage")).unwrap();
    std::fs::copy(kernel.join("modules/nsm.ko"), blobs.join("nsm.ko")).unwrap();
    // AWS's init stands in as a different PID 1: build-dist passes ours with --init anyway.
    std::fs::copy(static_bin("enclave-init"), blobs.join("init")).unwrap();
    std::fs::write(
        blobs.join("cmdline"),
        "reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd\n",
    )
    .unwrap();
    let aws = build_dist(&dir.path().join("aws"), &["--eif-only", "--blobs", blobs.to_str().unwrap()]);

    let (a, b) = (measurements(&debian), measurements(&aws));
    assert_eq!(a["PCR2"], b["PCR2"], "PCR2 (the application) must not depend on the kernel");
    assert_ne!(a["PCR1"], b["PCR1"], "PCR1 covers the bootstrap ramdisk (modules differ)");
    assert_ne!(a["PCR0"], b["PCR0"], "PCR0 covers the kernel's command line too");

    // And the image's own description agrees with kv-packager's reader.
    let out = Command::new(e2e_tests::workspace_bin("kv-packager"))
        .args(["eif", "describe"])
        .arg(debian.join("server_enclave_image.eif"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let described: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(described["Measurements"]["PCR2"], a["PCR2"]);
}
