//! The "AWS" group of [`super::Settings`] and its conversion (`AwsSettings::trust`).

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::super::error::ConfigError;
use super::super::values;
use super::super::values::{AccountId, RegionFile};
use crate::identity::aws::AwsTrustConfig;

/// AWS trust: the signing certificates and the accounts.
#[derive(Clone, Args, Serialize, Deserialize)]
pub struct AwsSettings {
    /// REGION=PEM_PATH: the AWS `signature` key of one region, or `default` for every region
    /// without an operator certificate of its own [default: built-ins (39 regions)].
    ///
    /// Repeatable; comma-separated in the env var. Reloaded on SIGHUP.
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_CERTIFICATE",
        help_heading = "AWS",
        value_name = "REGION=PEM",
        value_delimiter = ','
    )]
    pub aws_certificate: Vec<RegionFile>,

    /// REGION=PEM_PATH: the same for the `rsa2048` PKCS#7 form [default: built-ins (39 regions)].
    ///
    /// Repeatable; comma-separated in the env var. Reloaded on SIGHUP.
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_RSA2048_CERTIFICATE",
        help_heading = "AWS",
        value_name = "REGION=PEM",
        value_delimiter = ','
    )]
    pub aws_rsa2048_certificate: Vec<RegionFile>,

    /// Only AWS accounts listed here pass [default: any, with a warning]. Repeatable; `any`
    /// accepts every account knowingly (no warning).
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_ALLOWED_ACCOUNT",
        help_heading = "AWS",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub aws_allowed_account: Vec<AccountId>,
}

impl AwsSettings {
    /// AWS trust, and whether documents of any account are accepted (`any`, alone).
    pub fn trust(&self) -> Result<(AwsTrustConfig, bool), ConfigError> {
        let any_account = self
            .aws_allowed_account
            .iter()
            .any(|a| a.0 == values::ANY_ACCOUNT);
        if any_account && self.aws_allowed_account.len() > 1 {
            return Err(ConfigError::new(
                "aws_allowed_account",
                "`any` accepts every account: give it alone, or list the accounts",
            ));
        }
        let trust = AwsTrustConfig {
            signature_certificates: region_files(&self.aws_certificate),
            rsa2048_certificates: region_files(&self.aws_rsa2048_certificate),
            allowed_accounts: self
                .aws_allowed_account
                .iter()
                .map(|a| a.0.clone())
                .filter(|a| a != values::ANY_ACCOUNT)
                .collect(),
        };
        Ok((trust, any_account))
    }
}

fn region_files(files: &[values::RegionFile]) -> Vec<(String, PathBuf)> {
    files
        .iter()
        .map(|f| (f.region.clone(), f.path.clone()))
        .collect()
}
