//! kv-server's store (`Store::apply`, `Store::cleanup_tombstones`) against a model.
//!
//! Input: a byte-coded sequence of [`Op`]s ([`decode`]; [`encode`] writes the seeds). Keys,
//! times and set members come from small alphabets, so that records meet: equal keys, equal
//! commit times, duplicate set members.
//!
//! The model is a `BTreeMap` written from the documented rules, not from the store's code: per
//! key the newest commit time wins; at equal times a delete wins, then the larger value (a string
//! below any set, strings bytewise, sets member by member); a delete leaves a tombstone; a
//! cleanup removes the tombstones at or below its cutoff and from then on every record at or
//! below the highest cutoff is ignored; a set keeps the first occurrence of each member, in order.
//!
//! Invariants, after every operation: each key's value, the live key, tombstone and byte counts,
//! the apply counts (applied, stale, newest commit time), the cleanup count and the floor are the
//! model's. And a second store that gets every batch's records in reverse order, one record per
//! batch (cleanups where they were), ends each stretch between cleanups in the same state.

use std::collections::BTreeMap;

use kv_server::data::{Mutation, Record, Value};
use kv_server::store::{Store, StoreStats, StoredValue};

/// Keys chosen by a byte below [`LITERAL`]; the rest are spelled out in the input.
const KEYS: [&str; 8] = ["a", "b", "c", "d", "key-1", "key-2", "\u{fc}", "k|x"];
/// Strings and set members chosen by a byte below [`LITERAL`] (the empty string included).
const WORDS: [&str; 8] = ["", "a", "b", "ab", "ba", "z", "a|b", "\u{e9}"];
/// A key or string byte at or above this is `LITERAL + len`, followed by `len` bytes.
const LITERAL: u8 = 0xc0;
/// A time byte below this is a small time (its value mod 16): many ties.
const TIME_SMALL: u8 = 0xf0;
const TIME_MIN: u8 = 0xf0;
const TIME_MAX: u8 = 0xf1;
/// A time byte at or above this is followed by 8 bytes, big-endian.
const TIME_LITERAL: u8 = 0xf2;

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A record, added to the current batch.
    Record(Record),
    /// Applies the current batch (also done at the end, and before a cleanup).
    EndBatch,
    Cleanup(i64),
}

/// Op codes: the low three bits of the op byte.
const OP_STRING: u8 = 0;
const OP_SET: u8 = 2;
const OP_DELETE: u8 = 4;
const OP_END_BATCH: u8 = 5;
const OP_CLEANUP: u8 = 6;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    /// The next byte; 0 once the input is used up (so every input decodes).
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn word(&mut self, alphabet: &[&str]) -> String {
        match self.byte() {
            b if b < LITERAL => alphabet[usize::from(b) % alphabet.len()].to_owned(),
            b => String::from_utf8_lossy(self.take(usize::from(b - LITERAL))).into_owned(),
        }
    }

    fn time(&mut self) -> i64 {
        match self.byte() {
            b if b < TIME_SMALL => i64::from(b % 16),
            TIME_MIN => i64::MIN,
            TIME_MAX => i64::MAX,
            _ => {
                let mut bytes = [0u8; 8];
                let got = self.take(8);
                bytes[..got.len()].copy_from_slice(got);
                i64::from_be_bytes(bytes)
            }
        }
    }
}

/// Decodes any bytes into operations.
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut r = Reader(data);
    let mut ops = Vec::new();
    while !r.0.is_empty() {
        let op = r.byte() % 8;
        let record = |r: &mut Reader, mutation: fn(&mut Reader) -> Mutation| {
            let key = r.word(&KEYS);
            let logical_commit_time = r.time();
            Op::Record(Record { key: key.into(), logical_commit_time, mutation: mutation(r) })
        };
        ops.push(match op {
            OP_END_BATCH => Op::EndBatch,
            OP_CLEANUP => Op::Cleanup(r.time()),
            0 | 1 => record(&mut r, |r| Mutation::Update(Value::String(r.word(&WORDS)))),
            2 | 3 => record(&mut r, |r| {
                let n = r.byte() % 16;
                Mutation::Update(Value::StringSet((0..n).map(|_| r.word(&WORDS)).collect()))
            }),
            _ => record(&mut r, |_| Mutation::Delete),
        });
    }
    ops
}

