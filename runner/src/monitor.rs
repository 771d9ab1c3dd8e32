//! The monitor: the detached process (`enclave-runner monitor`, started by `run-enclave` in a
//! new session, stdio on `runner.log`) that owns one enclave's processes for the enclave's whole
//! life, as nitro-cli's enclave process does. Its PID is the enclave's `ProcessID`.
//!
//! Start-up, in this order:
//! 1. records itself in `state.json` (BOOTING);
//! 2. binds the heartbeat listener `<vsock-uds>_9000`, before anything the guest could reach;
//! 3. starts `vhost-device-vsock` and waits (10 s at most) for its `backend.sock`;
//! 4. starts QEMU, its stdout and stderr (the serial console) on `console.log`;
//! 5. answers the heartbeat: RUNNING. No heartbeat within the boot timeout: FAILED.
//!
//! It ends when QEMU exits (the application ended and init powered off: TERMINATED, with the
//! exit status and init's last console lines), when the backend exits, on SIGTERM or SIGINT
//! (`terminate-enclave`), or on any start-up error. On every path it stops QEMU (SIGTERM, then
//! SIGKILL after 5 s), then the backend, removes the sockets it created, and writes the final
//! state with the reason. Both children also get SIGKILL from the kernel if the monitor dies
//! without doing that (parent-death signal).

use crate::console;
use crate::heartbeat::{self, HEARTBEAT_PORT, HeartbeatError};
use crate::qemu::{self, QemuPlan};
use crate::state::{EnclaveDir, Lifecycle, ProcessRef, Record, StateError};
use crate::sys::{self, TerminationSignals};
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the monitor looks at its children, the heartbeat and signals.
const POLL: Duration = Duration::from_millis(50);
/// How long vhost-device-vsock may take to create its vhost-user socket.
const BACKEND_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How many of init's console lines the end-of-enclave report quotes.
const INIT_LINES_REPORTED: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// `state.json` could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The monitor cannot identify itself in /proc.
    #[error("cannot read this process's start time from /proc/self/stat: {0}")]
    SelfIdentity(io::Error),
    /// A socket path is taken by something that is not a socket: never deleted.
    #[error("{path} exists and is not a Unix socket: refusing to replace it")]
    NotASocket { path: PathBuf },
    /// A live process accepts connections on a socket the enclave needs.
    #[error("{path} is in use by another process (a connection to it succeeded)")]
    SocketInUse { path: PathBuf },
    /// Inspecting, removing or binding a socket failed.
    #[error("{path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    /// A log file could not be opened.
    #[error("{path}: cannot open: {source}")]
    Log { path: PathBuf, source: io::Error },
    /// A child process could not be started.
    #[error("cannot start {what} ({program}): {source}")]
    Spawn { what: &'static str, program: PathBuf, source: io::Error },
    /// The backend never created its vhost-user socket.
    #[error("vhost-device-vsock did not create {path} within {} s", BACKEND_START_TIMEOUT.as_secs())]
    BackendSocket { path: PathBuf },
    /// The heartbeat thread could not be started.
    #[error("cannot start the heartbeat thread: {0}")]
    Thread(io::Error),
}

/// How the enclave ended, as written to `state.json` and `runner.log`.
#[derive(Debug)]
struct Outcome {
    state: Lifecycle,
    reason: String,
}

impl Outcome {
    fn failed(reason: impl Into<String>) -> Outcome {
        Outcome { state: Lifecycle::Failed, reason: reason.into() }
    }

    fn terminated(reason: impl Into<String>) -> Outcome {
        Outcome { state: Lifecycle::Terminated, reason: reason.into() }
    }
}

/// `runner.log`, one timestamped line per event; also given to the backend as its stdout/stderr.
pub struct RunnerLog {
    file: File,
    name: String,
}

impl RunnerLog {
    pub fn open(path: &Path, name: &str) -> io::Result<RunnerLog> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(RunnerLog { file, name: name.to_string() })
    }

    pub fn line(&self, msg: impl Display) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let stamp = packaging::eif::metadata::rfc3339_utc(now.as_secs());
        // A failed log write must not take the enclave down: nothing else to do with it.
        let _ = writeln!(&self.file, "{stamp} enclave-runner[{}]: {msg}", self.name);
    }

    fn stdio(&self) -> io::Result<Stdio> {
        Ok(Stdio::from(self.file.try_clone()?))
    }
}

