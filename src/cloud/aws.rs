//! The EC2 live check: `DescribeInstances` in the document's region, batched.
//!
//! Look-ups for one (region, account) that arrive within the batch window are sent as one call
//! with up to 100 instance ids. The ids go in an `instance-id` filter, not in `InstanceIds`:
//! with `InstanceIds`, one unknown id (a terminated instance long gone) fails the whole call
//! with `InvalidInstanceID.NotFound`; with the filter it is simply absent from the answer.

#[cfg(feature = "live-checks")]
use std::collections::HashMap;
#[cfg(feature = "live-checks")]
use std::sync::Mutex;
use std::time::Duration;
#[cfg(feature = "live-checks")]
use std::time::Instant;

#[cfg(feature = "live-checks")]
use aws_config::BehaviorVersion;
#[cfg(feature = "live-checks")]
use aws_config::meta::credentials::CredentialsProviderChain;
#[cfg(feature = "live-checks")]
use aws_config::retry::RetryConfig;
#[cfg(feature = "live-checks")]
use aws_config::timeout::TimeoutConfig;
#[cfg(feature = "live-checks")]
use aws_sdk_ec2::config::Region;
#[cfg(feature = "live-checks")]
use tokio::sync::{mpsc, oneshot};

#[cfg(feature = "live-checks")]
use super::CheckSettings;
use super::{Answer, Failure};

/// At most this many ids per `DescribeInstances` call.
pub const MAX_BATCH: usize = 100;

/// A document's `pendingTime` and the instance's `LaunchTime` may differ by this much; a
/// document from before the latest stop/start differs by the stop and start (minutes).
pub const LAUNCH_TOLERANCE_SECONDS: i64 = 30;

/// What `DescribeInstances` says about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ec2Instance {
    Found {
        state: String,
        launch_time: Option<i64>,
    },
    NotFound,
}

impl Answer for Ec2Instance {
    /// `pending` or `running`: kept for the positive lifetime.
    fn is_live(&self) -> bool {
        matches!(self, Ec2Instance::Found { state, .. } if state == "pending" || state == "running")
    }
}

/// Settings of the EC2 check.
#[derive(Debug, Clone, Default)]
pub struct AwsCheckConfig {
    /// `--aws-ec2-endpoint`: instead of the regional endpoint (tests, private endpoints).
    pub endpoint: Option<String>,
    /// `--aws-ec2-assume-role ACCOUNT=ARN`: the role to assume for instances of that account.
    pub assume_roles: Vec<(String, String)>,
    /// `--aws-ec2-imds-credentials`: let the credential chain end at the instance metadata
    /// endpoint. Off by default: the chain is environment, profile, web identity (EKS), ECS.
    pub imds_credentials: bool,
    /// How long the first look-up of a batch waits for others.
    pub batch_window: Duration,
}

#[cfg(feature = "live-checks")]
type Reply = oneshot::Sender<Result<Ec2Instance, super::CloudError>>;
#[cfg(feature = "live-checks")]
/// Look-ups queued for one batcher: the instance id and where its answer goes.
type Lookups = mpsc::Sender<(String, Reply)>;

#[cfg(feature = "live-checks")]
/// The check's clients and batchers, one per (region, account).
pub struct AwsCheck {
    config: AwsCheckConfig,
    settings: CheckSettings,
    base: aws_config::SdkConfig,
    /// By (region, account).
    batchers: Mutex<HashMap<(String, String), Lookups>>,
}

