//! One FlatBuffers `DataRecord` (schema: `enclave/schema/data_loading.fbs`) <-> [`Record`].
//!
//! Writing uses the `flatbuffers` crate's builder. Reading is a small verifying reader written
//! here in safe Rust: every offset, length and alignment is checked against the buffer before
//! it is followed (the checks of the FlatBuffers verifier for this schema), so a corrupt row
//! is an error, never a panic or an out-of-bounds read; and it costs one pass over the row.
//! Field slots and union ids are the schema's; tests check them against buffers made by `flatc`.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::budget::{MEMBER_OVERHEAD, SET_MEMORY_FACTOR, check_set_members};
use super::{Mutation, Record, Value};

// vtable byte offsets of the fields (4 + 2 * field index; a union takes two indices).
const DATA_RECORD_RECORD_TYPE: u16 = 4;
const DATA_RECORD_RECORD: u16 = 6;
const KV_MUTATION_TYPE: u16 = 4;
const KV_LOGICAL_COMMIT_TIME: u16 = 6;
const KV_KEY: u16 = 8;
const KV_VALUE_TYPE: u16 = 10;
const KV_VALUE: u16 = 12;
const SINGLE_VALUE: u16 = 4; // the `value` field of StringValue, StringSet, UInt32Set, UInt64Set

// `union Record` ids.
const RECORD_KEY_VALUE_MUTATION: u8 = 1;
const RECORD_UDF_CONFIG: u8 = 2;
const RECORD_SHARD_MAPPING: u8 = 3;
// `union Value` ids.
const VALUE_STRING: u8 = 1;
const VALUE_STRING_SET: u8 = 2;
const VALUE_UINT32_SET: u8 = 3;
const VALUE_UINT64_SET: u8 = 4;
// `enum KeyValueMutationType`.
const MUTATION_UPDATE: i8 = 0;
const MUTATION_DELETE: i8 = 1;

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
            Mutation::Update(Value::String(s)) => (VALUE_STRING, string_value(fbb, s)),
            Mutation::Update(Value::StringSet(members)) => {
                let offsets: Vec<WIPOffset<&str>> = members.iter().map(|m| fbb.create_string(m)).collect();
                let vector = fbb.create_vector(&offsets);
                let start = fbb.start_table();
                fbb.push_slot_always(SINGLE_VALUE, vector);
                (VALUE_STRING_SET, fbb.end_table(start))
            }
            Mutation::Delete => (VALUE_STRING, string_value(fbb, "")),
        };
        let mutation_type = match record.mutation {
            Mutation::Update(_) => MUTATION_UPDATE,
            Mutation::Delete => MUTATION_DELETE,
        };
        let start = fbb.start_table();
        fbb.push_slot::<i64>(KV_LOGICAL_COMMIT_TIME, record.logical_commit_time, 0);
        fbb.push_slot_always(KV_KEY, key);
        fbb.push_slot_always(KV_VALUE, value);
        fbb.push_slot::<i8>(KV_MUTATION_TYPE, mutation_type, MUTATION_UPDATE);
        fbb.push_slot::<u8>(KV_VALUE_TYPE, value_type, 0);
        let kv = fbb.end_table(start);

        let start = fbb.start_table();
        fbb.push_slot_always(DATA_RECORD_RECORD, kv);
        fbb.push_slot::<u8>(DATA_RECORD_RECORD_TYPE, RECORD_KEY_VALUE_MUTATION, 0);
        let root = fbb.end_table(start);
        fbb.finish_minimal(root);
        fbb.finished_data()
    }
}

fn string_value(
    fbb: &mut FlatBufferBuilder<'static>,
    s: &str,
) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    let s = fbb.create_string(s);
    let start = fbb.start_table();
    fbb.push_slot_always(SINGLE_VALUE, s);
    fbb.end_table(start)
}

/// [`decode_within`] with no cap on set members.
#[cfg(test)]
pub(super) fn decode(buf: &[u8]) -> Result<Record, String> {
    decode_within(buf, u64::MAX)
}

