//! Connections that carry no call for the idle timeout (`idle_timeout_secs`) are closed, so idle clients cannot hold
//! the connection slots. HTTP/2 keeps a quiet connection alive with PINGs (the server's own
//! keepalive too), so idleness is measured in calls, not bytes: a tower layer counts each call
//! from its request until its response body is done (a health Watch stream is a call for as long
//! as it streams), and the connection's reader ends the connection once none has been open for
//! the timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Calls open on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `origin` when the last call ended (or the connection was accepted).
    last_active_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn begin(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// When the connection becomes idle for `timeout` if nothing happens meanwhile; `None` while
    /// a call is open.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.origin + Duration::from_millis(self.last_active_ms.load(Ordering::SeqCst)) + timeout)
    }
}

/// One open call; its drop marks the connection active now.
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.last_active_ms.store(self.0.now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The idle timer of one connection, polled from its reader.
pub struct IdleTimer {
    activity: Arc<Activity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    pub fn new(activity: Arc<Activity>, timeout: Duration) -> IdleTimer {
        let sleep = Box::pin(tokio::time::sleep(timeout));
        IdleTimer { activity, timeout, sleep }
    }

    /// Ready when the connection has been without a call for the timeout; otherwise arms the
    /// timer (which wakes the reader) for the next possible moment.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match self.activity.idle_deadline(self.timeout) {
                Some(deadline) if deadline <= Instant::now() => return Poll::Ready(()),
                Some(deadline) => self.sleep.as_mut().reset(deadline),
                // A call is open: look again after another timeout.
                None => self.sleep.as_mut().reset(Instant::now() + self.timeout),
            }
        }
    }
}

/// What tonic puts into each request's extensions for this connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Option<transport::PeerAddr>,
    pub activity: Arc<Activity>,
}

/// Counts calls per connection (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackCallsLayer;

impl<S> tower::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> TrackCalls<S> {
        TrackCalls { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TrackCalls<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for TrackCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = request.extensions().get::<ConnInfo>().map(|c| c.activity.begin());
        TrackedFuture { inner: self.inner.call(request), guard }
    }
}

pin_project_lite::pin_project! {
    /// The response future, holding the call open until the response's body is done.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<CallGuard>,
    }
}

impl<F, RB, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<TrackedBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, _guard: guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body holding its call open until it is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<CallGuard>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_timeout_without_an_open_call() {
        let activity = Activity::new();
        let mut timer = IdleTimer::new(activity.clone(), Duration::from_secs(10));
        async fn poll(timer: &mut IdleTimer) -> Poll<()> {
            std::future::poll_fn(|cx| Poll::Ready(timer.poll_idle(cx))).await
        }
        assert!(poll(&mut timer).await.is_pending());
        let call = activity.begin();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(poll(&mut timer).await.is_pending(), "a call is open");
        tokio::time::advance(Duration::from_secs(20)).await;
        drop(call);
        assert!(poll(&mut timer).await.is_pending(), "the call just ended");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(poll(&mut timer).await.is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(poll(&mut timer).await.is_ready(), "10 s without a call");
    }
}
