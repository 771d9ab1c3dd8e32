//! Waiting for AWS, always bounded: [`poll`] checks at most `attempts` times, `every` apart,
//! and ends at once on a state the resource will not leave. Every wait of kv-ami uses it (image
//! available, snapshot completed, instance stopped/terminated, import task, builder signal).

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a wait may last: `attempts` checks `every` apart (the spec's `wait_attempts` and
/// `wait_interval_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub attempts: u32,
    pub every: Duration,
}

impl Bound {
    pub fn new(attempts: u32, every: Duration) -> Bound {
        Bound { attempts, every }
    }
}

/// One look at the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    Done(T),
    Again,
    /// A state it will not leave (e.g. `failed`): the wait ends at once with this reason.
    Failed(String),
}

/// Why a wait ended without what it waited for.
#[derive(Debug)]
pub enum Ended<E> {
    /// The resource reached a failure state; the reason as AWS gave it.
    Failed(String),
    /// Still not there after this many checks.
    TimedOut { checks: u32, waited: Duration },
    /// A check itself failed.
    Call(E),
}

/// Checks at most `bound.attempts` times, `bound.every` apart (no sleep after the last).
pub async fn poll<T, E, F, Fut>(bound: Bound, mut check: F) -> Result<T, Ended<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Step<T>, E>>,
{
    let start = Instant::now();
    for i in 0..bound.attempts {
        match check().await.map_err(Ended::Call)? {
            Step::Done(t) => return Ok(t),
            Step::Failed(m) => return Err(Ended::Failed(m)),
            Step::Again if i + 1 < bound.attempts => tokio::time::sleep(bound.every).await,
            Step::Again => {}
        }
    }
    Err(Ended::TimedOut { checks: bound.attempts, waited: start.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn poll_is_bounded_and_ends_at_once_on_a_failure_state() {
        let b = Bound::new(3, Duration::ZERO);
        let n = Cell::new(0);
        let r: Result<(), Ended<()>> = poll(b, || {
            n.set(n.get() + 1);
            async { Ok(Step::Again) }
        })
        .await;
        assert!(matches!(r, Err(Ended::TimedOut { checks: 3, .. })));
        assert_eq!(n.get(), 3);

        n.set(0);
        let r: Result<(), Ended<()>> = poll(b, || {
            n.set(n.get() + 1);
            async { Ok(Step::Failed("deleted: disk validation failed".into())) }
        })
        .await;
        assert!(matches!(r, Err(Ended::Failed(m)) if m.starts_with("deleted")));
        assert_eq!(n.get(), 1);

        let r: Result<u8, Ended<&str>> = poll(b, || async { Err("AccessDenied") }).await;
        assert!(matches!(r, Err(Ended::Call("AccessDenied"))));
        let r: Result<u8, Ended<()>> = poll(b, || async { Ok(Step::Done(7)) }).await;
        assert_eq!(r.unwrap(), 7);
    }
}
