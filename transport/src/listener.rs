//! Binding and accepting on any listen endpoint.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};
use tokio_vsock::{VsockAddr, VsockListener};

use crate::endpoint::{Endpoint, Host};
use crate::fd_stream::FdStream;
use crate::stream::{PeerAddr, Stream};

/// A bound listener on any transport.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    /// The path is kept to remove the socket file when the listener is dropped.
    Unix(UnixListener, PathBuf),
    Vsock(VsockListener),
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("listen on {endpoint}: {source}")]
    Io { endpoint: String, source: io::Error },
    #[error("listen on {endpoint}: a vsock-hybrid endpoint can only be dialed")]
    Hybrid { endpoint: String },
    #[error(
        "listen on {endpoint}: `parent` names the peer of an enclave and can only be dialed \
         (listen on vsock://any:PORT or a numeric CID)"
    )]
    Parent { endpoint: String },
    #[error("listen on {endpoint}: a listener needs an IP address (or localhost), not the name {host:?}")]
    Name { endpoint: String, host: String },
    #[error("listen on {endpoint}: {path} exists and another process is accepting on it")]
    InUse { endpoint: String, path: String },
    #[error("listen on {endpoint}: {path} exists and is not a socket; refusing to replace it")]
    NotSocket { endpoint: String, path: String },
}

