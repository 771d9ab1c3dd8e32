//! kv-server's CSV data-file reader on arbitrary input.
//!
//! Invariants: nothing panics; the records weigh no more than the file
//! ([`crate::inflation::csv_bound`]); records that parse and that CSV can carry (write_csv refuses
//! set members that are empty or contain `|`) write back to a file that parses to the same records.

use kv_server::data::{parse_csv, write_csv};

use crate::inflation::{csv_bound, total_weight};

pub fn run(data: &[u8]) {
    let Ok(records) = parse_csv("fuzz.csv", data) else { return };
    let weight = total_weight(&records);
    assert!(weight <= csv_bound(data.len()), "{} CSV bytes parsed to records of {weight}", data.len());
    let mut again = Vec::new();
    if write_csv(&records, &mut again).is_ok() {
        assert_eq!(parse_csv("again.csv", &again).expect("a written file parses"), records);
    }
}
