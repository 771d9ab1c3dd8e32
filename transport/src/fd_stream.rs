//! A connected stream socket driven by tokio's reactor through its file descriptor.
//!
//! tokio has types for TCP and Unix sockets but none for vsock, and tokio-vsock's stream offers
//! `AsyncRead`/`AsyncWrite` only: no `readable()`/`writable()`/`try_io()`, which the zero-copy
//! forwarding engine needs. [`FdStream`] registers any connected `SOCK_STREAM` socket in an
//! [`AsyncFd`] and gives it the same readiness API as `tokio::net::TcpStream`, so every stream
//! kind runs through one engine. Nothing in here is vsock specific: the vsock listener and dialer
//! hand their sockets over, and the tests drive it through a Unix socketpair (these machines have
//! no vsock).

use std::io::{self, IoSlice, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::stream::PeerAddr;

/// A connected, non-blocking stream socket registered with the tokio reactor.
#[derive(Debug)]
pub struct FdStream {
    io: AsyncFd<Socket>,
}

impl FdStream {
    /// Takes over a connected stream socket (vsock in production; one end of a socketpair in
    /// tests), makes it non-blocking and registers it. Needs a tokio runtime with I/O enabled.
    pub fn new(fd: OwnedFd) -> io::Result<FdStream> {
        let socket = Socket::from(fd);
        socket.set_nonblocking(true)?;
        register(socket)
    }

    /// Opens a `domain` stream socket and connects it to `addr` without blocking the runtime.
    pub(crate) async fn connect(domain: Domain, addr: &SockAddr) -> io::Result<FdStream> {
        let socket = Socket::new(domain, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(addr) {
            Ok(()) => {}
            // Unix sockets answer EAGAIN when the listener's backlog is full; the wait below
            // covers both.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINPROGRESS) | Some(libc::EAGAIN)) => {}
            Err(e) => return Err(e),
        }
        let stream = register(socket)?;
        // The socket turns writable once the connect finished, either way; SO_ERROR says which.
        loop {
            let mut guard = stream.io.writable().await?;
            match guard.try_io(|s| s.get_ref().take_error()) {
                Ok(Ok(None)) => break,
                Ok(Ok(Some(e))) | Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        // A Unix connect that got EAGAIN never completes by itself: it has a peer only if the
        // kernel says so.
        stream.io.get_ref().peer_addr()?;
        Ok(stream)
    }

    /// The peer as the kernel reports it (`getpeername`).
    pub fn peer_addr(&self) -> io::Result<PeerAddr> {
        let addr = self.io.get_ref().peer_addr()?;
        if let Some((cid, port)) = addr.as_vsock_address() {
            return Ok(PeerAddr::Vsock { cid, port });
        }
        if let Some(sa) = addr.as_socket() {
            return Ok(PeerAddr::Tcp(sa));
        }
        Ok(PeerAddr::Unix(addr.as_pathname().map(PathBuf::from)))
    }

    /// Waits until the socket is readable (or closed). Readiness stays set until an operation
    /// run through [`try_io`](Self::try_io) returns `WouldBlock`.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.io.readable().await?;
        guard.retain_ready();
        Ok(())
    }

    /// Waits until the socket is writable; see [`readable`](Self::readable).
    pub async fn writable(&self) -> io::Result<()> {
        let mut guard = self.io.writable().await?;
        guard.retain_ready();
        Ok(())
    }

    /// Runs a non-blocking syscall on the socket; a `WouldBlock` from it clears the readiness
    /// for `interest`, so the next wait really waits. Without readiness, `WouldBlock` and `f`
    /// is not called.
    pub fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.io.try_io(interest, |_| f())
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.try_io(Interest::READABLE, |mut s| s.read(buf))
    }

    /// Writes what fits without waiting (`WouldBlock` when nothing does).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.io.try_io(Interest::WRITABLE, |s| s.send_with_flags(buf, libc::MSG_NOSIGNAL))
    }

    /// Half-closes: the peer reads the end of the stream, this side can still read.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.io.get_ref().shutdown(Shutdown::Write)
    }

    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&Socket) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.io.poll_write_ready(cx))?;
            match guard.try_io(|s| f(s.get_ref())) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

fn register(socket: Socket) -> io::Result<FdStream> {
    Ok(FdStream { io: register_socket(socket, Interest::READABLE | Interest::WRITABLE)? })
}

/// Registers `socket` (non-blocking, owned) with the current runtime's reactor.
#[allow(unsafe_code)]
pub(crate) fn register_socket(socket: Socket, interest: Interest) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the `Socket` owns its fd and stays inside the `AsyncFd` until the `AsyncFd` is
    // dropped; nothing here closes it, replaces it or hands out `&mut Socket`, so the fd stays
    // open and the same for the whole registration.
    Ok(unsafe { AsyncFd::register_with_interest(socket, interest)? })
}

