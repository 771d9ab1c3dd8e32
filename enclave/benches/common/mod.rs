//! What the load benchmarks share: the generated records and a bounded closed-loop load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_server::data::{Mutation, Record, Value};

pub const KEY_LEN: usize = 16;
pub const VALUE_LEN: usize = 100;

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn key(i: u64) -> String {
    let k = format!("key-{i:012}");
    debug_assert_eq!(k.len(), KEY_LEN);
    k
}

pub fn value(i: u64) -> String {
    // Deterministic, not compressible to nothing, never JSON (starts with a letter other than t/f/n).
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = String::with_capacity(VALUE_LEN);
    s.push('v');
    while s.len() < VALUE_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push((b'a' + (x % 26) as u8) as char);
    }
    s
}

pub fn records(n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            key: key(i).into(),
            logical_commit_time: 1,
            mutation: Mutation::Update(Value::String(value(i))),
        })
        .collect()
}

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
