//! Loading data files from a [`Source`] into the [`Store`].
//!
//! Order, per prefix (each prefix is an independent stream of files):
//! 1. at start, the newest `SNAPSHOT_` that loads (a rejected one falls back to the one before
//!    it) and then every newer `DELTA_`, oldest first;
//! 2. afterwards, at every poll, each file newer than the newest one handled, oldest first (a
//!    later snapshot is merged like a delta: newest commit time wins either way).
//!
//! A file is parsed completely before anything is applied, so a file that fails to parse is
//! rejected whole: nothing of it is applied, what was loaded stays served, the rejection is logged
//! with the parser's message (file, record number, reason) and counted, and the file is not
//! retried (a fixed file gets a new name). A file with a commit time (or a name) more than
//! `max_commit_time_ahead` ahead of the enclave's clock is rejected the same way.
//!
//! A file that cannot be fetched (while listing works) holds back the newer files of its prefix
//! only: it is retried with a doubling backoff and, after `max_fetch_attempts`, rejected and
//! counted, and its prefix moves on. A listing failure is retried at the next poll.
//!
//! Floors: each prefix has its own floor, `min(newest commit time of the prefix, clock) -
//! tombstone_retention`; a record at or below its prefix's floor is stale. Tombstones are removed
//! store-wide only up to the lowest prefix floor, and only once the initial load has seen every
//! prefix, so a prefix that is older than another never loses records to the other's floor and a
//! restarted replica ends in the same state as a running one.
//!
//! Polling: after the initial load, each poll lists, per known prefix and kind, only the names
//! after the newest one handled (S3 `StartAfter`), and every [`RESCAN_EVERY`] polls the whole
//! source (to find new prefixes). What the loader remembers is bounded: per prefix its newest
//! file, floor and at most one file being retried, plus a bounded set of names rejected for
//! being ahead of the clock.
//!
//! Freshness: the time of the last poll that listed the source and handled every file it listed
//! is exported (`sync_age`), and the `kv-data-freshness` health status is NOT_SERVING when that
//! is older than `max_staleness`. `loadbalancer-healthcheck` turns SERVING only once a file has
//! been applied (or the source holds no data file at all): a source whose files were all rejected
//! does not make the server look ready with an empty store.
//!
//! A file over the [`data::Budget`] (its size, which the source checks before reading it whole,
//! what it inflates to, its records) is rejected the same way as one that fails to parse.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::data::{self, DataFileName, FileKind};
use crate::health::Health;
use crate::source::{Source, SourceError};
use crate::store::Store;

/// Upper bounds of the data-file load time histogram (fetch, parse, apply), in milliseconds.
pub static LOAD_BOUNDS_MS: [f64; 12] =
    [1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10_000.0, 30_000.0, 60_000.0, 300_000.0];

/// Every this many polls, the whole source is listed (new prefixes appear); in between, only
/// the names after each known prefix's newest file.
pub const RESCAN_EVERY: u64 = 60;
/// The longest wait between two fetch attempts of one file.
pub const MAX_FETCH_BACKOFF: Duration = Duration::from_secs(60);
/// At most this many names rejected for being ahead of the clock are remembered (so they are not
/// fetched and logged again at every poll); beyond it the oldest are forgotten.
const MAX_REMEMBERED_AHEAD: usize = 1024;

/// Counters of the loader, for logs and metrics.
#[derive(Debug)]
pub struct LoaderMetrics {
    pub files_loaded: AtomicU64,
    pub files_rejected: AtomicU64,
    pub records_applied: AtomicU64,
    pub records_stale: AtomicU64,
    pub source_errors: AtomicU64,
    pub tombstones_removed: AtomicU64,
    /// Files rejected because every fetch attempt failed (also counted in `files_rejected`).
    pub files_unfetchable: AtomicU64,
    /// Bytes of the files applied.
    pub bytes_loaded: AtomicU64,
    /// Fetch + parse + apply time of each file handled (applied or rejected), in milliseconds
    /// (`kv_server.data.load.duration`).
    pub file_load_duration: opentelemetry::metrics::Histogram<f64>,
    /// How long the initial load took, in milliseconds (at least 1); 0 until it finished.
    pub initial_load_ms: AtomicU64,
    /// Unix time (ms) of the last poll that listed the source and handled every file listed; 0
    /// before the first.
    pub last_sync_unix_ms: AtomicU64,
    /// Files listed at the last poll and not handled yet (waiting behind a file being retried).
    pub files_pending: AtomicU64,
}

impl Default for LoaderMetrics {
    /// The counters at zero and the load-time histogram on the process's meter provider (a no-op
    /// one until telemetry started: create these after [`crate::telemetry::start`]).
    fn default() -> Self {
        // The scope telemetry's own instruments use (same name and version: one scope in exports).
        let scope = opentelemetry::InstrumentationScope::builder("kv-server")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        LoaderMetrics::with_meter(&opentelemetry::global::meter_with_scope(scope))
    }
}

