//! The admin HTTP endpoint (loopback only): `/healthz`, `/readyz`, `/metrics`.
//!
//! `/readyz` answers 200 only when every listener is bound (true once this server runs), the
//! daemon is not draining, and each ingress upstream (the enclave) accepts a connection within
//! a short timeout; the probe connection is closed at once.
//!
//! Any local process can connect, so no client may hold more than a bounded share of the
//! daemon: a cap on open connections (over it a connection is closed at accept), a deadline for
//! each request head (hyper's header-read timeout, which also bounds a keep-alive wait), and an
//! idle timeout when no byte moves either way (a client that stops reading). Each closure is
//! counted in `vsockproxy_admin_connections_closed_total{reason}`.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tracing::{debug, warn};
use transport::Listener;

use crate::config::AdminTimeouts;
use crate::server::{ListenerState, Shared, dial_fixed};

/// How long `/readyz` waits for an ingress upstream to accept.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves until `stop` turns true.
pub async fn run(
    listener: Listener,
    shared: Arc<Shared>,
    listeners: Arc<Vec<Arc<ListenerState>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let admin = &shared.metrics.admin;
        let Some(slot) = admin.limit.try_acquire() else {
            // Closed at once: a flood of local connections costs no file descriptor beyond the cap.
            admin.refused_limit.inc();
            debug!(max = admin.limit.max(), "admin connection refused: limit reached");
            continue;
        };
        let timeouts = shared.settings().admin;
        let (shared, listeners) = (shared.clone(), listeners.clone());
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(stream, shared, listeners, timeouts).await;
        });
    }
}

async fn serve_connection(
    stream: transport::Stream,
    shared: Arc<Shared>,
    listeners: Arc<Vec<Arc<ListenerState>>>,
    timeouts: AdminTimeouts,
) {
    let io = Tracked::new(stream);
    let progress = io.progress.clone();
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let (shared, listeners) = (svc_shared.clone(), listeners.clone());
        async move { Ok::<_, Infallible>(handle(req, &shared, &listeners).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .serve_connection(TokioIo::new(io), service);
    let admin = &shared.metrics.admin;
    tokio::select! {
        r = conn => match r {
            Ok(()) => {}
            Err(e) if e.is_timeout() => {
                admin.header_timeouts.inc();
                debug!("admin connection closed: no request head within the header-read timeout");
            }
            Err(e) => debug!(error = %e, "admin connection ended with an error"),
        },
        () = progress.idle(timeouts.idle) => {
            admin.idle_timeouts.inc();
            debug!("admin connection closed: idle");
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it was opened.
#[derive(Debug)]
struct Progress {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Returns once no byte has moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let deadline = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A stream that records when it last read or wrote a byte.
struct Tracked<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S> Tracked<S> {
    fn new(inner: S) -> Tracked<S> {
        Tracked { inner, progress: Arc::new(Progress { opened: Instant::now(), last_ms: AtomicU64::new(0) }) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.progress.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.progress.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    listeners: &[Arc<ListenerState>],
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let (ready, body) = readiness(shared, listeners).await;
            text(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
        }
        "/metrics" => match shared.metrics.render() {
            Ok(body) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                r
            }
            Err(e) => {
                warn!(error = %e, "cannot encode /metrics");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n".into())
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found; try /healthz, /readyz, /metrics\n".into()),
    }
}

async fn readiness(shared: &Shared, listeners: &[Arc<ListenerState>]) -> (bool, String) {
    if shared.draining.load(Ordering::SeqCst) {
        return (false, "draining\n".into());
    }
    let mut ready = true;
    let mut body = String::new();
    for l in listeners {
        body.push_str(&format!("listener {} bound on {}\n", l.name, l.bound));
    }
    for l in listeners.iter().filter(|l| l.is_ingress()) {
        let Some(up) = l.upstream() else { continue };
        match dial_fixed(shared, &up, None, PROBE_TIMEOUT).await {
            Ok(_) => body.push_str(&format!("ingress {} upstream {up} accepting\n", l.name)),
            Err(e) => {
                ready = false;
                body.push_str(&format!("ingress {} upstream {up} not accepting: {e}\n", l.name));
            }
        }
    }
    (ready, body)
}
