//! The one DNS resolver of the process: names the enclave asks for are resolved here, on the
//! parent, with a TTL cache shared by every connection.
//!
//! - Answers carry all A and AAAA records (IPv4 first: EC2 parents often have no IPv6 route, and the
//!   caller tries the addresses in turn).
//! - Each answer is cached for its DNS TTL clamped to `[min_ttl_secs, max_ttl_secs]`; "no such
//!   name" and "no records" for `negative_ttl_secs`; timeouts and server failures not at all.
//! - Concurrent lookups of one name share one query (single flight).
//! - Every lookup is bounded by `timeout_ms`; a failure is a [`DnsError`] for that one lookup.
//! - Names are looked up as absolute names: the search list of resolv.conf is never appended,
//!   so the name the policy checked is the name that is queried.
//! - `static_hosts` answer without DNS; `/etc/hosts` is consulted (via hickory) before servers.
//!
//! Name servers come from `servers` if set, else from `/etc/resolv.conf`; if that cannot be read
//! the Amazon-provided VPC resolver (169.254.169.253) is used, with a warning.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::policy::{normalise_name, normalised, parse_ip_literal, validate_name};

/// The Amazon-provided DNS server, reachable from every VPC instance.
const AWS_VPC_RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 253));

/// Upper bound on cached names; beyond it expired entries are purged, then the oldest dropped.
const MAX_CACHED_NAMES: usize = 10_000;

/// The `[dns]` table of the configuration file. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Cache an answer at least this long, whatever its TTL (seconds). Default 5.
    pub min_ttl_secs: u64,
    /// Cache an answer at most this long, whatever its TTL (seconds). Default 300.
    pub max_ttl_secs: u64,
    /// Cache "no such name" / "no address records" this long (seconds); 0 = not at all. Default 5.
    pub negative_ttl_secs: u64,
    /// Give up on one lookup (all servers and retries) after this long (milliseconds). Default 5000.
    pub timeout_ms: u64,
    /// Name servers to use instead of `/etc/resolv.conf`, e.g. `["169.254.169.253:53"]`.
    pub servers: Vec<SocketAddr>,
    /// Fixed answers that never go to DNS: `"kms.internal" = ["10.0.0.5"]`.
    pub static_hosts: BTreeMap<String, Vec<IpAddr>>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            min_ttl_secs: 5,
            max_ttl_secs: 300,
            negative_ttl_secs: 5,
            timeout_ms: 5000,
            servers: Vec::new(),
            static_hosts: BTreeMap::new(),
        }
    }
}

/// Why a lookup failed (or why the configuration is unusable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN).
    #[error("DNS: {name} does not exist")]
    NxDomain { name: String },
    /// The name exists but has no A or AAAA record.
    #[error("DNS: {name} has no A or AAAA records")]
    NoRecords { name: String },
    /// No answer within the configured timeout.
    #[error("DNS: lookup of {name} timed out after {after:?}")]
    Timeout { name: String, after: Duration },
    /// The name servers could not be reached or answered with an error.
    #[error("DNS: lookup of {name} failed: {reason}")]
    Failed { name: String, reason: String },
    /// The name cannot be a host name.
    #[error("DNS: {name:?} is not a valid host name: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A `[dns]` setting is invalid.
    #[error("dns.{field}: {reason}")]
    Config { field: String, reason: String },
}

impl DnsError {
    /// A short label for metrics: `nxdomain`, `no_records`, `timeout`, `failed`, `invalid_name`,
    /// `config`.
    pub fn kind(&self) -> &'static str {
        match self {
            DnsError::NxDomain { .. } => "nxdomain",
            DnsError::NoRecords { .. } => "no_records",
            DnsError::Timeout { .. } => "timeout",
            DnsError::Failed { .. } => "failed",
            DnsError::InvalidName { .. } => "invalid_name",
            DnsError::Config { .. } => "config",
        }
    }
}

/// A shared resolver; clones share the cache and the counters.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    hickory: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
    negative_ttl: Duration,
    timeout: Duration,
    static_hosts: HashMap<String, Arc<[IpAddr]>>,
    cache: Mutex<HashMap<String, Arc<Slot>>>,
    counters: CacheCounters,
}