impl LoaderMetrics {
    /// The counters at zero and the load-time histogram on `meter`.
    pub fn with_meter(meter: &opentelemetry::metrics::Meter) -> Self {
        LoaderMetrics {
            files_loaded: AtomicU64::new(0),
            files_rejected: AtomicU64::new(0),
            records_applied: AtomicU64::new(0),
            records_stale: AtomicU64::new(0),
            source_errors: AtomicU64::new(0),
            tombstones_removed: AtomicU64::new(0),
            files_unfetchable: AtomicU64::new(0),
            bytes_loaded: AtomicU64::new(0),
            file_load_duration: meter
                .f64_histogram("kv_server.data.load.duration")
                .with_description("Time to fetch, parse and apply one data file (applied or rejected)")
                .with_unit("ms")
                .with_boundaries(LOAD_BOUNDS_MS.to_vec())
                .build(),
            initial_load_ms: AtomicU64::new(0),
            last_sync_unix_ms: AtomicU64::new(0),
            files_pending: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> [(&'static str, u64); 7] {
        [
            ("files_loaded", self.files_loaded.load(Ordering::Relaxed)),
            ("files_rejected", self.files_rejected.load(Ordering::Relaxed)),
            ("records_applied", self.records_applied.load(Ordering::Relaxed)),
            ("records_stale", self.records_stale.load(Ordering::Relaxed)),
            ("source_errors", self.source_errors.load(Ordering::Relaxed)),
            ("tombstones_removed", self.tombstones_removed.load(Ordering::Relaxed)),
            ("files_unfetchable", self.files_unfetchable.load(Ordering::Relaxed)),
        ]
    }

    /// Seconds since the last complete sync (`None` before the first).
    pub fn sync_age(&self, now_unix_ms: u64) -> Option<Duration> {
        match self.last_sync_unix_ms.load(Ordering::Relaxed) {
            0 => None,
            last => Some(Duration::from_millis(now_unix_ms.saturating_sub(last))),
        }
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
    /// Fetch attempts of one file before it is rejected and its prefix moves on.
    pub max_fetch_attempts: u32,
    /// `kv-data-freshness` is NOT_SERVING when the last complete sync is older than this.
    pub max_staleness: Duration,
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

fn unix_millis() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// What the loader keeps per prefix.
#[derive(Debug)]
struct PrefixState {
    /// The newest file handled (applied or rejected).
    newest: Option<DataFileName>,
    /// The newest commit time applied from this prefix.
    newest_commit_time: i64,
    /// Records of this prefix at or below this are stale.
    floor: i64,
    /// The file whose fetch failed, when it may be tried again, and how often it was.
    retry: Option<Retry>,
}

impl Default for PrefixState {
    fn default() -> Self {
        PrefixState { newest: None, newest_commit_time: i64::MIN, floor: i64::MIN, retry: None }
    }
}

#[derive(Debug)]
struct Retry {
    file: DataFileName,
    attempts: u32,
    not_before: Instant,
}

pub struct Loader<S: Source> {
    source: S,
    store: Arc<Store>,
    health: Arc<Health>,
    metrics: Arc<LoaderMetrics>,
    config: LoaderConfig,
    prefixes: BTreeMap<String, PrefixState>,
    /// During the initial load, every file handled, so that its retries skip them; emptied when
    /// it finishes (afterwards listings start after each prefix's newest file).
    handled: HashMap<DataFileName, FileOutcome>,
    /// Names rejected for being ahead of the clock: never made the newest of their prefix (that
    /// would hide every later file), so remembered here to be skipped.
    ahead: BTreeSet<DataFileName>,
    initial_done: bool,
    /// `loadbalancer-healthcheck` was turned SERVING.
    serving: bool,
    polls: u64,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOutcome {
    Loaded,
    Rejected,
}

/// A file's turn: handled, or waiting for a fetch retry (its prefix waits with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Done(FileOutcome),
    Waiting,
}

impl<S: Source> Loader<S> {
    pub fn new(
        source: S,
        store: Arc<Store>,
        health: Arc<Health>,
        metrics: Arc<LoaderMetrics>,
        config: LoaderConfig,
    ) -> Self {
        Loader {
            source,
            store,
            health,
            metrics,
            config,
            prefixes: BTreeMap::new(),
            handled: HashMap::new(),
            ahead: BTreeSet::new(),
            initial_done: false,
            serving: false,
            polls: 0,
        }
    }

    /// Loads at start, marks the data loaded, then follows new files until `shutdown` resolves.
    /// A file being fetched or parsed when `shutdown` resolves is abandoned (nothing of it is
    /// applied), so a shutdown never waits for a load.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        if !self.config.initial_load_delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(self.config.initial_load_delay) => {}
                _ = &mut shutdown => return,
            }
        }
        loop {
            let result = tokio::select! {
                result = self.initial_load() => result,
                _ = &mut shutdown => return,
            };
            match result {
                Ok(true) => break,
                Ok(false) => {}
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
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = &mut shutdown => return,
            }
            let result = tokio::select! {
                result = self.poll_once() => result,
                _ = &mut shutdown => return,
            };
            if let Err(e) = result {
                self.metrics.source_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "checking for new data files failed; retrying at the next poll");
            }
            self.update_freshness();
        }
    }

    /// Per prefix: the newest snapshot that loads (a rejected snapshot falls back to the one
    /// before it), then every newer delta. A rejected delta does not stop the load. Returns
    /// whether it finished: `false` while a file of some prefix waits for a fetch retry (the
    /// other prefixes are loaded meanwhile); a listing error stops it. A retry skips every file
    /// already handled.
    pub async fn initial_load(&mut self) -> Result<bool, SourceError> {
        let started = Instant::now();
        let listed = self.source.list().await?;
        let mut by_prefix: BTreeMap<String, Vec<DataFileName>> = BTreeMap::new();
        for name in listed.iter().filter_map(|n| DataFileName::parse(n)) {
            by_prefix.entry(name.prefix.clone()).or_default().push(name);
        }
        let listed_files: usize = by_prefix.values().map(Vec::len).sum();
        tracing::info!(location = %self.source.location(), prefixes = by_prefix.len(), "initial data load");
        let mut complete = true;
        let mut pending = 0u64;
        'prefixes: for mut files in by_prefix.into_values() {
            files.sort();
            self.prefixes.entry(files[0].prefix.clone()).or_default();
            let mut base: Option<DataFileName> = None;
            for snapshot in files.iter().rev().filter(|f| f.kind == FileKind::Snapshot) {
                let outcome = match self.handled.get(snapshot) {
                    Some(outcome) => *outcome,
                    None => match self.load_file(snapshot.clone()).await {
                        Step::Done(outcome) => outcome,
                        Step::Waiting => {
                            complete = false;
                            pending += files.len() as u64;
                            continue 'prefixes;
                        }
                    },
                };
                if outcome == FileOutcome::Loaded {
                    base = Some(snapshot.clone());
                    break;
                }
                tracing::warn!(file = %snapshot, "snapshot rejected; falling back to the one before it, if any");
            }
            let deltas: Vec<DataFileName> = files
                .into_iter()
                .filter(|f| f.kind == FileKind::Delta)
                .filter(|d| base.as_ref().is_none_or(|b| b < d) && !self.handled.contains_key(d))
                .collect();
            for (i, delta) in deltas.iter().enumerate() {
                if self.load_file(delta.clone()).await == Step::Waiting {
                    complete = false;
                    pending += (deltas.len() - i) as u64;
                    continue 'prefixes;
                }
            }
        }
        self.metrics.files_pending.store(pending, Ordering::Relaxed);
        if !complete {
            return Ok(false);
        }
        // Every prefix is known now: tombstones can go up to the lowest prefix floor.
        self.initial_done = true;
        self.handled = HashMap::new();
        self.cleanup();
        self.metrics.last_sync_unix_ms.store(unix_millis(), Ordering::Relaxed);
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
        if listed_files == 0 {
            tracing::warn!(location = %self.source.location(), "the data source holds no data file; serving an empty store");
        }
        self.serve_if_loaded(listed_files == 0);
        self.update_freshness();
        Ok(true)
    }

