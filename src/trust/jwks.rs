//! The GCP signing keys: a static file, or a URL fetched in the background (never blocking
//! start-up), cached for `Cache-Control: max-age`, refetched at most once a minute for an
//! unknown `kid`, and kept when a refresh fails. The verifier ([`crate::identity::gcp::verify`])
//! only ever sees the `JwkSet` this holds.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

use crate::fetch::Fetcher;
use crate::identity::TrustError;

/// An unknown `kid` triggers at most one refetch per this interval.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// Where the keys come from.
enum Source {
    Static(std::path::PathBuf),
    Remote { url: String, fetcher: Box<Fetcher> },
}

/// The GCP signing keys, shared by every request.
pub struct Jwks {
    source: Source,
    keys: RwLock<Option<Arc<JwkSet>>>,
    /// When the last refetch for an unknown kid started (background refreshes do not count).
    last_kid_refetch: Mutex<Option<Instant>>,
    /// Whether the last fetch failed (so a run of failures warns once).
    failing: std::sync::atomic::AtomicBool,
}

impl Jwks {
    /// Keys from a JSON file, loaded once at start-up.
    pub fn from_file(path: &Path) -> Result<Self, TrustError> {
        let text = super::read_file(path)?;
        let set: JwkSet =
            serde_json::from_slice(&text).map_err(|e| TrustError::BadCertificate {
                what: path.display().to_string(),
                reason: format!("not a JWKS: {e}"),
            })?;
        Ok(Self::with(Source::Static(path.to_owned()), Some(set)))
    }

    /// Keys from a URL. Call [`Jwks::spawn_refresher`] to fetch them in the background.
    pub fn from_url(url: &str, fetcher: Fetcher) -> Self {
        Self::with(
            Source::Remote {
                url: url.to_owned(),
                fetcher: Box::new(fetcher),
            },
            None,
        )
    }

    fn with(source: Source, keys: Option<JwkSet>) -> Self {
        Self {
            source,
            keys: RwLock::new(keys.map(Arc::new)),
            last_kid_refetch: Mutex::new(None),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The keys in force; `None` until the first fetch succeeded.
    pub fn current(&self) -> Option<Arc<JwkSet>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    /// The file or URL the keys come from.
    pub fn source_label(&self) -> String {
        match &self.source {
            Source::Static(path) => path.display().to_string(),
            Source::Remote { url, .. } => url.clone(),
        }
    }

    /// For an unknown `kid`: refetch unless one started within the last minute. Returns the
    /// keys after the attempt.
    pub async fn refetch_for_unknown_kid(&self) -> Option<Arc<JwkSet>> {
        let due = match self.last_kid_refetch.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|at| at.elapsed() >= UNKNOWN_KID_REFETCH_INTERVAL);
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due {
            let _ = self.fetch_once().await;
        }
        self.current()
    }

    /// `agent-auth trust`: fetches a remote JWKS now and installs it; the server's `max-age`
    /// (`None` when it sent none). A file's keys are loaded already: `Ok(None)`.
    pub async fn fetch_now(&self) -> Result<Option<Duration>, String> {
        let Source::Remote { url, fetcher } = &self.source else {
            return Ok(None);
        };
        let (set, max_age) = Self::fetch(url, fetcher).await?;
        if let Ok(mut keys) = self.keys.write() {
            *keys = Some(Arc::new(set));
        }
        Ok(max_age)
    }

    async fn fetch(url: &str, fetcher: &Fetcher) -> Result<(JwkSet, Option<Duration>), String> {
        let fetched = fetcher.get(url).await.map_err(|e| e.to_string())?;
        serde_json::from_slice::<JwkSet>(&fetched.body)
            .map(|set| (set, fetched.max_age))
            .map_err(|e| format!("not a JWKS: {e}"))
    }

    /// Fetches and installs the keys; on failure the previous keys stay in force.
    async fn fetch_once(&self) -> Option<Duration> {
        let Source::Remote { url, fetcher } = &self.source else {
            return None;
        };
        let outcome = Self::fetch(url, fetcher).await;
        match outcome {
            Ok((set, max_age)) => {
                if let Ok(mut keys) = self.keys.write() {
                    *keys = Some(Arc::new(set));
                }
                if self
                    .failing
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!(url, "GCP JWKS fetched again after failures");
                } else {
                    tracing::debug!(url, ?max_age, "GCP JWKS fetched");
                }
                Some(max_age.unwrap_or(DEFAULT_REFRESH))
            }
            Err(error) => {
                metrics::counter!(crate::metrics::TRUST_REFRESH_FAILURES, "cloud" => "gcp")
                    .increment(1);
                // One WARN when fetching starts to fail; retries stay at DEBUG until a fetch
                // succeeds again (a machine without Google access is not an emergency).
                if self
                    .failing
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::debug!(url, error, "GCP JWKS fetch failed again");
                } else {
                    tracing::warn!(
                        url,
                        error,
                        kept_keys = self.current().is_some(),
                        "GCP JWKS fetch failed; retrying in the background (further failures at DEBUG)"
                    );
                }
                None
            }
        }
    }

    /// Fetches now, then again when `max-age` runs out (bounded to 1 s .. 24 h), retrying
    /// failures with backoff from 1 s to 5 min. Runs until the process ends.
    pub fn spawn_refresher(self: &Arc<Self>) {
        if matches!(self.source, Source::Static(_)) {
            return;
        }
        let jwks = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let Some(this) = jwks.upgrade() else { return };
                let wait = match this.fetch_once().await {
                    Some(max_age) => {
                        backoff = Duration::from_secs(1);
                        max_age.clamp(Duration::from_secs(1), Duration::from_secs(86_400))
                    }
                    None => {
                        let wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(300));
                        wait
                    }
                };
                drop(this);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// Refresh interval when the server sends no `max-age`.
const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
