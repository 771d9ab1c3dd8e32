//! The libc calls std does not offer: sending a signal to a PID, waiting for SIGTERM/SIGINT
//! synchronously, and the two `pre_exec` hooks for child processes (a new session for the
//! monitor, a parent-death signal for QEMU and the backend). All of this crate's `unsafe` is here.

#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// A termination signal the monitor or `run-enclave` received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    Term,
    Int,
}

impl Termination {
    pub fn name(self) -> &'static str {
        match self {
            Termination::Term => "SIGTERM",
            Termination::Int => "SIGINT",
        }
    }
}

/// SIGTERM and SIGINT, blocked in this thread (and every thread it starts later) so that they
/// stay pending until [`TerminationSignals::wait`] takes them: no handler, no async-signal-safety
/// concerns. Create it before starting any thread. A blocked mask survives fork and exec (checked:
/// QEMU and vhost-device-vsock then ignore SIGTERM), so every child must be spawned with
/// [`new_session`] or [`die_with_parent`], which unblock all signals in the child.
pub struct TerminationSignals {
    set: libc::sigset_t,
}

impl TerminationSignals {
    pub fn block() -> io::Result<TerminationSignals> {
        // SAFETY: `sigset_t` is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the signal numbers are valid.
        unsafe {
            if libc::sigemptyset(&mut set) != 0
                || libc::sigaddset(&mut set, libc::SIGTERM) != 0
                || libc::sigaddset(&mut set, libc::SIGINT) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(TerminationSignals { set })
    }

    /// Waits up to `timeout` for SIGTERM or SIGINT; `None` when none arrived (or on EINTR).
    pub fn wait(&self, timeout: Duration) -> Option<Termination> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `self.set` is initialised; a null siginfo pointer is allowed; `ts` is valid.
        let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        match sig {
            libc::SIGTERM => Some(Termination::Term),
            libc::SIGINT => Some(Termination::Int),
            _ => None,
        }
    }
}

/// Sends `sig` to process `pid`. Refuses PID 0 and values that would be negative as a `pid_t`
/// (those address process groups, or every process).
pub fn send_signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("refusing to signal PID {pid}"))
    })?;
    // SAFETY: kill has no memory-safety preconditions; `pid` is a single positive PID.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unblocks every signal; called in a child between fork and exec.
fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: `set` is plain data initialised by sigemptyset before use; sigemptyset and
    // sigprocmask are async-signal-safe; a null old-set pointer is allowed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigemptyset(&mut set) != 0
            || libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The child starts a new session (`setsid`): no controlling terminal, not in the caller's
/// process group, so a Ctrl-C at the caller's terminal does not reach it. Its signal mask is
/// emptied.
pub fn new_session(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls setsid, sigemptyset and
    // sigprocmask, which are async-signal-safe, and builds an io::Error from an errno (no
    // allocation).
    unsafe {
        cmd.pre_exec(|| {
            unblock_all_signals()?;
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The child gets SIGKILL when the thread that spawned it exits: a backstop so that QEMU and
/// the backend never outlive a monitor that was killed without a chance to stop them. Spawn
/// from a thread that lives as long as the monitor (its main thread). Its signal mask is
/// emptied.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only calls sigemptyset, sigprocmask,
    // prctl and getppid, all async-signal-safe, and builds an io::Error from an errno (no
    // allocation).
    unsafe {
        cmd.pre_exec(move || {
            unblock_all_signals()?;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would stop us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_pid_zero_and_group_addresses() {
        assert!(send_signal(0, 0).is_err());
        assert!(send_signal(u32::MAX, 0).is_err());
        assert!(send_signal(1 << 31, 0).is_err());
    }

    /// Blocking here affects only this test's thread (the harness runs each test on its own).
    #[test]
    fn children_start_with_no_blocked_signals() {
        let _blocked = TerminationSignals::block().unwrap();
        for hook in [new_session as fn(&mut Command), die_with_parent] {
            let mut cmd = Command::new("grep");
            cmd.args(["^SigBlk:", "/proc/self/status"]);
            hook(&mut cmd);
            let out = cmd.output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SigBlk:\t0000000000000000");
        }
    }

    #[test]
    fn signal_zero_probes_our_own_process() {
        send_signal(std::process::id(), 0).unwrap();
    }
}
