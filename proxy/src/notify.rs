//! systemd's notify protocol through the `sd-notify` crate (no libsystemd): one datagram per
//! state change to the Unix socket named by `$NOTIFY_SOCKET`. Without `$NOTIFY_SOCKET` (not under
//! a `Type=notify` unit) every call is a no-op. The socket must be a path, as systemd's
//! (`/run/systemd/notify`) is: sd-notify 0.5 does not connect to an abstract `@name`.

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;

/// Sends `state`; returns whether a notify socket was configured.
pub fn notify(state: NotifyState<'_>) -> io::Result<bool> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(false);
    }
    sd_notify::notify(&[state])?;
    Ok(true)
}

/// How often to send `WATCHDOG=1`: half the unit's `WatchdogSec` (`$WATCHDOG_USEC`), when it is
/// set for this process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|usec| !usec.is_zero()).map(|usec| usec / 2)
}
