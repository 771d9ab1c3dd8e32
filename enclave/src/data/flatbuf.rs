//! One FlatBuffers `DataRecord` (schema: `enclave/schema/data_loading.fbs`) <-> [`Record`], through
//! the code that flatc generates from the schema (crate `kv-data-format`, kept equal to flatc's
//! output by its drift test).
//!
//! Rows are untrusted. Each is checked whole by the `flatbuffers` verifier before any generated
//! accessor follows an offset, with limits for one row: the schema nests three tables, and the
//! verifier may visit no more than [`SET_MEMORY_FACTOR`] times the row's bytes (offsets that alias
//! one string many times would otherwise make it, and the copy out, do that much work again per
//! alias). What the schema cannot say is checked here after it: the record kind, a non-empty key,
//! the set caps, and how much memory a string set's members take.

use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer, VerifierOptions, WIPOffset};
use kv_data_format as fb;

use super::budget::{MEMBER_OVERHEAD, SET_MEMORY_FACTOR, check_set_members};
use super::{Key, Mutation, Record, Value};

/// DataRecord > KeyValueMutationRecord > the value's table: three deep.
const MAX_DEPTH: usize = 4;
/// The three tables of a record, and room for the two of a UDF or shard record's union.
const MAX_TABLES: usize = 8;

/// Builds `DataRecord` buffers, reusing one builder.
pub(super) struct Encoder {
    fbb: FlatBufferBuilder<'static>,
}

impl Encoder {
    pub(super) fn new() -> Encoder {
        Encoder { fbb: FlatBufferBuilder::with_capacity(1024) }
    }

    /// The serialized `DataRecord` for `record`; valid until the next call.
    pub(super) fn encode(&mut self, record: &Record) -> &[u8] {
        let fbb = &mut self.fbb;
        fbb.reset();
        let key = fbb.create_string(&record.key);
        // The reference requires a value on every record, deletes included: a delete carries
        // an empty string value.
        let (value_type, value) = match &record.mutation {
            Mutation::Update(Value::String(s)) => (fb::Value::StringValue, string_value(fbb, s)),
            Mutation::Update(Value::StringSet(members)) => {
                let offsets: Vec<WIPOffset<&str>> = members.iter().map(|m| fbb.create_string(m)).collect();
                let value = Some(fbb.create_vector(&offsets));
                (
                    fb::Value::StringSet,
                    fb::StringSet::create(fbb, &fb::StringSetArgs { value }).as_union_value(),
                )
            }
            Mutation::Delete => (fb::Value::StringValue, string_value(fbb, "")),
        };
        let mutation_type = match record.mutation {
            Mutation::Update(_) => fb::KeyValueMutationType::Update,
            Mutation::Delete => fb::KeyValueMutationType::Delete,
        };
        let kv = fb::KeyValueMutationRecord::create(
            fbb,
            &fb::KeyValueMutationRecordArgs {
                mutation_type,
                logical_commit_time: record.logical_commit_time,
                key: Some(key),
                value_type,
                value: Some(value),
            },
        );
        let root = fb::DataRecord::create(
            fbb,
            &fb::DataRecordArgs {
                record_type: fb::Record::KeyValueMutationRecord,
                record: Some(kv.as_union_value()),
            },
        );
        fb::finish_data_record_buffer(fbb, root);
        fbb.finished_data()
    }
}

fn string_value(fbb: &mut FlatBufferBuilder<'static>, s: &str) -> WIPOffset<flatbuffers::UnionWIPOffset> {
    let value = Some(fbb.create_string(s));
    fb::StringValue::create(fbb, &fb::StringValueArgs { value }).as_union_value()
}

/// [`decode_within`] with no cap on set members.
#[cfg(test)]
pub(super) fn decode(buf: &[u8]) -> Result<Record, String> {
    decode_within(buf, u64::MAX)
}

