//! Finding the two external programs: QEMU with the `nitro-enclave` machine, and
//! `vhost-device-vsock`. Each is named by an environment variable (a path, or a name looked up
//! on PATH) and checked before anything starts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const QEMU_ENV: &str = "ENCLAVE_RUNNER_QEMU";
pub const QEMU_DEFAULT: &str = "qemu-system-x86_64";
pub const VHOST_VSOCK_ENV: &str = "ENCLAVE_RUNNER_VHOST_VSOCK";
pub const VHOST_VSOCK_DEFAULT: &str = "vhost-device-vsock";

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Neither a path to an executable file nor a name found on PATH.
    #[error(
        "{what} not found: {given:?} is not an executable file{on_path} (set {env}; \
         scripts/setup-qemu.sh installs both tools into .tools/bin)"
    )]
    Missing { what: &'static str, given: String, env: &'static str, on_path: &'static str },
    /// QEMU could not list its machines.
    #[error("{path}: cannot run `-M help`: {reason}")]
    Probe { path: PathBuf, reason: String },
    /// A QEMU without the emulated Nitro Enclave machine (Debian's, or the `nitro` launcher).
    #[error(
        "{path} has no `nitro-enclave` machine (`-M help` does not list it): build one with \
         scripts/setup-qemu.sh and point {QEMU_ENV} at it"
    )]
    NoNitroMachine { path: PathBuf },
}

/// The programs an enclave needs, as absolute paths.
#[derive(Clone, Debug)]
pub struct Tools {
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
}

impl Tools {
    /// Resolves both programs from the environment and checks that QEMU has `nitro-enclave`.
    pub fn from_env() -> Result<Tools, ToolError> {
        let qemu = resolve(std::env::var_os(QEMU_ENV), QEMU_DEFAULT, "QEMU", QEMU_ENV)?;
        let vhost_vsock = resolve(
            std::env::var_os(VHOST_VSOCK_ENV),
            VHOST_VSOCK_DEFAULT,
            "vhost-device-vsock",
            VHOST_VSOCK_ENV,
        )?;
        check_nitro_machine(&qemu)?;
        Ok(Tools { qemu, vhost_vsock })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A value with a `/` is a path; otherwise a name searched on PATH.
fn resolve(
    value: Option<OsString>,
    default: &str,
    what: &'static str,
    env: &'static str,
) -> Result<PathBuf, ToolError> {
    let given = value.filter(|v| !v.is_empty()).unwrap_or_else(|| default.into());
    let missing =
        |on_path| ToolError::Missing { what, given: given.to_string_lossy().into_owned(), env, on_path };
    let as_path = Path::new(&given);
    if as_path.as_os_str().as_encoded_bytes().contains(&b'/') {
        return if is_executable(as_path) {
            Ok(std::path::absolute(as_path).unwrap_or_else(|_| as_path.to_path_buf()))
        } else {
            Err(missing(""))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(&given))
        .find(|p| p.is_absolute() && is_executable(p))
        .ok_or_else(|| missing(" and not on PATH"))
}

/// True when `qemu -M help` output lists the machine by its exact name (QEMU 11's `nitro` is a
/// different thing: a launcher for real hardware).
pub fn lists_nitro_enclave(machine_help: &str) -> bool {
    machine_help.lines().any(|l| l.split_whitespace().next() == Some("nitro-enclave"))
}

fn check_nitro_machine(qemu: &Path) -> Result<(), ToolError> {
    let probe = |reason: String| ToolError::Probe { path: qemu.to_path_buf(), reason };
    let out = Command::new(qemu).args(["-M", "help"]).output().map_err(|e| probe(e.to_string()))?;
    if !out.status.success() {
        return Err(probe(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    if !lists_nitro_enclave(&String::from_utf8_lossy(&out.stdout)) {
        return Err(ToolError::NoNitroMachine { path: qemu.to_path_buf() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_list_must_name_nitro_enclave_exactly() {
        let ok = "Supported machines are:\nmicrovm              microvm (i386)\nnitro-enclave        AWS Nitro Enclave\n";
        assert!(lists_nitro_enclave(ok));
        let launcher =
            "Supported machines are:\nnitro                Nitro Enclave launcher (nitro-enclave-like)\n";
        assert!(!lists_nitro_enclave(launcher));
    }

    #[test]
    fn a_missing_tool_names_the_variable() {
        let e = resolve(Some("/nonexistent/qemu".into()), QEMU_DEFAULT, "QEMU", QEMU_ENV).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/qemu") && msg.contains(QEMU_ENV), "{msg}");
        let e = resolve(Some("no-such-tool-xyz".into()), QEMU_DEFAULT, "QEMU", QEMU_ENV).unwrap_err();
        assert!(e.to_string().contains("not on PATH"), "{e}");
    }

    #[test]
    fn names_are_found_on_path() {
        let sh = resolve(Some("sh".into()), QEMU_DEFAULT, "QEMU", QEMU_ENV).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"));
    }
}
