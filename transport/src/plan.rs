//! The address plan: the vsock CIDs of the two sides and the ports the daemons listen on and dial
//! by default. vsockproxy's built-in configuration and kv-server's default listener are written
//! from these constants, so the two sides cannot disagree. The example configurations, envoy.yaml,
//! the terraform module and the scripts spell the same numbers by hand.
//!
//! | constant | value | where it comes from |
//! |---|---|---|
//! | [`PARENT_CID`] | 3 | Nitro: the parent instance as seen from an enclave (`src/endpoint.rs` names the sources) |
//! | [`ENCLAVE_CID`] | 16 | ours: `nitro-cli run-enclave --enclave-cid 16` (the terraform module's `enclave_cid` default, scripts/run-local.sh) |
//! | [`KV_SERVER_PORT`] | 50051 | kv-server's gRPC port: vsock in the enclave, and the ingress vsockproxy offers envoy on the parent's loopback |
//! | [`EGRESS_SOCKS5_PORT`] | 8888 | vsockproxy's SOCKS5 listener on the parent's vsock: the enclave's S3, SSM and other outbound calls |
//! | [`PROXY_ADMIN_PORT`] | 9901 | vsockproxy's admin HTTP (health, readiness, metrics) on the parent's loopback |

use std::net::{IpAddr, Ipv4Addr};

use crate::{Endpoint, Host, VsockCid};

pub use crate::endpoint::PARENT_CID;

/// The enclave's CID in the reference deployment (given to `nitro-cli run-enclave`).
pub const ENCLAVE_CID: u32 = 16;

/// kv-server's gRPC port.
pub const KV_SERVER_PORT: u16 = 50051;

/// vsockproxy's SOCKS5 egress port on the parent's vsock.
pub const EGRESS_SOCKS5_PORT: u32 = 8888;

/// vsockproxy's admin HTTP port on the parent's loopback.
pub const PROXY_ADMIN_PORT: u16 = 9901;

/// `tcp://127.0.0.1:PORT`: a port on this machine's loopback.
pub fn loopback(port: u16) -> Endpoint {
    Endpoint::Tcp { host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), port }
}

/// `vsock://any:PORT`: a vsock listener on every local CID.
pub fn vsock_any(port: u32) -> Endpoint {
    Endpoint::Vsock { cid: VsockCid::Any, port }
}

/// `vsock://16:50051`: kv-server in the enclave, as the parent dials it.
pub fn enclave_kv_server() -> Endpoint {
    Endpoint::Vsock { cid: VsockCid::Id(ENCLAVE_CID), port: u32::from(KV_SERVER_PORT) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_reads_as_the_documented_endpoints() {
        assert_eq!(loopback(KV_SERVER_PORT).to_string(), "tcp://127.0.0.1:50051");
        assert_eq!(loopback(PROXY_ADMIN_PORT).to_string(), "tcp://127.0.0.1:9901");
        assert_eq!(vsock_any(EGRESS_SOCKS5_PORT).to_string(), "vsock://any:8888");
        assert_eq!(vsock_any(u32::from(KV_SERVER_PORT)).to_string(), "vsock://any:50051");
        assert_eq!(enclave_kv_server().to_string(), "vsock://16:50051");
        assert_eq!(
            "vsock://parent:8888".parse::<Endpoint>().unwrap().with_parent_cid(PARENT_CID).to_string(),
            "vsock://3:8888"
        );
    }
}