/// Decodes and verifies one serialized `DataRecord`, whose sets may have at most
/// `max_set_members` members. The error is the reason only.
pub(super) fn decode_within(buf: &[u8], max_set_members: u64) -> Result<Record, String> {
    let b = Buf(buf);
    let root = b.table(b.uoffset(0).map_err(|e| format!("root offset: {e}"))?)?;
    let record_type = b.scalar_u8(&root, DATA_RECORD_RECORD_TYPE)?;
    let record = b.table_field(&root, DATA_RECORD_RECORD).map_err(|e| format!("record: {e}"))?;
    match record_type {
        RECORD_KEY_VALUE_MUTATION => {}
        0 => return Err("record not set (DataRecord.record_type is NONE)".into()),
        RECORD_UDF_CONFIG => {
            return Err("record is a UserDefinedFunctionsConfig; kv-server loads only \
                        KeyValueMutationRecords (it runs no user-defined functions)"
                .into());
        }
        RECORD_SHARD_MAPPING => {
            return Err("record is a ShardMappingRecord; kv-server loads only KeyValueMutationRecords".into());
        }
        t => return Err(format!("unknown record type {t} (DataRecord.record_type)")),
    }
    let kv = record.ok_or("record not set (DataRecord.record missing)")?;

    let mutation_type = b.scalar_u8(&kv, KV_MUTATION_TYPE)? as i8;
    let logical_commit_time = b.scalar_i64(&kv, KV_LOGICAL_COMMIT_TIME)?;
    let key = b.string_field(&kv, KV_KEY).map_err(|e| format!("key: {e}"))?.ok_or("key not set")?;
    if key.is_empty() {
        return Err("empty key".into());
    }
    let value_type = b.scalar_u8(&kv, KV_VALUE_TYPE)?;
    let value_table = b.table_field(&kv, KV_VALUE).map_err(|e| format!("value: {e}"))?;
    // A delete's value is verified too (a corrupt row is corrupt whatever its type) but unused.
    let value = match (value_type, value_table) {
        (0, _) => None,
        (t, None) => return Err(format!("value of type {t} not set")),
        (t, Some(v)) => Some(b.value(t, &v, max_set_members)?),
    };
    let mutation = match mutation_type {
        MUTATION_UPDATE => Mutation::Update(value.ok_or("update without a value")?),
        MUTATION_DELETE => Mutation::Delete,
        m => return Err(format!("unknown mutation type {m}")),
    };
    Ok(Record { key: key.to_owned(), logical_commit_time, mutation })
}

/// A table: its position and the bounds of its vtable and inline data.
struct Table {
    pos: usize,
    vtable: usize,
    vtable_len: usize,
    inline_len: usize,
}

struct Buf<'a>(&'a [u8]);