    /// Loads every file newer than the newest one handled in its prefix. A file waiting for a
    /// fetch retry holds back only its own prefix.
    pub async fn poll_once(&mut self) -> Result<(), SourceError> {
        self.polls += 1;
        let mut names: Vec<DataFileName> = if self.polls.is_multiple_of(RESCAN_EVERY) || !self.initial_done {
            self.source.list().await?.iter().filter_map(|n| DataFileName::parse(n)).collect()
        } else {
            let mut names = Vec::new();
            let known: Vec<(String, Option<DataFileName>)> =
                self.prefixes.iter().map(|(p, s)| (p.clone(), s.newest.clone())).collect();
            for (prefix, newest) in known {
                for kind in [FileKind::Snapshot, FileKind::Delta] {
                    // Names of this kind after the newest handled one (at its time less one, as a
                    // delta of the same time as a snapshot sorts after it).
                    let after = newest
                        .as_ref()
                        .and_then(|n| DataFileName::new(kind, n.logical_time.saturating_sub(1), &prefix));
                    let listed =
                        self.source.list_newer(&prefix, kind, after.as_ref().map(|a| a.base.as_str()));
                    names.extend(listed.await?.iter().filter_map(|n| DataFileName::parse(n)));
                }
            }
            names
        };
        names.sort();
        names.dedup();
        let mut waiting: BTreeSet<String> = BTreeSet::new();
        let mut pending = 0u64;
        for name in names {
            let state = self.prefixes.entry(name.prefix.clone()).or_default();
            if state.newest.as_ref().is_some_and(|n| *n >= name)
                || self.handled.contains_key(&name)
                || self.ahead.contains(&name)
            {
                continue;
            }
            if waiting.contains(&name.prefix) {
                pending += 1;
                continue;
            }
            let prefix = name.prefix.clone();
            if self.load_file(name).await == Step::Waiting {
                waiting.insert(prefix);
                pending += 1;
            }
        }
        self.metrics.files_pending.store(pending, Ordering::Relaxed);
        if waiting.is_empty() {
            self.metrics.last_sync_unix_ms.store(unix_millis(), Ordering::Relaxed);
        }
        self.serve_if_loaded(false);
        Ok(())
    }

