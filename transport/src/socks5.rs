//! SOCKS5 (RFC 1928) wire format: the server side used by vsockproxy's egress listener and the
//! client side used by kv-server to dial out through the parent.
//!
//! Only what this project needs: no-auth (method 0x00), CONNECT, and the three address types
//! (IPv4, IPv6, domain name). BIND and UDP ASSOCIATE are parsed so that the server can answer
//! them with "command not supported" instead of closing silently.
//!
//! ```text
//! greeting  client -> server   VER=5 NMETHODS METHODS[NMETHODS]
//! choice    server -> client   VER=5 METHOD              (0x00 no-auth, 0xFF none acceptable)
//! request   client -> server   VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT
//! reply     server -> client   VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT
//! ATYP      1 = IPv4 (4 bytes), 3 = domain (length byte + name), 4 = IPv6 (16 bytes)
//! ```
//!
//! The parsers ([`parse_greeting`], [`parse_request`], [`parse_reply`]) are pure functions over a
//! byte slice, so the fuzz targets and property tests exercise exactly the code the async
//! functions run. They return `Ok(None)` when more bytes are needed and never panic.
//!
//! The async functions read exactly the bytes of each handshake message and no more, so data a
//! client pipelines behind its request stays in the stream for the data path.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version byte that starts every SOCKS5 message.
pub const VERSION: u8 = 5;
/// Authentication method "no authentication required".
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method selection "no acceptable methods".
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

const CMD_CONNECT: u8 = 1;
const CMD_BIND: u8 = 2;
const CMD_UDP_ASSOCIATE: u8 = 3;

const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// Longest possible request: header (4) + domain length byte (1) + 255-byte name + port (2).
pub const MAX_REQUEST_LEN: usize = 4 + 1 + 255 + 2;

/// A destination as the client names it: an address, or a name for the server to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Ip(SocketAddr),
    /// A domain name (1 to 255 printable ASCII bytes, not resolved) and a port.
    Domain(String, u16),
}

impl Address {
    pub fn port(&self) -> u16 {
        match self {
            Address::Ip(addr) => addr.port(),
            Address::Domain(_, port) => *port,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(addr) => write!(f, "{addr}"),
            Address::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Ip(addr)
    }
}

/// The REP field of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplyCode {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

impl ReplyCode {
    /// The code for a reply byte, or `None` for the unassigned values 9..=255.
    pub fn from_u8(byte: u8) -> Option<ReplyCode> {
        Some(match byte {
            0 => ReplyCode::Succeeded,
            1 => ReplyCode::GeneralFailure,
            2 => ReplyCode::NotAllowed,
            3 => ReplyCode::NetworkUnreachable,
            4 => ReplyCode::HostUnreachable,
            5 => ReplyCode::ConnectionRefused,
            6 => ReplyCode::TtlExpired,
            7 => ReplyCode::CommandNotSupported,
            8 => ReplyCode::AddressTypeNotSupported,
            _ => return None,
        })
    }

    /// The reply a server should send when dialing the destination failed with `err`.
    ///
    /// Timeouts map to "TTL expired", the code RFC 1928 reserves for a destination that did not
    /// answer in time, which is what clients such as curl report as a timeout.
    pub fn for_connect_error(err: &io::Error) -> ReplyCode {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => ReplyCode::ConnectionRefused,
            io::ErrorKind::TimedOut => ReplyCode::TtlExpired,
            io::ErrorKind::HostUnreachable => ReplyCode::HostUnreachable,
            io::ErrorKind::NetworkUnreachable => ReplyCode::NetworkUnreachable,
            io::ErrorKind::PermissionDenied => ReplyCode::NotAllowed,
            _ => ReplyCode::GeneralFailure,
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ReplyCode::Succeeded => "succeeded",
            ReplyCode::GeneralFailure => "general SOCKS server failure",
            ReplyCode::NotAllowed => "connection not allowed by ruleset",
            ReplyCode::NetworkUnreachable => "network unreachable",
            ReplyCode::HostUnreachable => "host unreachable",
            ReplyCode::ConnectionRefused => "connection refused",
            ReplyCode::TtlExpired => "TTL expired",
            ReplyCode::CommandNotSupported => "command not supported",
            ReplyCode::AddressTypeNotSupported => "address type not supported",
        };
        write!(f, "{text} (0x{:02x})", *self as u8)
    }
}

