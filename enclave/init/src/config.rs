//! Parsing of the init's inputs: its own options, and the `/env` and `/cmd` files the
//! packager writes into the application ramdisk (one entry per line, as AWS's init reads them).

use crate::wire;
use std::fmt;

pub const DEFAULT_PATH: &str = "/sbin:/usr/sbin:/bin:/usr/bin";

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

/// Options from argv (`--parent-cid N`, `--dry-run`) and the environment the kernel gives PID 1
/// (`ENCLAVE_INIT_PARENT_CID=N` on the kernel command line ends up there). argv wins.
pub fn parse_options<I, S>(args: I, env_cid: Option<&str>) -> Result<Options, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut opts = Options { parent_cid: wire::DEFAULT_PARENT_CID, dry_run: false, heartbeat: true };
    if let Some(v) = env_cid {
        opts.parent_cid = parse_cid("ENCLAVE_INIT_PARENT_CID", v)?;
    }
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_ref() {
            "--parent-cid" => {
                let v = it.next().ok_or_else(|| err("--parent-cid", 0, "needs a value"))?;
                opts.parent_cid = parse_cid("--parent-cid", v.as_ref())?;
            }
            "--dry-run" => opts.dry_run = true,
            "--no-heartbeat" => opts.heartbeat = false,
            // The kernel passes unrecognised command-line words to init; ignore them.
            _ => {}
        }
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
