//! Egress destination policy: which hosts, addresses and ports the enclave may reach.
//!
//! Default deny. An allow rule names one destination kind and the ports it opens:
//!
//! ```toml
//! [[policy.allow]]
//! host = "*.amazonaws.com"      # exact name, or `*.` + suffix (whole labels only)
//! ports = ["443"]
//!
//! [[policy.allow]]
//! ip = "127.0.0.1"              # or cidr = "10.0.0.0/8"
//! ports = ["4317", "8000-8100"] # "*" means every port
//! ```
//!
//! Two checks, both needed for a name:
//! - [`Policy::check_name`] before DNS: only a `host` rule lets a name through, so a denied name is
//!   never even resolved (no DNS exfiltration). A name that is an IP literal in any spelling
//!   (`127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`, `[::ffff:127.0.0.1]`) is checked as that
//!   address instead.
//! - [`Policy::check_ip`] for an IP destination and for every address a name resolved to.
//!
//! Special addresses (loopback, link-local incl. IMDS, private, shared, unspecified, broadcast,
//! multicast, documentation and reserved ranges: [`SPECIAL_V4`] and [`SPECIAL_V6`], the one list)
//! are refused even when a `host` rule or a broad `cidr` matches. An address opens only to an
//! `ip`/`cidr` rule that lies wholly inside the *most specific* special range containing it: so
//! `cidr = "0.0.0.0/0"` opens the public IPv4 internet but not 127.0.0.1, `ip = "127.0.0.1"`
//! opens exactly the local collector, and `cidr = "169.254.0.0/16"` (or `fc00::/7`) opens
//! link-local (unique local) addresses but not IMDS inside them, which only a rule for IMDS
//! itself opens. Addresses are normalised first: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated
//! (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) IPv6
//! addresses are checked as the IPv4 address they carry.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

/// The `[policy]` table of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Allow rules; a destination passes if any rule allows it. Empty = deny everything.
    #[serde(default)]
    pub allow: Vec<RuleConfig>,
}

/// One `[[policy.allow]]` entry: exactly one of `host`, `cidr`, `ip`, and a non-empty `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `example.com` (exactly that name) or `*.example.com` (any name below it, not itself).
    #[serde(default)]
    pub host: Option<String>,
    /// An address block, `10.0.0.0/8` or `2001:db8::/32`; host bits must be zero.
    #[serde(default)]
    pub cidr: Option<String>,
    /// One address, `127.0.0.1` or `::1`.
    #[serde(default)]
    pub ip: Option<String>,
    /// Ports: `"443"`, a range `"8000-8100"`, or `"*"` for every port (1-65535). Required.
    #[serde(default)]
    pub ports: Vec<String>,
}

/// A rule in the configuration is invalid. Display: `policy.allow[3].cidr: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy.allow[{index}].{field}: {reason}")]
pub struct PolicyError {
    /// Position of the rule in `policy.allow`, from 0.
    pub index: usize,
    /// `host`, `cidr`, `ip`, `ports`, or `rule` when the rule as a whole is wrong.
    pub field: &'static str,
    pub reason: String,
}

/// Why a destination was refused. Display is one line for logs; [`Denied::kind`] is the label
/// for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No rule names this destination.
    #[error("policy denies {dest}: no allow rule matches it")]
    NoRule { dest: String },
    /// A rule names this destination, but not this port.
    #[error("policy denies {dest}: port {port} is not in the ports of the rules that match it")]
    Port { dest: String, port: u16 },
    /// The address is special (loopback, private, IMDS, ...) and no `ip`/`cidr` rule inside
    /// `block`, the most specific special range that contains it, names it.
    #[error("policy denies {dest}: {ip} is {range}, allowed only by an explicit ip/cidr rule within {block}")]
    SpecialAddress { dest: String, ip: IpAddr, range: &'static str, block: String },
    /// The name is not a valid host name (nor an IP address).
    #[error("policy denies {name:?}: invalid destination name: {reason}")]
    InvalidName { name: String, reason: &'static str },
}

impl Denied {
    /// One of `no_rule`, `port`, `special_address`, `invalid_name`.
    pub fn kind(&self) -> &'static str {
        match self {
            Denied::NoRule { .. } => "no_rule",
            Denied::Port { .. } => "port",
            Denied::SpecialAddress { .. } => "special_address",
            Denied::InvalidName { .. } => "invalid_name",
        }
    }
}

/// A validated policy, cheap to clone and safe to share between tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    target: Target,
    /// Inclusive port ranges.
    ports: Vec<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A normalised name (lowercase, no trailing dot).
    Exact(String),
    /// The suffix after `*.`, normalised: matches names with at least one more label.
    Suffix(String),
    /// An address block (an `ip` rule is a block of one address).
    Net(IpNet),
}

impl Rule {
    fn allows_port(&self, port: u16) -> bool {
        self.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }
}

impl Policy {
    /// Validates every rule; the first bad one is reported with its index and field.
    pub fn new(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        let rules = config.allow.iter().enumerate().map(|(i, rule)| compile_rule(i, rule));
        Ok(Policy { rules: rules.collect::<Result<_, _>>()? })
    }

    /// The policy with no rules: every destination is refused.
    pub fn deny_all() -> Policy {
        Policy { rules: Vec::new() }
    }

