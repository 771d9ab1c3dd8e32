//! kv-server's Avro data-file reader (container + FlatBuffers rows) on arbitrary input.
//!
//! Input: the bytes after the container magic `Obj\x01` (prepended here so that every run gets
//! past the magic check). Invariants: nothing panics; a file that parses stays within the budget
//! it was parsed with (records, and the bytes its keys and values were decoded from, however far
//! its deflate blocks inflate); it re-encodes (write_avro) to a file that parses to the same
//! records.
#![no_main]

use kv_server::data::{Budget, Mutation, Value, parse_avro, write_avro};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small enough that the fuzzer reaches it (a deflate block inflates up to 1000:1).
    let budget = Budget { max_inflated_bytes: 256 * 1024, max_records: 1000, ..Budget::default() };
    let mut bytes = b"Obj\x01".to_vec();
    bytes.extend_from_slice(data);
    let Ok(records) = parse_avro("fuzz", &bytes, &budget) else { return };
    assert!(records.len() as u64 <= budget.max_records, "{} records", records.len());
    let decoded: usize = records
        .iter()
        .map(|r| match &r.mutation {
            Mutation::Update(Value::String(s)) => r.key.len() + s.len(),
            _ => r.key.len(),
        })
        .sum();
    assert!(decoded as u64 <= budget.max_inflated_bytes, "keys and strings of {decoded} bytes");
    let mut again = Vec::new();
    write_avro(&records, &mut again).expect("writing to a Vec cannot fail");
    let unlimited = Budget { max_inflated_bytes: u64::MAX, max_records: u64::MAX, ..Budget::default() };
    assert_eq!(parse_avro("again", &again, &unlimited).expect("a written file parses"), records);
});
