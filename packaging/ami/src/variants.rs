//! `[[variants]]` ([`crate::spec::Variant`]): several images of one bundle in one run. Each
//! variant is a whole run of its own (import or bake, its smoke test, its publication and its
//! channel), one after the other, each with its own cleanup stack and its own state file
//! (`--state ami-state.json` -> `ami-state.<variant>.json`), so an interrupted run resumes
//! variant by variant and a finished variant is reused through its content key and variant tag.
//!
//! A variant that fails publishes nothing of its own (its smoke test or copies stop it as they
//! stop a run without variants) and is reported by its id; the variants after it still run.
//! The run then fails (non-zero exit) naming every failed variant and the published ones; the
//! manifest lists the published ones. An interrupt stops the running variant (its cleanup runs)
//! and starts no further one.

use crate::bake::BakeJob;
use crate::error::Error;
use crate::import::Job;
use crate::output::Manifest;
use crate::run::RunOptions;
use futures::FutureExt;
use std::future::Future;
use std::path::{Path, PathBuf};

/// The prepared variants of one run (every input checked before the first AWS call).
pub enum Jobs<'a> {
    Import(&'a [Job]),
    Bake(&'a [BakeJob]),
}

impl Jobs<'_> {
    fn ids(&self) -> Vec<String> {
        let id = |s: &crate::spec::AmiSpec| s.variant.clone().unwrap_or_default();
        match self {
            Jobs::Import(j) => j.iter().map(|j| id(&j.spec)).collect(),
            Jobs::Bake(j) => j.iter().map(|j| id(&j.spec)).collect(),
        }
    }
}

/// What a run of several variants did.
#[derive(Debug)]
pub struct Outcome {
    /// One build per published variant, in the spec's order (None: none was published).
    pub manifest: Option<Manifest>,
    pub published: Vec<String>,
    /// Variant id and its error.
    pub failed: Vec<(String, Error)>,
    /// Not started because of an interrupt.
    pub not_started: Vec<String>,
}

impl Outcome {
    /// The run's error, when any variant failed or was not started; None when all published.
    pub fn error(&self) -> Option<String> {
        if self.failed.is_empty() && self.not_started.is_empty() {
            return None;
        }
        let total = self.published.len() + self.failed.len() + self.not_started.len();
        let failed: Vec<String> = self.failed.iter().map(|(id, e)| format!("variant {id}: {e}")).collect();
        let mut msg = format!("{} of {total} variants failed: {}", self.failed.len(), failed.join("; "));
        if !self.not_started.is_empty() {
            msg.push_str(&format!("; not started (interrupted): {}", self.not_started.join(", ")));
        }
        msg.push_str(&match self.published.is_empty() {
            true => "; none published".to_string(),
            false => format!("; published (in the manifest): {}", self.published.join(", ")),
        });
        Some(msg)
    }
}

/// The state file of one variant: `dir/name.json` -> `dir/name.<variant>.json`.
pub fn state_path(path: &Path, variant: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{variant}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{variant}"),
    };
    path.with_file_name(name)
}

/// Every variant in turn, to its end; see the module documentation.
pub async fn run_all(jobs: Jobs<'_>, opts: &RunOptions<'_>, interrupt: impl Future<Output = ()>) -> Outcome {
    let interrupt = interrupt.shared();
    let ids = jobs.ids();
    let mut out =
        Outcome { manifest: None, published: Vec::new(), failed: Vec::new(), not_started: Vec::new() };
    for (i, id) in ids.iter().enumerate() {
        if interrupt.peek().is_some() {
            out.not_started.push(id.clone());
            continue;
        }
        let state = opts.state_path.map(|p| state_path(p, id));
        let o = RunOptions {
            target: opts.target,
            state_path: state.as_deref(),
            progress_bar: opts.progress_bar,
            log: opts.log,
        };
        (opts.log)(&format!("variant {id} ({}/{}): start", i + 1, ids.len()));
        let r = match &jobs {
            Jobs::Import(j) => crate::import::run(&j[i], &o, interrupt.clone()).await,
            Jobs::Bake(j) => crate::bake::bake(&j[i], &o, interrupt.clone()).await,
        };
        match r {
            Ok(m) => {
                (opts.log)(&format!("variant {id}: published"));
                out.published.push(id.clone());
                match &mut out.manifest {
                    None => out.manifest = Some(m),
                    Some(all) => {
                        all.builds.extend(m.builds);
                        all.last_run_uuid = m.last_run_uuid;
                    }
                }
            }
            Err(e) => {
                (opts.log)(&format!("variant {id}: FAILED, nothing of it published: {e}"));
                out.failed.push((id.clone(), e));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_has_its_own_state_file() {
        assert_eq!(state_path(Path::new("/x/ami-state.json"), "io2"), Path::new("/x/ami-state.io2.json"));
        assert_eq!(state_path(Path::new("state"), "gp3"), Path::new("state.gp3"));
    }

    #[test]
    fn the_error_names_failed_published_and_not_started_variants() {
        let o = Outcome {
            manifest: None,
            published: vec!["gp3".into()],
            failed: vec![("io2".into(), Error::Input("boom".into()))],
            not_started: vec!["c7g".into()],
        };
        assert_eq!(
            o.error().unwrap(),
            "1 of 3 variants failed: variant io2: boom; not started (interrupted): c7g; published (in the manifest): gp3"
        );
        let ok = Outcome { manifest: None, published: vec!["a".into()], failed: vec![], not_started: vec![] };
        assert_eq!(ok.error(), None);
    }
}
