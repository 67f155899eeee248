//! Optional live checks against the cloud APIs, after the evidence verified and the one SQL
//! statement chose the agent (so forged or unknown instances never spend API quota):
//! EC2 `DescribeInstances` (running, and launched when the document says) and Compute Engine
//! `instances.get` (running, same id, same creation time).
//!
//! Boot storms: look-ups of one instance share one call and its answer is kept
//! (`--cloud-check-cache-ttl` when live, [`NEGATIVE_TTL`] otherwise, failures never); EC2
//! look-ups are batched per region and account. Failure policy: `--cloud-check-on-error`.

pub mod aws;
pub mod cache;
pub mod gcp;

use std::time::Duration;

#[cfg(feature = "live-checks")]
use cache::{CacheResult, FlightCache};

/// How long a negative answer (stopped, terminated, unknown) is kept.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// What to do when a cloud API cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// UNAVAILABLE `CLOUD_API_UNAVAILABLE`: retryable, nothing unproven gets in.
    Closed,
    /// Let the login through on the signature alone, with a warning and a metric.
    Open,
}

/// Settings shared by both checks.
#[derive(Debug, Clone, Copy)]
pub struct CheckSettings {
    pub cache_ttl: Duration,
    /// Each call's time limit (each attempt of it, for EC2).
    pub timeout: Duration,
    pub on_error: OnError,
}

/// Why a check did not pass. The text is for logs only.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The API answered, and the answer rules the evidence out: INVALID_IDENTITY.
    Rejected(String),
    /// The API did not answer: per the failure policy.
    Unavailable(CloudError),
}

/// Verdicts compare by what they say (the tests' `assert_eq!`).
impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Failure::Rejected(a), Failure::Rejected(b)) => a == b,
            (Failure::Unavailable(a), Failure::Unavailable(b)) => {
                crate::report::chain(a) == crate::report::chain(b)
            }
            _ => false,
        }
    }
}

