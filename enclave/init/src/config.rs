//! Parsing of the init's inputs: its own options, and the `/env` and `/cmd` files the
//! packager writes into the application ramdisk (one entry per line, as AWS's init reads them).

use crate::wire;
use std::fmt;

pub const DEFAULT_PATH: &str = "/sbin:/usr/sbin:/bin:/usr/bin";
/// The parent CID for the init itself: an environment variable (a `KEY=VALUE` word of the kernel
/// command line before ` -- `) or the same word in argv (after ` -- `).
pub const INIT_PARENT_CID_VAR: &str = "ENCLAVE_INIT_PARENT_CID";
/// The parent CID handed to the application (kv-server resolves `vsock://parent:PORT` with it).
pub const APP_PARENT_CID_VAR: &str = "ENCLAVE_PARENT_CID";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub parent_cid: u32,
    /// Print the boot plan and exit without touching the system.
    pub dry_run: bool,
    /// Send the boot heartbeat. Off (`--no-heartbeat`) only for booting the image in a plain
    /// VM (no parent listening, no vsock device); nitro-cli fails a boot without it.
    pub heartbeat: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.source, self.reason)
        } else {
            write!(f, "{} line {}: {}", self.source, self.line, self.reason)
        }
    }
}

fn err(source: &str, line: usize, reason: impl Into<String>) -> ConfigError {
    ConfigError { source: source.into(), line, reason: reason.into() }
}

fn parse_cid(source: &str, v: &str) -> Result<u32, ConfigError> {
    let cid: u32 = v.parse().map_err(|_| err(source, 0, format!("parent CID {v:?} is not a number")))?;
    // 0 (hypervisor), 1 (local) and u32::MAX (any) cannot be a parent.
    if cid < 2 || cid == u32::MAX {
        return Err(err(source, 0, format!("parent CID {cid} is reserved")));
    }
    Ok(cid)
}

/// Options from argv (`--parent-cid N`, `--dry-run`, `--no-heartbeat`) and the environment the
/// kernel gives PID 1. The parent CID, weakest first: the default (3),
/// `ENCLAVE_INIT_PARENT_CID=N` in the environment (a word before ` -- ` on the kernel command
/// line), the same word in argv (the kernel hands words after ` -- ` to init as arguments), then
/// `--parent-cid N` wherever it stands.
pub fn parse_options<I, S>(args: I, env_cid: Option<&str>) -> Result<Options, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut opts = Options { parent_cid: wire::DEFAULT_PARENT_CID, dry_run: false, heartbeat: true };
    if let Some(v) = env_cid {
        opts.parent_cid = parse_cid(INIT_PARENT_CID_VAR, v)?;
    }
    let mut flag_cid = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let a = a.as_ref();
        match a {
            "--parent-cid" => {
                let v = it.next().ok_or_else(|| err("--parent-cid", 0, "needs a value"))?;
                flag_cid = Some(parse_cid("--parent-cid", v.as_ref())?);
            }
            "--dry-run" => opts.dry_run = true,
            "--no-heartbeat" => opts.heartbeat = false,
            _ => {
                if let Some(v) = a.strip_prefix(INIT_PARENT_CID_VAR).and_then(|rest| rest.strip_prefix('=')) {
                    opts.parent_cid = parse_cid(&format!("argument {INIT_PARENT_CID_VAR}"), v)?;
                }
                // The kernel passes unrecognised command-line words to init; ignore them.
            }
        }
    }
    if let Some(cid) = flag_cid {
        opts.parent_cid = cid;
    }
    Ok(opts)
}

/// `/env`: `KEY=VALUE` per line; empty lines skipped. PATH is added when missing, since the
/// program lookup needs it.
pub fn parse_env(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| err("/env", i + 1, "expected KEY=VALUE"))?;
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(err("/env", i + 1, "empty key or NUL byte"));
        }
        if let Some(slot) = out.iter_mut().find(|(key, _)| key == k) {
            slot.1 = v.to_string();
        } else {
            out.push((k.to_string(), v.to_string()));
        }
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    Ok(out)
}

/// Adds `key=value` to the application's environment unless `/env` already sets `key` (the
/// image's own value wins).
pub fn default_var(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    if !env.iter().any(|(k, _)| k == key) {
        env.push((key.to_string(), value.to_string()));
    }
}

/// `/cmd`: one argument per line, the program first.
pub fn parse_cmd(text: &str) -> Result<Vec<String>, ConfigError> {
    let args: Vec<String> = text.lines().map(str::to_string).collect();
    // A trailing empty line is the file's final newline, not an argument.
    let args: Vec<String> = match args.iter().rposition(|a| !a.is_empty()) {
        Some(last) => args[..=last].to_vec(),
        None => Vec::new(),
    };
    match args.first() {
        None => Err(err("/cmd", 0, "empty: no program to run")),
        Some(p) if p.is_empty() => Err(err("/cmd", 1, "the program name is empty")),
        _ if args.iter().any(|a| a.contains('\0')) => Err(err("/cmd", 0, "NUL byte in an argument")),
        _ => Ok(args),
    }
}