    /// Number of allow rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Checks a destination given by name, before resolving it.
    ///
    /// Passes only if a `host` rule matches the name and the port. A name that is an IP literal
    /// is checked as that address (see [`Policy::check_ip`]); after a pass the caller still checks
    /// every resolved address with `check_ip(Some(host), ..)`.
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), Denied> {
        let name = normalised(host);
        match parse_ip_literal(&name) {
            Some(Ok(ip)) => return self.check_addr(None, || format!("{host}:{port} (= {ip})"), ip, port),
            Some(Err(reason)) => return Err(Denied::InvalidName { name: host.to_owned(), reason }),
            None => {}
        }
        validate_name(&name).map_err(|reason| Denied::InvalidName { name: host.to_owned(), reason })?;
        let mut wrong_port = false;
        for rule in &self.rules {
            if name_matches(&rule.target, &name) {
                if rule.allows_port(port) {
                    return Ok(());
                }
                wrong_port = true;
            }
        }
        let dest = format!("{name}:{port}");
        Err(if wrong_port { Denied::Port { dest, port } } else { Denied::NoRule { dest } })
    }

    /// Checks an address: an IP destination (`name` = `None`) or an address that `name` resolved
    /// to. `host` rules apply through `name`; `ip`/`cidr` rules through the address.
    pub fn check_ip(&self, name: Option<&str>, ip: IpAddr, port: u16) -> Result<(), Denied> {
        let name = name.map(normalised);
        // Spelled out only for a refusal: every connection is checked, few are refused.
        let dest = || match &name {
            Some(name) => format!("{name}:{port} (resolved to {ip})"),
            None => format_socket(ip, port),
        };
        self.check_addr(name.as_deref(), dest, ip, port)
    }

    /// `dest` names the destination in a refusal.
    fn check_addr(
        &self,
        name: Option<&str>,
        dest: impl FnOnce() -> String,
        ip: IpAddr,
        port: u16,
    ) -> Result<(), Denied> {
        let ip = canonical_ip(ip);
        let special = narrowest_special(ip);
        let mut wrong_port = false;
        for rule in &self.rules {
            let matches = match (&rule.target, special) {
                // A special address opens only to a block inside its narrowest special range:
                // 169.254.0.0/16 does not name IMDS, fc00::/7 does not name fd00:ec2::254.
                (Target::Net(net), Some((range, _))) => net.contains(&ip) && range.contains(net),
                (Target::Net(net), None) => net.contains(&ip),
                (_, Some(_)) => false,
                (target, None) => name.is_some_and(|name| name_matches(target, name)),
            };
            if !matches {
                continue;
            }
            if rule.allows_port(port) {
                return Ok(());
            }
            wrong_port = true;
        }
        let dest = dest();
        Err(match special {
            _ if wrong_port => Denied::Port { dest, port },
            Some((block, range)) => Denied::SpecialAddress { dest, ip, range, block: block.to_string() },
            None => Denied::NoRule { dest },
        })
    }
}

fn format_socket(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}

fn name_matches(target: &Target, name: &str) -> bool {
    match target {
        Target::Exact(exact) => name == exact,
        // Whole labels only: the name must end with ".suffix" and have something before the dot.
        Target::Suffix(suffix) => {
            name.len() > suffix.len() + 1
                && name.ends_with(suffix.as_str())
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        Target::Net(_) => false,
    }
}

fn compile_rule(index: usize, rule: &RuleConfig) -> Result<Rule, PolicyError> {
    let err = |field: &'static str, reason: String| PolicyError { index, field, reason };
    let target = match (&rule.host, &rule.cidr, &rule.ip) {
        (Some(host), None, None) => compile_host(host).map_err(|reason| err("host", reason))?,
        (None, Some(cidr), None) => {
            let net = parse_net(cidr).map_err(|reason| err("cidr", format!("{cidr:?}: {reason}")))?;
            Target::Net(net)
        }
        (None, None, Some(ip)) => {
            let addr: IpAddr = ip.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| {
                err("ip", format!("{ip:?} is not an IP address (write e.g. \"127.0.0.1\" or \"::1\")"))
            })?;
            let addr = canonical_ip(addr);
            Target::Net(IpNet::from(addr))
        }
        (None, None, None) => {
            return Err(err("rule", "needs one of `host`, `cidr` or `ip`".into()));
        }
        _ => {
            return Err(err(
                "rule",
                "has more than one of `host`, `cidr` and `ip`; write one rule for each".into(),
            ));
        }
    };
    if rule.ports.is_empty() {
        return Err(err(
            "ports",
            "is required and must not be empty (e.g. [\"443\"], or [\"*\"] for any port)".into(),
        ));
    }
    let ports = rule
        .ports
        .iter()
        .map(|p| parse_ports(p).map_err(|reason| err("ports", format!("{p:?}: {reason}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule { target, ports })
}

fn compile_host(host: &str) -> Result<Target, String> {
    let name = normalise_name(host);
    let (wildcard, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name.as_str()),
    };
    if rest == "*" || name == "*" {
        return Err(format!(
            "{host:?}: a bare `*` would allow every name; list the domains (\"*.example.com\")"
        ));
    }
    if rest.contains('*') {
        return Err(format!("{host:?}: `*` is only allowed as the whole first label (\"*.example.com\")"));
    }
    if let Some(ip) = parse_ip_literal(rest) {
        return Err(match ip {
            Ok(ip) if !wildcard => format!("{host:?} is an IP address; use `ip = \"{ip}\"`"),
            _ => format!("{host:?}: a name cannot end in a numeric label"),
        });
    }
    validate_name(rest).map_err(|reason| format!("{host:?}: {reason}"))?;
    Ok(if wildcard { Target::Suffix(rest.to_owned()) } else { Target::Exact(rest.to_owned()) })
}

fn parse_ports(spec: &str) -> Result<(u16, u16), String> {
    let one = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(0) => Err("port 0 cannot be dialed".into()),
            Ok(port) => Ok(port),
            Err(_) => Err(format!("{s:?} is not a port number (1-65535)")),
        }
    };
    if spec == "*" {
        return Ok((1, u16::MAX));
    }
    match spec.split_once('-') {
        None => one(spec).map(|p| (p, p)),
        Some((lo, hi)) => {
            let (lo, hi) = (one(lo)?, one(hi)?);
            if lo > hi {
                return Err(format!("range starts above its end ({lo} > {hi})"));
            }
            Ok((lo, hi))
        }
    }
}

/// Lowercase, without one trailing dot (`Example.COM.` and `example.com` are the same name).
pub fn normalise_name(name: &str) -> String {
    normalised(name).into_owned()
}

/// [`normalise_name`] without a copy when `name` is already normal (the usual case: checked
/// and looked up for every SOCKS5 connection).
pub(crate) fn normalised(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Checks a normalised name: 1-253 bytes, labels of 1-63 bytes of `a-z 0-9 - _`.
pub(crate) fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > 253 {
        return Err("longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 bytes");
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return Err("a label contains a character other than a-z, 0-9, '-' and '_'");
        }
    }
    Ok(())
}

