//! An EIF built from a real Linux kernel: Debian's 6.12 kernel and its nsm, virtio-mmio and vsock
//! modules, fetched by scripts/setup-test-deps.sh (packaging/scripts/fetch-test-kernel.sh) into
//! .tools/kernel. Nothing boots it here (no KVM, no NSM device); what is checked is that the
//! image holds exactly those bytes in nitro-cli's layout and that its PCRs are right.

mod common;

use common::{read, sections};
use packaging::build::{self, Arch, NativeArgs};
use packaging::cpio;
use packaging::eif;
use packaging::progress::Progress;
use std::fs;
use std::path::{Path, PathBuf};

fn kernel_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/kernel");
    if dir.join(".installed").is_file() {
        return Some(dir);
    }
    // CI runs the set-up script first: a missing kernel there is a failure, not a skip.
    assert!(std::env::var_os("CI").is_none(), "{} missing: run scripts/setup-test-deps.sh", dir.display());
    eprintln!("skipping: no kernel in {} (scripts/setup-test-deps.sh fetches it)", dir.display());
    None
}

/// Our init when the workspace's binaries are built (scripts/test.sh builds them first).
fn init_binary(fallback: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let built = exe.parent().and_then(|deps| deps.parent()).map(|d| d.join("enclave-init"));
    match built {
        Some(p) if p.is_file() => p,
        _ => {
            fs::write(fallback, b"#!/bin/sh\n# stand-in init: enclave-init was not built\n").unwrap();
            fallback.to_path_buf()
        }
    }
}

#[test]
fn eif_from_a_debian_kernel_and_its_modules() {
    let Some(k) = kernel_dir() else { return };
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::write(rootfs.join("bin/kv-server"), b"\x7fELF placeholder for the server binary").unwrap();
    let init = init_binary(&work.path().join("init"));
    let order = ["virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"];
    let args = NativeArgs {
        kernel: Some(k.join("bzImage")),
        cmdline: Some("reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on".into()),
        init: Some(init.clone()),
        nsm_ko: Some(k.join("modules/nsm.ko")),
        modules: order.iter().map(|m| k.join(format!("modules/{m}.ko"))).collect(),
        blobs: None,
        rootfs: Some(rootfs),
        cmd: Some("/bin/kv-server".into()),
        env: vec![],
        signing_certificate: None,
        private_key: None,
    };
    let spec = build::resolve(args, Arch::X86_64, 1_700_000_000, "kv-server".into(), "test".into()).unwrap();
    let out = work.path().join("real.eif");
    let report = build::build_native(&spec, &out, Progress::hidden()).unwrap();

    let d = eif::describe(&out, true).unwrap();
    assert_eq!(d.measurements, report.measurements);
    let version = read(&k.join("bzImage.config"));
    let version = String::from_utf8_lossy(&version);
    let expected =
        version.lines().find_map(|l| l.strip_prefix("# Linux/x86 ")).unwrap().split(' ').next().unwrap();
    assert_eq!(d.metadata.unwrap().build_info.img_kernel, expected);

    let image = read(&out);
    let secs = sections(&image);
    let kernel = read(&k.join("bzImage"));
    assert_eq!(secs[0].1, kernel);
    // A bzImage: "HdrS" boot protocol magic at 0x202.
    assert_eq!(&kernel[0x202..0x206], b"HdrS");
    let boot = cpio::parse(&secs[3].1).unwrap();
    let names: Vec<&str> = boot.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "dev",
            "init",
            "modules",
            "modules/00-virtio_mmio.ko",
            "modules/01-vsock.ko",
            "modules/02-vmw_vsock_virtio_transport_common.ko",
            "modules/03-vmw_vsock_virtio_transport.ko",
            "nsm.ko"
        ]
    );
    for (name, _, data) in &boot {
        if name.ends_with(".ko") {
            // Uncompressed ELF relocatable objects: what finit_module(fd, "", 0) accepts.
            assert_eq!(&data[..4], b"\x7fELF", "{name}");
            assert_eq!(data[16], 1, "{name}: ET_REL");
        }
    }
    assert_eq!(boot[1].2, read(&init));
}
