//! Data files: names (`SNAPSHOT_`/`DELTA_` + 16 digits), records, and the two file formats.
//!
//! - [`parse_file`] reads a whole file: an Avro Object Container whose rows are FlatBuffers
//!   `DataRecord`s (the reference server's binary format, schema in `enclave/schema/data_loading.fbs`)
//!   or, when the Avro magic is absent, CSV with the reference data CLI's columns.
//! - [`write_avro`] / [`write_csv`] produce the same formats.
//!
//! Every parser here takes untrusted bytes: failures are [`DataError`]s naming the file, the
//! record (and CSV line), the field and the reason, never a field's content (rejections are
//! logged, and logs leave the enclave); nothing panics and no allocation is sized by a length
//! field before that length is checked against the bytes that remain.
//! Format details and operator workflow: `docs/data-files.md`.

mod avro;
mod budget;
mod csv;
mod flatbuf;
#[cfg(test)]
mod flatc_tests;
mod name;
#[cfg(test)]
mod tests;

pub use budget::{
    Budget, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_INFLATED_BYTES, DEFAULT_MAX_RECORDS, DEFAULT_MAX_SET_MEMBERS,
};
pub use name::{DataFileName, FileKind};

use std::fmt;
use std::io;

/// The value stored under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    String(String),
    StringSet(Vec<String>),
}

/// What a record does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Update(Value),
    /// Removes the key (the whole value, whatever a source file carried as the delete's value).
    Delete,
}

/// A record's key: up to 24 bytes are held inline (no allocation), and the store keeps it as it
/// is, in its hash map's bucket (see `store.rs`).
pub type Key = compact_str::CompactString;

/// One row of a data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Key,
    pub logical_commit_time: i64,
    pub mutation: Mutation,
}

/// Why a data file was rejected. `Display` reads
/// `FILE: record N (line L): REASON`, `FILE: record N: REASON` or `FILE: REASON` (header errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    /// The file (path or object key) as the caller named it.
    pub file: String,
    /// 1-based record number, when the error belongs to a record.
    pub record: Option<u64>,
    /// 1-based line (CSV only).
    pub line: Option<u64>,
    pub reason: String,
}

impl DataError {
    pub(crate) fn header(file: &str, reason: impl Into<String>) -> DataError {
        DataError { file: file.to_owned(), record: None, line: None, reason: reason.into() }
    }

    pub(crate) fn record(file: &str, record: u64, reason: impl Into<String>) -> DataError {
        DataError { file: file.to_owned(), record: Some(record), line: None, reason: reason.into() }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        match (self.record, self.line) {
            (Some(r), Some(l)) => write!(f, "record {r} (line {l}): ")?,
            (Some(r), None) => write!(f, "record {r}: ")?,
            (None, Some(l)) => write!(f, "line {l}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for DataError {}

/// The two on-disk formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Avro,
    Csv,
}

/// Which format `bytes` are in: Avro when they start with the container magic `Obj\x01`.
pub fn detect_format(bytes: &[u8]) -> Format {
    if bytes.starts_with(&avro::MAGIC) { Format::Avro } else { Format::Csv }
}

/// Parses a whole data file within the default [`Budget`]. `name` is only used in error messages.
pub fn parse_file(name: &str, bytes: &[u8]) -> Result<Vec<Record>, DataError> {
    parse_file_with(name, bytes, &Budget::default())
}

/// Parses a whole data file; a file over `budget` is rejected with an error naming the limit.
pub fn parse_file_with(name: &str, bytes: &[u8], budget: &Budget) -> Result<Vec<Record>, DataError> {
    match detect_format(bytes) {
        Format::Avro => avro::parse(name, bytes, budget),
        Format::Csv => csv::parse(name, bytes, budget),
    }
}

/// Parses `bytes` as an Avro container of FlatBuffers records, whatever they start with.
pub fn parse_avro(name: &str, bytes: &[u8], budget: &Budget) -> Result<Vec<Record>, DataError> {
    avro::parse(name, bytes, budget)
}

/// Parses `bytes` as CSV, whatever they start with.
pub fn parse_csv(name: &str, bytes: &[u8], budget: &Budget) -> Result<Vec<Record>, DataError> {
    csv::parse(name, bytes, budget)
}

/// Writes `records` as an Avro Object Container (codec null) of FlatBuffers `DataRecord` rows.
pub fn write_avro(records: &[Record], out: &mut impl io::Write) -> io::Result<()> {
    avro::write(records, out)
}

/// Writes `records` as CSV with a header row. Fails (`InvalidInput`, naming the record and member) for a
/// set member that CSV cannot carry: one containing the separator `|`, or an empty member.
pub fn write_csv(records: &[Record], out: &mut impl io::Write) -> io::Result<()> {
    csv::write(records, out)
}

/// The separator between string-set members in the CSV `value` column.
pub const SET_SEPARATOR: char = '|';
