//! The enclave-init binary outside an enclave: `--dry-run` prints the plan and touches nothing;
//! without it, anything but PID 1 is refused before a single system call that changes state.
//! (A child of this test process can never be PID 1, so the refusal path is safe to run.)

use std::process::Command;

fn init() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_enclave-init"));
    c.env_remove("ENCLAVE_INIT_PARENT_CID");
    c
}

#[test]
fn dry_run_prints_the_plan_with_the_parent_cid() {
    let o = init().arg("--dry-run").output().unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"MountDevtmpfs { target: \"/dev\" }"));
    assert_eq!(lines.last(), Some(&"PowerOff"));
    assert!(out.contains("Heartbeat { cid: 3, port: 9000, byte: 183 }"), "{out}");

    let o = init().args(["--dry-run", "--parent-cid", "7"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Heartbeat { cid: 7, port: 9000"));
    let o = init().arg("--dry-run").env("ENCLAVE_INIT_PARENT_CID", "9").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Heartbeat { cid: 9, port: 9000"));
}

#[test]
fn the_parent_cid_from_the_kernel_command_line_reaches_the_app() {
    // `... -- ENCLAVE_INIT_PARENT_CID=2` on the kernel command line: an argument of init.
    let o = init().args(["--dry-run", "ENCLAVE_INIT_PARENT_CID=2"]).output().unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("Heartbeat { cid: 2, port: 9000"), "{out}");
    assert!(out.contains("DefaultAppEnv { key: \"ENCLAVE_PARENT_CID\", value: \"2\" }"), "{out}");
    // Always set, so the application need not know the default; also without the heartbeat.
    let o = init().args(["--dry-run", "--no-heartbeat"]).output().unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("DefaultAppEnv { key: \"ENCLAVE_PARENT_CID\", value: \"3\" }"), "{out}");
}

#[test]
fn bad_options_and_non_pid1_are_refused() {
    let o = init().args(["--dry-run", "--parent-cid", "1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("reserved"));
    let o = init().output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to run as PID"));
    assert!(o.stdout.is_empty());
}

#[test]
fn no_heartbeat_drops_only_the_heartbeat_step() {
    let o = init().args(["--dry-run", "--no-heartbeat"]).output().unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(!out.contains("Heartbeat"), "{out}");
    assert!(out.contains("SwitchRoot") && out.ends_with("PowerOff\n"), "{out}");
}
