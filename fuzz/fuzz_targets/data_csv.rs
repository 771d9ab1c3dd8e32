//! kv-server's CSV data-file reader on arbitrary input.
//!
//! Invariants: nothing panics; a file that parses stays within the budget it was parsed with
//! (records, text); records that parse and that CSV can carry (write_csv refuses set members
//! that are empty or contain `|`) write back to a file that parses to the same records.
#![no_main]

use kv_server::data::{Budget, parse_csv, write_csv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let budget = Budget { max_inflated_bytes: 4096, max_records: 20, ..Budget::default() };
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
    let mut again = Vec::new();
    if write_csv(&records, &mut again).is_ok() {
        let unlimited = Budget { max_inflated_bytes: u64::MAX, max_records: u64::MAX, ..Budget::default() };
        assert_eq!(parse_csv("again.csv", &again, &unlimited).expect("a written file parses"), records);
    }
});