    /// Turns `loadbalancer-healthcheck` SERVING once the initial load finished and a file was
    /// applied (or the source is empty).
    fn serve_if_loaded(&mut self, source_empty: bool) {
        if self.serving || !self.initial_done {
            return;
        }
        if source_empty || self.metrics.files_loaded.load(Ordering::Relaxed) > 0 {
            self.serving = true;
            self.health.set_data_loaded();
        } else {
            tracing::error!(
                files_rejected_total = self.metrics.files_rejected.load(Ordering::Relaxed),
                "every data file was rejected: loadbalancer-healthcheck stays NOT_SERVING until one loads"
            );
        }
    }

    /// Sets `kv-data-freshness` from the age of the last complete sync.
    fn update_freshness(&self) {
        let fresh = self.metrics.sync_age(unix_millis()).is_some_and(|age| age <= self.config.max_staleness);
        self.health.set_data_fresh(fresh);
    }

    /// Fetches, parses and applies one file. A bad file is logged, counted and remembered as
    /// handled; a failed fetch is retried with backoff (the prefix waits), then rejected.
    async fn load_file(&mut self, name: DataFileName) -> Step {
        let full = name.to_string();
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
            if self.ahead.len() >= MAX_REMEMBERED_AHEAD {
                self.ahead.pop_first();
            }
            self.ahead.insert(name);
            return Step::Done(FileOutcome::Rejected);
        }
        let state = self.prefixes.entry(name.prefix.clone()).or_default();
        if let Some(retry) = &state.retry
            && retry.file == name
            && Instant::now() < retry.not_before
        {
            return Step::Waiting;
        }
        let fetched = match self.source.fetch(&full, self.config.budget.max_file_bytes).await {
            Ok(bytes) => {
                state.retry = None;
                Ok(bytes)
            }
            // The file's fault, not the source's: rejected below like a file that fails to parse.
            Err(SourceError::TooLarge(e)) => {
                state.retry = None;
                Err(e)
            }
            Err(e) => {
                self.metrics.source_errors.fetch_add(1, Ordering::Relaxed);
                let attempts = match &state.retry {
                    Some(retry) if retry.file == name => retry.attempts + 1,
                    _ => 1,
                };
                if attempts < self.config.max_fetch_attempts {
                    let delay = fetch_backoff(self.config.poll_interval, attempts);
                    tracing::warn!(
                        file = %full,
                        error = %e,
                        attempt = attempts,
                        retry_in_ms = delay.as_millis() as u64,
                        "fetching a data file failed; newer files of its prefix wait for it"
                    );
                    state.retry = Some(Retry { file: name, attempts, not_before: Instant::now() + delay });
                    return Step::Waiting;
                }
                state.retry = None;
                self.metrics.files_unfetchable.fetch_add(1, Ordering::Relaxed);
                let rejected = self.metrics.files_rejected.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    file = %full,
                    error = %e,
                    attempts,
                    files_rejected_total = rejected,
                    "data file rejected: every fetch attempt failed; its prefix moves on to newer files"
                );
                self.metrics.file_load_duration.record(started.elapsed().as_secs_f64() * 1e3, &[]);
                self.handled_file(name, FileOutcome::Rejected);
                return Step::Done(FileOutcome::Rejected);
            }
        };
        let size = fetched.as_ref().map_or(0, Vec::len);
        let store = self.store.clone();
        let file = full.clone();
        let floor = state.floor;
        let budget = self.config.budget;
        // Parsing and applying are CPU work: keep them off the async workers serving requests.
        let result = tokio::task::spawn_blocking(move || -> Result<_, data::DataError> {
            let bytes = fetched?;
            let records = data::parse_file_with(&file, &bytes, &budget)?;
            drop(bytes);
            check_commit_times(&file, &records, limit)?;
            let count = records.len();
            Ok((count, store.apply_above(records, floor)))
        })
        .await
        .map_err(|e| {
            // Not the panic's message: it could quote what the file held.
            let reason = if e.is_panic() { "the parse panicked" } else { "the parse was cancelled" };
            LoadError::Task { file: full.clone(), reason: reason.into() }
        })
        .and_then(|r| r.map_err(LoadError::from));
        self.metrics.file_load_duration.record(started.elapsed().as_secs_f64() * 1e3, &[]);
        let outcome = match result {
            Ok((count, stats)) => {
                self.metrics.files_loaded.fetch_add(1, Ordering::Relaxed);
                self.metrics.records_applied.fetch_add(stats.applied, Ordering::Relaxed);
                self.metrics.records_stale.fetch_add(stats.stale, Ordering::Relaxed);
                self.metrics.bytes_loaded.fetch_add(size as u64, Ordering::Relaxed);
                let clock = (self.config.clock)();
                let state = self.prefixes.entry(name.prefix.clone()).or_default();
                state.newest_commit_time = state.newest_commit_time.max(stats.max_commit_time);
                // Never from past the trusted clock: a record ahead of it (within the allowed
                // lead) must not raise the floor below which the prefix's records are ignored.
                let newest = state.newest_commit_time.min(clock);
                if newest != i64::MIN {
                    state.floor = state.floor.max(newest.saturating_sub(self.config.tombstone_retention));
                }
                let removed = if self.initial_done { self.cleanup() } else { 0 };
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
        self.handled_file(name, outcome);
        Step::Done(outcome)
    }

    fn handled_file(&mut self, name: DataFileName, outcome: FileOutcome) {
        let state = self.prefixes.entry(name.prefix.clone()).or_default();
        if state.newest.as_ref().is_none_or(|n| *n < name) {
            state.newest = Some(name.clone());
        }
        if !self.initial_done {
            self.handled.insert(name, outcome);
        }
    }

    /// Removes tombstones up to the lowest floor of the prefixes that loaded a file (so no
    /// prefix can still apply a record the removed tombstone was blocking).
    fn cleanup(&self) -> u64 {
        let cutoff = self.prefixes.values().map(|p| p.floor).filter(|f| *f != i64::MIN).min();
        let Some(cutoff) = cutoff else { return 0 };
        if cutoff <= self.store.cleanup_floor() {
            return 0;
        }
        let removed = self.store.cleanup_tombstones(cutoff);
        self.metrics.tombstones_removed.fetch_add(removed, Ordering::Relaxed);
        removed
    }
}