/// A cause shared by every login waiting on the same look-up (an answer is cached and
/// cloned to each).
pub type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// Why a cloud API could not be asked, or did not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    /// A check is on in a build without the SDKs.
    #[error(
        "this build has no live cloud API checks (built without the `live-checks` feature): \
         rebuild with `cargo build --release --features live-checks` (the container image has \
         them), or turn the checks off"
    )]
    NotBuilt,
    /// A client could not be set up (a credentials file, the HTTP client, credentials found).
    #[error("{what}")]
    Setup { what: String, source: Shared },
    /// A call did not answer within its limit.
    #[error("{call} took over {limit:?}")]
    Timeout { call: &'static str, limit: Duration },
    /// A call failed or answered with an error.
    #[error("{call}")]
    Call { call: &'static str, source: Shared },
    /// The look-up was lost on the way (a batcher stopped).
    #[error("{0}")]
    Lost(&'static str),
}

#[cfg(feature = "live-checks")]
impl CloudError {
    pub(crate) fn setup(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        CloudError::Setup {
            what: what.into(),
            source: std::sync::Arc::new(source),
        }
    }

    pub(crate) fn call(
        call: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        CloudError::Call {
            call,
            source: std::sync::Arc::new(source),
        }
    }
}

/// What the verified evidence says, for the live check of its cloud.
#[derive(Debug, Clone)]
pub enum LiveEvidence {
    Aws {
        region: String,
        account_id: String,
        instance_id: String,
        pending_time: Option<String>,
    },
    Gcp {
        project_id: String,
        zone: String,
        instance_name: String,
        instance_id: String,
        instance_creation_timestamp: Option<i64>,
    },
    /// Azure has no live check.
    None,
}

#[cfg(feature = "live-checks")]
/// Answers by (region, account, instance id) for EC2, (project, zone, name) for GCE.
type InstanceCache<V> = FlightCache<(String, String, String), V, CloudError>;

/// What a cloud API said about one instance: whether it is running decides how long the
/// answer is kept.
pub(crate) trait Answer: Clone {
    fn is_live(&self) -> bool;
}

#[cfg(feature = "live-checks")]
/// A cache keeping a running instance's answer for `ttl`, any other for [`NEGATIVE_TTL`].
fn instance_cache<V: Answer + 'static>(ttl: Duration) -> InstanceCache<V> {
    FlightCache::new(move |answer: &V| if answer.is_live() { ttl } else { NEGATIVE_TTL })
}

#[cfg(feature = "live-checks")]
/// One look-up through `cache` (counted by its cache result); a failed call is `Unavailable`.
async fn look_up<V, Fut>(
    cloud: &'static str,
    cache: &InstanceCache<V>,
    key: (String, String, String),
    fetch: impl FnOnce() -> Fut,
) -> Result<V, Failure>
where
    V: Answer,
    Fut: std::future::Future<Output = Result<V, CloudError>>,
{
    let (answer, cached) = cache.get(&key, fetch).await;
    record_cache(cloud, cached);
    answer.map_err(Failure::Unavailable)
}

/// The configured checks with their caches.
#[cfg(feature = "live-checks")]
pub struct LiveChecks {
    aws: Option<(aws::AwsCheck, InstanceCache<aws::Ec2Instance>)>,
    gcp: Option<(gcp::GcpCheck, InstanceCache<gcp::GceInstance>)>,
    on_error: OnError,
}

#[cfg(feature = "live-checks")]
impl LiveChecks {
    pub async fn new(
        aws: Option<aws::AwsCheckConfig>,
        gcp: Option<gcp::GcpCheckConfig>,
        settings: CheckSettings,
    ) -> Result<Self, CloudError> {
        let aws = match aws {
            Some(config) => Some((
                aws::AwsCheck::new(config, settings).await,
                instance_cache(settings.cache_ttl),
            )),
            None => None,
        };
        let gcp = match gcp {
            Some(config) => Some((
                gcp::GcpCheck::new(config, &settings)?,
                instance_cache(settings.cache_ttl),
            )),
            None => None,
        };
        Ok(Self {
            aws,
            gcp,
            on_error: settings.on_error,
        })
    }

    /// Whether any check is on.
    pub fn enabled(&self) -> bool {
        self.aws.is_some() || self.gcp.is_some()
    }

    /// Runs the check for `evidence`'s cloud, if that check is on. `Ok` also when the API could
    /// not answer and the policy is open (logged and counted).
    pub async fn check(&self, evidence: &LiveEvidence) -> Result<(), Failure> {
        let (cloud, result) = match (evidence, &self.aws, &self.gcp) {
            (
                LiveEvidence::Aws {
                    region,
                    account_id,
                    instance_id,
                    pending_time,
                },
                Some((check, cache)),
                _,
            ) => {
                let key = (region.clone(), account_id.clone(), instance_id.clone());
                let found = look_up("aws", cache, key, || {
                    check.describe(region, account_id, instance_id)
                })
                .await;
                let verdict = found.and_then(|f| aws::judge(&f, pending_time.as_deref()));
                ("aws", verdict)
            }
            (
                LiveEvidence::Gcp {
                    project_id,
                    zone,
                    instance_name,
                    instance_id,
                    instance_creation_timestamp,
                },
                _,
                Some((check, cache)),
            ) => {
                let key = (project_id.clone(), zone.clone(), instance_name.clone());
                let found = look_up("gcp", cache, key, || {
                    check.get(project_id, zone, instance_name)
                })
                .await;
                let verdict =
                    found.and_then(|f| gcp::judge(&f, instance_id, *instance_creation_timestamp));
                ("gcp", verdict)
            }
            _ => return Ok(()),
        };
        match result {
            Err(Failure::Unavailable(cause)) if self.on_error == OnError::Open => {
                metrics::counter!(crate::metrics::CLOUD_API_FAIL_OPEN, "cloud" => cloud)
                    .increment(1);
                tracing::warn!(
                    cloud,
                    cause = %crate::report::chain(&cause),
                    "cloud API check could not be completed; allowed by --cloud-check-on-error open"
                );
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(feature = "live-checks")]
fn record_cache(cloud: &'static str, result: CacheResult) {
    metrics::counter!(crate::metrics::CLOUD_API_CACHE, "cloud" => cloud, "result" => result.label())
        .increment(1);
}

#[cfg(feature = "live-checks")]
/// Counts and times one call to a cloud API.
pub(crate) fn record_call(cloud: &'static str, ok: bool, elapsed: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(crate::metrics::CLOUD_API_CALLS, "cloud" => cloud, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(crate::metrics::CLOUD_API_DURATION, "cloud" => cloud)
        .record(elapsed.as_secs_f64());
}

#[cfg(feature = "live-checks")]
/// Three attempts in all, the retries after up to 100 ms and 200 ms (exponential, jittered).
pub(crate) fn retry_policy() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_times(2)
        .with_jitter()
}

/// A build without the `live-checks` feature has no cloud API client: turning a check on is a
/// start-up error, and with none on every login passes on its evidence alone.
#[cfg(not(feature = "live-checks"))]
pub struct LiveChecks;

#[cfg(not(feature = "live-checks"))]
impl LiveChecks {
    pub async fn new(
        aws: Option<aws::AwsCheckConfig>,
        gcp: Option<gcp::GcpCheckConfig>,
        _settings: CheckSettings,
    ) -> Result<Self, CloudError> {
        if aws.is_some() || gcp.is_some() {
            return Err(CloudError::NotBuilt);
        }
        Ok(Self)
    }

    pub fn enabled(&self) -> bool {
        false
    }

    pub async fn check(&self, _evidence: &LiveEvidence) -> Result<(), Failure> {
        Ok(())
    }
}

#[cfg(all(test, not(feature = "live-checks")))]
mod without_live_checks {
    use super::*;

    fn settings() -> CheckSettings {
        CheckSettings {
            cache_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
            on_error: OnError::Closed,
        }
    }

    #[tokio::test]
    async fn a_build_without_the_sdks_refuses_to_turn_a_check_on() {
        let aws = LiveChecks::new(Some(aws::AwsCheckConfig::default()), None, settings()).await;
        assert!(aws.is_err_and(|e| e.to_string().contains("live-checks")));
        let gcp = LiveChecks::new(None, Some(gcp::GcpCheckConfig::default()), settings()).await;
        assert!(gcp.is_err());
        let off = LiveChecks::new(None, None, settings()).await;
        assert!(off.is_ok_and(|checks| !checks.enabled()));
    }
}
