//! Binding and accepting on any listen endpoint.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpStream, UnixStream};

use crate::endpoint::{Endpoint, Host};
use crate::fd_stream;
use crate::stream::{PeerAddr, Stream};

/// Connections the kernel queues for a listener before it accepts them (tokio's default).
const BACKLOG: i32 = 1024;

/// A bound listener on any transport: one socket in tokio's reactor, accepted from with
/// `accept4`, whatever its family.
#[derive(Debug)]
pub struct Listener {
    socket: AsyncFd<Socket>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Tcp,
    Unix,
    Vsock,
}

#[derive(Debug)]
enum Kind {
    Tcp,
    /// The path of the socket file, removed when the listener that bound it is dropped
    /// (`None` in a [`Listener::try_clone`], which leaves the file to the original).
    Unix(Option<PathBuf>),
    Vsock,
}

impl Kind {
    fn family(&self) -> Family {
        match self {
            Kind::Tcp => Family::Tcp,
            Kind::Unix(_) => Family::Unix,
            Kind::Vsock => Family::Vsock,
        }
    }
}

/// An accepted connection not yet in any reactor: [`Accepted::into_stream`] registers it with
/// the reactor of the runtime it is called in, so a listener on one runtime can hand
/// connections to another without moving a registration.
#[derive(Debug)]
pub struct Accepted {
    socket: Socket,
    family: Family,
    peer: PeerAddr,
}

impl Accepted {
    /// The connecting side.
    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }

    /// The connection as a [`Stream`] in the current runtime's reactor, and its peer. Must be
    /// called from inside a tokio runtime.
    pub fn into_stream(self) -> io::Result<(Stream, PeerAddr)> {
        let stream = match self.family {
            Family::Tcp => Stream::Tcp(TcpStream::from_std(self.socket.into())?),
            Family::Unix => Stream::Unix(UnixStream::from_std(self.socket.into())?),
            Family::Vsock => Stream::Vsock(fd_stream::from_nonblocking(self.socket)?),
        };
        Ok((stream, self.peer))
    }
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

