//! The few system calls the standard library and tokio do not wrap: `splice(2)` and pipes for
//! zero-copy forwarding, `SO_LINGER` to pass a reset on, and `RLIMIT_NOFILE`. All `unsafe` of
//! the crate lives here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking pipe used as the in-kernel buffer between two sockets.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

/// The capacity of a new pipe on Linux (16 pages).
pub const DEFAULT_PIPE_SIZE: usize = 65536;

#[cfg(test)]
thread_local! {
    /// Test hook: how many of the next `Pipe::new` calls on this thread fail with EMFILE.
    static FAIL_PIPES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Test hook: makes the next `n` pipe creations on this thread fail as if out of descriptors.
#[cfg(test)]
pub fn fail_next_pipes(n: usize) {
    FAIL_PIPES.with(|f| f.set(n));
}

#[cfg(test)]
thread_local! {
    /// Test hook: how many of the next splices into / out of a pipe on this thread fail with
    /// EINVAL, as on a socket whose kernel has no splice support for it.
    static REFUSE_SPLICES: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Test hook: makes the next `into_pipe` [`splice_to_pipe`] and `out_of_pipe`
/// [`splice_from_pipe`] calls on this thread fail with EINVAL.
#[cfg(test)]
pub fn refuse_next_splices(into_pipe: usize, out_of_pipe: usize) {
    REFUSE_SPLICES.with(|r| r.set((into_pipe, out_of_pipe)));
}

#[cfg(test)]
fn refused(out: bool) -> bool {
    REFUSE_SPLICES.with(|r| {
        let (mut into, mut from) = r.get();
        let n = if out { &mut from } else { &mut into };
        let hit = *n > 0;
        *n = n.saturating_sub(1);
        r.set((into, from));
        hit
    })
}

impl Pipe {
    /// Creates a non-blocking pipe of the default capacity ([`DEFAULT_PIPE_SIZE`]). Fails with
    /// EMFILE/ENFILE when out of descriptors.
    pub fn new() -> io::Result<Pipe> {
        #[cfg(test)]
        if FAIL_PIPES.with(|f| f.replace(f.get().saturating_sub(1)) > 0) {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }

    /// Asks for `size` bytes of capacity (`F_SETPIPE_SZ`; the kernel rounds up to a power of two
    /// pages). Fails with EPERM above `fs.pipe-max-size` without CAP_SYS_RESOURCE or past the
    /// per-user pipe page limits; the pipe then keeps its current capacity.
    pub fn resize(&self, size: usize) -> io::Result<()> {
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an int argument and only affects this pipe.
        if unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// Reads what the pipe holds, up to `buf.len()` bytes, without waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes; the fd is our open pipe end.
        let n = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

/// `splice` from a socket into a pipe's write end.
pub fn splice_to_pipe(socket: RawFd, pipe: RawFd, len: usize) -> io::Result<usize> {
    #[cfg(test)]
    if refused(false) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    splice(socket, pipe, len)
}

/// `splice` from a pipe's read end into a socket.
pub fn splice_from_pipe(pipe: RawFd, socket: RawFd, len: usize) -> io::Result<usize> {
    #[cfg(test)]
    if refused(true) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    splice(pipe, socket, len)
}

/// Whether a failed `splice` means the kernel does not splice this kind of file (`EINVAL`,
/// `EOPNOTSUPP`/`ENOTSUP`: no `splice_read` or `splice_write` for the socket family), rather
/// than that the stream broke.
pub fn splice_unsupported(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|c| c == libc::EINVAL || c == libc::EOPNOTSUPP || c == libc::ENOTSUP)
}

/// Moves up to `len` bytes from `from` to `to` without copying through user space; one of the
/// two must be a pipe. Never blocks (`WouldBlock` instead).
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call (owned by the caller's sockets
    // and pipe); null offsets mean "use the file position", as required for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Succeeds when a byte or the end of the stream is waiting on the socket, without consuming
/// it; `WouldBlock` when nothing is. Used to confirm readiness before allocating a buffer or a
/// pipe: tokio may report a fresh socket readable before anything arrived.
pub fn peek(fd: RawFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    // SAFETY: `byte` is a valid 1-byte buffer; MSG_PEEK leaves the data in the socket.
    let n = unsafe { libc::recv(fd, byte.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// One `recv(2)` into the capacity of `buf`, which then holds what was read (the socket is
/// non-blocking: `WouldBlock` when nothing is there). The capacity is never zeroed first: a
/// connection's buffers are written only by the kernel, so zeroing them was pure cost.
pub fn recv_into(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf` for the duration
    // of the call; recv writes at most that many.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: recv initialised the first `n` bytes of the spare capacity (n <= its length).
    unsafe { buf.set_len(n as usize) };
    Ok(n as usize)
}

/// Makes the next close of this TCP socket send a reset instead of a FIN, so that a peer
/// learns that the stream was cut rather than complete. Harmless on other socket types.
pub fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `linger` is a valid struct of the size passed; the fd is an open socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// The (soft, hard) `RLIMIT_NOFILE` of this process.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// `fs.pipe-max-size`: the largest pipe an unprivileged process may ask for.
pub fn pipe_max_size() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size").ok()?.trim().parse().ok()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (before, after).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn splice_moves_bytes_between_sockets_through_a_pipe() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, mut d) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(b"hello").unwrap();
        let pipe = Pipe::new().unwrap();
        pipe.resize(1 << 17).unwrap();
        assert_eq!(splice(b.as_raw_fd(), pipe.write_fd(), 1024).unwrap(), 5);
        assert_eq!(splice(pipe.read_fd(), c.as_raw_fd(), 5).unwrap(), 5);
        let mut got = [0u8; 5];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        b.set_nonblocking(true).unwrap();
        let e = splice(b.as_raw_fd(), pipe.write_fd(), 1024).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn the_pipe_test_hook_fails_then_recovers() {
        fail_next_pipes(1);
        assert_eq!(Pipe::new().unwrap_err().raw_os_error(), Some(libc::EMFILE));
        assert!(Pipe::new().is_ok());
    }

    #[test]
    fn the_splice_test_hook_refuses_then_recovers() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, mut d) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(b"hi").unwrap();
        let pipe = Pipe::new().unwrap();
        refuse_next_splices(1, 1);
        let e = splice_to_pipe(b.as_raw_fd(), pipe.write_fd(), 16).unwrap_err();
        assert!(splice_unsupported(&e), "{e}");
        assert_eq!(splice_to_pipe(b.as_raw_fd(), pipe.write_fd(), 16).unwrap(), 2);
        assert!(splice_unsupported(&splice_from_pipe(pipe.read_fd(), c.as_raw_fd(), 2).unwrap_err()));
        // The refused splice left the bytes in the pipe.
        let mut buf = [0u8; 8];
        assert_eq!(pipe.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        a.write_all(b"yo").unwrap();
        assert_eq!(splice_to_pipe(b.as_raw_fd(), pipe.write_fd(), 16).unwrap(), 2);
        assert_eq!(splice_from_pipe(pipe.read_fd(), c.as_raw_fd(), 2).unwrap(), 2);
        let mut got = [0u8; 2];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"yo");
        assert!(!splice_unsupported(&io::Error::from_raw_os_error(libc::EPIPE)));
    }

    #[test]
    fn nofile_limit_is_at_least_what_it_was() {
        let (before, after) = raise_nofile_limit().unwrap();
        assert!(after >= before);
    }
}
