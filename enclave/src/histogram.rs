//! A fixed-bucket histogram of atomics: recording is two relaxed adds, reading is a snapshot for
//! the exporter. Used for request latency and data-file load time.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1 as pm;

/// Counts per upper bound (in milliseconds) plus an overflow bucket, and the sum in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds_ms: &'static [f64],
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds_ms: &'static [f64]) -> Histogram {
        Histogram {
            bounds_ms,
            buckets: (0..=bounds_ms.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn record(&self, elapsed: std::time::Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let bucket = self.bounds_ms.iter().position(|b| ms <= *b).unwrap_or(self.bounds_ms.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The cumulative OTLP data point (sum in milliseconds).
    pub fn data_point(
        &self,
        attributes: Vec<KeyValue>,
        start_ns: u64,
        now_ns: u64,
    ) -> pm::HistogramDataPoint {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        pm::HistogramDataPoint {
            attributes,
            start_time_unix_nano: start_ns,
            time_unix_nano: now_ns,
            count: counts.iter().sum(),
            sum: Some(self.sum_ns.load(Ordering::Relaxed) as f64 / 1e6),
            bucket_counts: counts,
            explicit_bounds: self.bounds_ms.to_vec(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn records_into_the_first_bound_at_or_above_and_overflow() {
        static BOUNDS: [f64; 3] = [1.0, 10.0, 100.0];
        let h = Histogram::new(&BOUNDS);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(1));
        h.record(Duration::from_millis(50));
        h.record(Duration::from_secs(3));
        let p = h.data_point(Vec::new(), 1, 2);
        assert_eq!(p.bucket_counts, vec![2, 0, 1, 1]);
        assert_eq!(p.count, 4);
        assert_eq!(h.count(), 4);
        assert!((p.sum.unwrap() - 3051.5).abs() < 1e-6, "{:?}", p.sum);
        assert_eq!(p.explicit_bounds.len() + 1, p.bucket_counts.len());
    }
}