/// Reads a (normalised) name as an IP address the way the C library and browsers would:
/// `None` if it is not meant as one, `Some(Err)` if it looks like one but is not valid.
///
/// IPv4 follows `inet_aton`: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x); the last
/// part fills the remaining bytes (`127.1`, `2130706433`). A name whose last label is numeric is
/// taken as an IPv4 attempt (as browsers do), so `1.2.3.4.5` or `x.0x1` are refused as invalid
/// rather than sent to DNS. IPv6 may be bracketed; zone ids are refused.
pub fn parse_ip_literal(name: &str) -> Option<Result<IpAddr, &'static str>> {
    if let Some(inner) = name.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            return Some(Err("'[' without a closing ']'"));
        };
        return Some(
            inner.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| "invalid IPv6 address in brackets"),
        );
    }
    if name.contains(':') {
        return Some(
            name.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| "contains ':' but is not an IPv6 address"),
        );
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if !is_numeric_label(last) {
        return None;
    }
    Some(parse_inet_aton(name).map(IpAddr::V4).ok_or("looks like an IPv4 address but is not a valid one"))
}

fn is_numeric_label(label: &str) -> bool {
    if let Some(hex) = label.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit())
}

fn parse_inet_aton(name: &str) -> Option<Ipv4Addr> {
    let mut parts = [0u64; 4];
    let mut count = 0;
    for part in name.split('.') {
        if count == 4 {
            return None;
        }
        parts[count] = parse_aton_part(part)?;
        count += 1;
    }
    let (head, last) = (&parts[..count - 1], parts[count - 1]);
    if head.iter().any(|&p| p > 255) || last >= 1u64 << (8 * (5 - count)) {
        return None;
    }
    let mut value = last;
    for (i, &p) in head.iter().enumerate() {
        value |= p << (24 - 8 * i);
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_aton_part(part: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if part.is_empty() {
        return None;
    }
    if digits.is_empty() {
        return Some(0); // "0x" alone is 0 for inet_aton and browsers alike
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Maps IPv6 forms that carry an IPv4 address (mapped `::ffff:a.b.c.d`, translated
/// `::ffff:0:a.b.c.d` of RFC 2765/6052, compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) to that
/// IPv4 address; leaves everything else as it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return IpAddr::V4(embedded);
    }
    // `::` and `::1` are IPv6's own unspecified and loopback addresses, not compatible forms.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return IpAddr::V4(embedded);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return IpAddr::V4(embedded);
    }
    ip
}

/// An address block `addr/prefix` (ipnet does the arithmetic); the errors say what is wrong with
/// `text` in words a configuration's author can act on.
fn parse_net(text: &str) -> Result<IpNet, String> {
    let (addr, prefix) =
        text.split_once('/').ok_or("missing \"/prefix\" (for one address, use `ip = ...`)")?;
    let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let width = IpNet::from(addr).max_prefix_len();
    let net = prefix
        .parse()
        .ok()
        .and_then(|p| IpNet::new(addr, p).ok())
        .ok_or_else(|| format!("prefix {prefix:?} is not a number from 0 to {width}"))?;
    if let IpAddr::V6(v6) = addr
        && canonical_ip(addr) != addr
    {
        return Err(format!(
            "{v6} embeds an IPv4 address, which is checked as IPv4: write the block in IPv4"
        ));
    }
    if net.trunc() != net {
        return Err(format!("host bits are set; did you mean \"{}\"?", net.trunc()));
    }
    Ok(net)
}

/// Special-purpose ranges (IANA IPv4/IPv6 special-purpose registries plus the AWS ones): the one
/// list, documented in docs/vsockproxy.md (a test keeps the two equal). Where ranges nest (IMDS
/// inside link-local), an address belongs to the narrowest, and only a rule inside that one opens
/// it. IPv4 carried in IPv6 (`::ffff:0:0/96`, `::ffff:0:0:0/96`, `64:ff9b::/96`) is not listed:
/// such addresses are judged as the IPv4 address ([`canonical_ip`]).
pub const SPECIAL_V4: &[([u8; 4], u8, &str)] = &[
    ([169, 254, 169, 254], 32, "the instance metadata service (IMDS)"),
    ([169, 254, 169, 253], 32, "the Amazon-provided DNS server"),
    ([255, 255, 255, 255], 32, "the broadcast address"),
    ([0, 0, 0, 0], 8, "an unspecified (\"this network\") address"),
    ([10, 0, 0, 0], 8, "a private address"),
    ([100, 64, 0, 0], 10, "a shared (carrier-grade NAT) address"),
    ([127, 0, 0, 0], 8, "a loopback address"),
    ([169, 254, 0, 0], 16, "a link-local address"),
    ([172, 16, 0, 0], 12, "a private address"),
    ([192, 0, 0, 0], 24, "an IETF protocol assignment address"),
    ([192, 0, 2, 0], 24, "a documentation address"),
    ([192, 88, 99, 0], 24, "a 6to4 relay anycast address"),
    ([192, 168, 0, 0], 16, "a private address"),
    ([198, 18, 0, 0], 15, "a benchmarking address"),
    ([198, 51, 100, 0], 24, "a documentation address"),
    ([203, 0, 113, 0], 24, "a documentation address"),
    ([224, 0, 0, 0], 4, "a multicast address"),
    ([240, 0, 0, 0], 4, "a reserved address"),
];

pub const SPECIAL_V6: &[([u16; 8], u8, &str)] = &[
    ([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128, "the instance metadata service (IMDS)"),
    ([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23], 128, "the Amazon-provided DNS server"),
    ([0, 0, 0, 0, 0, 0, 0, 0], 128, "the unspecified address"),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "the loopback address"),
    ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "a local-use NAT64 address"),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard-only address"),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "a documentation address"),
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "an IETF protocol assignment address"),
    ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "a 6to4 address"),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "a documentation address"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "a unique local (private) address"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address"),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local address"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "a multicast address"),
];

