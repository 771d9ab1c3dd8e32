//! `vsockproxy`: the parent-instance proxy between a Nitro Enclave and the world.
//!
//! - [`config`]: the TOML file and CLI overrides, validated before anything binds;
//! - [`server`]: listeners (ingress, fixed mappings, SOCKS5), one task per connection, reload
//!   and drain; [`workers`]: the forwarding threads (a runtime each) the connections run on; [`forward`]: the byte pump (splice or copy) with half-close and idle timeout;
//! - [`policy`]: the default-deny egress allowlist; [`dns`]: the shared caching resolver;
//! - [`limits`]: connection caps; [`fds`]: the caps against `RLIMIT_NOFILE`;
//! - [`metrics`] (a prometheus-client registry, scraped by the collector) and [`admin`]:
//!   `/healthz`, `/readyz`, `/metrics`;
//! - [`notify`]: systemd readiness; [`watchdog`]: `WATCHDOG=1` tied to the loops' progress;
//! - [`logging`]: the reloadable logger;
//! - [`app`]: the daemon's life cycle; [`cli`].
//!
//! The modules import each other without cycles: [`config`] (with the types a reload reports on
//! and the admin deadlines) sits under everything but [`policy`] and [`dns`]; [`metrics`] under
//! [`server`]; [`server`] under [`admin`]; [`app`] on top.
//!
//! unsafe code is denied (the workspace's lints) except in `sys`, the system calls.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod dns;
pub mod fds;
pub mod forward;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod server;
mod sys;
pub mod watchdog;
pub mod workers;
