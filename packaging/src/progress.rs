//! Progress bars for long steps, shown only when stderr is a terminal and `--json` is off, so
//! logs and machine output stay clean.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

#[derive(Clone, Copy, Debug)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    pub fn new(json: bool) -> Self {
        Progress { enabled: !json && std::io::stderr().is_terminal() }
    }

    pub fn hidden() -> Self {
        Progress { enabled: false }
    }

    /// A byte-counting bar for one step; hidden when progress is off.
    pub fn bytes(&self, total: u64, step: &str) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        let style =
            ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(step.to_string());
        bar
    }
}
