//! Avro Object Container files whose schema is `"bytes"`, each datum one FlatBuffers
//! `DataRecord` (the reference server's Avro data files).
//!
//! Container layout (Avro 1.x specification, "Object Container Files"):
//! `Obj\x01`, a metadata map<bytes> (`avro.schema`, `avro.codec`, anything else ignored),
//! a 16-byte sync marker, then blocks of `count: long, size: long, size bytes, sync marker`.
//! Longs are zigzag varints. Codecs read: `null` and `deflate` (raw RFC 1951); written: `null`.
//! Every length is checked against the bytes that remain before anything is sized by it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read, Write};

use super::budget::{memory, memory_exceeded};
use super::flatbuf::{Encoder, decode_within};
use super::{Budget, DataError, Record};

pub(super) const MAGIC: [u8; 4] = *b"Obj\x01";
const SYNC_LEN: usize = 16;
/// Rows per written block are bounded by bytes: the reference writes 16 KiB blocks; larger
/// blocks cost nothing here and cut per-block overhead.
pub(super) const WRITE_BLOCK_BYTES: usize = 64 * 1024;
/// Largest block that a deflate block may expand to, whatever the file's budget: bounds the one
/// buffer that holds an inflated block.
const MAX_INFLATED_BLOCK: u64 = 64 * 1024 * 1024;

#[derive(Clone, Copy)]
enum Codec {
    Null,
    Deflate,
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!("needs {n} bytes at offset {}, only {} remain", self.pos, self.remaining()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A zigzag varint long (at most 10 bytes).
    fn long(&mut self) -> Result<i64, String> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at offset {start}"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(format!("varint at offset {start} overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(format!("varint at offset {start} is longer than 10 bytes"))
    }

    /// A length: a non-negative long no larger than what remains.
    fn len(&mut self, what: &str) -> Result<usize, String> {
        let at = self.pos;
        let n = self.long()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(format!(
                "{what} length {n} at offset {at} is negative or exceeds the {} remaining bytes",
                self.remaining()
            )),
        }
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.len(what)?;
        self.take(n)
    }
}