/// A non-blocking, close-on-exec stream socket bound to `addr` and listening.
fn listen_on(domain: Domain, addr: &SockAddr, reuse_address: bool) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None)?;
    if reuse_address {
        socket.set_reuse_address(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

impl Listener {
    /// Binds `endpoint`. A stale Unix socket file (nobody accepting) is replaced; a live one is
    /// an error, as is any other file at that path. Must be called from inside a tokio runtime.
    pub async fn bind(endpoint: &Endpoint) -> Result<Listener, BindError> {
        let io_err = |source| BindError::Io { endpoint: endpoint.to_string(), source };
        let (socket, kind) = match endpoint {
            Endpoint::Tcp { host, port } => {
                let ip = match host {
                    Host::Ip(ip) => *ip,
                    Host::Name(n) if n == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Host::Name(n) => {
                        return Err(BindError::Name { endpoint: endpoint.to_string(), host: n.clone() });
                    }
                };
                let addr = SocketAddr::new(ip, *port);
                // SO_REUSEADDR as tokio and std set it: a restart binds while old connections
                // sit in TIME_WAIT.
                let socket = listen_on(Domain::for_address(addr), &addr.into(), true).map_err(io_err)?;
                // Linux copies TCP_NODELAY from the listener into every socket it accepts, so it
                // is set once here instead of once per connection (a system call each).
                socket.set_tcp_nodelay(true).map_err(io_err)?;
                (socket, Kind::Tcp)
            }
            Endpoint::Unix(path) => {
                remove_stale_socket(endpoint, path)?;
                let addr = SockAddr::unix(path).map_err(io_err)?;
                (listen_on(Domain::UNIX, &addr, false).map_err(io_err)?, Kind::Unix(Some(path.clone())))
            }
            Endpoint::Vsock { cid: crate::VsockCid::Parent, .. } => {
                return Err(BindError::Parent { endpoint: endpoint.to_string() });
            }
            Endpoint::Vsock { cid, port } => {
                let addr = SockAddr::vsock(cid.raw(), *port);
                (listen_on(Domain::VSOCK, &addr, false).map_err(io_err)?, Kind::Vsock)
            }
            Endpoint::HybridVsock { .. } => {
                return Err(BindError::Hybrid { endpoint: endpoint.to_string() });
            }
        };
        let socket = fd_stream::register_socket(socket, Interest::READABLE).map_err(io_err)?;
        Ok(Listener { socket, kind })
    }

    /// Accepts one connection into the current runtime's reactor. TCP streams have
    /// `TCP_NODELAY` (from the listener).
    pub async fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        self.accept_socket().await?.into_stream()
    }

    /// Accepts one connection without registering it anywhere (see [`Accepted`]).
    pub async fn accept_socket(&self) -> io::Result<Accepted> {
        let family = self.kind.family();
        let (socket, addr) = loop {
            let mut guard = self.socket.readable().await?;
            match guard.try_io(|l| l.get_ref().accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => break result?,
                Err(_would_block) => continue,
            }
        };
        let peer = match family {
            Family::Tcp => match addr.as_socket() {
                Some(a) => PeerAddr::Tcp(a),
                None => return Err(io::Error::other("accepted a TCP connection without an IP peer address")),
            },
            Family::Unix => PeerAddr::Unix(addr.as_pathname().map(PathBuf::from)),
            Family::Vsock => match addr.as_vsock_address() {
                Some((cid, port)) => PeerAddr::Vsock { cid, port },
                None => {
                    return Err(io::Error::other("accepted a vsock connection without a vsock peer address"));
                }
            },
        };
        Ok(Accepted { socket, family, peer })
    }

    /// Another handle on the same listening socket (a `dup`), registered with the reactor of
    /// the runtime this is called in: one accept loop per runtime can then accept from one
    /// socket, whichever runtime is free first taking the connection. Must be called from
    /// inside a tokio runtime. A Unix clone does not remove the socket file when dropped.
    pub fn try_clone(&self) -> io::Result<Listener> {
        let socket = fd_stream::register_socket(self.socket.get_ref().try_clone()?, Interest::READABLE)?;
        let kind = match self.kind {
            Kind::Tcp => Kind::Tcp,
            Kind::Unix(_) => Kind::Unix(None),
            Kind::Vsock => Kind::Vsock,
        };
        Ok(Listener { socket, kind })
    }

    /// One clone per runtime in `runtimes` (each registered with that runtime's reactor), this
    /// listener closed: it leaves its own reactor, which would otherwise wake for every
    /// connection nobody accepts through it. A Unix listener's first clone takes over removing
    /// the socket file.
    pub fn spread(mut self, runtimes: &[tokio::runtime::Handle]) -> io::Result<Vec<Listener>> {
        let mut clones = Vec::with_capacity(runtimes.len());
        for handle in runtimes {
            let _entered = handle.enter();
            clones.push(self.try_clone()?);
        }
        if let (Kind::Unix(path @ Some(_)), Some(Listener { kind: Kind::Unix(first), .. })) =
            (&mut self.kind, clones.first_mut())
        {
            *first = path.take();
        }
        Ok(clones)
    }

    /// The endpoint actually bound (with the real port when port 0 was asked for).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        let addr = self.socket.get_ref().local_addr()?;
        Ok(match &self.kind {
            Kind::Tcp => match addr.as_socket() {
                Some(a) => Endpoint::Tcp { host: Host::Ip(a.ip()), port: a.port() },
                None => return Err(io::Error::other("a TCP listener without an IP address")),
            },
            Kind::Unix(Some(path)) => Endpoint::Unix(path.clone()),
            Kind::Unix(None) => match addr.as_pathname() {
                Some(path) => Endpoint::Unix(path.to_path_buf()),
                None => return Err(io::Error::other("an unnamed Unix listener has no endpoint")),
            },
            Kind::Vsock => match addr.as_vsock_address() {
                // A listener on every CID reports VMADDR_CID_ANY: print it as `any`, as it was written.
                Some((crate::CID_ANY, port)) => Endpoint::Vsock { cid: crate::VsockCid::Any, port },
                Some((id, port)) => Endpoint::Vsock { cid: crate::VsockCid::Id(id), port },
                None => return Err(io::Error::other("a vsock listener without a vsock address")),
            },
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Kind::Unix(Some(path)) = &self.kind {
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

    /// A listener spread over two runtimes: each clone accepts into its own runtime, an
    /// accepted socket can be registered in a third, and the Unix socket file stays until the
    /// clone that took it over is dropped.
    #[test]
    fn spread_listeners_accept_on_every_runtime_and_keep_the_socket_file() {
        let dir = tempfile_dir("spread");
        let path = dir.join("s.sock");
        let main = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let workers: Vec<_> = (0..2)
            .map(|_| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
            .collect();
        let handles: Vec<_> = workers.iter().map(|r| r.handle().clone()).collect();
        for ep in ["tcp://127.0.0.1:0".parse::<Endpoint>().unwrap(), Endpoint::Unix(path.clone())] {
            let listener = main.block_on(Listener::bind(&ep)).unwrap();
            let bound = listener.local_endpoint().unwrap();
            let mut clones = listener.spread(&handles).unwrap();
            assert_eq!(clones.len(), 2);
            for c in &clones {
                assert_eq!(c.local_endpoint().unwrap(), bound, "{ep}");
            }
            // Each clone accepts in its own runtime (the dialer runs on `main`).
            for (clone, worker) in clones.iter().zip(&workers) {
                let mut dialed = main.block_on(Stream::connect(&bound)).unwrap();
                let accepted = worker.block_on(clone.accept_socket()).unwrap();
                // Registered in the other worker's runtime, it carries bytes there.
                let other = if std::ptr::eq(worker, &workers[0]) { &workers[1] } else { &workers[0] };
                main.block_on(dialed.write_all(b"hi")).unwrap();
                let got = other.block_on(async {
                    let (mut s, peer) = accepted.into_stream().unwrap();
                    assert_eq!(peer.to_string().starts_with("tcp://"), matches!(ep, Endpoint::Tcp { .. }));
                    let mut b = [0u8; 2];
                    s.read_exact(&mut b).await.unwrap();
                    b
                });
                assert_eq!(&got, b"hi", "{ep}");
            }
            if let Endpoint::Unix(_) = ep {
                let second = clones.pop().unwrap();
                drop(second);
                assert!(path.exists(), "a clone that does not own the file leaves it");
                drop(clones);
                assert!(!path.exists(), "the clone that took the file over removes it");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("transport-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
