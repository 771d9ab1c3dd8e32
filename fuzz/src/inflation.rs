//! The inflation budget of the data readers: whatever a file says, what parses from it stays
//! within the [`Budget`] it was parsed with.
//!
//! The fuzz budget is small enough for the fuzzer to reach (a deflate block inflates up to
//! 1032:1). [`memory`] counts a record's keys and values the way the reader charges them (a set
//! member is a `String` plus its bytes), computed here apart from the parser's own count, and
//! [`check`] asserts records, set members and memory against the budget. For CSV there is a
//! tighter bound besides: every byte of a record is a distinct byte of the file ([`weight`]).

use kv_server::data::{Budget, Mutation, Record, Value};

/// The budget the fuzz targets parse with.
pub fn fuzz_budget() -> Budget {
    Budget { max_inflated_bytes: 256 * 1024, max_records: 1000, max_set_members: 100, ..Budget::default() }
}

/// No limit: for re-parsing what the writers produced.
pub fn unlimited() -> Budget {
    Budget {
        max_inflated_bytes: u64::MAX,
        max_records: u64::MAX,
        max_set_members: u64::MAX,
        ..Budget::default()
    }
}

/// The memory of a record's key and value as the reader charges it.
pub fn memory(r: &Record) -> u64 {
    let value = match &r.mutation {
        Mutation::Update(Value::String(s)) => s.len(),
        Mutation::Update(Value::StringSet(m)) => m.iter().map(|s| size_of::<String>() + s.len()).sum(),
        Mutation::Delete => 0,
    };
    (r.key.len() + value) as u64
}

/// The bytes a record holds in the file's own terms: its key's bytes plus its value's (a set
/// member's bytes plus one, for its separator).
pub fn weight(record: &Record) -> u64 {
    let value = match &record.mutation {
        Mutation::Delete => 0,
        Mutation::Update(Value::String(s)) => s.len(),
        Mutation::Update(Value::StringSet(members)) => members.iter().map(|m| m.len() + 1).sum(),
    };
    (record.key.len() + value) as u64
}

/// Asserts that `records` stay within `budget`.
pub fn check(records: &[Record], budget: &Budget) {
    assert!(records.len() as u64 <= budget.max_records, "{} records", records.len());
    for r in records {
        if let Mutation::Update(Value::StringSet(m)) = &r.mutation {
            assert!(m.len() as u64 <= budget.max_set_members, "a set of {} members", m.len());
        }
    }
    let in_memory: u64 = records.iter().map(memory).sum();
    assert!(in_memory <= budget.max_inflated_bytes, "keys and values take {in_memory} bytes");
}
