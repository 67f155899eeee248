//! Fetching Azure issuer certificates through the signer's AIA "CA Issuers" URLs
//! (`--azure-fetch-issuers`, off by default). Rules (DESIGN.md 4, from Coder's hardening and
//! coder#25418):
//! - the caller asks only after the signer's name passed and its issuer is not pinned
//!   (`AzureTrust::issuer_urls_to_fetch`), so self-signed junk costs nothing;
//! - only `www.microsoft.com`, `caissuers.microsoft.com` and `cacerts.digicert.com`, http or
//!   https, default ports, a path ending `.crt` or `.cer`, no query, no user info;
//! - every resolved address must be public, and those addresses are dialled (no rebinding);
//! - 5 s timeout, 1 MiB cap; DER or PEM bodies;
//! - fetched certificates go into a bounded LRU cache, and fetches are rate-limited (a token
//!   bucket), so a flood of distinct URLs can neither grow memory nor hammer the hosts.
//!
//! A fetched certificate is never trusted by itself: it is only an intermediate that helps
//! build a chain that must still end at a pinned root.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Instant;

use lru::LruCache;
use openssl::x509::X509;

use crate::fetch::{self, FetchError, Fetcher, PublicOnlyResolver};
use crate::identity::IdentityError;
use crate::identity::azure::AzureTrust;

/// Hosts that serve Microsoft's and DigiCert's CA certificates.
pub const ALLOWED_HOSTS: &[&str] = &[
    "www.microsoft.com",
    "caissuers.microsoft.com",
    "cacerts.digicert.com",
];

/// The most issuers fetched for one request.
const MAX_URLS: usize = 4;

/// How many fetched issuers are kept (least recently used ones are dropped first).
pub const CACHE_ENTRIES: usize = 32;

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

pub struct IssuerFetcher<R = PublicOnlyResolver> {
    fetcher: Fetcher<R>,
    cache: Mutex<LruCache<String, X509>>,
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
            cache: Mutex::new(LruCache::new(entries)),
            bucket: Mutex::new(TokenBucket::new(rate)),
        }
    }

    /// How many issuers the cache holds.
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// For a document whose chain did not complete: its signer's issuers, fetched (or
    /// recalled), after `azure` has judged the signer worth it (name, not self-issued, issuer
    /// not pinned). Empty when no allowed URL gave a certificate.
    pub async fn complete_chain(
        &self,
        azure: &AzureTrust,
        signature: &str,
    ) -> Result<Vec<X509>, IdentityError> {
        let urls = azure.issuer_urls_to_fetch(signature)?;
        Ok(self.issuers(&urls).await)
    }

    /// Fetches (or recalls) the certificates behind the allowed URLs; others are skipped.
    pub async fn issuers(&self, urls: &[String]) -> Vec<X509> {
        let mut found = Vec::new();
        for url in urls.iter().take(MAX_URLS) {
            if !is_allowed_url(url) {
                tracing::warn!(
                    url,
                    "Azure issuer URL is not on the allow-list; not fetched"
                );
                continue;
            }
            if let Some(cached) = self.cache.lock().ok().and_then(|mut c| c.get(url).cloned()) {
                found.push(cached);
                continue;
            }
            if !self.bucket.lock().is_ok_and(|mut b| b.take(Instant::now())) {
                tracing::warn!(url, "Azure issuer fetch rate limit reached; not fetched");
                continue;
            }
            match self.fetcher.get(url).await {
                Ok(fetched) => {
                    match X509::from_der(&fetched.body).or_else(|_| X509::from_pem(&fetched.body)) {
                        Ok(certificate) => {
                            if let Ok(mut cache) = self.cache.lock() {
                                cache.put(url.clone(), certificate.clone());
                            }
                            found.push(certificate);
                        }
                        Err(_) => tracing::warn!(url, "fetched Azure issuer is not a certificate"),
                    }
                }
                Err(error) => tracing::warn!(url, %error, "Azure issuer fetch failed"),
            }
        }
        found
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