/// Takes over a connected socket that is already non-blocking (accepted with `SOCK_NONBLOCK`).
pub(crate) fn from_nonblocking(socket: Socket) -> io::Result<FdStream> {
    register(socket)
}

impl AsRawFd for FdStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.get_ref().as_raw_fd()
    }
}

impl AsyncRead for FdStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes into the slice and never de-initialises bytes, so
            // the `ReadBuf`'s initialised part stays initialised.
            #[allow(unsafe_code)]
            let unfilled = unsafe { buf.unfilled_mut() };
            match guard.try_io(|s| s.get_ref().recv(unfilled)) {
                Ok(Ok(n)) => {
                    // SAFETY: recv(2) wrote (initialised) the first `n` bytes of `unfilled`.
                    #[allow(unsafe_code)]
                    unsafe {
                        buf.assume_init(n)
                    };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |s| s.send_with_flags(buf, libc::MSG_NOSIGNAL))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |s| s.send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One end wrapped (standing for a vsock stream), the other a plain tokio Unix stream.
    fn pair() -> (FdStream, tokio::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (FdStream::new(OwnedFd::from(a)).unwrap(), tokio::net::UnixStream::from_std(b).unwrap())
    }

    #[tokio::test]
    async fn reads_writes_and_half_closes() {
        let (mut s, mut peer) = pair();
        assert_eq!(s.peer_addr().unwrap(), PeerAddr::Unix(None));
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // Half-closed: the other direction still flows.
        peer.write_all(b"world").await.unwrap();
        peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world");
    }

    #[tokio::test]
    async fn readiness_waits_for_data_and_is_cleared_by_would_block() {
        let (s, peer) = pair();
        let mut buf = [0u8; 16];
        let e = s.try_read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // WouldBlock cleared the readiness: readable() now waits for a byte.
        let wait = tokio::time::timeout(Duration::from_millis(50), s.readable()).await;
        assert!(wait.is_err(), "readable() resolved with nothing to read");
        // Without readiness, try_io does not even call the operation.
        let mut called = false;
        let e = s
            .try_io(Interest::READABLE, || {
                called = true;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(!called);

        let (s2, peer2) = (&s, &peer);
        let (ready, ()) = tokio::join!(s2.readable(), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            peer2.try_write(b"x").unwrap();
        });
        ready.unwrap();
        // Readiness is kept until an operation would block.
        s.readable().await.unwrap();
        assert_eq!(s.try_read(&mut buf).unwrap(), 1);
        assert_eq!(s.try_read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);

        // A WouldBlock returned through try_io clears readiness the same way.
        peer.try_write(b"y").unwrap();
        s.readable().await.unwrap();
        assert_eq!(s.try_read(&mut buf).unwrap(), 1);
        s.readable().await.unwrap(); // still set: nothing has returned WouldBlock yet
        let e = s.try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(tokio::time::timeout(Duration::from_millis(50), s.readable()).await.is_err());
    }

    #[tokio::test]
    async fn writable_waits_for_room_after_the_buffer_fills() {
        let (s, mut peer) = pair();
        s.writable().await.unwrap();
        let chunk = vec![7u8; 65536];
        let mut sent = 0usize;
        loop {
            match s.try_write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(sent > 0);
        assert!(tokio::time::timeout(Duration::from_millis(50), s.writable()).await.is_err());
        let mut buf = vec![0u8; sent];
        peer.read_exact(&mut buf).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.writable()).await.unwrap().unwrap();
        assert!(s.try_write(b"more").unwrap() > 0);
    }

    #[tokio::test]
    async fn large_transfer_both_ways() {
        let (mut s, mut peer) = pair();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            peer.write_all(&d2).await.unwrap();
            peer.shutdown().await.unwrap();
            let mut echoed = Vec::new();
            peer.read_to_end(&mut echoed).await.unwrap();
            echoed
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert!(got == data);
        s.write_all(&got).await.unwrap();
        s.shutdown().await.unwrap();
        let echoed = writer.await.unwrap();
        assert!(echoed == data);
    }

    #[tokio::test]
    async fn connect_without_blocking_and_report_refusal() {
        let dir = std::env::temp_dir().join(format!("transport-fd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let addr = SockAddr::unix(&path).unwrap();
        let e = FdStream::connect(Domain::UNIX, &addr).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (c, accepted) = tokio::join!(FdStream::connect(Domain::UNIX, &addr), listener.accept());
        let (mut c, (mut a, _)) = (c.unwrap(), accepted.unwrap());
        assert_eq!(c.peer_addr().unwrap(), PeerAddr::Unix(Some(path.clone())));
        c.write_all(b"ping").await.unwrap();
        c.shutdown_write().unwrap();
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
