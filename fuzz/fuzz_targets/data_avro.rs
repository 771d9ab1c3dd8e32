//! kv-server's Avro data-file reader (container + FlatBuffers rows) on arbitrary input.
//!
//! Input: the bytes after the container magic `Obj\x01` (prepended here so that every run gets
//! past the magic check). Invariants: nothing panics; a file that parses stays within the budget
//! it was parsed with, however far its deflate blocks would inflate: records, set members, and
//! the memory of its keys and values (a set member counted as a `String` plus its bytes); it
//! re-encodes (write_avro) to a file that parses to the same records.
#![no_main]

use kv_server::data::{Budget, Mutation, Record, Value, parse_avro, write_avro};
use libfuzzer_sys::fuzz_target;

/// The memory of a record's key and value, computed here apart from the parser's own count.
fn memory(r: &Record) -> usize {
    r.key.len()
        + match &r.mutation {
            Mutation::Update(Value::String(s)) => s.len(),
            Mutation::Update(Value::StringSet(m)) => m.iter().map(|s| size_of::<String>() + s.len()).sum(),
            Mutation::Delete => 0,
        }
}

fuzz_target!(|data: &[u8]| {
    // Small enough that the fuzzer reaches it (a deflate block inflates up to 1000:1).
    let budget = Budget {
        max_inflated_bytes: 256 * 1024,
        max_records: 1000,
        max_set_members: 100,
        ..Budget::default()
    };
    let mut bytes = b"Obj\x01".to_vec();
    bytes.extend_from_slice(data);
    let Ok(records) = parse_avro("fuzz", &bytes, &budget) else { return };
    assert!(records.len() as u64 <= budget.max_records, "{} records", records.len());
    for r in &records {
        if let Mutation::Update(Value::StringSet(m)) = &r.mutation {
            assert!(m.len() as u64 <= budget.max_set_members, "a set of {} members", m.len());
        }
    }
    let in_memory: usize = records.iter().map(memory).sum();
    assert!(in_memory as u64 <= budget.max_inflated_bytes, "keys and values take {in_memory} bytes");
    let mut again = Vec::new();
    write_avro(&records, &mut again).expect("writing to a Vec cannot fail");
    let unlimited = Budget {
        max_inflated_bytes: u64::MAX,
        max_records: u64::MAX,
        max_set_members: u64::MAX,
        ..Budget::default()
    };
    assert_eq!(parse_avro("again", &again, &unlimited).expect("a written file parses"), records);
});
