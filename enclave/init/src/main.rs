//! enclave-init: mount, load modules, heartbeat, switch root, run the app, power off.
//!
//! As PID 1 every path ends in a power off (see `start`): init exiting would panic the kernel.

use enclave_init::start::{self, End, Start};
use enclave_init::{config, exec, plan, sys};
use std::io::Write;

fn main() {
    let pid = sys::getpid();
    // First, before anything can panic: a panic of PID 1 powers off instead of exiting.
    if start::is_init(pid) {
        std::panic::set_hook(Box::new(start::panic_hook(power_off)));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env_cid = std::env::var(config::INIT_PARENT_CID_VAR).ok();
    let decision = start::decide(pid, &args, env_cid.as_deref());
    match &decision {
        Start::PrintPlan { opts, .. } => {
            // Prints what would happen on this machine's files, without doing any of it.
            for step in plan::boot_plan(opts.parent_cid, opts.heartbeat, &exec::probe_ramdisk()) {
                println!("{step:?}");
            }
        }
        Start::Refuse { message, then } => {
            let tail = if *then == End::PowerOff { "; powering off" } else { "" };
            eprintln!("enclave-init: {message}{tail}");
        }
        Start::Boot(opts) => {
            let steps = plan::boot_plan(opts.parent_cid, opts.heartbeat, &exec::probe_ramdisk());
            match exec::run(&steps) {
                Ok(code) => eprintln!("enclave-init: powering off (application exit code {code})"),
                Err(e) => eprintln!("enclave-init: boot failed: {e}; powering off"),
            }
        }
    }
    let _ = std::io::stdout().flush();
    match decision.end() {
        End::Exit(code) => std::process::exit(code),
        End::PowerOff => power_off(),
    }
}

/// PID 1 must not exit (the kernel would panic): power off, and should that fail, stay.
fn power_off() -> ! {
    let e = sys::power_off();
    eprintln!("enclave-init: power off failed: {e}");
    loop {
        std::thread::park();
    }
}