/// Resolves the program like `execvp`: a name with a slash is used as is, otherwise the first
/// PATH directory holding it. `exists` is asked about candidates (a pure function in tests).
pub fn resolve_program(program: &str, path: &str, exists: impl Fn(&str) -> bool) -> Option<String> {
    if program.contains('/') {
        return Some(program.to_string());
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
        .find(|c| exists(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_env_and_argv() {
        let none: [&str; 0] = [];
        assert_eq!(
            parse_options(none, None).unwrap(),
            Options { parent_cid: 3, dry_run: false, heartbeat: true }
        );
        assert_eq!(
            parse_options(["--dry-run"], Some("7")).unwrap(),
            Options { parent_cid: 7, dry_run: true, heartbeat: true }
        );
        assert_eq!(parse_options(["--parent-cid", "9", "quiet"], Some("7")).unwrap().parent_cid, 9);
        assert!(!parse_options(["--no-heartbeat"], None).unwrap().heartbeat);
        assert!(parse_options(["--parent-cid"], None).is_err());
        assert!(parse_options(["--parent-cid", "x"], None).is_err());
        assert!(parse_options(["--parent-cid", "1"], None).is_err());
        assert!(parse_options(none, Some("4294967295")).is_err());
    }

    #[test]
    fn parent_cid_word_in_argv() {
        // Words after ` -- ` on the kernel command line reach init as arguments.
        assert_eq!(parse_options(["ENCLAVE_INIT_PARENT_CID=2"], None).unwrap().parent_cid, 2);
        assert_eq!(parse_options(["quiet", "ENCLAVE_INIT_PARENT_CID=2"], Some("7")).unwrap().parent_cid, 2);
        // --parent-cid wins, before or after the word.
        assert_eq!(
            parse_options(["--parent-cid", "9", "ENCLAVE_INIT_PARENT_CID=2"], None).unwrap().parent_cid,
            9
        );
        assert_eq!(
            parse_options(["ENCLAVE_INIT_PARENT_CID=2", "--parent-cid", "9"], None).unwrap().parent_cid,
            9
        );
        let e = parse_options(["ENCLAVE_INIT_PARENT_CID=x"], None).unwrap_err();
        assert!(e.to_string().contains("argument ENCLAVE_INIT_PARENT_CID"), "{e}");
        assert!(parse_options(["ENCLAVE_INIT_PARENT_CID=1"], None).is_err());
        // Other KEY=VALUE words are the kernel's business.
        assert_eq!(parse_options(["console=ttyS0"], None).unwrap().parent_cid, 3);
    }

    #[test]
    fn default_var_keeps_the_image_value() {
        let mut env = parse_env("A=1\n").unwrap();
        default_var(&mut env, APP_PARENT_CID_VAR, "2");
        assert_eq!(env.last(), Some(&("ENCLAVE_PARENT_CID".into(), "2".into())));
        let mut env = parse_env("ENCLAVE_PARENT_CID=5\n").unwrap();
        default_var(&mut env, APP_PARENT_CID_VAR, "2");
        assert_eq!(
            env.iter().filter(|(k, _)| k == "ENCLAVE_PARENT_CID").collect::<Vec<_>>(),
            [&("ENCLAVE_PARENT_CID".to_string(), "5".to_string())]
        );
    }

    #[test]
    fn env_file() {
        let env = parse_env("A=1\n\nB=x=y\nA=2\n").unwrap();
        assert_eq!(
            env,
            vec![("A".into(), "2".into()), ("B".into(), "x=y".into()), ("PATH".into(), DEFAULT_PATH.into())]
        );
        assert_eq!(parse_env("PATH=/app\n").unwrap(), vec![("PATH".into(), "/app".into())]);
        let e = parse_env("A=1\nbroken\n").unwrap_err();
        assert_eq!((e.line, e.to_string()), (2, "/env line 2: expected KEY=VALUE".to_string()));
        assert!(parse_env("=v\n").is_err());
    }

    #[test]
    fn cmd_file() {
        assert_eq!(
            parse_cmd("/bin/kv-server\n--port\n50051\n").unwrap(),
            ["/bin/kv-server", "--port", "50051"]
        );
        assert_eq!(
            parse_cmd("app\n\nlast-empty-kept-inside\n").unwrap(),
            ["app", "", "last-empty-kept-inside"]
        );
        assert!(parse_cmd("").is_err());
        assert!(parse_cmd("\n\n").is_err());
        assert!(parse_cmd("\narg\n").is_err());
    }

    #[test]
    fn program_lookup() {
        let exists = |p: &str| p == "/usr/bin/kv-server";
        assert_eq!(
            resolve_program("kv-server", "/bin:/usr/bin/", exists).as_deref(),
            Some("/usr/bin/kv-server")
        );
        assert_eq!(resolve_program("./x", "/bin", exists).as_deref(), Some("./x"));
        assert_eq!(resolve_program("nope", "/bin:/usr/bin", exists), None);
    }
}
