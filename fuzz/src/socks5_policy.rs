//! A SOCKS5 CONNECT decided by the proxy's egress policy, as `vsockproxy` decides it: the check
//! before DNS (`server::egress_target`: names, and IP literals in any spelling), then every
//! address, given or resolved (`Policy::check_ip`, as the proxy's `allowed_addrs` calls it).
//!
//! Input: policy rules, one per line (`host|cidr|ip TARGET PORTS`, ports comma-separated; rules
//! the policy refuses are dropped), a NUL, a SOCKS5 request, then what DNS answers for the name:
//! `4` + 4 bytes or `6` + 16 bytes per address ([`encode`] writes the seeds).
//!
//! The model is written from the documented rules (proxy/src/policy.rs, docs/vsockproxy.md), not
//! from the policy's code: an address inside a special range (IMDS, loopback, private, ...) passes
//! only an `ip`/`cidr` rule that contains it and lies wholly inside the narrowest special range
//! around it (so IMDS only a rule for exactly IMDS); any other address passes a containing
//! `ip`/`cidr` rule, or a `host` rule matching the name it was resolved from; IPv6 forms that
//! carry an IPv4 address are judged as that address. Invariants: nothing panics; every decision on
//! an address is the model's; a name is resolved only if a `host` rule admits it; a name that is
//! an IP literal is never resolved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use transport::socks5::{Address, Command, Request, encode_request, parse_request};
use vsockproxy::policy::{
    Policy, PolicyConfig, RuleConfig, SPECIAL_V4, SPECIAL_V6, normalise_name, parse_ip_literal,
};
use vsockproxy::server::{EgressTarget, egress_target};

/// The input for a policy, a CONNECT and the DNS answers (for the seeds).
pub fn encode(rules: &[&str], dest: Address, answers: &[IpAddr]) -> Vec<u8> {
    let mut out = rules.join("\n").into_bytes();
    out.push(0);
    let request = Request { command: Command::Connect, dest };
    out.extend(encode_request(&request).expect("a seed's destination encodes"));
    for ip in answers {
        match ip {
            IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    out
}

/// Most DNS answers read from one input (a resolver returns a handful).
const MAX_ANSWERS: usize = 8;

fn answers(mut data: &[u8]) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    while ips.len() < MAX_ANSWERS {
        let ip = match data {
            [4, a, b, c, d, rest @ ..] => {
                data = rest;
                IpAddr::from([*a, *b, *c, *d])
            }
            [6, rest @ ..] if rest.len() >= 16 => {
                let octets: [u8; 16] = rest[..16].try_into().expect("16 bytes");
                data = &rest[16..];
                IpAddr::from(octets)
            }
            _ => break,
        };
        ips.push(ip);
    }
    ips
}

/// A rule as the model reads it.
#[derive(Debug)]
enum Target {
    Exact(String),
    Suffix(String),
    Net(Net),
}

#[derive(Debug)]
struct Rule {
    target: Target,
    ports: Vec<(u16, u16)>,
}

/// An address block: the address's bits, its width (32 or 128) and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    bits: u128,
    width: u8,
    prefix: u8,
}

impl Net {
    fn of(ip: IpAddr, prefix: u8) -> Net {
        match ip {
            IpAddr::V4(v4) => Net { bits: u128::from(u32::from(v4)), width: 32, prefix },
            IpAddr::V6(v6) => Net { bits: u128::from(v6), width: 128, prefix },
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let other = Net::of(ip, 0);
        let shift = u32::from(self.width - self.prefix);
        other.width == self.width && other.bits.checked_shr(shift) == self.bits.checked_shr(shift)
    }

    fn covers(&self, inner: &Net) -> bool {
        let shift = u32::from(self.width - self.prefix);
        inner.width == self.width
            && self.prefix <= inner.prefix
            && inner.bits.checked_shr(shift) == self.bits.checked_shr(shift)
    }
}

/// The IPv4 address an IPv6 address carries (mapped, translated, compatible, NAT64), if any.
fn judged_as(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let v4 = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    let carries = s[..6] == [0, 0, 0, 0, 0, 0xffff]
        || s[..6] == [0, 0, 0, 0, 0xffff, 0]
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || (s[..6] == [0; 6] && u32::from(v4) > 1);
    if carries { IpAddr::V4(v4) } else { ip }
}

/// The narrowest documented special range containing `ip`, if any.
fn special(ip: IpAddr) -> Option<Net> {
    let v4 = SPECIAL_V4.iter().map(|&(a, p, _)| Net::of(IpAddr::from(a), p));
    let v6 = SPECIAL_V6.iter().map(|&(a, p, _)| Net::of(IpAddr::from(a), p));
    v4.chain(v6).filter(|n| n.contains(ip)).max_by_key(|n| n.prefix)
}

fn ports(spec: &str) -> Option<(u16, u16)> {
    if spec == "*" {
        return Some((1, u16::MAX));
    }
    match spec.split_once('-') {
        Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
        None => spec.parse().ok().map(|p| (p, p)),
    }
}

/// The model's reading of a rule the policy accepted.
fn model_rule(config: &RuleConfig) -> Rule {
    let target = if let Some(host) = &config.host {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(suffix) => Target::Suffix(suffix.to_owned()),
            None => Target::Exact(host),
        }
    } else if let Some(ip) = &config.ip {
        let ip: IpAddr = ip.trim_start_matches('[').trim_end_matches(']').parse().expect("an accepted ip");
        let ip = judged_as(ip);
        Target::Net(Net::of(ip, if ip.is_ipv4() { 32 } else { 128 }))
    } else {
        let cidr = config.cidr.as_deref().expect("an accepted rule has a target");
        let (ip, prefix) = cidr.split_once('/').expect("an accepted cidr");
        Target::Net(Net::of(ip.parse().expect("an accepted cidr"), prefix.parse().expect("an accepted cidr")))
    };
    let ports = config.ports.iter().map(|p| ports(p).expect("accepted ports")).collect();
    Rule { target, ports }
}

