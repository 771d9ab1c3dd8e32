//! The SOCKS5 server handshake against a real client: curl (installed by
//! scripts/setup-test-deps.sh). A one-connection server on 127.0.0.1:0 runs `server_handshake`,
//! records the request, answers with a chosen reply code and, on success, serves one HTTP response
//! itself, so the test needs no network beyond loopback.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use transport::socks5::{Address, Command, ReplyCode, Request, send_reply, server_handshake};

const BODY: &str = "hello through socks5\n";

/// Accepts one connection, runs the handshake, replies `code`, and if it succeeded answers one
/// HTTP request. Returns the request curl sent.
async fn serve_once(listener: TcpListener, code: ReplyCode) -> Request {
    let (mut stream, _) = listener.accept().await.expect("accept");
    let request = server_handshake(&mut stream).await.expect("curl's handshake parses");
    let bound: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    send_reply(&mut stream, code, Some(bound)).await.expect("send reply");
    if code == ReplyCode::Succeeded {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.expect("read HTTP request");
            head.push(byte[0]);
        }
        let response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}", BODY.len());
        stream.write_all(response.as_bytes()).await.expect("write HTTP response");
        stream.shutdown().await.expect("shutdown");
    }
    request
}

async fn curl(args: &[&str]) -> Output {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output(),
    )
    .await
    .expect("curl finishes within 20 s");
    output.expect("curl must be installed (scripts/setup-test-deps.sh installs it)")
}

async fn run(code: ReplyCode, proxy_flag: &str, url: &str) -> (Request, Output) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let server = tokio::spawn(serve_once(listener, code));
    let output = curl(&[proxy_flag, &proxy, url]).await;
    let request = tokio::time::timeout(Duration::from_secs(20), server).await.unwrap().unwrap();
    (request, output)
}

#[tokio::test]
async fn curl_socks5_hostname_sends_a_domain_request() {
    let (request, output) =
        run(ReplyCode::Succeeded, "--socks5-hostname", "http://s3.example.test:8080/x").await;
    assert_eq!(request.command, Command::Connect);
    assert_eq!(request.dest, Address::Domain("s3.example.test".into(), 8080));
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), BODY);
}

#[tokio::test]
async fn curl_socks5_with_ipv4_and_ipv6_destinations() {
    let (request, output) = run(ReplyCode::Succeeded, "--socks5", "http://192.0.2.1:81/").await;
    assert_eq!(request.dest, Address::Ip("192.0.2.1:81".parse().unwrap()));
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));

    let (request, output) = run(ReplyCode::Succeeded, "--socks5-hostname", "http://[2001:db8::7]:82/").await;
    assert_eq!(request.dest, Address::Ip("[2001:db8::7]:82".parse().unwrap()));
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn curl_reports_a_refusal_instead_of_a_silent_close() {
    let (request, output) =
        run(ReplyCode::NotAllowed, "--socks5-hostname", "http://evil.example.test/").await;
    assert_eq!(request.dest, Address::Domain("evil.example.test".into(), 80));
    // curl exit code 97: "proxy handshake error"; curl 7.x prints the reply code "(2)", newer
    // versions its meaning.
    assert_eq!(output.status.code(), Some(97), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("evil.example.test. (2)") || stderr.contains("not allowed"),
        "curl said: {stderr}"
    );
}
