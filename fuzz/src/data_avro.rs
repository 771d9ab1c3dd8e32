//! kv-server's Avro data-file reader (container + FlatBuffers rows) on arbitrary input.
//!
//! Input: an Avro data file; the container magic `Obj\x01` is prepended when the input does not
//! start with it, so that random inputs get past the magic check while the seeds stay real files.
//! Invariants: nothing panics; the records weigh no more than the inflation budget
//! ([`crate::inflation::avro_bound`]); a file that parses re-encodes (write_avro) to a file that
//! parses to the same records.

use kv_server::data::{parse_avro, write_avro};

use crate::inflation::{avro_bound, total_weight};

const MAGIC: &[u8] = b"Obj\x01";

pub fn run(data: &[u8]) {
    let prefixed;
    let bytes = if data.starts_with(MAGIC) {
        data
    } else {
        prefixed = [MAGIC, data].concat();
        &prefixed[..]
    };
    let Ok(records) = parse_avro("fuzz", bytes) else { return };
    let weight = total_weight(&records);
    assert!(weight <= avro_bound(bytes), "{} Avro bytes parsed to records of {weight}", bytes.len());
    let mut again = Vec::new();
    write_avro(&records, &mut again).expect("writing to a Vec cannot fail");
    assert_eq!(parse_avro("again", &again).expect("a written file parses"), records);
}
