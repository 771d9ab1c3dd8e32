//! kv-server's Avro data-file reader (container + FlatBuffers rows) on arbitrary input.
//!
//! Input: the bytes after the container magic `Obj\x01` (prepended here so that every run gets
//! past the magic check). Invariants: nothing panics; a file that parses re-encodes (write_avro)
//! to a file that parses to the same records.
#![no_main]

use kv_server::data::{parse_avro, write_avro};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = b"Obj\x01".to_vec();
    bytes.extend_from_slice(data);
    let Ok(records) = parse_avro("fuzz", &bytes) else { return };
    let mut again = Vec::new();
    write_avro(&records, &mut again).expect("writing to a Vec cannot fail");
    assert_eq!(parse_avro("again", &again).expect("a written file parses"), records);
});
