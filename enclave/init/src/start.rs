//! What the process does given its PID and arguments, decided before anything else happens.
//!
//! PID 1 must never exit: the kernel panics when init ends ("Attempted to kill init!"), and an
//! enclave whose kernel panics hangs instead of stopping. So every path of PID 1 ends in a power
//! off: a bad option, `--dry-run`, a failed boot, the application's exit, and a panic (the hook
//! from [`panic_hook`]). Any other PID is a developer running the binary by hand: it may only
//! print the plan (`--dry-run`) and otherwise refuses, with exit code 2.

use crate::config::{self, Options};
use std::panic::PanicHookInfo;

/// How a path ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Exit with this code (never PID 1).
    Exit(i32),
    /// Sync and power off (PID 1).
    PowerOff,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Print the boot plan for these options without doing any of it.
    PrintPlan { opts: Options, then: End },
    /// Boot (PID 1 only); a power off follows whatever the boot does.
    Boot(Options),
    /// Do nothing but say why.
    Refuse { message: String, then: End },
}

impl Start {
    /// How this path ends.
    pub fn end(&self) -> End {
        match self {
            Start::PrintPlan { then, .. } | Start::Refuse { then, .. } => *then,
            Start::Boot(_) => End::PowerOff,
        }
    }
}

pub fn is_init(pid: i32) -> bool {
    pid == 1
}

/// The decision for `pid` with these arguments (argv without the program name) and the
/// `ENCLAVE_INIT_PARENT_CID` environment variable. PID 1 is looked at first: whatever else is
/// wrong, PID 1 ends in a power off.
pub fn decide<I, S>(pid: i32, args: I, env_cid: Option<&str>) -> Start
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let init = is_init(pid);
    let fail = if init { End::PowerOff } else { End::Exit(2) };
    let opts = match config::parse_options(args, env_cid) {
        Ok(o) => o,
        Err(e) => return Start::Refuse { message: e.to_string(), then: fail },
    };
    match (init, opts.dry_run) {
        (true, false) => Start::Boot(opts),
        (true, true) => Start::PrintPlan { opts, then: End::PowerOff },
        (false, true) => Start::PrintPlan { opts, then: End::Exit(0) },
        (false, false) => Start::Refuse {
            message: format!(
                "refusing to run as PID {pid} (it mounts, switches root and powers off); use --dry-run"
            ),
            then: fail,
        },
    }
}

/// The line a panic leaves on the console before the power off.
pub fn panic_line(info: &PanicHookInfo<'_>) -> String {
    format!("enclave-init: panic: {info}; powering off")
}

/// The panic hook of PID 1: says what panicked and calls `power_off`, which never returns, so
/// the panic never unwinds out of `main` into an exit of init.
pub fn panic_hook(power_off: fn() -> !) -> impl Fn(&PanicHookInfo<'_>) + Send + Sync + 'static {
    move |info| {
        eprintln!("{}", panic_line(info));
        power_off()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(parent_cid: u32, dry_run: bool) -> Options {
        Options { parent_cid, dry_run, heartbeat: true }
    }

    #[test]
    fn pid_1_powers_off_on_every_path() {
        let cases: [&[&str]; 6] = [
            &[],
            &["--dry-run"],
            &["--parent-cid", "x"],
            &["--parent-cid"],
            &["--parent-cid", "1", "--dry-run"],
            &["ENCLAVE_INIT_PARENT_CID=x"],
        ];
        for args in cases {
            for env in [None, Some("7"), Some("nope")] {
                let d = decide(1, args, env);
                assert_eq!(d.end(), End::PowerOff, "{args:?} {env:?}: {d:?}");
            }
        }
    }

    #[test]
    fn pid_1_with_a_bad_option_says_why_and_powers_off() {
        assert_eq!(
            decide(1, ["--parent-cid", "x"], None),
            Start::Refuse {
                message: "--parent-cid: parent CID \"x\" is not a number".into(),
                then: End::PowerOff
            }
        );
        let d = decide(1, ["--no-heartbeat"], Some("0"));
        assert!(
            matches!(&d, Start::Refuse { message, then: End::PowerOff } if message.contains("reserved")),
            "{d:?}"
        );
    }

    #[test]
    fn pid_1_boots_or_prints_the_plan_then_powers_off() {
        assert_eq!(decide(1, ["quiet", "--parent-cid", "9"], None), Start::Boot(opts(9, false)));
        assert_eq!(
            decide(1, ["--dry-run"], Some("7")),
            Start::PrintPlan { opts: opts(7, true), then: End::PowerOff }
        );
    }

    #[test]
    fn other_pids_print_the_plan_or_refuse_with_exit_code_2() {
        assert_eq!(
            decide(4242, ["--dry-run"], None),
            Start::PrintPlan { opts: opts(3, true), then: End::Exit(0) }
        );
        let none: [&str; 0] = [];
        match decide(4242, none, None) {
            Start::Refuse { message, then: End::Exit(2) } => {
                assert!(message.contains("refusing to run as PID 4242"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(4242, ["--dry-run", "--parent-cid", "1"], None),
            Start::Refuse { then: End::Exit(2), .. }
        ));
        assert!(!is_init(0) && !is_init(2) && is_init(1));
    }

    fn fake_power_off() -> ! {
        eprintln!("fake power off");
        std::process::exit(42)
    }

    /// The hook must power off rather than let the panic end the process: checked in a child
    /// process (this test run again), whose panic must end in the fake power off's exit code
    /// instead of the 101 of an unwound panic.
    #[test]
    fn the_panic_hook_powers_off() {
        if std::env::var_os("ENCLAVE_INIT_PANIC_HOOK_CHILD").is_some() {
            std::panic::set_hook(Box::new(panic_hook(fake_power_off)));
            panic!("boom in the child");
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "start::tests::the_panic_hook_powers_off",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("ENCLAVE_INIT_PANIC_HOOK_CHILD", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(42), "{err}");
        assert!(err.contains("enclave-init: panic: ") && err.contains("boom in the child"), "{err}");
        assert!(err.contains("; powering off\nfake power off"), "{err}");
    }
}
