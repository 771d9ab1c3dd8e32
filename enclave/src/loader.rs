//! Loading data files from a [`Source`] into the [`Store`].
//!
//! Order, per prefix (each prefix is an independent stream of files):
//! 1. at start, the newest `SNAPSHOT_` and then every newer `DELTA_`, oldest first;
//! 2. afterwards, at every poll, each file newer than the newest one seen, oldest first (a later
//!    snapshot is merged like a delta: newest commit time wins either way).
//!
//! A file is parsed completely before anything is applied, so a file that fails to parse is
//! rejected whole: nothing of it is applied, what was loaded stays served, the rejection is logged
//! with the parser's message (file, record number, reason) and counted, and the file is not
//! retried (a fixed file gets a new name). A source failure (listing or reading) is retried at the
//! next poll. New files are found by polling at `poll_interval`: it works the same for a local
//! directory, a bind mount and S3, costs one directory listing per interval, and needs no inotify
//! (which does not see changes made on the other side of a shared mount).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::data::{self, DataFileName, FileKind};
use crate::health::Health;
use crate::source::{Source, SourceError};
use crate::store::Store;

/// Counters of the loader, for logs and metrics.
#[derive(Debug, Default)]
pub struct LoaderMetrics {
    pub files_loaded: AtomicU64,
    pub files_rejected: AtomicU64,
    pub records_applied: AtomicU64,
    pub records_stale: AtomicU64,
    pub source_errors: AtomicU64,
    pub tombstones_removed: AtomicU64,
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
    /// Test hook: a pause before the initial load.
    pub initial_load_delay: Duration,
}

pub struct Loader<S: Source> {
    source: S,
    store: Arc<Store>,
    health: Arc<Health>,
    metrics: Arc<LoaderMetrics>,
    config: LoaderConfig,
    /// Per prefix, the newest file handled (applied or rejected).
    newest: BTreeMap<String, DataFileName>,
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
        Loader { source, store, health, metrics, config, newest: BTreeMap::new() }
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

    /// The newest snapshot of every prefix, then the newer deltas. A rejected file does not stop
    /// the load; a source error does (and is retried from scratch, nothing is applied twice
    /// because a file that was applied is remembered).
    pub async fn initial_load(&mut self) -> Result<(), SourceError> {
        let started = Instant::now();
        let plan = initial_plan(&self.source.list().await?);
        tracing::info!(location = %self.source.location(), files = plan.len(), "initial data load");
        for name in plan {
            if self.newest.get(&name.prefix).is_some_and(|n| *n >= name) {
                continue;
            }
            self.load_file(name).await?;
        }
        let stats = self.store.stats();
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
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
            if self.newest.get(&name.prefix).is_some_and(|n| *n >= name) {
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
        let bytes = self.source.fetch(&full).await?;
        let size = bytes.len();
        let store = self.store.clone();
        let file = full.clone();
        // Parsing and applying are CPU work: keep them off the async workers serving requests.
        let result = tokio::task::spawn_blocking(move || -> Result<_, data::DataError> {
            let records = data::parse_file(&file, &bytes)?;
            drop(bytes);
            let count = records.len();
            Ok((count, store.apply(records)))
        })
        .await
        .map_err(|e| LoadError::Task { file: full.clone(), reason: e.to_string() })
        .and_then(|r| r.map_err(LoadError::from));
        self.newest.insert(name.prefix.clone(), name);
        let outcome = match result {
            Ok((count, stats)) => {
                self.metrics.files_loaded.fetch_add(1, Ordering::Relaxed);
                self.metrics.records_applied.fetch_add(stats.applied, Ordering::Relaxed);
                self.metrics.records_stale.fetch_add(stats.stale, Ordering::Relaxed);
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
        Ok(outcome)
    }

    fn cleanup(&self) -> u64 {
        let newest = self.store.max_commit_time();
        let cutoff = newest.saturating_sub(self.config.tombstone_retention);
        if newest == i64::MIN || cutoff <= self.store.cleanup_floor() {
            return 0;
        }
        let removed = self.store.cleanup_tombstones(cutoff);
        self.metrics.tombstones_removed.fetch_add(removed, Ordering::Relaxed);
        removed
    }
}

fn full_name(name: &DataFileName) -> String {
    if name.prefix.is_empty() { name.base.clone() } else { format!("{}/{}", name.prefix, name.base) }
}

/// Per prefix: the newest snapshot and every newer delta, oldest first; without a snapshot, all
/// deltas. Non-data names are dropped.
pub fn initial_plan(names: &[String]) -> Vec<DataFileName> {
    let mut by_prefix: BTreeMap<String, Vec<DataFileName>> = BTreeMap::new();
    for name in names.iter().filter_map(|n| DataFileName::parse(n)) {
        by_prefix.entry(name.prefix.clone()).or_default().push(name);
    }
    let mut plan = Vec::new();
    for (_, mut files) in by_prefix {
        files.sort();
        let start = files.iter().rposition(|f| f.kind == FileKind::Snapshot).unwrap_or(0);
        plan.extend(files.drain(start..));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn plan_of(list: &[&str]) -> Vec<String> {
        initial_plan(&names(list)).iter().map(full_name).collect()
    }

    #[test]
    fn initial_plan_starts_at_the_newest_snapshot_per_prefix() {
        let plan = plan_of(&[
            "DELTA_0000000000000001",
            "SNAPSHOT_0000000000000002",
            "DELTA_0000000000000003",
            "SNAPSHOT_0000000000000004",
            "DELTA_0000000000000006",
            "DELTA_0000000000000005",
            "README.txt",
            "p/DELTA_0000000000000001",
            "p/DELTA_0000000000000007",
        ]);
        assert_eq!(
            plan,
            vec![
                "SNAPSHOT_0000000000000004",
                "DELTA_0000000000000005",
                "DELTA_0000000000000006",
                "p/DELTA_0000000000000001",
                "p/DELTA_0000000000000007",
            ]
        );
        assert!(plan_of(&["notes", "DELTA_12"]).is_empty());
    }
}
