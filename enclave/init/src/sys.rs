//! Thin wrappers over the system calls PID 1 needs. Every `unsafe` block is here.
//!
//! None of these run in tests (vsock safety rule: no vsock connection from tests); the plan
//! and parsing around them are tested instead.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} contains NUL")))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

pub fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstr(source)?;
    let target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    // SAFETY: all pointers are valid NUL-terminated strings (or null where the kernel accepts
    // null) that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    check(rc)
}

pub fn finit_module(fd: RawFd) -> io::Result<()> {
    let params = c"";
    // SAFETY: fd is an open file descriptor owned by the caller; params is a valid empty C
    // string; flags 0.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, fd, params.as_ptr(), 0) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

pub fn chroot(path: &str) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a valid C string for the duration of the call.
    check(unsafe { libc::chroot(p.as_ptr()) })
}

/// Points fds 0, 1 and 2 at `console`.
pub fn redirect_stdio(console: &std::fs::File) -> io::Result<()> {
    for target in 0..3 {
        // SAFETY: console is an open descriptor; dup2 onto 0..2 replaces the standard streams,
        // which is the intent (PID 1 starts with whatever the kernel gave it).
        check(unsafe { libc::dup2(console.as_raw_fd(), target) })?;
    }
    Ok(())
}

struct Fd(RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: self.0 is a descriptor this wrapper opened and nobody else closes.
        unsafe { libc::close(self.0) };
    }
}

/// Connects to the parent on vsock, sends `byte` and waits up to `timeout_ms` for the echo.
pub fn vsock_heartbeat(cid: u32, port: u32, byte: u8, timeout_ms: i32) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    let fd = Fd(fd);
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value before the fields are set.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = cid;
    // SAFETY: addr is a properly initialised sockaddr_vm and the length matches its type.
    check(unsafe {
        libc::connect(
            fd.0,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    let buf = [byte];
    // SAFETY: buf is valid for 1 byte.
    let n = unsafe { libc::write(fd.0, buf.as_ptr().cast(), 1) };
    if n != 1 {
        return Err(io::Error::last_os_error());
    }
    let mut pfd = libc::pollfd { fd: fd.0, events: libc::POLLIN, revents: 0 };
    // SAFETY: pfd is one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if ready == 0 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "no heartbeat echo from the parent"));
    }
    check(ready)?;
    let mut echo = [0u8; 1];
    // SAFETY: echo is valid for 1 byte.
    let n = unsafe { libc::read(fd.0, echo.as_mut_ptr().cast(), 1) };
    if n != 1 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "parent closed before echoing the heartbeat",
        ));
    }
    if echo[0] != byte {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("parent echoed {:#04x}, expected {byte:#04x}", echo[0]),
        ));
    }
    Ok(())
}

/// `ip link set lo up`; the kernel then assigns 127.0.0.1/8 to it.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    let fd = Fd(fd);
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq naming "lo"; SIOCGIFFLAGS fills ifru_flags.
    check(unsafe { libc::ioctl(fd.0, libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: req is valid and names "lo".
    check(unsafe { libc::ioctl(fd.0, libc::SIOCSIFFLAGS as _, &req) })
}

/// Waits for any child; returns (pid, raw status).
pub fn wait_any() -> io::Result<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid >= 0 {
            return Ok((pid, status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Exit code of a wait status (128 + signal for a killed process, as shells report it).
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) }
}

/// Makes `cmd` start in a new session (its own process group, as with AWS's init).
pub fn in_new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec; setsid is async-signal-safe and
    // touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| check(libc::setsid()));
    }
}

pub fn power_off() -> io::Error {
    // SAFETY: sync and reboot have no memory-safety preconditions; reboot only returns on error.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    io::Error::last_os_error()
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}
