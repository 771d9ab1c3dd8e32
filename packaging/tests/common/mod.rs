//! Fixtures shared by the integration tests: fake-but-realistically-sized inputs (the kernel
//! is random bytes: nothing here boots it, only measures it).
#![allow(dead_code)]

use packaging::build::{self, Arch, NativeArgs, NativeSpec};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes (xorshift), so fixtures are identical across runs.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub struct Inputs {
    pub dir: tempfile::TempDir,
}

impl Inputs {
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

/// kernel, init, nsm.ko, a vsock module and a small rootfs under a fresh temp dir.
pub fn inputs(file_mode: u32) -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let w = |p: &str, data: &[u8], mode: u32| {
        let path = dir.path().join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    w("blobs/bzImage", &bytes(1, 300_001), 0o644);
    w("blobs/init", &bytes(2, 5_003), 0o755);
    w("blobs/nsm.ko", &bytes(3, 777), 0o644);
    w("modules/vsock.ko", &bytes(4, 1_234), 0o644);
    w("rootfs/bin/kv-server", &bytes(5, 70_000), 0o755);
    w("rootfs/etc/kv/config.toml", b"port = 50051\n", file_mode);
    w("rootfs/etc/ssl/certs/ca-certificates.crt", b"-----BEGIN CERTIFICATE-----\n", file_mode);
    w("rootfs/data/empty", b"", file_mode);
    std::os::unix::fs::symlink("kv-server", dir.path().join("rootfs/bin/server")).unwrap();
    Inputs { dir }
}

pub fn spec(i: &Inputs, epoch: u64) -> NativeSpec {
    let args = NativeArgs {
        kernel: Some(i.path("blobs/bzImage")),
        cmdline: Some("reboot=k panic=30 pci=off nomodules console=ttyS0".into()),
        init: Some(i.path("blobs/init")),
        nsm_ko: Some(i.path("blobs/nsm.ko")),
        modules: vec![i.path("modules/vsock.ko")],
        blobs: None,
        rootfs: Some(i.path("rootfs")),
        cmd: Some("/bin/kv-server --port 50051".into()),
        env: vec!["RUST_LOG=info".into(), "KV_MODE=enclave".into()],
        signing_certificate: None,
        private_key: None,
    };
    build::resolve(args, Arch::X86_64, epoch, "kv-server".into(), "1.2.3".into()).unwrap()
}

/// Splits an EIF into (type code, data) per section using only the documented layout.
pub fn sections(eif: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 548;
    while off < eif.len() {
        let t = u16::from_be_bytes([eif[off], eif[off + 1]]);
        let size = u64::from_be_bytes(eif[off + 4..off + 12].try_into().unwrap()) as usize;
        out.push((t, eif[off + 12..off + 12 + size].to_vec()));
        off += 12 + size;
    }
    out
}

pub fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()
}
