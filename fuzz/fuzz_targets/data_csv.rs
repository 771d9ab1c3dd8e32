//! kv-server's CSV data-file reader on arbitrary input.
//!
//! Invariants: nothing panics; a file that parses stays within the budget it was parsed with
//! (text, records, set members, and the memory of its keys and values, a set member counted as a
//! `String` plus its bytes); records that parse and that CSV can carry (write_csv refuses set
//! members that are empty or contain `|`) write back to a file that parses to the same records.
#![no_main]

use kv_server::data::{Budget, Mutation, Record, Value, parse_csv, write_csv};
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
    let budget =
        Budget { max_inflated_bytes: 4096, max_records: 20, max_set_members: 30, ..Budget::default() };
    let parsed = parse_csv("fuzz.csv", data, &budget);
    if data.len() as u64 > budget.max_inflated_bytes {
        assert!(
            parsed.is_err(),
            "{} bytes of CSV pass a budget of {}",
            data.len(),
            budget.max_inflated_bytes
        );
    }
    let Ok(records) = parsed else { return };
    assert!(records.len() as u64 <= budget.max_records, "{} records", records.len());
    for r in &records {
        if let Mutation::Update(Value::StringSet(m)) = &r.mutation {
            assert!(m.len() as u64 <= budget.max_set_members, "a set of {} members", m.len());
        }
    }
    let in_memory: usize = records.iter().map(memory).sum();
    assert!(in_memory as u64 <= budget.max_inflated_bytes, "keys and values take {in_memory} bytes");
    let mut again = Vec::new();
    if write_csv(&records, &mut again).is_ok() {
        let unlimited = Budget {
            max_inflated_bytes: u64::MAX,
            max_records: u64::MAX,
            max_set_members: u64::MAX,
            ..Budget::default()
        };
        assert_eq!(parse_csv("again.csv", &again, &unlimited).expect("a written file parses"), records);
    }
});
