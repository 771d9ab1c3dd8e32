//! What the load benchmarks share: a bounded closed-loop load and its figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Figures {
    pub requests: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Runs `concurrency` callers for `duration`, each sending one request after the other.
pub async fn run_load<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Figures
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = t as u64 * 1_000_003;
                while Instant::now() < deadline {
                    let begin = Instant::now();
                    call(i).await;
                    latencies.push(begin.elapsed().as_micros() as u64);
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0)
    };
    Figures {
        requests: all.len() as u64,
        per_second: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}