/// The CMD field of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
    /// Any other value; the server answers it with [`ReplyCode::CommandNotSupported`].
    Other(u8),
}

impl Command {
    pub fn from_u8(byte: u8) -> Command {
        match byte {
            CMD_CONNECT => Command::Connect,
            CMD_BIND => Command::Bind,
            CMD_UDP_ASSOCIATE => Command::UdpAssociate,
            other => Command::Other(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Command::Connect => CMD_CONNECT,
            Command::Bind => CMD_BIND,
            Command::UdpAssociate => CMD_UDP_ASSOCIATE,
            Command::Other(byte) => byte,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Connect => f.write_str("CONNECT"),
            Command::Bind => f.write_str("BIND"),
            Command::UdpAssociate => f.write_str("UDP ASSOCIATE"),
            Command::Other(byte) => write!(f, "unknown command 0x{byte:02x}"),
        }
    }
}

/// The client's first message: the authentication methods it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub methods: Vec<u8>,
}

impl Greeting {
    pub fn offers_no_auth(&self) -> bool {
        self.methods.contains(&METHOD_NO_AUTH)
    }
}

/// A client's request: what to do and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub dest: Address,
}

/// A server's reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The raw REP byte; see [`ReplyCode::from_u8`].
    pub code: u8,
    pub bound: Address,
}

/// What is wrong with a SOCKS5 message (either direction).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first byte is not 5 (a SOCKS4 client, or not SOCKS at all).
    #[error("unsupported SOCKS version {0} (only 5 is supported)")]
    UnsupportedVersion(u8),
    #[error("greeting offers no authentication methods (NMETHODS = 0)")]
    NoMethods,
    #[error("reserved byte is 0x{0:02x}, must be 0")]
    Reserved(u8),
    #[error("unknown address type 0x{0:02x}")]
    AddressType(u8),
    #[error("empty domain name")]
    EmptyDomain,
    #[error("domain name contains byte 0x{byte:02x} at offset {offset} (only printable ASCII is allowed)")]
    DomainByte { byte: u8, offset: usize },
    #[error("domain name is {0} bytes long (at most 255 fit in a SOCKS5 message)")]
    DomainTooLong(usize),
}

