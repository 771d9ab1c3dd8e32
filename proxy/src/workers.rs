//! The forwarding threads: one single-threaded tokio runtime per thread, each with its own
//! reactor, running an accept loop on every listener (a `dup` of the listening socket) and the
//! connections it accepts, start to end. A connection never moves between threads, and a
//! thread with nothing to run sleeps in its own `epoll_wait`, so no thread wakes another to
//! hand over work (what a work-stealing runtime does for every readiness event it cannot run
//! at once). This is HAProxy's model of a thread per core; the control plane (signals, reload,
//! admin endpoint) stays on the main runtime.
//!
//! Every thread's reactor holds the listening socket, so the kernel wakes every sleeping thread
//! for a new connection. The threads that lose the race usually find the backlog empty when
//! their `epoll_wait` re-checks it and sleep again without returning (measured: 0-35 `accept4`
//! calls that found nothing per 2,000 connections); the thread that accepts calls `accept4` once
//! more to reach `EAGAIN`, as edge-triggered readiness needs. `EPOLLEXCLUSIVE` would wake one
//! thread only if set in the epoll the thread sleeps in, which tokio does not offer; through a
//! nested epoll per thread it wakes them all again (the kernel counts an exclusive wake as done
//! only when a task sleeps in `epoll_wait` on that epoll itself). docs/benchmarks-history.md
//! ("Accept wake-ups") and `proxy/bench/exclusive-wake.c` have the figures.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tracing::warn;

/// The running forwarding threads.
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Workers {
    /// Starts `n` threads (`n >= 1`), each blocked in its own runtime until [`stop`](Self::stop).
    pub fn start(n: usize) -> io::Result<Workers> {
        let mut workers = Workers { handles: Vec::with_capacity(n), threads: Vec::with_capacity(n) };
        for i in 0..n {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("forward-{i}")).spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Connections still open here outlived the drain deadline: they are cut.
                runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            });
            match thread {
                Ok(t) => {
                    workers.handles.push(handle);
                    workers.threads.push((stop, t));
                }
                Err(e) => {
                    workers.stop();
                    return Err(e);
                }
            }
        }
        Ok(workers)
    }

    /// The runtimes to run accept loops (and so connections) on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Ends every thread: tasks still running on them are dropped.
    pub fn stop(self) {
        for (stop, thread) in self.threads {
            let _ = stop.send(());
            if thread.join().is_err() {
                warn!("a forwarding thread panicked");
            }
        }
    }
}
