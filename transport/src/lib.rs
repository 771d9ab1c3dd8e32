//! Endpoints shared by every process in the workspace.
//!
//! One address syntax names a place to listen or to dial, whatever the transport:
//!
//! | form | listen | dial |
//! |---|---|---|
//! | `vsock://CID:PORT` (`CID` may be `any` for a listener) | yes | yes |
//! | `vsock://parent:PORT` (the enclave's parent: CID 3, or as resolved by [`Endpoint::with_parent_cid`]) | no | yes |
//! | `unix:///absolute/path` | yes | yes |
//! | `tcp://HOST:PORT` (IPv4, `[IPv6]`, or a name when dialing) | yes | yes |
//! | `vsock-hybrid:///path/to/uds:PORT` (Firecracker / vhost-device-vsock host side) | no | yes |
//!
//! [`Listener`] and [`Stream`] hide the transport so that servers and tests run the same code
//! over Unix and TCP sockets where no vsock device exists. Every [`Stream`] kind has tokio
//! readiness (vsock through [`FdStream`], which registers the socket's fd with the reactor).
//! A [`Listener`] is one `socket2` socket in tokio's reactor for every family: it accepts with
//! `accept4` into an [`Accepted`] that is registered in whichever runtime will run it, and
//! [`Listener::spread`] puts a `dup` of it in several runtimes (vsockproxy's forwarding threads).
//! tokio-vsock was used for the vsock listener and stream until both had to hand sockets between
//! runtimes and expose readiness: its stream has no readiness API, and turning a descriptor into
//! its listener panics when the reactor refuses the registration, so nothing of it is left.
//!
//! [`plan`] is the address plan both daemons take their defaults from: the CIDs of the parent and
//! the enclave and the ports of the reference deployment.
//!
//! unsafe code is denied (the workspace's lints); `fd_stream` allows it where it registers and
//! reads a raw socket and `stream` for shutdown(2), each block with its `// SAFETY:` argument.

mod endpoint;
mod fd_stream;
mod hybrid;
mod listener;
pub mod plan;
pub mod socks5;
mod stream;

pub use endpoint::{CID_ANY, Endpoint, EndpointError, Host, PARENT_CID, VsockCid};
pub use fd_stream::FdStream;
pub use hybrid::HybridError;
pub use listener::{Accepted, BindError, Listener};
pub use stream::{ConnectError, PeerAddr, Stream};
