//! The one outbound HTTP fetcher: GET with a timeout and a size cap, over http or https
//! (rustls with the aws-lc-rs provider and the Mozilla roots bundled in, so a slim container
//! needs no CA store). Used for the GCP JWKS.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
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
pub struct Fetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl Fetcher {
    pub fn new(timeout: Duration, max_bytes: usize) -> Result<Self, FetchError> {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            max_bytes,
        })
    }

    /// GETs `url`: non-2xx, oversized and slow responses are errors.
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        let uri: hyper::Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(FetchError::Url(url.to_owned()));
        }
        let work = async {
            let response = self
                .client
                .get(uri)
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
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=19773, must-revalidate"),
            Some(Duration::from_secs(19773))
        );
        assert_eq!(parse_max_age("no-store"), None);
    }
}
