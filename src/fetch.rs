//! The one outbound HTTP fetcher: GET with a timeout and a size cap, over http or https
//! (rustls with the aws-lc-rs provider and the Mozilla roots bundled in, so a slim container
//! needs no CA store). Used for the GCP JWKS and, public addresses only, Azure issuers.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;

/// Default limits for trust material.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A response body and how long it may be cached (`Cache-Control: max-age`).
pub struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

#[derive(Clone)]
pub struct Fetcher<R = GaiResolver> {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector<R>>, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl Fetcher {
    pub fn new(timeout: Duration, max_bytes: usize) -> Result<Self, FetchError> {
        Fetcher::with_resolver(GaiResolver::new(), timeout, max_bytes)
    }
}

impl Fetcher<PublicOnlyResolver> {
    /// A fetcher that connects only after every address its host resolves to has been checked
    /// to be public, and then dials those very addresses (no second lookup to rebind).
    /// A URL with an IP literal skips the resolver: callers allow host names only.
    pub fn public_only(timeout: Duration, max_bytes: usize) -> Result<Self, FetchError> {
        Fetcher::with_resolver(PublicOnlyResolver, timeout, max_bytes)
    }
}

impl<R> Fetcher<R>
where
    R: tower::Service<Name> + Clone + Send + Sync + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr> + Send,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R::Future: Send,
{
    pub fn with_resolver(
        resolver: R,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Self, FetchError> {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            max_bytes,
        })
    }

    /// GETs `url`: non-2xx, oversized and slow responses are errors.
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        self.get_with(url, None).await
    }

    /// GETs `url` with `Authorization: Bearer <token>`.
    pub async fn get_bearer(&self, url: &str, token: &str) -> Result<Fetched, FetchError> {
        self.get_with(url, Some(token)).await
    }

    async fn get_with(&self, url: &str, bearer: Option<&str>) -> Result<Fetched, FetchError> {
        let uri: hyper::Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(FetchError::Url(url.to_owned()));
        }
        let mut request = hyper::Request::get(uri);
        if let Some(token) = bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|_| FetchError::Url(url.to_owned()))?;
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| FetchError::Request(e.to_string()))?;
            let status = response.status();
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            let max_age = response
                .headers()
                .get(hyper::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            let body = Limited::new(response.into_body(), self.max_bytes)
                .collect()
                .await
                .map_err(|_| FetchError::TooLarge(self.max_bytes))?
                .to_bytes();
            Ok(Fetched { body, max_age })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }
}

/// Resolves with the system resolver and refuses a host if any of its addresses is not public.
#[derive(Clone, Copy, Debug)]
pub struct PublicOnlyResolver;

impl tower::Service<Name> for PublicOnlyResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addresses.is_empty() {
                return Err(std::io::Error::other(format!("{host} has no address")));
            }
            if let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to non-public {}", private.ip()),
                ));
            }
            Ok(addresses.into_iter())
        })
    }
}

/// False for loopback, private, link-local, multicast, unspecified, broadcast, documentation,
/// carrier-grade NAT, benchmarking, reserved and the IPv6 equivalents. An IPv6 address that
/// embeds an IPv4 address is judged by that IPv4 address: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96` and
/// 6to4 `2002::/16`. Other transition and special ranges are refused: Teredo `2001::/32`,
/// local-use NAT64 `64:ff9b:1::/48`, site-local `fec0::/10`, discard `100::/64`, ORCHID and
/// benchmarking.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && c == 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
            };
            // ::/96 (compatible, and :: and ::1), ::ffff:0:0/96 (mapped), ::ffff:0:0:0/96
            // (translated), 64:ff9b::/96 (NAT64): the last 32 bits are the IPv4 address.
            if s[..5] == [0; 5] && (s[5] == 0 || s[5] == 0xffff)
                || s[..6] == [0, 0, 0, 0, 0xffff, 0]
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            {
                return is_public(embedded(s[6], s[7]));
            }
            // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2]));
            }
            !(v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || s[0] == 0x0064
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x2001 && s[1] == 0)
                || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0)
                || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010)
                || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020))
        }
    }
}

/// `max-age=N` from a Cache-Control value.
fn parse_max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let (name, seconds) = directive.trim().split_once('=')?;
        if name.trim().eq_ignore_ascii_case("max-age") {
            seconds
                .trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:169.254.169.254",
            "2001:db8::1",
            // The review's gaps: embedded private IPv4 in every IPv6 form, and ranges that
            // reach an IPv4 network by translation or tunnelling.
            "::127.0.0.1",
            "::169.254.169.254",
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.0.0.1",
            "2002:7f00:0001::1",
            "2002:a9fe:a9fe::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "feff::1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::1.2.3.4",
            "100::1",
            "2001:20::1",
            "::",
        ] {
            assert!(
                !is_public(
                    private
                        .parse()
                        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
                ),
                "{private}"
            );
        }
        for public in [
            "13.107.246.45",
            "2620:1ec:bdf::45",
            "::ffff:13.107.246.45",
            "64:ff9b::13.107.246.45",
            "2002:0d6b:f62d::1",
        ] {
            assert!(
                is_public(
                    public
                        .parse()
                        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
                ),
                "{public}"
            );
        }
    }

    #[tokio::test]
    async fn the_public_only_resolver_refuses_a_loopback_host() {
        use tower::Service as _;
        let name: Name = "localhost".parse().expect("a valid name");
        let resolved = PublicOnlyResolver.call(name).await;
        assert!(resolved.is_err());
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=19773, must-revalidate"),
            Some(Duration::from_secs(19773))
        );
        assert_eq!(parse_max_age("no-store"), None);
    }
}
