//! The "GCP" group of [`super::Settings`] and its conversion (`GcpSettings::trust`).

use clap::Args;
use serde::{Deserialize, Serialize};

use super::super::values::{JwksSource, NonEmpty};

/// GCP trust: the JWKS, the audience, the projects.
#[derive(Clone, Args, Serialize, Deserialize)]
pub struct GcpSettings {
    /// GCP JWKS: a URL or a file.
    ///
    /// A URL is fetched in the background, cached for `max-age`, and refetched at most once a
    /// minute for an unknown `kid`; a file is static (reloaded on SIGHUP).
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_JWKS",
        help_heading = "GCP",
        value_name = "URL_OR_PATH",
        default_value = "https://www.googleapis.com/oauth2/v3/certs"
    )]
    pub gcp_jwks: JwksSource,

    /// Required `aud` of GCP tokens (what agents request today).
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_AUDIENCE",
        help_heading = "GCP",
        value_name = "AUD",
        default_value = "coder"
    )]
    pub gcp_audience: NonEmpty,

    /// Only GCP projects listed here pass [default: any]. Repeatable.
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_ALLOWED_PROJECT",
        help_heading = "GCP",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub gcp_allowed_project: Vec<String>,
}

/// GCP settings.
#[derive(Debug, Clone)]
pub struct GcpConfig {
    pub jwks: JwksSource,
    pub audience: String,
    pub allowed_projects: Vec<String>,
}

impl GcpSettings {
    /// GCP trust: the JWKS, the audience, the projects.
    pub fn trust(&self) -> GcpConfig {
        GcpConfig {
            jwks: self.gcp_jwks.clone(),
            audience: self.gcp_audience.0.clone(),
            allowed_projects: super::trimmed(&self.gcp_allowed_project),
        }
    }
}
