//! Command line: `vsockproxy run` and `vsockproxy check`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use transport::Endpoint;

use crate::config::{self, ForwardMode, LogFormat, Overrides};

/// The parent-instance vsock proxy: ingress TCP -> enclave, egress SOCKS5 and fixed mappings
/// behind a default-deny policy, with health, readiness and metrics on a loopback admin port.
#[derive(Debug, Parser)]
#[command(name = "vsockproxy", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the proxy (READY=1 to systemd once every listener is bound).
    Run(RunArgs),
    /// Validate a config file and exit: 0 if valid, 2 with file, key and reason if not.
    Check {
        /// The TOML config file to validate.
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file; without it the reference defaults apply (ingress tcp://127.0.0.1:50051
    /// -> vsock://16:50051, SOCKS5 on vsock://any:8888, admin on tcp://127.0.0.1:9901).
    #[arg(long, short = 'c', env = "VSOCKPROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen endpoint of the first ingress (created with the default upstream if none).
    #[arg(long, value_parser = listen_ep)]
    pub ingress_listen: Option<Endpoint>,
    /// Upstream (enclave) endpoint of the first ingress.
    #[arg(long, value_parser = dial_ep)]
    pub ingress_upstream: Option<Endpoint>,
    /// Listen endpoint of the SOCKS5 egress listener (created if the file has none).
    #[arg(long, value_parser = listen_ep)]
    pub socks5_listen: Option<Endpoint>,
    /// Admin HTTP endpoint (loopback TCP or a Unix socket).
    #[arg(long, value_parser = listen_ep)]
    pub admin_listen: Option<Endpoint>,
    /// Forwarding engine: splice (zero-copy) or copy (user-space buffer).
    #[arg(long, value_enum)]
    pub forwarding: Option<ForwardMode>,
    /// Log format: text or json (one line per event, on stderr).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Global cap on connections in flight.
    #[arg(long)]
    pub max_connections: Option<usize>,
}

fn listen_ep(s: &str) -> Result<Endpoint, String> {
    config::parse_listen(s)
}

fn dial_ep(s: &str) -> Result<Endpoint, String> {
    config::parse_dial(s)
}

impl RunArgs {
    pub fn source(&self) -> config::Source {
        config::Source {
            path: self.config.clone(),
            overrides: Overrides {
                ingress_listen: self.ingress_listen.clone(),
                ingress_upstream: self.ingress_upstream.clone(),
                socks5_listen: self.socks5_listen.clone(),
                admin_listen: self.admin_listen.clone(),
                forwarding: self.forwarding,
                log_format: self.log_format,
                max_connections: self.max_connections,
            },
        }
    }
}
