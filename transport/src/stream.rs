//! A connected byte stream over TCP, a Unix socket or vsock, and the dialer for each endpoint.
//!
//! Every kind offers the same readiness API (`readable`, `writable`, `try_io`, `try_read`,
//! `try_write`) besides `AsyncRead`/`AsyncWrite`: TCP and Unix through tokio's own types, vsock
//! through [`FdStream`] (its fd registered in tokio's reactor), so the forwarding engines need no
//! per-kind path.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, SockAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::endpoint::{Endpoint, Host, VsockCid};
use crate::fd_stream::FdStream;
use crate::hybrid::{self, HybridError};

/// Who is on the other end of an accepted or dialed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    Tcp(SocketAddr),
    Unix(Option<PathBuf>),
    Vsock { cid: u32, port: u32 },
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(addr) => write!(f, "tcp://{addr}"),
            PeerAddr::Unix(Some(path)) => write!(f, "unix://{}", path.display()),
            PeerAddr::Unix(None) => f.write_str("unix://(unnamed)"),
            PeerAddr::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

/// A connected stream on any of the supported transports.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A vsock socket in tokio's reactor. [`FdStream`] takes any connected stream socket, so
    /// tests build this variant from a socketpair to run the vsock path without `/dev/vsock`.
    Vsock(FdStream),
}

/// Why dialing an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {endpoint}: {source}")]
    Io { endpoint: String, source: io::Error },
    #[error("connect to {endpoint}: name {host} resolved to no address")]
    NoAddress { endpoint: String, host: String },
    #[error("connect to {endpoint}: vsock CID `any` can only be listened on, not dialed")]
    DialAny { endpoint: String },
    #[error("connect to {endpoint}: {source}")]
    Hybrid { endpoint: String, source: HybridError },
}

impl ConnectError {
    /// The underlying I/O error kind, if any (refused, timed out, ...).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            ConnectError::Io { source, .. } => Some(source.kind()),
            ConnectError::Hybrid { source: HybridError::Io(e), .. } => Some(e.kind()),
            _ => None,
        }
    }
}

impl Stream {
    /// Dials `endpoint`. Names in `tcp://` endpoints are resolved with the system resolver and
    /// every address is tried in turn. TCP streams get `TCP_NODELAY`.
    pub async fn connect(endpoint: &Endpoint) -> Result<Stream, ConnectError> {
        let io_err = |source| ConnectError::Io { endpoint: endpoint.to_string(), source };
        match endpoint {
            Endpoint::Tcp { host: Host::Ip(ip), port } => {
                let stream = TcpStream::connect(SocketAddr::new(*ip, *port)).await.map_err(io_err)?;
                Ok(Stream::from_tcp(stream))
            }
            Endpoint::Tcp { host: Host::Name(name), port } => {
                let addrs: Vec<SocketAddr> =
                    tokio::net::lookup_host((name.as_str(), *port)).await.map_err(io_err)?.collect();
                let mut last = None;
                for addr in &addrs {
                    match TcpStream::connect(addr).await {
                        Ok(stream) => return Ok(Stream::from_tcp(stream)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(match last {
                    Some(e) => io_err(e),
                    None => ConnectError::NoAddress { endpoint: endpoint.to_string(), host: name.clone() },
                })
            }
            Endpoint::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await.map_err(io_err)?)),
            Endpoint::Vsock { cid: VsockCid::Any, .. } => {
                Err(ConnectError::DialAny { endpoint: endpoint.to_string() })
            }
            // An unresolved `parent` dials Nitro's parent CID (`VsockCid::raw`).
            Endpoint::Vsock { cid: cid @ (VsockCid::Id(_) | VsockCid::Parent), port } => {
                let addr = SockAddr::vsock(cid.raw(), *port);
                let stream = FdStream::connect(Domain::VSOCK, &addr).await.map_err(io_err)?;
                Ok(Stream::Vsock(stream))
            }
            Endpoint::HybridVsock { path, port } => {
                let stream = hybrid::connect(path, *port)
                    .await
                    .map_err(|source| ConnectError::Hybrid { endpoint: endpoint.to_string(), source })?;
                Ok(Stream::Unix(stream))
            }
        }
    }

    pub(crate) fn from_tcp(stream: TcpStream) -> Stream {
        // Proxied and RPC traffic is latency sensitive; Nagle only adds delay here.
        let _ = stream.set_nodelay(true);
        Stream::Tcp(stream)
    }

    /// The peer's address, as far as the transport knows it.
    pub fn peer_addr(&self) -> io::Result<PeerAddr> {
        Ok(match self {
            Stream::Tcp(s) => PeerAddr::Tcp(s.peer_addr()?),
            Stream::Unix(s) => PeerAddr::Unix(s.peer_addr()?.as_pathname().map(PathBuf::from)),
            Stream::Vsock(s) => s.peer_addr()?,
        })
    }

    /// Shuts down the write half at once (half-close), without waiting for the runtime.
    pub fn shutdown_write(&self) -> io::Result<()> {
        socket_shutdown(self.as_raw_fd(), libc::SHUT_WR)
    }

    /// Waits until the stream is readable (or closed); used by zero-copy forwarding.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
            Stream::Vsock(s) => s.readable().await,
        }
    }

    /// Waits until the stream is writable; used by zero-copy forwarding.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.writable().await,
            Stream::Unix(s) => s.writable().await,
            Stream::Vsock(s) => s.writable().await,
        }
    }

    /// Runs a non-blocking syscall on the socket, clearing readiness when it would block.
    pub fn try_io<R>(
        &self,
        interest: tokio::io::Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        match self {
            Stream::Tcp(s) => s.try_io(interest, f),
            Stream::Unix(s) => s.try_io(interest, f),
            Stream::Vsock(s) => s.try_io(interest, f),
        }
    }

    /// Reads what is available without waiting (`WouldBlock` when nothing is), clearing the
    /// read readiness in that case; pairs with [`readable`](Self::readable).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
            Stream::Vsock(s) => s.try_read(buf),
        }
    }

    /// Writes what fits without waiting (`WouldBlock` when nothing does), clearing the write
    /// readiness in that case; pairs with [`writable`](Self::writable).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
            Stream::Vsock(s) => s.try_write(buf),
        }
    }
}

#[allow(unsafe_code)]
fn socket_shutdown(fd: RawFd, how: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is a socket owned by a live `Stream` for the duration of the call;
    // shutdown(2) does not close or invalidate it.
    let rc = unsafe { libc::shutdown(fd, how) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Vsock(s) => s.as_raw_fd(),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Vsock($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        dispatch!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Vsock(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_shutdown(cx))
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for Stream {
    type ConnectInfo = Option<PeerAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer_addr().ok()
    }
}