impl<'a> Buf<'a> {
    fn bytes<const N: usize>(&self, pos: usize) -> Result<[u8; N], String> {
        pos.checked_add(N)
            .and_then(|end| self.0.get(pos..end))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("{N}-byte read at {pos} is past the end ({} bytes)", self.0.len()))
    }

    fn aligned(&self, pos: usize, align: usize) -> Result<(), String> {
        if pos.is_multiple_of(align) {
            Ok(())
        } else {
            Err(format!("offset {pos} is not {align}-byte aligned"))
        }
    }

    fn u16_at(&self, pos: usize) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.bytes(pos)?))
    }

    fn u32_at(&self, pos: usize) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(pos)?))
    }

    /// Follows the forward offset stored at `pos`.
    fn uoffset(&self, pos: usize) -> Result<usize, String> {
        self.aligned(pos, 4)?;
        let off = self.u32_at(pos)?;
        if off == 0 || off > i32::MAX as u32 {
            return Err(format!("bad offset {off} at {pos}"));
        }
        let target = pos + off as usize;
        if target >= self.0.len() {
            return Err(format!("offset at {pos} points past the end"));
        }
        Ok(target)
    }

    fn table(&self, pos: usize) -> Result<Table, String> {
        self.aligned(pos, 4)?;
        let soffset = i32::from_le_bytes(self.bytes(pos)?);
        let vtable =
            i64::try_from(pos).map_err(|_| "table position overflow".to_owned())? - i64::from(soffset);
        let vtable =
            usize::try_from(vtable).map_err(|_| format!("vtable of table at {pos} is before the buffer"))?;
        self.aligned(vtable, 2)?;
        let vtable_len = usize::from(self.u16_at(vtable)?);
        let inline_len = usize::from(self.u16_at(vtable + 2)?);
        if vtable_len < 4 || !vtable_len.is_multiple_of(2) || vtable + vtable_len > self.0.len() {
            return Err(format!("bad vtable size {vtable_len} at {vtable}"));
        }
        if inline_len < 4 || pos + inline_len > self.0.len() {
            return Err(format!("bad table size {inline_len} at {pos}"));
        }
        Ok(Table { pos, vtable, vtable_len, inline_len })
    }

    /// Absolute position of a field of `size` bytes, or `None` when absent (default value).
    fn field(&self, t: &Table, slot: u16, size: usize) -> Result<Option<usize>, String> {
        let slot = usize::from(slot);
        if slot + 2 > t.vtable_len {
            return Ok(None);
        }
        let off = usize::from(self.u16_at(t.vtable + slot)?);
        if off == 0 {
            return Ok(None);
        }
        if off < 4 || off + size > t.inline_len {
            return Err(format!("field at vtable slot {slot} lies outside its table"));
        }
        let pos = t.pos + off;
        self.aligned(pos, size)?;
        Ok(Some(pos))
    }

    fn scalar_u8(&self, t: &Table, slot: u16) -> Result<u8, String> {
        match self.field(t, slot, 1)? {
            Some(p) => Ok(self.bytes::<1>(p)?[0]),
            None => Ok(0),
        }
    }

    fn scalar_i64(&self, t: &Table, slot: u16) -> Result<i64, String> {
        match self.field(t, slot, 8)? {
            Some(p) => Ok(i64::from_le_bytes(self.bytes(p)?)),
            None => Ok(0),
        }
    }

    fn table_field(&self, t: &Table, slot: u16) -> Result<Option<Table>, String> {
        match self.field(t, slot, 4)? {
            Some(p) => Ok(Some(self.table(self.uoffset(p)?)?)),
            None => Ok(None),
        }
    }

    /// The vector at `pos`: its element count and the position of its first element, after
    /// checking that `count * elem_size` bytes follow (so callers may allocate `count`).
    fn vector(&self, pos: usize, elem_size: usize) -> Result<(usize, usize), String> {
        self.aligned(pos, 4)?;
        let len = self.u32_at(pos)? as usize;
        let start = pos + 4;
        let bytes = len.checked_mul(elem_size).ok_or("vector length overflow")?;
        if bytes > self.0.len() - start.min(self.0.len()) {
            return Err(format!("vector of {len} elements at {pos} runs past the end"));
        }
        Ok((len, start))
    }

    fn string(&self, pos: usize) -> Result<&'a str, String> {
        let (len, start) = self.vector(pos, 1)?;
        // FlatBuffers strings carry a NUL after their bytes; verifiers insist on it.
        if self.0.get(start + len) != Some(&0) {
            return Err(format!("string at {pos} lacks its terminating NUL"));
        }
        std::str::from_utf8(&self.0[start..start + len]).map_err(|e| format!("invalid UTF-8: {e}"))
    }

    fn string_field(&self, t: &Table, slot: u16) -> Result<Option<&'a str>, String> {
        match self.field(t, slot, 4)? {
            Some(p) => Ok(Some(self.string(self.uoffset(p)?)?)),
            None => Ok(None),
        }
    }

    fn value(&self, value_type: u8, v: &Table, max_set_members: u64) -> Result<Value, String> {
        let field = |what: &str| -> Result<usize, String> {
            match self.field(v, SINGLE_VALUE, 4)? {
                Some(p) => self.uoffset(p),
                None => Err(format!("{what} value not set")),
            }
        };
        match value_type {
            VALUE_STRING => {
                let p = field("StringValue")?;
                Ok(Value::String(self.string(p).map_err(|e| format!("value: {e}"))?.to_owned()))
            }
            VALUE_STRING_SET => {
                let (len, start) = self.vector(field("StringSet")?, 4)?;
                check_set_members(len as u64, max_set_members)?;
                let mut members = Vec::with_capacity(len);
                // Offsets may alias one string many times over: copying the members out of the
                // buffer must not turn a small row into gigabytes. Their bytes are bounded by the
                // row's size (set members are distinct, so real writers never share them), and
                // their memory, a `String` each, by SET_MEMORY_FACTOR times it (empty members
                // aliasing one empty string have no bytes but 24 bytes of memory each).
                let mut bytes_left = self.0.len();
                let mut memory_left = SET_MEMORY_FACTOR * self.0.len() as u64;
                for i in 0..len {
                    let s = self
                        .uoffset(start + 4 * i)
                        .and_then(|p| self.string(p))
                        .map_err(|e| format!("set member {}: {e}", i + 1))?;
                    bytes_left = bytes_left.checked_sub(s.len()).ok_or_else(|| {
                        format!(
                            "value: set members total more bytes than the record holds (aliased strings, at \
                             member {})",
                            i + 1
                        )
                    })?;
                    memory_left = memory_left.checked_sub(MEMBER_OVERHEAD + s.len() as u64).ok_or_else(|| {
                        format!(
                            "value: set members would take more than {SET_MEMORY_FACTOR} times the record's {} \
                             bytes in memory (aliased strings, at member {})",
                            self.0.len(),
                            i + 1
                        )
                    })?;
                    members.push(s.to_owned());
                }
                Ok(Value::StringSet(members))
            }
            // kv-server values are strings: number sets become sets of decimal strings. They
            // cannot alias; what their decimals cost in memory counts against the file's budget.
            VALUE_UINT32_SET => {
                let (len, start) = self.vector(field("UInt32Set")?, 4)?;
                check_set_members(len as u64, max_set_members)?;
                (0..len)
                    .map(|i| Ok(self.u32_at(start + 4 * i)?.to_string()))
                    .collect::<Result<_, String>>()
                    .map(Value::StringSet)
            }
            VALUE_UINT64_SET => {
                let (len, start) = self.vector(field("UInt64Set")?, 8)?;
                check_set_members(len as u64, max_set_members)?;
                self.aligned(start, 8)?;
                (0..len)
                    .map(|i| Ok(u64::from_le_bytes(self.bytes(start + 8 * i)?).to_string()))
                    .collect::<Result<_, String>>()
                    .map(Value::StringSet)
            }
            t => Err(format!("unknown value type {t}")),
        }
    }
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
        let b = Buf(&bytes);
        let root = b.table(b.uoffset(0).unwrap()).unwrap();
        let kv = b.table_field(&root, DATA_RECORD_RECORD).unwrap().unwrap();
        let set = b.table_field(&kv, KV_VALUE).unwrap().unwrap();
        let vec_pos = b.uoffset(b.field(&set, SINGLE_VALUE, 4).unwrap().unwrap()).unwrap();
        let first = b.uoffset(vec_pos + 4).unwrap();
        let second_slot = vec_pos + 8;
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
}
