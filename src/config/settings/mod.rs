//! Every `serve`/`migrate` setting, defined once (DESIGN.md 3.4, contract for the flags it
//! lists).
//!
//! A setting is one field here: its doc comment is the `--help` text and the row of docs/configuration.md
//! (the first paragraph is the short help), its name is the TOML key, `--flag` is the name
//! with `-`, `env` is `AGENT_AUTH_` and the name in upper case (a unit test holds every field
//! to that), `default_value` is the default, and its type parses and prints the value
//! ([`super::values`]). Layering and cross-setting validation live in [`super`].
//!
//! The settings are grouped as the help groups them, one struct per group in its own file
//! beside the conversion of that group into the part of [`super::Config`] its subsystem reads
//! (`DatabaseSettings::store`, `LimitSettings::connection_limits`, ...). The groups are
//! flattened, so the flags, env vars and TOML keys are the fields' names with no group prefix.
//!
//! To add a setting: add a field with its doc comment and `#[arg]` to its group, read it in the
//! group's conversion, and run `AGENT_AUTH_BLESS=1 cargo test --lib config::` to regenerate the
//! docs/configuration.md table (CI fails while it differs).

mod aws;
mod azure;
mod database;
mod gcp;
mod limits;
mod listeners;
mod live;
mod telemetry;
mod tls;

use clap::Args;
use serde::Serialize;

pub use aws::AwsSettings;
pub use azure::AzureSettings;
pub use database::DatabaseSettings;
pub use gcp::{GcpConfig, GcpSettings};
pub use limits::LimitSettings;
pub use listeners::ListenerSettings;
pub use live::{LiveCheckConfig, LiveCheckSettings};
pub use telemetry::TelemetrySettings;
pub use tls::{TlsConfig, TlsSettings};

use super::values::Instant;

/// The layered settings, typed, in groups (the help's headings). Read from the file group by
/// group ([`super::Config::layered`]): a key that is no setting is an error there.
#[derive(Clone, Args, Serialize)]
pub struct Settings {
    #[command(flatten)]
    #[serde(flatten)]
    pub listeners: ListenerSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub aws: AwsSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub gcp: GcpSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub azure: AzureSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsSettings,

    /// Verify certificates and expiry as of this RFC 3339 instant instead of now; for replaying
    /// recorded documents in tests only (logs a warning) [default: now].
    ///
    /// A command-line flag only: refused from the environment and the config file, so a stray
    /// variable cannot turn it on in production.
    #[arg(long, help_heading = "Testing only", value_name = "RFC3339")]
    #[serde(skip)]
    pub insecure_verify_time: Option<Instant>,

    #[command(flatten)]
    #[serde(flatten)]
    pub telemetry: TelemetrySettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub live: LiveCheckSettings,
}

/// The values of a repeatable list setting, trimmed, the empty ones dropped.
fn trimmed(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}