#[cfg(feature = "live-checks")]
impl AwsCheck {
    /// Builds the shared SDK configuration. Nothing is contacted here.
    pub async fn new(config: AwsCheckConfig, settings: CheckSettings) -> Self {
        let mut chain = CredentialsProviderChain::first_try(
            "Environment",
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        )
        .or_else(
            "Profile",
            aws_config::profile::ProfileFileCredentialsProvider::builder().build(),
        )
        .or_else(
            "WebIdentityToken",
            aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder().build(),
        )
        .or_else(
            "EcsContainer",
            aws_config::ecs::EcsCredentialsProvider::builder().build(),
        );
        if config.imds_credentials {
            chain = chain.or_else(
                "Ec2InstanceMetadata",
                aws_config::imds::credentials::ImdsCredentialsProvider::builder().build(),
            );
        }
        // Each attempt is bounded by the check's timeout; the standard retry mode retries
        // throttling and transient errors with jittered exponential backoff, 3 attempts.
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(chain)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.timeout.min(Duration::from_secs(1)))
                    .operation_attempt_timeout(settings.timeout)
                    .operation_timeout(settings.timeout * 3)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let base = loader.load().await;
        Self {
            config,
            settings,
            base,
            batchers: Mutex::new(HashMap::new()),
        }
    }

    /// What EC2 says about `instance_id` in `region` of `account`, through the batcher.
    pub async fn describe(
        &self,
        region: &str,
        account: &str,
        instance_id: &str,
    ) -> Result<Ec2Instance, super::CloudError> {
        let sender = self.batcher(region, account).await;
        let (reply, answer) = oneshot::channel();
        sender
            .send((instance_id.to_owned(), reply))
            .await
            .map_err(|_| super::CloudError::Lost("the EC2 batcher stopped"))?;
        answer
            .await
            .map_err(|_| super::CloudError::Lost("the EC2 batcher dropped the look-up"))?
    }

    async fn batcher(&self, region: &str, account: &str) -> Lookups {
        let key = (region.to_owned(), account.to_owned());
        if let Some(sender) = self
            .batchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return sender.clone();
        }
        let client = self.client(region, account).await;
        let mut batchers = self.batchers.lock().unwrap_or_else(|e| e.into_inner());
        batchers
            .entry(key)
            .or_insert_with(|| {
                let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
                tokio::spawn(run_batcher(
                    client,
                    receiver,
                    self.config.batch_window,
                    self.settings.timeout * 4,
                ));
                sender
            })
            .clone()
    }

    async fn client(&self, region: &str, account: &str) -> aws_sdk_ec2::Client {
        let mut builder =
            aws_sdk_ec2::config::Builder::from(&self.base).region(Region::new(region.to_owned()));
        if let Some((_, role)) = self.config.assume_roles.iter().find(|(a, _)| a == account) {
            let provider = aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name("agent-auth")
                .region(Region::new(region.to_owned()))
                .configure(&self.base)
                .build()
                .await;
            builder = builder.credentials_provider(provider);
        }
        aws_sdk_ec2::Client::from_conf(builder.build())
    }
}

#[cfg(feature = "live-checks")]
/// Collects look-ups for one window (or until 100 ids), then calls once for all of them.
async fn run_batcher(
    client: aws_sdk_ec2::Client,
    mut receiver: mpsc::Receiver<(String, Reply)>,
    window: Duration,
    call_limit: Duration,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                next = receiver.recv() => match next {
                    Some(lookup) => batch.push(lookup),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let client = client.clone();
        tokio::spawn(async move {
            let mut ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            ids.sort_unstable();
            ids.dedup();
            let result = match tokio::time::timeout(call_limit, describe(&client, ids)).await {
                Ok(result) => result,
                Err(_) => Err(super::CloudError::Timeout {
                    call: "DescribeInstances",
                    limit: call_limit,
                }),
            };
            for (id, reply) in batch {
                let answer = match &result {
                    Ok(found) => Ok(found.get(&id).cloned().unwrap_or(Ec2Instance::NotFound)),
                    Err(e) => Err(e.clone()),
                };
                let _ = reply.send(answer);
            }
        });
    }
}

