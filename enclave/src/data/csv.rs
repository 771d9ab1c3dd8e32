//! CSV data files, as the reference data CLI reads them: a header row naming the columns
//! `key, mutation_type, logical_commit_time, value, value_type` (any order, matched by name),
//! RFC 4180 quoting, string-set members separated by `|` (an empty `value` is the empty set).
//!
//! Errors name the column (or header position), the set member's number and the reason, never
//! what a field held: rejections are logged, and logs leave the enclave.

use std::io::{self, Write};

use super::budget::{check_set_members, memory, memory_exceeded};
use super::{Budget, DataError, Key, Mutation, Record, SET_SEPARATOR, Value};

const COLUMNS: [&str; 5] = ["key", "mutation_type", "logical_commit_time", "value", "value_type"];
const KEY: usize = 0;
const MUTATION_TYPE: usize = 1;
const COMMIT_TIME: usize = 2;
const VALUE: usize = 3;
const VALUE_TYPE: usize = 4;
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

pub(super) fn parse(name: &str, bytes: &[u8], budget: &Budget) -> Result<Vec<Record>, DataError> {
    // CSV is not compressed: its text is what it decodes from.
    if bytes.len() as u64 > budget.max_inflated_bytes {
        return Err(DataError::header(
            name,
            format!(
                "the file is {} bytes of CSV, more than max_file_inflated_bytes ({} bytes)",
                bytes.len(),
                budget.max_inflated_bytes
            ),
        ));
    }
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut row = csv::ByteRecord::new();
    let header_err = |reason: String| DataError { line: Some(1), ..DataError::header(name, reason) };
    match reader.read_byte_record(&mut row) {
        Ok(true) => {}
        Ok(false) => return Err(header_err("empty file: no header row".into())),
        Err(e) => return Err(header_err(format!("header row: {e}"))),
    }
    let index = column_index(&row).map_err(header_err)?;

    // The memory of the keys and values decoded so far: one-byte members take 24 bytes and more.
    let mut in_memory = 0u64;
    // Rows are about 1/2 to 1/10 of a 200-byte line; a cheap guess that avoids regrowth.
    let mut records = Vec::with_capacity(
        (bytes.len() / 128).min(usize::try_from(budget.max_records).unwrap_or(usize::MAX)),
    );
    loop {
        let number = records.len() as u64 + 1;
        // The csv crate's line numbers skip line breaks inside quoted fields, and its byte offset
        // of a record may point at the previous record's line end (CRLF, blank lines): count the
        // line breaks up to the record's first byte instead (only on the error path).
        let line_at = |pos: Option<&csv::Position>| {
            pos.map(|p| {
                let mut start = usize::try_from(p.byte()).unwrap_or(usize::MAX).min(bytes.len());
                while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
                    start += 1;
                }
                bytes[..start].iter().filter(|&&b| b == b'\n').count() as u64 + 1
            })
        };
        let line = |row: &csv::ByteRecord| line_at(row.position());
        let at_row = |row: &csv::ByteRecord, reason: String| DataError {
            file: name.to_owned(),
            record: Some(number),
            line: line(row),
            reason,
        };
        match reader.read_byte_record(&mut row) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = line_at(e.position());
                return Err(DataError { line, ..DataError::record(name, number, format!("CSV: {e}")) });
            }
        }
        if number > budget.max_records {
            return Err(at_row(&row, format!("more than max_file_records ({}) records", budget.max_records)));
        }
        if row.len() != COLUMNS.len() {
            let what = if row.len() < COLUMNS.len() { "missing column(s)" } else { "extra column(s)" };
            return Err(at_row(
                &row,
                format!("{what}: {} fields, the header has {}", row.len(), COLUMNS.len()),
            ));
        }
        let fields: [&[u8]; 5] = index.map(|i| &row[i]);
        let record = parse_row(&fields, budget.max_set_members).map_err(|reason| at_row(&row, reason))?;
        in_memory = in_memory.saturating_add(memory(&record));
        if in_memory > budget.max_inflated_bytes {
            return Err(at_row(&row, memory_exceeded(budget)));
        }
        records.push(record);
    }
    Ok(records)
}

/// For each of [`COLUMNS`], its position in the header.
fn column_index(header: &csv::ByteRecord) -> Result<[usize; 5], String> {
    let mut index = [usize::MAX; 5];
    // A file without its header row has a data row here: name positions, not what they hold.
    for (pos, raw) in header.iter().enumerate() {
        let name = String::from_utf8_lossy(raw);
        let name = name.trim();
        match COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(name)) {
            Some(c) if index[c] == usize::MAX => index[c] = pos,
            Some(c) => return Err(format!("header: column {} repeats {}", pos + 1, COLUMNS[c])),
            None => {
                return Err(format!(
                    "header: column {} is not a known column name (expected {})",
                    pos + 1,
                    COLUMNS.join(",")
                ));
            }
        }
    }
    let missing: Vec<&str> =
        COLUMNS.iter().zip(index).filter(|(_, i)| *i == usize::MAX).map(|(c, _)| *c).collect();
    if !missing.is_empty() {
        return Err(format!(
            "header: missing column(s) {} (expected {})",
            missing.join(","),
            COLUMNS.join(",")
        ));
    }
    Ok(index)
}

