//! Performs the boot plan on the real system (only ever as PID 1 inside an enclave).

use crate::config::{self, ConfigError};
use crate::plan::{MountSpec, RamdiskContents, Step};
use crate::sys;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

#[derive(Debug)]
pub enum InitError {
    Step { step: String, source: io::Error },
    Config(ConfigError),
    NoProgram { program: String },
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitError::Step { step, source } => write!(f, "{step}: {source}"),
            InitError::Config(e) => write!(f, "{e}"),
            InitError::NoProgram { program } => {
                write!(f, "/cmd: program {program:?} not found in the new root's PATH")
            }
        }
    }
}

fn step_err(step: &Step) -> impl FnOnce(io::Error) -> InitError + '_ {
    move |source| InitError::Step { step: format!("{step:?}"), source }
}

/// Looks at the bootstrap ramdisk (the initramfs root) for modules to load.
pub fn probe_ramdisk() -> RamdiskContents {
    let mut modules: Vec<String> = fs::read_dir("/modules")
        .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    modules.sort();
    RamdiskContents { nsm_ko: fs::metadata("/nsm.ko").is_ok(), modules }
}

#[derive(Default)]
struct State {
    env: Vec<(String, String)>,
    cmd: Vec<String>,
}

fn mount_flags(m: &MountSpec) -> libc::c_ulong {
    let mut f = 0;
    if m.nosuid {
        f |= libc::MS_NOSUID;
    }
    if m.nodev {
        f |= libc::MS_NODEV;
    }
    if m.noexec {
        f |= libc::MS_NOEXEC;
    }
    f
}

/// Runs every step; returns the application's exit code. `PowerOff` is left to the caller so
/// that it also happens after a failure.
pub fn run(steps: &[Step]) -> Result<i32, InitError> {
    let mut state = State::default();
    let mut app_code = 0;
    for step in steps {
        eprintln!("enclave-init: {step:?}");
        match step {
            Step::MountDevtmpfs { target } => {
                match sys::mount("dev", target, Some("devtmpfs"), libc::MS_NOSUID | libc::MS_NOEXEC, None) {
                    Err(e) if e.raw_os_error() != Some(libc::EBUSY) => return Err(step_err(step)(e)),
                    _ => {}
                }
            }
            Step::OpenConsole { path } => {
                let console =
                    fs::OpenOptions::new().read(true).write(true).open(path).map_err(step_err(step))?;
                sys::redirect_stdio(&console).map_err(step_err(step))?;
            }
            Step::LoadModule { path } => {
                let f = fs::File::open(path).map_err(step_err(step))?;
                match sys::finit_module(f.as_raw_fd()) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(step_err(step)(e)),
                    _ => {}
                }
                drop(f);
                // Frees the ramdisk copy; failure only wastes memory.
                let _ = fs::remove_file(path);
            }
            Step::Heartbeat { cid, port, byte } => {
                sys::vsock_heartbeat(*cid, *port, *byte, crate::wire::HEARTBEAT_TIMEOUT_MS)
                    .map_err(step_err(step))?;
            }
            Step::ReadConfig { env, cmd } => {
                let env_text = fs::read_to_string(env).map_err(step_err(step))?;
                let cmd_text = fs::read_to_string(cmd).map_err(step_err(step))?;
                state.env = config::parse_env(&env_text).map_err(InitError::Config)?;
                state.cmd = config::parse_cmd(&cmd_text).map_err(InitError::Config)?;
                let _ = fs::remove_file(env);
                let _ = fs::remove_file(cmd);
            }
            Step::DefaultAppEnv { key, value } => config::default_var(&mut state.env, key, value),
            Step::SwitchRoot { new_root } => {
                // The initramfs root cannot be pivoted away from; bind the new root onto itself
                // so it is a mount point, move it over / and chroot into it.
                sys::mount(new_root, new_root, None, libc::MS_BIND | libc::MS_REC, None)
                    .map_err(step_err(step))?;
                std::env::set_current_dir(new_root).map_err(step_err(step))?;
                sys::mount(".", "/", None, libc::MS_MOVE, None).map_err(step_err(step))?;
                sys::chroot(".").map_err(step_err(step))?;
                std::env::set_current_dir("/").map_err(step_err(step))?;
            }
            Step::Mount(m) => {
                if m.mkdir {
                    match fs::create_dir(m.target) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(step_err(step)(e)),
                        _ => {}
                    }
                }
                sys::mount(m.source, m.target, Some(m.fstype), mount_flags(m), m.data)
                    .map_err(step_err(step))?;
            }
            Step::Symlink { link, target } => match std::os::unix::fs::symlink(target, link) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(step_err(step)(e)),
                _ => {}
            },
            Step::LoopbackUp => sys::loopback_up().map_err(step_err(step))?,
            Step::RunApp => app_code = run_app(&state)?,
            Step::PowerOff => {}
        }
    }
    Ok(app_code)
}

fn run_app(state: &State) -> Result<i32, InitError> {
    let path = state.env.iter().find(|(k, _)| k == "PATH").map_or(config::DEFAULT_PATH, |(_, v)| v.as_str());
    let program = &state.cmd[0];
    let resolved = config::resolve_program(program, path, |p| fs::metadata(p).is_ok_and(|m| m.is_file()))
        .ok_or_else(|| InitError::NoProgram { program: program.clone() })?;
    let mut cmd = Command::new(&resolved);
    cmd.arg0(program).args(&state.cmd[1..]).env_clear().envs(state.env.iter().map(|(k, v)| (k, v)));
    sys::in_new_session(&mut cmd);
    let child =
        cmd.spawn().map_err(|source| InitError::Step { step: format!("spawn {resolved}"), source })?;
    let app = child.id() as libc::pid_t;
    loop {
        // As PID 1 we inherit every orphan: reap them all, return when the app itself exits.
        let (pid, status) =
            sys::wait_any().map_err(|source| InitError::Step { step: "wait for children".into(), source })?;
        if pid == app {
            let code = sys::exit_code(status);
            eprintln!("enclave-init: application exited with {code}");
            return Ok(code);
        }
    }
}
