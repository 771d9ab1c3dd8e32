//! The verbs: `run-enclave`, `describe-enclaves`, `console`, `terminate-enclave`. Each checks its
//! input before it starts anything and names the file, enclave or process an error concerns.

use crate::console;
use crate::describe::{self, EnclaveInfo, RunInfo, TerminateInfo};
use crate::heartbeat;
use crate::monitor::status_text;
use crate::state::{EnclaveDir, Launch, Lifecycle, Record, StateDir, StateError};
use crate::sys::{self, TerminationSignals};
use crate::tools::{ToolError, Tools};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the monitor may take to record itself in `state.json`.
const MONITOR_START_TIMEOUT: Duration = Duration::from_secs(10);
/// `run-enclave`'s own bound on top of the boot timeout (the monitor enforces the boot timeout
/// itself; this covers the backend's start and the monitor's clean-up).
const RUN_SLACK: Duration = Duration::from_secs(30);
/// How long `terminate-enclave` waits for a monitor to stop its children and exit.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Console lines quoted when a boot fails.
const FAILURE_CONSOLE_LINES: usize = 20;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const MAX_NAME_LEN: usize = 64;
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag's value is out of range.
    #[error("{flag} {value}: {reason}")]
    InvalidArgument { flag: &'static str, value: String, reason: String },
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The EIF is unreadable or corrupt (the reader's message names the file and the offset).
    #[error("the enclave image is not usable: {0}")]
    Eif(#[from] packaging::eif::ReadError),
    #[error(transparent)]
    State(#[from] StateError),
    /// The name is taken by a live enclave.
    #[error("an enclave named {name} is already running (monitor pid {pid}); terminate it first")]
    NameTaken { name: String, pid: u32 },
    /// The CID is taken by a live enclave.
    #[error("CID {cid} is already used by the running enclave {other}")]
    CidTaken { cid: u32, other: String },
    /// The vsock socket path is taken by a live enclave.
    #[error("{path} is already the vsock socket of the running enclave {other}")]
    UdsTaken { path: PathBuf, other: String },
    /// A leftover directory of a dead enclave could not be removed.
    #[error("cannot remove the leftover directory {path} of a stopped enclave: {source}")]
    Leftover { path: PathBuf, source: io::Error },
    /// Creating the enclave's directory or its log files failed.
    #[error("{path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    /// The monitor process could not be started.
    #[error("cannot start the monitor ({program}): {source}")]
    SpawnMonitor { program: PathBuf, source: io::Error },
    /// The monitor exited or hung before recording itself.
    #[error("the monitor of enclave {name} {what}; see {log}:\n{tail}")]
    MonitorStart { name: String, what: String, log: PathBuf, tail: String },
    /// The boot failed; the monitor has stopped everything it started.
    #[error("enclave {name}: {reason}\nlast console lines ({console}):\n{tail}")]
    BootFailed { name: String, reason: String, console: PathBuf, tail: String },
    /// No enclave (`kind`: "running enclave" or "enclave") matches.
    #[error("no {kind} {selector} (state directory {state_dir})")]
    NoSuchEnclave { kind: &'static str, selector: String, state_dir: PathBuf },
    /// A monitor did not exit after SIGTERM (it was then killed).
    #[error("enclave {name}: monitor pid {pid} did not exit within {} s of SIGTERM; sent SIGKILL", TERMINATE_TIMEOUT.as_secs())]
    TerminateTimeout { name: String, pid: u32 },
    /// Signalling the monitor failed.
    #[error("enclave {name}: cannot signal monitor pid {pid}: {source}")]
    Signal { name: String, pid: u32, source: io::Error },
    /// Writing the console to stdout or reading console.log failed.
    #[error("console of enclave {name} ({path}): {source}")]
    Console { name: String, path: PathBuf, source: io::Error },
    /// `run-enclave` itself was interrupted; the enclave it started was stopped.
    #[error("interrupted by {signal}: enclave {name} was stopped")]
    Interrupted { name: String, signal: &'static str },
}

/// `run-enclave`'s parameters, as nitro-cli's flags give them.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub eif_path: PathBuf,
    pub cpu_count: u32,
    pub memory_mib: u64,
    /// None: the lowest free CID from 16 on.
    pub cid: Option<u32>,
    /// None: the EIF's file name without its extension (as nitro-cli does).
    pub name: Option<String>,
    pub debug_mode: bool,
    pub boot_timeout_secs: u64,
    pub vsock_uds: Option<PathBuf>,
}

/// Which enclave a verb is about.
#[derive(Clone, Debug)]
pub enum Selector {
    Id(String),
    Name(String),
    All,
}

impl Selector {
    fn matches(&self, r: &Record) -> bool {
        match self {
            Selector::Id(id) => r.launch.enclave_id == *id,
            Selector::Name(n) => r.launch.name == *n,
            Selector::All => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Selector::Id(id) => format!("with ID {id}"),
            Selector::Name(n) => format!("named {n}"),
            Selector::All => "at all".into(),
        }
    }
}

fn invalid(flag: &'static str, value: impl ToString, reason: impl Into<String>) -> CliError {
    CliError::InvalidArgument { flag, value: value.to_string(), reason: reason.into() }
}

/// Names become directory names and QEMU's `id=`: nitro-cli's charset, no leading dot.
pub fn check_name(name: &str) -> Result<(), CliError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid("--enclave-name", name, format!("must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(invalid("--enclave-name", name, "letters, digits, '.', '_' and '-' only"));
    }
    if name.starts_with('.') {
        return Err(invalid("--enclave-name", name, "must not start with '.'"));
    }
    Ok(())
}

/// The checks on numbers, before anything else (nitro-cli's ranges: CIDs 0-2 are reserved, 3
/// is the parent, u32::MAX means "any").
pub fn check_resources(req: &RunRequest) -> Result<(), CliError> {
    if req.cpu_count < 1 {
        return Err(invalid("--cpu-count", req.cpu_count, "must be at least 1"));
    }
    if req.memory_mib < 64 {
        return Err(invalid("--memory", req.memory_mib, "must be at least 64 (MiB)"));
    }
    if let Some(cid) = req.cid
        && !(4..u32::MAX).contains(&cid)
    {
        return Err(invalid("--enclave-cid", cid, "must be between 4 and 4294967294"));
    }
    if req.boot_timeout_secs < 1 {
        return Err(invalid("--boot-timeout", req.boot_timeout_secs, "must be at least 1 (seconds)"));
    }
    Ok(())
}

/// The default name: the EIF's file name without its extension.
fn default_name(eif: &Path) -> Result<String, CliError> {
    let stem = eif.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    check_name(&stem).map_err(|_| {
        invalid(
            "--enclave-name",
            "(not given)",
            format!("the EIF's file name {stem:?} is not a valid name: pass one"),
        )
    })?;
    Ok(stem)
}

/// A path that QEMU's and the backend's comma-separated options can carry, and that fits in
/// a Unix socket address when `suffix` is appended.
fn check_socket_path(flag: &'static str, path: &Path, suffix: &str) -> Result<(), CliError> {
    let text = path.to_string_lossy();
    if text.contains(',') {
        return Err(invalid(
            flag,
            text,
            "must not contain ',' (QEMU's and vhost-device-vsock's option syntax)",
        ));
    }
    let len = path.as_os_str().len() + suffix.len();
    if len > MAX_SOCKET_PATH {
        return Err(invalid(
            flag,
            text,
            format!("{len} bytes with {suffix:?}: a Unix socket path holds at most {MAX_SOCKET_PATH}"),
        ));
    }
    Ok(())
}

fn new_enclave_id() -> String {
    let mut bytes = [0u8; 8];
    let filled = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    let n = match filled {
        Ok(()) => u64::from_le_bytes(bytes),
        // Unique enough for a local run: nanoseconds and our PID.
        Err(_) => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
        }
    };
    format!("i-local-enc-{n:016x}")
}

/// What `run-enclave` established before touching the state directory.
struct Checked {
    name: String,
    tools: Tools,
    eif_path: PathBuf,
    measurements: packaging::eif::Measurements,
}

/// The checks that need no state: numbers, name, tools, the EIF itself.
fn check_request(req: &RunRequest) -> Result<Checked, CliError> {
    check_resources(req)?;
    let name = match &req.name {
        Some(n) => {
            check_name(n)?;
            n.clone()
        }
        None => default_name(&req.eif_path)?,
    };
    let tools = Tools::from_env()?;
    let eif_path = fs::canonicalize(&req.eif_path)
        .map_err(|source| packaging::eif::ReadError::Open { path: req.eif_path.clone(), source })?;
    check_socket_path("--eif-path", &eif_path, "")?;
    let eif = packaging::eif::describe(&eif_path, true)?;
    // What the runner appends (ENCLAVE_INIT_PARENT_CID=2) reaches enclave-init as an environment
    // variable, or as an argv word when the image's command line has ` -- `; it reads both.
    Ok(Checked { name, tools, eif_path, measurements: eif.measurements })
}

/// Under the state lock: refuses a name, CID or socket a live enclave holds, removes a dead
/// enclave's leftover directory, and creates the new one with its record.
fn create_enclave(state: &StateDir, req: &RunRequest, checked: Checked) -> Result<EnclaveDir, CliError> {
    let live = state.live()?;
    let name = checked.name;
    let dir = state.enclave(&name);
    let vsock_uds = match &req.vsock_uds {
        Some(p) => std::path::absolute(p).map_err(|source| CliError::Create { path: p.clone(), source })?,
        None => dir.default_vsock_uds(),
    };
    let longest_port = heartbeat::guest_to_host_socket(Path::new(""), u32::MAX);
    check_socket_path("--vsock-uds", &vsock_uds, &longest_port.to_string_lossy())?;
    check_socket_path("--state-dir", &dir.backend_socket(), "")?;
    if let Some((_, r)) = live.iter().find(|(_, r)| r.launch.name == name) {
        return Err(CliError::NameTaken { name, pid: r.status.monitor.map_or(0, |m| m.pid) });
    }
    let cid = match req.cid {
        Some(cid) => {
            if let Some((_, r)) = live.iter().find(|(_, r)| r.launch.cid == cid) {
                return Err(CliError::CidTaken { cid, other: r.launch.name.clone() });
            }
            cid
        }
        None => (16..u32::MAX).find(|c| live.iter().all(|(_, r)| r.launch.cid != *c)).unwrap_or(16),
    };
    if let Some((_, r)) = live.iter().find(|(_, r)| r.launch.vsock_uds == vsock_uds) {
        return Err(CliError::UdsTaken { path: vsock_uds, other: r.launch.name.clone() });
    }
    if dir.path().exists() {
        fs::remove_dir_all(dir.path())
            .map_err(|source| CliError::Leftover { path: dir.path().into(), source })?;
    }
    fs::create_dir(dir.path()).map_err(|source| CliError::Create { path: dir.path().into(), source })?;
    for log in [dir.console_log(), dir.runner_log()] {
        File::create(&log).map_err(|source| CliError::Create { path: log.clone(), source })?;
    }
    dir.write(&Record::new(Launch {
        name,
        enclave_id: new_enclave_id(),
        cid,
        cpu_count: req.cpu_count,
        memory_mib: req.memory_mib,
        debug_mode: req.debug_mode,
        eif_path: checked.eif_path,
        measurements: checked.measurements,
        vsock_uds,
        boot_timeout_secs: req.boot_timeout_secs,
        qemu: checked.tools.qemu,
        vhost_vsock: checked.tools.vhost_vsock,
    }))?;
    Ok(dir)
}

/// `run-enclave`: checks everything, starts the monitor, waits for the heartbeat.
pub fn run_enclave(state: &StateDir, req: RunRequest) -> Result<RunInfo, CliError> {
    let checked = check_request(&req)?;
    let name = checked.name.clone();
    let state = state.create()?;
    let lock = state.lock()?;
    let dir = create_enclave(&state, &req, checked)?;
    // Blocked before the monitor exists, so a Ctrl-C from now on is seen by the wait below.
    let signals = TerminationSignals::block().ok();
    let mut monitor = spawn_monitor(&state, &dir, &name)?;
    let registered = wait_for_registration(&dir, &name, &mut monitor);
    // Only now may another run-enclave look: this enclave is live from here on.
    drop(lock);
    registered?;
    wait_for_boot(&dir, &name, &mut monitor, signals.as_ref(), req.boot_timeout_secs)
}

fn spawn_monitor(state: &StateDir, dir: &EnclaveDir, name: &str) -> Result<Child, CliError> {
    let program = std::env::current_exe()
        .map_err(|source| CliError::SpawnMonitor { program: "enclave-runner".into(), source })?;
    let log = dir.runner_log();
    let open = || {
        File::options()
            .append(true)
            .open(&log)
            .map_err(|source| CliError::Create { path: log.clone(), source })
    };
    let mut cmd = Command::new(&program);
    cmd.arg("--state-dir")
        .arg(state.root())
        .args(["monitor", "--enclave-name", name])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?);
    sys::new_session(&mut cmd);
    cmd.spawn().map_err(|source| CliError::SpawnMonitor { program, source })
}

fn log_tail(dir: &EnclaveDir) -> String {
    console::tail(&dir.runner_log(), 10).join("\n")
}

/// Holds until the monitor has written its PID (so the enclave is visible as live).
fn wait_for_registration(dir: &EnclaveDir, name: &str, monitor: &mut Child) -> Result<(), CliError> {
    let deadline = Instant::now() + MONITOR_START_TIMEOUT;
    loop {
        if dir.read().is_ok_and(|r| r.status.monitor.is_some()) {
            return Ok(());
        }
        if let Ok(Some(st)) = monitor.try_wait() {
            return Err(CliError::MonitorStart {
                name: name.into(),
                what: format!("exited with {} at start", status_text(st)),
                log: dir.runner_log(),
                tail: log_tail(dir),
            });
        }
        if Instant::now() >= deadline {
            stop_monitor(monitor);
            return Err(CliError::MonitorStart {
                name: name.into(),
                what: format!("did not start within {} s", MONITOR_START_TIMEOUT.as_secs()),
                log: dir.runner_log(),
                tail: log_tail(dir),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// SIGTERM to our own monitor child, then waits (bounded) and kills it if it hangs; its
/// children die with it (parent-death signal).
fn stop_monitor(monitor: &mut Child) {
    let _ = sys::send_signal(monitor.id(), libc::SIGTERM);
    if wait_child(monitor, TERMINATE_TIMEOUT).is_none() {
        let _ = monitor.kill();
        let _ = monitor.wait();
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => return None,
        }
    }
}

fn boot_failed(dir: &EnclaveDir, name: &str, reason: String) -> CliError {
    CliError::BootFailed {
        name: name.into(),
        reason,
        console: dir.console_log(),
        tail: console::failure_excerpt(&dir.console_log(), FAILURE_CONSOLE_LINES),
    }
}

fn wait_for_boot(
    dir: &EnclaveDir,
    name: &str,
    monitor: &mut Child,
    signals: Option<&TerminationSignals>,
    boot_timeout_secs: u64,
) -> Result<RunInfo, CliError> {
    let deadline = Instant::now() + Duration::from_secs(boot_timeout_secs) + RUN_SLACK;
    loop {
        let record = dir.read()?;
        if record.status.booted {
            return Ok(describe::run_info(&record));
        }
        if matches!(record.status.state, Lifecycle::Failed | Lifecycle::Terminated) {
            // The monitor has stopped its children; let it finish exiting.
            if wait_child(monitor, TERMINATE_TIMEOUT).is_none() {
                stop_monitor(monitor);
            }
            let reason = record.status.reason.unwrap_or_else(|| "the boot failed".into());
            return Err(boot_failed(dir, name, reason));
        }
        if let Ok(Some(st)) = monitor.try_wait() {
            // Exited without writing a final state (killed, or panicked: see runner.log).
            let reason = format!(
                "the monitor exited with {} during the boot; see {}",
                status_text(st),
                dir.runner_log().display()
            );
            return Err(boot_failed(dir, name, reason));
        }
        if Instant::now() >= deadline {
            stop_monitor(monitor);
            return Err(boot_failed(dir, name, format!("no boot heartbeat within {boot_timeout_secs} s")));
        }
        let signal = match signals {
            Some(s) => s.wait(POLL),
            None => {
                std::thread::sleep(POLL);
                None
            }
        };
        if let Some(sig) = signal {
            stop_monitor(monitor);
            return Err(CliError::Interrupted { name: name.into(), signal: sig.name() });
        }
    }
}

/// `describe-enclaves`: every live enclave.
pub fn describe_enclaves(state: &StateDir) -> Result<Vec<EnclaveInfo>, CliError> {
    Ok(state.live()?.iter().map(|(dir, r)| describe::enclave_info(dir, r)).collect())
}

/// `console`: the console from its start, followed until the enclave ends or `timeout`.
/// An enclave that already ended is found too (its console is printed and the command returns).
pub fn console(state: &StateDir, selector: &Selector, timeout: Option<Duration>) -> Result<(), CliError> {
    let found = state
        .all()?
        .into_iter()
        .filter_map(|(d, r)| r.ok().map(|r| (d, r)))
        .filter(|(_, r)| selector.matches(r))
        .max_by_key(|(_, r)| r.is_live());
    let Some((dir, record)) = found else {
        return Err(CliError::NoSuchEnclave {
            kind: "enclave",
            selector: selector.describe(),
            state_dir: state.root().into(),
        });
    };
    let name = record.launch.name.clone();
    let path = dir.console_log();
    let mut out = io::stdout().lock();
    let followed = console::follow(&path, &mut out, timeout, || !dir.read().is_ok_and(|r| r.is_live()));
    match followed {
        // The reader went away (`| head`): not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(CliError::Console { name, path, source }),
        Ok(()) => Ok(()),
    }
}

/// `terminate-enclave`: SIGTERM to each matching monitor, then waits for it to exit.
pub fn terminate_enclaves(state: &StateDir, selector: &Selector) -> Result<Vec<TerminateInfo>, CliError> {
    let targets: Vec<(EnclaveDir, Record)> =
        state.live()?.into_iter().filter(|(_, r)| selector.matches(r)).collect();
    if targets.is_empty() && !matches!(selector, Selector::All) {
        return Err(CliError::NoSuchEnclave {
            kind: "running enclave",
            selector: selector.describe(),
            state_dir: state.root().into(),
        });
    }
    // Signal all first, then wait: with --all the enclaves stop in parallel.
    let mut waiting = Vec::new();
    for (dir, record) in targets {
        let Some(monitor) = record.status.monitor else { continue };
        match sys::send_signal(monitor.pid, libc::SIGTERM) {
            Ok(()) => waiting.push((dir, record, monitor)),
            // It exited between the listing and the signal.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => waiting.push((dir, record, monitor)),
            Err(source) => {
                return Err(CliError::Signal { name: record.launch.name, pid: monitor.pid, source });
            }
        }
    }
    let deadline = Instant::now() + TERMINATE_TIMEOUT;
    let mut done = Vec::new();
    for (_dir, record, monitor) in waiting {
        while monitor.is_alive() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if monitor.is_alive() {
            let _ = sys::send_signal(monitor.pid, libc::SIGKILL);
            return Err(CliError::TerminateTimeout { name: record.launch.name, pid: monitor.pid });
        }
        done.push(describe::terminate_info(&record));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RunRequest {
        RunRequest {
            eif_path: "/srv/kv-server.eif".into(),
            cpu_count: 2,
            memory_mib: 512,
            cid: Some(16),
            name: None,
            debug_mode: false,
            boot_timeout_secs: 120,
            vsock_uds: None,
        }
    }

    #[test]
    fn names_follow_nitro_clis_charset() {
        for ok in ["kv-server", "a", "v1.2_x", "A-9"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "..", ".hidden", "a b", "a/b", "x,y", "é", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(default_name(Path::new("/srv/kv-server.eif")).unwrap(), "kv-server");
        let e = default_name(Path::new("/srv/my image.eif")).unwrap_err().to_string();
        assert!(e.contains("pass one"), "{e}");
    }

    #[test]
    fn resources_are_range_checked_with_the_flag_named() {
        check_resources(&req()).unwrap();
        type Change = fn(&mut RunRequest);
        let cases: [(Change, &str); 5] = [
            (|r| r.cpu_count = 0, "--cpu-count 0: must be at least 1"),
            (|r| r.memory_mib = 63, "--memory 63: must be at least 64 (MiB)"),
            (|r| r.cid = Some(3), "--enclave-cid 3: must be between 4 and 4294967294"),
            (|r| r.cid = Some(u32::MAX), "--enclave-cid 4294967295"),
            (|r| r.boot_timeout_secs = 0, "--boot-timeout 0"),
        ];
        for (change, want) in cases {
            let mut r = req();
            change(&mut r);
            let got = check_resources(&r).unwrap_err().to_string();
            assert!(got.starts_with(want), "{got:?} does not start with {want:?}");
        }
    }

    #[test]
    fn socket_paths_must_fit_and_have_no_commas() {
        check_socket_path("--vsock-uds", Path::new("/run/x/vm.vsock"), "_4294967295").unwrap();
        assert!(check_socket_path("--vsock-uds", Path::new("/run/a,b/vm.vsock"), "").is_err());
        let long = PathBuf::from(format!("/{}", "d".repeat(100)));
        let e = check_socket_path("--vsock-uds", &long, "_4294967295").unwrap_err().to_string();
        assert!(e.contains("at most 107"), "{e}");
    }

    #[test]
    fn enclave_ids_look_like_nitro_clis_with_a_local_prefix() {
        let id = new_enclave_id();
        let hex = id.strip_prefix("i-local-enc-").unwrap();
        assert_eq!(hex.len(), 16);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_enclave_id());
    }
}
