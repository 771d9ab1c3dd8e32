//! The admin HTTP endpoint (loopback only): `/healthz`, `/readyz`, `/metrics`.
//!
//! `/readyz` answers 200 only when every listener is bound (true once this server runs), the
//! daemon is not draining, and each ingress upstream (the enclave) accepts a connection within
//! a short timeout; the probe connection is closed at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::{debug, warn};
use transport::Listener;

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
        let (shared, listeners) = (shared.clone(), listeners.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (shared, listeners) = (shared.clone(), listeners.clone());
                async move { Ok::<_, Infallible>(handle(req, &shared, &listeners).await) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
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
        "/metrics" => {
            let body = shared.metrics.render(&shared.global, shared.resolver.cache_stats());
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
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