fn name_matches(target: &Target, name: &str) -> bool {
    match target {
        Target::Exact(exact) => name == exact,
        Target::Suffix(suffix) => {
            name.strip_suffix(suffix.as_str()).is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        }
        Target::Net(_) => false,
    }
}

/// Whether the model lets `ip` through on `port`, resolved from `name` if given.
fn model_admits(rules: &[Rule], name: Option<&str>, ip: IpAddr, port: u16) -> bool {
    let ip = judged_as(ip);
    let range = special(ip);
    rules.iter().any(|rule| {
        let target = match (&rule.target, range) {
            (Target::Net(net), Some(range)) => net.contains(ip) && range.covers(net),
            (Target::Net(net), None) => net.contains(ip),
            (_, Some(_)) => false,
            (target, None) => name.is_some_and(|n| name_matches(target, &normalise_name(n))),
        };
        target && rule.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    })
}

fn parse_rules(text: &str) -> Vec<RuleConfig> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (kind, target) = (fields.next()?, fields.next()?.to_owned());
            let ports = fields.next().map(|p| p.split(',').map(str::to_owned).collect()).unwrap_or_default();
            let mut rule = RuleConfig { ports, ..Default::default() };
            match kind {
                "host" => rule.host = Some(target),
                "cidr" => rule.cidr = Some(target),
                "ip" => rule.ip = Some(target),
                _ => return None,
            }
            // Keep the rules the policy accepts (one bad rule refuses a whole configuration).
            Policy::new(&PolicyConfig { allow: vec![rule.clone()] }).is_ok().then_some(rule)
        })
        .collect()
}

/// The addresses `IMDS`, `IMDS6` and loopback, for the explicit checks.
const IMDS: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
const IMDS6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254));

/// Checks the policy's verdict on one address against the model.
fn check_address(policy: &Policy, rules: &[Rule], name: Option<&str>, ip: IpAddr, port: u16) {
    let verdict = policy.check_ip(name, ip, port);
    let expected = model_admits(rules, name, ip, port);
    assert_eq!(verdict.is_ok(), expected, "{name:?} -> {ip} port {port}: {verdict:?}, rules {rules:?}");
    if verdict.is_ok() {
        let judged = judged_as(ip);
        let names_exactly = |net: Net| rules.iter().any(|r| matches!(&r.target, Target::Net(n) if *n == net));
        if judged == IMDS || judged == IMDS6 || judged == IpAddr::V6(Ipv6Addr::LOCALHOST) {
            assert!(names_exactly(Net::of(judged, if judged.is_ipv4() { 32 } else { 128 })), "{ip} passed");
        }
        if let IpAddr::V4(v4) = judged
            && v4.is_loopback()
        {
            let inside = |r: &Rule| matches!(&r.target, Target::Net(n) if n.width == 32 && n.prefix >= 8 && n.bits >> 24 == 127);
            assert!(rules.iter().any(inside), "loopback {ip} passed without a rule inside 127.0.0.0/8");
        }
    }
}

pub fn run(data: &[u8]) {
    let Some(split) = data.iter().position(|&b| b == 0) else { return };
    let configs = parse_rules(&String::from_utf8_lossy(&data[..split]));
    let policy = Policy::new(&PolicyConfig { allow: configs.clone() }).expect("rules accepted one by one");
    let rules: Vec<Rule> = configs.iter().map(model_rule).collect();
    let rest = &data[split + 1..];
    let Ok(Some((request, used))) = parse_request(rest) else { return };
    // The proxy answers any other command with "command not supported" before the policy.
    if request.command != Command::Connect {
        return;
    }
    let dns = answers(&rest[used..]);

    let target = egress_target(&policy, &request.dest);
    match (&request.dest, &target) {
        (Address::Ip(sa), _) => assert_eq!(target, Ok(EgressTarget::Ip(sa.ip(), sa.port()))),
        (Address::Domain(name, port), _) => {
            let literal = parse_ip_literal(&normalise_name(name));
            match (literal, &target) {
                (Some(Ok(ip)), _) => {
                    // Judged as the address, never resolved.
                    let expected = model_admits(&rules, None, ip, *port);
                    assert_eq!(target.is_ok(), expected, "{name:?} = {ip} port {port}: {target:?}");
                    if let Ok(t) = &target {
                        assert_eq!(*t, EgressTarget::Ip(ip, *port));
                    }
                }
                (Some(Err(_)), _) => assert!(target.is_err(), "an invalid IP literal {name:?} passed"),
                (None, Ok(t)) => {
                    assert_eq!(*t, EgressTarget::Name(name, *port));
                    let normal = normalise_name(name);
                    let admitted = rules.iter().any(|r| {
                        name_matches(&r.target, &normal)
                            && r.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(port))
                    });
                    assert!(admitted, "{name:?} port {port} is resolved, but no host rule admits it");
                }
                (None, Err(_)) => {}
            }
        }
    }
    match target {
        Ok(EgressTarget::Ip(ip, port)) => check_address(&policy, &rules, None, ip, port),
        Ok(EgressTarget::Name(name, port)) => {
            for ip in dns {
                check_address(&policy, &rules, Some(name), ip, port);
            }
        }
        Err(denied) => {
            let _ = denied.to_string();
        }
    }
}