/// Why a SOCKS5 handshake failed, and on which side.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    /// Server side: the client's greeting could not be parsed.
    #[error("malformed SOCKS5 greeting from client: {0}")]
    ClientGreeting(#[source] ParseError),
    /// Server side: the client's request could not be parsed.
    #[error("malformed SOCKS5 request from client: {0}")]
    ClientRequest(#[source] ParseError),
    /// Server side: the client offered only methods other than no-auth; it was sent 0xFF.
    #[error(
        "SOCKS5 client offers no acceptable authentication method (offered {offered:02x?}, only no-auth 0x00 is supported)"
    )]
    NoAcceptableAuth { offered: Vec<u8> },
    /// Server side: reading from or writing to the client failed (including EOF mid-handshake).
    #[error("SOCKS5 handshake with client: {0}")]
    ClientIo(#[source] io::Error),
    /// Client side: the server chose a method other than no-auth.
    #[error("SOCKS5 server did not accept no-auth (it chose method 0x{0:02x})")]
    ServerAuth(u8),
    /// Client side: the server's method choice or reply could not be parsed.
    #[error("malformed SOCKS5 reply from server: {0}")]
    ServerReply(#[source] ParseError),
    /// Client side: the server answered the request with an error code.
    #[error("SOCKS5 server refused CONNECT to {dest}: {code}")]
    ServerRefused { dest: Address, code: ReplyCode },
    /// Client side: the server answered with an unassigned reply code.
    #[error("SOCKS5 server refused CONNECT to {dest} with unknown reply code 0x{code:02x}")]
    ServerRefusedUnknown { dest: Address, code: u8 },
    /// Client side: the destination cannot be encoded (e.g. a name longer than 255 bytes).
    #[error("cannot send SOCKS5 request for {dest}: {source}")]
    Destination { dest: Address, source: ParseError },
    /// Client side: reading from or writing to the server failed (including EOF mid-handshake).
    #[error("SOCKS5 handshake with server: {0}")]
    ServerIo(#[source] io::Error),
}

impl Socks5Error {
    /// A short, stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Socks5Error::ClientGreeting(_) | Socks5Error::ClientRequest(_) => "malformed",
            Socks5Error::NoAcceptableAuth { .. } | Socks5Error::ServerAuth(_) => "auth",
            Socks5Error::ClientIo(_) | Socks5Error::ServerIo(_) => "io",
            Socks5Error::ServerReply(_) => "malformed",
            Socks5Error::ServerRefused { .. } | Socks5Error::ServerRefusedUnknown { .. } => "refused",
            Socks5Error::Destination { .. } => "destination",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parsers and encoders.

/// Parses a client greeting from the start of `buf`.
///
/// Returns the greeting and the number of bytes it used, `Ok(None)` if `buf` is a proper prefix
/// of a greeting, or an error as soon as the bytes seen cannot start a valid greeting.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<(Greeting, usize)>, ParseError> {
    let Some(&version) = buf.first() else { return Ok(None) };
    if version != VERSION {
        return Err(ParseError::UnsupportedVersion(version));
    }
    let Some(&nmethods) = buf.get(1) else { return Ok(None) };
    if nmethods == 0 {
        return Err(ParseError::NoMethods);
    }
    let end = 2 + usize::from(nmethods);
    match buf.get(2..end) {
        Some(methods) => Ok(Some((Greeting { methods: methods.to_vec() }, end))),
        None => Ok(None),
    }
}

/// Parses a client request from the start of `buf` (same contract as [`parse_greeting`]).
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let Some(&version) = buf.first() else { return Ok(None) };
    if version != VERSION {
        return Err(ParseError::UnsupportedVersion(version));
    }
    let Some(&cmd) = buf.get(1) else { return Ok(None) };
    Ok(parse_tail(buf)?.map(|(dest, used)| (Request { command: Command::from_u8(cmd), dest }, used)))
}

/// Parses a server reply from the start of `buf` (same contract as [`parse_greeting`]).
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ParseError> {
    let Some(&version) = buf.first() else { return Ok(None) };
    if version != VERSION {
        return Err(ParseError::UnsupportedVersion(version));
    }
    let Some(&code) = buf.get(1) else { return Ok(None) };
    Ok(parse_tail(buf)?.map(|(bound, used)| (Reply { code, bound }, used)))
}

/// Requests and replies share their layout after the second byte: RSV ATYP ADDR PORT.
fn parse_tail(buf: &[u8]) -> Result<Option<(Address, usize)>, ParseError> {
    let Some(&reserved) = buf.get(2) else { return Ok(None) };
    if reserved != 0 {
        return Err(ParseError::Reserved(reserved));
    }
    let Some(&atyp) = buf.get(3) else { return Ok(None) };
    let rest = &buf[4..];
    let (dest, used) = match atyp {
        ATYP_IPV4 => {
            let Some(bytes) = rest.get(..6) else { return Ok(None) };
            let ip = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
            let port = u16::from_be_bytes([bytes[4], bytes[5]]);
            (Address::Ip(SocketAddr::V4(SocketAddrV4::new(ip, port))), 6)
        }
        ATYP_IPV6 => {
            let Some(bytes) = rest.get(..18) else { return Ok(None) };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[..16]);
            let port = u16::from_be_bytes([bytes[16], bytes[17]]);
            (Address::Ip(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, 0))), 18)
        }
        ATYP_DOMAIN => {
            let Some(&len) = rest.first() else { return Ok(None) };
            let len = usize::from(len);
            if len == 0 {
                return Err(ParseError::EmptyDomain);
            }
            // Check the name bytes already received, so garbage is refused without waiting.
            let available = &rest[1..rest.len().min(1 + len)];
            check_domain_bytes(available)?;
            let Some(bytes) = rest.get(1..1 + len + 2) else { return Ok(None) };
            let name = &bytes[..len];
            // check_domain_bytes admitted printable ASCII only, so this conversion cannot fail;
            // map the impossible case to an error anyway rather than panic.
            let name = std::str::from_utf8(name)
                .map_err(|_| ParseError::DomainByte { byte: 0x80, offset: 0 })?
                .to_owned();
            let port = u16::from_be_bytes([bytes[len], bytes[len + 1]]);
            (Address::Domain(name, port), 1 + len + 2)
        }
        other => return Err(ParseError::AddressType(other)),
    };
    Ok(Some((dest, 4 + used)))
}