// Every prefix above fits its family, checked when this compiles (`new_assert` is a `const fn`):
// the `new_assert`s below cannot fail.
const _: () = {
    let mut i = 0;
    while i < SPECIAL_V4.len() {
        let ([a, b, c, d], prefix, _) = SPECIAL_V4[i];
        Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix);
        i += 1;
    }
    let mut i = 0;
    while i < SPECIAL_V6.len() {
        let ([a, b, c, d, e, f, g, h], prefix, _) = SPECIAL_V6[i];
        Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix);
        i += 1;
    }
};

fn special_v4() -> impl Iterator<Item = (IpNet, &'static str)> {
    SPECIAL_V4.iter().map(|&(a, prefix, what)| (IpNet::V4(Ipv4Net::new_assert(a.into(), prefix)), what))
}

fn special_v6() -> impl Iterator<Item = (IpNet, &'static str)> {
    SPECIAL_V6.iter().map(|&(a, prefix, what)| (IpNet::V6(Ipv6Net::new_assert(a.into(), prefix)), what))
}

#[cfg(test)]
fn special_ranges() -> impl Iterator<Item = (IpNet, &'static str)> {
    special_v4().chain(special_v6())
}

/// The most specific special range containing `ip` (already canonical), with its description.
/// Only the list of `ip`'s family is searched: a range never contains an address of the other.
fn narrowest_special(ip: IpAddr) -> Option<(IpNet, &'static str)> {
    fn narrowest(
        ranges: impl Iterator<Item = (IpNet, &'static str)>,
        ip: IpAddr,
    ) -> Option<(IpNet, &'static str)> {
        ranges.filter(|(net, _)| net.contains(&ip)).max_by_key(|(net, _)| net.prefix_len())
    }
    match ip {
        IpAddr::V4(_) => narrowest(special_v4(), ip),
        IpAddr::V6(_) => narrowest(special_v6(), ip),
    }
}

/// What kind of special address `ip` (already canonical) is, if any (the narrowest range's name).
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    narrowest_special(ip).map(|(_, what)| what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(target: (&str, &str), ports: &[&str]) -> RuleConfig {
        let mut r = RuleConfig { ports: ports.iter().map(|p| p.to_string()).collect(), ..Default::default() };
        match target.0 {
            "host" => r.host = Some(target.1.into()),
            "cidr" => r.cidr = Some(target.1.into()),
            "ip" => r.ip = Some(target.1.into()),
            other => panic!("bad test rule kind {other}"),
        }
        r
    }

    fn policy(rules: Vec<RuleConfig>) -> Policy {
        Policy::new(&PolicyConfig { allow: rules }).expect("test policy is valid")
    }

    fn aws() -> Policy {
        policy(vec![
            rule(("host", "*.amazonaws.com"), &["443"]),
            rule(("host", "allowed.com"), &["443", "8000-8100"]),
        ])
    }

    fn kind(r: Result<(), Denied>) -> &'static str {
        match r {
            Ok(()) => "allowed",
            Err(d) => d.kind(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_deny() {
        let p = Policy::deny_all();
        assert_eq!(kind(p.check_name("example.com", 443)), "no_rule");
        assert_eq!(kind(p.check_ip(None, ip("93.184.216.34"), 443)), "no_rule");
        let empty = Policy::new(&PolicyConfig::default()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(kind(empty.check_name("example.com", 443)), "no_rule");
    }

    #[test]
    fn wildcard_matches_whole_labels_only() {
        let p = aws();
        assert_eq!(kind(p.check_name("s3.amazonaws.com", 443)), "allowed");
        assert_eq!(kind(p.check_name("a.b.amazonaws.com", 443)), "allowed");
        assert_eq!(kind(p.check_name("amazonaws.com", 443)), "no_rule");
        assert_eq!(kind(p.check_name("evilamazonaws.com", 443)), "no_rule");
        assert_eq!(kind(p.check_name("amazonaws.com.evil.net", 443)), "no_rule");
        assert_eq!(kind(p.check_name("s3.amazonaws.com.evil.net", 443)), "no_rule");
        assert_eq!(kind(p.check_name("s3.amazonaws.co", 443)), "no_rule");
    }

    #[test]
    fn exact_names_resist_suffix_and_prefix_tricks() {
        let p = aws();
        assert_eq!(kind(p.check_name("allowed.com", 443)), "allowed");
        assert_eq!(kind(p.check_name("allowed.com.evil.net", 443)), "no_rule");
        assert_eq!(kind(p.check_name("evilallowed.com", 443)), "no_rule");
        assert_eq!(kind(p.check_name("sub.allowed.com", 443)), "no_rule");
        assert_eq!(kind(p.check_name("allowed.co", 443)), "no_rule");
    }

    #[test]
    fn case_and_trailing_dot_are_ignored() {
        let p = aws();
        assert_eq!(kind(p.check_name("ALLOWED.COM", 443)), "allowed");
        assert_eq!(kind(p.check_name("allowed.com.", 443)), "allowed");
        assert_eq!(kind(p.check_name("S3.AmazonAWS.com.", 443)), "allowed");
        assert_eq!(kind(p.check_name("allowed.com..", 443)), "invalid_name");
        // Rules are normalised the same way.
        let upper = policy(vec![rule(("host", "*.AmazonAWS.COM."), &["443"])]);
        assert_eq!(kind(upper.check_name("s3.amazonaws.com", 443)), "allowed");
    }

    #[test]
    fn ports_and_ranges() {
        let p = aws();
        assert_eq!(kind(p.check_name("allowed.com", 8000)), "allowed");
        assert_eq!(kind(p.check_name("allowed.com", 8100)), "allowed");
        assert_eq!(kind(p.check_name("allowed.com", 8101)), "port");
        assert_eq!(kind(p.check_name("s3.amazonaws.com", 80)), "port");
        let any = policy(vec![rule(("host", "example.com"), &["*"])]);
        assert_eq!(kind(any.check_name("example.com", 1)), "allowed");
        assert_eq!(kind(any.check_name("example.com", 65535)), "allowed");
        assert_eq!(kind(any.check_name("example.com", 0)), "port");
    }

    #[test]
    fn ip_literal_names_are_checked_as_addresses() {
        // Even with a rule for every name below .com, an IP spelling never passes as a name.
        let p = policy(vec![rule(("host", "*.com"), &["*"]), rule(("cidr", "0.0.0.0/0"), &["*"])]);
        for name in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "0x7f000001",
            "0X7F000001",
            "2130706433",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "0x7f.1",
            "017700000001",
            "127.0.0.1.",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "::ffff:127.0.0.1",
            "[::1]",
            "[::]",
            "0",
            "0.0.0.0",
            "[::127.0.0.1]",
            "[64:ff9b::127.0.0.1]",
            "169.254.169.254",
            "0xa9fea9fe",
            "[fd00:ec2::254]",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "[fe80::1]",
            "[fc00::1]",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            let result = p.check_name(name, 443);
            assert_eq!(kind(result.clone()), "special_address", "{name}: {result:?}");
        }
        // A public address in an odd spelling is allowed by the cidr rule as that address.
        assert_eq!(kind(p.check_name("0x08080808", 53)), "allowed");
        assert_eq!(kind(p.check_name("134744072", 53)), "allowed");
    }

    #[test]
    fn invalid_ip_spellings_and_names_are_refused() {
        let p = policy(vec![rule(("host", "*.com"), &["*"]), rule(("cidr", "0.0.0.0/0"), &["*"])]);
        for name in [
            "1.2.3.4.5",
            "256.0.0.1",
            "4294967296",
            "08.0.0.1",
            "x.0x1",
            "example.123",
            "[::1",
            "[fe80::1%eth0]",
            "fe80::1%eth0",
            "",
            ".",
            "a..com",
            ".a.com",
            "exa mple.com",
            "exa\0mple.com",
            "ex\u{e9}mple.com",
            "a*.com",
        ] {
            assert_eq!(kind(p.check_name(name, 443)), "invalid_name", "{name:?}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert_eq!(kind(p.check_name(&long_label, 443)), "invalid_name");
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert_eq!(kind(p.check_name(&long_name, 443)), "invalid_name");
    }

    #[test]
    fn special_addresses_refused_even_when_the_name_matches() {
        let p = aws();
        // A name that resolves to loopback, IMDS or a private address is refused.
        for addr in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "fd00:ec2::254",
            "10.0.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "100.100.100.100",
            "0.0.0.0",
            "::",
            "fe80::1",
            "fd12:3456::1",
            "224.0.0.251",
            "ff02::1",
            "192.0.2.1",
            "2001:db8::1",
            "240.0.0.1",
        ] {
            let result = p.check_ip(Some("s3.amazonaws.com"), ip(addr), 443);
            assert_eq!(kind(result.clone()), "special_address", "{addr}: {result:?}");
        }
        assert_eq!(kind(p.check_ip(Some("s3.amazonaws.com"), ip("52.216.1.2"), 443)), "allowed");
        assert_eq!(kind(p.check_ip(Some("S3.AMAZONAWS.COM."), ip("2600:1f18::1"), 443)), "allowed");
        assert_eq!(kind(p.check_ip(Some("s3.amazonaws.com"), ip("52.216.1.2"), 80)), "port");
        // A name rule never allows a bare address.
        assert_eq!(kind(p.check_ip(None, ip("52.216.1.2"), 443)), "no_rule");
    }

    #[test]
    fn explicit_ip_rule_opens_exactly_that_special_address() {
        let p = policy(vec![
            rule(("ip", "127.0.0.1"), &["4317"]),
            rule(("cidr", "0.0.0.0/0"), &["443"]),
            rule(("cidr", "::/0"), &["443"]),
            rule(("host", "collector.local"), &["4317"]),
        ]);
        assert_eq!(kind(p.check_ip(None, ip("127.0.0.1"), 4317)), "allowed");
        assert_eq!(kind(p.check_name("127.0.0.1", 4317)), "allowed");
        assert_eq!(kind(p.check_name("[::ffff:127.0.0.1]", 4317)), "allowed");
        assert_eq!(kind(p.check_ip(None, ip("::ffff:127.0.0.1"), 4317)), "allowed");
        assert_eq!(kind(p.check_ip(Some("collector.local"), ip("127.0.0.1"), 4317)), "allowed");
        assert_eq!(kind(p.check_ip(None, ip("127.0.0.1"), 4318)), "port");
        assert_eq!(kind(p.check_ip(None, ip("127.0.0.2"), 4317)), "special_address");
        // Broad blocks do not open special ranges; the port of the rule that does name it is
        // what is wrong here.
        assert_eq!(kind(p.check_ip(None, ip("127.0.0.1"), 443)), "port");
        assert_eq!(kind(p.check_ip(None, ip("127.0.0.3"), 443)), "special_address");
        assert_eq!(kind(p.check_ip(None, ip("169.254.169.254"), 443)), "special_address");
        assert_eq!(kind(p.check_ip(None, ip("::1"), 443)), "special_address");
        assert_eq!(kind(p.check_ip(None, ip("fd00:ec2::254"), 443)), "special_address");
        assert_eq!(kind(p.check_ip(None, ip("8.8.8.8"), 443)), "allowed");
        assert_eq!(kind(p.check_ip(None, ip("2606:4700::1111"), 443)), "allowed");
    }

    #[test]
    fn explicit_private_cidr_and_imds() {
        let p = policy(vec![
            rule(("cidr", "10.0.0.0/8"), &["443"]),
            rule(("ip", "169.254.169.254"), &["80"]),
            rule(("ip", "fd00:ec2::254"), &["80"]),
        ]);
        assert_eq!(kind(p.check_ip(None, ip("10.1.2.3"), 443)), "allowed");
        assert_eq!(kind(p.check_ip(Some("internal.corp"), ip("10.1.2.3"), 443)), "allowed");
        assert_eq!(kind(p.check_ip(None, ip("11.1.2.3"), 443)), "no_rule");
        assert_eq!(kind(p.check_ip(None, ip("169.254.169.254"), 80)), "allowed");
        assert_eq!(kind(p.check_ip(None, ip("169.254.169.253"), 80)), "special_address");
        assert_eq!(kind(p.check_ip(None, ip("fd00:ec2::254"), 80)), "allowed");
        assert_eq!(kind(p.check_name("[fd00:ec2::254]", 80)), "allowed");
        // A cidr rule alone does not let a name through before DNS.
        assert_eq!(kind(p.check_name("internal.corp", 443)), "no_rule");
    }

    /// A broad special block opens its own range, never a narrower special range inside it:
    /// the rule must name the most specific special range that contains the address.
    #[test]
    fn broad_special_blocks_do_not_open_narrower_special_ranges() {
        let p = policy(vec![
            rule(("cidr", "fc00::/7"), &["*"]),
            rule(("cidr", "169.254.0.0/16"), &["*"]),
            rule(("cidr", "fd00:ec2::/32"), &["*"]),
        ]);
        // IMDS and the Amazon DNS server, IPv4 and IPv6, in every spelling.
        for addr in
            ["fd00:ec2::254", "fd00:ec2::23", "169.254.169.254", "169.254.169.253", "::ffff:169.254.169.254"]
        {
            assert_eq!(kind(p.check_ip(None, ip(addr), 80)), "special_address", "{addr}");
        }
        for name in ["[fd00:ec2::254]", "169.254.169.254", "0xa9fea9fe", "[::ffff:0:169.254.169.254]"] {
            assert_eq!(kind(p.check_name(name, 80)), "special_address", "{name}");
        }
        // The ranges the blocks do name are open.
        assert_eq!(kind(p.check_ip(None, ip("fd12:3456::1"), 80)), "allowed");
        assert_eq!(kind(p.check_ip(None, ip("fd00:ec2::1"), 80)), "allowed");
        assert_eq!(kind(p.check_ip(None, ip("169.254.1.1"), 80)), "allowed");
        // Naming the narrow range opens it (and only it).
        let imds = policy(vec![
            rule(("ip", "fd00:ec2::254"), &["80"]),
            rule(("cidr", "169.254.169.254/32"), &["80"]),
        ]);
        assert_eq!(kind(imds.check_ip(None, ip("fd00:ec2::254"), 80)), "allowed");
        assert_eq!(kind(imds.check_ip(None, ip("169.254.169.254"), 80)), "allowed");
        assert_eq!(kind(imds.check_ip(None, ip("fd00:ec2::23"), 80)), "special_address");
        assert_eq!(kind(imds.check_ip(None, ip("169.254.1.1"), 80)), "special_address");
        // A block inside the range, and the range itself, both open what they cover.
        let part = policy(vec![rule(("cidr", "10.1.0.0/16"), &["*"]), rule(("cidr", "127.0.0.0/8"), &["*"])]);
        assert_eq!(kind(part.check_ip(None, ip("10.1.2.3"), 80)), "allowed");
        assert_eq!(kind(part.check_ip(None, ip("10.2.0.1"), 80)), "special_address");
        assert_eq!(kind(part.check_ip(None, ip("127.0.0.53"), 80)), "allowed");
    }

    /// The special ranges are listed once, in SPECIAL_V4/SPECIAL_V6; docs/policy.md's table
    /// names every one of them (an address alone for a single-address range).
    #[test]
    fn the_documented_special_ranges_are_the_code_list() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md")).unwrap();
        let table = doc.split("### Special addresses").nth(1).and_then(|t| t.split("\n\n").nth(2)).unwrap();
        let cells: Vec<&str> = table.split(['|', ',']).map(str::trim).collect();
        for (net, what) in special_ranges() {
            let shown = if net.prefix_len() == net.max_prefix_len() {
                net.addr().to_string()
            } else {
                net.to_string()
            };
            assert!(
                cells.contains(&shown.as_str()),
                "{shown} ({what}) is missing from docs/policy.md:\n{table}"
            );
        }
    }

    /// The IPv4-translated form `::ffff:0:a.b.c.d` (RFC 2765 SIIT, RFC 6052) carries an IPv4
    /// address like the mapped, compatible and NAT64 forms, and is judged as that address.
    #[test]
    fn ipv4_translated_addresses_are_normalised() {
        assert_eq!(canonical_ip(ip("::ffff:0:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("::ffff:0:7f00:1")), ip("127.0.0.1"));
        assert_eq!(canonical_ip(ip("::ffff:0:0")), ip("0.0.0.0"));
        let p = policy(vec![rule(("cidr", "::/0"), &["*"]), rule(("cidr", "0.0.0.0/0"), &["443"])]);
        assert_eq!(kind(p.check_ip(None, ip("::ffff:0:127.0.0.1"), 443)), "special_address");
        assert_eq!(kind(p.check_ip(None, ip("::ffff:0:169.254.169.254"), 80)), "special_address");
        assert_eq!(kind(p.check_name("[::ffff:0:7f00:1]", 443)), "special_address");
        assert_eq!(kind(p.check_ip(None, ip("::ffff:0:8.8.8.8"), 443)), "allowed");
        // Checked as IPv4: the IPv4 rule's ports apply, not the IPv6 rule's `*`.
        assert_eq!(kind(p.check_ip(None, ip("::ffff:0:8.8.8.8"), 80)), "port");
        // Rules are normalised the same way, and a block in that form is refused like ::ffff:.
        let r = policy(vec![rule(("ip", "::ffff:0:127.0.0.1"), &["4317"])]);
        assert_eq!(kind(r.check_ip(None, ip("127.0.0.1"), 4317)), "allowed");
        let e = config_error("[[policy.allow]]\ncidr = \"::ffff:0:10.0.0.0/104\"\nports = [\"1\"]");
        assert!(e.contains("write the block in IPv4"), "{e}");
    }

    #[test]
    fn denial_messages_say_what_and_why() {
        let p = aws();
        let d = p.check_ip(Some("s3.amazonaws.com"), ip("127.0.0.1"), 443).unwrap_err();
        assert_eq!(
            d.to_string(),
            "policy denies s3.amazonaws.com:443 (resolved to 127.0.0.1): 127.0.0.1 is a loopback \
             address, allowed only by an explicit ip/cidr rule within 127.0.0.0/8"
        );
        let d = p.check_name("169.254.169.254", 80).unwrap_err();
        assert!(d.to_string().contains("instance metadata service"), "{d}");
        let d = p.check_name("Evil.NET", 443).unwrap_err();
        assert_eq!(d.to_string(), "policy denies evil.net:443: no allow rule matches it");
        let d = p.check_ip(None, ip("::1"), 443).unwrap_err();
        assert!(d.to_string().starts_with("policy denies [::1]:443:"), "{d}");
    }

    fn config_error(toml_text: &str) -> String {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            policy: PolicyConfig,
        }
        let file: File = toml::from_str(toml_text).expect("test TOML parses");
        Policy::new(&file.policy).unwrap_err().to_string()
    }

    #[test]
    fn config_errors_name_rule_field_and_reason() {
        let cases = [
            ("[[policy.allow]]\nports = [\"443\"]", "policy.allow[0].rule: needs one of"),
            (
                "[[policy.allow]]\nhost = \"a.com\"\nip = \"1.2.3.4\"\nports = [\"443\"]",
                "policy.allow[0].rule: has more than one",
            ),
            ("[[policy.allow]]\nhost = \"a.com\"", "policy.allow[0].ports: is required"),
            ("[[policy.allow]]\nhost = \"a.com\"\nports = []", "policy.allow[0].ports: is required"),
            ("[[policy.allow]]\nhost = \"a.com\"\nports = [\"0\"]", "policy.allow[0].ports: \"0\": port 0"),
            (
                "[[policy.allow]]\nhost = \"a.com\"\nports = [\"9-1\"]",
                "policy.allow[0].ports: \"9-1\": range starts above its end",
            ),
            (
                "[[policy.allow]]\nhost = \"a.com\"\nports = [\"https\"]",
                "policy.allow[0].ports: \"https\": \"https\" is not a port number",
            ),
            ("[[policy.allow]]\nhost = \"*\"\nports = [\"1\"]", "policy.allow[0].host: \"*\": a bare `*`"),
            (
                "[[policy.allow]]\nhost = \"s3.*.com\"\nports = [\"1\"]",
                "only allowed as the whole first label",
            ),
            ("[[policy.allow]]\nhost = \"*a.com\"\nports = [\"1\"]", "only allowed as the whole first label"),
            (
                "[[policy.allow]]\nhost = \"1.2.3.4\"\nports = [\"1\"]",
                "is an IP address; use `ip = \"1.2.3.4\"`",
            ),
            (
                "[[policy.allow]]\nhost = \"a..com\"\nports = [\"1\"]",
                "policy.allow[0].host: \"a..com\": empty label",
            ),
            ("[[policy.allow]]\ncidr = \"10.0.0.1/8\"\nports = [\"1\"]", "did you mean \"10.0.0.0/8\"?"),
            (
                "[[policy.allow]]\ncidr = \"10.0.0.0/33\"\nports = [\"1\"]",
                "prefix \"33\" is not a number from 0 to 32",
            ),
            ("[[policy.allow]]\ncidr = \"10.0.0.0\"\nports = [\"1\"]", "missing \"/prefix\""),
            ("[[policy.allow]]\ncidr = \"::ffff:10.0.0.0/104\"\nports = [\"1\"]", "write the block in IPv4"),
            (
                "[[policy.allow]]\nip = \"localhost\"\nports = [\"1\"]",
                "policy.allow[0].ip: \"localhost\" is not an IP",
            ),
        ];
        for (text, expected) in cases {
            let msg = config_error(text);
            assert!(msg.contains(expected), "{text:?}: got {msg:?}, want {expected:?}");
        }
        let msg = config_error(
            "[[policy.allow]]\nhost = \"a.com\"\nports = [\"1\"]\n[[policy.allow]]\ncidr = \"x\"\nports = [\"1\"]",
        );
        assert!(msg.starts_with("policy.allow[1].cidr: \"x\""), "{msg}");
    }

    #[test]
    fn unknown_fields_are_rejected_by_serde() {
        let err = toml::from_str::<PolicyConfig>("[[allow]]\nhots = \"a.com\"\nports = [\"1\"]").unwrap_err();
        assert!(err.to_string().contains("unknown field `hots`"), "{err}");
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_ip(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("::1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("64:ff9b::1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("::1")), ip("::1"));
        assert_eq!(canonical_ip(ip("::")), ip("::"));
        assert_eq!(canonical_ip(ip("2001:db8::1")), ip("2001:db8::1"));
        assert_eq!(parse_ip_literal("127.1"), Some(Ok(ip("127.0.0.1"))));
        assert_eq!(parse_ip_literal("1.2.3"), Some(Ok(ip("1.2.0.3"))));
        assert_eq!(parse_ip_literal("0x"), Some(Ok(ip("0.0.0.0"))));
        assert_eq!(parse_ip_literal("example.com"), None);
        assert_eq!(parse_ip_literal("0xexample.com"), None);
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
            // IPv4 inside IPv6 in every carrier form.
            (any::<u32>(), 0..4u8).prop_map(|(v, form)| {
                let prefix: u128 = match form {
                    0 => 0xffff << 32,
                    1 => 0,
                    2 => 0xffff << 48,
                    _ => 0x64_ff9b << 96,
                };
                IpAddr::V6(Ipv6Addr::from(prefix | u128::from(v)))
            }),
        ]
    }

    fn label() -> impl Strategy<Value = String> {
        // A tiny alphabet so that generated names often share or almost share suffixes.
        "[ab]{1,3}"
    }

    fn labels() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(label(), 1..5)
    }

    proptest! {
        #[test]
        fn matcher_never_panics(name in "\\PC{0,80}", raw in proptest::collection::vec(any::<u8>(), 0..80),
                                addr in any_ip(), port in any::<u16>()) {
            let p = policy(vec![
                rule(("host", "*.amazonaws.com"), &["443"]),
                rule(("host", "a.b"), &["*"]),
                rule(("cidr", "10.0.0.0/8"), &["1-100"]),
                rule(("ip", "::1"), &["1"]),
            ]);
            let _ = p.check_name(&name, port);
            let _ = p.check_name(&String::from_utf8_lossy(&raw), port);
            let _ = p.check_ip(Some(&name), addr, port);
            let _ = p.check_ip(None, addr, port);
        }

        #[test]
        fn wildcard_only_matches_names_below_the_suffix(suffix in labels(), name in labels(), upper in any::<bool>(),
                                                       dot in any::<bool>()) {
            let pattern = format!("*.{}", suffix.join("."));
            let p = policy(vec![rule(("host", &pattern), &["*"])]);
            let mut text = name.join(".");
            if upper { text = text.to_ascii_uppercase(); }
            if dot { text.push('.'); }
            let below = name.len() > suffix.len() && name[name.len() - suffix.len()..] == suffix[..];
            prop_assert_eq!(p.check_name(&text, 443).is_ok(), below, "{} vs {}", text, pattern);
        }

        #[test]
        fn exact_rule_matches_only_that_name(rule_name in labels(), name in labels()) {
            let p = policy(vec![rule(("host", &rule_name.join(".")), &["*"])]);
            prop_assert_eq!(p.check_name(&name.join("."), 443).is_ok(), rule_name == name);
        }

        #[test]
        fn canonical_ip_is_idempotent(addr in any_ip()) {
            let once = canonical_ip(addr);
            prop_assert_eq!(canonical_ip(once), once);
            // The special classification does not depend on the spelling.
            prop_assert_eq!(special_range(once), special_range(canonical_ip(IpAddr::V6(match addr {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            }))));
        }

        #[test]
        fn name_normalisation_is_idempotent(name in labels(), upper in any::<bool>(), dot in any::<bool>()) {
            let mut text = name.join(".");
            if upper { text = text.to_ascii_uppercase(); }
            if dot { text.push('.'); }
            let once = normalise_name(&text);
            prop_assert_eq!(normalise_name(&once), once.clone());
            prop_assert!(validate_name(&once).is_ok());
        }

        /// Host rules and broad blocks never open a special address, in any IPv6 carrier form.
        #[test]
        fn special_addresses_need_a_narrow_rule(addr in any_ip(), port in 1u16..) {
            let p = policy(vec![
                rule(("host", "*.example.com"), &["*"]),
                rule(("cidr", "0.0.0.0/0"), &["*"]),
                rule(("cidr", "::/0"), &["*"]),
            ]);
            let verdict = p.check_ip(Some("a.example.com"), addr, port);
            if special_range(canonical_ip(addr)).is_some() {
                prop_assert_eq!(kind(verdict), "special_address");
            } else {
                prop_assert_eq!(kind(verdict), "allowed");
            }
            if let IpAddr::V4(v4) = addr {
                let mapped = IpAddr::V6(v4.to_ipv6_mapped());
                prop_assert_eq!(p.check_ip(None, mapped, port).is_ok(), p.check_ip(None, addr, port).is_ok());
            }
        }

        /// A rule naming one whole special range opens an address of it exactly when no
        /// narrower special range contains that address.
        #[test]
        fn a_special_range_rule_opens_only_addresses_it_is_the_narrowest_range_of(
            pick in any::<prop::sample::Index>(), inner in any::<prop::sample::Index>(),
            offset in any::<u128>(), at_inner_base in any::<bool>(), port in 1u16..
        ) {
            let ranges: Vec<(IpNet, &str)> = special_ranges().collect();
            // A block in an IPv4 carrier form (::ffff:0:0/96) cannot be a rule: write it in IPv4.
            let rules: Vec<IpNet> = ranges.iter().map(|(r, _)| *r).filter(|r| canonical_ip(r.addr()) == r.addr()).collect();
            let range = rules[pick.index(rules.len())];
            let mut addr = match range {
                IpNet::V4(n) => {
                    IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | (offset as u32 & u32::from(n.hostmask()))))
                }
                IpNet::V6(n) => {
                    IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | (offset & u128::from(n.hostmask()))))
                }
            };
            // Half the cases: the first address of another special range, when it lies inside
            // this one (IMDS inside link-local, fd00:ec2::254 inside fc00::/7).
            let (other, _) = ranges[inner.index(ranges.len())];
            if at_inner_base && range.contains(&other.addr()) {
                addr = other.addr();
            }
            let p = policy(vec![rule(("cidr", &range.to_string()), &["*"])]);
            let narrowest = ranges.iter().filter(|(r, _)| r.contains(&addr)).map(|(r, _)| r.prefix_len()).max();
            let verdict = p.check_ip(None, addr, port);
            if canonical_ip(addr) != addr {
                // A carrier form inside an IPv6 range (::/128's neighbours in ::/96) is judged as
                // the IPv4 address it carries, which an IPv6 rule never names.
                prop_assert!(verdict.is_err());
            } else if narrowest == Some(range.prefix_len()) {
                prop_assert_eq!(kind(verdict), "allowed", "{} in {}", addr, range);
            } else {
                prop_assert_eq!(kind(verdict), "special_address", "{} in {}", addr, range);
            }
        }

        /// Every inet_aton spelling of an IPv4 address is judged exactly as the address itself.
        #[test]
        fn ipv4_spellings_agree(v in any::<u32>(), port in 1u16..) {
            let p = policy(vec![
                rule(("host", "*.com"), &["*"]),
                rule(("cidr", "0.0.0.0/1"), &["443"]),
                rule(("ip", "127.0.0.1"), &["*"]),
            ]);
            let addr = Ipv4Addr::from(v);
            let [a, b, c, d] = addr.octets();
            let expected = kind(p.check_ip(None, IpAddr::V4(addr), port));
            for spelling in [
                format!("{v}"),
                format!("0x{v:x}"),
                format!("0{v:o}"),
                format!("{a}.{}", v & 0xff_ffff),
                format!("{a}.{b}.{}", v & 0xffff),
                format!("0x{a:x}.0{b:o}.{c}.0x{d:X}"),
                format!("[::ffff:{addr}]"),
                format!("[::ffff:0:{addr}]"),
                format!("{addr}."),
            ] {
                prop_assert_eq!(kind(p.check_name(&spelling, port)), expected, "{}", spelling);
            }
        }
    }
}
