//! The `kv-client` command: its arguments, one module per verb, and the exit codes.
//!
//! Exit codes: 0 the verb succeeded; 1 the document, the key set or the answer was refused, or
//! the server could not be reached or answered an error, with the reason on stderr; 2 bad usage:
//! a bad flag, an unreadable file, a bad manifest.

pub mod get;
pub mod keys;
pub mod verify_attestation;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::verify::VerifyError;

#[derive(Debug, Parser)]
#[command(name = "kv-client", version, about = "Client of a nitro-kv server in an AWS Nitro Enclave")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify an enclave's attestation document and print a JSON summary.
    VerifyAttestation(verify_attestation::Args),
    /// Fetch the server's HPKE key set (GET /v2/keys), check its digest and, with --manifest,
    /// its attestation document; print JSON.
    Keys(keys::Args),
    /// An encrypted v2 lookup through envoy (POST /v2/oblivious_getvalues); print the answer as JSON.
    Get(get::Args),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag's value is unusable.
    #[error("{flag}: {reason}")]
    Usage { flag: &'static str, reason: String },
    /// An input file cannot be read.
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Manifest(#[from] crate::verify::ManifestError),
    /// The document was refused.
    #[error("attestation document refused: {0}")]
    Verify(#[from] VerifyError),
    /// A v2 call failed; the message names the side (the URL, the server's status, the key
    /// set, the attestation, decryption, a CBOR field).
    #[error(transparent)]
    V2(#[from] crate::v2::V2Error),
    /// stdout or stderr failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::V2(crate::v2::V2Error::Url { .. }) => ExitCode::from(2),
            CliError::Verify(_) | CliError::V2(_) | CliError::Output(_) => ExitCode::from(1),
            CliError::Usage { .. } | CliError::Read { .. } | CliError::Manifest(_) => ExitCode::from(2),
        }
    }
}

/// Runs a verb; its result goes to `out`, warnings to `err`.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    match cli.command {
        Command::VerifyAttestation(args) => verify_attestation::run(&args, out, err),
        Command::Keys(args) => keys::run(&args, out, err),
        Command::Get(args) => get::run(&args, out, err),
    }
}

/// Bytes given as hex on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

impl std::str::FromStr for HexBytes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        hex::decode(s.trim()).map(HexBytes).map_err(|e| format!("not hex: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_arguments_are_consistent() {
        Cli::command().debug_assert();
    }
}
