//! What one data file may cost to read: its size as stored, what it inflates to and how many
//! records it holds. A file over any limit is rejected whole, like a file that fails to parse, so
//! that a small file cannot make the enclave allocate gigabytes (a deflate bomb) and take the
//! server down on every boot.
//!
//! The defaults are sized for the reference enclave (4 GiB, `ENCLAVE_MEMORY_MIB=4096`): while a
//! file is parsed the enclave holds the file itself (up to [`Budget::max_file_bytes`]), one
//! inflated Avro block (at most 64 MiB) and the records decoded so far (their keys and values,
//! decoded from at most [`Budget::max_inflated_bytes`], plus about 100 bytes of bookkeeping per
//! record, at most [`Budget::max_records`] of them): about 3 GiB at worst, beside the store.
//! Operators with larger enclaves or files raise them (`docs/kv-server.md`).

/// Limits on one data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Largest file, in bytes as stored (compressed, for deflate Avro). The source refuses a
    /// larger object before reading it whole.
    pub max_file_bytes: u64,
    /// The most one file may inflate to: the bytes its records are decoded from, that is its
    /// Avro blocks after deflate (a null-codec block as it is), all blocks together, or the CSV
    /// text.
    pub max_inflated_bytes: u64,
    /// Most records in one file.
    pub max_records: u64,
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

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_inflated_bytes: DEFAULT_MAX_INFLATED_BYTES,
            max_records: DEFAULT_MAX_RECORDS,
        }
    }
}
