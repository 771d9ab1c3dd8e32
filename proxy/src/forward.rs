//! Moving bytes both ways between an accepted stream and its upstream.
//!
//! Each direction runs on its own until its source reaches end of stream, then half-closes its
//! destination (`shutdown(SHUT_WR)`), so a client that shuts its write side still reads the
//! reply. The connection ends when both directions have ended, on the first error (the other
//! side of a TCP peer then sees a reset, not a clean end), or after `idle` without a byte.
//!
//! One engine for every stream kind (TCP, Unix, vsock: all have tokio readiness, see
//! [`transport::FdStream`]), in two modes, same behaviour:
//! - `splice`: `splice(2)` socket -> pipe -> socket, no copy through user space;
//! - `copy`: non-blocking read/write through one buffer per direction;
//! - both wait on tokio readiness and allocate their pipe or buffer only when the first byte
//!   arrives, so idle connections cost two sockets and a task.
//!
//! A direction whose first splice the kernel refuses for that socket (`EINVAL`,
//! `EOPNOTSUPP`: a socket family without splice support, which may be vsock on some kernels)
//! goes on in copy mode, with whatever the pipe already held written out first; counted in
//! [`SpliceCounters`] (`refused_read`, `refused_write`).
//!
//! Per-direction buffering is bounded by `buffer_size`: a slow reader stops the reads on the
//! other side (backpressure) instead of growing memory.
//!
//! A splice direction whose pipe cannot be created (out of descriptors) goes on through a
//! buffer instead of cutting the transfer, and a pipe the kernel will not enlarge to
//! `buffer_size` keeps its 64 KiB; both are counted ([`SpliceCounters`]) and logged at most once
//! per [`PIPE_LOG_EVERY`].

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::io::Interest;
use tracing::{debug, info, warn};
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

/// What the splice mode could not do as asked: pipe failures, for
/// `vsockproxy_splice_pipe_errors_total{op}`, and directions the kernel would not splice, for
/// `vsockproxy_splice_fallbacks_total{op}`.
#[derive(Debug)]
pub struct SpliceCounters {
    /// `pipe2` failed; that direction was forwarded through a buffer instead.
    pub create: Counter,
    /// `F_SETPIPE_SZ` failed; the pipe kept its default capacity.
    pub resize: Counter,
    /// splice(socket -> pipe) was refused (`EINVAL`/`EOPNOTSUPP`); the direction went on in
    /// copy mode.
    pub refused_read: Counter,
    /// splice(pipe -> socket) was refused; the pipe was emptied through a buffer and the
    /// direction went on in copy mode.
    pub refused_write: Counter,
    since: Instant,
    /// When the last warning was logged (ms since `since`), `u64::MAX` before the first.
    last_log_ms: AtomicU64,
    /// Whether a refused splice was logged at info yet (once per process; debug after that).
    refusal_logged: AtomicBool,
}

impl Default for SpliceCounters {
    fn default() -> Self {
        SpliceCounters::new(Counter::default(), Counter::default(), Counter::default(), Counter::default())
    }
}

impl SpliceCounters {
    /// Counting into the given series (the registry's, see `crate::metrics`).
    pub fn new(
        create: Counter,
        resize: Counter,
        refused_read: Counter,
        refused_write: Counter,
    ) -> SpliceCounters {
        SpliceCounters {
            create,
            resize,
            refused_read,
            refused_write,
            since: Instant::now(),
            last_log_ms: AtomicU64::new(u64::MAX),
            refusal_logged: AtomicBool::new(false),
        }
    }

    /// A splice the kernel refused for this pair of files: counted; logged at info the first
    /// time (it is a property of the kernel and socket family, not an incident), then at debug.
    fn refused(&self, op: &'static str, side: Side, error: &io::Error) {
        let counter = if op == "read" { &self.refused_read } else { &self.refused_write };
        counter.inc();
        if !self.refusal_logged.swap(true, Ordering::Relaxed) {
            info!(
                op,
                side = side.label(),
                %error,
                "the kernel does not splice this socket; copying through a buffer instead for \
                 such connections (counted in vsockproxy_splice_fallbacks_total, logged once)"
            );
        } else {
            debug!(op, side = side.label(), %error, "splice refused; copying instead");
        }
    }

