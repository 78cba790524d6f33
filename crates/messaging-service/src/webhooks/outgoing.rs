//! The outgoing HTTP client of webhook deliveries (hyper with rustls), which cannot be turned
//! against us: no redirects, no proxies, a total timeout, and a resolver that drops every address the
//! endpoint's mode may not reach *after* DNS resolution, at every attempt (as svix's
//! `webhook_http_client` does). URLs naming an IP literal skip DNS, so they are checked here
//! before sending. Live mode reaches public addresses only; test mode also loopback.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::TokioExecutor,
};
use url::{Host, Url};

use crate::{auth::Mode, error::ServiceError};

/// Which addresses an endpoint may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPolicy {
    /// Live mode: public unicast addresses only.
    PublicOnly,
    /// Test mode: public addresses and loopback (local development).
    PublicOrLoopback,
}

impl AddressPolicy {
    pub fn of(mode: Mode) -> Self {
        match mode {
            Mode::Live => Self::PublicOnly,
            Mode::Test => Self::PublicOrLoopback,
        }
    }

    pub fn allows(self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || (self == Self::PublicOrLoopback && ip.is_loopback())
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Globally routable unicast: not private, loopback, link-local, shared (CGNAT), reserved,
/// documentation, benchmarking, multicast, broadcast or unspecified.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return false;
    }
    // NAT64 (64:ff9b::/96) carries an IPv4 address: judge that.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, hi, lo] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    !((segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[0] == 0x0100 // discard-only
        || (segments[0] == 0x2001 && segments[1] < 0x0200)) // IETF protocol assignments, Teredo
}

/// The longest URL stored (the column's size).
const MAX_URL_BYTES: usize = 2048;

/// Checks an endpoint URL when it is set: absolute `http(s)`, `https` in live mode, and no host
/// that cannot be allowed whatever DNS says (an IP literal outside the policy, `localhost`).
/// Host names are checked again after resolution at every attempt.
pub fn check_url(text: &str, mode: Mode) -> Result<Url, ServiceError> {
    let invalid = |detail: &str| ServiceError::bad_request("invalid_webhook_url", detail);
    let url = Url::parse(text.trim()).map_err(|_| invalid("url must be an absolute URL."))?;
    // Parsing percent-encodes what needs it: the stored form must still fit.
    if url.as_str().len() > MAX_URL_BYTES {
        return Err(invalid("url is longer than 2048 bytes once encoded."));
    }
    match (url.scheme(), mode) {
        ("https", _) | ("http", Mode::Test) => {}
        ("http", Mode::Live) => return Err(invalid("Live-mode endpoints must use https://.")),
        _ => return Err(invalid("url must use https:// (or http:// in test mode).")),
    }
    let policy = AddressPolicy::of(mode);
    let refused = || match mode {
        Mode::Live => invalid("Live-mode endpoints must reach a public address."),
        Mode::Test => invalid("Test-mode endpoints must reach a public or loopback address."),
    };
    match url.host() {
        None => return Err(invalid("url must name a host.")),
        Some(Host::Ipv4(ip)) if !policy.allows(IpAddr::V4(ip)) => return Err(refused()),
        Some(Host::Ipv6(ip)) if !policy.allows(IpAddr::V6(ip)) => return Err(refused()),
        Some(Host::Domain(name)) if policy == AddressPolicy::PublicOnly && is_localhost(name) => {
            return Err(refused());
        }
        Some(_) => {}
    }
    Ok(url)
}

/// `localhost` and its subdomains always mean loopback (RFC 6761).
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Why a host's addresses were refused; found in the error chain of a refused request.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to no address this endpoint may reach")]
struct AddressRefused {
    host: String,
}

/// Resolves with the system resolver and keeps only the addresses the policy allows: the
/// connector only ever sees allowed addresses.
#[derive(Clone)]
struct FilteringResolver {
    policy: AddressPolicy,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl FilteringResolver {
    async fn resolve(self, host: String) -> Result<std::vec::IntoIter<SocketAddr>, BoxError> {
        let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
        let allowed: Vec<SocketAddr> = resolved.filter(|a| self.policy.allows(a.ip())).collect();
        if allowed.is_empty() {
            return Err(Box::new(AddressRefused { host }));
        }
        Ok(allowed.into_iter())
    }
}

impl tower_service::Service<Name> for FilteringResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(self.clone().resolve(name.as_str().to_owned()))
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Succeeded(u16),
    /// Any other answer (410 disables the endpoint).
    HttpError(u16),
    /// No answer within the timeout.
    Timeout,
    /// No connection, TLS failure, or a broken answer.
    ConnectError(String),
    /// The URL's addresses are not allowed for the endpoint's mode; nothing was sent.
    Refused(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded(_) => "succeeded",
            Self::HttpError(_) => "http_error",
            Self::Timeout => "timeout",
            Self::ConnectError(_) => "connect_error",
            Self::Refused(_) => "refused",
        }
    }

    pub fn response_status(&self) -> Option<u16> {
        match self {
            Self::Succeeded(status) | Self::HttpError(status) => Some(*status),
            _ => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Self::ConnectError(error) | Self::Refused(error) => Some(error),
            Self::Timeout => Some("no answer within the timeout"),
            _ => None,
        }
    }
}

/// One signed request to send.
pub struct Request<'a> {
    pub url: &'a str,
    pub mode: Mode,
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: &'a str,
}

type HttpsClient = Client<HttpsConnector<HttpConnector<FilteringResolver>>, Full<Bytes>>;

