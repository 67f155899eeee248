//! Fetching Azure issuer certificates through the signer's AIA "CA Issuers" URLs
//! (`--azure-fetch-issuers`, off by default). Rules (DESIGN.md 4, from Coder's hardening and
//! coder#25418, and the second adversarial review):
//! - the caller asks only after the signer's name passed and its issuer is not pinned
//!   (`AzureTrust::issuer_to_fetch`), so self-signed junk costs nothing;
//! - only `www.microsoft.com`, `caissuers.microsoft.com` and `cacerts.digicert.com`, http or
//!   https, default ports, a path ending `.crt` or `.cer`, no query, no user info;
//! - every resolved address must be public, and those addresses are dialled (no rebinding);
//! - 5 s timeout, 1 MiB cap; DER or PEM bodies;
//! - **only what can help is kept**: a fetched certificate is kept (in a bounded cache keyed by
//!   its subject, which is the next signer's issuer name) only if it is the issuer asked for,
//!   signed by a pinned root or intermediate, and valid now. Junk, however much, never enters
//!   it, so it cannot evict what legitimate documents need; a known issuer is found by name
//!   with no fetch at all, whatever URL a document names;
//! - a URL that gave nothing usable is not fetched again for [`NEGATIVE_TTL`];
//! - fetches are rate-limited (a token bucket). When the budget is spent and nothing known
//!   helps, the answer is [`Issuers::RateLimited`], which the use case makes retryable
//!   (TRUST_UNAVAILABLE), never a final "invalid identity".
//!
//! A fetched certificate is never trusted by itself: it is only an intermediate that helps
//! build a chain that must still end at a pinned root.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use openssl::x509::X509;

use crate::fetch::{self, FetchError, Fetcher, PublicOnlyResolver};
use crate::identity::IdentityError;
use crate::identity::azure::{AzureTrust, IssuerRequest};

/// Hosts that serve Microsoft's and DigiCert's CA certificates.
pub const ALLOWED_HOSTS: &[&str] = &[
    "www.microsoft.com",
    "caissuers.microsoft.com",
    "cacerts.digicert.com",
];

/// The most issuers fetched for one request.
const MAX_URLS: usize = 4;

/// How many fetched issuers are kept (least recently used ones are dropped first). Only
/// issuers signed by pinned CAs enter, and Azure has about a dozen.
pub const CACHE_ENTRIES: usize = 32;

/// How long a URL that gave nothing usable is not asked again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10 * 60);
/// How many such URLs are remembered.
const NEGATIVE_ENTRIES: usize = 4096;

/// How fast fetches may go: `burst` at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy)]
pub struct FetchRate {
    pub burst: u32,
    pub per_minute: u32,
}

impl Default for FetchRate {
    /// A handful of intermediates at once (Azure has eight G2 ones), then one every 2 s.
    fn default() -> Self {
        Self {
            burst: 8,
            per_minute: 30,
        }
    }
}

/// What fetching found for a signer.
pub enum Issuers {
    /// Its issuer (known already, or fetched now).
    Found(Vec<X509>),
    /// Nothing usable behind its URLs.
    NotFound,
    /// Not known, and the fetch budget is spent: try again later.
    RateLimited,
}

pub struct IssuerFetcher<R = PublicOnlyResolver> {
    fetcher: Fetcher<R>,
    /// Issuers that can help, by subject (DER).
    known: Mutex<LruCache<Vec<u8>, X509>>,
    /// URLs that gave nothing usable lately.
    failed: crate::recent::Recent<String>,
    bucket: Mutex<TokenBucket>,
}

impl IssuerFetcher {
    /// The production fetcher: public addresses only, default rate.
    pub fn new() -> Result<Self, FetchError> {
        Ok(Self::with_fetcher(
            Fetcher::public_only(fetch::DEFAULT_TIMEOUT, fetch::DEFAULT_MAX_BYTES)?,
            FetchRate::default(),
        ))
    }
}

