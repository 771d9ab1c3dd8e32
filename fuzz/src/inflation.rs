//! The inflation budget of the data readers: how much a parsed file may hold, measured against
//! the bytes it was parsed from.
//!
//! A record's [`weight`] is its key's bytes plus its value's: a string's bytes, or for a set each
//! member's bytes plus one (an empty member still costs an allocation, so a set of a million
//! empty members is not free). The bounds below follow from the readers' documented limits:
//!
//! - CSV: every record's fields are distinct bytes of the file, a set's members are its `value`
//!   split at `|` (members + separators = the field, so the weight of a value is at most its
//!   length + 1, and a row has four commas besides), and number sets are written back in
//!   canonical decimal, never longer than they were spelled. So the records weigh at most the file.
//! - Avro: a record is decoded from one datum of `d` bytes. Its key and a string value are strings
//!   inside the datum (at most `d` each, even when offsets alias one string); a string set's
//!   members total at most `d` bytes (the reader's aliasing budget, enclave/src/data/flatbuf.rs)
//!   and there are at most `d / 4` of them (one 4-byte offset each); a uint32 (uint64) set has at
//!   most `d / 4` (`d / 8`) members of at most 10 (20) decimal digits. So a record weighs at most
//!   `d + 2.75 d` < [`AVRO_AMPLIFICATION`] `* d`, and the datums are the blocks' bytes: the file
//!   itself for the null codec, and for deflate what the blocks inflate to, which is at most
//!   [`MAX_INFLATED_BLOCK`] per block and at most [`DEFLATE_MAX_RATIO`] times the compressed bytes.

use kv_server::data::{Mutation, Record, Value};

/// The most one deflate block may inflate to: enclave/src/data/avro.rs `MAX_INFLATED_BLOCK`,
/// which is private to the reader, repeated here.
pub const MAX_INFLATED_BLOCK: u64 = 64 * 1024 * 1024;
/// The most raw deflate (RFC 1951) can expand: a 258-byte match coded in 2 bits.
pub const DEFLATE_MAX_RATIO: u64 = 1032;
/// Bound of a record's weight per byte of the datum it was decoded from (see the module docs).
pub const AVRO_AMPLIFICATION: u64 = 4;
/// The smallest Avro block: a 1-byte count, a 1-byte size and the 16-byte sync marker.
const MIN_AVRO_BLOCK: u64 = 18;

/// The bytes a record holds (see the module docs).
pub fn weight(record: &Record) -> u64 {
    let value = match &record.mutation {
        Mutation::Delete => 0,
        Mutation::Update(Value::String(s)) => s.len(),
        Mutation::Update(Value::StringSet(members)) => members.iter().map(|m| m.len() + 1).sum(),
    };
    (record.key.len() + value) as u64
}

pub fn total_weight(records: &[Record]) -> u64 {
    records.iter().map(weight).sum()
}

/// The most that the records parsed from a CSV file of `file_len` bytes may weigh.
pub fn csv_bound(file_len: usize) -> u64 {
    file_len as u64
}

/// The most that the records parsed from an Avro file may weigh. A file that does not name the
/// deflate codec is read with the null codec, whose blocks are the file's own bytes.
pub fn avro_bound(file: &[u8]) -> u64 {
    let len = file.len() as u64;
    let names_deflate = file.windows(b"deflate".len()).any(|w| w == b"deflate");
    let datum_bytes = if names_deflate {
        let blocks = len / MIN_AVRO_BLOCK + 1;
        (DEFLATE_MAX_RATIO * len).min(blocks.saturating_mul(MAX_INFLATED_BLOCK))
    } else {
        len
    };
    AVRO_AMPLIFICATION * datum_bytes
}
