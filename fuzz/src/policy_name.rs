//! The policy's rule compiler and name matcher on arbitrary input.
//!
//! Input layout: two bytes of port, then `PATTERN \0 NAME`. The pattern is compiled as a `host`
//! rule (most inputs are rejected, which must be an error, not a panic); the name is checked
//! against it and against a fixed policy. Invariants: a `*.suffix` rule only admits names that
//! end in `.suffix` (after lowercasing and dropping one trailing dot); an exact rule only admits
//! that name; nothing ever panics.

use std::sync::OnceLock;

use vsockproxy::policy::{Policy, PolicyConfig, RuleConfig, normalise_name};

/// The input for `pattern`, `name` and `port` (for the seeds).
pub fn encode(port: u16, pattern: &str, name: &str) -> Vec<u8> {
    [&port.to_be_bytes()[..], pattern.as_bytes(), b"\0", name.as_bytes()].concat()
}

pub fn run(data: &[u8]) {
    let Some((port, rest)) = data.split_first_chunk::<2>() else { return };
    let port = u16::from_be_bytes(*port);
    let text = String::from_utf8_lossy(rest);
    let (pattern, name) = text.split_once('\0').unwrap_or((&text, ""));

    let fixed = fixed_policy();
    let _ = fixed.check_name(name, port);
    if let Ok(ip) = name.parse() {
        let _ = fixed.check_ip(Some(pattern), ip, port);
    }

    let config = PolicyConfig {
        allow: vec![RuleConfig {
            host: Some(pattern.to_owned()),
            ports: vec!["*".into()],
            ..Default::default()
        }],
    };
    let Ok(policy) = Policy::new(&config) else { return };
    if policy.check_name(name, port).is_ok() {
        let pattern = normalise_name(pattern);
        let name = normalise_name(name);
        match pattern.strip_prefix("*.") {
            Some(suffix) => {
                assert!(name.ends_with(&format!(".{suffix}")), "{name:?} passed *.{suffix}");
                assert!(name.len() > suffix.len() + 1);
            }
            None => assert_eq!(name, pattern),
        }
    }
}

fn fixed_policy() -> &'static Policy {
    static FIXED: OnceLock<Policy> = OnceLock::new();
    FIXED.get_or_init(|| {
        let rule = |host: &str, ports: &[&str]| RuleConfig {
            host: Some(host.into()),
            ports: ports.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        let config = PolicyConfig {
            allow: vec![
                rule("*.amazonaws.com", &["443"]),
                rule("allowed.com", &["443", "8000-8100"]),
                RuleConfig { ip: Some("127.0.0.1".into()), ports: vec!["4317".into()], ..Default::default() },
                RuleConfig { cidr: Some("10.0.0.0/8".into()), ports: vec!["*".into()], ..Default::default() },
            ],
        };
        Policy::new(&config).expect("the fixed policy is valid")
    })
}