/// Lookups answered without a new query (`hits`: the cache, a query already in flight,
/// `static_hosts`) and lookups that sent one (`misses`). Clones share the counts, so a resolver
/// that replaces another (a reload's new `[dns]`) goes on counting into the same series.
#[derive(Debug, Clone, Default)]
pub struct CacheCounters {
    pub hits: Counter,
    pub misses: Counter,
}

/// One cached name: empty while its query is in flight, then the answer and its expiry.
#[derive(Default)]
struct Slot {
    answer: OnceCell<Answer>,
}

#[derive(Clone)]
struct Answer {
    result: Result<Arc<[IpAddr]>, DnsError>,
    expires: Instant,
}

impl Slot {
    fn is_fresh(&self, now: Instant) -> bool {
        self.answer.get().is_none_or(|a| a.expires > now)
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (hits, misses) = self.cache_stats();
        f.debug_struct("Resolver").field("hits", &hits).field("misses", &misses).finish_non_exhaustive()
    }
}

impl Resolver {
    /// Validates the configuration and sets up the resolver (reads `/etc/resolv.conf` and
    /// `/etc/hosts` unless `servers` is given). Sends no query.
    pub fn new(config: &DnsConfig) -> Result<Resolver, DnsError> {
        Resolver::with_counters(config, CacheCounters::default())
    }

    /// [`Resolver::new`], counting its cache hits and misses into `counters`.
    pub fn with_counters(config: &DnsConfig, counters: CacheCounters) -> Result<Resolver, DnsError> {
        let config_err = |field: &str, reason: String| DnsError::Config { field: field.to_owned(), reason };
        if config.min_ttl_secs > config.max_ttl_secs {
            return Err(config_err(
                "min_ttl_secs",
                format!("{} is larger than max_ttl_secs ({})", config.min_ttl_secs, config.max_ttl_secs),
            ));
        }
        if config.timeout_ms == 0 {
            return Err(config_err("timeout_ms", "must be at least 1".into()));
        }
        let mut static_hosts = HashMap::new();
        for (name, addrs) in &config.static_hosts {
            let field = format!("static_hosts.{name:?}");
            let key = normalise_name(name);
            if parse_ip_literal(&key).is_some() {
                return Err(config_err(&field, "is an IP address, not a name".into()));
            }
            validate_name(&key)
                .map_err(|reason| config_err(&field, format!("not a valid host name: {reason}")))?;
            if addrs.is_empty() {
                return Err(config_err(&field, "needs at least one address".into()));
            }
            if static_hosts.insert(key, Arc::from(addrs.as_slice())).is_some() {
                return Err(config_err(&field, "is listed twice (names are case-insensitive)".into()));
            }
        }

        let timeout = Duration::from_millis(config.timeout_ms);
        let (resolver_config, mut opts) = if config.servers.is_empty() {
            system_config()
        } else {
            let servers = config.servers.iter().map(|addr| name_server(*addr)).collect();
            (ResolverConfig::from_name_servers(servers), ResolverOpts::default())
        };
        // Our own cache sits in front and owns TTL handling; hickory's would hide expiries.
        opts.cache_size = 0;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Two attempts fit in one lookup's budget, so a lost UDP packet is retried in time; the
        // outer timeout in `query` is the hard bound either way.
        opts.attempts = 2;
        opts.timeout = (timeout / 2).max(Duration::from_millis(1));
        opts.use_hosts_file = ResolveHosts::Always;
        let hickory = TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| config_err("servers", format!("cannot set up the resolver: {e}")))?;

