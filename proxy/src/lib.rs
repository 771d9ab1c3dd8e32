//! vsockproxy: the parent-instance vsock proxy daemon.

pub mod dns;
pub mod policy;
