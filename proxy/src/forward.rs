//! Moving bytes both ways between an accepted stream and its upstream.
//!
//! Each direction runs on its own until its source reaches end of stream, then half-closes its
//! destination (`shutdown(SHUT_WR)`), so a client that shuts its write side still reads the
//! reply. The connection ends when both directions have ended, on the first error (the other
//! side of a TCP peer then sees a reset, not a clean end), or after `idle` without a byte.
//!
//! Three engines, same behaviour:
//! - `splice`: `splice(2)` socket -> pipe -> socket, no copy through user space;
//! - `copy`: non-blocking read/write through one buffer per direction;
//! - both wait on tokio readiness and allocate their pipe or buffer only when the first byte
//!   arrives, so idle connections cost two sockets and a task.
//! - vsock streams have no readiness API in tokio-vsock: those connections use a poll-based
//!   copy through `AsyncRead`/`AsyncWrite`, whose first read takes one byte into the stack and
//!   allocates the buffer only then, so idle vsock connections are as cheap.
//!
//! Per-direction buffering is bounded by `buffer_size`: a slow reader stops the reads on the
//! other side (backpressure) instead of growing memory.
//!
//! A splice direction whose pipe cannot be created (out of descriptors) goes on through a
//! buffer instead of cutting the transfer, and a pipe the kernel will not enlarge to
//! `buffer_size` keeps its 64 KiB; both are counted ([`PipeErrors`]) and logged at most once per
//! [`PIPE_LOG_EVERY`].

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tracing::warn;
use transport::Stream;

use crate::config::ForwardMode;
use crate::sys;

/// Which end of a proxied connection an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The peer that connected to our listener.
    Client,
    /// The destination we dialed.
    Upstream,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{} side: {source}", side.label())]
    Io { side: Side, source: io::Error },
    #[error("idle for {0:?}, closed")]
    Idle(Duration),
    #[error("proxy: {0}")]
    Local(io::Error),
}

/// Byte counters of one connection; the listener totals are updated as bytes move.
#[derive(Debug, Default)]
pub struct Counters {
    pub client_to_upstream: AtomicU64,
    pub upstream_to_client: AtomicU64,
}

impl Counters {
    fn sum(&self) -> u64 {
        self.client_to_upstream.load(Ordering::Relaxed) + self.upstream_to_client.load(Ordering::Relaxed)
    }
}

/// Where the bytes of one direction are counted: the connection's and the listener's counter.
#[derive(Clone, Copy)]
pub struct Tally<'a> {
    pub conn: &'a AtomicU64,
    pub total: &'a AtomicU64,
}

