//! enclave-init: mount, load modules, heartbeat, switch root, run the app, power off.

use enclave_init::{config, exec, plan, sys};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env_cid = std::env::var(config::INIT_PARENT_CID_VAR).ok();
    let opts = match config::parse_options(&args, env_cid.as_deref()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("enclave-init: {e}");
            std::process::exit(2);
        }
    };
    if opts.dry_run {
        // Prints what would happen on this machine's files, without doing any of it.
        for step in plan::boot_plan(opts.parent_cid, opts.heartbeat, &exec::probe_ramdisk()) {
            println!("{step:?}");
        }
        return;
    }
    if sys::getpid() != 1 {
        eprintln!(
            "enclave-init: refusing to run as PID {} (it mounts, switches root and powers off); use --dry-run",
            sys::getpid()
        );
        std::process::exit(2);
    }
    let steps = plan::boot_plan(opts.parent_cid, opts.heartbeat, &exec::probe_ramdisk());
    match exec::run(&steps) {
        Ok(code) => eprintln!("enclave-init: powering off (application exit code {code})"),
        Err(e) => eprintln!("enclave-init: boot failed: {e}; powering off"),
    }
    // PID 1 must not exit (the kernel would panic): power off instead.
    let e = sys::power_off();
    eprintln!("enclave-init: power off failed: {e}");
    loop {
        std::thread::park();
    }
}
