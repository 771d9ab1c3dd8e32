//! The HTTP client the AWS SDK uses inside the enclave: every connection is a SOCKS5 CONNECT
//! through the parent's egress proxy (`vsock://parent:8888` in the enclave, `tcp://127.0.0.1:PORT` in
//! tests), then TLS for `https` URIs.
//!
//! The destination is sent to the proxy as a *name* (`bucket.s3.us-east-1.amazonaws.com:443`), not
//! an address: DNS happens on the parent, where the egress policy checks the name before and the
//! addresses after resolution. IP literals (`169.254.169.254` for IMDS, `127.0.0.1` for an
//! emulator) are sent as addresses.
//!
//! TLS is rustls with the `ring` provider and the Mozilla root certificates of `webpki-roots`,
//! compiled into the binary: the enclave image has no certificate store to read. HTTP/1.1 only,
//! which is all S3, SSM and IMDS need.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response as SmithyResponse;
use aws_smithy_types::body::SdkBody;
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use transport::socks5::{self, Address, Socks5Error};
use transport::{Endpoint, Stream};

/// Used when the SDK gives no connect timeout: dialing the proxy, the SOCKS5 handshake (which
/// includes the parent's DNS lookup and TCP connect) and the TLS handshake together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are closed after this long (S3 closes them after about 20 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a connection through the egress proxy could not be made; says which side failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("the request URI {0} has no host")]
    NoHost(String),
    #[error("unsupported URI scheme in {0} (only http and https)")]
    Scheme(String),
    /// The proxy itself could not be reached (the message names its endpoint).
    #[error("egress proxy unreachable: {0}")]
    ProxyConnect(#[source] transport::ConnectError),
    /// The proxy answered; for a refusal the message carries the SOCKS5 reply code (0x02 is the
    /// egress policy: "connection not allowed by ruleset").
    #[error("egress proxy at {proxy}: {source}")]
    Socks5 { proxy: String, source: Socks5Error },
    #[error("TLS with {host} (through the egress proxy at {proxy}): {source}")]
    Tls { proxy: String, host: String, source: io::Error },
    #[error("connecting to {dest} through the egress proxy at {proxy} took longer than {timeout:?}")]
    Timeout { proxy: String, dest: String, timeout: Duration },
}

impl EgressError {
    /// True when the proxy refused the destination because of its policy (SOCKS5 reply 0x02).
    pub fn is_not_allowed(&self) -> bool {
        matches!(
            self,
            EgressError::Socks5 {
                source: Socks5Error::ServerRefused { code: socks5::ReplyCode::NotAllowed, .. },
                ..
            }
        )
    }
}

/// Dials `host:port` through the SOCKS5 proxy at `proxy`; the tower service hyper's pool uses.
#[derive(Clone)]
pub struct EgressDialer {
    proxy: Arc<Endpoint>,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for EgressDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressDialer")
            .field("proxy", &self.proxy.to_string())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl EgressDialer {
    pub fn new(proxy: Endpoint, connect_timeout: Duration) -> EgressDialer {
        EgressDialer { proxy: Arc::new(proxy), tls: Arc::new(tls_config()), connect_timeout }
    }

    /// Opens one connection to the URI's host and port (defaults 80/443 by scheme).
    pub async fn dial(&self, uri: &Uri) -> Result<EgressStream, EgressError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(EgressError::Scheme(uri.to_string())),
        };
        let host = uri.host().ok_or_else(|| EgressError::NoHost(uri.to_string()))?;
        // `Uri::host` keeps the brackets of an IPv6 literal.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let dest = match bare.parse::<IpAddr>() {
            Ok(ip) => Address::Ip((ip, port).into()),
            Err(_) => Address::Domain(bare.to_string(), port),
        };
        let proxy = self.proxy.to_string();
        let attempt = async {
            let mut stream = Stream::connect(&self.proxy).await.map_err(EgressError::ProxyConnect)?;
            socks5::client_connect(&mut stream, &dest)
                .await
                .map_err(|source| EgressError::Socks5 { proxy: proxy.clone(), source })?;
            if !tls {
                return Ok(EgressStream::Plain(stream));
            }
            let name =
                rustls::pki_types::ServerName::try_from(bare.to_string()).map_err(|e| EgressError::Tls {
                    proxy: proxy.clone(),
                    host: bare.to_string(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, e),
                })?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
            let stream = connector.connect(name, stream).await.map_err(|source| EgressError::Tls {
                proxy: proxy.clone(),
                host: bare.to_string(),
                source,
            })?;
            Ok(EgressStream::Tls(Box::new(stream)))
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                Err(EgressError::Timeout { proxy, dest: dest.to_string(), timeout: self.connect_timeout })
            }
        }
    }
}

fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // The ring provider supports every safe default version; this cannot fail.
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

impl tower_service::Service<Uri> for EgressDialer {
    type Response = TokioIo<EgressStream>;
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, EgressError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), EgressError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move { dialer.dial(&uri).await.map(TokioIo::new) })
    }
}

/// One connection through the proxy: plain (`http`) or TLS (`https`).
pub enum EgressStream {
    Plain(Stream),
    Tls(Box<tokio_rustls::client::TlsStream<Stream>>),
}

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for EgressStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EgressStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            EgressStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for EgressStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EgressStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            EgressStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EgressStream::Plain(s) => Pin::new(s).poll_flush(cx),
            EgressStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EgressStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            EgressStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An SDK [`HttpConnector`]: a pooled hyper client over [`EgressDialer`], with the SDK's read
/// timeout applied to the wait for the response head.
#[derive(Clone)]
struct EgressConnector {
    client: Client<EgressDialer, SdkBody>,
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for EgressConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressConnector").field("read_timeout", &self.read_timeout).finish()
    }
}

impl HttpConnector for EgressConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let response = match read_timeout {
                Some(limit) => match tokio::time::timeout(limit, response).await {
                    Ok(r) => r,
                    Err(_) => {
                        let msg = format!("no response within the read timeout of {limit:?}");
                        return Err(ConnectorError::timeout(msg.into()));
                    }
                },
                None => response.await,
            };
            match response {
                Ok(response) => SmithyResponse::try_from(response.map(SdkBody::from_body_1_x))
                    .map_err(|e| ConnectorError::other(e.into(), None)),
                Err(e) => Err(classify(e)),
            }
        })
    }
}

/// Maps a hyper client error to the SDK's classes: a failed dial is an I/O error (retried by
/// the SDK), except a policy refusal, which no retry can fix.
fn classify(err: hyper_util::client::legacy::Error) -> ConnectorError {
    let egress = find_source::<EgressError>(&err);
    if let Some(EgressError::Timeout { .. }) = egress {
        return ConnectorError::timeout(err.into());
    }
    if egress.is_some_and(EgressError::is_not_allowed) {
        return ConnectorError::other(err.into(), None);
    }
    if err.is_connect() || find_source::<io::Error>(&err).is_some() {
        return ConnectorError::io(err.into());
    }
    ConnectorError::other(err.into(), None)
}

