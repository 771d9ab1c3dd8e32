//! Memory while a hostile data file is parsed, measured as this process's resident set size. One
//! test in its own binary (its own process), so that nothing else allocates meanwhile and the
//! figure belongs to the parse.
//!
//! The file is a 10 MB deflate bomb: an Avro container whose blocks each inflate to 16 MiB of
//! valid records, under the 64 MiB per-block cap, about 10 GiB in all. Before the per-file
//! budget (issue 14 item 5) it was read block after block into memory until the enclave ran out.

use std::io::Write;
use std::time::Duration;

use kv_server::data::{Budget, Mutation, Record, Value, parse_file_with, write_avro};

const MIB: u64 = 1024 * 1024;
/// The budget the bomb is parsed with: the file may inflate to 32 MiB.
const INFLATED_BUDGET: u64 = 32 * MIB;
/// The RSS the parse may add: the inflated bytes (one block buffer and the records decoded
/// before the budget ran out) with room for the allocator.
const RSS_BOUND: u64 = 4 * INFLATED_BUDGET;
/// A watchdog ends the process past this, so that a parse without a budget fails the test
/// instead of taking the machine's memory.
const RSS_ABORT: u64 = 1024 * MIB;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().expect("a number of kB")
}

fn rss() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// Avro `long`: zigzag varint.
fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn read_long(b: &[u8], pos: &mut usize) -> i64 {
    let mut z = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*pos];
        *pos += 1;
        z |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return (z >> 1) as i64 ^ -((z & 1) as i64);
        }
    }
}

/// One Avro datum (the length and the FlatBuffers bytes) of `record`, cut out of the one-block
/// file that `write_avro` makes of it: the header is as long as that of an empty file.
fn datum(record: &Record) -> Vec<u8> {
    let mut empty = Vec::new();
    write_avro(&[], &mut empty).unwrap();
    let mut file = Vec::new();
    write_avro(std::slice::from_ref(record), &mut file).unwrap();
    let mut pos = empty.len();
    assert_eq!(read_long(&file, &mut pos), 1, "one object in the block");
    let size = read_long(&file, &mut pos) as usize;
    file[pos..pos + size].to_vec()
}

/// An Avro container (codec deflate) of `blocks` copies of one deflate block.
fn bomb(target_bytes: usize) -> (Vec<u8>, usize, u64) {
    let record = Record {
        key: "bomb".into(),
        logical_commit_time: 1,
        mutation: Mutation::Update(Value::String("x".repeat(MIB as usize))),
    };
    let datum = datum(&record);
    let per_block = 16;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..per_block {
        z.write_all(&datum).unwrap();
    }
    let block = z.finish().unwrap();
    let inflated_per_block = (per_block * datum.len()) as u64;
    let sync = [0x5a; 16];
    let mut file = b"Obj\x01".to_vec();
    put_long(&mut file, 2);
    put_bytes(&mut file, b"avro.schema");
    put_bytes(&mut file, b"\"bytes\"");
    put_bytes(&mut file, b"avro.codec");
    put_bytes(&mut file, b"deflate");
    put_long(&mut file, 0);
    file.extend_from_slice(&sync);
    let mut blocks = 0;
    while file.len() < target_bytes {
        put_long(&mut file, per_block as i64);
        put_bytes(&mut file, &block);
        file.extend_from_slice(&sync);
        blocks += 1;
    }
    (file, blocks, blocks as u64 * inflated_per_block)
}

#[test]
fn a_10_mb_deflate_bomb_is_rejected_with_bounded_rss_growth() {
    let (file, blocks, inflates_to) = bomb(10_000_000);
    assert!(inflates_to > 8 * 1024 * MIB, "{blocks} blocks inflate to {inflates_to} bytes");
    let budget = Budget { max_inflated_bytes: INFLATED_BUDGET, ..Budget::default() };

    let before = rss();
    let watchdog = std::thread::spawn(move || {
        loop {
            let now = rss();
            if now > before + RSS_ABORT {
                eprintln!(
                    "RSS grew by {} MiB while parsing the bomb: the budget does not hold; ending the test",
                    (now - before) / MIB
                );
                std::process::exit(101);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    // The peak is the figure that matters (an enclave is killed at its peak): reset the kernel's
    // high-water mark to the current RSS, then read it after the parse. Where the reset is not
    // allowed the mark may be an earlier, higher peak, which only makes the bound stricter.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let result = parse_file_with("DELTA_0000000000000001", &file, &budget);
    let peak = status_kib("VmHWM:") * 1024;
    drop(watchdog);

    let err = result.expect_err("the bomb is rejected").to_string();
    assert!(
        err.starts_with("DELTA_0000000000000001: record 17: Avro block 2: the blocks inflate to more than")
            && err.contains(&format!("max_file_inflated_bytes ({INFLATED_BUDGET} bytes)")),
        "{err}"
    );
    let growth = peak.saturating_sub(before);
    println!(
        "{} byte file, {blocks} blocks, would inflate to {} MiB; rejected with peak RSS growth {} MiB \
         (high-water mark reset: {reset})",
        file.len(),
        inflates_to / MIB,
        growth / MIB
    );
    assert!(growth < RSS_BOUND, "peak RSS grew by {growth} bytes, more than {RSS_BOUND}");
}
