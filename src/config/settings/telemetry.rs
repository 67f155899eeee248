//! The "Telemetry" group of [`super::Settings`] and its conversion (read as they are by
//! `Config::try_from`).

use clap::Args;
use serde::{Deserialize, Serialize};

use super::super::values::{HttpUrl, LogFilter, LogFormat};

/// Logs and traces.
#[derive(Clone, Args, Serialize, Deserialize)]
pub struct TelemetrySettings {
    /// Log format: one JSON line per authentication, never tokens or evidence.
    #[arg(
        long,
        env = "AGENT_AUTH_LOG_FORMAT",
        help_heading = "Telemetry",
        value_name = "json|text",
        default_value = "json"
    )]
    pub log_format: LogFormat,

    /// A tracing filter such as `info` or `agent_auth=debug`.
    #[arg(
        long,
        env = "AGENT_AUTH_LOG_LEVEL",
        help_heading = "Telemetry",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_level: LogFilter,

    /// OTLP/gRPC collector for traces, e.g. `http://otel-collector:4317` [default: off].
    #[arg(
        long,
        env = "AGENT_AUTH_OTLP_ENDPOINT",
        help_heading = "Telemetry",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<HttpUrl>,
}