    fn record(&self, op: &'static str, size: usize, error: &io::Error) {
        let counter = if op == "create" { &self.create } else { &self.resize };
        counter.inc();
        let now = self.since.elapsed().as_millis().min(u128::from(u64::MAX - 1)) as u64;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= PIPE_LOG_EVERY.as_millis() as u64;
        if due && self.last_log_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            warn!(
                op,
                size,
                %error,
                create_failures = self.create.get(),
                resize_failures = self.resize.get(),
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
    splice: &SpliceCounters,
) -> Result<(), ForwardError> {
    let c2u = Tally { conn: &counters.client_to_upstream, total: c2u_total };
    let u2c = Tally { conn: &counters.upstream_to_client, total: u2c_total };
    let idle = async {
        match opts.idle {
            Some(d) => idle_watch(d, counters).await,
            None => std::future::pending().await,
        }
    };
    let both = async {
        tokio::try_join!(
            pump(&client, &upstream, Side::Client, Side::Upstream, opts, c2u, splice),
            pump(&upstream, &client, Side::Upstream, Side::Client, opts, u2c, splice),
        )
        .map(|_| ())
    };
    let result = tokio::select! {
        r = both => r,
        e = idle => Err(e),
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

/// The buffer a direction in splice mode copies through while its data comes in small pieces:
/// small, as it is allocated for every connection that carries data (never zeroed: see
/// [`sys::recv_into`]). It is also the line between small and bulk: a direction splices only
/// while a read (or a splice) moves at least this much at once. HAProxy's `splice-auto` makes the
/// same call.
pub const SMALL_BUFFER: usize = 16 * 1024;

/// What a copy phase ended with.
enum CopyPhase {
    /// The end of the stream: the direction is done.
    Ended,
    /// A read filled the buffer: more is waiting than it holds, so splice.
    Bulk,
}

/// One direction over readiness: read (or splice) from `src` and write all of it to `dst`
/// before reading again.
///
/// In splice mode a direction alternates: small pieces (a request, an answer, a handshake, the
/// messages of a long-lived HTTP/2 connection) go through a small buffer, a read and a write
/// each, and never pay for a pipe (two descriptors, their closes, a splice in and a splice out);
/// once a read fills the buffer the direction is a bulk transfer and splices, until a splice
/// moves less than the buffer would have held, and then it copies again. The pipe, once made,
/// stays for the connection.
async fn pump(
    src: &Stream,
    dst: &Stream,
    src_side: Side,
    dst_side: Side,
    opts: Options,
    tally: Tally<'_>,
    splice: &SpliceCounters,
) -> Result<(), ForwardError> {
    // No closures over the arguments here: a closure that borrows them is one more copy of
    // their addresses in every connection's task (this future is most of its size).
    let rd = move |source| ForwardError::Io { side: src_side, source };
    let wr = move |source| ForwardError::Io { side: dst_side, source };
    if opts.mode == ForwardMode::Copy {
        return pump_copy(src, dst, src_side, dst_side, opts.buffer_size, tally, Vec::new()).await;
    }
    let mut small: Vec<u8> = Vec::new();
    let mut pipe: Option<sys::Pipe> = None;
    // Whether a byte went through the pipe yet: only the first transfer may find the kernel
    // unwilling to splice this socket; a refusal after that is an error like any other.
    let mut moved = false;
    'copy: loop {
        // The buffer moves into the copy phase's future and back, so an idle connection's
        // task holds it once.
        let (phase, buffer) =
            copy_phase(src, dst, src_side, dst_side, small, opts.buffer_size, tally).await?;
        small = buffer;
        match phase {
            CopyPhase::Ended => return Ok(()),
            CopyPhase::Bulk => {}
        }
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
                                splice.record("resize", opts.buffer_size, &e);
                            }
                            pipe.insert(p)
                        }
                        Err(e) => {
                            // Nothing was read yet: the bytes wait in the socket for the
                            // buffer engine, and the transfer goes on.
                            splice.record("create", opts.buffer_size, &e);
                            return pump_copy(
                                src,
                                dst,
                                src_side,
                                dst_side,
                                opts.buffer_size,
                                tally,
                                Vec::new(),
                            )
                            .await;
                        }
                    }
                }
            };
            let n = match src.try_io(Interest::READABLE, || {
                sys::splice_to_pipe(src.as_raw_fd(), p.write_fd(), opts.buffer_size)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if !moved && sys::splice_unsupported(&e) => {
                    // Nothing was taken from the socket; the copy engine reads it from the start.
                    splice.refused("read", src_side, &e);
                    return pump_copy(src, dst, src_side, dst_side, opts.buffer_size, tally, Vec::new())
                        .await;
                }
                Err(e) => return Err(rd(e)),
            };
            if n == 0 {
                let _ = dst.shutdown_write();
                return Ok(());
            }
            let mut left = n;
            while left > 0 {
                match dst
                    .try_io(Interest::WRITABLE, || sys::splice_from_pipe(p.read_fd(), dst.as_raw_fd(), left))
                {
                    Ok(k) => left -= k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await.map_err(wr)?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if !moved && sys::splice_unsupported(&e) => {
                        // The bytes already read wait in the pipe: write them out through the
                        // buffer the copy engine then goes on with.
                        splice.refused("write", dst_side, &e);
                        let mut buf = vec![0; opts.buffer_size.max(left)];
                        let mut got = 0;
                        while got < left {
                            match p.read(&mut buf[got..left]) {
                                Ok(0) => {
                                    return Err(ForwardError::Local(io::ErrorKind::UnexpectedEof.into()));
                                }
                                Ok(k) => got += k,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(ForwardError::Local(e)),
                            }
                        }
                        write_all(dst, &buf[..left]).await.map_err(wr)?;
                        tally.add(n);
                        return pump_copy(src, dst, src_side, dst_side, opts.buffer_size, tally, buf).await;
                    }
                    Err(e) => return Err(wr(e)),
                }
            }
            moved = true;
            tally.add(n);
            if n < SMALL_BUFFER.min(opts.buffer_size) {
                // A small piece: the pipe is empty again, and the next goes through the buffer.
                continue 'copy;
            }
        }
    }
}

