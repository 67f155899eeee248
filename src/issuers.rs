//! Fetching Azure issuer certificates through the signer's AIA "CA Issuers" URLs
//! (`--azure-fetch-issuers`, off by default). Rules (DESIGN.md 4, from Coder's hardening):
//! - only `www.microsoft.com` and `cacerts.digicert.com`, http or https, default ports;
//! - every resolved address must be public, and those addresses are dialled (no rebinding);
//! - 5 s timeout, 1 MiB cap; DER or PEM bodies;
//! - fetched certificates are cached by URL for the life of the process.
//!
//! A fetched certificate is never trusted by itself: it only helps build a chain that must end
//! at a pinned root.

use std::collections::HashMap;
use std::sync::Mutex;

use openssl::x509::X509;

use crate::fetch::{self, FetchError, Fetcher, PublicOnlyResolver};

/// Hosts that serve Microsoft's and DigiCert's CA certificates.
pub const ALLOWED_HOSTS: &[&str] = &["www.microsoft.com", "cacerts.digicert.com"];

/// The most issuers fetched for one request.
const MAX_URLS: usize = 4;

pub struct IssuerFetcher {
    fetcher: Fetcher<PublicOnlyResolver>,
    cache: Mutex<HashMap<String, X509>>,
}

impl IssuerFetcher {
    pub fn new() -> Result<Self, FetchError> {
        Ok(Self {
            fetcher: Fetcher::public_only(fetch::DEFAULT_TIMEOUT, fetch::DEFAULT_MAX_BYTES)?,
            cache: Mutex::new(HashMap::new()),
        })
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
            if let Some(cached) = self.cache.lock().ok().and_then(|c| c.get(url).cloned()) {
                found.push(cached);
                continue;
            }
            match self.fetcher.get(url).await {
                Ok(fetched) => {
                    match X509::from_der(&fetched.body).or_else(|_| X509::from_pem(&fetched.body)) {
                        Ok(certificate) => {
                            if let Ok(mut cache) = self.cache.lock() {
                                cache.insert(url.clone(), certificate.clone());
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

/// http or https, an allowed host, and no port other than 80 or 443.
pub fn is_allowed_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|host| ALLOWED_HOSTS.contains(&host))
        && matches!(uri.port_u16(), None | Some(80) | Some(443))
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_pki_hosts_on_default_ports_are_allowed() {
        for ok in [
            "http://www.microsoft.com/pkiops/certs/Microsoft%20TLS%20G2%20RSA%20CA%20OCSP%2004.crt",
            "https://cacerts.digicert.com/DigiCertGlobalRootG2.crt",
            "http://www.microsoft.com:80/x.crt",
            "https://www.microsoft.com:443/x.crt",
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
            "file:///etc/passwd",
            "",
        ] {
            assert!(!is_allowed_url(bad), "{bad}");
        }
    }
}
