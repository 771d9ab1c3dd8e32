//! What one data file may cost to read: its size as stored, what it inflates to (in bytes and in
//! memory), how many records and set members it holds. A file over any limit is rejected whole,
//! like a file that fails to parse, so that a small file cannot make the enclave allocate
//! gigabytes (a deflate bomb, sets of aliased or number members) and take the server down on
//! every boot.
//!
//! The defaults are sized for the reference enclave (4 GiB, `ENCLAVE_MEMORY_MIB=4096`): while a
//! file is parsed the enclave holds the file itself (up to [`Budget::max_file_bytes`]), one
//! inflated Avro block (at most 64 MiB) and the records decoded so far (their keys and values,
//! at most [`Budget::max_inflated_bytes`] in memory, plus about 100 bytes of bookkeeping per
//! record, at most [`Budget::max_records`] of them): about 3 GiB at worst, beside the store.
//! Operators with larger enclaves or files raise them (`docs/kv-server.md`).

use super::{Mutation, Record, Value};

/// Limits on one data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Largest file, in bytes as stored (compressed, for deflate Avro). The source refuses a
    /// larger object before reading it whole.
    pub max_file_bytes: u64,
    /// The most one file may inflate to, counted two ways, each of which must stay within it:
    /// the bytes its records are decoded from (its Avro blocks after deflate, a null-codec block
    /// as it is, all blocks together; or the CSV text), and the memory its decoded keys and
    /// values take, where each set member costs [`MEMBER_OVERHEAD`] bytes besides its text (so
    /// that number sets, whose members become decimal strings, and CSV sets of one-byte members
    /// cannot take many times the file's bytes).
    pub max_inflated_bytes: u64,
    /// Most records in one file.
    pub max_records: u64,
    /// Most members of one set value (a string or a number set).
    pub max_set_members: u64,
}

/// 1 GiB: the whole file is in memory while it is parsed, next to what it decodes to.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;
/// 1 GiB: a null-codec Avro or a CSV file of the largest size decodes to about this much; only a
/// deflate file inflates beyond its size, and a deflate bomb (1000:1) stops here.
pub const DEFAULT_MAX_INFLATED_BYTES: u64 = 1 << 30;
/// 10 million: each record costs about 100 bytes besides its key and value (the record itself,
/// the key's allocation), so this bounds that bookkeeping to about 1 GiB. A 4 GiB enclave holds
/// about that many keys with 100-byte values.
pub const DEFAULT_MAX_RECORDS: u64 = 10_000_000;
/// 100,000: a v2 answer is at most 2 MiB, so a much larger set could not be returned anyway.
pub const DEFAULT_MAX_SET_MEMBERS: u64 = 100_000;

/// What a set member costs in memory besides its text: the `String` that holds it (24 bytes).
pub const MEMBER_OVERHEAD: u64 = std::mem::size_of::<String>() as u64;

/// How many times its record's bytes a FlatBuffers string set may take in memory. A member that
/// no other shares takes at least 9 bytes of the record (offset, length, NUL) besides its text,
/// so honest sets stay under 3x; members whose offsets alias one string take 4 bytes each.
pub const SET_MEMORY_FACTOR: u64 = 4;

/// The memory `record`'s key and value take, as charged against [`Budget::max_inflated_bytes`].
pub(super) fn memory(record: &Record) -> u64 {
    let value = match &record.mutation {
        Mutation::Update(Value::String(s)) => s.len() as u64,
        Mutation::Update(Value::StringSet(members)) => {
            members.iter().map(|m| MEMBER_OVERHEAD + m.len() as u64).sum()
        }
        Mutation::Delete => 0,
    };
    record.key.len() as u64 + value
}

/// The reason for a file whose keys and values take more memory than its budget.
pub(super) fn memory_exceeded(budget: &Budget) -> String {
    format!(
        "the keys and values so far take more than max_file_inflated_bytes ({} bytes) in memory (a set \
         member counts {MEMBER_OVERHEAD} bytes besides its text)",
        budget.max_inflated_bytes
    )
}

/// Refuses a set of `members` members over `max` before anything is allocated for them.
pub(super) fn check_set_members(members: u64, max: u64) -> Result<(), String> {
    if members > max {
        return Err(format!("value: set of {members} members, more than max_set_members ({max})"));
    }
    Ok(())
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_inflated_bytes: DEFAULT_MAX_INFLATED_BYTES,
            max_records: DEFAULT_MAX_RECORDS,
            max_set_members: DEFAULT_MAX_SET_MEMBERS,
        }
    }
}