/// Splice mode's copy phase: reads into `small` (allocated at the first byte: [`SMALL_BUFFER`],
/// or `buffer_size` if that is less) and writes out, until a read fills it ([`CopyPhase::Bulk`])
/// or the stream ends; gives the buffer back. An idle connection that never carried a byte holds
/// no buffer.
async fn copy_phase(
    src: &Stream,
    dst: &Stream,
    src_side: Side,
    dst_side: Side,
    mut small: Vec<u8>,
    buffer_size: usize,
    tally: Tally<'_>,
) -> Result<(CopyPhase, Vec<u8>), ForwardError> {
    let rd = move |source| ForwardError::Io { side: src_side, source };
    let wr = move |source| ForwardError::Io { side: dst_side, source };
    loop {
        src.readable().await.map_err(rd)?;
        let fresh = small.capacity() == 0;
        if fresh {
            small = Vec::with_capacity(SMALL_BUFFER.min(buffer_size));
        }
        let n = match read_once(src, &mut small) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // A readiness with nothing behind it (tokio may report a fresh socket readable):
                // a buffer just made for it goes again.
                if fresh {
                    small = Vec::new();
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(rd(e)),
        };
        if n == 0 {
            let _ = dst.shutdown_write();
            return Ok((CopyPhase::Ended, small));
        }
        write_all(dst, &small).await.map_err(wr)?;
        tally.add(n);
        if n == small.capacity() {
            return Ok((CopyPhase::Bulk, small));
        }
    }
}

/// One direction through a user-space buffer, allocated when the first byte is there (unless
/// the caller hands one over: its capacity is what counts, its contents are overwritten).
async fn pump_copy(
    src: &Stream,
    dst: &Stream,
    src_side: Side,
    dst_side: Side,
    buffer_size: usize,
    tally: Tally<'_>,
    mut buf: Vec<u8>,
) -> Result<(), ForwardError> {
    let rd = move |source| ForwardError::Io { side: src_side, source };
    let wr = move |source| ForwardError::Io { side: dst_side, source };
    loop {
        src.readable().await.map_err(rd)?;
        if buf.capacity() == 0 {
            if !confirm_readable(src).map_err(rd)? {
                continue;
            }
            buf = Vec::with_capacity(buffer_size);
        }
        let n = match read_once(src, &mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(rd(e)),
        };
        if n == 0 {
            let _ = dst.shutdown_write();
            return Ok(());
        }
        write_all(dst, &buf).await.map_err(wr)?;
        tally.add(n);
    }
}