/// Reads the header; returns the codec, the sync marker and the offset of the first block.
fn read_header<'a>(c: &mut Cursor<'a>) -> Result<(Codec, &'a [u8]), String> {
    if c.take(4)? != MAGIC {
        return Err("not an Avro object container (bad magic)".into());
    }
    let mut schema: Option<&[u8]> = None;
    let mut codec = Codec::Null;
    loop {
        let at = c.pos;
        let count = c.long().map_err(|e| format!("metadata: {e}"))?;
        if count == 0 {
            break;
        }
        if count < 0 {
            // A negative count is followed by the block's size in bytes (unused here).
            c.long().map_err(|e| format!("metadata: {e}"))?;
        }
        let count = count.unsigned_abs();
        // Each entry needs at least two bytes (two length varints).
        if count > (c.remaining() / 2) as u64 {
            return Err(format!("metadata block at offset {at} claims {count} entries, more than fit"));
        }
        for _ in 0..count {
            let key = c.bytes("metadata key").map_err(|e| format!("metadata: {e}"))?;
            let value = c.bytes("metadata value").map_err(|e| format!("metadata: {e}"))?;
            match key {
                b"avro.schema" => schema = Some(value),
                b"avro.codec" => {
                    codec = match value {
                        b"null" | b"" => Codec::Null,
                        b"deflate" => Codec::Deflate,
                        other => {
                            return Err(format!(
                                "unsupported Avro codec {:?} (kv-server reads null and deflate)",
                                String::from_utf8_lossy(other)
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let schema = schema.ok_or("metadata has no avro.schema")?;
    let compact: Vec<u8> = schema.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact != br#""bytes""# && compact != br#"{"type":"bytes"}"# {
        return Err(format!(
            "avro.schema is {:?}; kv-server data files use the schema \"bytes\" (one FlatBuffers record per datum)",
            String::from_utf8_lossy(&schema[..schema.len().min(200)])
        ));
    }
    let sync = c.take(SYNC_LEN).map_err(|e| format!("sync marker: {e}"))?;
    Ok((codec, sync))
}

pub(super) fn parse(name: &str, bytes: &[u8], budget: &Budget) -> Result<Vec<Record>, DataError> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    let (codec, sync) =
        read_header(&mut c).map_err(|e| DataError::header(name, format!("Avro header: {e}")))?;
    let mut records = Vec::new();
    let mut inflated = Vec::new();
    // The bytes of every block so far, after deflate: what the file has spent of
    // `budget.max_inflated_bytes`.
    let mut spent = 0u64;
    // The memory of the keys and values decoded so far, against the same budget.
    let mut in_memory = 0u64;
    let mut block_no = 0u64;
    while c.remaining() > 0 {
        block_no += 1;
        let next = records.len() as u64 + 1;
        let err = |e: String| DataError::record(name, next, format!("Avro block {block_no}: {e}"));
        let count = c.long().map_err(|e| err(format!("object count: {e}")))?;
        let data = c.bytes("block").map_err(&err)?;
        let marker = c.take(SYNC_LEN).map_err(|e| err(format!("sync marker: {e}")))?;
        if marker != sync {
            return Err(err("sync marker does not match the header's (corrupt or truncated file)".into()));
        }
        let data = match codec {
            Codec::Null => data,
            Codec::Deflate => {
                // Inflate no further than the file's budget allows: a bomb stops here, having
                // cost at most what is left of the budget.
                let left = budget.max_inflated_bytes.saturating_sub(spent);
                let d = flate2::read::DeflateDecoder::new(data);
                read_capped(d, &mut inflated, MAX_INFLATED_BLOCK.min(left))
                    .map_err(|e| err(format!("deflate: {e}")))?;
                if inflated.len() as u64 > MAX_INFLATED_BLOCK {
                    return Err(err(format!("inflates to more than {MAX_INFLATED_BLOCK} bytes")));
                }
                &inflated[..]
            }
        };
        spent = spent.saturating_add(data.len() as u64);
        if spent > budget.max_inflated_bytes {
            return Err(err(format!(
                "the blocks inflate to more than max_file_inflated_bytes ({} bytes) in all",
                budget.max_inflated_bytes
            )));
        }
        // Each datum takes at least one byte.
        let count = match usize::try_from(count) {
            Ok(n) if n <= data.len() => n,
            _ => {
                return Err(err(format!(
                    "object count {count} does not fit a block of {} bytes",
                    data.len()
                )));
            }
        };
        // A valid record takes far more than 64 bytes: reserving by the block's bytes rather than
        // by its claimed count keeps a lying count from reserving memory (deflate: 1 KiB of
        // input may claim a million objects).
        let records_left = budget.max_records.saturating_sub(records.len() as u64);
        records
            .reserve(count.min(data.len() / 64 + 1).min(usize::try_from(records_left).unwrap_or(usize::MAX)));
        let mut d = Cursor { buf: data, pos: 0 };
        for _ in 0..count {
            let n = records.len() as u64 + 1;
            if n > budget.max_records {
                return Err(DataError::record(
                    name,
                    n,
                    format!("more than max_file_records ({}) records", budget.max_records),
                ));
            }
            let datum =
                d.bytes("datum").map_err(|e| DataError::record(name, n, format!("Avro datum: {e}")))?;
            let record = decode_within(datum, budget.max_set_members)
                .map_err(|e| DataError::record(name, n, format!("FlatBuffers record: {e}")))?;
            in_memory = in_memory.saturating_add(memory(&record));
            if in_memory > budget.max_inflated_bytes {
                return Err(DataError::record(name, n, memory_exceeded(budget)));
            }
            records.push(record);
        }
        if d.remaining() != 0 {
            return Err(err(format!("{} bytes left after its {count} objects", d.remaining())));
        }
    }
    Ok(records)
}

/// Reads `r` to its end into `out` (emptied first), but never more than `limit + 1` bytes: a
/// length past `limit` tells the caller that the limit was passed. `out` grows with what
/// actually arrives, doubling, and never beyond `limit + 1` bytes (its capacity from earlier
/// calls is reused).
fn read_capped(r: impl Read, out: &mut Vec<u8>, limit: u64) -> io::Result<()> {
    const FIRST: usize = 64 * 1024;
    let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    let mut r = r.take(cap as u64);
    out.clear();
    let mut filled = 0;
    loop {
        if filled == out.len() {
            if filled >= cap {
                break;
            }
            let grow = filled.max(FIRST).min(cap - filled);
            out.reserve_exact(grow);
            out.resize(filled + grow, 0);
        }
        match r.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.truncate(filled);
                return Err(e);
            }
        }
    }
    out.truncate(filled);
    Ok(())
}

pub(super) fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// A sync marker derived from the content, so the same records give the same file.
fn sync_marker(records: &[Record]) -> [u8; SYNC_LEN] {
    let mut marker = [0u8; SYNC_LEN];
    for (half, chunk) in marker.chunks_mut(8).enumerate() {
        let mut h = DefaultHasher::new();
        (half, records.len()).hash(&mut h);
        for r in records.iter().take(64).chain(records.iter().rev().take(64)) {
            (&r.key, r.logical_commit_time).hash(&mut h);
        }
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    marker
}

pub(super) fn write(records: &[Record], out: &mut impl Write) -> io::Result<()> {
    let sync = sync_marker(records);
    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(&MAGIC);
    put_long(&mut header, 2);
    put_bytes(&mut header, b"avro.schema");
    put_bytes(&mut header, br#""bytes""#);
    put_bytes(&mut header, b"avro.codec");
    put_bytes(&mut header, b"null");
    put_long(&mut header, 0);
    header.extend_from_slice(&sync);
    out.write_all(&header)?;

    let mut enc = Encoder::new();
    let mut block = Vec::with_capacity(WRITE_BLOCK_BYTES + 1024);
    let mut framing = Vec::with_capacity(20);
    let mut count = 0i64;
    let mut flush = |block: &mut Vec<u8>, count: &mut i64, out: &mut dyn Write| -> io::Result<()> {
        framing.clear();
        put_long(&mut framing, *count);
        put_long(&mut framing, block.len() as i64);
        out.write_all(&framing)?;
        out.write_all(block)?;
        out.write_all(&sync)?;
        block.clear();
        *count = 0;
        Ok(())
    };
    for r in records {
        put_bytes(&mut block, enc.encode(r));
        count += 1;
        if block.len() >= WRITE_BLOCK_BYTES {
            flush(&mut block, &mut count, out)?;
        }
    }
    if count > 0 {
        flush(&mut block, &mut count, out)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_varints_round_trip_and_reject_garbage() {
        for v in [0i64, -1, 1, 63, -64, 64, i64::MAX, i64::MIN, 300, -300] {
            let mut b = Vec::new();
            put_long(&mut b, v);
            let mut c = Cursor { buf: &b, pos: 0 };
            assert_eq!(c.long(), Ok(v));
            assert_eq!(c.remaining(), 0);
        }
        // Spec examples: 1 -> 02, -1 -> 01, 64 -> 80 01.
        let mut b = Vec::new();
        put_long(&mut b, 64);
        assert_eq!(b, [0x80, 0x01]);
        let mut c = Cursor { buf: &[0x80, 0x80], pos: 0 };
        assert!(c.long().unwrap_err().contains("truncated varint"));
        let mut c = Cursor { buf: &[0xff; 11], pos: 0 };
        assert!(c.long().unwrap_err().contains("overflows 64 bits"));
    }

    #[test]
    fn read_capped_stops_one_byte_past_the_limit_and_allocates_no_further() {
        let mut out = Vec::new();
        read_capped(&[7u8; 1000][..], &mut out, 2000).unwrap();
        assert_eq!(out, [7u8; 1000]);
        read_capped(io::repeat(1), &mut out, 300_000).unwrap();
        assert_eq!(out.len(), 300_001);
        assert!(out.capacity() <= 300_001 + 64 * 1024, "capacity {}", out.capacity());
        read_capped(io::repeat(1), &mut out, 0).unwrap();
        assert_eq!(out.len(), 1);
        read_capped(&[][..], &mut out, 10).unwrap();
        assert!(out.is_empty());
    }
}
