//! The logger: a tracing subscriber on stderr (text or JSON lines) whose filter a reload can
//! replace. The format is fixed at start (a reload that changes it is reported as needing a
//! restart), and `RUST_LOG`, when set, wins over `[log] level` at start and on every reload.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::{LogConfig, LogFormat, NotApplied};

/// The running logger and what it was set up with.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    running: LogConfig,
    /// `RUST_LOG` was set (and valid) at start: it decides the level, not the file.
    env_wins: bool,
}

impl Logging {
    /// Installs the global subscriber. `log.level` was validated with the config.
    pub fn init(log: &LogConfig) -> Logging {
        let from_env = EnvFilter::try_from_default_env();
        let env_wins = from_env.is_ok();
        let filter =
            from_env.or_else(|_| EnvFilter::try_new(&log.level)).unwrap_or_else(|_| EnvFilter::new("info"));
        let (filter, handle) = reload::Layer::new(filter);
        let registry = tracing_subscriber::registry().with(filter);
        let installed = match log.format {
            LogFormat::Json => {
                registry.with(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr)).try_init()
            }
            LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr)).try_init(),
        };
        if let Err(e) = installed {
            eprintln!("warning: logging already set up: {e}");
        }
        Logging { filter: handle, running: log.clone(), env_wins }
    }

    /// Applies `[log] level` live; reports a format change (and a level `RUST_LOG` overrides).
    pub fn reload(&mut self, new: &LogConfig) -> Vec<NotApplied> {
        let mut notes = Vec::new();
        if new.format != self.running.format {
            notes.push(NotApplied {
                section: "log",
                note: format!(
                    "log.format changed from {} to {}: needs a restart",
                    format_name(self.running.format),
                    format_name(new.format)
                ),
            });
        }
        if new.level != self.running.level {
            if self.env_wins {
                notes.push(NotApplied {
                    section: "log",
                    note: format!("log.level changed to {:?}, but RUST_LOG is set and wins", new.level),
                });
            } else {
                match EnvFilter::try_new(&new.level)
                    .map_err(|e| e.to_string())
                    .and_then(|f| self.filter.reload(f).map_err(|e| e.to_string()))
                {
                    Ok(()) => {
                        tracing::info!(from = %self.running.level, to = %new.level, "log.level changed");
                        self.running.level = new.level.clone();
                    }
                    Err(e) => notes.push(NotApplied {
                        section: "log",
                        note: format!("log.level {:?} not applied: {e}", new.level),
                    }),
                }
            }
        }
        notes
    }
}

fn format_name(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logging(env_wins: bool) -> (Logging, reload::Layer<EnvFilter, Registry>) {
        let (layer, filter) = reload::Layer::new(EnvFilter::new("info"));
        let running = LogConfig { format: LogFormat::Json, level: "info".into() };
        (Logging { filter, running, env_wins }, layer)
    }

    #[test]
    fn the_level_applies_and_a_format_change_needs_a_restart() {
        let (mut l, _layer) = logging(false);
        let notes = l.reload(&LogConfig { format: LogFormat::Json, level: "debug".into() });
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(l.running.level, "debug");
        let notes = l.reload(&LogConfig { format: LogFormat::Text, level: "debug".into() });
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].section, "log");
        assert!(notes[0].note.contains("log.format changed from json to text: needs a restart"), "{notes:?}");
    }

    #[test]
    fn rust_log_wins_over_the_file_level_on_reload() {
        let (mut l, _layer) = logging(true);
        let notes = l.reload(&LogConfig { format: LogFormat::Json, level: "warn".into() });
        assert_eq!(notes.len(), 1);
        assert!(notes[0].note.contains("RUST_LOG"), "{notes:?}");
        assert_eq!(l.running.level, "info");
    }
}
