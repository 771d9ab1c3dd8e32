//! The SOCKS5 egress listener end to end: curl as a real client, the policy against bypass
//! spellings, and the reply code for each failure.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Daemon, echo_server, http_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transport::socks5::{self, Address, ReplyCode, Socks5Error};

/// Asks the daemon's SOCKS5 listener for `dest`; Ok(stream) or the reply code.
async fn socks_connect(proxy: SocketAddr, dest: Address) -> Result<TcpStream, ReplyCode> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), socks5::client_connect(&mut s, &dest)).await {
        Ok(Ok(())) => Ok(s),
        Ok(Err(Socks5Error::ServerRefused { code, .. })) => Err(code),
        Ok(Err(e)) => panic!("{dest}: unexpected SOCKS5 failure: {e}"),
        Err(_) => panic!("{dest}: no SOCKS5 reply within 10 s"),
    }
}

fn domain(name: &str, port: u16) -> Address {
    Address::Domain(name.to_string(), port)
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_through_socks5_to_a_local_http_server() {
    let web = http_server("hello through socks\n").await;
    let d = Daemon::start(&format!(
        r#"
[socks5]
name = "s"
listen = "tcp://127.0.0.1:0"
[dns.static_hosts]
"web.test" = ["127.0.0.1"]
[[policy.allow]]
host = "web.test"
ports = ["{port}"]
[[policy.allow]]
ip = "127.0.0.1"
ports = ["{port}"]
"#,
        port = web.port()
    ));
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--socks5-hostname", &d.tcp("s").to_string()])
        .arg(format!("http://web.test:{}/", web.port()))
        .output()
        .expect("curl installed (scripts/setup-test-deps.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello through socks\n");

    // A port the rules do not open: curl reports the refusal (reply 2, not allowed).
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--socks5-hostname", &d.tcp("s").to_string()])
        .arg("http://web.test:1/")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    // curl prints the SOCKS5 reply code: 2 is "connection not allowed by ruleset".
    assert!(err.contains("not allowed") || err.contains("(2)"), "{err}");
}

#[tokio::test]
async fn policy_bypass_attempts_are_refused() {
    let echo = echo_server().await;
    let port = echo.port();
    let d = Daemon::start(&format!(
        r#"
[admin]
listen = "tcp://127.0.0.1:0"
[socks5]
name = "s"
listen = "tcp://127.0.0.1:0"
[dns.static_hosts]
"allowed.com" = ["127.0.0.1"]
"sneaky.allowed.com" = ["127.0.0.1"]
"allowed.com.evil.net" = ["127.0.0.1"]
"evilallowed.com" = ["127.0.0.1"]
[[policy.allow]]
host = "allowed.com"
ports = ["{port}"]
[[policy.allow]]
host = "*.allowed.com"
ports = ["{port}"]
"#
    ));
    let proxy = d.tcp("s");
    let v4 = |s: &str| Address::Ip(SocketAddr::new(s.parse().unwrap(), port));
    let cases = [
        domain("allowed.com.evil.net", port),
        domain("evilallowed.com", port),
        domain("127.1", port),
        domain("0x7f000001", port),
        domain("2130706433", port),
        domain("[::ffff:127.0.0.1]", port),
        domain("[::1]", port),
        domain("169.254.169.254", port),
        v4("127.0.0.1"),
        v4("169.254.169.254"),
        v4("::ffff:127.0.0.1"),
        v4("::1"),
        // Names a rule allows but that resolve to loopback.
        domain("allowed.com", port),
        domain("ALLOWED.COM.", port),
        domain("sneaky.allowed.com", port),
    ];
    for dest in cases {
        let shown = dest.to_string();
        assert_eq!(socks_connect(proxy, dest).await.err(), Some(ReplyCode::NotAllowed), "{shown}");
    }
    let denials = d.metric("vsockproxy_policy_denials_total{kind=\"special_address\"}").unwrap_or(0.0);
    assert!(denials >= 10.0, "special_address denials counted: {denials}");
    assert!(d.metric("vsockproxy_policy_denials_total{kind=\"no_rule\"}").unwrap_or(0.0) >= 2.0);
}

#[tokio::test]
async fn allowed_destinations_connect_and_failures_get_their_reply_code() {
    let echo = echo_server().await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let d = Daemon::start(&format!(
        r#"
[admin]
listen = "tcp://127.0.0.1:0"
[socks5]
name = "s"
listen = "tcp://127.0.0.1:0"
[dns]
# Bounds the lookup of the .invalid name on machines whose resolver does not answer at all.
timeout_ms = 1500
[dns.static_hosts]
"echo.test" = ["127.0.0.1"]
[[policy.allow]]
host = "echo.test"
ports = ["*"]
[[policy.allow]]
host = "*.invalid"
ports = ["*"]
[[policy.allow]]
ip = "127.0.0.1"
ports = ["{echo}", "{dead}"]
"#,
        echo = echo.port(),
        dead = dead.port()
    ));
    let proxy = d.tcp("s");
    // Allowed by name (uppercase, trailing dot: same name), resolved here, echoed back.
    for name in ["echo.test", "ECHO.TEST."] {
        let mut s = socks_connect(proxy, domain(name, echo.port())).await.expect(name);
        s.write_all(b"ping").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping");
    }
    // An explicitly allowed IP.
    assert!(socks_connect(proxy, Address::Ip(echo)).await.is_ok());
    // Connection refused.
    assert_eq!(socks_connect(proxy, Address::Ip(dead)).await.err(), Some(ReplyCode::ConnectionRefused));
    assert_eq!(
        socks_connect(proxy, domain("echo.test", dead.port())).await.err(),
        Some(ReplyCode::ConnectionRefused)
    );
    // A name that does not resolve: host unreachable, quickly.
    let t = Instant::now();
    assert_eq!(
        socks_connect(proxy, domain("nothing-here.invalid", 443)).await.err(),
        Some(ReplyCode::HostUnreachable)
    );
    assert!(t.elapsed() < Duration::from_secs(6), "DNS failure took {:?}", t.elapsed());
    // Unsupported command (BIND).
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.unwrap();
    s.write_all(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]).await.unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], ReplyCode::CommandNotSupported as u8);
    // The daemon still serves after all of that.
    assert!(socks_connect(proxy, domain("echo.test", echo.port())).await.is_ok());
    let refused = |reason: &str| {
        d.metric(&format!(
            "vsockproxy_connections_refused_total{{listener=\"s\",kind=\"socks5\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(refused("connect_refused"), Some(2.0));
    assert_eq!(refused("dns"), Some(1.0));
    assert_eq!(refused("command"), Some(1.0));
    assert!(d.metric("vsockproxy_connect_seconds_count{phase=\"dns\"}").unwrap() >= 3.0);
}

/// A SOCKS5 listener whose policy allows the echo server on `127.0.0.1` only while `allow` is set.
fn revocable(echo: SocketAddr, allow: bool) -> String {
    let rule = format!("[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"{}\"]\n", echo.port());
    format!(
        "[admin]\nlisten = \"tcp://127.0.0.1:0\"\n[socks5]\nname = \"s\"\nlisten = \"tcp://127.0.0.1:0\"\n\
         [timeouts]\nhandshake_ms = 20000\n{}",
        if allow { rule.as_str() } else { "" }
    )
}

/// Sends the CONNECT request for `dest` on a stream whose greeting is done; returns the reply code.
async fn request_reply(s: &mut TcpStream, dest: SocketAddr) -> u8 {
    let std::net::IpAddr::V4(ip) = dest.ip() else { panic!("IPv4 only") };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&dest.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut reply)).await.unwrap().unwrap();
    reply[1]
}

