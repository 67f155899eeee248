//! The "Live cloud API checks" group of [`super::Settings`] and its conversion
//! (`LiveCheckSettings::config`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::super::error::ConfigError;
use super::super::values::{AssumeRole, Flag, HttpUrl, OnError, Span};

/// The optional live EC2 and Compute Engine checks and their shared settings.
#[derive(Clone, Args, Serialize, Deserialize)]
pub struct LiveCheckSettings {
    /// Live check of AWS logins with EC2 `DescribeInstances` (docs/trust.md, "Live cloud API checks").
    ///
    /// After a verified login, EC2 must show the instance pending or running, launched when
    /// the document says (needs `ec2:DescribeInstances`).
    #[arg(long, env = "AGENT_AUTH_AWS_EC2_CHECK", help_heading = "Live cloud API checks", value_name = "true|false", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub aws_ec2_check: Flag,

    /// EC2 endpoint for every region instead of the document's regional one (tests, private
    /// endpoints) [default: regional].
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_EC2_ENDPOINT",
        help_heading = "Live cloud API checks",
        value_name = "URL"
    )]
    pub aws_ec2_endpoint: Option<HttpUrl>,

    /// ACCOUNT=ROLE_ARN: the role to assume for instances of that account [default: none].
    /// Repeatable.
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_EC2_ASSUME_ROLE",
        help_heading = "Live cloud API checks",
        value_name = "ACCOUNT=ARN",
        value_delimiter = ','
    )]
    pub aws_ec2_assume_role: Vec<AssumeRole>,

    /// Let the AWS credential chain end at the instance metadata endpoint (after environment,
    /// profile, web identity and ECS).
    #[arg(long, env = "AGENT_AUTH_AWS_EC2_IMDS_CREDENTIALS", help_heading = "Live cloud API checks", value_name = "true|false", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub aws_ec2_imds_credentials: Flag,

    /// EC2 look-ups arriving within this share one `DescribeInstances` call (at most 100 ids;
    /// at most 1s).
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_EC2_BATCH_WINDOW",
        help_heading = "Live cloud API checks",
        value_name = "DURATION",
        default_value = "20ms"
    )]
    pub aws_ec2_batch_window: Span,

    /// Live check of GCP logins with Compute Engine `instances.get`.
    ///
    /// After a verified login, Compute Engine must show the instance running with the token's
    /// id and creation time (needs `compute.instances.get`).
    #[arg(long, env = "AGENT_AUTH_GCP_COMPUTE_CHECK", help_heading = "Live cloud API checks", value_name = "true|false", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub gcp_compute_check: Flag,

    /// Compute Engine endpoint (tests) [default: https://compute.googleapis.com].
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_COMPUTE_ENDPOINT",
        help_heading = "Live cloud API checks",
        value_name = "URL"
    )]
    pub gcp_compute_endpoint: Option<HttpUrl>,

    /// Service-account key file for the Compute API [default: gcp_auth discovery].
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_COMPUTE_CREDENTIALS",
        help_heading = "Live cloud API checks",
        value_name = "PATH"
    )]
    pub gcp_compute_credentials: Option<PathBuf>,

    /// How long a live check keeps a running instance's answer (a negative one: 5 s).
    #[arg(
        long,
        env = "AGENT_AUTH_CLOUD_CHECK_CACHE_TTL",
        help_heading = "Live cloud API checks",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub cloud_check_cache_ttl: Span,

    /// Time limit of one cloud API call attempt.
    #[arg(
        long,
        env = "AGENT_AUTH_CLOUD_CHECK_TIMEOUT",
        help_heading = "Live cloud API checks",
        value_name = "DURATION",
        default_value = "2s"
    )]
    pub cloud_check_timeout: Span,

    /// When a cloud API cannot answer: closed (UNAVAILABLE `CLOUD_API_UNAVAILABLE`) or open
    /// (allow with a warning and a metric).
    #[arg(
        long,
        env = "AGENT_AUTH_CLOUD_CHECK_ON_ERROR",
        help_heading = "Live cloud API checks",
        value_name = "closed|open",
        default_value = "closed"
    )]
    pub cloud_check_on_error: OnError,
}

/// `--aws-ec2-check`, `--gcp-compute-check` and their shared settings.
#[derive(Debug, Clone)]
pub struct LiveCheckConfig {
    pub aws: Option<crate::cloud::aws::AwsCheckConfig>,
    pub gcp: Option<crate::cloud::gcp::GcpCheckConfig>,
    pub settings: crate::cloud::CheckSettings,
}

impl LiveCheckSettings {
    /// The optional live EC2 and Compute Engine checks and their shared settings.
    pub fn config(&self) -> Result<LiveCheckConfig, ConfigError> {
        if self.aws_ec2_batch_window.0 > Duration::from_secs(1) {
            return Err(ConfigError::new(
                "aws_ec2_batch_window",
                "at most 1s: every first look-up of a batch waits this long",
            ));
        }
        let gcp = match self.gcp_compute_check.0 {
            false => None,
            true => Some(crate::cloud::gcp::GcpCheckConfig {
                endpoint: self.gcp_compute_endpoint.clone().map(|u| u.0),
                credentials: match &self.gcp_compute_credentials {
                    Some(path) if !path.is_file() => {
                        return Err(ConfigError::new(
                            "gcp_compute_credentials",
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                    other => other.clone(),
                },
            }),
        };
        let aws = self
            .aws_ec2_check
            .0
            .then(|| crate::cloud::aws::AwsCheckConfig {
                endpoint: self.aws_ec2_endpoint.clone().map(|u| u.0),
                assume_roles: self
                    .aws_ec2_assume_role
                    .iter()
                    .map(|r| (r.account.clone(), r.arn.clone()))
                    .collect(),
                imds_credentials: self.aws_ec2_imds_credentials.0,
                batch_window: self.aws_ec2_batch_window.0,
            });
        Ok(LiveCheckConfig {
            aws,
            gcp,
            settings: crate::cloud::CheckSettings {
                cache_ttl: self.cloud_check_cache_ttl.0,
                timeout: self.cloud_check_timeout.0,
                on_error: self.cloud_check_on_error,
            },
        })
    }
}
