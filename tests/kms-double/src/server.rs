//! The HTTP/1.1 front: one task per connection, a cap on connections, a drain with a deadline.
//!
//! Each request is `POST /` with `X-Amz-Target: TrentService.<Operation>` (see [`crate::wire`]);
//! anything else is answered as KMS would (an `UnsupportedOperationException` for an unknown
//! target, a 404 for another path). SigV4 signatures are not checked: every request is taken to
//! come from the configured caller.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::service::KmsDouble;
use crate::wire::{self, KmsError};

/// The server's limits, named.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// The largest request body (attestation documents are a few KiB).
    pub max_body: usize,
    /// How long in-flight requests may take to finish after the shutdown signal.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 64, max_body: 256 * 1024, drain: Duration::from_secs(5) }
    }
}

/// Serves `kms` on `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    kms: Arc<KmsDouble>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut in_flight = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("kms-double: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (kms, mut stop, max_body) = (kms.clone(), stop_rx.clone(), limits.max_body);
        in_flight.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let kms = kms.clone();
                async move { Ok::<_, Infallible>(handle(&kms, req, max_body).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.changed() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
        while in_flight.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(limits.drain, async { while in_flight.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        eprintln!("kms-double: {} connection(s) still open after the drain deadline", in_flight.len());
        in_flight.abort_all();
    }
}

async fn handle(kms: &KmsDouble, req: Request<Incoming>, max_body: usize) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != "/" {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::default())
            .expect("a static response");
    }
    let target =
        req.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let Some(operation) = target.strip_prefix(wire::TARGET_PREFIX).map(str::to_string) else {
        let error = KmsError::UnsupportedOperation(format!(
            "X-Amz-Target {target:?} is not a TrentService operation"
        ));
        eprintln!("kms-double: op={target:?} decision=error reason={:?}", error.to_string());
        return respond(Err(error));
    };
    let body = match Limited::new(req.into_body(), max_body).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let error = KmsError::Validation(format!("request body: {e}"));
            eprintln!("kms-double: op={operation} decision=error reason={:?}", error.to_string());
            return respond(Err(error));
        }
    };
    let (result, outcome) = kms.handle(&operation, &body);
    eprintln!("kms-double: op={operation} decision={} reason={:?}", outcome.decision, outcome.reason);
    respond(result)
}

fn respond(result: Result<Vec<u8>, KmsError>) -> Response<Full<Bytes>> {
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST), e.body()),
    };
    Response::builder()
        .status(status)
        .header("content-type", wire::CONTENT_TYPE)
        .header("x-amzn-requestid", request_id())
        .body(Full::new(Bytes::from(body)))
        .expect("a response with valid headers")
}

fn request_id() -> String {
    let mut id = [0u8; 16];
    let _ = getrandom::fill(&mut id);
    crate::policy::hex(&id)
}
