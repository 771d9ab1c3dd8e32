//! What every run (import or bake) shares: how it talks to AWS and reports ([`RunOptions`]),
//! the context its steps share ([`Ctx`]: spec, content key, cleanup stack, state file, log), and
//! [`with_cleanup`], which runs a flow's body and then its cleanup stack on every exit path.

use crate::aws::Target;
use crate::cleanup::Cleanup;
use crate::error::Error;
use crate::spec::AmiSpec;
use crate::state::StateFile;
use crate::wait::Bound;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How a run talks to AWS and reports.
pub struct RunOptions<'a> {
    pub target: &'a Target,
    /// `--state`: resume from and record into this file.
    pub state_path: Option<&'a Path>,
    /// A live progress line for the raw upload (main sets it when stderr is a terminal).
    pub progress_bar: bool,
    /// One line per step.
    pub log: &'a (dyn Fn(&str) + Sync),
}

/// What every step of a run shares.
pub struct Ctx<'a> {
    pub spec: &'a AmiSpec,
    pub content_key: &'a str,
    pub target: &'a Target,
    pub cleanup: Arc<Cleanup>,
    pub state: Arc<StateFile>,
    pub log: &'a (dyn Fn(&str) + Sync),
}

impl Ctx<'_> {
    pub fn name(&self) -> String {
        self.spec.ami_name(self.content_key)
    }

    pub fn every(&self) -> Duration {
        Duration::from_secs(self.spec.upload.wait_interval_secs)
    }

    /// The bound of the image and snapshot waits (`upload.wait_attempts` x `wait_interval_secs`).
    pub fn bound(&self) -> Bound {
        Bound::new(self.spec.upload.wait_attempts, self.every())
    }

    /// A state-file write that fails is worth a warning, not the run.
    pub fn record(&self, f: impl FnOnce(&mut crate::state::State)) {
        if let Err(e) = self.state.update(f) {
            (self.log)(&format!("warning: {e}"));
        }
    }
}

/// Run `body` with a cleanup stack; `interrupt` (SIGINT/SIGTERM in main) ends the body early,
/// and the stack runs in every case.
pub async fn with_cleanup<T>(
    cleanup: &Cleanup,
    log: &(dyn Fn(&str) + Sync),
    body: impl Future<Output = Result<T, Error>>,
    interrupt: impl Future<Output = ()>,
) -> Result<T, Error> {
    let result = tokio::select! {
        r = body => r,
        _ = interrupt => Err(Error::Interrupted),
    };
    cleanup.finish(result, log).await
}