impl<R> IssuerFetcher<R>
where
    R: tower::Service<hyper_util::client::legacy::connect::dns::Name>
        + Clone
        + Send
        + Sync
        + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr> + Send,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R::Future: Send,
{
    /// A fetcher over any resolver (tests point the allowed hosts at loopback).
    pub fn with_fetcher(fetcher: Fetcher<R>, rate: FetchRate) -> Self {
        let entries = NonZeroUsize::new(CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Self {
            fetcher,
            known: Mutex::new(LruCache::new(entries)),
            failed: crate::recent::Recent::new(NEGATIVE_ENTRIES, NEGATIVE_TTL),
            bucket: Mutex::new(TokenBucket::new(rate)),
        }
    }

    /// How many issuers the cache holds.
    pub fn cached(&self) -> usize {
        self.known.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// [`AzureTrust::issuer_to_fetch`], then [`IssuerFetcher::fetch`].
    pub async fn complete_chain(
        &self,
        azure: &AzureTrust,
        signature: &str,
    ) -> Result<Issuers, IdentityError> {
        let request = azure.issuer_to_fetch(signature)?;
        Ok(self.fetch(azure, &request).await)
    }

    /// The issuer `request` names: known already (by name, no fetch), or fetched from the
    /// allowed URLs (others are skipped) and kept if it can help.
    pub async fn fetch(&self, azure: &AzureTrust, request: &IssuerRequest) -> Issuers {
        if let Some(known) = self
            .known
            .lock()
            .ok()
            .and_then(|mut known| known.get(&request.issuer).cloned())
        {
            return Issuers::Found(vec![known]);
        }
        let mut rate_limited = false;
        for url in request.urls.iter().take(MAX_URLS) {
            if !is_allowed_url(url) {
                tracing::warn!(
                    url,
                    "Azure issuer URL is not on the allow-list; not fetched"
                );
                continue;
            }
            if self.failed.contains(url.as_str()) {
                continue;
            }
            if !self.bucket.lock().is_ok_and(|mut b| b.take(Instant::now())) {
                rate_limited = true;
                continue;
            }
            match self.fetcher.get(url).await {
                Ok(fetched) => {
                    let certificate =
                        X509::from_der(&fetched.body).or_else(|_| X509::from_pem(&fetched.body));
                    match certificate {
                        Ok(certificate) if self.can_help(azure, request, &certificate) => {
                            if let Ok(mut known) = self.known.lock() {
                                known.put(request.issuer.clone(), certificate.clone());
                            }
                            return Issuers::Found(vec![certificate]);
                        }
                        Ok(_) => tracing::debug!(
                            url,
                            "fetched Azure issuer is not the signer's issuer under a pinned CA, or not valid now"
                        ),
                        Err(_) => tracing::debug!(url, "fetched Azure issuer is not a certificate"),
                    }
                }
                Err(error) => tracing::debug!(url, %error, "Azure issuer fetch failed"),
            }
            self.failed.insert(url.clone());
        }
        if rate_limited {
            tracing::warn!("Azure issuer fetch budget spent; the caller is asked to retry");
            Issuers::RateLimited
        } else {
            Issuers::NotFound
        }
    }

    /// The issuer asked for, signed by a pinned CA, and valid now.
    fn can_help(&self, azure: &AzureTrust, request: &IssuerRequest, certificate: &X509) -> bool {
        let now = openssl::asn1::Asn1Time::days_from_now(0);
        let current =
            now.is_ok_and(|now| certificate.not_before() <= now && certificate.not_after() >= now);
        certificate
            .subject_name()
            .to_der()
            .is_ok_and(|subject| subject == request.issuer)
            && current
            && azure.issued_by_pinned(certificate)
    }
}

/// A token bucket: `burst` tokens, refilled continuously at `per_minute`.
struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: FetchRate) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            burst: f64::from(rate.burst),
            per_second: f64::from(rate.per_minute) / 60.0,
            last: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// http or https, an allowed host, no port other than 80 or 443, no user info, no query, and
/// a path that names a certificate file (`.crt` or `.cer`).
pub fn is_allowed_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    let path = uri.path().to_ascii_lowercase();
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|host| ALLOWED_HOSTS.contains(&host))
        && matches!(uri.port_u16(), None | Some(80) | Some(443))
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && uri.query().is_none()
        && !url.contains('#')
        && (path.ends_with(".crt") || path.ends_with(".cer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_certificate_paths_on_the_three_pki_hosts_on_default_ports_are_allowed() {
        for ok in [
            "http://www.microsoft.com/pkiops/certs/Microsoft%20TLS%20G2%20RSA%20CA%20OCSP%2004.crt",
            "http://caissuers.microsoft.com/pkiops/certs/Microsoft%20TLS%20RSA%20Root%20G2.crt",
            "https://cacerts.digicert.com/DigiCertGlobalRootG2.crt",
            "http://www.microsoft.com:80/x.crt",
            "https://www.microsoft.com:443/x.CER",
        ] {
            assert!(is_allowed_url(ok), "{ok}");
        }
        for bad in [
            "http://www.microsoft.com:8080/x.crt",
            "ftp://www.microsoft.com/x.crt",
            "http://microsoft.com/x.crt",
            "http://www.microsoft.com.evil.example/x.crt",
            "http://user@www.microsoft.com/x.crt",
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1/x.crt",
            "http://www.microsoft.com/x.crt?y=1",
            "http://www.microsoft.com/x.crt#frag",
            "http://www.microsoft.com/pkiops/crl/x.crl",
            "http://caissuers.microsoft.com/",
            "file:///etc/passwd",
            "",
        ] {
            assert!(!is_allowed_url(bad), "{bad}");
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(FetchRate {
            burst: 3,
            per_minute: 60,
        });
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(!bucket.take(start + Duration::from_millis(500)));
        assert!(bucket.take(start + Duration::from_millis(1100)));
        assert!(!bucket.take(start + Duration::from_millis(1100)));
    }
}
