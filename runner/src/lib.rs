//! enclave-runner: nitro-cli's `run-enclave`, `describe-enclaves`, `console` and
//! `terminate-enclave` for machines without Nitro hardware. An enclave is an EIF booted under
//! QEMU's `nitro-enclave` machine (TCG) whose vsock device is served by `vhost-device-vsock` in
//! Unix-socket mode, supervised by a detached monitor process.
//!
//! - [`cli`]: the verbs, as `run-enclave` and friends perform them;
//! - [`console`]: the captured serial console: tails and following;
//! - [`state`]: the state directory, `state.json`, and whether an enclave is alive;
//! - [`monitor`]: the detached process that owns QEMU and the backend;
//! - [`heartbeat`]: the parent's side of the boot heartbeat;
//! - [`qemu`]: the QEMU and backend command lines (pure);
//! - [`describe`]: nitro-cli's JSON shapes;
//! - [`tools`]: finding QEMU and `vhost-device-vsock`;
//! - [`sys`]: the few libc calls (signals, sessions, parent-death signal).
//!
//! Reaching the enclave from the parent's services: host -> guest is vsockproxy's
//! `vsock-hybrid://<VsockUdsPath>:<port>` (connect, `CONNECT <port>\n`, `OK <n>\n`); guest ->
//! host (the enclave connecting to the parent's port P) lands on `unix://<VsockUdsPath>_<P>`,
//! where the parent's service must listen. `VsockUdsPath` is in `describe-enclaves`.
//!
//! What differs from real Nitro: the guest reaches its parent at CID 2, not 3 (the emulated
//! backend forwards only CID 2); ACPI is on; every guest connection to port P of the parent
//! lands on the Unix socket `<vsock-uds>_P`; the console is always captured (debug mode or not).
//!
//! unsafe code is denied (the workspace's lints) except in `sys`, the system calls.

pub mod cli;
pub mod console;
pub mod describe;
pub mod heartbeat;
pub mod monitor;
pub mod qemu;
pub mod state;
pub mod sys;
pub mod tools;