/// The wait before fetch attempt `attempts + 1`: the poll interval, doubling, at most
/// [`MAX_FETCH_BACKOFF`].
fn fetch_backoff(poll_interval: Duration, attempts: u32) -> Duration {
    poll_interval.saturating_mul(1 << attempts.saturating_sub(1).min(16)).min(MAX_FETCH_BACKOFF)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{DATA_FRESHNESS, LOADBALANCER};
    use crate::proto::grpc::health::v1::health_check_response::ServingStatus;
    use std::sync::Mutex;

    /// An in-memory source that records which files were fetched.
    #[derive(Default)]
    struct MemorySource {
        files: Mutex<BTreeMap<String, Vec<u8>>>,
        fetched: Mutex<Vec<String>>,
        /// Calls of `list_newer`: prefix, kind, after.
        listed_newer: Mutex<Vec<(String, FileKind, Option<String>)>>,
        /// Names whose fetch fails.
        unfetchable: Mutex<BTreeSet<String>>,
        full_lists: Mutex<u64>,
    }

    impl Source for Arc<MemorySource> {
        fn location(&self) -> String {
            "memory".into()
        }

        async fn list(&self) -> Result<Vec<String>, SourceError> {
            *self.full_lists.lock().unwrap() += 1;
            Ok(self.files.lock().unwrap().keys().cloned().collect())
        }

        async fn list_newer(
            &self,
            prefix: &str,
            kind: FileKind,
            after: Option<&str>,
        ) -> Result<Vec<String>, SourceError> {
            self.listed_newer.lock().unwrap().push((prefix.to_string(), kind, after.map(str::to_string)));
            let files = self.files.lock().unwrap();
            Ok(files
                .keys()
                .filter_map(|n| DataFileName::parse(n).map(|d| (n, d)))
                .filter(|(_, d)| {
                    d.prefix == prefix && d.kind == kind && after.is_none_or(|a| d.base.as_str() > a)
                })
                .map(|(n, _)| n.clone())
                .collect())
        }

        async fn fetch(&self, name: &str, max_bytes: u64) -> Result<Vec<u8>, SourceError> {
            self.fetched.lock().unwrap().push(name.to_string());
            if self.unfetchable.lock().unwrap().contains(name) {
                return Err(SourceError::Fetch {
                    location: "memory".into(),
                    file: name.into(),
                    source: "HTTP 403 AccessDenied".into(),
                });
            }
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
        let (loader, store, metrics, _) = loader_with_health(source);
        (loader, store, metrics)
    }

    fn loader_with_health(
        source: Arc<MemorySource>,
    ) -> (Loader<Arc<MemorySource>>, Arc<Store>, Arc<LoaderMetrics>, Arc<Health>) {
        loader_measured(source, LoaderMetrics::default())
    }

    fn loader_measured(
        source: Arc<MemorySource>,
        metrics: LoaderMetrics,
    ) -> (Loader<Arc<MemorySource>>, Arc<Store>, Arc<LoaderMetrics>, Arc<Health>) {
        let store = Arc::new(Store::new());
        let metrics = Arc::new(metrics);
        let config = LoaderConfig {
            poll_interval: Duration::from_millis(10),
            tombstone_retention: 100,
            max_commit_time_ahead: AHEAD,
            max_fetch_attempts: 3,
            max_staleness: Duration::from_secs(300),
            clock: || NOW,
            budget: data::Budget::default(),
            initial_load_delay: Duration::ZERO,
        };
        let health = Arc::new(Health::new());
        (Loader::new(source, store.clone(), health.clone(), metrics.clone(), config), store, metrics, health)
    }

    /// How many data-file load times the newest export of `kv_server.data.load.duration` counts.
    fn load_times_recorded(exporter: &opentelemetry_sdk::metrics::InMemoryMetricExporter) -> u64 {
        use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
        let exports = exporter.get_finished_metrics().unwrap();
        let newest = exports.last().expect("one export");
        let metric = newest
            .scope_metrics()
            .flat_map(|s| s.metrics())
            .find(|m| m.name() == "kv_server.data.load.duration")
            .expect("the load-time histogram");
        let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = metric.data() else {
            panic!("an f64 histogram expected")
        };
        histogram.data_points().map(|p| p.count()).sum()
    }

    fn status(health: &Health, name: &str) -> ServingStatus {
        health.status(name).unwrap()
    }

    fn value(store: &Store, key: &str) -> Option<String> {
        store.get(key).and_then(|v| v.as_str().map(String::from))
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
        assert!(loader.initial_load().await.unwrap());
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
        // The load-time histogram on a meter whose exports the test reads.
        let exporter = opentelemetry_sdk::metrics::InMemoryMetricExporter::default();
        let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(opentelemetry_sdk::metrics::PeriodicReader::builder(exporter.clone()).build())
            .build();
        let measured =
            LoaderMetrics::with_meter(&opentelemetry::metrics::MeterProvider::meter(&meters, "test"));
        let (mut loader, store, metrics, _) = loader_measured(source.clone(), measured);
        assert!(loader.initial_load().await.unwrap());
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
        meters.force_flush().unwrap();
        assert_eq!(load_times_recorded(&exporter), 4, "every file handled is timed, rejected ones too");
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
        assert!(loader.initial_load().await.unwrap());
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
        assert!(loader.initial_load().await.unwrap());
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

    /// Issue 14 item 2: the tombstone floor was global, and prefixes load one after another at
    /// start, so a prefix whose records are older than another prefix's by more than the
    /// retention lost them on every restart (while a running replica that had loaded them kept
    /// them): replicas diverged.
    #[tokio::test]
    async fn each_prefix_has_its_own_floor_so_an_older_prefix_survives_a_restart() {
        let source = Arc::new(MemorySource::default());
        // Retention 100: prefix `a` is at NOW - 10, prefix `b` more than 100 older.
        put(&source, "a/SNAPSHOT_0000000000000001", &format!("a1,UPDATE,{},new,string\n", NOW - 10));
        put(&source, "b/SNAPSHOT_0000000000000001", &format!("b1,UPDATE,{},old,string\n", NOW - 5_000));
        put(
            &source,
            "b/DELTA_0000000000000002",
            &format!("b2,UPDATE,{},older,string\nb1,DELETE,{},,string\n", NOW - 4_990, NOW - 4_950),
        );
        let (mut loader, store, _) = loader(source.clone());
        assert!(loader.initial_load().await.unwrap());
        assert_eq!(value(&store, "a1").as_deref(), Some("new"));
        assert_eq!(value(&store, "b2").as_deref(), Some("older"), "prefix b is not cut by prefix a's floor");
        assert_eq!(value(&store, "b1"), None, "b's delete applied");

        // A running replica: b's next delta is newer than b's own floor, so it applies, and the
        // restarted replica below ends in the same state.
        put(&source, "b/DELTA_0000000000000003", &format!("b3,UPDATE,{},later,string\n", NOW - 4_900));
        // Older than b's newest by more than the retention: stale in b's stream, on both replicas.
        put(&source, "b/DELTA_0000000000000004", &format!("b4,UPDATE,{},late,string\n", NOW - 6_000));
        loader.poll_once().await.unwrap();
        assert_eq!(value(&store, "b3").as_deref(), Some("later"));
        assert_eq!(value(&store, "b4"), None);

        let (mut restarted, restarted_store, _) = self::loader(source.clone());
        assert!(restarted.initial_load().await.unwrap());
        for key in ["a1", "b1", "b2", "b3", "b4"] {
            assert_eq!(value(&restarted_store, key), value(&store, key), "key {key} after a restart");
        }
        // b's tombstone is younger than b's floor: kept, on both (the store-wide cleanup cutoff is
        // the lowest prefix floor).
        assert_eq!(store.stats().tombstones, 1);
        assert_eq!(restarted_store.stats().tombstones, 1);
    }

    /// Issue 14 item 8: one object that could never be fetched (403, archived, 5xx forever)
    /// aborted every poll, so no newer file was ever applied, and the initial load never finished.
    #[tokio::test]
    async fn an_unfetchable_file_is_retried_with_backoff_then_rejected_and_its_prefix_moves_on() {
        let source = Arc::new(MemorySource::default());
        put(&source, "SNAPSHOT_0000000000000001", "a,UPDATE,1,one,string\n");
        put(&source, "SNAPSHOT_0000000000000002", "a,UPDATE,2,two,string\n");
        put(&source, "DELTA_0000000000000003", "b,UPDATE,3,three,string\n");
        put(&source, "p/DELTA_0000000000000001", "p,UPDATE,1,p,string\n");
        source.unfetchable.lock().unwrap().insert("SNAPSHOT_0000000000000002".into());
        let (mut loader, store, metrics, health) = loader_with_health(source.clone());
        // The backoff starts at the poll interval: long enough that the check below that a retry
        // waits for it does not depend on how fast this machine is.
        loader.config.poll_interval = Duration::from_millis(100);
        // Before the first attempt: the backoff is counted from the attempts, which all come
        // after this (taken after the first one, a stall in between made the 300 ms check fail).
        let started = Instant::now();
        assert!(!loader.initial_load().await.unwrap(), "the snapshot waits for its retry");
        assert_eq!(value(&store, "p").as_deref(), Some("p"), "other prefixes load meanwhile");
        assert_eq!(value(&store, "a"), None, "no fallback before the retries are spent");
        assert_eq!(status(&health, LOADBALANCER), ServingStatus::NotServing);
        let second_call = Instant::now();
        assert!(!loader.initial_load().await.unwrap(), "not retried before the backoff");
        let attempts = || {
            source
                .fetched
                .lock()
                .unwrap()
                .iter()
                .filter(|f| f.starts_with("SNAPSHOT_0000000000000002"))
                .count()
        };
        // Only meaningful if this machine got to the second call within the backoff.
        if second_call.duration_since(started) < Duration::from_millis(90) {
            assert_eq!(attempts(), 1, "retried before the backoff");
        }
        while !loader.initial_load().await.unwrap() {
            assert!(started.elapsed() < Duration::from_secs(5), "the initial load never finished");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(attempts(), 3, "max_fetch_attempts");
        assert!(started.elapsed() >= Duration::from_millis(300), "backoff: 100 ms, then 200 ms");
        assert_eq!(value(&store, "a").as_deref(), Some("one"), "fell back to the snapshot before it");
        assert_eq!(value(&store, "b").as_deref(), Some("three"));
        assert_eq!(metrics.files_unfetchable.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.files_rejected.load(Ordering::Relaxed), 1);
        assert_eq!(status(&health, LOADBALANCER), ServingStatus::Serving);

        // While polling: a delta that cannot be fetched holds back its prefix's newer deltas
        // until its attempts are spent, then they load.
        put(&source, "DELTA_0000000000000004", "c,UPDATE,4,four,string\n");
        put(&source, "DELTA_0000000000000005", "d,UPDATE,5,five,string\n");
        source.unfetchable.lock().unwrap().insert("DELTA_0000000000000004".into());
        loader.poll_once().await.unwrap();
        assert_eq!(value(&store, "d"), None, "files keep their order within a prefix");
        assert_eq!(metrics.files_pending.load(Ordering::Relaxed), 2);
        let started = Instant::now();
        while value(&store, "d").is_none() {
            assert!(started.elapsed() < Duration::from_secs(5), "the prefix never moved on");
            tokio::time::sleep(Duration::from_millis(5)).await;
            loader.poll_once().await.unwrap();
        }
        assert_eq!(metrics.files_unfetchable.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.files_pending.load(Ordering::Relaxed), 0);
        // A fetch that recovers within its attempts loads normally.
        put(&source, "DELTA_0000000000000006", "e,UPDATE,6,six,string\n");
        source.unfetchable.lock().unwrap().insert("DELTA_0000000000000006".into());
        loader.poll_once().await.unwrap();
        source.unfetchable.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(150)).await;
        loader.poll_once().await.unwrap();
        assert_eq!(value(&store, "e").as_deref(), Some("six"));
        assert_eq!(metrics.files_unfetchable.load(Ordering::Relaxed), 2);
    }

    /// Issue 14 item 9: the server reported SERVING with an empty store when every file was
    /// rejected, and gave no signal while the data fell behind its source.
    #[tokio::test]
    async fn serving_needs_a_loaded_file_and_freshness_follows_the_last_complete_sync() {
        let source = Arc::new(MemorySource::default());
        put(&source, "SNAPSHOT_0000000000000001", "broken row\n");
        put(&source, "DELTA_0000000000000002", "a,UPDATE,oops,x,string\n");
        let (mut loader, store, metrics, health) = loader_with_health(source.clone());
        assert!(loader.initial_load().await.unwrap());
        assert_eq!(store.stats().live_keys, 0);
        assert_eq!(status(&health, LOADBALANCER), ServingStatus::NotServing, "every file was rejected");
        assert_eq!(
            status(&health, DATA_FRESHNESS),
            ServingStatus::Serving,
            "in sync with the source, though"
        );
        put(&source, "DELTA_0000000000000003", "a,UPDATE,3,x,string\n");
        loader.poll_once().await.unwrap();
        assert_eq!(status(&health, LOADBALANCER), ServingStatus::Serving, "a file loaded");

        // A file that waits for a fetch retry: the sync age grows, and past max_staleness the
        // freshness status turns NOT_SERVING (the load balancer's status does not follow it).
        loader.config.max_staleness = Duration::from_millis(20);
        put(&source, "DELTA_0000000000000004", "b,UPDATE,4,x,string\n");
        source.unfetchable.lock().unwrap().insert("DELTA_0000000000000004".into());
        let synced = metrics.last_sync_unix_ms.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(30)).await;
        loader.poll_once().await.unwrap();
        loader.update_freshness();
        assert_eq!(metrics.last_sync_unix_ms.load(Ordering::Relaxed), synced, "not a complete sync");
        assert!(metrics.sync_age(unix_millis()).unwrap() >= Duration::from_millis(30));
        assert_eq!(status(&health, DATA_FRESHNESS), ServingStatus::NotServing);
        assert_eq!(status(&health, LOADBALANCER), ServingStatus::Serving);
        source.unfetchable.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(15)).await;
        loader.poll_once().await.unwrap();
        loader.update_freshness();
        assert_eq!(status(&health, DATA_FRESHNESS), ServingStatus::Serving);

        // An empty source is served as empty (and said so in the log).
        let (mut empty, _, _, health) = loader_with_health(Arc::new(MemorySource::default()));
        assert!(empty.initial_load().await.unwrap());
        assert_eq!(status(&health, LOADBALANCER), ServingStatus::Serving);
    }

    /// Issue 14 item 11: every poll listed the whole source and the loader remembered every file
    /// ever handled.
    #[tokio::test]
    async fn polls_list_only_names_after_each_prefixs_newest_and_memory_stays_bounded() {
        let source = Arc::new(MemorySource::default());
        put(&source, "SNAPSHOT_0000000000000001", "a,UPDATE,1,x,string\n");
        put(&source, "p/DELTA_0000000000000007", "p,UPDATE,7,x,string\n");
        let (mut loader, store, _) = loader(source.clone());
        assert!(loader.initial_load().await.unwrap());
        assert_eq!(*source.full_lists.lock().unwrap(), 1);
        for i in 2..200u64 {
            put(&source, &format!("DELTA_{i:016}"), &format!("k{i},UPDATE,{i},x,string\n"));
            source.listed_newer.lock().unwrap().clear();
            loader.poll_once().await.unwrap();
            if !loader.polls.is_multiple_of(RESCAN_EVERY) {
                let calls = source.listed_newer.lock().unwrap().clone();
                let prev = format!("DELTA_{:016}", i - 2);
                let p_prev = "DELTA_0000000000000006".to_string();
                assert!(calls.contains(&(String::new(), FileKind::Delta, Some(prev))), "{calls:?}");
                assert!(calls.contains(&("p".into(), FileKind::Delta, Some(p_prev))), "{calls:?}");
            }
            assert!(loader.handled.is_empty() && loader.ahead.is_empty());
            assert_eq!(loader.prefixes.len(), 2);
        }
        assert_eq!(value(&store, "k199").as_deref(), Some("x"));
        assert_eq!(
            *source.full_lists.lock().unwrap(),
            1 + 198 / RESCAN_EVERY,
            "a full listing every RESCAN_EVERY polls"
        );
        // A new prefix is found at the next full listing.
        put(&source, "q/DELTA_0000000000000001", "q,UPDATE,1,x,string\n");
        for _ in 0..RESCAN_EVERY {
            loader.poll_once().await.unwrap();
        }
        assert_eq!(value(&store, "q").as_deref(), Some("x"));
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
        assert!(loader.initial_load().await.expect("an over-size file is not a source error"));
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
