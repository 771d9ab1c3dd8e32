//! `kms-double`: parses the arguments, loads the policy, binds, prints the listening line, serves
//! until SIGTERM or Ctrl-C, drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kms_double::cms::CmsEncoding;
use kms_double::policy::Policy;
use kms_double::server::{self, Limits};
use kms_double::service::{KeyConfig, KmsDouble};
use tokio::signal::unix::{SignalKind, signal};

/// TEST DOUBLE of AWS KMS (GenerateDataKey/Decrypt with an attested Recipient) for the
/// end-to-end tests. Not KMS: signatures and attestation chains are not verified.
#[derive(Debug, Parser)]
#[command(name = "kms-double", version)]
struct Args {
    /// Address to listen on (loopback; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The key policy, a KMS key policy JSON document.
    #[arg(long)]
    policy: PathBuf,
    /// The principal every request is taken to come from.
    #[arg(long)]
    caller_arn: String,
    /// The key's id (the last part of its ARN).
    #[arg(long)]
    key_id: String,
    /// An alias of the key, `alias/NAME`.
    #[arg(long)]
    alias: Option<String>,
    /// The region in the key ARN.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// The account in the key ARN.
    #[arg(long, default_value = "123456789012")]
    account: String,
    /// How CiphertextForRecipient is encoded: `ber` (indefinite lengths, as KMS) or `der`.
    #[arg(long, value_enum, default_value_t = CmsEncoding::Ber)]
    cms_encoding: CmsEncoding,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let policy = match std::fs::read_to_string(&args.policy)
        .map_err(|e| e.to_string())
        .and_then(|text| Policy::from_json(&text).map_err(|e| e.to_string()))
    {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("kms-double: policy {}: {e}", args.policy.display());
            return ExitCode::from(2);
        }
    };
    if let Some(alias) = args.alias.as_deref().filter(|a| !a.starts_with("alias/")) {
        eprintln!("kms-double: --alias {alias:?} must start with alias/");
        return ExitCode::from(2);
    }
    let caller = args.caller_arn.clone();
    let config = KeyConfig {
        region: args.region,
        account: args.account,
        key_id: args.key_id,
        alias: args.alias,
        caller_arn: args.caller_arn,
        cms_encoding: args.cms_encoding,
    };
    let kms = match KmsDouble::new(config, policy) {
        Ok(kms) => Arc::new(kms),
        Err(e) => {
            eprintln!("kms-double: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (listener, mut term) =
        match (tokio::net::TcpListener::bind(args.listen).await, signal(SignalKind::terminate())) {
            (Ok(listener), Ok(term)) => (listener, term),
            (Err(e), _) => {
                eprintln!("kms-double: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
            (_, Err(e)) => {
                eprintln!("kms-double: cannot handle SIGTERM: {e}");
                return ExitCode::FAILURE;
            }
        };
    let addr = listener.local_addr().unwrap_or(args.listen);
    println!("kms-double listening on http://{addr}");
    eprintln!("kms-double: key {} for caller {caller}", kms.key_arn());
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    server::run(listener, kms, Limits::default(), shutdown).await;
    ExitCode::SUCCESS
}