/// One read into the capacity of `buf` (which then holds what was read). A short read (fewer
/// bytes than `buf` can hold) also clears the read readiness, as tokio's own `poll_read` does:
/// the socket was drained, so the next wait waits instead of costing a read that finds nothing.
/// (tokio only clears the readiness it saw before the read: data that arrived meanwhile wakes
/// the next wait again.)
fn read_once(src: &Stream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut got = 0;
    let result = src.try_io(Interest::READABLE, || {
        got = sys::recv_into(src.as_raw_fd(), buf)?;
        if got > 0 && got < buf.capacity() { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(got) }
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// Writes all of `data`, waiting for room as needed.
async fn write_all(dst: &Stream, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        match dst.try_write(&data[off..]) {
            Ok(k) => off += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use transport::{Endpoint, Listener};

    /// A running `forward`: its result is the bytes each way.
    type ForwardTask = tokio::task::JoinHandle<Result<(u64, u64), ForwardError>>;

    /// Runs `forward` between the proxy's two ends on a task and returns its splice counters and
    /// the task, whose result is the bytes each way. `arm` runs first on that task (arming a
    /// failure of the next pipes or splices, which are per thread); armed pipe failures are
    /// cleared after, so none is left behind for another test on the thread.
    fn spawn_forward(
        proxy_client: Stream,
        proxy_up: Stream,
        opts: Options,
        arm: impl FnOnce() + Send + 'static,
    ) -> (Arc<SpliceCounters>, ForwardTask) {
        let errors = Arc::new(SpliceCounters::default());
        let errs = errors.clone();
        let task = tokio::spawn(async move {
            arm();
            let c = Counters::default();
            let (t1, t2) = (AtomicU64::new(0), AtomicU64::new(0));
            let r = forward(proxy_client, proxy_up, opts, &c, &t1, &t2, &errs).await;
            sys::fail_next_pipes(0);
            r.map(|()| (c.client_to_upstream.into_inner(), c.upstream_to_client.into_inner()))
        });
        (errors, task)
    }

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
            let (_, task) = spawn_forward(proxy_client, proxy_up, opts, || {});
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
            assert_eq!(task.await.unwrap().unwrap(), (100_000, 5));
        }
    }

    /// A stream in the wrapper vsock streams use ([`transport::FdStream`]), over a socketpair
    /// standing for the vsock connection, and the plain Unix stream at its other end.
    fn fd_pair() -> (Stream, Stream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let wrapped = transport::FdStream::new(std::os::fd::OwnedFd::from(a)).unwrap();
        (Stream::Vsock(wrapped), Stream::Unix(tokio::net::UnixStream::from_std(b).unwrap()))
    }

    /// Sends `data` from `client` and a reply back from `up` through a running `forward`, each
    /// side half-closing, and checks both arrive whole.
    async fn exchange(mut client: Stream, mut up: Stream, data: &[u8], reply: &[u8]) {
        let d2 = data.to_vec();
        let writer = tokio::spawn(async move {
            client.write_all(&d2).await.unwrap();
            client.shutdown_write().unwrap();
            client
        });
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "{} of {} bytes arrived", got.len(), data.len());
        let mut client = writer.await.unwrap();
        up.write_all(reply).await.unwrap();
        up.shutdown_write().unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, reply);
    }

    /// vsock streams run through the same engine as TCP and Unix, in both modes and on either
    /// side (client: SOCKS5 and mappings; upstream: ingress).
    #[tokio::test]
    async fn vsock_wrapped_streams_forward_in_both_modes_on_either_side() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        for mode in [ForwardMode::Splice, ForwardMode::Copy] {
            for vsock_is_client in [true, false] {
                let (client, proxy_client, proxy_up, up) = if vsock_is_client {
                    let (proxy_client, client) = fd_pair();
                    let (proxy_up, up) = pair().await;
                    (client, proxy_client, proxy_up, up)
                } else {
                    let (client, proxy_client) = pair().await;
                    let (proxy_up, up) = fd_pair();
                    (client, proxy_client, proxy_up, up)
                };
                let opts = Options { mode, buffer_size: 16384, idle: None };
                let (errors, task) = spawn_forward(proxy_client, proxy_up, opts, || {});
                exchange(client, up, &data, b"done").await;
                assert_eq!(
                    task.await.unwrap().unwrap(),
                    (300_000, 4),
                    "{mode} vsock client {vsock_is_client}"
                );
                // A socketpair splices: no fallback here.
                assert_eq!(errors.refused_read.get(), 0);
                assert_eq!(errors.refused_write.get(), 0);
            }
        }
    }

    /// A kernel that will not splice a socket (EINVAL) into or out of a pipe: each direction
    /// goes on by copy, the bytes already in the pipe included, and the fallback is counted.
    #[tokio::test]
    async fn a_refused_splice_falls_back_to_copy_and_is_counted() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 239) as u8).collect();
        let reply: Vec<u8> = (0..100_000u32).map(|i| (i % 233) as u8).collect();
        // (into pipe, out of pipe) refusals: both directions' first read, then first write.
        for (refuse, read, write) in [((2, 0), 2, 0), ((0, 2), 0, 2)] {
            let (proxy_client, client) = fd_pair();
            let (proxy_up, up) = pair().await;
            let opts = Options { mode: ForwardMode::Splice, buffer_size: 8192, idle: None };
            let (errors, task) = spawn_forward(proxy_client, proxy_up, opts, move || {
                sys::refuse_next_splices(refuse.0, refuse.1)
            });
            // Both directions are bulk (reads fill the small buffer), so both splice.
            exchange(client, up, &data, &reply).await;
            assert_eq!(task.await.unwrap().unwrap(), (200_000, reply.len() as u64), "{refuse:?}");
            assert_eq!(errors.refused_read.get(), read, "{refuse:?}");
            assert_eq!(errors.refused_write.get(), write, "{refuse:?}");
            assert_eq!(errors.create.get(), 0);
        }
    }

    /// Once bytes went through the pipe, a refused splice is a broken stream, not a fallback.
    #[tokio::test]
    async fn a_splice_refused_after_the_first_transfer_is_an_error() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_up, mut up) = pair().await;
        let opts = Options { mode: ForwardMode::Splice, buffer_size: 8192, idle: None };
        let errors = Arc::new(SpliceCounters::default());
        let errs = errors.clone();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let c = Counters::default();
            let (t1, t2) = (AtomicU64::new(0), AtomicU64::new(0));
            let fwd = forward(proxy_client, proxy_up, opts, &c, &t1, &t2, &errs);
            tokio::pin!(fwd);
            // Run until the first chunk went through, then refuse the next read splice.
            tokio::select! {
                r = &mut fwd => panic!("ended early: {r:?}"),
                _ = go_rx => {}
            }
            sys::refuse_next_splices(1, 0);
            fwd.await
        });
        // Bulk: past its first buffer, this goes through the pipe.
        let first = vec![7u8; 4 * SMALL_BUFFER + 50_000];
        client.write_all(&first).await.unwrap();
        let mut got = vec![0u8; first.len()];
        up.read_exact(&mut got).await.unwrap();
        go_tx.send(()).unwrap();
        tokio::task::yield_now().await;
        // Bulk again (whether the direction was back on the buffer or still splicing), so it
        // reaches a splice; the stream is cut meanwhile, so this write may fail.
        let _ = client.write_all(&vec![8u8; 4 * SMALL_BUFFER]).await;
        let r = task.await.unwrap();
        assert!(matches!(r, Err(ForwardError::Io { side: Side::Client, .. })), "{r:?}");
        assert_eq!(errors.refused_read.get(), 0);
    }

    /// Issue 15 item 2: a short connection (a request and an answer) paid for two pipes (four
    /// descriptors, their closes, several splices) it never needed. Pieces smaller than the small
    /// buffer are copied; no pipe is created, so a failing pipe2 is never even tried.
    #[tokio::test]
    async fn a_short_exchange_in_splice_mode_creates_no_pipe() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_up, mut up) = pair().await;
        let opts = Options { mode: ForwardMode::Splice, buffer_size: 65536, idle: None };
        // Any pipe asked for fails (and is counted), so the count says whether one was.
        let (errors, task) = spawn_forward(proxy_client, proxy_up, opts, || sys::fail_next_pipes(2));
        let request = vec![1u8; 4000];
        client.write_all(&request).await.unwrap();
        client.shutdown_write().unwrap();
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        assert!(got == request);
        up.write_all(b"answer").await.unwrap();
        up.shutdown_write().unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
        assert_eq!(task.await.unwrap().unwrap(), (4000, 6));
        assert_eq!(errors.create.get(), 0, "no pipe was asked for");
    }

    /// A long-lived connection of small messages (envoy's HTTP/2 connection to kv-server: one
    /// request and one answer at a time) stayed on the buffer for its first 64 KiB and then
    /// spliced every message through a pipe for the rest of its life, though a small message
    /// costs more through a pipe than through the buffer. Now a direction splices only while it
    /// moves more than the buffer holds at once; small messages never ask for a pipe, and a bulk
    /// transfer later on the same connection still does.
    #[tokio::test]
    async fn small_messages_past_64_kib_stay_on_the_buffer_and_bulk_still_splices() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_up, mut up) = pair().await;
        let opts = Options { mode: ForwardMode::Splice, buffer_size: 65536, idle: None };
        // Any pipe asked for fails (and is counted), so the count says whether one was.
        let (errors, task) = spawn_forward(proxy_client, proxy_up, opts, || sys::fail_next_pipes(2));
        let message = [3u8; 1024];
        let mut back = [0u8; 1024];
        // 200 KiB each way, one 1 KiB message at a time (the old rule spliced past 64 KiB).
        for _ in 0..200 {
            client.write_all(&message).await.unwrap();
            up.read_exact(&mut back).await.unwrap();
            up.write_all(&back).await.unwrap();
            client.read_exact(&mut back).await.unwrap();
        }
        assert_eq!(errors.create.get(), 0, "small messages asked for no pipe");
        // Then a bulk transfer on the same connection: it asks for a pipe (refused here, so it
        // goes on by copy, whole).
        let bulk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        exchange(client, up, &bulk, b"end").await;
        assert_eq!(task.await.unwrap().unwrap(), (204_800 + 1_000_000, 204_800 + 3));
        assert_eq!(errors.create.get(), 1, "the bulk direction asked for a pipe");
    }

    /// Out of descriptors (or pipe pages) for a pipe: the direction goes on through a buffer,
    /// and the failure is counted, not a cut transfer.
    #[tokio::test]
    async fn a_pipe_that_cannot_be_created_falls_back_to_copy_and_is_counted() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_up, mut up) = pair().await;
        let opts = Options { mode: ForwardMode::Splice, buffer_size: 8192, idle: None };
        // Both directions' pipes fail (EMFILE), as under a full descriptor table.
        let (errors, task) = spawn_forward(proxy_client, proxy_up, opts, || sys::fail_next_pipes(2));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        client.write_all(&data).await.unwrap();
        client.shutdown_write().unwrap();
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        assert!(got == data);
        let reply: Vec<u8> = (0..100_000u32).map(|i| (i % 229) as u8).collect();
        up.write_all(&reply).await.unwrap();
        up.shutdown_write().unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert!(back == reply);
        assert_eq!(task.await.unwrap().unwrap(), (200_000, 100_000));
        assert_eq!(errors.create.get(), 2);
        assert_eq!(errors.resize.get(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let (_client, proxy_client) = pair().await;
        let (proxy_up, _up) = pair().await;
        let opts =
            Options { mode: ForwardMode::Copy, buffer_size: 8192, idle: Some(Duration::from_millis(50)) };
        let (c, t1, t2) = (Counters::default(), AtomicU64::new(0), AtomicU64::new(0));
        let r = forward(proxy_client, proxy_up, opts, &c, &t1, &t2, &SpliceCounters::default()).await;
        assert!(matches!(r, Err(ForwardError::Idle(_))), "{r:?}");
    }
}
