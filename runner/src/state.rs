//! The state directory and what it says about each enclave.
//!
//! ```text
//! <state-dir>/.lock                 serialises run-enclave's check-then-create
//! <state-dir>/<name>/state.json     the record: launch parameters + status (atomic rewrites)
//! <state-dir>/<name>/backend.sock   vhost-user socket between QEMU and vhost-device-vsock
//! <state-dir>/<name>/vm.vsock       the backend's Unix socket (unless --vsock-uds)
//! <state-dir>/<name>/console.log    QEMU's stdout and stderr: the guest's serial console
//! <state-dir>/<name>/runner.log     the monitor's log, and the backend's output
//! ```
//!
//! Who writes `state.json`: `run-enclave` creates it (no monitor yet) while holding the lock;
//! from then on only the monitor rewrites it. An enclave is live while its monitor process is
//! (same PID and start time as recorded) and its state is BOOTING or RUNNING.

use packaging::eif::Measurements;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const DEFAULT_STATE_DIR: &str = "/run/enclave-runner";
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory cannot be created or listed.
    #[error("state directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    /// The lock file cannot be opened or locked.
    #[error("{path}: cannot lock: {source}")]
    Lock { path: PathBuf, source: io::Error },
    /// `state.json` cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// `state.json` is not a record this version understands.
    #[error("{path}: not a valid enclave record: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    /// `state.json` (or its temporary file) cannot be written.
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Where an enclave is in its life. Only the monitor moves it past BOOTING.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Lifecycle {
    /// QEMU is starting or the kernel is booting; no heartbeat yet.
    Booting,
    /// The heartbeat was answered.
    Running,
    /// QEMU exited after the boot, or the enclave was terminated.
    Terminated,
    /// The boot did not complete (no heartbeat, QEMU or the backend died, a start-up error).
    Failed,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Booting => "BOOTING",
            Lifecycle::Running => "RUNNING",
            Lifecycle::Terminated => "TERMINATED",
            Lifecycle::Failed => "FAILED",
        }
    }

    pub fn is_live(self) -> bool {
        matches!(self, Lifecycle::Booting | Lifecycle::Running)
    }
}

/// A process named by PID and start time, so a recycled PID is not mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot.
    pub start_time: u64,
}

impl ProcessRef {
    /// This process.
    pub fn current() -> io::Result<ProcessRef> {
        let pid = std::process::id();
        let text = fs::read_to_string("/proc/self/stat")?;
        let (_, start_time) = parse_stat(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/self/stat"))?;
        Ok(ProcessRef { pid, start_time })
    }

    /// The running (not zombie) process with this PID, if any.
    pub fn of(pid: u32) -> Option<ProcessRef> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, start_time) = parse_stat(&text)?;
        (state != 'Z' && state != 'X').then_some(ProcessRef { pid, start_time })
    }

    pub fn is_alive(&self) -> bool {
        ProcessRef::of(self.pid).is_some_and(|p| p.start_time == self.start_time)
    }
}

/// `(state, starttime)` from a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses: fields are counted after the last
/// `)`.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state); starttime is field 22.
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start_time))
}

/// What `run-enclave` was asked for; fixed for the enclave's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    pub name: String,
    pub enclave_id: String,
    pub cid: u32,
    pub cpu_count: u32,
    pub memory_mib: u64,
    pub debug_mode: bool,
    pub eif_path: PathBuf,
    /// Computed from the EIF when `run-enclave` checked it (as nitro-cli does).
    pub measurements: Measurements,
    /// The backend's `uds-path`: host -> guest connections; `<vsock_uds>_<port>` for guest -> host.
    pub vsock_uds: PathBuf,
    pub boot_timeout_secs: u64,
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
}

/// What the monitor reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub state: Lifecycle,
    /// Why the enclave is TERMINATED or FAILED.
    pub reason: Option<String>,
    /// Set once the heartbeat was answered, and kept after the enclave ends: `run-enclave`
    /// succeeds even if the application exits before it looks.
    pub booted: bool,
    pub monitor: Option<ProcessRef>,
    pub qemu_pid: Option<u32>,
    pub backend_pid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub launch: Launch,
    pub status: Status,
}

impl Record {
    pub fn new(launch: Launch) -> Record {
        Record {
            launch,
            status: Status {
                state: Lifecycle::Booting,
                reason: None,
                booted: false,
                monitor: None,
                qemu_pid: None,
                backend_pid: None,
            },
        }
    }

    /// The monitor is alive and says BOOTING or RUNNING.
    pub fn is_live(&self) -> bool {
        self.status.state.is_live() && self.status.monitor.is_some_and(|m| m.is_alive())
    }
}

/// One enclave's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnclaveDir {
    path: PathBuf,
}

