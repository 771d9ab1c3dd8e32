//! EIF writer and reader: byte layout, PCRs against independent computations, determinism,
//! and clear errors on corrupt input.

mod common;

use common::{bytes, inputs, read, sections, spec};
use packaging::build;
use packaging::cpio;
use packaging::eif::{self, EifWriter, ReadError, SectionKind};
use packaging::progress::Progress;
use sha2::{Digest, Sha384};
use std::fs;
use std::io::Cursor;

/// sha384(48 zero bytes || sha384(concatenation)), written out from the definition.
fn pcr(parts: &[&[u8]]) -> String {
    let mut inner = Sha384::new();
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha384::new();
    outer.update([0u8; 48]);
    outer.update(inner.finalize());
    hex::encode(outer.finalize())
}

/// An EIF assembled by hand from the documented layout, without the crate's format code.
fn hand_built(kernel: &[u8], cmdline: &[u8], metadata: &[u8], ramdisks: &[&[u8]]) -> Vec<u8> {
    let mut secs: Vec<(u16, &[u8])> = vec![(1, kernel), (2, cmdline), (5, metadata)];
    secs.extend(ramdisks.iter().map(|r| (3u16, *r)));
    let mut offsets = [0u64; 32];
    let mut sizes = [0u64; 32];
    let mut off = 548u64;
    for (i, (_, d)) in secs.iter().enumerate() {
        offsets[i] = off;
        sizes[i] = d.len() as u64;
        off += 12 + d.len() as u64;
    }
    let mut f = Vec::new();
    f.extend_from_slice(b".eif");
    f.extend_from_slice(&4u16.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&(1u64 << 30).to_be_bytes());
    f.extend_from_slice(&2u64.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&(secs.len() as u16).to_be_bytes());
    offsets.iter().for_each(|o| f.extend_from_slice(&o.to_be_bytes()));
    sizes.iter().for_each(|s| f.extend_from_slice(&s.to_be_bytes()));
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
    assert_eq!(f.len(), 548);
    for (t, d) in &secs {
        f.extend_from_slice(&t.to_be_bytes());
        f.extend_from_slice(&0u16.to_be_bytes());
        f.extend_from_slice(&(d.len() as u64).to_be_bytes());
        f.extend_from_slice(d);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&f[..544]);
    crc.update(&f[548..]);
    let c = crc.finalize();
    f[544..548].copy_from_slice(&c.to_be_bytes());
    f
}

const META: &[u8] = br#"{"ImageName":"t","ImageVersion":"1","BuildMetadata":{"BuildTime":"x","BuildTool":"y","BuildToolVersion":"z","OperatingSystem":"linux","KernelVersion":"k"},"DockerInfo":null,"CustomMetadata":{}}"#;

#[test]
fn writer_output_equals_a_hand_built_image_and_reads_back() {
    let kernel = bytes(9, 10_007);
    let (rd1, rd2, rd3) = (bytes(10, 333), bytes(11, 4_096), bytes(12, 1));
    let expected = hand_built(&kernel, b"console=ttyS0", META, &[&rd1, &rd2, &rd3]);

    let mut w = EifWriter::new(Cursor::new(Vec::new()), 0).unwrap();
    w.section_bytes(SectionKind::Kernel, &kernel).unwrap();
    w.section_bytes(SectionKind::Cmdline, b"console=ttyS0").unwrap();
    w.section_bytes(SectionKind::Metadata, META).unwrap();
    for rd in [&rd1, &rd2, &rd3] {
        w.section_from_reader(SectionKind::Ramdisk, rd.len() as u64, &rd[..]).unwrap();
    }
    let (out, m) = w.finish().unwrap();
    assert_eq!(out.into_inner(), expected);
    assert_eq!(m.pcr0, pcr(&[&kernel, b"console=ttyS0", &rd1, &rd2, &rd3]));
    assert_eq!(m.pcr1, pcr(&[&kernel, b"console=ttyS0", &rd1]));
    assert_eq!(m.pcr2, pcr(&[&rd2, &rd3]));

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hand.eif");
    fs::write(&p, &expected).unwrap();
    let d = eif::describe(&p, true).unwrap();
    assert!(d.crc_ok);
    assert_eq!(d.measurements, m);
    assert_eq!(d.sections.len(), 6);
    assert_eq!(d.sections[3].kind, SectionKind::Ramdisk);
    assert_eq!(d.sections[3].offset, 548 + 12 * 3 + 10_007 + 13 + META.len() as u64);
    assert_eq!(d.cmdline, "console=ttyS0");
    assert_eq!(d.image_name.as_deref(), Some("t"));
    assert!(!d.is_signed && d.measurements.pcr8.is_none());
}

