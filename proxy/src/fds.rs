//! The file descriptor budget: the connection caps are checked against `RLIMIT_NOFILE` at start
//! and on every reload, so that a busy proxy never runs out of descriptors in the middle of
//! transfers (a failed `pipe2` or `accept` there would cut connections, not refuse new ones).
//!
//! A busy connection holds [`PER_CONNECTION`] descriptors: its two sockets and, in splice mode,
//! two pipes of two ends each. Copy-mode and vsock connections hold fewer, but a reload can
//! switch the mode under live traffic, so the budget is for the worst case. Besides them the
//! daemon needs [`overhead`]: its listeners (and each forwarding thread's `dup` of them, its epoll
//! and eventfd), the admin endpoint's connections (each with at most one `/readyz` probe to an
//! ingress upstream open at a time) and [`RESERVED`] for itself.
//!
//! A global cap the operator chose (`limits.max_connections`, `--max-connections`) that does
//! not fit is refused with the key, the numbers and the limit (exit 2 at start, a rejected
//! reload later); a cap left at its default is lowered to what fits, and the caller logs it.

use crate::config::{Config, ConfigError};

/// Descriptors of one busy splice connection: 2 sockets + 2 pipes x 2 ends.
pub const PER_CONNECTION: u64 = 6;
/// Descriptors of one admin connection: its socket and one readiness probe.
pub const PER_ADMIN_CONNECTION: u64 = 2;
/// Descriptors of one forwarding thread besides its listener `dup`s: its runtime's epoll and
/// eventfd.
pub const PER_THREAD: u64 = 2;
/// The daemon's own: standard streams, the runtime (epoll, eventfds, signal pipe), DNS sockets
/// of lookups in flight, config file reads, notify datagrams.
pub const RESERVED: u64 = 64;

/// Connections that can be in flight at once: the global cap, or the sum of the listener caps
/// when that is lower.
pub fn in_flight(config: &Config) -> u64 {
    let listeners: u64 = config.routes.iter().map(|r| r.max_connections as u64).sum::<u64>()
        + config.socks5.as_ref().map_or(0, |s| s.max_connections as u64);
    listeners.min(config.limits.max_connections as u64)
}

/// Descriptors the daemon needs besides its proxied connections.
pub fn overhead(config: &Config) -> u64 {
    let listeners = config.routes.len() as u64 + u64::from(config.socks5.is_some());
    let admin = config.admin.as_ref().map_or(0, |a| 1 + a.max_connections as u64 * PER_ADMIN_CONNECTION);
    // Every forwarding thread has a `dup` of every listener (crate::workers).
    let threads = config.forwarding.thread_count() as u64 * (PER_THREAD + listeners);
    RESERVED + listeners + admin + threads
}

/// Descriptors needed with every connection slot busy.
pub fn needed(config: &Config) -> u64 {
    overhead(config).saturating_add(in_flight(config).saturating_mul(PER_CONNECTION))
}

/// What [`fit`] did to the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The caps fit as they are.
    Fits,
    /// The default global cap was lowered from `from` to `to`.
    Lowered { from: usize, to: usize },
}