#[cfg(feature = "live-checks")]
/// One `DescribeInstances` call (following pages) for `ids`.
async fn describe(
    client: &aws_sdk_ec2::Client,
    ids: Vec<String>,
) -> Result<HashMap<String, Ec2Instance>, super::CloudError> {
    let started = Instant::now();
    metrics::histogram!(crate::metrics::CLOUD_API_BATCH_SIZE).record(ids.len() as f64);
    let filter = aws_sdk_ec2::types::Filter::builder()
        .name("instance-id")
        .set_values(Some(ids))
        .build();
    let mut found = HashMap::new();
    let mut next_token = None;
    let outcome = loop {
        let page = client
            .describe_instances()
            .filters(filter.clone())
            .set_next_token(next_token.take())
            .send()
            .await;
        match page {
            Ok(page) => {
                for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                    if let Some(id) = instance.instance_id() {
                        found.insert(
                            id.to_owned(),
                            Ec2Instance::Found {
                                state: instance
                                    .state()
                                    .and_then(|s| s.name())
                                    .map(|n| n.as_str().to_owned())
                                    .unwrap_or_default(),
                                launch_time: instance.launch_time().map(|t| t.secs()),
                            },
                        );
                    }
                }
                match page.next_token() {
                    Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                    _ => break Ok(found),
                }
            }
            Err(e) => break Err(super::CloudError::call("DescribeInstances", e)),
        }
    };
    super::record_call("aws", outcome.is_ok(), started.elapsed());
    outcome
}

/// The verdict on a verified document given what EC2 says.
pub fn judge(instance: &Ec2Instance, pending_time: Option<&str>) -> Result<(), Failure> {
    let (state, launch_time) = match instance {
        Ec2Instance::NotFound => {
            return Err(Failure::Rejected(
                "DescribeInstances does not know the instance".into(),
            ));
        }
        Ec2Instance::Found { state, launch_time } => (state, launch_time),
    };
    if !instance.is_live() {
        return Err(Failure::Rejected(format!("the instance is {state}")));
    }
    let pending = pending_time
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .map(crate::identity::unix_seconds)
        .ok_or_else(|| Failure::Rejected("the document has no usable pendingTime".into()))?;
    let launched = launch_time
        .ok_or_else(|| Failure::Rejected("DescribeInstances gave no LaunchTime".into()))?;
    if pending.abs_diff(launched) > LAUNCH_TOLERANCE_SECONDS.unsigned_abs() {
        return Err(Failure::Rejected(format!(
            "the document's pendingTime is {}s from the instance's LaunchTime (a document from an earlier boot)",
            pending.saturating_sub(launched)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(launch_time: i64) -> Ec2Instance {
        Ec2Instance::Found {
            state: "running".into(),
            launch_time: Some(launch_time),
        }
    }

    #[test]
    fn judges_state_and_boot() {
        // 2026-11-01T10:00:00Z
        let launch = 1_793_527_200;
        assert_eq!(
            judge(&running(launch), Some("2026-11-01T10:00:00Z")),
            Ok(())
        );
        assert_eq!(
            judge(&running(launch + 20), Some("2026-11-01T10:00:00Z")),
            Ok(())
        );
        let earlier_boot = judge(&running(launch + 3600), Some("2026-11-01T10:00:00Z"));
        assert!(
            matches!(&earlier_boot, Err(Failure::Rejected(c)) if c.contains("earlier boot")),
            "{earlier_boot:?}"
        );
        let stopped = Ec2Instance::Found {
            state: "stopped".into(),
            launch_time: Some(launch),
        };
        assert_eq!(
            judge(&stopped, Some("2026-11-01T10:00:00Z")),
            Err(Failure::Rejected("the instance is stopped".into()))
        );
        assert!(judge(&Ec2Instance::NotFound, None).is_err());
        assert!(judge(&running(launch), None).is_err());
        assert!(judge(&running(launch), Some("yesterday")).is_err());
        // An absurd LaunchTime from the API is a mismatch, not an overflow.
        assert!(judge(&running(i64::MIN), Some("2026-11-01T10:00:00Z")).is_err());
    }
}
