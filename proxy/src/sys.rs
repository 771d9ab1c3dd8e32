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

impl Pipe {
    /// Creates a pipe and asks for `size` bytes of capacity (the kernel may round or cap it;
    /// failure to resize is not an error, the default 64 KiB then applies).
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if size != 65536 {
            let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
            // SAFETY: F_SETPIPE_SZ takes an int argument and only affects this pipe.
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        }
        Ok(Pipe { read, write })
    }

    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
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
        let pipe = Pipe::new(1 << 16).unwrap();
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
    fn nofile_limit_is_at_least_what_it_was() {
        let (before, after) = raise_nofile_limit().unwrap();
        assert!(after >= before);
    }
}
