//! Real boots: EIFs built here (Debian's kernel from .tools/kernel, a static enclave-init, a
//! static app) booted by the real `enclave-runner` under the project's QEMU (`.tools/bin`, with
//! the `nitro-enclave` machine) and vhost-device-vsock. Skipped, with one line, where those are
//! missing (unless `NITRO_KV_REQUIRE_QEMU` is set). Each boot costs a few seconds of TCG: four boots in all, run one at a time (also
//! under `cargo test`, which would otherwise run them in parallel threads).

mod common;

use common::{Output, Runner, repo_root, wait_until};
use packaging::build::{self, Arch, NativeArgs};
use packaging::progress::Progress;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One boot at a time within this binary.
static BOOTS: Mutex<()> = Mutex::new(());

const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const T: Duration = Duration::from_secs(60);

struct Tools {
    qemu: PathBuf,
    vhost: PathBuf,
    kernel: PathBuf,
}

/// The tools and kernel, or why this machine cannot boot an enclave.
fn tools() -> Result<Tools, String> {
    let root = repo_root();
    let qemu = root.join(".tools/bin/qemu-system-x86_64");
    let vhost = root.join(".tools/bin/vhost-device-vsock");
    let kernel = root.join(".tools/kernel");
    let help = Command::new(&qemu).args(["-M", "help"]).output();
    let has_machine = help.as_ref().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some("nitro-enclave"))
    });
    if !has_machine {
        return Err(format!(
            "{} missing or without the nitro-enclave machine (scripts/setup-qemu.sh)",
            qemu.display()
        ));
    }
    if !vhost.is_file() {
        return Err(format!("{} missing (scripts/setup-qemu.sh)", vhost.display()));
    }
    if !kernel.join(".installed").is_file() {
        return Err(format!("no kernel in {} (packaging/scripts/fetch-test-kernel.sh)", kernel.display()));
    }
    Ok(Tools { qemu, vhost, kernel })
}

