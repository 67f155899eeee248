//! The Compute Engine live check: `instances.get` for the project, zone and name in the
//! verified token, with an OAuth token from gcp_auth (a service-account key file, or gcp_auth's
//! discovery: the metadata server on GCE/GKE, gcloud's credentials elsewhere).

#[cfg(feature = "live-checks")]
use std::sync::Arc;
#[cfg(feature = "live-checks")]
use std::time::{Duration, Instant};

#[cfg(feature = "live-checks")]
use super::CheckSettings;
#[cfg(feature = "live-checks")]
use super::CloudError;
use super::{Answer, Failure};
#[cfg(feature = "live-checks")]
use crate::fetch::{FetchError, Fetcher};
#[cfg(feature = "live-checks")]
use backon::Retryable as _;

pub const DEFAULT_ENDPOINT: &str = "https://compute.googleapis.com";
#[cfg(feature = "live-checks")]
const SCOPE: &str = "https://www.googleapis.com/auth/compute.readonly";

/// What `instances.get` says about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GceInstance {
    Found {
        id: String,
        status: String,
        /// `creationTimestamp` in Unix seconds.
        created: Option<i64>,
    },
    NotFound,
}

impl Answer for GceInstance {
    /// `RUNNING`, `PROVISIONING` or `STAGING`: kept for the positive lifetime.
    fn is_live(&self) -> bool {
        matches!(self, GceInstance::Found { status, .. }
            if matches!(status.as_str(), "RUNNING" | "PROVISIONING" | "STAGING"))
    }
}

/// Settings of the Compute Engine check.
#[derive(Debug, Clone, Default)]
pub struct GcpCheckConfig {
    /// `--gcp-compute-endpoint`: instead of compute.googleapis.com (tests).
    pub endpoint: Option<String>,
    /// `--gcp-compute-credentials`: a service-account key file; gcp_auth's discovery otherwise.
    pub credentials: Option<std::path::PathBuf>,
}

#[cfg(feature = "live-checks")]
pub struct GcpCheck {
    endpoint: String,
    /// Set at start-up from `--gcp-compute-credentials`; otherwise found by gcp_auth's
    /// discovery on first use.
    tokens: tokio::sync::OnceCell<Arc<dyn gcp_auth::TokenProvider>>,
    fetcher: Fetcher,
    timeout: Duration,
}

#[cfg(feature = "live-checks")]
impl GcpCheck {
    pub fn new(config: GcpCheckConfig, settings: &CheckSettings) -> Result<Self, CloudError> {
        let endpoint = config
            .endpoint
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        // A missing or broken key file fails start-up, not the first login.
        let key_file = match &config.credentials {
            Some(path) => Some(Arc::new(
                gcp_auth::CustomServiceAccount::from_file(path)
                    .map_err(|e| CloudError::setup(path.display().to_string(), e))?,
            ) as Arc<dyn gcp_auth::TokenProvider>),
            None => None,
        };
        Ok(Self {
            endpoint,
            tokens: tokio::sync::OnceCell::new_with(key_file),
            fetcher: Fetcher::new(settings.timeout, 1024 * 1024)
                .map_err(|e| CloudError::setup("the Compute API's HTTP client", e))?,
            timeout: settings.timeout,
        })
    }

    async fn provider(&self) -> Result<Arc<dyn gcp_auth::TokenProvider>, CloudError> {
        self.tokens
            .get_or_try_init(|| async {
                // gcp_auth's discovery has no timeout of its own.
                tokio::time::timeout(self.timeout * 2, gcp_auth::provider())
                    .await
                    .map_err(|_| CloudError::Timeout {
                        call: "gcp_auth's search for credentials",
                        limit: self.timeout * 2,
                    })?
                    .map_err(|e| CloudError::setup("gcp_auth found no credentials", e))
            })
            .await
            .cloned()
    }