fn find_source<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The SDK [`HttpClient`]: one pooled connector per distinct timeout setting (the SDK asks per
/// operation; IMDS, for one, uses short timeouts).
#[derive(Debug, Clone)]
pub struct EgressHttpClient {
    proxy: Endpoint,
    connectors: Arc<Mutex<HashMap<TimeoutKey, SharedHttpConnector>>>,
}

/// (connect timeout, read timeout) as the SDK asks for them.
type TimeoutKey = (Option<Duration>, Option<Duration>);

impl EgressHttpClient {
    pub fn new(proxy: Endpoint) -> EgressHttpClient {
        EgressHttpClient { proxy, connectors: Arc::default() }
    }

    /// For `aws_config::ConfigLoader::http_client` (used by the credential providers, IMDS
    /// included, and by every service client built from that config).
    pub fn shared(proxy: Endpoint) -> SharedHttpClient {
        SharedHttpClient::new(EgressHttpClient::new(proxy))
    }

    pub fn proxy(&self) -> &Endpoint {
        &self.proxy
    }

    fn build(
        &self,
        connect_timeout: Option<Duration>,
        read_timeout: Option<Duration>,
    ) -> SharedHttpConnector {
        let dialer =
            EgressDialer::new(self.proxy.clone(), connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE_TIMEOUT).build(dialer);
        SharedHttpConnector::new(EgressConnector { client, read_timeout })
    }
}

impl HttpClient for EgressHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        // A poisoned lock only means another thread panicked while inserting: the map is intact.
        let mut connectors = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
        connectors.entry(key).or_insert_with(|| self.build(key.0, key.1)).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_config_has_roots_and_http1_alpn() {
        let config = tls_config();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 50);
    }

    /// A SOCKS5 server made of transport's own server handshake: records what was asked and
    /// answers with `code`; on success it speaks a canned HTTP response.
    async fn socks5_server(code: socks5::ReplyCode) -> (Endpoint, tokio::task::JoinHandle<Address>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = transport::Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).await.unwrap();
        let endpoint = listener.local_endpoint().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let request = socks5::server_handshake(&mut stream).await.unwrap();
            socks5::send_reply(&mut stream, code, None).await.unwrap();
            if code == socks5::ReplyCode::Succeeded {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap();
                assert!(
                    buf[..n].starts_with(b"GET /key HTTP/1.1"),
                    "{:?}",
                    String::from_utf8_lossy(&buf[..n])
                );
                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                stream.flush().await.unwrap();
            }
            request.dest
        });
        (endpoint, task)
    }

    #[tokio::test]
    async fn sends_the_host_name_to_the_proxy_and_speaks_http_through_it() {
        let (proxy, task) = socks5_server(socks5::ReplyCode::Succeeded).await;
        let connector = EgressHttpClient::new(proxy).build(None, None);
        let request = http::Request::builder()
            .uri("http://bucket.s3.example.test:8080/key")
            .body(SdkBody::empty())
            .unwrap();
        let response = connector.call(HttpRequest::try_from(request).unwrap()).await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(task.await.unwrap(), Address::Domain("bucket.s3.example.test".into(), 8080));
    }

    #[tokio::test]
    async fn a_policy_refusal_keeps_the_reply_code_and_is_not_retryable() {
        let (proxy, task) = socks5_server(socks5::ReplyCode::NotAllowed).await;
        let connector = EgressHttpClient::new(proxy.clone()).build(None, None);
        let request =
            http::Request::builder().uri("http://169.254.169.254/latest").body(SdkBody::empty()).unwrap();
        let err = connector.call(HttpRequest::try_from(request).unwrap()).await.unwrap_err();
        assert!(!err.is_io() && !err.is_timeout(), "{err:?}");
        let text = aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
        assert!(text.contains("connection not allowed by ruleset (0x02)"), "{text}");
        assert!(text.contains(&format!("egress proxy at {proxy}")), "{text}");
        assert_eq!(task.await.unwrap(), Address::Ip("169.254.169.254:80".parse().unwrap()));
    }

    #[tokio::test]
    async fn refuses_other_schemes_and_names_the_proxy_when_it_cannot_be_reached() {
        let dialer = EgressDialer::new("tcp://127.0.0.1:1".parse().unwrap(), Duration::from_secs(5));
        let err = dialer.dial(&"ftp://example.com/x".parse().unwrap()).await.err().unwrap();
        assert!(matches!(err, EgressError::Scheme(_)), "{err}");
        let err = dialer.dial(&"http://127.0.0.1:9/x".parse().unwrap()).await.err().unwrap();
        assert!(err.to_string().contains("egress proxy unreachable: connect to tcp://127.0.0.1:1"), "{err}");
        assert!(matches!(err, EgressError::ProxyConnect { .. }), "{err}");
    }
}