fn utf8<'a>(field: &'a [u8], column: &str) -> Result<&'a str, String> {
    std::str::from_utf8(field).map_err(|e| format!("{column}: invalid UTF-8: {e}"))
}

fn parse_row(f: &[&[u8]; 5], max_set_members: u64) -> Result<Record, String> {
    let key = utf8(f[KEY], "key")?;
    if key.is_empty() {
        return Err("empty key".into());
    }
    let time = utf8(f[COMMIT_TIME], "logical_commit_time")?;
    let logical_commit_time =
        time.trim().parse::<i64>().map_err(|_| "logical_commit_time is not a 64-bit integer".to_owned())?;
    let mutation = utf8(f[MUTATION_TYPE], "mutation_type")?;
    let value_type = utf8(f[VALUE_TYPE], "value_type")?;
    let mutation = if mutation.eq_ignore_ascii_case("update") {
        Mutation::Update(parse_value(f[VALUE], value_type, max_set_members)?)
    } else if mutation.eq_ignore_ascii_case("delete") {
        // A delete removes the key; its value (if any) must still be well-formed.
        if !value_type.is_empty() {
            parse_value(f[VALUE], value_type, max_set_members)?;
        }
        Mutation::Delete
    } else {
        return Err("mutation_type is unknown (expected UPDATE or DELETE)".to_owned());
    };
    Ok(Record { key: Key::from(key), logical_commit_time, mutation })
}

fn parse_value(raw: &[u8], value_type: &str, max_set_members: u64) -> Result<Value, String> {
    let value = utf8(raw, "value")?;
    let is_set =
        ["string_set", "uint32_set", "uint64_set"].iter().any(|t| value_type.eq_ignore_ascii_case(t));
    if is_set && !value.is_empty() {
        let count = value.bytes().filter(|&b| b == SET_SEPARATOR as u8).count() as u64 + 1;
        check_set_members(count, max_set_members)?;
    }
    let members = || -> Box<dyn Iterator<Item = &str>> {
        if value.is_empty() { Box::new(std::iter::empty()) } else { Box::new(value.split(SET_SEPARATOR)) }
    };
    // Number sets become string sets of canonical decimals, as the binary format's are read.
    let numbers = |max: u64, kind: &str| -> Result<Value, String> {
        members()
            .enumerate()
            .map(|(i, m)| match m.trim().parse::<u64>() {
                Ok(n) if n <= max => Ok(n.to_string()),
                _ => Err(format!("value: set member {} is not a {kind}", i + 1)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::StringSet)
    };
    if value_type.eq_ignore_ascii_case("string") {
        Ok(Value::String(value.to_owned()))
    } else if value_type.eq_ignore_ascii_case("string_set") {
        Ok(Value::StringSet(members().map(str::to_owned).collect()))
    } else if value_type.eq_ignore_ascii_case("uint32_set") {
        numbers(u32::MAX.into(), "uint32")
    } else if value_type.eq_ignore_ascii_case("uint64_set") {
        numbers(u64::MAX, "uint64")
    } else {
        Err("value_type is unknown (expected string, string_set, uint32_set or uint64_set; number sets are \
             read as string sets)"
            .to_owned())
    }
}

pub(super) fn write(records: &[Record], out: &mut impl Write) -> io::Result<()> {
    let mut w = csv::WriterBuilder::new().from_writer(out);
    w.write_record(COLUMNS).map_err(io_error)?;
    let mut joined = String::new();
    let mut time = String::new();
    for (number, r) in records.iter().enumerate() {
        time.clear();
        use std::fmt::Write as _;
        let _ = write!(time, "{}", r.logical_commit_time);
        let (mutation, value, value_type) = match &r.mutation {
            Mutation::Update(Value::String(s)) => ("UPDATE", s.as_str(), "string"),
            Mutation::Update(Value::StringSet(members)) => {
                joined.clear();
                for (i, m) in members.iter().enumerate() {
                    if m.is_empty() || m.contains(SET_SEPARATOR) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "record {}: set member {} cannot be written to CSV (empty, or contains the \
                                 separator {SET_SEPARATOR:?}); use the Avro format",
                                number + 1,
                                i + 1
                            ),
                        ));
                    }
                    if i > 0 {
                        joined.push(SET_SEPARATOR);
                    }
                    joined.push_str(m);
                }
                ("UPDATE", joined.as_str(), "string_set")
            }
            Mutation::Delete => ("DELETE", "", "string"),
        };
        let mut row = [""; 5];
        row[KEY] = &r.key;
        row[MUTATION_TYPE] = mutation;
        row[COMMIT_TIME] = &time;
        row[VALUE] = value;
        row[VALUE_TYPE] = value_type;
        w.write_record(row).map_err(io_error)?;
    }
    w.flush()
}

/// Keeps the kind of an I/O error (a closed pipe stays `BrokenPipe`) instead of the csv crate's
/// conversion, which makes every error `Other`.
fn io_error(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        kind => io::Error::other(format!("CSV: {kind:?}")),
    }
}
