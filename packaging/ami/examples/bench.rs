//! Benchmark (prints figures; see BENCHMARKS.md "kv-ami"):
//!   cargo run -p kv-ami --example bench --config 'profile.dev.package.kv-ami.opt-level=3'
//! 1. Local ceiling on a 256 MiB image with 10% non-zero blocks: the zero-skip scan (read, skip
//!    zero blocks, SHA-256 the rest) and hashing every block, against `sha256sum` of the same file
//!    in the same run.
//! 2. Raw upload to moto_server (loopback) with 1, 8 and 64 workers. moto's EBS block size is 512
//!    bytes and it is single-threaded Python, so the upload uses a smaller image (BENCH_UPLOAD_MIB,
//!    default 8) with the same 10% density; the figures are the emulator's, not AWS's.

use kv_ami::aws::{Clients, Target};
use kv_ami::ebs;
use kv_ami::plan::{self, RetryPolicy};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// `len` bytes, every 10th block of `block` bytes filled with pseudo-random data.
fn make_image(path: &Path, len: usize, block: usize) {
    let mut img = vec![0u8; len];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for (i, b) in img.chunks_mut(block).enumerate() {
        if i % 10 == 3 {
            for byte in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = (x >> 24) as u8 | 1;
            }
        }
    }
    std::fs::write(path, img).unwrap();
}

/// utime + stime of this process, seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn hash_all(path: &Path, block: usize) -> (u64, f64) {
    let t = Instant::now();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; block];
    let mut n = 0u64;
    let mut acc = Sha256::new();
    loop {
        let got = f.read(&mut buf).unwrap();
        if got == 0 {
            break;
        }
        acc.update(plan::block_digest(&buf[..got]));
        n += got as u64;
    }
    (n, t.elapsed().as_secs_f64())
}

struct Moto(std::process::Child, String);
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto() -> Moto {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root =
        root.ancestors().find(|p| p.join("scripts/setup-test-deps.sh").exists()).unwrap().to_path_buf();
    let bin = root.join(".tools/venv/bin/moto_server");
    assert!(bin.exists(), "{} missing: run scripts/setup-test-deps.sh", bin.display());
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto(child, format!("http://127.0.0.1:{port}"))
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.raw");
    let len = 256 * MIB;
    make_image(&big, len, kv_ami::AWS_BLOCK_SIZE);
    let gib = len as f64 / (1u64 << 30) as f64;
    println!("== kv-ami local ceiling: 256 MiB image, 10% non-zero 512 KiB blocks");
    // Warm the page cache so every contender reads from memory.
    let _ = kv_ami::count_nonzero(&big, kv_ami::AWS_BLOCK_SIZE).unwrap();
    for bs in [kv_ami::AWS_BLOCK_SIZE, 512] {
        let t = Instant::now();
        let (scanned, kept) = kv_ami::count_nonzero(&big, bs).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "zero-skip scan (+SHA-256 of non-zero blocks), block {bs:>6}: {scanned} blocks, {kept} non-zero, \
             {:.2} GiB/s",
            gib / s
        );
    }
    let (n, s) = hash_all(&big, kv_ami::AWS_BLOCK_SIZE);
    let ours = n as f64 / s / MIB as f64;
    let t = Instant::now();
    let st = Command::new("sha256sum").arg(&big).stdout(Stdio::null()).status().unwrap();
    assert!(st.success());
    let peer = len as f64 / t.elapsed().as_secs_f64() / MIB as f64;
    println!(
        "SHA-256 of every block: {ours:.0} MB/s; sha256sum same file: {peer:.0} MB/s; ratio {:.2}",
        ours / peer
    );

    let up_mib: usize = std::env::var("BENCH_UPLOAD_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let small = dir.path().join("small.raw");
    make_image(&small, up_mib * MIB, 512);
    let m = moto();
    let target = Target {
        endpoint_url: Some(m.1.clone()),
        static_credentials: Some(("t".into(), "t".into())),
        ..Default::default()
    };
    let c = Clients::new("us-east-1", &target).await;
    println!("== kv-ami raw upload to moto_server: {up_mib} MiB image, 10% non-zero 512-byte blocks");
    for workers in [1, 8, 64] {
        let cpu0 = cpu_seconds();
        let up = ebs::upload(&c, &small, (up_mib * MIB) as u64, "bench", workers, RetryPolicy::default())
            .await
            .unwrap();
        let cpu = cpu_seconds() - cpu0;
        let data = up.blocks_written as f64 * up.block_size as f64 / MIB as f64;
        println!(
            "workers {workers:>2}: {} blocks in {:.2}s = {:.0} blocks/s, {:.2} MB/s non-zero data, \
             {:.1} CPU s/GiB read (client side), {} retries",
            up.blocks_written,
            up.seconds,
            up.blocks_written as f64 / up.seconds,
            data / up.seconds,
            cpu / (up_mib as f64 / 1024.0),
            up.retries
        );
    }
}
