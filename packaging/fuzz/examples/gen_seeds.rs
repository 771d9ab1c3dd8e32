//! Writes the seed corpora `packaging/fuzz/seeds/TARGET/` with packaging's own writers: newc
//! archives from `cpio::Archive` (files, an executable, directories, a symlink from a tree on
//! disk) and small EIFs from `EifWriter` (kernel, cmdline, metadata, ramdisks).
//!
//! Run: `cd packaging/fuzz && cargo run --example gen_seeds` (it replaces every seed directory).
//! The output is deterministic.

use std::fs;
use std::io::Cursor;
use std::path::Path;

use packaging::cpio::Archive;
use packaging::eif::{EifWriter, SectionKind};
use packaging_fuzz::TARGETS;

/// The metadata section of packaging/tests/eif.rs.
const META: &[u8] = br#"{"ImageName":"t","ImageVersion":"1","BuildMetadata":{"BuildTime":"x","BuildTool":"y","BuildToolVersion":"z","OperatingSystem":"linux","KernelVersion":"k"},"DockerInfo":null,"CustomMetadata":{}}"#;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (name, _) in TARGETS {
        let _ = fs::remove_dir_all(root.join(name));
        fs::create_dir_all(root.join(name)).expect("create the seed directory");
    }
    let put = |target: &str, name: &str, bytes: &[u8]| {
        fs::write(root.join(target).join(name), bytes).expect("write a seed");
        println!("{target}/{name}: {} bytes", bytes.len());
    };

    let render = |a: &Archive| {
        let mut out = Vec::new();
        a.write_to(&mut out).expect("write to memory");
        out
    };
    // The layout of an enclave's ramdisk, in miniature.
    let mut init = Archive::new(1_700_000_000);
    init.add_bytes("init", true, b"#!/bin/sh\n".to_vec()).expect("a path");
    init.add_bytes("cmd", false, b"/bin/kv-server\n".to_vec()).expect("a path");
    init.add_bytes("env", false, Vec::new()).expect("a path");
    init.add_dir("rootfs/dev").expect("a path");
    init.add_bytes("rootfs/etc/hosts", false, b"127.0.0.1 localhost\n".to_vec()).expect("a path");
    let init = render(&init);
    put("cpio_parse", "ramdisk.cpio", &init);
    put("cpio_parse", "empty.cpio", &render(&Archive::new(0)));
    // A tree from disk: a symlink, and a file whose name pads differently.
    let dir = tempfile::tempdir().expect("a temporary directory");
    fs::create_dir(dir.path().join("b")).expect("mkdir");
    fs::write(dir.path().join("b/abc"), b"x").expect("write");
    std::os::unix::fs::symlink("b/abc", dir.path().join("link")).expect("symlink");
    let mut tree = Archive::new(0);
    tree.add_tree("rootfs", dir.path()).expect("a tree");
    let tree = render(&tree);
    put("cpio_parse", "tree-with-symlink.cpio", &tree);

    let eif = |ramdisks: &[&[u8]]| {
        let mut w = EifWriter::new(Cursor::new(Vec::new()), 0).expect("write to memory");
        w.section_bytes(SectionKind::Kernel, b"\x7fELF kernel").expect("write");
        w.section_bytes(SectionKind::Cmdline, b"reboot=k panic=30 pci=off console=ttyS0").expect("write");
        w.section_bytes(SectionKind::Metadata, META).expect("write");
        for rd in ramdisks {
            w.section_bytes(SectionKind::Ramdisk, rd).expect("write");
        }
        w.finish().expect("finish").0.into_inner()
    };
    put("eif_describe", "two-ramdisks.eif", &eif(&[&init, &tree]));
    put("eif_describe", "no-ramdisk.eif", &eif(&[]));
}
