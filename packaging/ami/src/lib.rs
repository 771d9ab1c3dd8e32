//! kv-ami: bake the packaging bundle into AMIs (docs/ami.md).
//!
//! Two ways to the first image, one way on from there:
//! - [`import`]: raw image -> EBS snapshot (EBS direct APIs, or S3 + ImportSnapshot) -> RegisterImage;
//! - [`bake`]: bundle -> S3 -> builder instance (user data installs and signals) -> CreateImage;
//! - then [`smoke_test`] ([`smoke`]): one instance booted from the new image runs the fleet's launcher and reports
//!   (PCRs, readiness, SERVING) before anything is published;
//! - then [`publish`]: copies in other regions, launch permissions, deprecation, tags, SSM
//!   parameters (the build's, then the channel's `latest` after a passed smoke test; `promote`)
//!   and the Packer-shaped manifest ([`output`]).
//!
//! The content key (SHA-256 of the bundle's `manifest.json`, read and checked with
//! `packaging::manifest`) tags every image, so a re-run with the same bundle reuses the images;
//! a state file ([`state`], `--state`) lets a re-run resume an interrupted upload; every
//! resource a run creates is on a cleanup stack ([`cleanup`]) that runs on every exit path.
//!
//! # Modules
//!
//! Commands (what `main` runs): [`import`], [`bake`] (each variant of a spec with `[[variants]]`
//! in turn: [`variants`]), [`smoke_test::standalone`],
//! [`publish::promote`], [`gc`]; shared by both: [`smoke_test`], [`publish`], [`run`]
//! (options, context, the body-then-cleanup runner), [`cleanup`], [`error`].
//!
//! AWS, one module per operation family, each with its own error naming region, resource and
//! operation: [`ebs`] (EBS direct upload and read-back), [`images`] (images and snapshots),
//! [`import_task`] (ImportSnapshot), [`instances`] (the builder and its security group), [`s3`],
//! [`ssm`]; [`aws`] (clients, endpoint, the failed-call error) and [`wait`] (the SDK waiters'
//! bound and the one generic waiter) under them.
//!
//! Pure, no AWS: [`spec`] (the TOML spec), [`plan`] (blocks, checksums, retry and wait
//! decisions), [`detect`] (image format), [`state`], [`userdata`], [`progress`], [`output`].
//!
//! # Dependencies (`use crate::`), a DAG: no module uses one listed after it
//!
//! - leaves: `spec`, `plan`, `detect`, `progress`, `userdata`, `output`, `state`, `wait`, `aws`
//! - `ssm` -> aws; `s3` -> aws, plan
//! - `ebs` -> aws, plan, progress, spec
//! - `images` -> aws, plan, spec, wait; `import_task` -> aws, plan, spec, wait
//! - `instances` -> aws, spec, userdata, wait
//! - `smoke` -> instances, spec (and `packaging::eif`)
//! - `error` -> ebs, images, import_task, instances, s3, smoke, ssm
//! - `cleanup` -> aws, error, images, import_task, instances, s3, wait
//! - `run` -> aws, cleanup, error, spec, state, wait
//! - `smoke_test` -> aws, cleanup, error, images, instances, run, smoke, spec, state, wait
//! - `publish` -> aws, cleanup, error, images, output, run, smoke, smoke_test, spec, ssm
//! - `gc` -> aws, error, images, spec, ssm
//! - `import` -> publish, run, cleanup, error, output, detect, ebs, images, import_task, s3,
//!   plan, smoke, spec, state, wait, aws (and `packaging::manifest`)
//! - `bake` -> publish, run, cleanup, error, output, images, instances, s3, smoke, ssm, spec,
//!   state, userdata, wait, aws (and `packaging::manifest`)
//! - `variants` -> import, bake, error, output, run (several images of one bundle, one run)
//!
//! The commands use the lower modules, never the other way round; `import` and `bake` do not use
//! each other. (Test only: `policy_tests`, the IAM policies against both plans, uses both.)
#![forbid(unsafe_code)]

pub mod aws;
pub mod bake;
pub mod cleanup;
pub mod detect;
pub mod ebs;
pub mod error;
pub mod gc;
pub mod images;
pub mod import;
pub mod import_task;
pub mod instances;
pub mod output;
pub mod plan;
pub mod progress;
pub mod publish;
pub mod run;
pub mod s3;
pub mod smoke;
pub mod smoke_test;
pub mod spec;
pub mod ssm;
pub mod state;
pub mod userdata;
pub mod variants;
pub mod wait;

#[cfg(test)]
mod policy_tests;

pub use error::Error;
pub use import::{AWS_BLOCK_SIZE, Job, content_key, count_nonzero, run};
pub use output::{Build, Manifest, RegionResult};
pub use run::RunOptions;