#[test]
fn native_build_pcrs_match_sha384_chains_over_the_sections_and_python() {
    let i = inputs(0o644);
    let out = i.path("image.eif");
    let report = build::build_native(&spec(&i, 1_700_000_000), &out, Progress::hidden()).unwrap();
    let image = read(&out);
    let secs = sections(&image);
    let types: Vec<u16> = secs.iter().map(|s| s.0).collect();
    assert_eq!(types, [1, 2, 5, 3, 3], "kernel, cmdline, metadata, two ramdisks");
    let (k, c, r1, r2) = (&secs[0].1, &secs[1].1, &secs[3].1, &secs[4].1);
    assert_eq!(k, &read(&i.path("blobs/bzImage")));
    assert_eq!(report.measurements.pcr0, pcr(&[k, c, r1, r2]));
    assert_eq!(report.measurements.pcr1, pcr(&[k, c, r1]));
    assert_eq!(report.measurements.pcr2, pcr(&[r2]));
    assert_eq!(eif::describe(&out, true).unwrap().measurements, report.measurements);

    // A third, independent implementation: Python's hashlib and struct over the raw file.
    let script = r#"
import hashlib, struct, sys, json
d = open(sys.argv[1], 'rb').read()
n = struct.unpack('>H', d[26:28])[0]
off, secs = 548, []
while off < len(d):
    t, _, size = struct.unpack('>HHQ', d[off:off+12]); secs.append((t, d[off+12:off+12+size])); off += 12 + size
assert len(secs) == n
def pcr(parts):
    h = hashlib.sha384(); [h.update(p) for p in parts]
    return hashlib.sha384(b'\0' * 48 + h.digest()).hexdigest()
boot = [s for t, s in secs if t in (1, 2)]
rds = [s for t, s in secs if t == 3]
print(json.dumps({'PCR0': pcr(boot + rds), 'PCR1': pcr(boot + rds[:1]), 'PCR2': pcr(rds[1:])}))
"#;
    let py = std::process::Command::new("python3").arg("-c").arg(script).arg(&out).output();
    match py {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["PCR0"], report.measurements.pcr0);
            assert_eq!(v["PCR1"], report.measurements.pcr1);
            assert_eq!(v["PCR2"], report.measurements.pcr2);
        }
        other => panic!("python3 is part of the test set-up (scripts/setup-test-deps.sh): {other:?}"),
    }
}

#[test]
fn ramdisks_have_the_nitro_cli_layout() {
    let i = inputs(0o644);
    let out = i.path("image.eif");
    build::build_native(&spec(&i, 0), &out, Progress::hidden()).unwrap();
    let secs = sections(&read(&out));
    let boot = cpio::parse(&secs[3].1).unwrap();
    let names: Vec<_> = boot.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["dev", "init", "modules", "modules/00-vsock.ko", "nsm.ko"]);
    assert_eq!(boot[1].2, read(&i.path("blobs/init")));
    assert_eq!(boot[1].1, 0o100755);
    let app = cpio::parse(&secs[4].1).unwrap();
    let get = |n: &str| app.iter().find(|e| e.0 == n).unwrap_or_else(|| panic!("{n} missing"));
    assert_eq!(get("cmd").2, b"/bin/kv-server\n--port\n50051\n");
    assert_eq!(get("env").2, b"RUST_LOG=info\nKV_MODE=enclave\n");
    assert_eq!(get("rootfs/bin/kv-server").1, 0o100755);
    assert_eq!(get("rootfs/etc/kv/config.toml").1, 0o100644);
    assert_eq!(get("rootfs/bin/server").2, b"kv-server");
    for d in ["dev", "proc", "run", "sys", "tmp", "var"] {
        assert_eq!(get(&format!("rootfs/{d}")).1, 0o040755);
    }
    let meta: serde_json::Value = serde_json::from_slice(&secs[2].1).unwrap();
    assert_eq!(meta["BuildMetadata"]["BuildTime"], "1970-01-01T00:00:00+00:00");
    assert_eq!(meta["ImageVersion"], "1.2.3");
}

