//! vsockproxy: the parent-instance vsock proxy daemon.

pub mod policy;
