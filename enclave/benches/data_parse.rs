//! Parse speed of data files: `cargo bench -p kv-server --bench data_parse`.
//!
//! Builds a snapshot in memory (default 1,000,000 records, 16-byte keys, 100-byte values;
//! `KV_DATA_BENCH_RECORDS` overrides the count), writes it as Avro/FlatBuffers and as CSV, and
//! times `parse_file` on each (best of 3). The peer, measured in the same run on the same CSV
//! bytes, is the `csv` crate's raw record loop (no UTF-8 checks, no field parsing, no
//! allocation per record): the ratios say what validation and building `Record`s cost. A second
//! peer reads the Avro container with the maintained `apache-avro` crate (records as bytes,
//! its allocation cap set), for the choice of our own container reader (docs/data-files.md).

use std::hint::black_box;
use std::time::{Duration, Instant};

use kv_server::data::{Mutation, Record, Value, parse_file, write_avro, write_csv};

/// This process's user+system CPU time, from /proc/self/stat (clock ticks of 10 ms): on a shared
/// machine the wall time also counts other processes' turns, the CPU time does not.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

/// Best wall time and best CPU time of three runs.
fn best_of_3<T>(mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let (mut wall, mut cpu) = (Duration::MAX, Duration::MAX);
    let mut out = None;
    for _ in 0..3 {
        let (start, start_cpu) = (Instant::now(), cpu_time());
        let r = black_box(f());
        wall = wall.min(start.elapsed());
        cpu = cpu.min(cpu_time().saturating_sub(start_cpu));
        out = Some(r);
    }
    (wall, cpu, out.expect("three runs"))
}

fn main() {
    let n: usize =
        std::env::var("KV_DATA_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let value: String = "v".repeat(100);
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            key: format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).into(),
            logical_commit_time: 1,
            mutation: Mutation::Update(Value::String(value.clone())),
        })
        .collect();
    let mut avro = Vec::new();
    write_avro(&records, &mut avro).expect("write avro");
    let mut csv = Vec::new();
    write_csv(&records, &mut csv).expect("write csv");
    drop(records);

    let (t_avro, c_avro, parsed) = best_of_3(|| parse_file("bench.avro", &avro).expect("parse avro").len());
    assert_eq!(parsed, n);
    let (t_csv, c_csv, parsed) = best_of_3(|| parse_file("bench.csv", &csv).expect("parse csv").len());
    assert_eq!(parsed, n);
    let (t_peer, c_peer, rows) = best_of_3(|| {
        let mut reader = csv::ReaderBuilder::new().from_reader(&csv[..]);
        let mut row = csv::ByteRecord::new();
        let mut rows = 0usize;
        while reader.read_byte_record(&mut row).expect("csv peer") {
            rows += row.len();
        }
        rows / 5
    });
    assert_eq!(rows, n);
    // The maintained Avro reader on the same container, with its allocation cap for untrusted
    // input: it yields each record's bytes (a `Value::Bytes`); decoding the FlatBuffers inside and
    // building the `Record`s would come on top of its time.
    apache_avro::util::max_allocation_bytes(64 << 20);
    let (t_apache, c_apache, records) = best_of_3(|| {
        let reader = apache_avro::Reader::new(&avro[..]).expect("apache-avro header");
        let mut records = 0usize;
        for value in reader {
            match value.expect("apache-avro record") {
                apache_avro::types::Value::Bytes(b) => records += usize::from(!b.is_empty()),
                other => panic!("apache-avro: a record is not bytes: {other:?}"),
            }
        }
        records
    });
    assert_eq!(records, n);

    let rate = |t: Duration| n as f64 / t.as_secs_f64();
    let mb = |bytes: usize, t: Duration| bytes as f64 / t.as_secs_f64() / 1e6;
    let line = |what: &str, wall: Duration, cpu: Duration, bytes: usize| {
        println!(
            "  {what:<29} wall {:>7.1} ms ({:>9.0} records/s, {:>4.0} MB/s)  cpu {:>6.0} ms ({:>9.0} records/s)",
            wall.as_secs_f64() * 1e3,
            rate(wall),
            mb(bytes, wall),
            cpu.as_secs_f64() * 1e3,
            rate(cpu),
        )
    };
    println!("data_parse: {n} records, 16-byte keys, 100-byte values (best of 3)");
    println!("  avro file {} bytes, csv file {} bytes", avro.len(), csv.len());
    line("avro+flatbuffers parse_file:", t_avro, c_avro, avro.len());
    line("csv parse_file:", t_csv, c_csv, csv.len());
    line("peer: csv crate raw rows:", t_peer, c_peer, csv.len());
    line("apache-avro records as bytes:", t_apache, c_apache, avro.len());
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "  time ratio to peer (lower is faster): avro {:.2}x wall / {:.2}x cpu, csv {:.2}x wall / {:.2}x cpu",
        ratio(t_avro, t_peer),
        ratio(c_avro, c_peer),
        ratio(t_csv, t_peer),
        ratio(c_csv, c_peer)
    );
    println!(
        "  apache-avro (container only, no FlatBuffers) against our avro+flatbuffers parse_file: {:.2}x wall / {:.2}x cpu",
        ratio(t_apache, t_avro),
        ratio(c_apache, c_avro)
    );
}