/// "status N" or "signal N", as the reports say it.
pub fn status_text(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => st.to_string(),
    }
}

/// Everything the monitor started or created; all of it is stopped or removed when this is
/// dropped, whichever way the monitor leaves.
struct Owned<'a> {
    log: &'a RunnerLog,
    qemu: Option<Child>,
    backend: Option<Child>,
    sockets: Vec<PathBuf>,
}

impl Owned<'_> {
    /// QEMU first: stopping the backend under a running guest only makes QEMU print errors.
    fn release(&mut self) {
        if let Some(mut c) = self.qemu.take() {
            stop_child(&mut c, "QEMU", self.log);
        }
        if let Some(mut c) = self.backend.take() {
            stop_child(&mut c, "vhost-device-vsock", self.log);
        }
        for path in self.sockets.drain(..) {
            if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL; always reaps.
fn stop_child(child: &mut Child, what: &str, log: &RunnerLog) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // The child is not reaped yet, so its PID cannot have been reused.
    if let Err(e) = sys::send_signal(child.id(), libc::SIGTERM) {
        log.line(format_args!("{what} (pid {}): SIGTERM failed: {e}", child.id()));
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(st)) => {
                log.line(format_args!("{what} (pid {}) stopped ({})", child.id(), status_text(st)));
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    log.line(format_args!(
        "{what} (pid {}) still running {} s after SIGTERM: SIGKILL",
        child.id(),
        STOP_GRACE.as_secs()
    ));
    let _ = child.kill();
    let _ = child.wait();
}

/// Makes `path` free for a new socket: nothing there, or a stale socket nobody accepts on
/// (left by a monitor that was killed), which is removed.
fn clear_stale_socket(path: &Path) -> Result<(), MonitorError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MonitorError::Socket { path: path.into(), source }),
        Ok(m) if !m.file_type().is_socket() => Err(MonitorError::NotASocket { path: path.into() }),
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(MonitorError::SocketInUse { path: path.into() });
            }
            fs::remove_file(path).map_err(|source| MonitorError::Socket { path: path.into(), source })
        }
    }
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn exited(child: &mut Option<Child>) -> Option<ExitStatus> {
    child.as_mut().and_then(|c| c.try_wait().ok().flatten())
}