/// Decodes and verifies one serialized `DataRecord`, whose sets may have at most
/// `max_set_members` members. The error is the reason only.
pub(super) fn decode_within(buf: &[u8], max_set_members: u64) -> Result<Record, String> {
    let opts = VerifierOptions {
        max_depth: MAX_DEPTH,
        max_tables: MAX_TABLES,
        max_apparent_size: buf.len().saturating_mul(SET_MEMORY_FACTOR as usize),
        ignore_missing_null_terminator: false,
    };
    let root = fb::root_as_data_record_with_opts(&opts, buf).map_err(|e| invalid(&e, buf.len()))?;
    match root.record_type() {
        fb::Record::KeyValueMutationRecord => {}
        fb::Record::NONE => return Err("record not set (DataRecord.record_type is NONE)".into()),
        fb::Record::UserDefinedFunctionsConfig => {
            return Err("record is a UserDefinedFunctionsConfig; kv-server loads only \
                        KeyValueMutationRecords (it runs no user-defined functions)"
                .into());
        }
        fb::Record::ShardMappingRecord => {
            return Err("record is a ShardMappingRecord; kv-server loads only KeyValueMutationRecords".into());
        }
        t => return Err(format!("unknown record type {} (DataRecord.record_type)", t.0)),
    }
    let kv =
        root.record_as_key_value_mutation_record().ok_or("record not set (DataRecord.record missing)")?;
    let key = kv.key().ok_or("key not set")?;
    if key.is_empty() {
        return Err("empty key".into());
    }
    // A delete's value is verified too (a corrupt row is corrupt whatever its type) but unused.
    let value = match kv.value_type() {
        fb::Value::NONE => None,
        t => Some(value(&kv, t, buf.len(), max_set_members)?),
    };
    let mutation = match kv.mutation_type() {
        fb::KeyValueMutationType::Update => Mutation::Update(value.ok_or("update without a value")?),
        fb::KeyValueMutationType::Delete => Mutation::Delete,
        m => return Err(format!("unknown mutation type {}", m.0)),
    };
    Ok(Record { key: Key::from(key), logical_commit_time: kv.logical_commit_time(), mutation })
}

fn value(
    kv: &fb::KeyValueMutationRecord<'_>,
    value_type: fb::Value,
    row_len: usize,
    max_set_members: u64,
) -> Result<Value, String> {
    match value_type {
        fb::Value::StringValue => {
            let s = kv.value_as_string_value().and_then(|v| v.value()).ok_or("StringValue value not set")?;
            Ok(Value::String(s.to_owned()))
        }
        fb::Value::StringSet => {
            let set = kv.value_as_string_set().and_then(|v| v.value()).ok_or("StringSet value not set")?;
            check_set_members(set.len() as u64, max_set_members)?;
            let mut members = Vec::with_capacity(set.len());
            // Offsets may alias one string many times over: copying the members out of the
            // buffer must not turn a small row into gigabytes. Their bytes are bounded by the
            // row's size (set members are distinct, so real writers never share them), and
            // their memory, a `String` each, by SET_MEMORY_FACTOR times it (empty members
            // aliasing one empty string have no bytes but 24 bytes of memory each).
            let mut bytes_left = row_len;
            let mut memory_left = SET_MEMORY_FACTOR * row_len as u64;
            for (i, s) in set.iter().enumerate() {
                bytes_left = bytes_left.checked_sub(s.len()).ok_or_else(|| {
                    format!(
                        "value: set members total more bytes than the record holds (aliased strings, at \
                         member {})",
                        i + 1
                    )
                })?;
                memory_left = memory_left.checked_sub(MEMBER_OVERHEAD + s.len() as u64).ok_or_else(|| {
                    format!(
                        "value: set members would take more than {SET_MEMORY_FACTOR} times the record's \
                         {row_len} bytes in memory (aliased strings, at member {})",
                        i + 1
                    )
                })?;
                members.push(s.to_owned());
            }
            Ok(Value::StringSet(members))
        }
        // kv-server values are strings: number sets become sets of decimal strings. They
        // cannot alias; what their decimals cost in memory counts against the file's budget.
        fb::Value::UInt32Set => {
            let set = kv.value_as_uint_32_set().and_then(|v| v.value()).ok_or("UInt32Set value not set")?;
            check_set_members(set.len() as u64, max_set_members)?;
            Ok(Value::StringSet(set.iter().map(|n| n.to_string()).collect()))
        }
        fb::Value::UInt64Set => {
            let set = kv.value_as_uint_64_set().and_then(|v| v.value()).ok_or("UInt64Set value not set")?;
            check_set_members(set.len() as u64, max_set_members)?;
            Ok(Value::StringSet(set.iter().map(|n| n.to_string()).collect()))
        }
        t => Err(format!("unknown value type {}", t.0)),
    }
}

