//! Parsing and printing of endpoint addresses (`vsock://`, `unix://`, `tcp://`, `vsock-hybrid://`).
//!
//! The vsock CIDs that have a name, and where their values come from:
//!
//! | spelling | value | source |
//! |---|---|---|
//! | `any` | [`CID_ANY`] = `u32::MAX` | `VMADDR_CID_ANY`, `<linux/vm_sockets.h>`: listen on every local CID |
//! | `parent` | [`PARENT_CID`] = 3 until resolved | the parent instance as seen from a Nitro Enclave (AWS Nitro Enclaves user guide; `VSOCK_CID 3` in aws-nitro-enclaves-sdk-bootstrap `init/init.c`) |
//!
//! `parent` stays a name until [`Endpoint::with_parent_cid`] resolves it, because the parent is
//! not always CID 3: QEMU's `nitro-enclave` machine forwards only connections to CID 2
//! (`VMADDR_CID_HOST`), and enclave-init tells the application which one applies
//! (`ENCLAVE_PARENT_CID`, docs/kv-server.md). enclave-init keeps its own copy of the value 3
//! (`enclave/init/src/wire.rs`) since it links nothing but libc.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

/// `VMADDR_CID_ANY`: listen on every CID of this machine.
pub const CID_ANY: u32 = u32::MAX;

/// The parent instance's CID as seen from inside a Nitro Enclave: what an unresolved `parent`
/// dials.
pub const PARENT_CID: u32 = 3;

/// The context id half of a vsock address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VsockCid {
    /// `any`: accept on every local CID (listeners only).
    Any,
    /// `parent`: the parent instance as seen from the enclave (dial only). [`PARENT_CID`] until
    /// [`Endpoint::with_parent_cid`] names the CID the enclave was actually given.
    Parent,
    /// A numeric CID, taken literally (16 is our enclave by convention).
    Id(u32),
}

impl VsockCid {
    /// The raw value handed to the kernel.
    pub fn raw(self) -> u32 {
        match self {
            VsockCid::Any => CID_ANY,
            VsockCid::Parent => PARENT_CID,
            VsockCid::Id(id) => id,
        }
    }
}

/// The host half of a `tcp://` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name; resolved when dialing. Listeners only accept `localhost` as a name.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A place to listen on or to dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Vsock {
        cid: VsockCid,
        port: u32,
    },
    Unix(PathBuf),
    Tcp {
        host: Host,
        port: u16,
    },
    /// A guest's vsock port reached through the host-side Unix socket of a VMM:
    /// connect to `path`, send `CONNECT <port>\n`, expect `OK <n>\n`.
    HybridVsock {
        path: PathBuf,
        port: u32,
    },
}

/// Why an endpoint string was refused. The message names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {input:?}: expected SCHEME://ADDRESS with scheme vsock, unix, tcp or vsock-hybrid")]
    NoScheme { input: String },
    #[error("endpoint {input:?}: unknown scheme {scheme:?} (expected vsock, unix, tcp or vsock-hybrid)")]
    UnknownScheme { input: String, scheme: String },
    #[error("endpoint {input:?}: missing :PORT")]
    MissingPort { input: String },
    #[error("endpoint {input:?}: port {port:?} is not a number in 0..={max}")]
    BadPort { input: String, port: String, max: u32 },
    #[error(
        "endpoint {input:?}: vsock CID {cid:?} must be a number, `any` or `parent`; vsock has no host \
         names (`parent` is the parent instance as seen from an enclave, CID 3 on Nitro; the enclave \
         CID is set by `nitro-cli run-enclave --enclave-cid`)"
    )]
    BadCid { input: String, cid: String },
    #[error("endpoint {input:?}: unix socket path must be absolute (unix:///path/to/socket)")]
    RelativePath { input: String },
    #[error("endpoint {input:?}: missing host")]
    MissingHost { input: String },
    #[error("endpoint {input:?}: bad IPv6 literal {host:?}")]
    BadIpv6 { input: String, host: String },
    #[error("endpoint {input:?}: bad host name {host:?}")]
    BadHost { input: String, host: String },
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let owned = || input.to_string();
        let (scheme, rest) =
            input.split_once("://").ok_or_else(|| EndpointError::NoScheme { input: owned() })?;
        match scheme.to_ascii_lowercase().as_str() {
            "vsock" => {
                let (cid, port) =
                    rest.rsplit_once(':').ok_or_else(|| EndpointError::MissingPort { input: owned() })?;
                let cid = if cid.eq_ignore_ascii_case("any") {
                    VsockCid::Any
                } else if cid.eq_ignore_ascii_case("parent") {
                    VsockCid::Parent
                } else {
                    VsockCid::Id(
                        cid.parse()
                            .map_err(|_| EndpointError::BadCid { input: owned(), cid: cid.to_string() })?,
                    )
                };
                Ok(Endpoint::Vsock { cid, port: parse_port(input, port, u32::MAX)? })
            }
            "unix" => {
                let path = absolute_path(input, rest)?;
                Ok(Endpoint::Unix(path))
            }
            "vsock-hybrid" => {
                let (path, port) =
                    rest.rsplit_once(':').ok_or_else(|| EndpointError::MissingPort { input: owned() })?;
                Ok(Endpoint::HybridVsock {
                    path: absolute_path(input, path)?,
                    port: parse_port(input, port, u32::MAX)?,
                })
            }
            "tcp" => {
                let (host, port) = split_host_port(input, rest)?;
                let port = parse_port(input, port, u16::MAX as u32)? as u16;
                Ok(Endpoint::Tcp { host, port })
            }
            other => Err(EndpointError::UnknownScheme { input: owned(), scheme: other.to_string() }),
        }
    }
}