/// Takes the boot slot, or prints the one skip line and returns None. With
/// `NITRO_KV_REQUIRE_QEMU` set (scripts/test.sh, where CI has built QEMU) a missing tool fails.
fn setup(test: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Tools)> {
    match tools() {
        Ok(t) => Some((BOOTS.lock().unwrap_or_else(|p| p.into_inner()), t)),
        Err(why) if std::env::var_os("NITRO_KV_REQUIRE_QEMU").is_some() => {
            panic!("{test}: {why} (NITRO_KV_REQUIRE_QEMU is set)")
        }
        Err(why) => {
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// `<target-dir>`, from this test binary's path (`<target-dir>/<profile>/deps/boot-<hash>`).
fn target_dir() -> PathBuf {
    std::env::current_exe().unwrap().ancestors().nth(3).unwrap().to_path_buf()
}

/// enclave-init linked statically (PID 1 in a ramdisk without a libc), as `scripts/build-dist.sh`
/// builds it (scripts/test.sh runs that before the tests). Not built here: a nested cargo build
/// with other flags would rebuild it in place and make every later build-dist rebuild it again.
fn static_init() -> PathBuf {
    let init = target_dir().join(STATIC_TARGET).join("release/enclave-init");
    assert!(
        init.is_file(),
        "{} is missing: run scripts/build-dist.sh (scripts/test.sh does)",
        init.display()
    );
    init
}

/// A static program that prints a line and sleeps for ever: an application that keeps the
/// enclave up.
fn sleeper(dir: &Path) -> PathBuf {
    let src = dir.join("sleeper.rs");
    fs::write(
        &src,
        "fn main() {\n    println!(\"sleeper: up\");\n    loop {\n        \
         std::thread::sleep(std::time::Duration::from_secs(3600));\n    }\n}\n",
    )
    .unwrap();
    let out = dir.join("sleeper");
    let status = Command::new("rustc")
        .current_dir(repo_root())
        .args(["--edition", "2021", "-C", "opt-level=s", "-C", "target-feature=+crt-static", "--target"])
        .arg(STATIC_TARGET)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run rustc");
    assert!(status.success(), "rustc sleeper.rs: {status}");
    out
}

enum App {
    /// enclave-init --dry-run: prints its plan and exits 0 right after the boot.
    DryRun,
    /// Runs until the enclave is terminated.
    Sleeper,
}

/// An EIF with our init, the vsock modules, and `app`; `init_args` (e.g. `--no-heartbeat`) go
/// after ` -- ` on the kernel command line, where the kernel hands them to init.
fn build_eif(tools: &Tools, dir: &Path, app: App, init_args: &str) -> PathBuf {
    let init = static_init();
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    let (program, cmd) = match app {
        App::DryRun => (init.clone(), r#"["/bin/app","--dry-run"]"#),
        App::Sleeper => (sleeper(dir), r#"["/bin/app"]"#),
    };
    fs::copy(program, rootfs.join("bin/app")).unwrap();
    let k = &tools.kernel;
    let modules = ["virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"];
    let cmdline = match init_args {
        "" => "console=ttyS0 panic=-1".to_string(),
        args => format!("console=ttyS0 panic=-1 -- {args}"),
    };
    let args = NativeArgs {
        kernel: Some(k.join("bzImage")),
        cmdline: Some(cmdline),
        init: Some(init),
        nsm_ko: Some(k.join("modules/nsm.ko")),
        modules: modules.iter().map(|m| k.join(format!("modules/{m}.ko"))).collect(),
        blobs: None,
        rootfs: Some(rootfs),
        cmd: Some(cmd.into()),
        env: vec![],
        signing_certificate: None,
        private_key: None,
    };
    let spec = build::resolve(args, Arch::X86_64, 0, "test".into(), "1".into()).unwrap();
    let out = dir.join("enclave.eif");
    build::build_native(&spec, &out, Progress::hidden()).unwrap();
    out
}

/// A runner on the project's tools that terminates whatever it started when dropped, so a
/// failing test leaves no enclave behind.
struct Enclaves {
    runner: Runner,
}

impl Enclaves {
    fn new(tools: &Tools, dir: &Path) -> Enclaves {
        let runner = Runner::new(dir)
            .env("ENCLAVE_RUNNER_QEMU", &tools.qemu)
            .env("ENCLAVE_RUNNER_VHOST_VSOCK", &tools.vhost);
        Enclaves { runner }
    }

    fn run_enclave(&self, eif: &Path, name: &str, cid: u32, extra: &[&str]) -> (Output, Duration) {
        let mut args: Vec<String> =
            ["run-enclave", "--cpu-count", "1", "--memory", "512"].iter().map(|s| s.to_string()).collect();
        args.extend(["--eif-path".into(), eif.display().to_string(), "--enclave-name".into(), name.into()]);
        args.extend(["--enclave-cid".into(), cid.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let start = Instant::now();
        let out = self.runner.run(&args, RUN_TIMEOUT);
        (out, start.elapsed())
    }

    fn state_json(&self, name: &str) -> Value {
        let text = fs::read_to_string(self.runner.state.join(name).join("state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn runner_log(&self, name: &str) -> String {
        fs::read_to_string(self.runner.state.join(name).join("runner.log")).unwrap_or_default()
    }
}

impl Drop for Enclaves {
    fn drop(&mut self) {
        let _ = self.runner.run(&["terminate-enclave", "--all"], T);
    }
}

/// True while `pid` is a running (not zombie) process whose name starts with `comm`.
fn running(pid: u64, comm: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    stat[open + 1..close].starts_with(comm) && state != "Z"
}

/// QEMU, the backend and the monitor recorded for `name` have all exited.
fn assert_all_stopped(e: &Enclaves, name: &str) {
    let status = &e.state_json(name)["status"];
    let procs = [
        (status["qemu_pid"].as_u64(), "qemu-system"),
        (status["backend_pid"].as_u64(), "vhost-device"),
        (status["monitor"]["pid"].as_u64(), "enclave-runner"),
    ];
    for (pid, comm) in procs {
        let pid = pid.unwrap_or_else(|| panic!("no {comm} pid in state.json: {status}"));
        let gone = wait_until(T, || (!running(pid, comm)).then_some(()));
        assert!(gone.is_some(), "{comm} (pid {pid}) still running; runner.log:\n{}", e.runner_log(name));
    }
}

#[test]
fn boot_describe_console_and_terminate() {
    let Some((_slot, tools)) = setup("boot_describe_console_and_terminate") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let eif = build_eif(&tools, tmp.path(), App::Sleeper, "");
    let e = Enclaves::new(&tools, tmp.path());

    let (out, took) = e.run_enclave(&eif, "sleeper", 16, &[]);
    out.assert_success("run-enclave");
    eprintln!("run-enclave to RUNNING: {:.1} s", took.as_secs_f64());
    let run = out.json();
    // Sorted: whether serde_json keeps the printed order depends on its features in the build.
    let mut keys: Vec<&str> = run.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    let mut want =
        ["EnclaveName", "EnclaveID", "ProcessID", "EnclaveCID", "NumberOfCPUs", "CPUIDs", "MemoryMiB"];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(run["EnclaveName"], "sleeper");
    assert_eq!(run["EnclaveCID"], 16);
    assert!(run["EnclaveID"].as_str().unwrap().starts_with("i-local-enc-"));

    let list = e.runner.describe();
    assert_eq!(list.len(), 1, "{list:?}");
    let d = &list[0];
    assert_eq!(d["State"], "RUNNING");
    assert_eq!(d["Flags"], "NONE");
    assert_eq!(d["ProcessID"], run["ProcessID"]);
    assert_eq!(d["EnclaveID"], run["EnclaveID"]);
    let pcrs = packaging::eif::describe(&eif, true).unwrap().measurements;
    assert_eq!(d["Measurements"], serde_json::to_value(&pcrs).unwrap());
    let uds = PathBuf::from(d["VsockUdsPath"].as_str().unwrap());
    let heartbeat_socket = PathBuf::from(format!("{}_9000", uds.display()));
    for s in [&uds, &heartbeat_socket] {
        assert!(fs::symlink_metadata(s).unwrap().file_type().is_socket(), "{} is not a socket", s.display());
    }

    // The app runs after the heartbeat: wait for its line, then `console` must show it.
    let console_path = PathBuf::from(d["ConsolePath"].as_str().unwrap());
    let up = wait_until(T, || fs::read_to_string(&console_path).ok().filter(|c| c.contains("sleeper: up")));
    assert!(up.is_some(), "the app never printed; console:\n{}", fs::read_to_string(&console_path).unwrap());
    let con = e.runner.run(&["console", "--enclave-name", "sleeper", "--disconnect-timeout", "1"], T);
    con.assert_success("console");
    assert!(con.stdout.contains("enclave-init: RunApp") && con.stdout.contains("sleeper: up"));

    let again = e.run_enclave(&eif, "sleeper", 17, &[]).0;
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stderr.contains("an enclave named sleeper is already running"), "{again:?}");
    let same_cid = e.run_enclave(&eif, "other", 16, &[]).0;
    assert!(
        same_cid.stderr.contains("CID 16 is already used by the running enclave sleeper"),
        "{same_cid:?}"
    );

    let t = e.runner.run(&["terminate-enclave", "--enclave-id", run["EnclaveID"].as_str().unwrap()], T);
    t.assert_success("terminate-enclave");
    let t = t.json();
    assert_eq!(t["EnclaveName"], "sleeper");
    assert_eq!(t["Terminated"], true);
    assert!(e.runner.describe().is_empty());
    assert_all_stopped(&e, "sleeper");
    for s in [&uds, &heartbeat_socket, &e.runner.state.join("sleeper/backend.sock")] {
        assert!(!s.exists(), "{} left behind", s.display());
    }
    assert!(e.runner_log("sleeper").contains("enclave sleeper TERMINATED: stopped by SIGTERM"));
}

#[test]
fn an_application_that_exits_ends_the_enclave() {
    let Some((_slot, tools)) = setup("an_application_that_exits_ends_the_enclave") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let eif = build_eif(&tools, tmp.path(), App::DryRun, "");
    let e = Enclaves::new(&tools, tmp.path());

    let (out, took) = e.run_enclave(&eif, "dryrun", 16, &["--debug-mode"]);
    out.assert_success("run-enclave");
    eprintln!("run-enclave to RUNNING: {:.1} s", took.as_secs_f64());
    let gone = wait_until(T, || e.runner.describe().is_empty().then_some(()));
    assert!(gone.is_some(), "the enclave is still listed; runner.log:\n{}", e.runner_log("dryrun"));
    assert_all_stopped(&e, "dryrun");
    let status = &e.state_json("dryrun")["status"];
    assert_eq!(status["state"], "TERMINATED");
    let log = e.runner_log("dryrun");
    let last = log.lines().last().unwrap_or("");
    assert!(
        last.contains("enclave dryrun TERMINATED: QEMU exited with status 0")
            && last.contains("enclave-init: application exited with 0"),
        "runner.log:\n{log}"
    );
}

#[test]
fn no_heartbeat_fails_at_the_boot_timeout_and_stops_everything() {
    let Some((_slot, tools)) = setup("no_heartbeat_fails_at_the_boot_timeout_and_stops_everything") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // The app never exits, so only the timeout can end this boot.
    let eif = build_eif(&tools, tmp.path(), App::Sleeper, "--no-heartbeat");
    let e = Enclaves::new(&tools, tmp.path());

    let (out, took) = e.run_enclave(&eif, "silent", 16, &["--boot-timeout", "4"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(out.stderr.contains("enclave silent: no boot heartbeat within 4 s"), "{out:?}");
    let console = out.stderr.split_once("last console lines (").map(|(_, c)| c).unwrap_or("");
    assert!(console.lines().count() > 1 && !console.contains("(the console is empty)"), "{out:?}");
    assert!(e.runner.describe().is_empty());
    assert_all_stopped(&e, "silent");
    assert_eq!(e.state_json("silent")["status"]["state"], "FAILED");
}

#[test]
fn a_bad_init_option_powers_the_enclave_off_instead_of_panicking_the_kernel() {
    let Some((_slot, tools)) =
        setup("a_bad_init_option_powers_the_enclave_off_instead_of_panicking_the_kernel")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Refused before any step: PID 1 must power off, since its exit would panic the kernel.
    let eif = build_eif(&tools, tmp.path(), App::Sleeper, "--parent-cid x");
    let e = Enclaves::new(&tools, tmp.path());

    let (out, took) = e.run_enclave(&eif, "badopt", 16, &["--boot-timeout", "60"]);
    // Read first, so that every failure below shows what the guest printed (a rare failure, QEMU
    // not stopping within 60 s, left no clue without it).
    let console = fs::read_to_string(e.runner.state.join("badopt/console.log")).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{out:?}
console:
{console}"
    );
    assert!(
        took < Duration::from_secs(60),
        "QEMU did not stop by itself: took {took:?}
console:
{console}"
    );
    assert!(
        out.stderr.contains("before the heartbeat"),
        "{out:?}
console:
{console}"
    );
    assert!(
        console.contains("enclave-init: --parent-cid: parent CID \"x\" is not a number; powering off"),
        "console:\n{console}"
    );
    assert!(console.contains("reboot: Power down"), "console:\n{console}");
    assert!(!console.contains("Kernel panic"), "console:\n{console}");
    assert!(e.runner.describe().is_empty());
    assert_all_stopped(&e, "badopt");
    assert_eq!(e.state_json("badopt")["status"]["state"], "FAILED");
}
