//! kv-server's CSV data-file reader on arbitrary input.
//!
//! Invariants: nothing panics; a file over the budget's text size is refused; a file that parses
//! stays within the budget ([`crate::inflation::check`]) and its records weigh no more than the
//! file ([`crate::inflation::weight`]); records that parse and that CSV can carry (write_csv
//! refuses set members that are empty or contain `|`) write back to a file that parses to the
//! same records.

use kv_server::data::{parse_csv, write_csv};

use crate::inflation::{check, fuzz_budget, unlimited, weight};

pub fn run(data: &[u8]) {
    let budget = fuzz_budget();
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
    check(&records, &budget);
    let total: u64 = records.iter().map(weight).sum();
    assert!(total <= data.len() as u64, "{} CSV bytes parsed to records of {total}", data.len());
    let mut again = Vec::new();
    if write_csv(&records, &mut again).is_ok() {
        assert_eq!(parse_csv("again.csv", &again, &unlimited()).expect("a written file parses"), records);
    }
}
