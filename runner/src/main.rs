//! enclave-runner: nitro-cli's verbs for an EIF booted under QEMU's `nitro-enclave` machine.

#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use enclave_runner::cli::{self, RunRequest, Selector};
use enclave_runner::describe::to_pretty;
use enclave_runner::monitor;
use enclave_runner::state::{DEFAULT_STATE_DIR, StateDir};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "enclave-runner",
    version,
    about = "A local stand-in for nitro-cli: boots an EIF under QEMU's nitro-enclave machine"
)]
struct Cli {
    /// Directory holding one directory per enclave (sockets, logs, state.json).
    #[arg(long, global = true, env = "ENCLAVE_RUNNER_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Boot an EIF and return once its init has sent the boot heartbeat.
    RunEnclave(RunArgs),
    /// List the running enclaves as a JSON array.
    DescribeEnclaves,
    /// Print an enclave's serial console and follow it until the enclave ends.
    Console(ConsoleArgs),
    /// Stop enclaves: QEMU, then the vsock backend, then the monitor.
    TerminateEnclave(TerminateArgs),
    /// (internal) The detached process that owns one enclave; started by run-enclave.
    #[command(hide = true)]
    Monitor {
        /// The enclave's name (its directory in the state directory).
        #[arg(long)]
        enclave_name: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The enclave image file.
    #[arg(long)]
    eif_path: PathBuf,
    /// Number of vCPUs (QEMU's -smp).
    #[arg(long)]
    cpu_count: u32,
    /// Memory in MiB (QEMU's -m).
    #[arg(long)]
    memory: u64,
    /// The enclave's vsock CID (at least 4); default: the lowest free one from 16.
    #[arg(long)]
    enclave_cid: Option<u32>,
    /// A unique name; default: the EIF's file name without its extension.
    #[arg(long)]
    enclave_name: Option<String>,
    /// Report the enclave as DEBUG_MODE (the console is captured either way).
    #[arg(long)]
    debug_mode: bool,
    /// Seconds to wait for the boot heartbeat after QEMU starts.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// The vsock backend's Unix socket (default: vm.vsock in the enclave's directory).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct EnclaveChoice {
    /// The enclave's ID, as describe-enclaves shows it.
    #[arg(long)]
    enclave_id: Option<String>,
    /// The enclave's name.
    #[arg(long)]
    enclave_name: Option<String>,
}

#[derive(Args)]
struct ConsoleArgs {
    #[command(flatten)]
    enclave: EnclaveChoice,
    /// Stop following after this many seconds.
    #[arg(long)]
    disconnect_timeout: Option<u64>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TerminateArgs {
    /// The enclave's ID.
    #[arg(long)]
    enclave_id: Option<String>,
    /// The enclave's name.
    #[arg(long)]
    enclave_name: Option<String>,
    /// Every running enclave.
    #[arg(long)]
    all: bool,
}

fn selector(id: Option<String>, name: Option<String>) -> Selector {
    match (id, name) {
        (Some(id), _) => Selector::Id(id),
        (None, Some(name)) => Selector::Name(name),
        (None, None) => Selector::All,
    }
}

fn run(state: &StateDir, verb: Verb) -> Result<ExitCode, cli::CliError> {
    match verb {
        Verb::RunEnclave(a) => {
            let info = cli::run_enclave(
                state,
                RunRequest {
                    eif_path: a.eif_path,
                    cpu_count: a.cpu_count,
                    memory_mib: a.memory,
                    cid: a.enclave_cid,
                    name: a.enclave_name,
                    debug_mode: a.debug_mode,
                    boot_timeout_secs: a.boot_timeout,
                    vsock_uds: a.vsock_uds,
                },
            )?;
            println!("{}", to_pretty(&info));
        }
        Verb::DescribeEnclaves => println!("{}", to_pretty(&cli::describe_enclaves(state)?)),
        Verb::Console(a) => {
            let which = selector(a.enclave.enclave_id, a.enclave.enclave_name);
            cli::console(state, &which, a.disconnect_timeout.map(Duration::from_secs))?;
        }
        Verb::TerminateEnclave(a) => {
            let which = if a.all { Selector::All } else { selector(a.enclave_id, a.enclave_name) };
            for info in cli::terminate_enclaves(state, &which)? {
                println!("{}", to_pretty(&info));
            }
        }
        Verb::Monitor { enclave_name } => return Ok(monitor::main(&state.enclave(&enclave_name))),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&StateDir::new(cli.state_dir), cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("enclave-runner: {e}");
            ExitCode::FAILURE
        }
    }
}
