//! The gRPC server: query API (v1, v2), keys, health, attestation and reflection on one listener.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;
use transport::{Listener, Stream};

use crate::attestation::{AttestationService, Attester};
use crate::config::{Limits, V2Config};
use crate::health::Health;
use crate::idle::{Activity, ConnInfo, IdleTimer, TrackCallsLayer};
use crate::keys::KeyManager;
use crate::query::QueryService;
use crate::store::Store;
use crate::v2::{KeyEndpoint, V2Service};

/// Connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// HTTP/2 streams (calls) open at once on one connection, announced in SETTINGS (tonic's default
/// is unlimited).
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams a client may open and reset before the server has accepted them, before the
/// connection gets GOAWAY: the HTTP/2 rapid-reset mitigation (RUSTSEC-2024-0003), h2's default made
/// explicit so that a tonic or hyper change cannot turn it off.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset for a client's protocol errors before GOAWAY.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// An HTTP/2 PING after this long without a frame from the client; no answer within
/// [`KEEPALIVE_TIMEOUT`] closes the connection, so a vanished peer frees its slot.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A unary call (or a stream's start) must be answered within this; a lookup takes microseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Request header block size, announced in SETTINGS.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// How long a failed accept (e.g. out of file descriptors) pauses accepting.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC reflection from the built-in descriptor set: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What the services share.
#[derive(Clone)]
pub struct App {
    pub store: Arc<Store>,
    pub health: Arc<Health>,
    pub limits: Limits,
    /// v1 GetValues and v2 GetValuesHttp answer only when true.
    pub plaintext_lookups: bool,
    pub v2: V2Config,
    /// The enclave's HPKE keys (v2).
    pub keys: Arc<KeyManager>,
    /// Where attestation documents come from (the NSM).
    pub attester: Arc<dyn Attester>,
}

/// Serves until `shutdown` resolves, then stops accepting, marks health NOT_SERVING, ends Watch
/// streams and waits for in-flight calls (the caller bounds that wait).
pub async fn run(
    listener: Listener,
    app: App,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::DESCRIPTOR_SET)
        .build_v1alpha()?;

    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let idle_timeout = app.limits.idle_timeout;
    let incoming = futures::stream::unfold((listener, permits), move |(listener, permits)| async move {
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let accepted = match listener.accept().await {
            Ok((stream, _peer)) => {
                let activity = Activity::new();
                let idle = IdleTimer::new(activity.clone(), idle_timeout);
                Ok(Conn { stream, _permit: permit, activity, idle })
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                Err(e)
            }
        };
        Some((accepted, (listener, permits)))
    })
    .boxed();

    let health = app.health.clone();
    let drain = async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
        health.set_draining();
    };

    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .timeout(REQUEST_TIMEOUT)
        .layer(TrackCallsLayer)
        .layer(crate::telemetry::RequestTelemetryLayer)
        .add_service(
            QueryService::new(app.store.clone(), app.limits)
                .with_plaintext_lookups(app.plaintext_lookups)
                .into_service(),
        )
        .add_service(
            V2Service::new(app.store.clone(), app.limits, &app.v2, app.keys.clone(), app.plaintext_lookups)
                .into_service(),
        )
        .add_service(KeyEndpoint::new(app.keys.clone(), app.attester.clone()).into_service())
        .add_service(app.health.clone().into_service())
        .add_service(AttestationService::new(app.attester.clone()).into_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, drain)
        .await?;
    Ok(())
}

/// An accepted stream holding one connection permit until it closes, and ending itself once it
/// has carried no call for the idle timeout.
struct Conn {
    stream: Stream,
    _permit: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    idle: IdleTimer,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo { peer: self.stream.connect_info(), activity: self.activity.clone() }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idle.poll_idle(cx).is_ready() {
            // End of stream: the HTTP/2 connection ends and its slot is free.
            tracing::debug!("closing a connection that carried no call for the idle timeout");
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