#[test]
fn two_builds_from_the_same_inputs_are_byte_identical() {
    // Different temp dirs, creation times and file permissions (umask 022 vs 002).
    let a = inputs(0o644);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = inputs(0o664);
    let (oa, ob) = (a.path("a.eif"), b.path("b.eif"));
    let ra = build::build_native(&spec(&a, 1_234_567), &oa, Progress::hidden()).unwrap();
    let rb = build::build_native(&spec(&b, 1_234_567), &ob, Progress::hidden()).unwrap();
    assert_eq!(read(&oa), read(&ob));
    assert_eq!(ra.measurements, rb.measurements);
    // The epoch is an input: changing it changes the application ramdisk (PCR2), not PCR1...
    let oc = a.path("c.eif");
    let rc = build::build_native(&spec(&a, 7), &oc, Progress::hidden()).unwrap();
    assert_ne!(rc.measurements.pcr2, ra.measurements.pcr2);
    // ...except through the bootstrap ramdisk's mtimes, which are also fixed by it.
    assert_ne!(rc.measurements.pcr1, ra.measurements.pcr1);
    // A one-byte change in the app changes PCR0 and PCR2 but not PCR1.
    let mut app = read(&a.path("rootfs/bin/kv-server"));
    app[100] ^= 1;
    fs::write(a.path("rootfs/bin/kv-server"), app).unwrap();
    let od = a.path("d.eif");
    let rd = build::build_native(&spec(&a, 1_234_567), &od, Progress::hidden()).unwrap();
    assert_eq!(rd.measurements.pcr1, ra.measurements.pcr1);
    assert_ne!(rd.measurements.pcr2, ra.measurements.pcr2);
    assert_ne!(rd.measurements.pcr0, ra.measurements.pcr0);
}

#[test]
fn signed_image_reports_pcr8_over_the_certificate_der() {
    use base64::Engine;
    let der = bytes(77, 600);
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    let sig = eif::signature::section_for_certificate(pem.as_bytes(), b"cose-sign1-bytes");
    let mut w = EifWriter::new(Cursor::new(Vec::new()), 0).unwrap();
    w.section_bytes(SectionKind::Kernel, b"k").unwrap();
    w.section_bytes(SectionKind::Cmdline, b"c").unwrap();
    w.section_bytes(SectionKind::Metadata, META).unwrap();
    w.section_bytes(SectionKind::Ramdisk, b"r").unwrap();
    w.section_bytes(SectionKind::Signature, &sig).unwrap();
    let (out, m) = w.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("signed.eif");
    fs::write(&p, out.into_inner()).unwrap();
    let d = eif::describe(&p, true).unwrap();
    assert!(d.is_signed);
    assert_eq!(d.measurements.pcr8.as_deref(), Some(pcr(&[&der]).as_str()));
    // The signature section is not measured: PCR0 is that of the unsigned image.
    assert_eq!(d.measurements.pcr0, m.pcr0);
    assert_eq!(d.measurements.pcr0, pcr(&[b"k", b"c", b"r"]));
}

fn corrupt(f: impl FnOnce(&mut Vec<u8>)) -> (ReadError, String) {
    let mut img = hand_built(b"kernel-bytes", b"cmdline", META, &[b"ramdisk-one", b"ramdisk-two"]);
    f(&mut img);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.eif");
    fs::write(&p, img).unwrap();
    let e = eif::describe(&p, true).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bad.eif"), "error names the file: {msg}");
    (e, msg)
}

