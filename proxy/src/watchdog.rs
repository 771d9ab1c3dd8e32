//! systemd's watchdog tied to progress: `WATCHDOG=1` goes out only while every loop that
//! matters has checked in recently, so a wedged loop (or a runtime that no longer schedules
//! tasks) stops the pings and systemd restarts the daemon after `WatchdogSec=`.
//!
//! Each accept loop, and the main loop that handles signals and the drain, holds a [`Beat`]
//! and calls [`Beat::beat`] from inside its own `select!` every [`beat_every`] (an idle loop
//! still beats: its timer branch runs only when the loop itself is polled). The watchdog task
//! pings every half `WatchdogSec=` when no beat is older than that half, and a probe task it
//! spawns on the runtime has run. A loop that ends on purpose (listeners close at SIGTERM)
//! drops its beat and no longer counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock: the same as std's in the daemon, pausable in tests.
use tokio::time::Instant;
use tracing::warn;

/// The loops that must keep checking in.
#[derive(Debug)]
pub struct Heartbeats {
    since: Instant,
    entries: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    name: String,
    last_ms: Arc<AtomicU64>,
}

/// One loop's check-in; dropping it removes the loop from the watch.
#[derive(Debug)]
pub struct Beat {
    id: u64,
    last_ms: Arc<AtomicU64>,
    heartbeats: Arc<Heartbeats>,
}

impl Heartbeats {
    pub fn new() -> Arc<Heartbeats> {
        Arc::new(Heartbeats {
            since: Instant::now(),
            entries: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.since.elapsed().as_millis().min(u128::from(u64::MAX)) as u64
    }

    /// Registers a loop, checked in as of now.
    pub fn register(self: &Arc<Self>, name: impl Into<String>) -> Beat {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let last_ms = Arc::new(AtomicU64::new(self.now_ms()));
        let entry = Entry { id, name: name.into(), last_ms: last_ms.clone() };
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
        Beat { id, last_ms, heartbeats: self.clone() }
    }

    /// The loops that have not checked in for longer than `max_age`.
    pub fn stale(&self, max_age: Duration) -> Vec<String> {
        let now = self.now_ms();
        let max = max_age.as_millis().min(u128::from(u64::MAX)) as u64;
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|e| now.saturating_sub(e.last_ms.load(Ordering::Relaxed)) > max)
            .map(|e| e.name.clone())
            .collect()
    }
}

impl Beat {
    pub fn beat(&self) {
        self.last_ms.store(self.heartbeats.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        let mut entries = self.heartbeats.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.id != self.id);
    }
}

/// How often a loop checks in when pings go out every `ping_every`: four times per ping period,
/// so one late wake-up never looks like a wedge.
pub fn beat_every(ping_every: Duration) -> Duration {
    (ping_every / 4).max(Duration::from_millis(1))
}

/// A timer for a loop's check-ins (`None`: no watchdog, no timer).
pub fn beat_timer(every: Option<Duration>) -> Option<tokio::time::Interval> {
    every.map(|d| {
        let mut t = tokio::time::interval(d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// Waits for the timer's next tick, or for ever without one (a `select!` branch).
pub async fn next_tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Pings (`WATCHDOG=1` through `ping`) every `every` while every loop has checked in within
/// `every` and a task spawned on the runtime runs within `every / 2`; never returns.
pub async fn run(
    heartbeats: Arc<Heartbeats>,
    every: Duration,
    mut ping: impl FnMut() -> std::io::Result<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        tick.tick().await;
        let probe = tokio::time::timeout(every / 2, tokio::spawn(async {})).await;
        let mut stale = heartbeats.stale(every);
        if !matches!(probe, Ok(Ok(()))) {
            stale.push("runtime probe".into());
        }
        if stale.is_empty() {
            withheld = false;
            if let Err(e) = ping() {
                warn!(error = %e, "sd_notify WATCHDOG=1 failed");
            }
        } else if !withheld {
            withheld = true;
            warn!(stale = %stale.join(", "), "watchdog: not checking in; WATCHDOG=1 withheld");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_dropped_beat_no_longer_counts() {
        let h = Heartbeats::new();
        let a = h.register("accept a");
        let b = h.register("accept b");
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        assert_eq!(h.stale(Duration::from_millis(20)), ["accept b"]);
        drop(b);
        assert!(h.stale(Duration::from_millis(20)).is_empty());
    }

    /// Two loops check in; when one stops (wedged), the pings stop; the other alone does not
    /// keep them going.
    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_checking_in_stops_the_pings() {
        let every = Duration::from_millis(1000);
        let h = Heartbeats::new();
        let pings = Arc::new(AtomicUsize::new(0));
        let healthy = h.register("accept healthy");
        let wedged = h.register("accept wedged");
        tokio::spawn(async move {
            let mut t = tokio::time::interval(beat_every(every));
            loop {
                t.tick().await;
                healthy.beat();
            }
        });
        let (stop_beating, mut stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(beat_every(every));
            loop {
                tokio::select! {
                    _ = t.tick() => wedged.beat(),
                    _ = stopped.changed() => break,
                }
            }
            // Wedged: never polled again, never drops its beat.
            std::future::pending::<()>().await;
            drop(wedged);
        });
        let counted = pings.clone();
        tokio::spawn(run(h.clone(), every, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(true)
        }));
        tokio::time::sleep(Duration::from_millis(5500)).await;
        let before = pings.load(Ordering::SeqCst);
        assert!(before >= 5, "pings while every loop checks in: {before}");
        stop_beating.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let after_wedge = pings.load(Ordering::SeqCst);
        assert!(after_wedge <= before + 1, "at most one ping in flight when the loop stopped");
        tokio::time::sleep(Duration::from_millis(10_000)).await;
        assert_eq!(pings.load(Ordering::SeqCst), after_wedge, "no ping while a loop is not checking in");
    }
}