/// The monitor's entry point: supervises the enclave in `dir` until it ends.
pub fn main(dir: &EnclaveDir) -> ExitCode {
    // Before any thread exists, so that every thread has them blocked.
    let signals = match TerminationSignals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("enclave-runner monitor: cannot block SIGTERM/SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let log = match RunnerLog::open(&dir.runner_log(), &name) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("enclave-runner monitor: {}: {e}", dir.runner_log().display());
            return ExitCode::FAILURE;
        }
    };
    let mut record = match dir.read() {
        Ok(r) => r,
        Err(e) => {
            log.line(format_args!("cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut owned = Owned { log: &log, qemu: None, backend: None, sockets: Vec::new() };
    let outcome =
        supervise(dir, &mut record, &signals, &mut owned).unwrap_or_else(|e| Outcome::failed(e.to_string()));
    owned.release();
    record.status.state = outcome.state;
    record.status.reason = Some(outcome.reason.clone());
    if let Err(e) = dir.write(&record) {
        log.line(format_args!("cannot record the final state: {e}"));
    }
    log.line(format_args!("enclave {name} {}: {}", outcome.state.as_str(), outcome.reason));
    if outcome.state == Lifecycle::Failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn supervise(
    dir: &EnclaveDir,
    record: &mut Record,
    signals: &TerminationSignals,
    owned: &mut Owned,
) -> Result<Outcome, MonitorError> {
    let launch = record.launch.clone();
    let log = owned.log;
    record.status.monitor = Some(ProcessRef::current().map_err(MonitorError::SelfIdentity)?);
    record.status.state = Lifecycle::Booting;
    dir.write(record)?;
    log.line(format_args!(
        "monitor pid {} for enclave {} ({}): CID {}, {} vCPUs, {} MiB, EIF {}",
        std::process::id(),
        launch.name,
        launch.enclave_id,
        launch.cid,
        launch.cpu_count,
        launch.memory_mib,
        launch.eif_path.display()
    ));

    let beats = listen_for_heartbeat(&launch.vsock_uds, owned)?;
    start_backend(dir, record, owned)?;
    let backend_socket = dir.backend_socket();
    let deadline = Instant::now() + BACKEND_START_TIMEOUT;
    while !is_socket(&backend_socket) {
        if let Some(sig) = signals.wait(POLL) {
            return Ok(Outcome::terminated(format!("stopped by {} before QEMU started", sig.name())));
        }
        if let Some(st) = exited(&mut owned.backend) {
            return Ok(Outcome::failed(format!(
                "vhost-device-vsock exited with {} before creating {} (see {})",
                status_text(st),
                backend_socket.display(),
                dir.runner_log().display()
            )));
        }
        if Instant::now() >= deadline {
            return Err(MonitorError::BackendSocket { path: backend_socket });
        }
    }
    start_qemu(dir, record, owned)?;
    let started = Instant::now();
    let boot_timeout = Duration::from_secs(launch.boot_timeout_secs);

    loop {
        if let Some(sig) = signals.wait(POLL) {
            let when = if record.status.booted { "" } else { " during the boot" };
            return Ok(Outcome::terminated(format!("stopped by {}{when}", sig.name())));
        }
        // Before QEMU's exit status: an application that ends right after the heartbeat must
        // still count as booted.
        while let Ok(beat) = beats.try_recv() {
            match beat {
                Ok(()) if !record.status.booted => {
                    record.status.booted = true;
                    record.status.state = Lifecycle::Running;
                    dir.write(record)?;
                    log.line(format_args!(
                        "heartbeat answered {:.1} s after QEMU started: RUNNING",
                        started.elapsed().as_secs_f64()
                    ));
                }
                Ok(()) => log.line("another heartbeat answered"),
                Err(e) if !record.status.booted => return Ok(Outcome::failed(boot_heartbeat_failed(&e))),
                Err(e) => log.line(format_args!("heartbeat connection after the boot: {e}")),
            }
        }
        if let Some(st) = exited(&mut owned.qemu) {
            return Ok(if record.status.booted {
                let init = console::init_tail(&dir.console_log(), INIT_LINES_REPORTED);
                let said = if init.is_empty() {
                    "; no enclave-init lines on the console".to_string()
                } else {
                    format!("; console: {}", init.join(" | "))
                };
                Outcome::terminated(format!("QEMU exited with {}{said}", status_text(st)))
            } else {
                Outcome::failed(format!("QEMU exited with {} before the heartbeat", status_text(st)))
            });
        }
        if let Some(st) = exited(&mut owned.backend) {
            return Ok(Outcome::failed(format!(
                "vhost-device-vsock exited with {} (see {})",
                status_text(st),
                dir.runner_log().display()
            )));
        }
        if !record.status.booted && started.elapsed() >= boot_timeout {
            return Ok(Outcome::failed(format!("no boot heartbeat within {} s", launch.boot_timeout_secs)));
        }
    }
}

fn boot_heartbeat_failed(e: &HeartbeatError) -> String {
    format!("boot heartbeat failed: {e}")
}

/// Binds `<vsock-uds>_9000` and answers heartbeats on a thread.
fn listen_for_heartbeat(
    vsock_uds: &Path,
    owned: &mut Owned,
) -> Result<Receiver<Result<(), HeartbeatError>>, MonitorError> {
    let path = heartbeat::guest_to_host_socket(vsock_uds, HEARTBEAT_PORT);
    clear_stale_socket(&path)?;
    // The backend creates this one; a stale copy would make it fail.
    clear_stale_socket(vsock_uds)?;
    let listener =
        UnixListener::bind(&path).map_err(|source| MonitorError::Socket { path: path.clone(), source })?;
    owned.sockets.push(path);
    let (tx, rx) = mpsc::channel();
    heartbeat::serve(listener, tx).map_err(MonitorError::Thread)?;
    Ok(rx)
}

fn start_backend(dir: &EnclaveDir, record: &mut Record, owned: &mut Owned) -> Result<(), MonitorError> {
    let launch = &record.launch;
    let socket = dir.backend_socket();
    clear_stale_socket(&socket)?;
    let log_err = |source| MonitorError::Log { path: dir.runner_log(), source };
    let mut cmd = Command::new(&launch.vhost_vsock);
    cmd.args(qemu::backend_args(launch.cid, &socket, &launch.vsock_uds))
        .stdin(Stdio::null())
        .stdout(owned.log.stdio().map_err(log_err)?)
        .stderr(owned.log.stdio().map_err(log_err)?);
    sys::die_with_parent(&mut cmd);
    let child = cmd.spawn().map_err(|source| MonitorError::Spawn {
        what: "vhost-device-vsock",
        program: launch.vhost_vsock.clone(),
        source,
    })?;
    owned.log.line(format_args!("vhost-device-vsock started (pid {}): {cmd:?}", child.id()));
    record.status.backend_pid = Some(child.id());
    owned.backend = Some(child);
    owned.sockets.extend([socket, launch.vsock_uds.clone()]);
    dir.write(record)?;
    Ok(())
}

fn start_qemu(dir: &EnclaveDir, record: &mut Record, owned: &mut Owned) -> Result<(), MonitorError> {
    let launch = &record.launch;
    let console_path = dir.console_log();
    let console_err = |source| MonitorError::Log { path: console_path.clone(), source };
    let console = File::options().create(true).append(true).open(&console_path).map_err(console_err)?;
    let tsc_khz = fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| qemu::tsc_khz_from_cpuinfo(&t));
    if tsc_khz.is_none() {
        owned.log.line("no `cpu MHz` in /proc/cpuinfo: booting without tsc_early_khz (a TCG guest may hang)");
    }
    let backend_socket = dir.backend_socket();
    let plan = QemuPlan {
        name: &launch.name,
        eif: &launch.eif_path,
        memory_mib: launch.memory_mib,
        cpu_count: launch.cpu_count,
        backend_socket: &backend_socket,
        tsc_khz,
    };
    let mut cmd = Command::new(&launch.qemu);
    cmd.args(qemu::qemu_args(&plan))
        .stdin(Stdio::null())
        .stdout(console.try_clone().map_err(console_err)?)
        .stderr(console);
    sys::die_with_parent(&mut cmd);
    let child = cmd.spawn().map_err(|source| MonitorError::Spawn {
        what: "QEMU",
        program: launch.qemu.clone(),
        source,
    })?;
    owned.log.line(format_args!("QEMU started (pid {}): {cmd:?}", child.id()));
    record.status.qemu_pid = Some(child.id());
    owned.qemu = Some(child);
    dir.write(record)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_like_the_reports() {
        assert_eq!(status_text(ExitStatus::from_raw(0)), "status 0");
        assert_eq!(status_text(ExitStatus::from_raw(3 << 8)), "status 3");
        assert_eq!(status_text(ExitStatus::from_raw(libc::SIGKILL)), "signal 9");
    }

    #[test]
    fn stale_sockets_are_removed_live_ones_and_other_files_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live.sock");
        let _listener = UnixListener::bind(&live).unwrap();
        assert!(matches!(clear_stale_socket(&live), Err(MonitorError::SocketInUse { .. })));

        let stale = tmp.path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        clear_stale_socket(&stale).unwrap();
        assert!(!stale.exists());

        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(clear_stale_socket(&file), Err(MonitorError::NotASocket { .. })));
        assert!(file.exists());

        clear_stale_socket(&tmp.path().join("absent")).unwrap();
    }

    #[test]
    fn stop_child_terminates_and_reaps() {
        let tmp = tempfile::tempdir().unwrap();
        let log = RunnerLog::open(&tmp.path().join("runner.log"), "t").unwrap();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let start = Instant::now();
        stop_child(&mut child, "sleep", &log);
        assert!(start.elapsed() < STOP_GRACE);
        let text = fs::read_to_string(tmp.path().join("runner.log")).unwrap();
        assert!(text.contains("sleep (pid") && text.contains("stopped (signal 15)"), "{text}");
    }
}