        Ok(Resolver {
            inner: Arc::new(Inner {
                hickory,
                min_ttl: Duration::from_secs(config.min_ttl_secs),
                max_ttl: Duration::from_secs(config.max_ttl_secs),
                negative_ttl: Duration::from_secs(config.negative_ttl_secs),
                timeout,
                static_hosts,
                cache: Mutex::new(HashMap::new()),
                counters,
            }),
        })
    }

    /// All A and AAAA addresses of `name` (IPv4 first), from the cache, `static_hosts`, the
    /// hosts file or DNS. An IP literal is returned as itself without a lookup.
    pub async fn lookup(&self, name: &str) -> Result<Arc<[IpAddr]>, DnsError> {
        let key = normalised(name);
        match parse_ip_literal(&key) {
            Some(Ok(ip)) => return Ok(Arc::from([ip])),
            Some(Err(reason)) => return Err(DnsError::InvalidName { name: name.to_owned(), reason }),
            None => {}
        }
        validate_name(&key).map_err(|reason| DnsError::InvalidName { name: name.to_owned(), reason })?;
        let inner = &self.inner;
        if let Some(addrs) = inner.static_hosts.get(&*key) {
            inner.counters.hits.inc();
            return Ok(addrs.clone());
        }

        let slot = self.slot(&key);
        let mut queried = false;
        let answer = slot
            .answer
            .get_or_init(|| {
                queried = true;
                inner.counters.misses.inc();
                self.query(&key)
            })
            .await;
        if !queried {
            inner.counters.hits.inc();
        }
        answer.result.clone()
    }

    /// (hits, misses): lookups answered without a new query (cache, a query already in flight,
    /// `static_hosts`) and lookups that sent one.
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.inner.counters.hits.get(), self.inner.counters.misses.get())
    }

    /// The cache slot for `key`: the current one if fresh or in flight, else a new empty one.
    fn slot(&self, key: &str) -> Arc<Slot> {
        let now = Instant::now();
        // A poisoned lock only means another lookup panicked mid-update of a plain map.
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = cache.get(key)
            && slot.is_fresh(now)
        {
            return slot.clone();
        }
        if cache.len() >= MAX_CACHED_NAMES {
            cache.retain(|_, slot| slot.is_fresh(now));
            while cache.len() >= MAX_CACHED_NAMES {
                let Some(oldest) = cache
                    .iter()
                    .filter_map(|(k, s)| s.answer.get().map(|a| (a.expires, k)))
                    .min()
                    .map(|(_, k)| k.clone())
                else {
                    break; // all in flight: let the map exceed the cap briefly
                };
                cache.remove(&oldest);
            }
        }
        let slot = Arc::new(Slot::default());
        cache.insert(key.to_owned(), slot.clone());
        slot
    }

    async fn query(&self, key: &str) -> Answer {
        let inner = &self.inner;
        let name = key.to_owned();
        // The trailing dot makes the name absolute: no search-list expansion.
        let fqdn = format!("{key}.");
        let started = Instant::now();
        let outcome = tokio::time::timeout(inner.timeout, inner.hickory.lookup_ip(fqdn.as_str())).await;
        let now = Instant::now();
        let (result, ttl): (Result<Arc<[IpAddr]>, DnsError>, Duration) = match outcome {
            Err(_) => (Err(DnsError::Timeout { name, after: inner.timeout }), Duration::ZERO),
            Ok(Ok(lookup)) => {
                let mut addrs: Vec<IpAddr> = lookup.iter().collect();
                // Keep IPv4 first whatever order the answers came in, without duplicates.
                addrs.sort_by_key(|ip| ip.is_ipv6());
                dedup_in_order(&mut addrs);
                if addrs.is_empty() {
                    (Err(DnsError::NoRecords { name }), inner.negative_ttl)
                } else {
                    let ttl = lookup.valid_until().saturating_duration_since(now);
                    (Ok(Arc::from(addrs)), ttl.clamp(inner.min_ttl, inner.max_ttl))
                }
            }
            Ok(Err(e)) if e.is_nx_domain() => (Err(DnsError::NxDomain { name }), inner.negative_ttl),
            Ok(Err(e)) if e.is_no_records_found() => (Err(DnsError::NoRecords { name }), inner.negative_ttl),
            Ok(Err(NetError::Timeout)) => {
                (Err(DnsError::Timeout { name, after: started.elapsed() }), Duration::ZERO)
            }
            Ok(Err(e)) => (Err(DnsError::Failed { name, reason: e.to_string() }), Duration::ZERO),
        };
        match &result {
            Ok(addrs) => {
                tracing::debug!(name = key, addresses = addrs.len(), ttl_secs = ttl.as_secs(), "resolved")
            }
            Err(e) => tracing::debug!(name = key, error = %e, "lookup failed"),
        }
        Answer { result, expires: now + ttl }
    }
}

fn dedup_in_order(addrs: &mut Vec<IpAddr>) {
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|ip| seen.insert(*ip));
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

/// `/etc/resolv.conf`, or the VPC resolver if it cannot be read or names no server.
fn system_config() -> (ResolverConfig, ResolverOpts) {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok((config, opts)) if !config.name_servers().is_empty() => (config, opts),
        Ok(_) => {
            tracing::warn!(
                fallback = %AWS_VPC_RESOLVER,
                "/etc/resolv.conf names no name server; using the Amazon-provided VPC resolver"
            );
            fallback_config()
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                fallback = %AWS_VPC_RESOLVER,
                "cannot read /etc/resolv.conf; using the Amazon-provided VPC resolver"
            );
            fallback_config()
        }
    }
}

