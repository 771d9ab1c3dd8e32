//! The error of a whole run: one variant per operation family (each names the region, the
//! resource or file, and the operation), plus what belongs to the run itself (input refused, an
//! interrupt, copies that failed in some regions, a cleanup that left something behind).
//! [`Error::code`] gives the AWS error code when AWS gave one.

use crate::{ebs, images, import_task, instances, s3, smoke, ssm};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ebs(#[from] ebs::Error),
    #[error(transparent)]
    Images(#[from] images::Error),
    #[error(transparent)]
    ImportTask(#[from] import_task::Error),
    #[error(transparent)]
    Instances(#[from] instances::Error),
    #[error(transparent)]
    S3(#[from] s3::Error),
    #[error(transparent)]
    Ssm(#[from] ssm::Error),
    /// The smoke test ran and the image failed it (the step, and the console output).
    #[error(transparent)]
    Smoke(#[from] smoke::Error),
    /// Input refused by its own check (spec key, state file, user data value); the message names
    /// the file or key.
    #[error("{0}")]
    Input(String),
    /// SIGINT/SIGTERM: the run was cut short; the cleanup stack still ran.
    #[error("interrupted; cleaned up what this run had created")]
    Interrupted,
    /// The upload ended without telling which snapshot it made (a bug, not an AWS answer).
    #[error("{region}: upload finished without a snapshot")]
    NoSnapshot { region: String },
    /// Some copy regions failed; every region ran to its end, the finished images are kept.
    #[error(
        "copy failed in {} of {total} target regions: {}; finished images kept (a re-run reuses them): {}",
        failed.len(),
        failed.join("; "),
        kept.join(", ")
    )]
    Copies { failed: Vec<String>, total: usize, kept: Vec<String> },
    /// The run failed (or, with `original` None, finished) and some of its cleanup failed too:
    /// both are reported, the original error first.
    #[error("{}cleanup failed, left behind: {}", original.as_ref().map(|e| format!("{e}; ")).unwrap_or_else(|| "finished, but ".into()), left_behind.join("; "))]
    Cleanup { original: Option<Box<Error>>, left_behind: Vec<String> },
}

impl Error {
    /// The AWS error code, when the error came from AWS.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Ebs(e) => e.code(),
            Error::Images(e) => e.code(),
            Error::ImportTask(e) => e.code(),
            Error::Instances(e) => e.code(),
            Error::S3(e) => e.code(),
            Error::Ssm(e) => e.code(),
            Error::Cleanup { original: Some(e), .. } => e.code(),
            _ => None,
        }
    }
}
