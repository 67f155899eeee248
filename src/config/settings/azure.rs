//! The "Azure" group of [`super::Settings`] and its conversion (`AzureSettings::trust`).

use clap::Args;
use serde::{Deserialize, Serialize};

use super::super::values::{ExistingFile, Flag};
use crate::identity::azure::AzureTrustConfig;

/// Azure trust: roots, intermediates, subscriptions, issuer fetching.
#[derive(Clone, Args, Serialize, Deserialize)]
pub struct AzureSettings {
    /// PEM bundle that replaces the built-in Azure roots [default: the 7 roots Microsoft lists].
    ///
    /// Reloaded on SIGHUP.
    #[arg(
        long,
        env = "AGENT_AUTH_AZURE_ROOTS",
        help_heading = "Azure",
        value_name = "PEM_PATH"
    )]
    pub azure_roots: Option<ExistingFile>,

    /// PEM bundle of intermediates added to the built-in Azure ones [default: built-ins (23)].
    ///
    /// Reloaded on SIGHUP.
    #[arg(
        long,
        env = "AGENT_AUTH_AZURE_INTERMEDIATES",
        help_heading = "Azure",
        value_name = "PEM_PATH"
    )]
    pub azure_intermediates: Option<ExistingFile>,

    /// Fetch a missing Azure issuer through the signer's AIA URL.
    ///
    /// Only after the signer's name passed and when its issuer is not pinned:
    /// `www.microsoft.com`, `caissuers.microsoft.com` and `cacerts.digicert.com` only,
    /// `.crt`/`.cer` paths without a query, default ports, public addresses only, 5 s, 1 MiB,
    /// 32 cached (LRU), 8 at once then 30 a minute; a fetched certificate is only an
    /// intermediate.
    #[arg(long, env = "AGENT_AUTH_AZURE_FETCH_ISSUERS", help_heading = "Azure", value_name = "true|false", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub azure_fetch_issuers: Flag,

    /// Only Azure subscriptions listed here pass [default: any]. Repeatable.
    #[arg(
        long,
        env = "AGENT_AUTH_AZURE_ALLOWED_SUBSCRIPTION",
        help_heading = "Azure",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub azure_allowed_subscription: Vec<String>,
}

impl AzureSettings {
    /// Azure trust: replaced roots or intermediates, subscriptions, issuer fetching.
    pub fn trust(&self) -> AzureTrustConfig {
        AzureTrustConfig {
            roots: self.azure_roots.clone().map(|f| f.0),
            intermediates: self.azure_intermediates.clone().map(|f| f.0),
            allowed_subscriptions: super::trimmed(&self.azure_allowed_subscription),
            fetch_issuers: self.azure_fetch_issuers.0,
        }
    }
}