/// Encodes operations so that [`decode`] gives them back (for the seeds). Keys, strings and sets
/// longer than the format carries (63 bytes, 15 members) are cut.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    fn word(out: &mut Vec<u8>, s: &str, alphabet: &[&str]) {
        match alphabet.iter().position(|w| *w == s) {
            Some(i) => out.push(i as u8),
            None => {
                let s = &s.as_bytes()[..s.len().min(usize::from(u8::MAX - LITERAL))];
                out.push(LITERAL + s.len() as u8);
                out.extend_from_slice(s);
            }
        }
    }
    fn time(out: &mut Vec<u8>, t: i64) {
        match t {
            0..16 => out.push(t as u8),
            i64::MIN => out.push(TIME_MIN),
            i64::MAX => out.push(TIME_MAX),
            _ => {
                out.push(TIME_LITERAL);
                out.extend_from_slice(&t.to_be_bytes());
            }
        }
    }
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::EndBatch => out.push(OP_END_BATCH),
            Op::Cleanup(t) => {
                out.push(OP_CLEANUP);
                time(&mut out, *t);
            }
            Op::Record(r) => {
                let code = match &r.mutation {
                    Mutation::Update(Value::String(_)) => OP_STRING,
                    Mutation::Update(Value::StringSet(_)) => OP_SET,
                    Mutation::Delete => OP_DELETE,
                };
                out.push(code);
                word(&mut out, &r.key, &KEYS);
                time(&mut out, r.logical_commit_time);
                match &r.mutation {
                    Mutation::Update(Value::String(s)) => word(&mut out, s, &WORDS),
                    Mutation::Update(Value::StringSet(members)) => {
                        let members = &members[..members.len().min(15)];
                        out.push(members.len() as u8);
                        members.iter().for_each(|m| word(&mut out, m, &WORDS));
                    }
                    Mutation::Delete => {}
                }
            }
        }
    }
    out
}

/// The model's value: the derived order is the documented tie-break between updates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ModelValue {
    String(String),
    Set(Vec<String>),
}

#[derive(Debug, Clone)]
struct ModelEntry {
    time: i64,
    /// `None` is a tombstone.
    value: Option<ModelValue>,
}

impl ModelEntry {
    /// Larger wins: the time, then a delete over an update, then the larger value.
    fn rank(&self) -> (i64, bool, Option<&ModelValue>) {
        (self.time, self.value.is_none(), self.value.as_ref())
    }
}

#[derive(Debug)]
struct Model {
    map: BTreeMap<String, ModelEntry>,
    floor: i64,
    max_commit_time: i64,
}

/// Keeps the first occurrence of each member, in order: a quadratic scan, unlike the store's.
fn dedup(members: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for m in members {
        if !kept.contains(m) {
            kept.push(m.clone());
        }
    }
    kept
}

impl Model {
    fn new() -> Model {
        Model { map: BTreeMap::new(), floor: i64::MIN, max_commit_time: i64::MIN }
    }

    /// Applies a batch; returns (applied, stale, the batch's newest commit time).
    fn apply(&mut self, batch: &[Record]) -> (u64, u64, i64) {
        let (mut applied, mut stale, mut max) = (0, 0, i64::MIN);
        for r in batch {
            max = max.max(r.logical_commit_time);
            let value = match &r.mutation {
                Mutation::Delete => None,
                Mutation::Update(Value::String(s)) => Some(ModelValue::String(s.clone())),
                Mutation::Update(Value::StringSet(m)) => Some(ModelValue::Set(dedup(m))),
            };
            let new = ModelEntry { time: r.logical_commit_time, value };
            let wins = r.logical_commit_time > self.floor
                && self.map.get(r.key.as_str()).is_none_or(|old| new.rank() > old.rank());
            if wins {
                self.map.insert(r.key.to_string(), new);
                applied += 1;
            } else {
                stale += 1;
            }
        }
        self.max_commit_time = self.max_commit_time.max(max);
        (applied, stale, max)
    }