impl EnclaveDir {
    pub fn new(path: PathBuf) -> EnclaveDir {
        EnclaveDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state_file(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    pub fn backend_socket(&self) -> PathBuf {
        self.path.join("backend.sock")
    }

    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    pub fn runner_log(&self) -> PathBuf {
        self.path.join("runner.log")
    }

    pub fn default_vsock_uds(&self) -> PathBuf {
        self.path.join("vm.vsock")
    }

    pub fn read(&self) -> Result<Record, StateError> {
        let path = self.state_file();
        let text = fs::read(&path).map_err(|source| StateError::Read { path: path.clone(), source })?;
        serde_json::from_slice(&text).map_err(|source| StateError::Parse { path, source })
    }

    /// Writes `state.json` atomically: a reader sees the old record or the new one, never half.
    pub fn write(&self, record: &Record) -> Result<(), StateError> {
        let path = self.state_file();
        let tmp = self.path.join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            let mut text = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
            text.push(b'\n');
            f.write_all(&text)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            StateError::Write { path, source }
        })
    }
}

/// An enclave directory and its record (or why it could not be read).
pub type Entry = (EnclaveDir, Result<Record, StateError>);

/// The root of all enclave directories.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> StateDir {
        StateDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory if needed and makes the path absolute (the monitor runs in `/`).
    pub fn create(&self) -> Result<StateDir, StateError> {
        let err = |source| StateError::Dir { path: self.root.clone(), source };
        fs::create_dir_all(&self.root).map_err(err)?;
        Ok(StateDir { root: fs::canonicalize(&self.root).map_err(err)? })
    }

    pub fn enclave(&self, name: &str) -> EnclaveDir {
        EnclaveDir::new(self.root.join(name))
    }

    /// An exclusive lock on the state directory, held until the returned file is dropped.
    pub fn lock(&self) -> Result<File, StateError> {
        let path = self.root.join(LOCK_FILE);
        let err = |source| StateError::Lock { path: path.clone(), source };
        let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(err)?;
        f.lock().map_err(err)?;
        Ok(f)
    }

    /// Every enclave directory (live or not) with its record or the error reading it; sorted by
    /// name. A missing state directory has none.
    pub fn all(&self) -> Result<Vec<Entry>, StateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Dir { path: self.root.clone(), source }),
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        Ok(dirs
            .into_iter()
            .map(|p| {
                let dir = EnclaveDir::new(p);
                let record = dir.read();
                (dir, record)
            })
            .collect())
    }

    /// The live enclaves, sorted by name. Unreadable records are skipped: a directory without a
    /// valid `state.json` has no monitor that could be running.
    pub fn live(&self) -> Result<Vec<(EnclaveDir, Record)>, StateError> {
        Ok(self
            .all()?
            .into_iter()
            .filter_map(|(d, r)| r.ok().map(|r| (d, r)))
            .filter(|(_, r)| r.is_live())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(name: &str) -> Launch {
        Launch {
            name: name.into(),
            enclave_id: "i-local-enc-0123456789abcdef".into(),
            cid: 16,
            cpu_count: 2,
            memory_mib: 512,
            debug_mode: false,
            eif_path: "/x.eif".into(),
            measurements: Measurements {
                hash_algorithm: "Sha384 { ... }".into(),
                pcr0: "00".into(),
                pcr1: "11".into(),
                pcr2: "22".into(),
                pcr8: None,
            },
            vsock_uds: "/s/vm.vsock".into(),
            boot_timeout_secs: 120,
            qemu: "/q".into(),
            vhost_vsock: "/v".into(),
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 0 0 0 0 3 1 0 0 20 0 3 0 987654 \
                    1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("1 (init) Z"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_different_start_time_is_not() {
        let me = ProcessRef::current().unwrap();
        assert!(me.is_alive());
        assert!(!ProcessRef { start_time: me.start_time + 1, ..me }.is_alive());
    }

    #[test]
    fn records_round_trip_and_only_live_monitors_count() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path().join("state")).create().unwrap();
        assert!(state.all().unwrap().is_empty());

        let alive = state.enclave("alive");
        fs::create_dir(alive.path()).unwrap();
        let mut r = Record::new(launch("alive"));
        r.status.monitor = Some(ProcessRef::current().unwrap());
        alive.write(&r).unwrap();
        assert_eq!(alive.read().unwrap(), r);

        let dead = state.enclave("dead");
        fs::create_dir(dead.path()).unwrap();
        let mut d = Record::new(launch("dead"));
        d.status.monitor = Some(ProcessRef { pid: u32::MAX - 1, start_time: 1 });
        dead.write(&d).unwrap();

        let ended = state.enclave("ended");
        fs::create_dir(ended.path()).unwrap();
        let mut e = r.clone();
        e.status.state = Lifecycle::Terminated;
        ended.write(&e).unwrap();

        fs::create_dir(state.root().join("junk")).unwrap();
        fs::write(state.root().join("junk/state.json"), "{").unwrap();

        let all = state.all().unwrap();
        assert_eq!(all.len(), 4);
        assert!(all.iter().find(|(d, _)| d.path().ends_with("junk")).unwrap().1.is_err());
        let live: Vec<String> = state.live().unwrap().into_iter().map(|(_, r)| r.launch.name).collect();
        assert_eq!(live, ["alive"]);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(alive.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn lock_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path().to_path_buf());
        let held = state.lock().unwrap();
        let other = File::options().write(true).open(tmp.path().join(LOCK_FILE)).unwrap();
        assert!(other.try_lock().is_err());
        drop(held);
        assert!(other.try_lock().is_ok());
    }
}