/// A client accepted before a SIGHUP that revokes its rule is judged by the policy in force when
/// its CONNECT request is decided, not by the one in force when it was accepted.
#[tokio::test]
async fn a_rule_revoked_by_reload_during_the_handshake_is_not_honoured() {
    let echo = echo_server().await;
    let d = Daemon::start(&revocable(echo, true));
    let proxy = d.tcp("s");
    // Allowed now.
    assert!(socks_connect(proxy, Address::Ip(echo)).await.is_ok());
    // One client connected and silent, one past the greeting, both waiting.
    let mut silent = TcpStream::connect(proxy).await.unwrap();
    let mut greeted = TcpStream::connect(proxy).await.unwrap();
    greeted.write_all(&[5, 1, 0]).await.unwrap();
    let mut method = [0u8; 2];
    greeted.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [5, 0]);
    tokio::time::sleep(Duration::from_millis(200)).await;

    std::fs::write(&d.config, revocable(echo, false)).unwrap();
    d.signal("HUP");
    let reloaded = d.wait_log(&[("message", "configuration reloaded")], Duration::from_secs(5));
    assert!(reloaded.is_some(), "{}", d.log_text());

    silent.write_all(&[5, 1, 0]).await.unwrap();
    silent.read_exact(&mut method).await.unwrap();
    assert_eq!(request_reply(&mut silent, echo).await, ReplyCode::NotAllowed as u8, "silent client");
    assert_eq!(request_reply(&mut greeted, echo).await, ReplyCode::NotAllowed as u8, "greeted client");
    // And a new client too, of course.
    assert_eq!(socks_connect(proxy, Address::Ip(echo)).await.err(), Some(ReplyCode::NotAllowed));
}

/// An optimistic client sends greeting, request and its first data in one write, before any
/// reply: the handshake must leave the data for the tunnel, which delivers it first, in order,
/// and counts it.
#[tokio::test]
async fn data_sent_with_the_request_reaches_the_destination_first() {
    let echo = echo_server().await;
    let d = Daemon::start(&format!(
        "[socks5]\nname = \"s\"\nlisten = \"tcp://127.0.0.1:0\"\n[dns.static_hosts]\n\"echo.test\" = [\"127.0.0.1\"]\n\
         [[policy.allow]]\nhost = \"echo.test\"\nports = [\"{port}\"]\n[[policy.allow]]\nip = \"127.0.0.1\"\nports = [\"{port}\"]\n",
        port = echo.port()
    ));
    let mut s = TcpStream::connect(d.tcp("s")).await.unwrap();
    let mut bytes = vec![5, 1, 0, 5, 1, 0, 3, 9];
    bytes.extend_from_slice(b"echo.test");
    bytes.extend_from_slice(&echo.port().to_be_bytes());
    bytes.extend_from_slice(b"early bytes");
    s.write_all(&bytes).await.unwrap();
    s.write_all(b", then more").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back)).await.unwrap().unwrap();
    // Method choice (2 bytes), the reply for an IPv4 bound address (10 bytes), then the echo.
    assert_eq!(&back[..2], [5, 0]);
    assert_eq!(back[3], ReplyCode::Succeeded as u8);
    assert_eq!(&back[12..], b"early bytes, then more");
    let close = d.wait_log(&[("message", "close")], Duration::from_secs(5)).expect("a close line");
    assert_eq!(close.get("bytes_up").and_then(|v| v.as_u64()), Some(22), "{close}");
}