/// A SOCKS5 domain name is carried as raw bytes; allow only printable ASCII without spaces so that
/// NUL, control characters, and bytes that other layers might interpret never reach DNS or logs.
fn check_domain_bytes(name: &[u8]) -> Result<(), ParseError> {
    match name.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        Some(offset) => Err(ParseError::DomainByte { byte: name[offset], offset }),
        None => Ok(()),
    }
}

/// Encodes a greeting offering `methods` (1 to 255 of them).
pub fn encode_greeting(methods: &[u8]) -> Result<Vec<u8>, ParseError> {
    let n = u8::try_from(methods.len()).map_err(|_| ParseError::NoMethods)?;
    if n == 0 {
        return Err(ParseError::NoMethods);
    }
    let mut out = Vec::with_capacity(2 + methods.len());
    out.extend_from_slice(&[VERSION, n]);
    out.extend_from_slice(methods);
    Ok(out)
}

/// Encodes a request. Fails only for a domain name that is empty, too long or not printable ASCII.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, ParseError> {
    let mut out = vec![VERSION, request.command.to_u8(), 0];
    encode_address(&mut out, &request.dest)?;
    Ok(out)
}

/// Encodes a reply; `bound` defaults to 0.0.0.0:0 as RFC 1928 allows when there is none to report.
pub fn encode_reply(code: ReplyCode, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut out = vec![VERSION, code as u8, 0];
    // An IP address always encodes.
    let _ = encode_address(&mut out, &Address::Ip(bound));
    out
}

fn encode_address(out: &mut Vec<u8>, addr: &Address) -> Result<(), ParseError> {
    match addr {
        Address::Ip(SocketAddr::V4(a)) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.ip().octets());
        }
        Address::Ip(SocketAddr::V6(a)) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.ip().octets());
        }
        Address::Domain(name, _) => {
            if name.is_empty() {
                return Err(ParseError::EmptyDomain);
            }
            let len = u8::try_from(name.len()).map_err(|_| ParseError::DomainTooLong(name.len()))?;
            check_domain_bytes(name.as_bytes())?;
            out.push(ATYP_DOMAIN);
            out.push(len);
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    Ok(())
}

/// How many bytes the message starting in `buf` needs at least, judging from the bytes present.
/// Only called after the parser asked for more, so the answer is larger than `buf.len()`.
fn greeting_needs(buf: &[u8]) -> usize {
    match buf.get(1) {
        None => 2,
        Some(&n) => 2 + usize::from(n),
    }
}

fn request_needs(buf: &[u8]) -> usize {
    match (buf.get(3), buf.get(4)) {
        (Some(&ATYP_IPV4), _) => 4 + 4 + 2,
        (Some(&ATYP_IPV6), _) => 4 + 16 + 2,
        (Some(&ATYP_DOMAIN), Some(&len)) => 4 + 1 + usize::from(len) + 2,
        // The header plus the first address byte (the domain length when ATYP is 3).
        _ => 5,
    }
}

/// The shape of [`parse_greeting`], [`parse_request`] and [`parse_reply`].
type Parser<T> = fn(&[u8]) -> Result<Option<(T, usize)>, ParseError>;

/// Reads exactly one message: grow `buf` to what the parser says is missing, never beyond it.
async fn read_message<S, T>(
    s: &mut S,
    parse: Parser<T>,
    needs: fn(&[u8]) -> usize,
) -> Result<Result<T, ParseError>, io::Error>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(32);
    loop {
        match parse(&buf) {
            Ok(Some((message, _))) => return Ok(Ok(message)),
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
        let want = needs(&buf);
        if want <= buf.len() {
            // The parser wants more than `needs` predicted: a bug here, not bad input.
            return Err(io::Error::other("SOCKS5 parser and length estimate disagree"));
        }
        let have = buf.len();
        buf.resize(want, 0);
        s.read_exact(&mut buf[have..]).await?;
    }
}

