//! kv-client: verifies a nitro-kv enclave's attestation document and makes encrypted v2 lookups.

#![forbid(unsafe_code)]

use clap::Parser;
use kv_client::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Usage errors exit 2 from here (clap).
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    match kv_client::cli::run(cli, &mut stdout, &mut stderr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-client: {e}");
            e.exit_code()
        }
    }
}