fn fallback_config() -> (ResolverConfig, ResolverOpts) {
    let servers = vec![name_server(SocketAddr::new(AWS_VPC_RESOLVER, 53))];
    (ResolverConfig::from_name_servers(servers), ResolverOpts::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::net::UdpSocket;

    /// A real UDP DNS server on 127.0.0.1 for tests: answers A queries for names in `a_records`
    /// with the given TTL, NXDOMAIN for others (NOERROR with no answer for AAAA of known names),
    /// and counts the queries it receives. With `silent`, it never answers; it ignores the first
    /// `drop_first` queries (lost packets).
    struct TestDnsServer {
        addr: SocketAddr,
        queries: Arc<AtomicU32>,
    }

    impl TestDnsServer {
        async fn start(a_records: Vec<(&'static str, Ipv4Addr)>, ttl: u32, silent: bool) -> TestDnsServer {
            Self::start_with(a_records, ttl, silent, 0).await
        }

        async fn start_with(
            a_records: Vec<(&'static str, Ipv4Addr)>,
            ttl: u32,
            silent: bool,
            drop_first: u32,
        ) -> TestDnsServer {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let queries = Arc::new(AtomicU32::new(0));
            let counter = queries.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                loop {
                    let Ok((n, peer)) = socket.recv_from(&mut buf).await else { return };
                    let seen = counter.fetch_add(1, Ordering::SeqCst);
                    if silent || seen < drop_first {
                        continue;
                    }
                    if let Some(reply) = answer(&buf[..n], &a_records, ttl) {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                }
            });
            TestDnsServer { addr, queries }
        }

        fn queries(&self) -> u32 {
            self.queries.load(Ordering::SeqCst)
        }
    }

    /// Builds a response to one query (RFC 1035 section 4): header, the question copied back, and
    /// an A record pointing at the question name (compression pointer 0xC00C).
    fn answer(query: &[u8], records: &[(&str, Ipv4Addr)], ttl: u32) -> Option<Vec<u8>> {
        // Question name: labels from offset 12 to a zero byte, then QTYPE and QCLASS.
        let mut pos = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*query.get(pos)?);
            pos += 1;
            if len == 0 {
                break;
            }
            labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
            pos += len;
        }
        let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
        let question_end = pos + 4;
        let name = labels.join(".");
        let found = records.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip);
        let mut out = Vec::new();
        out.extend_from_slice(&query[..2]); // id
        let rcode = if found.is_some() { 0 } else { 3 }; // NOERROR / NXDOMAIN
        out.extend_from_slice(&[0x81, 0x80 | rcode]); // QR, RD, RA
        let answers = u16::from(found.is_some() && qtype == 1);
        out.extend_from_slice(&[0, 1]); // QDCOUNT
        out.extend_from_slice(&answers.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
        out.extend_from_slice(query.get(12..question_end)?);
        if answers == 1 {
            out.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&[0, 4]);
            out.extend_from_slice(&found?.octets());
        }
        Some(out)
    }

    fn config_for(server: &TestDnsServer) -> DnsConfig {
        DnsConfig { servers: vec![server.addr], timeout_ms: 2000, ..DnsConfig::default() }
    }

    #[tokio::test]
    async fn static_hosts_answer_without_dns() {
        let mut config = DnsConfig::default();
        config.static_hosts.insert("KMS.Internal.".into(), vec!["10.0.0.5".parse().unwrap()]);
        let resolver = Resolver::new(&config).unwrap();
        let addrs = resolver.lookup("kms.internal").await.unwrap();
        assert_eq!(&addrs[..], &["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(resolver.cache_stats(), (1, 0));
    }

    #[tokio::test]
    async fn ip_literals_are_returned_as_they_are() {
        let resolver = Resolver::new(&DnsConfig::default()).unwrap();
        assert_eq!(&resolver.lookup("127.1").await.unwrap()[..], &[IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(&resolver.lookup("[::1]").await.unwrap()[..], &[IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        assert_eq!(resolver.lookup("1.2.3.4.5").await.unwrap_err().kind(), "invalid_name");
        assert_eq!(resolver.lookup("a..b").await.unwrap_err().kind(), "invalid_name");
        assert_eq!(resolver.cache_stats(), (0, 0));
    }

    #[tokio::test]
    async fn localhost_comes_from_the_hosts_file() {
        // Points DNS at a server that never answers: only the hosts file can answer in time.
        let server = TestDnsServer::start(vec![], 60, true).await;
        let resolver = Resolver::new(&config_for(&server)).unwrap();
        let addrs = resolver.lookup("localhost").await.unwrap();
        assert!(addrs.iter().all(|ip| ip.is_loopback()), "{addrs:?}");
        assert!(addrs.contains(&IpAddr::from([127, 0, 0, 1])), "{addrs:?}");
    }

    #[tokio::test]
    async fn answers_are_cached_and_counted() {
        let server =
            TestDnsServer::start(vec![("s3.example.test", Ipv4Addr::new(192, 0, 2, 7))], 60, false).await;
        let resolver = Resolver::new(&config_for(&server)).unwrap();
        let first = resolver.lookup("s3.example.test").await.unwrap();
        assert_eq!(&first[..], &[IpAddr::from([192, 0, 2, 7])]);
        let queries = server.queries();
        assert!(queries >= 1);
        let second = resolver.lookup("S3.Example.Test.").await.unwrap();
        assert_eq!(first, second);
        assert_eq!(server.queries(), queries, "the second lookup must not reach the server");
        assert_eq!(resolver.cache_stats(), (1, 1));
    }

    #[tokio::test]
    async fn entries_expire_after_the_clamped_ttl() {
        // The server says 3600 s; max_ttl_secs = 1 caps it.
        let server =
            TestDnsServer::start(vec![("short.example.test", Ipv4Addr::new(192, 0, 2, 8))], 3600, false)
                .await;
        let config = DnsConfig { min_ttl_secs: 0, max_ttl_secs: 1, ..config_for(&server) };
        let resolver = Resolver::new(&config).unwrap();
        resolver.lookup("short.example.test").await.unwrap();
        resolver.lookup("short.example.test").await.unwrap();
        assert_eq!(resolver.cache_stats(), (1, 1));
        let before = server.queries();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        resolver.lookup("short.example.test").await.unwrap();
        assert_eq!(resolver.cache_stats(), (1, 2));
        assert!(server.queries() > before, "an expired entry must be queried again");
    }

    #[tokio::test]
    async fn min_ttl_keeps_short_lived_answers() {
        let server =
            TestDnsServer::start(vec![("zero.example.test", Ipv4Addr::new(192, 0, 2, 9))], 0, false).await;
        let config = DnsConfig { min_ttl_secs: 60, ..config_for(&server) };
        let resolver = Resolver::new(&config).unwrap();
        resolver.lookup("zero.example.test").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        resolver.lookup("zero.example.test").await.unwrap();
        assert_eq!(resolver.cache_stats(), (1, 1), "a TTL of 0 is raised to min_ttl_secs");
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_query() {
        let server =
            TestDnsServer::start(vec![("many.example.test", Ipv4Addr::new(192, 0, 2, 10))], 60, false).await;
        let resolver = Resolver::new(&config_for(&server)).unwrap();
        let lookups: Vec<_> = (0..20)
            .map(|_| {
                let resolver = resolver.clone();
                tokio::spawn(async move { resolver.lookup("many.example.test").await })
            })
            .collect();
        for lookup in lookups {
            assert_eq!(&lookup.await.unwrap().unwrap()[..], &[IpAddr::from([192, 0, 2, 10])]);
        }
        assert_eq!(resolver.cache_stats(), (19, 1));
    }

    #[tokio::test]
    async fn nxdomain_is_an_error_and_cached_briefly() {
        let server = TestDnsServer::start(vec![], 60, false).await;
        let resolver = Resolver::new(&config_for(&server)).unwrap();
        let err = resolver.lookup("missing.example.test").await.unwrap_err();
        assert_eq!(err, DnsError::NxDomain { name: "missing.example.test".into() });
        assert_eq!(err.to_string(), "DNS: missing.example.test does not exist");
        let again = resolver.lookup("missing.example.test").await.unwrap_err();
        assert_eq!(again, err);
        assert_eq!(resolver.cache_stats(), (1, 1));
    }

    #[tokio::test]
    async fn unanswered_lookup_times_out_within_the_bound() {
        let server = TestDnsServer::start(vec![], 60, true).await;
        let config = DnsConfig { timeout_ms: 300, ..config_for(&server) };
        let resolver = Resolver::new(&config).unwrap();
        let started = Instant::now();
        let err = resolver.lookup("silent.example.test").await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), "timeout", "{err}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(server.queries() >= 1);
        // Failures other than "no such name" are not cached: the next lookup asks again.
        resolver.lookup("silent.example.test").await.unwrap_err();
        assert_eq!(resolver.cache_stats(), (0, 2));
    }

    #[tokio::test]
    async fn a_lost_packet_is_retried_within_the_timeout() {
        let server = TestDnsServer::start_with(
            vec![("lossy.example.test", Ipv4Addr::new(192, 0, 2, 11))],
            60,
            false,
            2,
        )
        .await;
        // The first two queries (the first A and AAAA) are lost; the answer must still come, from a
        // retransmission, within the budget.
        let config = DnsConfig { timeout_ms: 2000, ..config_for(&server) };
        let resolver = Resolver::new(&config).unwrap();
        let addrs = resolver.lookup("lossy.example.test").await.unwrap();
        assert_eq!(&addrs[..], &[IpAddr::from([192, 0, 2, 11])]);
        assert!(server.queries() >= 3, "queries: {}", server.queries());
    }

    #[tokio::test]
    async fn invalid_tld_fails_quickly_with_system_config() {
        // Whatever the machine's resolver does with `.invalid` (NXDOMAIN, or no network at all),
        // the answer is an error within the configured bound, never a panic or a hang.
        let config = DnsConfig { timeout_ms: 1500, ..DnsConfig::default() };
        let resolver = Resolver::new(&config).unwrap();
        let started = Instant::now();
        let err = resolver.lookup("no-such-host.invalid").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(1500 + 500), "{err}");
        assert!(["nxdomain", "no_records", "timeout", "failed"].contains(&err.kind()), "{err}");
    }

    /// `vsockproxy check CONFIG` validates without a runtime: building the resolver sends nothing
    /// and needs no reactor.
    #[test]
    fn builds_outside_a_runtime() {
        let config = DnsConfig { servers: vec!["127.0.0.1:53".parse().unwrap()], ..DnsConfig::default() };
        let resolver = Resolver::new(&config).unwrap();
        assert_eq!(resolver.cache_stats(), (0, 0));
        Resolver::new(&DnsConfig::default()).unwrap();
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |config: DnsConfig| Resolver::new(&config).map(|_| ()).unwrap_err().to_string();
        assert_eq!(
            err(DnsConfig { min_ttl_secs: 10, max_ttl_secs: 5, ..DnsConfig::default() }),
            "dns.min_ttl_secs: 10 is larger than max_ttl_secs (5)"
        );
        assert_eq!(
            err(DnsConfig { timeout_ms: 0, ..DnsConfig::default() }),
            "dns.timeout_ms: must be at least 1"
        );
        let mut config = DnsConfig::default();
        config.static_hosts.insert("bad..name".into(), vec!["10.0.0.1".parse().unwrap()]);
        assert!(err(config).starts_with("dns.static_hosts.\"bad..name\": not a valid host name"));
        let mut config = DnsConfig::default();
        config.static_hosts.insert("empty.test".into(), vec![]);
        assert_eq!(err(config), "dns.static_hosts.\"empty.test\": needs at least one address");
        let mut config = DnsConfig::default();
        config.static_hosts.insert("A.test".into(), vec!["10.0.0.1".parse().unwrap()]);
        config.static_hosts.insert("a.test".into(), vec!["10.0.0.2".parse().unwrap()]);
        assert!(err(config).contains("is listed twice"));
    }

    #[test]
    fn config_parses_from_toml() {
        let config: DnsConfig = toml::from_str(
            "min_ttl_secs = 1\nservers = [\"127.0.0.1:5353\"]\n[static_hosts]\n\"kms.internal\" = [\"10.0.0.5\", \"fd00::5\"]\n",
        )
        .unwrap();
        assert_eq!(config.min_ttl_secs, 1);
        assert_eq!(config.max_ttl_secs, 300);
        assert_eq!(config.static_hosts["kms.internal"].len(), 2);
        let err = toml::from_str::<DnsConfig>("ttl = 5").unwrap_err();
        assert!(err.to_string().contains("unknown field `ttl`"), "{err}");
    }
}