// ---------------------------------------------------------------------------------------------
// Server side.

/// Runs the server side of the handshake up to and including the client's request.
///
/// Selects no-auth (or answers 0xFF and fails when the client does not offer it), then reads the
/// request. BIND, UDP ASSOCIATE and unknown commands are returned as `Ok` so that the caller
/// answers them with [`ReplyCode::CommandNotSupported`]. An unknown address type is answered here
/// with [`ReplyCode::AddressTypeNotSupported`], because its length cannot be known. The caller
/// checks its policy, dials, and then calls [`send_reply`]. Wrap this in a timeout: a client that
/// stops sending stalls it.
pub async fn server_handshake<S>(s: &mut S) -> Result<Request, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting = read_message(s, parse_greeting, greeting_needs)
        .await
        .map_err(Socks5Error::ClientIo)?
        .map_err(Socks5Error::ClientGreeting)?;
    if !greeting.offers_no_auth() {
        // Best effort: the client should learn why, but the error to report is the refusal.
        let _ = s.write_all(&[VERSION, METHOD_NONE_ACCEPTABLE]).await;
        let _ = s.flush().await;
        return Err(Socks5Error::NoAcceptableAuth { offered: greeting.methods });
    }
    s.write_all(&[VERSION, METHOD_NO_AUTH]).await.map_err(Socks5Error::ClientIo)?;
    s.flush().await.map_err(Socks5Error::ClientIo)?;

    let request = read_message(s, parse_request, request_needs).await.map_err(Socks5Error::ClientIo)?;
    match request {
        Ok(request) => Ok(request),
        Err(e @ ParseError::AddressType(_)) => {
            let _ = send_reply(s, ReplyCode::AddressTypeNotSupported, None).await;
            Err(Socks5Error::ClientRequest(e))
        }
        Err(e) => {
            let _ = send_reply(s, ReplyCode::GeneralFailure, None).await;
            Err(Socks5Error::ClientRequest(e))
        }
    }
}

/// Sends the reply to a request; `bound` is the proxy's local address of the upstream connection
/// when known (0.0.0.0:0 otherwise).
pub async fn send_reply<S>(s: &mut S, code: ReplyCode, bound: Option<SocketAddr>) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    s.write_all(&encode_reply(code, bound)).await?;
    s.flush().await
}

// ---------------------------------------------------------------------------------------------
// Client side.