/// The two clients, one per address policy. Cheap to clone.
#[derive(Clone)]
pub struct Sender {
    live: HttpsClient,
    test: HttpsClient,
    timeout: Duration,
}

/// The client could not be built (TLS set-up).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct SenderError(String);

impl Sender {
    pub fn new(timeout: Duration) -> Result<Self, SenderError> {
        Ok(Self {
            live: client(AddressPolicy::PublicOnly, timeout)?,
            test: client(AddressPolicy::PublicOrLoopback, timeout)?,
            timeout,
        })
    }

    /// POSTs one delivery and says what came of it, with how long it took.
    pub async fn send(&self, request: Request<'_>) -> (Outcome, Duration) {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.outcome(request)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Timeout,
        };
        (outcome, started.elapsed())
    }

    async fn outcome(&self, request: Request<'_>) -> Outcome {
        // Re-check the stored URL at every attempt: the rules may have changed since it was set,
        // and an IP literal never reaches the resolver.
        let url = match check_url(request.url, request.mode) {
            Ok(url) => url,
            Err(err) => return Outcome::Refused(err.to_string()),
        };
        let client = match request.mode {
            Mode::Live => &self.live,
            Mode::Test => &self.test,
        };
        let built = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .header("webhook-id", request.id)
            .header("webhook-timestamp", request.timestamp.to_string())
            .header("webhook-signature", request.signature)
            .body(Full::new(Bytes::copy_from_slice(request.body.as_bytes())));
        let built = match built {
            Ok(built) => built,
            Err(err) => return Outcome::ConnectError(error_chain(&err)),
        };
        // Only the status counts. The body is read (up to 64 KiB, within the timeout) so the
        // connection can serve the next attempt; redirects are not followed (hyper never
        // does), and no proxy is consulted.
        match client.request(built).await {
            Ok(response) => {
                let status = response.status();
                let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
                    .collect()
                    .await;
                if status.is_success() {
                    Outcome::Succeeded(status.as_u16())
                } else {
                    Outcome::HttpError(status.as_u16())
                }
            }
            Err(err) if refused(&err) => Outcome::Refused(error_chain(&err)),
            Err(err) => Outcome::ConnectError(error_chain(&err)),
        }
    }
}

/// The most of a receiver's answer that is read (and thrown away).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

const USER_AGENT: &str = concat!("tybrite-webhooks/", env!("CARGO_PKG_VERSION"));

fn client(policy: AddressPolicy, timeout: Duration) -> Result<HttpsClient, SenderError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SenderError(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(FilteringResolver { policy });
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .build(https))
}

fn refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if current.is::<AddressRefused>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// The error and its causes on one line, bounded for storage.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn live_mode_reaches_public_addresses_only() {
        let live = AddressPolicy::PublicOnly;
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(live.allows(ip(public)), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ] {
            assert!(!live.allows(ip(private)), "{private}");
        }
    }

    #[test]
    fn test_mode_also_reaches_loopback_but_not_private_ranges() {
        let test = AddressPolicy::PublicOrLoopback;
        for allowed in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "8.8.8.8"] {
            assert!(test.allows(ip(allowed)), "{allowed}");
        }
        for refused in ["10.0.0.1", "192.168.0.10", "169.254.169.254", "fd00::1"] {
            assert!(!test.allows(ip(refused)), "{refused}");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_and_literal_hosts() {
        let code = |url: &str, mode| check_url(url, mode).map(|_| ()).map_err(|e| e.code());
        assert_eq!(code("https://hooks.acme.example/in", Mode::Live), Ok(()));
        assert_eq!(code("http://127.0.0.1:9000/in", Mode::Test), Ok(()));
        assert_eq!(code("http://localhost:9000/in", Mode::Test), Ok(()));
        for (url, mode) in [
            ("http://hooks.acme.example/in", Mode::Live),
            ("https://127.0.0.1/in", Mode::Live),
            ("https://[::1]/in", Mode::Live),
            ("https://localhost/in", Mode::Live),
            ("https://api.localhost./in", Mode::Live),
            ("https://10.0.0.8/in", Mode::Test),
            ("https://169.254.169.254/latest", Mode::Test),
            ("ftp://hooks.acme.example/in", Mode::Test),
            ("/relative", Mode::Test),
            ("not a url", Mode::Test),
        ] {
            assert_eq!(
                code(url, mode),
                Err("invalid_webhook_url"),
                "{url} {mode:?}"
            );
        }
        // 1 000 characters that percent-encoding makes six times as long.
        let encoded = format!("https://hooks.acme.example/{}", "é".repeat(1_000));
        assert_eq!(code(&encoded, Mode::Test), Err("invalid_webhook_url"));
    }

    /// A name that resolves only to refused addresses fails in the resolver: no connection is
    /// made. `localhost` resolves to loopback, which live mode refuses.
    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        let live = FilteringResolver {
            policy: AddressPolicy::PublicOnly,
        };
        let err = match live.resolve("localhost".to_owned()).await {
            Ok(_) => panic!("localhost resolved for live mode"),
            Err(err) => err,
        };
        assert!(err.is::<AddressRefused>(), "{err}");
        let test = FilteringResolver {
            policy: AddressPolicy::PublicOrLoopback,
        };
        let addrs: Vec<SocketAddr> = test
            .resolve("localhost".to_owned())
            .await
            .map_err(|e| e.to_string())
            .unwrap()
            .collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
