//! Waiting for AWS, always bounded. Where aws-sdk-ec2 has a generated waiter it is used (image
//! available, snapshot completed, instance stopped, instance terminated: see `images` and
//! `instances`), with [`Bound::max_wait`] as its limit; the SDK polls on its own schedule
//! (15 s, growing to 120 s, with jitter). [`poll`] is the one generic waiter, for what the SDK
//! has none of: an import task (which can end `deleted`, a state the SDK's `snapshot_imported`
//! waiter does not know) and the builder's signal tag.

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

    /// The limit given to an SDK waiter: `attempts` x `every` (zero: one check).
    pub fn max_wait(&self) -> Duration {
        self.every * self.attempts
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
    /// Still not there after this many checks (or, for an SDK waiter, this long).
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
        assert_eq!(Bound::new(120, Duration::from_secs(5)).max_wait(), Duration::from_secs(600));
    }
}