/// Runs the client side of a no-auth CONNECT to `dest` over an established stream to a SOCKS5
/// server. On `Ok` the stream carries the tunnelled connection.
pub async fn client_connect<S>(s: &mut S, dest: &Address) -> Result<(), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = encode_request(&Request { command: Command::Connect, dest: dest.clone() })
        .map_err(|source| Socks5Error::Destination { dest: dest.clone(), source })?;
    // Greeting and request in separate writes: the method choice must be read before the request
    // is sent, since a server that refuses no-auth closes the connection.
    s.write_all(&[VERSION, 1, METHOD_NO_AUTH]).await.map_err(Socks5Error::ServerIo)?;
    s.flush().await.map_err(Socks5Error::ServerIo)?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.map_err(Socks5Error::ServerIo)?;
    if choice[0] != VERSION {
        return Err(Socks5Error::ServerReply(ParseError::UnsupportedVersion(choice[0])));
    }
    if choice[1] != METHOD_NO_AUTH {
        return Err(Socks5Error::ServerAuth(choice[1]));
    }
    s.write_all(&request).await.map_err(Socks5Error::ServerIo)?;
    s.flush().await.map_err(Socks5Error::ServerIo)?;
    let reply = read_message(s, parse_reply, request_needs)
        .await
        .map_err(Socks5Error::ServerIo)?
        .map_err(Socks5Error::ServerReply)?;
    match ReplyCode::from_u8(reply.code) {
        Some(ReplyCode::Succeeded) => Ok(()),
        Some(code) => Err(Socks5Error::ServerRefused { dest: dest.clone(), code }),
        None => Err(Socks5Error::ServerRefusedUnknown { dest: dest.clone(), code: reply.code }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(a: [u8; 4], port: u16) -> Address {
        Address::Ip(SocketAddr::from((Ipv4Addr::from(a), port)))
    }

    #[test]
    fn greeting_parses_and_reports_length() {
        let (g, n) = parse_greeting(&[5, 2, 0, 2, 0xAA]).unwrap().unwrap();
        assert_eq!(g.methods, vec![0, 2]);
        assert_eq!(n, 4);
        assert!(g.offers_no_auth());
        assert!(!parse_greeting(&[5, 1, 2]).unwrap().unwrap().0.offers_no_auth());
    }

    #[test]
    fn greeting_errors() {
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(ParseError::UnsupportedVersion(4)));
        assert_eq!(parse_greeting(&[5, 0]), Err(ParseError::NoMethods));
        assert_eq!(parse_greeting(&[]), Ok(None));
        assert_eq!(parse_greeting(&[5]), Ok(None));
        assert_eq!(parse_greeting(&[5, 3, 0]), Ok(None));
    }

    #[test]
    fn request_ipv4_ipv6_domain() {
        let (r, n) = parse_request(&[5, 1, 0, 1, 127, 0, 0, 1, 0x01, 0xBB, 9]).unwrap().unwrap();
        assert_eq!(n, 10);
        assert_eq!(r, Request { command: Command::Connect, dest: v4([127, 0, 0, 1], 443) });

        let mut msg = vec![5, 1, 0, 4];
        msg.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        msg.extend_from_slice(&[0, 80]);
        let (r, n) = parse_request(&msg).unwrap().unwrap();
        assert_eq!(n, 22);
        assert_eq!(r.dest.to_string(), "[::1]:80");

        let mut msg = vec![5, 1, 0, 3, 11];
        msg.extend_from_slice(b"example.com");
        msg.extend_from_slice(&[0x1F, 0x90]);
        let (r, n) = parse_request(&msg).unwrap().unwrap();
        assert_eq!(n, msg.len());
        assert_eq!(r.dest, Address::Domain("example.com".into(), 8080));
        assert_eq!(r.dest.to_string(), "example.com:8080");
    }

    #[test]
    fn request_commands() {
        for (byte, cmd) in
            [(1, Command::Connect), (2, Command::Bind), (3, Command::UdpAssociate), (9, Command::Other(9))]
        {
            let (r, _) = parse_request(&[5, byte, 0, 1, 1, 2, 3, 4, 0, 1]).unwrap().unwrap();
            assert_eq!(r.command, cmd);
        }
    }

    #[test]
    fn request_errors() {
        assert_eq!(parse_request(&[4, 1, 0, 1]), Err(ParseError::UnsupportedVersion(4)));
        assert_eq!(parse_request(&[5, 1, 7, 1]), Err(ParseError::Reserved(7)));
        assert_eq!(parse_request(&[5, 1, 0, 2]), Err(ParseError::AddressType(2)));
        assert_eq!(parse_request(&[5, 1, 0, 3, 0, 0, 80]), Err(ParseError::EmptyDomain));
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 4, b'a', 0, b'b', b'c', 0, 80]),
            Err(ParseError::DomainByte { byte: 0, offset: 1 })
        );
        // A control byte is refused before the rest of the name arrives.
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 200, b'a', b'\n']),
            Err(ParseError::DomainByte { byte: b'\n', offset: 1 })
        );
        assert!(matches!(
            parse_request(&[5, 1, 0, 3, 3, b'a', 0xC3, 0xA9, 0, 80]),
            Err(ParseError::DomainByte { byte: 0xC3, .. })
        ));
        assert!(parse_request(&[5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80]).is_err());
    }

    #[test]
    fn encode_rejects_bad_domains() {
        let long = "a".repeat(256);
        let req = |name: &str| Request { command: Command::Connect, dest: Address::Domain(name.into(), 1) };
        assert_eq!(encode_request(&req(&long)), Err(ParseError::DomainTooLong(256)));
        assert_eq!(encode_request(&req("")), Err(ParseError::EmptyDomain));
        assert!(encode_request(&req("a\0b")).is_err());
        assert!(encode_request(&req(&"a".repeat(255))).is_ok());
    }

    #[test]
    fn reply_encoding() {
        assert_eq!(encode_reply(ReplyCode::NotAllowed, None), vec![5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
        let bound: SocketAddr = "[2001:db8::1]:1080".parse().unwrap();
        let bytes = encode_reply(ReplyCode::Succeeded, Some(bound));
        let (reply, n) = parse_reply(&bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(reply, Reply { code: 0, bound: Address::Ip(bound) });
    }

    #[test]
    fn reply_codes_round_trip() {
        for byte in 0..=8u8 {
            assert_eq!(ReplyCode::from_u8(byte).map(|c| c as u8), Some(byte));
        }
        assert_eq!(ReplyCode::from_u8(9), None);
        assert_eq!(ReplyCode::NotAllowed.to_string(), "connection not allowed by ruleset (0x02)");
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(ReplyCode::for_connect_error(&refused), ReplyCode::ConnectionRefused);
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(ReplyCode::for_connect_error(&timed_out), ReplyCode::TtlExpired);
    }

    /// Drives the real server and client functions against each other over an in-memory pipe.
    #[tokio::test]
    async fn client_and_server_agree() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let dest = Address::Domain("s3.us-east-1.amazonaws.com".into(), 443);
        let server_task = tokio::spawn(async move {
            let request = server_handshake(&mut server).await.unwrap();
            send_reply(&mut server, ReplyCode::Succeeded, Some("10.0.0.1:5555".parse().unwrap()))
                .await
                .unwrap();
            // Data after the handshake flows untouched.
            let mut buf = [0u8; 5];
            server.read_exact(&mut buf).await.unwrap();
            (request, buf)
        });
        client_connect(&mut client, &dest).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let (request, data) = server_task.await.unwrap();
        assert_eq!(request, Request { command: Command::Connect, dest });
        assert_eq!(&data, b"hello");
    }

    /// Optimistic clients send greeting, request and data in one write; the handshake must leave
    /// the data in the stream.
    #[tokio::test]
    async fn pipelined_data_is_not_consumed_by_the_handshake() {
        let (mut client, mut server) = tokio::io::duplex(256);
        let mut bytes = vec![5, 1, 0, 5, 1, 0, 3, 7];
        bytes.extend_from_slice(b"a.b.com");
        bytes.extend_from_slice(&[0, 80]);
        bytes.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        client.write_all(&bytes).await.unwrap();
        let request = server_handshake(&mut server).await.unwrap();
        assert_eq!(request.dest, Address::Domain("a.b.com".into(), 80));
        let mut rest = [0u8; 18];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.0\r\n\r\n");
    }

    #[tokio::test]
    async fn client_reports_server_refusal() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let server_task = tokio::spawn(async move {
            let request = server_handshake(&mut server).await.unwrap();
            send_reply(&mut server, ReplyCode::NotAllowed, None).await.unwrap();
            request
        });
        let dest = v4([169, 254, 169, 254], 80);
        let err = client_connect(&mut client, &dest).await.unwrap_err();
        assert!(matches!(&err, Socks5Error::ServerRefused { code: ReplyCode::NotAllowed, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "SOCKS5 server refused CONNECT to 169.254.169.254:80: connection not allowed by ruleset (0x02)"
        );
        assert_eq!(server_task.await.unwrap().dest, dest);
    }

    #[tokio::test]
    async fn server_refuses_auth_only_clients_with_ff() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[5, 1, 2]).await.unwrap();
        let err = server_handshake(&mut server).await.unwrap_err();
        assert!(matches!(&err, Socks5Error::NoAcceptableAuth { offered } if offered == &[2]), "{err}");
        let mut answer = [0u8; 2];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [5, 0xFF]);
    }

    #[tokio::test]
    async fn server_answers_unknown_address_type() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[5, 1, 0, 5, 1, 0, 9, 1, 2, 3]).await.unwrap();
        let err = server_handshake(&mut server).await.unwrap_err();
        assert!(matches!(err, Socks5Error::ClientRequest(ParseError::AddressType(9))), "{err}");
        let mut answer = [0u8; 12];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn server_returns_unsupported_commands_to_the_caller() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
        let request = server_handshake(&mut server).await.unwrap();
        assert_eq!(request.command, Command::UdpAssociate);
    }

    #[tokio::test]
    async fn server_reports_eof_mid_handshake_as_client_io() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[5, 1, 0, 5, 1, 0, 3, 20, b'a']).await.unwrap();
        client.shutdown().await.unwrap();
        let err = server_handshake(&mut server).await.unwrap_err();
        assert!(
            matches!(&err, Socks5Error::ClientIo(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err}"
        );
    }

    #[tokio::test]
    async fn server_rejects_socks4() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[4, 1, 0, 80, 127, 0, 0, 1, 0]).await.unwrap();
        let err = server_handshake(&mut server).await.unwrap_err();
        assert!(matches!(err, Socks5Error::ClientGreeting(ParseError::UnsupportedVersion(4))));
    }

    fn domain_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(0x21u8..=0x7e, 1..=255)
            .prop_map(|bytes| bytes.into_iter().map(char::from).collect())
    }

    fn address_strategy() -> impl Strategy<Value = Address> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| v4(ip, port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| Address::Ip(SocketAddr::from((Ipv6Addr::from(ip), port)))),
            (domain_strategy(), any::<u16>()).prop_map(|(name, port)| Address::Domain(name, port)),
        ]
    }

    fn command_strategy() -> impl Strategy<Value = Command> {
        any::<u8>().prop_map(Command::from_u8)
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_greeting(&bytes);
            let _ = parse_request(&bytes);
            let _ = parse_reply(&bytes);
        }

        /// Random tails behind a plausible header reach the address-type branches.
        #[test]
        fn plausible_headers_never_panic(cmd in any::<u8>(), atyp in prop_oneof![Just(1u8), Just(3), Just(4), any::<u8>()],
                                         tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![5, cmd, 0, atyp];
            bytes.extend_from_slice(&tail);
            for cut in 0..bytes.len() {
                let _ = parse_request(&bytes[..cut]);
                let _ = parse_reply(&bytes[..cut]);
            }
        }

        #[test]
        fn parsed_length_is_within_input(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, n))) = parse_request(&bytes) {
                prop_assert!(n <= bytes.len() && n <= MAX_REQUEST_LEN);
            }
            if let Ok(Some((_, n))) = parse_greeting(&bytes) {
                prop_assert!(n <= bytes.len());
            }
        }

        #[test]
        fn request_round_trip_and_prefixes(command in command_strategy(), dest in address_strategy(),
                                           trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
            let request = Request { command, dest };
            let mut bytes = encode_request(&request).unwrap();
            let len = bytes.len();
            for cut in 0..len {
                prop_assert_eq!(parse_request(&bytes[..cut]), Ok(None), "prefix of {} bytes", cut);
            }
            bytes.extend_from_slice(&trailing);
            prop_assert_eq!(parse_request(&bytes), Ok(Some((request, len))));
        }

        #[test]
        fn greeting_round_trip_and_prefixes(methods in proptest::collection::vec(any::<u8>(), 1..=255)) {
            let bytes = encode_greeting(&methods).unwrap();
            for cut in 0..bytes.len() {
                prop_assert_eq!(parse_greeting(&bytes[..cut]), Ok(None));
            }
            prop_assert_eq!(parse_greeting(&bytes), Ok(Some((Greeting { methods }, bytes.len()))));
        }

        #[test]
        fn reply_round_trip(code in 0u8..=8, bound in address_strategy()) {
            if let Address::Ip(addr) = bound {
                let code = ReplyCode::from_u8(code).unwrap();
                let bytes = encode_reply(code, Some(addr));
                prop_assert_eq!(parse_reply(&bytes), Ok(Some((Reply { code: code as u8, bound }, bytes.len()))));
            }
        }

        /// The async reader must stop exactly at the end of the request, whatever follows it.
        #[test]
        fn needs_never_overshoots(command in command_strategy(), dest in address_strategy()) {
            let bytes = encode_request(&Request { command, dest }).unwrap();
            let mut have = 0;
            while parse_request(&bytes[..have]).unwrap().is_none() {
                let want = request_needs(&bytes[..have]);
                prop_assert!(want > have && want <= bytes.len());
                have = want;
            }
            prop_assert_eq!(have, bytes.len());
        }
    }
}
