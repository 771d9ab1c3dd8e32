//! Loading data files from a [`Source`] into the [`Store`].
//!
//! Order, per prefix (each prefix is an independent stream of files):
//! 1. at start, the newest `SNAPSHOT_` that loads (a rejected one falls back to the one before
//!    it) and then every newer `DELTA_`, oldest first;
//! 2. afterwards, at every poll, each file newer than the newest one seen, oldest first (a later
//!    snapshot is merged like a delta: newest commit time wins either way).
//!
//! A file is parsed completely before anything is applied, so a file that fails to parse is
//! rejected whole: nothing of it is applied, what was loaded stays served, the rejection is logged
//! with the parser's message (file, record number, reason) and counted, and the file is not
//! retried (a fixed file gets a new name). A file with a commit time (or a name) more than
//! `max_commit_time_ahead` ahead of the enclave's clock is rejected the same way, and the
//! tombstone floor never follows commit times past that clock. A source failure (listing or reading) is retried at the
//! next poll. New files are found by polling at `poll_interval`: it works the same for a local
//! directory, a bind mount and S3, costs one directory listing per interval, and needs no inotify
//! (which does not see changes made on the other side of a shared mount).
//!
//! A file over the [`data::Budget`] (its size, which the source checks before reading it whole,
//! what it inflates to, its records) is rejected the same way as one that fails to parse.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::data::{self, DataFileName, FileKind};
use crate::health::Health;
use crate::source::{Source, SourceError};
use crate::store::Store;
use crate::telemetry::LOAD_BOUNDS_MS;
use crate::telemetry::histogram::Histogram;

/// Counters of the loader, for logs and metrics.
#[derive(Debug)]
pub struct LoaderMetrics {
    pub files_loaded: AtomicU64,
    pub files_rejected: AtomicU64,
    pub records_applied: AtomicU64,
    pub records_stale: AtomicU64,
    pub source_errors: AtomicU64,
    pub tombstones_removed: AtomicU64,
    /// Bytes of the files applied.
    pub bytes_loaded: AtomicU64,
    /// Fetch + parse + apply time of each file handled (applied or rejected).
    pub file_load_duration: Histogram,
    /// How long the initial load took, in milliseconds (at least 1); 0 until it finished.
    pub initial_load_ms: AtomicU64,
}

impl Default for LoaderMetrics {
    fn default() -> Self {
        LoaderMetrics {
            files_loaded: AtomicU64::new(0),
            files_rejected: AtomicU64::new(0),
            records_applied: AtomicU64::new(0),
            records_stale: AtomicU64::new(0),
            source_errors: AtomicU64::new(0),
            tombstones_removed: AtomicU64::new(0),
            bytes_loaded: AtomicU64::new(0),
            file_load_duration: Histogram::new(&LOAD_BOUNDS_MS),
            initial_load_ms: AtomicU64::new(0),
        }
    }
}

impl LoaderMetrics {
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        [
            ("files_loaded", self.files_loaded.load(Ordering::Relaxed)),
            ("files_rejected", self.files_rejected.load(Ordering::Relaxed)),
            ("records_applied", self.records_applied.load(Ordering::Relaxed)),
            ("records_stale", self.records_stale.load(Ordering::Relaxed)),
            ("source_errors", self.source_errors.load(Ordering::Relaxed)),
            ("tombstones_removed", self.tombstones_removed.load(Ordering::Relaxed)),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The file's content is bad; the message names file, record and reason.
    #[error("rejected data file: {0}")]
    Data(#[from] data::DataError),
    #[error("data file {file}: the load task failed: {reason}")]
    Task { file: String, reason: String },
}

/// Settings of the loader.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub poll_interval: Duration,
    pub tombstone_retention: i64,
    /// How far ahead of [`LoaderConfig::clock`] a commit time (or a file name's logical time) may
    /// be, in commit-time units; a file with anything further ahead is rejected whole.
    pub max_commit_time_ahead: i64,
    /// The trusted clock, in commit-time units: [`unix_micros`] outside tests.
    pub clock: fn() -> i64,
    /// What one file may cost: its size (the source refuses a larger one), what it inflates to
    /// and its records. A file over it is rejected.
    pub budget: data::Budget,
    /// Test hook: a pause before the initial load.
    pub initial_load_delay: Duration,
}

/// Microseconds since the Unix epoch by the enclave's own clock (the hypervisor's, not the
/// parent's), the unit the reference data CLI writes commit times in.
pub fn unix_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

pub struct Loader<S: Source> {
    source: S,
    store: Arc<Store>,
    health: Arc<Health>,
    metrics: Arc<LoaderMetrics>,
    config: LoaderConfig,
    /// Per prefix, the newest file handled (applied or rejected).
    newest: BTreeMap<String, DataFileName>,
    /// Every file handled and what happened to it: nothing is loaded twice, a rejected file is
    /// never retried.
    handled: HashMap<DataFileName, FileOutcome>,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOutcome {
    Loaded,
    Rejected,
}

impl<S: Source> Loader<S> {
    pub fn new(
        source: S,
        store: Arc<Store>,
        health: Arc<Health>,
        metrics: Arc<LoaderMetrics>,
        config: LoaderConfig,
    ) -> Self {
        Loader { source, store, health, metrics, config, newest: BTreeMap::new(), handled: HashMap::new() }
    }