/// The reason for a row the verifier refused: the field it concerns (from the verifier's trace,
/// innermost field; `set member N` for an element of a string set) and what is wrong, never the
/// bytes themselves.
fn invalid(e: &InvalidFlatbuffer, row_len: usize) -> String {
    use flatbuffers::ErrorTraceDetail as Detail;
    let (trace, what) = match e {
        InvalidFlatbuffer::Utf8Error { error, error_trace, .. } => {
            (error_trace, format!("invalid UTF-8: {error}"))
        }
        InvalidFlatbuffer::MissingNullTerminator { error_trace, .. } => {
            (error_trace, "string lacks its terminating NUL".to_owned())
        }
        InvalidFlatbuffer::RangeOutOfBounds { range, error_trace } => (
            error_trace,
            format!("bytes {}..{} lie past the end of the {row_len}-byte record", range.start, range.end),
        ),
        InvalidFlatbuffer::SignedOffsetOutOfBounds { soffset, position, error_trace } => {
            (error_trace, format!("vtable offset {soffset} at {position} points outside the record"))
        }
        InvalidFlatbuffer::Unaligned { position, unaligned_type, error_trace } => {
            let ty = unaligned_type.rsplit("::").next().unwrap_or(unaligned_type);
            (error_trace, format!("offset {position} is not aligned for {ty}"))
        }
        // The crate fills `field` with the union's type field and `field_type` with its value field.
        InvalidFlatbuffer::InconsistentUnion { field, field_type, error_trace } => {
            (error_trace, format!("{field} and {field_type} must be both set or both absent"))
        }
        InvalidFlatbuffer::MissingRequiredField { required, error_trace } => {
            (error_trace, format!("required field {required} missing"))
        }
        InvalidFlatbuffer::TooManyTables => return format!("more than {MAX_TABLES} tables"),
        InvalidFlatbuffer::DepthLimitReached => return format!("tables nested deeper than {MAX_DEPTH}"),
        InvalidFlatbuffer::ApparentSizeTooLarge => {
            return format!(
                "its offsets reach more than {SET_MEMORY_FACTOR} times the record's {row_len} bytes (aliased \
                 strings or vectors)"
            );
        }
    };
    // The trace runs from the innermost detail outwards.
    let mut member = None;
    for detail in trace.as_ref() {
        match detail {
            Detail::VectorElement { index, .. } if member.is_none() => member = Some(index + 1),
            Detail::TableField { field_name, .. } => {
                return match member {
                    Some(m) => format!("{field_name}: set member {m}: {what}"),
                    None => format!("{field_name}: {what}"),
                };
            }
            _ => {}
        }
    }
    what
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(key: &str, t: i64, v: Value) -> Record {
        Record { key: key.into(), logical_commit_time: t, mutation: Mutation::Update(v) }
    }

    #[test]
    fn round_trips_strings_sets_and_deletes() {
        let mut enc = Encoder::new();
        for r in [
            update("k", 5, Value::String("v".into())),
            update("k2", -3, Value::String(String::new())),
            update("set", i64::MAX, Value::StringSet(vec!["a".into(), "".into(), "ü|x".into()])),
            update("empty-set", 0, Value::StringSet(vec![])),
            Record { key: "gone".into(), logical_commit_time: 9, mutation: Mutation::Delete },
        ] {
            let bytes = enc.encode(&r).to_vec();
            assert_eq!(decode(&bytes), Ok(r));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut enc = Encoder::new();
        let r = update("key", 1, Value::StringSet(vec!["a".into(), "bb".into()]));
        let bytes = enc.encode(&r).to_vec();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }

    #[test]
    fn every_single_byte_corruption_is_an_error_or_a_record() {
        let mut enc = Encoder::new();
        let r = update("key", 1, Value::StringSet(vec!["a".into(), "bb".into()]));
        let bytes = enc.encode(&r).to_vec();
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = decode(&b);
            }
        }
    }

    #[test]
    fn aliased_set_members_cannot_amplify_a_record() {
        let mut enc = Encoder::new();
        let big = "x".repeat(1000);
        let bytes = enc.encode(&update("k", 1, Value::StringSet(vec![big, "y".into()]))).to_vec();
        assert!(decode(&bytes).is_ok());
        // Point the second member's offset at the first member's string: the decoded total
        // (2000 bytes) now exceeds the buffer (about 1100 bytes).
        let root = fb::root_as_data_record(&bytes).unwrap();
        let set = root.record_as_key_value_mutation_record().unwrap().value_as_string_set().unwrap();
        // The vector's offsets, as positions in `bytes`.
        let first_slot = set.value().unwrap().bytes().as_ptr() as usize - bytes.as_ptr() as usize;
        let first =
            first_slot + u32::from_le_bytes(bytes[first_slot..first_slot + 4].try_into().unwrap()) as usize;
        let second_slot = first_slot + 4;
        let mut aliased = bytes.clone();
        if first > second_slot {
            let rel = u32::try_from(first - second_slot).unwrap();
            aliased[second_slot..second_slot + 4].copy_from_slice(&rel.to_le_bytes());
        } else {
            panic!("the builder put the first member before the vector; adjust the test");
        }
        let err = decode(&aliased).unwrap_err();
        assert!(err.contains("aliased strings, at member 2"), "{err}");
    }

    #[test]
    fn rejects_non_utf8_key() {
        let mut enc = Encoder::new();
        let bytes = enc.encode(&update("k\u{e9}", 1, Value::String("v".into()))).to_vec();
        let i = bytes.windows(2).position(|w| w == [0xc3, 0xa9]).unwrap();
        let mut b = bytes.clone();
        b[i] = 0xff;
        let err = decode(&b).unwrap_err();
        assert!(err.starts_with("key: invalid UTF-8"), "{err}");
    }

    /// A `DataRecord` updating `k` with `value_type` and `value` as given, built with the generated
    /// builders (so it can say what no honest writer would).
    fn row(
        build: impl FnOnce(
            &mut FlatBufferBuilder<'static>,
        ) -> (fb::Value, Option<WIPOffset<flatbuffers::UnionWIPOffset>>),
    ) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        let key = Some(fbb.create_string("k"));
        let (value_type, value) = build(&mut fbb);
        let kv = fb::KeyValueMutationRecord::create(
            &mut fbb,
            &fb::KeyValueMutationRecordArgs { key, value_type, value, ..Default::default() },
        );
        let root = fb::DataRecord::create(
            &mut fbb,
            &fb::DataRecordArgs {
                record_type: fb::Record::KeyValueMutationRecord,
                record: Some(kv.as_union_value()),
            },
        );
        fb::finish_data_record_buffer(&mut fbb, root);
        fbb.finished_data().to_vec()
    }

    /// The verifier follows every offset: 100 offsets at one 1000-byte string would have it (and
    /// the copy out) go through 100 KB for a 1.5 KB row. Its `max_apparent_size` stops it first.
    #[test]
    fn the_verifier_visits_at_most_four_times_the_row() {
        let bytes = row(|fbb| {
            let big = fbb.create_string(&"x".repeat(1000));
            let value = Some(fbb.create_vector(&[big; 100]));
            (
                fb::Value::StringSet,
                Some(fb::StringSet::create(fbb, &fb::StringSetArgs { value }).as_union_value()),
            )
        });
        let err = decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            format!(
                "its offsets reach more than 4 times the record's {} bytes (aliased strings or vectors)",
                bytes.len()
            )
        );
    }

    #[test]
    fn verifier_errors_name_the_field_and_the_reason() {
        // A union type without its value.
        let bytes = row(|_| (fb::Value::StringValue, None));
        assert_eq!(
            decode(&bytes).unwrap_err(),
            "record: value_type and value must be both set or both absent"
        );
        // A set member that is not UTF-8.
        let mut enc = Encoder::new();
        let set = update("k", 1, Value::StringSet(vec!["a".into(), "b\u{e9}".into()]));
        let mut bytes = enc.encode(&set).to_vec();
        let i = bytes.windows(2).position(|w| w == [0xc3, 0xa9]).unwrap();
        bytes[i] = 0xff;
        let err = decode(&bytes).unwrap_err();
        assert!(err.starts_with("value: set member 2: invalid UTF-8: "), "{err}");
    }
}
