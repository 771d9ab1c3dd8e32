//! kv-server's Avro data-file reader (container + FlatBuffers rows) on arbitrary input.
//!
//! Input: an Avro data file; the container magic `Obj\x01` is prepended when the input does not
//! start with it, so that random inputs get past the magic check while the seeds stay real files.
//! Invariants: nothing panics; a file that parses stays within the budget it was parsed with,
//! however far its deflate blocks would inflate ([`crate::inflation::check`]); it re-encodes
//! (write_avro) to a file that parses to the same records.

use kv_server::data::{parse_avro, write_avro};

use crate::inflation::{check, fuzz_budget, unlimited};

const MAGIC: &[u8] = b"Obj\x01";

pub fn run(data: &[u8]) {
    let prefixed;
    let bytes = if data.starts_with(MAGIC) {
        data
    } else {
        prefixed = [MAGIC, data].concat();
        &prefixed[..]
    };
    let budget = fuzz_budget();
    let Ok(records) = parse_avro("fuzz", bytes, &budget) else { return };
    check(&records, &budget);
    let mut again = Vec::new();
    write_avro(&records, &mut again).expect("writing to a Vec cannot fail");
    assert_eq!(parse_avro("again", &again, &unlimited()).expect("a written file parses"), records);
}
