//! Data file names: `[PREFIX/]SNAPSHOT_<16 digits>` and `[PREFIX/]DELTA_<16 digits>`.
//!
//! The 16 digits are a logical time; for names of one kind, lexicographically larger means
//! newer. Across kinds the order is by time; at equal times the snapshot sorts first, so a
//! loader that starts at a snapshot also replays the delta of the same time. Replaying is
//! harmless (per key the newest commit time wins) while skipping it would lose data whenever
//! the snapshot was cut before that delta.

use std::cmp::Ordering;
use std::fmt;

const DIGITS: usize = 16;

/// Ordered as at equal logical times: snapshot first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    Snapshot,
    Delta,
}

impl FileKind {
    /// The name's leading word, with its `_`.
    pub fn name_prefix(self) -> &'static str {
        match self {
            FileKind::Snapshot => "SNAPSHOT_",
            FileKind::Delta => "DELTA_",
        }
    }
}

/// A parsed data file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataFileName {
    pub kind: FileKind,
    pub logical_time: u64,
    /// Everything before the last `/` (without it; empty when there is none).
    pub prefix: String,
    /// `SNAPSHOT_0000000000000042` / `DELTA_0000000000000042`.
    pub base: String,
}

impl DataFileName {
    /// Parses a local path or an object key. The last `/`-separated component must be exactly
    /// `SNAPSHOT_` or `DELTA_` followed by 16 ASCII digits (no extension).
    pub fn parse(path_or_key: &str) -> Option<DataFileName> {
        let (prefix, base) = path_or_key.rsplit_once('/').unwrap_or(("", path_or_key));
        let (kind, digits) = if let Some(d) = base.strip_prefix("SNAPSHOT_") {
            (FileKind::Snapshot, d)
        } else if let Some(d) = base.strip_prefix("DELTA_") {
            (FileKind::Delta, d)
        } else {
            return None;
        };
        if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // 16 decimal digits always fit in u64.
        let logical_time = digits.parse().ok()?;
        Some(DataFileName { kind, logical_time, prefix: prefix.to_owned(), base: base.to_owned() })
    }

    /// The name of a file of `kind` at `logical_time` under `prefix` (no trailing `/`).
    /// `None` when the time needs more than 16 digits.
    pub fn new(kind: FileKind, logical_time: u64, prefix: &str) -> Option<DataFileName> {
        let base = format!("{}{:0width$}", kind.name_prefix(), logical_time, width = DIGITS);
        if base.len() != kind.name_prefix().len() + DIGITS {
            return None;
        }
        Some(DataFileName { kind, logical_time, prefix: prefix.to_owned(), base })
    }
}

impl fmt::Display for DataFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            f.write_str(&self.base)
        } else {
            write!(f, "{}/{}", self.prefix, self.base)
        }
    }
}

impl Ord for DataFileName {
    /// Older first: by logical time, then snapshot before delta, then by prefix.
    fn cmp(&self, other: &Self) -> Ordering {
        self.logical_time
            .cmp(&other.logical_time)
            .then(self.kind.cmp(&other.kind))
            .then_with(|| self.prefix.cmp(&other.prefix))
            // Equal for names that parse alike; keeps Ord consistent with Eq for hand-built values.
            .then_with(|| self.base.cmp(&other.base))
    }
}

impl PartialOrd for DataFileName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX_TIME: u64 = 9_999_999_999_999_999;

    fn kind() -> impl Strategy<Value = FileKind> {
        prop_oneof![Just(FileKind::Snapshot), Just(FileKind::Delta)]
    }

    proptest! {
        #[test]
        fn names_round_trip_and_sort_by_time_then_kind(
            ta in 0..=MAX_TIME, tb in 0..=MAX_TIME, ka in kind(), kb in kind(), prefix in "([a-z0-9]{1,8}/){0,3}",
        ) {
            let prefix = prefix.trim_end_matches('/');
            let a = DataFileName::new(ka, ta, prefix).unwrap();
            let b = DataFileName::new(kb, tb, prefix).unwrap();
            prop_assert_eq!(DataFileName::parse(&a.to_string()), Some(a.clone()));
            prop_assert_eq!(a.cmp(&b), (ta, ka).cmp(&(tb, kb)));
            if ka == kb {
                // Same kind: the order is the lexicographic order of the names.
                prop_assert_eq!(a.cmp(&b), a.base.cmp(&b.base));
            }
        }
    }

    #[test]
    fn parses_bare_and_prefixed_names() {
        let d = DataFileName::parse("DELTA_0000000000000042").unwrap();
        assert_eq!(d.kind, FileKind::Delta);
        assert_eq!(d.logical_time, 42);
        assert_eq!(d.prefix, "");
        assert_eq!(d.base, "DELTA_0000000000000042");

        let s = DataFileName::parse("a/b/SNAPSHOT_1234567890123456").unwrap();
        assert_eq!(s.kind, FileKind::Snapshot);
        assert_eq!(s.logical_time, 1_234_567_890_123_456);
        assert_eq!(s.prefix, "a/b");
        assert_eq!(s.to_string(), "a/b/SNAPSHOT_1234567890123456");

        let abs = DataFileName::parse("/var/data/DELTA_9999999999999999").unwrap();
        assert_eq!(abs.prefix, "/var/data");
        assert_eq!(abs.logical_time, 9_999_999_999_999_999);
    }

    #[test]
    fn rejects_other_names() {
        for bad in [
            "",
            "DELTA_",
            "DELTA_123",
            "DELTA_00000000000000001",
            "DELTA_000000000000000a",
            "DELTA_0000000000000001.csv",
            "delta_0000000000000001",
            "SNAPSHOT-0000000000000001",
            "XDELTA_0000000000000001",
            "DELTA_0000000000000001/",
            "DELTA_+000000000000001",
            "DELTA_٠٠٠٠٠٠٠٠٠٠٠٠٠٠٠١",
            "dir/",
        ] {
            assert_eq!(DataFileName::parse(bad), None, "{bad:?} must not parse");
        }
    }

    #[test]
    fn new_formats_sixteen_digits() {
        let d = DataFileName::new(FileKind::Delta, 7, "p").unwrap();
        assert_eq!(d.to_string(), "p/DELTA_0000000000000007");
        assert_eq!(DataFileName::parse(&d.to_string()), Some(d));
        assert!(DataFileName::new(FileKind::Snapshot, 10_000_000_000_000_000, "").is_none());
    }

    #[test]
    fn ordering_is_newer_last_and_matches_lexicographic_order_per_kind() {
        let names = [
            "DELTA_0000000000000002",
            "SNAPSHOT_0000000000000001",
            "DELTA_0000000000000001",
            "DELTA_0000000000000010",
            "SNAPSHOT_0000000000000002",
        ];
        let mut parsed: Vec<_> = names.iter().map(|n| DataFileName::parse(n).unwrap()).collect();
        parsed.sort();
        let sorted: Vec<_> = parsed.iter().map(|n| n.base.as_str()).collect();
        assert_eq!(
            sorted,
            [
                "SNAPSHOT_0000000000000001",
                "DELTA_0000000000000001",
                "SNAPSHOT_0000000000000002",
                "DELTA_0000000000000002",
                "DELTA_0000000000000010",
            ]
        );
        // Within one kind the order is the lexicographic order of the base names.
        let mut deltas: Vec<_> = parsed.iter().filter(|n| n.kind == FileKind::Delta).collect();
        let by_name = {
            let mut v = deltas.clone();
            v.sort_by(|a, b| a.base.cmp(&b.base));
            v
        };
        deltas.sort();
        assert_eq!(deltas, by_name);
    }
}