impl Listener {
    /// Binds `endpoint`. A stale Unix socket file (nobody accepting) is replaced; a live one is
    /// an error, as is any other file at that path.
    pub async fn bind(endpoint: &Endpoint) -> Result<Listener, BindError> {
        let io_err = |source| BindError::Io { endpoint: endpoint.to_string(), source };
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let ip = match host {
                    Host::Ip(ip) => *ip,
                    Host::Name(n) if n == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Host::Name(n) => {
                        return Err(BindError::Name { endpoint: endpoint.to_string(), host: n.clone() });
                    }
                };
                let listener = TcpListener::bind(SocketAddr::new(ip, *port)).await.map_err(io_err)?;
                // Linux copies TCP_NODELAY from the listener into every socket it accepts, so it
                // is set once here instead of once per connection (a system call each).
                socket2::SockRef::from(&listener).set_tcp_nodelay(true).map_err(io_err)?;
                Ok(Listener::Tcp(listener))
            }
            Endpoint::Unix(path) => {
                remove_stale_socket(endpoint, path)?;
                let listener = UnixListener::bind(path).map_err(io_err)?;
                Ok(Listener::Unix(listener, path.clone()))
            }
            Endpoint::Vsock { cid: crate::VsockCid::Parent, .. } => {
                Err(BindError::Parent { endpoint: endpoint.to_string() })
            }
            Endpoint::Vsock { cid, port } => {
                let listener = VsockListener::bind(VsockAddr::new(cid.raw(), *port)).map_err(io_err)?;
                Ok(Listener::Vsock(listener))
            }
            Endpoint::HybridVsock { .. } => Err(BindError::Hybrid { endpoint: endpoint.to_string() }),
        }
    }

    /// Accepts one connection. TCP streams have `TCP_NODELAY` (from the listener).
    pub async fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        match self {
            Listener::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                Ok((Stream::Tcp(s), PeerAddr::Tcp(addr)))
            }
            Listener::Unix(l, _) => {
                let (s, addr) = l.accept().await?;
                Ok((Stream::Unix(s), PeerAddr::Unix(addr.as_pathname().map(PathBuf::from))))
            }
            Listener::Vsock(l) => {
                // The std-level accept hands over a socket not yet in any reactor, so it is
                // registered once, in our `FdStream` (which has readiness; tokio-vsock's stream
                // has none).
                let (s, addr) = std::future::poll_fn(|cx| l.poll_accept_std(cx)).await?;
                let stream = FdStream::new(std::os::fd::OwnedFd::from(s))?;
                Ok((Stream::Vsock(stream), PeerAddr::Vsock { cid: addr.cid(), port: addr.port() }))
            }
        }
    }

    /// The endpoint actually bound (with the real port when port 0 was asked for).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        Ok(match self {
            Listener::Tcp(l) => {
                let addr = l.local_addr()?;
                Endpoint::Tcp { host: Host::Ip(addr.ip()), port: addr.port() }
            }
            Listener::Unix(_, path) => Endpoint::Unix(path.clone()),
            Listener::Vsock(l) => {
                let addr = l.local_addr()?;
                // A listener on every CID reports VMADDR_CID_ANY: print it as `any`, as it was written.
                let cid = match addr.cid() {
                    crate::CID_ANY => crate::VsockCid::Any,
                    id => crate::VsockCid::Id(id),
                };
                Endpoint::Vsock { cid, port: addr.port() }
            }
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove_stale_socket(endpoint: &Endpoint, path: &Path) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(BindError::Io { endpoint: endpoint.to_string(), source }),
    };
    let shown = path.display().to_string();
    if !meta.file_type().is_socket() {
        return Err(BindError::NotSocket { endpoint: endpoint.to_string(), path: shown });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(BindError::InUse { endpoint: endpoint.to_string(), path: shown }),
        Err(_) => std::fs::remove_file(path)
            .map_err(|source| BindError::Io { endpoint: endpoint.to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_and_unix_round_trip_with_half_close() {
        let dir = std::env::temp_dir().join(format!("transport-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for ep in [
            "tcp://127.0.0.1:0".parse::<Endpoint>().unwrap(),
            "tcp://[::1]:0".parse().unwrap(),
            Endpoint::Unix(dir.join("l.sock")),
        ] {
            let Ok(listener) = Listener::bind(&ep).await else {
                assert!(ep.to_string().contains("::1"), "bind {ep} failed");
                continue; // no IPv6 loopback on this machine
            };
            let bound = listener.local_endpoint().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(&got).await.unwrap();
                s.shutdown().await.unwrap();
            });
            let mut c = Stream::connect(&bound).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            c.shutdown_write().unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"ping", "{ep}");
            server.await.unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Accepted TCP streams are latency sensitive like dialed ones: they have TCP_NODELAY,
    /// which they inherit from the listener rather than get with a call per connection.
    #[tokio::test]
    async fn accepted_tcp_streams_have_nodelay() {
        let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).await.unwrap();
        let bound = listener.local_endpoint().unwrap();
        let (dialed, accepted) = tokio::join!(Stream::connect(&bound), listener.accept());
        let (Stream::Tcp(accepted), Stream::Tcp(dialed)) = (accepted.unwrap().0, dialed.unwrap()) else {
            panic!("TCP streams expected");
        };
        assert!(accepted.nodelay().unwrap());
        assert!(dialed.nodelay().unwrap());
    }

    #[tokio::test]
    async fn unix_bind_replaces_stale_refuses_live_and_regular_files() {
        let dir = std::env::temp_dir().join(format!("transport-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves a stale file
        let ep = Endpoint::Unix(path.clone());
        let live = Listener::bind(&ep).await.expect("stale socket replaced");
        let err = Listener::bind(&ep).await.unwrap_err();
        assert!(matches!(err, BindError::InUse { .. }), "{err}");
        drop(live);
        assert!(!path.exists(), "socket file removed on drop");
        std::fs::write(&path, b"data").unwrap();
        let err = Listener::bind(&ep).await.unwrap_err();
        assert!(matches!(err, BindError::NotSocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn listeners_refuse_names_and_hybrid() {
        let err = Listener::bind(&"tcp://example.com:80".parse().unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("example.com"), "{err}");
        let err = Listener::bind(&"vsock-hybrid:///tmp/x:1".parse().unwrap()).await.unwrap_err();
        assert!(matches!(err, BindError::Hybrid { .. }));
        // Refused before any socket is opened.
        let err = Listener::bind(&"vsock://parent:8888".parse().unwrap()).await.unwrap_err();
        assert!(matches!(err, BindError::Parent { .. }), "{err}");
        assert!(err.to_string().contains("vsock://parent:8888"), "{err}");
    }
}