/// Makes the caps of `config` fit `nofile` descriptors (the soft `RLIMIT_NOFILE`, after it was
/// raised to the hard limit), or explains why they cannot.
pub fn fit(config: &mut Config, nofile: u64) -> Result<Fit, ConfigError> {
    let need = needed(config);
    if need <= nofile {
        return Ok(Fit::Fits);
    }
    let overhead = overhead(config);
    let room = nofile.saturating_sub(overhead) / PER_CONNECTION;
    let invalid = |message: String| ConfigError::Invalid {
        path: config.source.clone(),
        key: "limits.max_connections".into(),
        message,
    };
    if room == 0 {
        return Err(invalid(format!(
            "RLIMIT_NOFILE is {nofile}, which leaves no file descriptor for a connection after the \
             {overhead} the daemon itself needs (listeners, admin.max_connections x \
             {PER_ADMIN_CONNECTION}, {RESERVED} reserved); raise the limit (systemd: LimitNOFILE=)"
        )));
    }
    if config.limits.max_connections_set {
        return Err(invalid(format!(
            "{} connections x {PER_CONNECTION} file descriptors (2 sockets + 2 splice pipes each) + \
             {overhead} for the daemon itself = {need}, but RLIMIT_NOFILE is {nofile}: set \
             limits.max_connections to at most {room}, or raise the limit (systemd: LimitNOFILE=)",
            in_flight(config)
        )));
    }
    let from = config.limits.max_connections;
    config.limits.max_connections = room.min(from as u64) as usize;
    Ok(Fit::Lowered { from, to: config.limits.max_connections })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn config(text: &str) -> Config {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        crate::config::load(Some(file.path()), &Overrides::default()).unwrap()
    }

    const TWO: &str = "[admin]\nlisten = \"tcp://127.0.0.1:0\"\nmax_connections = 10\n\
        [socks5]\nlisten = \"tcp://127.0.0.1:0\"\nmax_connections = 100\n\
        [[ingress]]\nlisten = \"tcp://127.0.0.1:1\"\nupstream = \"unix:///x\"\n";

    #[test]
    fn the_budget_counts_six_per_connection_and_the_daemon_itself() {
        let c = config(TWO);
        // Global default 16384 > 100 + 16384: the listeners' sum is what can be in flight.
        assert_eq!(in_flight(&c), 16384);
        let threads = c.forwarding.thread_count() as u64;
        assert_eq!(overhead(&c), RESERVED + 2 + 1 + 10 * PER_ADMIN_CONNECTION + threads * (PER_THREAD + 2));
        assert_eq!(needed(&c), overhead(&c) + 16384 * 6);
        let c = config(&format!("{TWO}[limits]\nlistener_max_connections = 50\n"));
        assert_eq!(in_flight(&c), 150);
    }

    #[test]
    fn a_default_cap_is_lowered_to_fit() {
        let mut c = config(TWO);
        let fit = fit(&mut c, 1000).unwrap();
        let room = (1000 - overhead(&c)) / 6;
        assert_eq!(fit, Fit::Lowered { from: 16384, to: room as usize });
        assert!(needed(&c) <= 1000);
        let mut c = config(TWO);
        assert_eq!(super::fit(&mut c, 1 << 20).unwrap(), Fit::Fits);
        assert_eq!(c.limits.max_connections, 16384);
    }

    #[test]
    fn a_chosen_cap_that_does_not_fit_is_refused_with_the_numbers() {
        let mut c = config(&format!("{TWO}[limits]\nmax_connections = 1000\n[forwarding]\nthreads = 1\n"));
        let e = fit(&mut c, 1000).unwrap_err().to_string();
        for want in ["limits.max_connections", "1000 connections x 6", "RLIMIT_NOFILE is 1000", "at most 151"]
        {
            assert!(e.contains(want), "{want:?} in {e}");
        }
        let mut c = config(&format!("{TWO}[limits]\nmax_connections = 100\n"));
        assert_eq!(fit(&mut c, 1000).unwrap(), Fit::Fits);
    }

    /// Each forwarding thread holds its runtime's epoll and eventfd descriptors and a `dup` of
    /// every listener: with many threads that is not room for connections.
    #[test]
    fn the_forwarding_threads_descriptors_are_in_the_overhead() {
        let one = config(&format!("{TWO}[forwarding]\nthreads = 1\n"));
        let many = config(&format!("{TWO}[forwarding]\nthreads = 200\n"));
        // 2 listeners: each thread adds its epoll, its eventfd and 2 listener dups.
        assert_eq!(overhead(&many) - overhead(&one), 199 * (2 + 2));
        let mut many = many;
        let Fit::Lowered { to, .. } = fit(&mut many, 2000).unwrap() else { panic!("lowered") };
        assert!(needed(&many) <= 2000, "{} needed with {to} connections", needed(&many));
    }

    #[test]
    fn a_limit_too_low_for_the_daemon_itself_is_refused() {
        let mut c = config(TWO);
        let e = fit(&mut c, 50).unwrap_err().to_string();
        assert!(e.contains("leaves no file descriptor"), "{e}");
    }
}