impl Tally<'_> {
    fn add(&self, n: usize) {
        self.conn.fetch_add(n as u64, Ordering::Relaxed);
        self.total.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The shortest time between two warnings about pipe failures.
pub const PIPE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Failures of the splice engine's pipes, for `vsockproxy_splice_pipe_errors_total{op}`.
#[derive(Debug)]
pub struct PipeErrors {
    /// `pipe2` failed; that direction was forwarded through a buffer instead.
    pub create: AtomicU64,
    /// `F_SETPIPE_SZ` failed; the pipe kept its default capacity.
    pub resize: AtomicU64,
    since: Instant,
    /// When the last warning was logged (ms since `since`), `u64::MAX` before the first.
    last_log_ms: AtomicU64,
}

impl Default for PipeErrors {
    fn default() -> Self {
        PipeErrors {
            create: AtomicU64::new(0),
            resize: AtomicU64::new(0),
            since: Instant::now(),
            last_log_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl PipeErrors {
    fn record(&self, op: &'static str, size: usize, error: &io::Error) {
        let counter = if op == "create" { &self.create } else { &self.resize };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = self.since.elapsed().as_millis().min(u128::from(u64::MAX - 1)) as u64;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= PIPE_LOG_EVERY.as_millis() as u64;
        if due && self.last_log_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            warn!(
                op,
                size,
                %error,
                create_failures = self.create.load(Ordering::Relaxed),
                resize_failures = self.resize.load(Ordering::Relaxed),
                "splice pipe {op} failed ({}); counted in vsockproxy_splice_pipe_errors_total, \
                 logged at most every {} s",
                if op == "create" { "forwarding through a buffer instead" } else { "keeping the default size" },
                PIPE_LOG_EVERY.as_secs()
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub mode: ForwardMode,
    pub buffer_size: usize,
    /// `None`: no idle timeout.
    pub idle: Option<Duration>,
}

/// Forwards until both directions ended, an error or the idle timeout.
pub async fn forward(
    client: Stream,
    upstream: Stream,
    opts: Options,
    counters: &Counters,
    c2u_total: &AtomicU64,
    u2c_total: &AtomicU64,
    pipe_errors: &PipeErrors,
) -> Result<(), ForwardError> {
    let c2u = Tally { conn: &counters.client_to_upstream, total: c2u_total };
    let u2c = Tally { conn: &counters.upstream_to_client, total: u2c_total };
    let idle = async {
        match opts.idle {
            Some(d) => idle_watch(d, counters).await,
            None => std::future::pending().await,
        }
    };
    let readiness = client.supports_readiness() && upstream.supports_readiness();
    let result = if readiness {
        let both = async {
            tokio::try_join!(
                pump(&client, &upstream, Side::Client, Side::Upstream, opts, c2u, pipe_errors),
                pump(&upstream, &client, Side::Upstream, Side::Client, opts, u2c, pipe_errors),
            )
            .map(|_| ())
        };
        tokio::select! {
            r = both => r,
            e = idle => Err(e),
        }
    } else {
        let (mut client, mut upstream) = (client, upstream);
        let result = {
            let mut c2u_dir = PollDir::new(Side::Client, Side::Upstream, c2u, opts.buffer_size);
            let mut u2c_dir = PollDir::new(Side::Upstream, Side::Client, u2c, opts.buffer_size);
            let both = std::future::poll_fn(|cx| {
                let a = c2u_dir.poll(cx, &mut client, &mut upstream)?;
                let b = u2c_dir.poll(cx, &mut upstream, &mut client)?;
                if a.is_ready() && b.is_ready() { Poll::Ready(Ok(())) } else { Poll::Pending }
            });
            tokio::select! {
                r = both => r,
                e = idle => Err(e),
            }
        };
        return finish(result, &client, &upstream);
    };
    finish(result, &client, &upstream)
}

/// On an error, make sure the other end learns that the stream was cut (TCP reset) rather
/// than seeing a clean end that looks like a complete transfer.
fn finish(result: Result<(), ForwardError>, client: &Stream, upstream: &Stream) -> Result<(), ForwardError> {
    match &result {
        Err(ForwardError::Io { side: Side::Upstream, .. }) => sys::set_linger_zero(client.as_raw_fd()),
        Err(ForwardError::Io { side: Side::Client, .. }) => sys::set_linger_zero(upstream.as_raw_fd()),
        _ => {}
    }
    result
}

async fn idle_watch(idle: Duration, counters: &Counters) -> ForwardError {
    // Checked once per period: a connection is closed after between one and two periods
    // without traffic. Cheaper than re-arming a timer on every read.
    let mut last = counters.sum();
    loop {
        tokio::time::sleep(idle).await;
        let now = counters.sum();
        if now == last {
            return ForwardError::Idle(idle);
        }
        last = now;
    }
}

/// After `readable()`: whether data (or the end) is really waiting. A spurious readiness is
/// cleared (so the next `readable()` waits) and reported as `false`.
fn confirm_readable(src: &Stream) -> io::Result<bool> {
    match src.try_io(Interest::READABLE, || sys::peek(src.as_raw_fd())) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One direction over readiness: read (or splice) from `src` and write all of it to `dst`
/// before reading again.
async fn pump(
    src: &Stream,
    dst: &Stream,
    src_side: Side,
    dst_side: Side,
    opts: Options,
    tally: Tally<'_>,
    pipe_errors: &PipeErrors,
) -> Result<(), ForwardError> {
    let rd = |source| ForwardError::Io { side: src_side, source };
    let wr = |source| ForwardError::Io { side: dst_side, source };
    match opts.mode {
        ForwardMode::Copy => pump_copy(src, dst, src_side, dst_side, opts.buffer_size, tally).await,
        ForwardMode::Splice => {
            let mut pipe: Option<sys::Pipe> = None;
            loop {
                src.readable().await.map_err(rd)?;
                let p = match &pipe {
                    Some(p) => p,
                    None => {
                        if !confirm_readable(src).map_err(rd)? {
                            continue;
                        }
                        match sys::Pipe::new() {
                            Ok(p) => {
                                if opts.buffer_size != sys::DEFAULT_PIPE_SIZE
                                    && let Err(e) = p.resize(opts.buffer_size)
                                {
                                    pipe_errors.record("resize", opts.buffer_size, &e);
                                }
                                pipe.insert(p)
                            }
                            Err(e) => {
                                // Nothing was read yet: the bytes wait in the socket for the
                                // buffer engine, and the transfer goes on.
                                pipe_errors.record("create", opts.buffer_size, &e);
                                return pump_copy(src, dst, src_side, dst_side, opts.buffer_size, tally)
                                    .await;
                            }
                        }
                    }
                };
                let n = match src.try_io(Interest::READABLE, || {
                    sys::splice(src.as_raw_fd(), p.write_fd(), opts.buffer_size)
                }) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(rd(e)),
                };
                if n == 0 {
                    let _ = dst.shutdown_write();
                    return Ok(());
                }
                let mut left = n;
                while left > 0 {
                    match dst.try_io(Interest::WRITABLE, || sys::splice(p.read_fd(), dst.as_raw_fd(), left)) {
                        Ok(k) => left -= k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            dst.writable().await.map_err(wr)?
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(wr(e)),
                    }
                }
                tally.add(n);
            }
        }
    }
}

/// One direction through a user-space buffer, allocated when the first byte is there.
async fn pump_copy(
    src: &Stream,
    dst: &Stream,
    src_side: Side,
    dst_side: Side,
    buffer_size: usize,
    tally: Tally<'_>,
) -> Result<(), ForwardError> {
    let rd = |source| ForwardError::Io { side: src_side, source };
    let wr = |source| ForwardError::Io { side: dst_side, source };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        src.readable().await.map_err(rd)?;
        if buf.is_empty() {
            if !confirm_readable(src).map_err(rd)? {
                continue;
            }
            buf = vec![0; buffer_size];
        }
        let n = match src.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(rd(e)),
        };
        if n == 0 {
            let _ = dst.shutdown_write();
            return Ok(());
        }
        let mut off = 0;
        while off < n {
            match dst.try_write(&buf[off..n]) {
                Ok(k) => off += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await.map_err(wr)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(wr(e)),
            }
        }
        tally.add(n);
    }
}

/// One direction of the poll-based engine (streams without a readiness API).
struct PollDir<'a> {
    src_side: Side,
    dst_side: Side,
    tally: Tally<'a>,
    size: usize,
    /// Allocated when the first byte arrives.
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
}

impl<'a> PollDir<'a> {
    fn new(src_side: Side, dst_side: Side, tally: Tally<'a>, size: usize) -> PollDir<'a> {
        PollDir { src_side, dst_side, tally, size, buf: Vec::new(), pos: 0, cap: 0, eof: false, done: false }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        dst: &mut Stream,
    ) -> Poll<Result<(), ForwardError>> {
        let (src_side, dst_side) = (self.src_side, self.dst_side);
        let rd = move |source| ForwardError::Io { side: src_side, source };
        let wr = move |source| ForwardError::Io { side: dst_side, source };
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos == self.cap && !self.eof {
                let n = if self.buf.is_empty() {
                    // The first read takes one byte into the stack: it waits (and clears a
                    // spurious readiness) like any read, and the buffer is allocated only once
                    // a byte has arrived.
                    let mut first = [0u8; 1];
                    let mut rb = ReadBuf::new(&mut first);
                    ready!(Pin::new(&mut *src).poll_read(cx, &mut rb)).map_err(rd)?;
                    let n = rb.filled().len();
                    if n == 1 {
                        self.buf = vec![0; self.size];
                        self.buf[0] = first[0];
                    }
                    n
                } else {
                    let mut rb = ReadBuf::new(&mut self.buf);
                    ready!(Pin::new(&mut *src).poll_read(cx, &mut rb)).map_err(rd)?;
                    rb.filled().len()
                };
                if n == 0 {
                    self.eof = true;
                } else {
                    (self.pos, self.cap) = (0, n);
                }
            }
            while self.pos < self.cap {
                let n =
                    ready!(Pin::new(&mut *dst).poll_write(cx, &self.buf[self.pos..self.cap])).map_err(wr)?;
                if n == 0 {
                    return Poll::Ready(Err(wr(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.tally.add(n);
            }
            if self.eof {
                // Half-close; the peer may already be gone, which must not fail the other way.
                let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
                self.done = true;
            }
        }
    }
}

/// Test hook: forces the poll-based engine on streams that do support readiness.
#[cfg(test)]
pub(crate) async fn forward_polled(
    client: Stream,
    upstream: Stream,
    opts: Options,
    counters: &Counters,
) -> Result<(), ForwardError> {
    let (t1, t2) = (AtomicU64::new(0), AtomicU64::new(0));
    let c2u = Tally { conn: &counters.client_to_upstream, total: &t1 };
    let u2c = Tally { conn: &counters.upstream_to_client, total: &t2 };
    let (mut client, mut upstream) = (client, upstream);
    let mut a = PollDir::new(Side::Client, Side::Upstream, c2u, opts.buffer_size);
    let mut b = PollDir::new(Side::Upstream, Side::Client, u2c, opts.buffer_size);
    std::future::poll_fn(|cx| {
        let x = a.poll(cx, &mut client, &mut upstream)?;
        let y = b.poll(cx, &mut upstream, &mut client)?;
        if x.is_ready() && y.is_ready() { Poll::Ready(Ok(())) } else { Poll::Pending }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use transport::{Endpoint, Listener};

    async fn pair() -> (Stream, Stream) {
        let l = Listener::bind(&"tcp://127.0.0.1:0".parse::<Endpoint>().unwrap()).await.unwrap();
        let ep = l.local_endpoint().unwrap();
        let (a, b) = tokio::join!(Stream::connect(&ep), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn both_modes_forward_and_half_close() {
        for mode in [ForwardMode::Splice, ForwardMode::Copy] {
            let (mut client, proxy_client) = pair().await;
            let (proxy_up, mut up) = pair().await;
            let opts = Options { mode, buffer_size: 8192, idle: None };
            let task = tokio::spawn(async move {
                let c = Counters::default();
                let (t1, t2) = (AtomicU64::new(0), AtomicU64::new(0));
                forward(proxy_client, proxy_up, opts, &c, &t1, &t2, &PipeErrors::default()).await.unwrap();
                (c.client_to_upstream.into_inner(), c.upstream_to_client.into_inner())
            });
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            client.write_all(&data).await.unwrap();
            client.shutdown_write().unwrap();
            let mut got = Vec::new();
            up.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, data, "{mode}");
            up.write_all(b"reply").await.unwrap();
            up.shutdown_write().unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"reply");
            assert_eq!(task.await.unwrap(), (100_000, 5));
        }
    }

    #[tokio::test]
    async fn poll_engine_forwards_and_half_closes() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_up, mut up) = pair().await;
        let opts = Options { mode: ForwardMode::Copy, buffer_size: 4096, idle: None };
        let task = tokio::spawn(async move {
            let c = Counters::default();
            forward_polled(proxy_client, proxy_up, opts, &c).await.unwrap();
            (c.client_to_upstream.into_inner(), c.upstream_to_client.into_inner())
        });
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&d2).await.unwrap();
            client.shutdown_write().unwrap();
            client
        });
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        assert!(got == data);
        let mut client = writer.await.unwrap();
        up.write_all(b"done").await.unwrap();
        drop(up);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"done");
        assert_eq!(task.await.unwrap(), (300_000, 4));
    }

    /// Out of descriptors (or pipe pages) for a pipe: the direction goes on through a buffer,
    /// and the failure is counted, not a cut transfer.
    #[tokio::test]
    async fn a_pipe_that_cannot_be_created_falls_back_to_copy_and_is_counted() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_up, mut up) = pair().await;
        let opts = Options { mode: ForwardMode::Splice, buffer_size: 8192, idle: None };
        let errors = Arc::new(PipeErrors::default());
        let errs = errors.clone();
        let task = tokio::spawn(async move {
            // Both directions' pipes fail (EMFILE), as under a full descriptor table.
            sys::fail_next_pipes(2);
            let c = Counters::default();
            let (t1, t2) = (AtomicU64::new(0), AtomicU64::new(0));
            forward(proxy_client, proxy_up, opts, &c, &t1, &t2, &errs).await.unwrap();
            (c.client_to_upstream.into_inner(), c.upstream_to_client.into_inner())
        });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        client.write_all(&data).await.unwrap();
        client.shutdown_write().unwrap();
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        assert!(got == data);
        up.write_all(b"reply").await.unwrap();
        up.shutdown_write().unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"reply");
        assert_eq!(task.await.unwrap(), (200_000, 5));
        assert_eq!(errors.create.load(Ordering::Relaxed), 2);
        assert_eq!(errors.resize.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let (_client, proxy_client) = pair().await;
        let (proxy_up, _up) = pair().await;
        let opts =
            Options { mode: ForwardMode::Copy, buffer_size: 8192, idle: Some(Duration::from_millis(50)) };
        let (c, t1, t2) = (Counters::default(), AtomicU64::new(0), AtomicU64::new(0));
        let r = forward(proxy_client, proxy_up, opts, &c, &t1, &t2, &PipeErrors::default()).await;
        assert!(matches!(r, Err(ForwardError::Idle(_))), "{r:?}");
    }
}
