//! enclave-init: PID 1 of the enclave image.
//!
//! - [`wire`]: the constants shared with the parent (heartbeat port, byte, parent CID);
//! - [`config`]: parsing of options, `/env` and `/cmd` (pure, unit-tested);
//! - [`plan`]: the boot sequence as a list of steps built by a pure function (unit-tested);
//! - [`start`]: what to do given the PID and the arguments, with the rule that PID 1 ends every
//!   path in a power off, and PID 1's panic hook (pure, unit-tested);
//! - [`exec`] and [`sys`]: performing the steps with system calls (never run in tests).

// System calls need unsafe; the workspace's lints deny it and `sys` alone allows it.

pub mod config;
pub mod exec;
pub mod plan;
pub mod start;
pub mod sys;
pub mod wire;