fn absolute_path(input: &str, path: &str) -> Result<PathBuf, EndpointError> {
    if !path.starts_with('/') {
        return Err(EndpointError::RelativePath { input: input.to_string() });
    }
    Ok(PathBuf::from(path))
}

fn parse_port(input: &str, port: &str, max: u32) -> Result<u32, EndpointError> {
    let bad = || EndpointError::BadPort { input: input.to_string(), port: port.to_string(), max };
    if port.is_empty() {
        return Err(EndpointError::MissingPort { input: input.to_string() });
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let value: u64 = port.parse().map_err(|_| bad())?;
    if value > max as u64 {
        return Err(bad());
    }
    Ok(value as u32)
}

/// Splits `HOST:PORT` where HOST may be `[v6]`, an IPv4 literal or a name.
pub(crate) fn split_host_port<'a>(input: &str, rest: &'a str) -> Result<(Host, &'a str), EndpointError> {
    if let Some(after) = rest.strip_prefix('[') {
        let (v6, tail) = after
            .split_once(']')
            .ok_or_else(|| EndpointError::BadIpv6 { input: input.to_string(), host: rest.to_string() })?;
        let ip: Ipv6Addr = v6
            .parse()
            .map_err(|_| EndpointError::BadIpv6 { input: input.to_string(), host: v6.to_string() })?;
        let port =
            tail.strip_prefix(':').ok_or_else(|| EndpointError::MissingPort { input: input.to_string() })?;
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    let (host, port) =
        rest.rsplit_once(':').ok_or_else(|| EndpointError::MissingPort { input: input.to_string() })?;
    if host.is_empty() {
        return Err(EndpointError::MissingHost { input: input.to_string() });
    }
    if host.contains(':') {
        return Err(EndpointError::BadIpv6 { input: input.to_string(), host: host.to_string() });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((Host::Ip(ip), port));
    }
    let valid = host.len() <= 253
        && host.split('.').enumerate().all(|(i, label)| {
            (!label.is_empty() || i == host.split('.').count() - 1 && i > 0)
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(EndpointError::BadHost { input: input.to_string(), host: host.to_string() });
    }
    Ok((Host::Name(host.to_ascii_lowercase()), port))
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Vsock { cid: VsockCid::Any, port } => write!(f, "vsock://any:{port}"),
            Endpoint::Vsock { cid: VsockCid::Parent, port } => write!(f, "vsock://parent:{port}"),
            Endpoint::Vsock { cid: VsockCid::Id(cid), port } => write!(f, "vsock://{cid}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::HybridVsock { path, port } => write!(f, "vsock-hybrid://{}:{port}", path.display()),
        }
    }
}

impl Endpoint {
    /// True for transports that need `/dev/vsock` on this machine.
    pub fn is_vsock(&self) -> bool {
        matches!(self, Endpoint::Vsock { .. })
    }

    /// True for `vsock://parent:PORT` not yet resolved by [`Endpoint::with_parent_cid`].
    pub fn names_parent(&self) -> bool {
        matches!(self, Endpoint::Vsock { cid: VsockCid::Parent, .. })
    }

    /// `vsock://parent:PORT` becomes `vsock://CID:PORT`; every other endpoint (a numeric CID
    /// included) is returned unchanged.
    pub fn with_parent_cid(self, cid: u32) -> Endpoint {
        match self {
            Endpoint::Vsock { cid: VsockCid::Parent, port } => {
                Endpoint::Vsock { cid: VsockCid::Id(cid), port }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ok(s: &str) -> Endpoint {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_form_and_prints_it_back() {
        for s in [
            "vsock://16:50051",
            "vsock://any:8888",
            "vsock://parent:8888",
            "unix:///run/kv.sock",
            "tcp://127.0.0.1:50051",
            "tcp://[::1]:4317",
            "tcp://kms.us-east-1.amazonaws.com:443",
            "vsock-hybrid:///tmp/fc/v.sock:5000",
        ] {
            assert_eq!(ok(s).to_string(), s);
        }
        assert_eq!(ok("vsock://ANY:1"), Endpoint::Vsock { cid: VsockCid::Any, port: 1 });
        assert_eq!(
            ok("tcp://10.0.0.1:80"),
            Endpoint::Tcp { host: Host::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))), port: 80 }
        );
        assert_eq!(ok("tcp://Example.COM:80").to_string(), "tcp://example.com:80");
    }

    #[test]
    fn host_as_cid_is_explained() {
        let err = "vsock://localhost:8000".parse::<Endpoint>().unwrap_err();
        assert!(matches!(err, EndpointError::BadCid { .. }));
        assert!(err.to_string().contains("no host names"), "{err}");
        assert!(err.to_string().contains("a number, `any` or `parent`"), "{err}");
    }

    #[test]
    fn parent_is_a_name_until_resolved() {
        let parent = ok("vsock://Parent:8888");
        assert_eq!(parent, Endpoint::Vsock { cid: VsockCid::Parent, port: 8888 });
        assert_eq!(parent.to_string(), "vsock://parent:8888");
        assert!(parent.names_parent());
        assert_eq!(VsockCid::Parent.raw(), PARENT_CID);
        assert_eq!(PARENT_CID, 3);

        let resolved = parent.with_parent_cid(2);
        assert_eq!(resolved, Endpoint::Vsock { cid: VsockCid::Id(2), port: 8888 });
        assert_eq!(resolved.to_string(), "vsock://2:8888");
        assert!(!resolved.names_parent());

        // A numeric CID means that CID, whatever the parent is.
        for literal in ["vsock://3:4317", "vsock://any:1", "tcp://127.0.0.1:1", "unix:///x"] {
            assert_eq!(ok(literal).with_parent_cid(2), ok(literal), "{literal}");
        }
    }

    #[test]
    fn rejects_bad_input_with_the_input_named() {
        for (s, what) in [
            ("127.0.0.1:80", "SCHEME://"),
            ("http://x:1", "unknown scheme"),
            ("tcp://127.0.0.1", "missing :PORT"),
            ("tcp://127.0.0.1:", "missing :PORT"),
            ("tcp://127.0.0.1:65536", "not a number"),
            ("tcp://127.0.0.1:-1", "not a number"),
            ("tcp://:80", "missing host"),
            ("tcp://::1:80", "IPv6"),
            ("tcp://[::1:80", "IPv6"),
            ("tcp://[zz]:80", "IPv6"),
            ("tcp://a b:80", "bad host"),
            ("unix://relative/path", "absolute"),
            ("vsock://3", "missing :PORT"),
            ("vsock://-1:80", "CID"),
            ("vsock://3:4294967296", "not a number"),
            ("vsock-hybrid:///tmp/v.sock", "missing :PORT"),
        ] {
            let err = s.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(what), "{s}: {err}");
            assert!(err.contains(s), "{s}: error does not name input: {err}");
        }
    }
}