    /// `instances.get` for one instance.
    pub async fn get(
        &self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<GceInstance, CloudError> {
        let started = Instant::now();
        let result = self.call(project, zone, name).await;
        super::record_call("gcp", result.is_ok(), started.elapsed());
        result
    }

    async fn call(&self, project: &str, zone: &str, name: &str) -> Result<GceInstance, CloudError> {
        let provider = self.provider().await?;
        let token = tokio::time::timeout(self.timeout, provider.token(&[SCOPE]))
            .await
            .map_err(|_| CloudError::Timeout {
                call: "the OAuth token",
                limit: self.timeout,
            })?
            .map_err(|e| CloudError::call("the OAuth token", e))?;
        let url = format!(
            "{}/compute/v1/projects/{}/zones/{}/instances/{}",
            self.endpoint,
            path_segment(project),
            path_segment(zone),
            path_segment(name)
        );
        let fetched = match (|| self.fetcher.get_bearer(&url, token.as_str()))
            .retry(super::retry_policy())
            .sleep(tokio::time::sleep)
            .when(retryable)
            .await
        {
            Ok(fetched) => fetched,
            Err(FetchError::Status(404)) => return Ok(GceInstance::NotFound),
            Err(e) => return Err(CloudError::call("instances.get", e)),
        };
        let body: serde_json::Value = serde_json::from_slice(&fetched.body)
            .map_err(|e| CloudError::call("instances.get answered no JSON", e))?;
        let text = |key: &str| body.get(key).and_then(|v| v.as_str()).unwrap_or_default();
        Ok(GceInstance::Found {
            id: text("id").to_owned(),
            status: text("status").to_owned(),
            created: parse_timestamp(text("creationTimestamp")),
        })
    }
}

#[cfg(feature = "live-checks")]
fn retryable(e: &FetchError) -> bool {
    match e {
        FetchError::Status(status) => *status == 429 || *status >= 500,
        FetchError::Request(_) | FetchError::Timeout(_) => true,
        _ => false,
    }
}

#[cfg(feature = "live-checks")]
/// Names from a verified token are plain, but never let one change the URL's shape.
fn path_segment(value: &str) -> String {
    /// Everything but RFC 3986's unreserved characters (`~` too, as before).
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.');
    percent_encoding::utf8_percent_encode(value, RESERVED).to_string()
}

/// RFC 3339 with an offset, as Compute Engine writes it (`2026-11-01T03:00:00.123-07:00`),
/// in Unix seconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// The verdict on a verified token given what Compute Engine says.
pub fn judge(instance: &GceInstance, id: &str, created: Option<i64>) -> Result<(), Failure> {
    let GceInstance::Found {
        id: found_id,
        status,
        created: found_created,
    } = instance
    else {
        return Err(Failure::Rejected(
            "instances.get does not know the instance".into(),
        ));
    };
    if !instance.is_live() {
        return Err(Failure::Rejected(format!("the instance is {status}")));
    }
    if found_id != id {
        return Err(Failure::Rejected(format!(
            "the instance of that name has id {found_id}, the token says {id} (the name was reused)"
        )));
    }
    match (created, found_created) {
        (Some(token), Some(found)) if token == *found => Ok(()),
        (Some(token), Some(found)) => Err(Failure::Rejected(format!(
            "creationTimestamp {found} differs from the token's {token} (the name was reused)"
        ))),
        (None, _) => Err(Failure::Rejected(
            "the token has no instance_creation_timestamp (request format=full)".into(),
        )),
        (_, None) => Err(Failure::Rejected(
            "instances.get gave no usable creationTimestamp".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_with_offsets_and_fractions() {
        assert_eq!(parse_timestamp("2026-11-01T10:00:00Z"), Some(1_793_527_200));
        assert_eq!(
            parse_timestamp("2026-11-01T03:00:00.123-07:00"),
            Some(1_793_527_200)
        );
        assert_eq!(
            parse_timestamp("2026-11-01T12:30:00+02:30"),
            Some(1_793_527_200)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2026-11-01T10:00:00 07:00"), None);
        assert_eq!(parse_timestamp("2026-11-01T10:00:0é+00:00"), None);
        assert_eq!(parse_timestamp("2026-11-01T10:00:00"), None);
    }

    #[cfg(feature = "live-checks")]
    #[test]
    fn judges_status_id_and_creation() {
        let found = |status: &str, id: &str, created| GceInstance::Found {
            id: id.into(),
            status: status.into(),
            created: Some(created),
        };
        assert_eq!(judge(&found("RUNNING", "7", 100), "7", Some(100)), Ok(()));
        assert_eq!(judge(&found("STAGING", "7", 100), "7", Some(100)), Ok(()));
        assert!(judge(&found("TERMINATED", "7", 100), "7", Some(100)).is_err());
        assert!(judge(&found("RUNNING", "8", 100), "7", Some(100)).is_err());
        assert!(judge(&found("RUNNING", "7", 101), "7", Some(100)).is_err());
        assert!(judge(&found("RUNNING", "7", 100), "7", None).is_err());
        assert!(judge(&GceInstance::NotFound, "7", Some(100)).is_err());
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