    /// Loads at start, marks the data loaded, then follows new files until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        if !self.config.initial_load_delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(self.config.initial_load_delay) => {}
                _ = &mut shutdown => return,
            }
        }
        loop {
            match self.initial_load().await {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.source_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "initial data load failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = &mut shutdown => return,
            }
        }
        self.health.set_data_loaded();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = &mut shutdown => return,
            }
            if let Err(e) = self.poll_once().await {
                self.metrics.source_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "checking for new data files failed; retrying at the next poll");
            }
        }
    }

    /// Per prefix: the newest snapshot that loads (a rejected snapshot falls back to the one
    /// before it), then every newer delta. A rejected delta does not stop the load; a source error
    /// does, and the retry skips every file already handled.
    pub async fn initial_load(&mut self) -> Result<(), SourceError> {
        let started = Instant::now();
        let listed = self.source.list().await?;
        let mut by_prefix: BTreeMap<String, Vec<DataFileName>> = BTreeMap::new();
        for name in listed.iter().filter_map(|n| DataFileName::parse(n)) {
            by_prefix.entry(name.prefix.clone()).or_default().push(name);
        }
        tracing::info!(location = %self.source.location(), prefixes = by_prefix.len(), "initial data load");
        for mut files in by_prefix.into_values() {
            files.sort();
            let mut base: Option<DataFileName> = None;
            for snapshot in files.iter().rev().filter(|f| f.kind == FileKind::Snapshot) {
                let outcome = match self.handled.get(snapshot) {
                    Some(outcome) => *outcome,
                    None => self.load_file(snapshot.clone()).await?,
                };
                if outcome == FileOutcome::Loaded {
                    base = Some(snapshot.clone());
                    break;
                }
                tracing::warn!(file = %snapshot, "snapshot rejected; falling back to the one before it, if any");
            }
            for delta in files.into_iter().filter(|f| f.kind == FileKind::Delta) {
                let covered = base.as_ref().is_some_and(|b| *b >= delta);
                if !covered && !self.handled.contains_key(&delta) {
                    self.load_file(delta).await?;
                }
            }
        }
        let stats = self.store.stats();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        self.metrics.initial_load_ms.store(elapsed_ms.max(1), Ordering::Relaxed);
        tracing::info!(
            elapsed_ms,
            bytes = stats.bytes,
            live_keys = stats.live_keys,
            tombstones = stats.tombstones,
            "initial data load finished"
        );
        Ok(())
    }

    /// Loads every file newer than the newest one handled in its prefix.
    pub async fn poll_once(&mut self) -> Result<(), SourceError> {
        let mut names: Vec<DataFileName> =
            self.source.list().await?.iter().filter_map(|n| DataFileName::parse(n)).collect();
        names.sort();
        for name in names {
            if self.newest.get(&name.prefix).is_some_and(|n| *n >= name) || self.handled.contains_key(&name) {
                continue;
            }
            self.load_file(name).await?;
        }
        Ok(())
    }

    /// Fetches, parses and applies one file. Only a source error is returned; a bad file is
    /// logged, counted and remembered as handled.
    async fn load_file(&mut self, name: DataFileName) -> Result<FileOutcome, SourceError> {
        let full = full_name(&name);
        let started = Instant::now();
        let limit = (self.config.clock)().saturating_add(self.config.max_commit_time_ahead);
        if i128::from(name.logical_time) > i128::from(limit) {
            // Not fetched, and not made the newest of its prefix: that would hide every later file.
            let rejected = self.metrics.files_rejected.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                file = %full,
                files_rejected_total = rejected,
                "data file rejected: its name's logical time is further ahead of the enclave's clock than \
                 max_commit_time_ahead allows"
            );
            self.handled.insert(name, FileOutcome::Rejected);
            return Ok(FileOutcome::Rejected);
        }
        let fetched = match self.source.fetch(&full, self.config.budget.max_file_bytes).await {
            // The file's fault, not the source's: rejected below like a file that fails to parse.
            Err(SourceError::TooLarge(e)) => Err(e),
            other => Ok(other?),
        };
        let size = fetched.as_ref().map_or(0, Vec::len);
        let store = self.store.clone();
        let file = full.clone();
        let budget = self.config.budget;
        // Parsing and applying are CPU work: keep them off the async workers serving requests.
        let result = tokio::task::spawn_blocking(move || -> Result<_, data::DataError> {
            let bytes = fetched?;
            let records = data::parse_file_with(&file, &bytes, &budget)?;
            drop(bytes);
            check_commit_times(&file, &records, limit)?;
            let count = records.len();
            Ok((count, store.apply(records)))
        })
        .await
        .map_err(|e| {
            // Not the panic's message: it could quote what the file held.
            let reason = if e.is_panic() { "the parse panicked" } else { "the parse was cancelled" };
            LoadError::Task { file: full.clone(), reason: reason.into() }
        })
        .and_then(|r| r.map_err(LoadError::from));
        self.metrics.file_load_duration.record(started.elapsed());
        let newest = self.newest.entry(name.prefix.clone()).or_insert_with(|| name.clone());
        if *newest < name {
            *newest = name.clone();
        }
        let outcome = match result {
            Ok((count, stats)) => {
                self.metrics.files_loaded.fetch_add(1, Ordering::Relaxed);
                self.metrics.records_applied.fetch_add(stats.applied, Ordering::Relaxed);
                self.metrics.records_stale.fetch_add(stats.stale, Ordering::Relaxed);
                self.metrics.bytes_loaded.fetch_add(size as u64, Ordering::Relaxed);
                let removed = self.cleanup();
                tracing::info!(
                    file = %full,
                    bytes = size,
                    records = count,
                    applied = stats.applied,
                    stale = stats.stale,
                    tombstones_removed = removed,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "data file loaded"
                );
                FileOutcome::Loaded
            }
            Err(e) => {
                let rejected = self.metrics.files_rejected.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    file = %full,
                    error = %e,
                    files_rejected_total = rejected,
                    "data file rejected; nothing of it was applied, the data loaded before stays served"
                );
                FileOutcome::Rejected
            }
        };
        self.handled.insert(name, outcome);
        Ok(outcome)
    }

    /// Removes tombstones older than the retention. Measured from the newest commit time applied,
    /// but never from past the trusted clock: a record ahead of the clock (within the allowed lead)
    /// must not raise the floor below which every key's records are ignored.
    fn cleanup(&self) -> u64 {
        let newest = self.store.max_commit_time().min((self.config.clock)());
        let cutoff = newest.saturating_sub(self.config.tombstone_retention);
        if newest == i64::MIN || cutoff <= self.store.cleanup_floor() {
            return 0;
        }
        let removed = self.store.cleanup_tombstones(cutoff);
        self.metrics.tombstones_removed.fetch_add(removed, Ordering::Relaxed);
        removed
    }
}