    fn cleanup(&mut self, cutoff: i64) -> u64 {
        self.floor = self.floor.max(cutoff);
        let before = self.map.len();
        self.map.retain(|_, e| e.value.is_some() || e.time > cutoff);
        (before - self.map.len()) as u64
    }

    fn stats(&self) -> StoreStats {
        let live_keys = self.map.values().filter(|e| e.value.is_some()).count() as u64;
        let bytes = self
            .map
            .iter()
            .map(|(k, e)| {
                let value = match &e.value {
                    None => 0,
                    // A JSON string is also held as its google.protobuf.Value encoding.
                    Some(ModelValue::String(s)) => {
                        s.len() + kv_server::pbvalue::json_value(s).map_or(0, |v| v.len())
                    }
                    Some(ModelValue::Set(m)) => m.iter().map(String::len).sum(),
                };
                (k.len() + value) as u64
            })
            .sum();
        StoreStats { live_keys, tombstones: self.map.len() as u64 - live_keys, bytes }
    }

    /// Checks every key the run has named, and the counters.
    fn check(&self, store: &Store, keys: &[String], what: &str) {
        for key in keys {
            let expected = self.map.get(key).and_then(|e| e.value.clone());
            let got = store.get(key).map(|v| match v {
                StoredValue::Set(m) => ModelValue::Set(m.iter().map(|m| m.to_string()).collect()),
                string => ModelValue::String(string.as_str().unwrap_or_default().into()),
            });
            assert_eq!(got, expected, "{what}: the value of {key:?}");
        }
        assert_eq!(store.stats(), self.stats(), "{what}: the store's counters");
        assert_eq!(store.cleanup_floor(), self.floor, "{what}: the cleanup floor");
    }
}

pub fn run(data: &[u8]) {
    let ops = decode(data);
    let mut keys: Vec<String> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Record(r) => Some(r.key.to_string()),
            _ => None,
        })
        .collect();
    keys.sort();
    keys.dedup();

    let store = Store::new();
    let reversed = Store::new();
    let mut model = Model::new();
    let mut batch: Vec<Record> = Vec::new();
    let mut stretch: Vec<Record> = Vec::new();
    let flush = |batch: &mut Vec<Record>, model: &mut Model| {
        let (applied, stale, max) = model.apply(batch);
        let stats = store.apply(std::mem::take(batch));
        assert_eq!((stats.applied, stats.stale, stats.max_commit_time), (applied, stale, max), "apply");
        assert_eq!(store.max_commit_time(), model.max_commit_time, "the newest commit time");
        model.check(&store, &keys, "after a batch");
    };
    // The stretch since the last cleanup, in reverse, one record per batch.
    let replay_reversed = |stretch: &mut Vec<Record>, model: &Model| {
        for r in stretch.drain(..).rev() {
            reversed.apply(vec![r]);
        }
        model.check(&reversed, &keys, "reversed, one record per batch");
    };
    for op in ops {
        match op {
            Op::Record(r) => {
                stretch.push(r.clone());
                batch.push(r);
            }
            Op::EndBatch => flush(&mut batch, &mut model),
            Op::Cleanup(cutoff) => {
                flush(&mut batch, &mut model);
                replay_reversed(&mut stretch, &model);
                let expected = model.cleanup(cutoff);
                assert_eq!(store.cleanup_tombstones(cutoff), expected, "tombstones removed at {cutoff}");
                assert_eq!(reversed.cleanup_tombstones(cutoff), expected, "reversed: removed at {cutoff}");
                model.check(&store, &keys, "after a cleanup");
            }
        }
    }
    flush(&mut batch, &mut model);
    replay_reversed(&mut stretch, &model);
}
