//! kv-server's CSV data-file reader on arbitrary input.
//!
//! Invariants: nothing panics; records that parse and that CSV can carry (write_csv refuses set
//! members that are empty or contain `|`) write back to a file that parses to the same records.
#![no_main]

use kv_server::data::{parse_csv, write_csv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(records) = parse_csv("fuzz.csv", data) else { return };
    let mut again = Vec::new();
    if write_csv(&records, &mut again).is_ok() {
        assert_eq!(parse_csv("again.csv", &again).expect("a written file parses"), records);
    }
});