#[test]
fn corrupt_images_give_errors_naming_section_and_offset() {
    let kernel_data = 548 + 12;
    let (e, msg) = corrupt(|v| v.truncate(kernel_data + 5));
    assert!(matches!(e, ReadError::Truncated { index: 0, offset: 560, expected: 12, got: 5, .. }), "{msg}");
    assert!(msg.contains("section 0 (kernel) at offset 560"), "{msg}");

    let (e, msg) = corrupt(|v| {
        let n = v.len();
        v.truncate(n - 3)
    });
    assert!(matches!(e, ReadError::Truncated { index: 4, .. }), "{msg}");
    assert!(msg.contains("ramdisk"), "{msg}");

    let (e, msg) = corrupt(|v| v.truncate(560 + 12 + 4));
    assert!(matches!(e, ReadError::Truncated { index: 1, .. }), "{msg}");

    let (e, _) = corrupt(|v| v.truncate(100));
    assert!(matches!(e, ReadError::ShortHeader { len: 100, .. }));

    let (e, msg) = corrupt(|v| {
        let n = v.len();
        v[n - 2] ^= 0xff
    });
    assert!(matches!(e, ReadError::Crc { .. }), "{msg}");

    let (e, msg) = corrupt(|v| v[548 + 1] = 9);
    assert!(matches!(e, ReadError::SectionType { index: 0, offset: 548, code: 9, .. }), "{msg}");

    let (e, msg) = corrupt(|v| v[0] = b'x');
    assert!(msg.contains("not an EIF"), "{msg}");
    assert!(matches!(e, ReadError::Header { .. }));

    let (e, msg) = corrupt(|v| v[28 + 8 + 7] ^= 1); // section 1's offset in the table
    assert!(matches!(e, ReadError::Table { index: 1, field: "offset", .. }), "{msg}");

    let (e, msg) = corrupt(|v| v.extend_from_slice(&[0u8; 40]));
    assert!(matches!(e, ReadError::Trailing { extra: 40, .. }), "{msg}");

    let (e, msg) = corrupt(|v| v[27] = 6); // announces one section more than present
    assert!(matches!(e, ReadError::SectionCount { announced: 6, found: 5, .. }), "{msg}");

    // Metadata that is not JSON: named as the metadata section.
    let (e, msg) = corrupt(|v| {
        let at = v.windows(12).position(|w| w == b"{\"ImageName\"").unwrap();
        v[at] = b'<';
        // keep the CRC right so the metadata check is what fails
        let mut crc = crc32fast::Hasher::new();
        crc.update(&v[..544]);
        crc.update(&v[548..]);
        let c = crc.finalize();
        v[544..548].copy_from_slice(&c.to_be_bytes());
    });
    assert!(matches!(e, ReadError::Metadata { index: 2, .. }), "{msg}");
}

#[test]
fn crc_mismatch_can_be_reported_instead_of_failing() {
    let mut img = hand_built(b"k", b"c", META, &[b"r"]);
    let n = img.len();
    img[n - 1] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.eif");
    fs::write(&p, img).unwrap();
    let d = eif::describe(&p, false).unwrap();
    assert!(!d.crc_ok);
}

#[test]
fn mutated_and_truncated_images_never_panic() {
    use packaging::eif::describe_reader;
    use std::path::Path;
    let i = inputs(0o644);
    let out = i.path("m.eif");
    build::build_native(&spec(&i, 0), &out, Progress::hidden()).unwrap();
    let good = read(&out);
    let name = Path::new("mutated.eif");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut rejected = 0;
    for round in 0..400 {
        let mut img = good.clone();
        // Bias mutations towards the header and section headers, where the parser decides.
        let at = if round % 2 == 0 { (next() % 700) as usize } else { (next() as usize) % img.len() };
        img[at] ^= (next() % 255 + 1) as u8;
        if round % 5 == 0 {
            img.truncate((next() as usize) % img.len());
        }
        let len = img.len() as u64;
        if describe_reader(&img[..], name, len, true).is_err() {
            rejected += 1;
        }
    }
    // Every single-byte change is caught (by structure or by the CRC).
    assert_eq!(rejected, 400);
}
