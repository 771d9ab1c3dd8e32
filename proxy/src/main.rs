use std::process::ExitCode;

use clap::Parser;
use vsockproxy::app;
use vsockproxy::cli::{Cli, Cmd};

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Run(args) => app::run(args),
        Cmd::Check { config } => app::check(&config),
    }
}