/// Rejects a file holding a commit time above `limit` (the trusted clock plus the allowed
/// lead): one such record would otherwise make every later record of its key stale, and used to
/// raise the tombstone floor for every key. The error names the record, never the value.
fn check_commit_times(file: &str, records: &[data::Record], limit: i64) -> Result<(), data::DataError> {
    match records.iter().position(|r| r.logical_commit_time > limit) {
        None => Ok(()),
        Some(i) => Err(data::DataError::record(
            file,
            i as u64 + 1,
            "logical_commit_time is further ahead of the enclave's clock than max_commit_time_ahead allows \
             (commit times are microseconds since the Unix epoch)",
        )),
    }
}

fn full_name(name: &DataFileName) -> String {
    if name.prefix.is_empty() { name.base.clone() } else { format!("{}/{}", name.prefix, name.base) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An in-memory source that records which files were fetched.
    #[derive(Default)]
    struct MemorySource {
        files: Mutex<BTreeMap<String, Vec<u8>>>,
        fetched: Mutex<Vec<String>>,
    }

    impl Source for Arc<MemorySource> {
        fn location(&self) -> String {
            "memory".into()
        }

        async fn list(&self) -> Result<Vec<String>, SourceError> {
            Ok(self.files.lock().unwrap().keys().cloned().collect())
        }

        async fn fetch(&self, name: &str, max_bytes: u64) -> Result<Vec<u8>, SourceError> {
            self.fetched.lock().unwrap().push(name.to_string());
            let bytes = self.files.lock().unwrap()[name].clone();
            if bytes.len() as u64 > max_bytes {
                return Err(SourceError::too_large(name, format!("memory:{name}"), max_bytes, bytes.len()));
            }
            Ok(bytes)
        }
    }

    /// The tests' clock and bound, in commit-time units.
    const NOW: i64 = 1_000_000;
    const AHEAD: i64 = 1_000;

    const HEADER: &str = "key,mutation_type,logical_commit_time,value,value_type\n";

    fn put(source: &MemorySource, name: &str, rows: &str) {
        source.files.lock().unwrap().insert(name.to_string(), format!("{HEADER}{rows}").into_bytes());
    }

    fn loader(source: Arc<MemorySource>) -> (Loader<Arc<MemorySource>>, Arc<Store>, Arc<LoaderMetrics>) {
        let store = Arc::new(Store::new());
        let metrics = Arc::new(LoaderMetrics::default());
        let config = LoaderConfig {
            poll_interval: Duration::from_millis(10),
            tombstone_retention: 100,
            max_commit_time_ahead: AHEAD,
            clock: || NOW,
            budget: data::Budget::default(),
            initial_load_delay: Duration::ZERO,
        };
        (Loader::new(source, store.clone(), Arc::new(Health::new()), metrics.clone(), config), store, metrics)
    }

    fn value(store: &Store, key: &str) -> Option<String> {
        match store.get(key) {
            Some(crate::store::StoredValue::String(s)) => Some(s.into()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn starts_at_the_newest_snapshot_and_replays_newer_deltas_in_order() {
        let source = Arc::new(MemorySource::default());
        put(&source, "DELTA_0000000000000001", "old,UPDATE,1,x,string\n");
        put(&source, "SNAPSHOT_0000000000000002", "a,UPDATE,2,snap,string\n");
        put(&source, "DELTA_0000000000000004", "a,UPDATE,4,four,string\n");
        put(&source, "DELTA_0000000000000003", "a,UPDATE,3,three,string\nb,UPDATE,3,b,string\n");
        put(&source, "p/DELTA_0000000000000001", "p,UPDATE,1,p,string\n");
        put(&source, "README", "not a data file");
        let (mut loader, store, _) = loader(source.clone());
        loader.initial_load().await.unwrap();
        assert_eq!(
            *source.fetched.lock().unwrap(),
            [
                "SNAPSHOT_0000000000000002",
                "DELTA_0000000000000003",
                "DELTA_0000000000000004",
                "p/DELTA_0000000000000001"
            ]
        );
        assert_eq!(value(&store, "a").as_deref(), Some("four"));
        assert_eq!(value(&store, "old"), None, "a delta older than the snapshot is not loaded");
        assert_eq!(value(&store, "p").as_deref(), Some("p"), "prefixes are independent streams");

        put(&source, "DELTA_0000000000000005", "b,DELETE,5,,string\n");
        put(&source, "DELTA_0000000000000002", "late,UPDATE,2,x,string\n");
        source.fetched.lock().unwrap().clear();
        loader.poll_once().await.unwrap();
        assert_eq!(*source.fetched.lock().unwrap(), ["DELTA_0000000000000005"], "only newer files");
        assert_eq!(value(&store, "b"), None);
    }

    #[tokio::test]
    async fn a_rejected_snapshot_falls_back_and_rejected_files_are_never_retried() {
        let source = Arc::new(MemorySource::default());
        put(&source, "SNAPSHOT_0000000000000001", "a,UPDATE,1,one,string\n");
        put(&source, "DELTA_0000000000000002", "a,UPDATE,2,two,string\n");
        put(&source, "SNAPSHOT_0000000000000003", "a,UPDATE,3,three,string\nbroken row\n");
        put(&source, "DELTA_0000000000000004", "b,UPDATE,4,four,string\n");
        let (mut loader, store, metrics) = loader(source.clone());
        loader.initial_load().await.unwrap();
        assert_eq!(value(&store, "a").as_deref(), Some("two"), "older snapshot + its deltas");
        assert_eq!(value(&store, "b").as_deref(), Some("four"));
        assert_eq!(metrics.files_rejected.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.files_loaded.load(Ordering::Relaxed), 3);
        let applied_bytes: usize =
            ["a,UPDATE,1,one,string\n", "a,UPDATE,2,two,string\n", "b,UPDATE,4,four,string\n"]
                .iter()
                .map(|s| HEADER.len() + s.len())
                .sum();
        assert_eq!(
            metrics.bytes_loaded.load(Ordering::Relaxed),
            applied_bytes as u64,
            "rejected bytes not counted"
        );
        assert_eq!(metrics.file_load_duration.count(), 4, "every file handled is timed, rejected ones too");
        assert!(metrics.initial_load_ms.load(Ordering::Relaxed) >= 1, "the initial load's duration is kept");

        put(&source, "DELTA_0000000000000005", "c,UPDATE,5,x,string\nc,UPDATE,oops,y,string\n");
        loader.poll_once().await.unwrap();
        loader.poll_once().await.unwrap();
        assert_eq!(value(&store, "c"), None, "nothing of a rejected file is applied");
        assert_eq!(metrics.files_rejected.load(Ordering::Relaxed), 2, "each rejected file counted once");
        let fetched = source.fetched.lock().unwrap().clone();
        assert_eq!(fetched.iter().filter(|f| f.ends_with("SNAPSHOT_0000000000000003")).count(), 1);
    }

    #[tokio::test]
    async fn tombstones_are_cleaned_after_files_by_the_retention() {
        let source = Arc::new(MemorySource::default());
        put(&source, "SNAPSHOT_0000000000000001", "a,DELETE,10,,string\nb,UPDATE,10,b,string\n");
        put(&source, "DELTA_0000000000000002", "c,UPDATE,200,c,string\n");
        let (mut loader, store, metrics) = loader(source.clone());
        loader.initial_load().await.unwrap();
        // Newest commit time 200, retention 100: the tombstone at 10 is gone, the floor is 100.
        assert_eq!(metrics.tombstones_removed.load(Ordering::Relaxed), 1);
        assert_eq!(store.stats().tombstones, 0);
        assert_eq!(store.cleanup_floor(), 100);
    }

    /// Issue 14 item 1: one record with a far-future commit time raised the tombstone floor so
    /// that every later update and delete of every key was dropped as stale.
    #[tokio::test]
    async fn a_far_future_commit_time_is_rejected_and_never_moves_the_floor_past_the_clock() {
        let source = Arc::new(MemorySource::default());
        put(&source, "SNAPSHOT_0000000000000001", "a,UPDATE,10,ten,string\n");
        put(
            &source,
            "DELTA_0000000000000002",
            "x,UPDATE,20,ok,string\nx,UPDATE,9223372036854775807,max,string\n",
        );
        put(&source, "DELTA_0000000000000003", &format!("b,UPDATE,{},soon,string\n", NOW + AHEAD));
        put(&source, "DELTA_9999999999999999", "c,UPDATE,1,named far ahead,string\n");
        let (mut loader, store, metrics) = loader(source.clone());
        loader.initial_load().await.unwrap();
        assert_eq!(value(&store, "x"), None, "a file with a commit time far ahead is rejected whole");
        assert_eq!(value(&store, "b").as_deref(), Some("soon"), "a commit time within the bound loads");
        assert_eq!(value(&store, "c"), None, "a file named far ahead is rejected");
        assert!(
            !source.fetched.lock().unwrap().iter().any(|f| f.starts_with("DELTA_9999")),
            "a file named far ahead is not even fetched"
        );
        assert_eq!(metrics.files_rejected.load(Ordering::Relaxed), 2);
        assert!(
            store.cleanup_floor() <= NOW - 100,
            "the floor follows the clock, not the newest record: {}",
            store.cleanup_floor()
        );

        // Later files still load, and an update older than the newest record but within the
        // retention of the clock is applied.
        put(&source, "DELTA_0000000000000004", &format!("a,UPDATE,{},recent,string\n", NOW - 50));
        loader.poll_once().await.unwrap();
        assert_eq!(value(&store, "a").as_deref(), Some("recent"));
    }

    /// Issue 14 item 5: a file over the budget is the file's fault, not the source's: rejected,
    /// counted and never fetched again (not retried at every poll), and the files after it load.
    #[tokio::test]
    async fn a_file_over_the_budget_is_rejected_counted_not_retried_and_later_files_load() {
        let source = Arc::new(MemorySource::default());
        put(&source, "SNAPSHOT_0000000000000001", "a,UPDATE,1,one,string\n");
        put(&source, "DELTA_0000000000000002", &"b,UPDATE,2,two,string\n".repeat(20));
        put(&source, "DELTA_0000000000000003", "c,UPDATE,3,three,string\n");
        let (mut loader, store, metrics) = loader(source.clone());
        loader.config.budget.max_file_bytes = 200;
        loader.config.budget.max_records = 3;
        loader.initial_load().await.expect("an over-size file is not a source error");
        assert_eq!(value(&store, "a").as_deref(), Some("one"));
        assert_eq!(value(&store, "b"), None, "nothing of the over-size file is applied");
        assert_eq!(value(&store, "c").as_deref(), Some("three"), "the file after it loads");
        assert_eq!(metrics.files_rejected.load(Ordering::Relaxed), 1);

        // Within max_file_bytes but over max_records: rejected the same way.
        put(&source, "DELTA_0000000000000004", &"d,UPDATE,4,four,string\n".repeat(4));
        put(&source, "DELTA_0000000000000005", "e,UPDATE,5,five,string\n");
        loader.poll_once().await.unwrap();
        loader.poll_once().await.unwrap();
        assert_eq!(value(&store, "d"), None);
        assert_eq!(value(&store, "e").as_deref(), Some("five"));
        assert_eq!(metrics.files_rejected.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.files_loaded.load(Ordering::Relaxed), 3);
        let fetched = source.fetched.lock().unwrap().clone();
        for file in ["DELTA_0000000000000002", "DELTA_0000000000000004"] {
            assert_eq!(fetched.iter().filter(|f| *f == file).count(), 1, "{file} fetched once: {fetched:?}");
        }
    }

    #[test]
    fn a_commit_time_too_far_ahead_names_the_file_record_and_field_but_not_the_value() {
        let records = vec![
            data::Record { key: "k".into(), logical_commit_time: 5, mutation: data::Mutation::Delete },
            data::Record {
                key: "secret-key".into(),
                logical_commit_time: 123_456_789,
                mutation: data::Mutation::Delete,
            },
        ];
        let err = check_commit_times("p/DELTA_0000000000000002", &records, 1_000).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("p/DELTA_0000000000000002: record 2: logical_commit_time"), "{text}");
        assert!(!text.contains("123456789") && !text.contains("secret"), "{text}");
        assert!(check_commit_times("f", &records, 123_456_789).is_ok());
    }
}
