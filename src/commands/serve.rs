//! `agent-auth serve` (and `--check-config`).

use super::Failure;
use crate::app::{App, shutdown_signal};
use crate::config::{Config, ConfigError, ServeArgs};
use crate::telemetry;

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let config = Config::load(&args)?;
    if args.check_config {
        // The effective settings as TOML that --config reads back, passwords redacted.
        let text = Config::layered(&args)?
            .to_redacted_toml()
            .map_err(|e| ConfigError::new("config", e))?;
        print!("{text}");
        return Ok(());
    }
    let telemetry = telemetry::init(
        config.log_format,
        &config.log_level,
        config.otlp_endpoint.as_deref(),
    );
    if let Some(at) = config.insecure_verify_time {
        tracing::warn!(verify_time = %humantime::format_rfc3339(at), "--insecure-verify-time is set: evidence is verified as of a fixed instant; for tests only");
    }
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            // Once, in the configured log format (JSON lines stay parseable).
            tracing::error!(error = %crate::report::chain(&e), "start-up failed");
            return Err(Failure::Reported);
        }
    };
    let outcome = app.run(shutdown_signal()).await;
    // After the listeners drained and the embedded database stopped: flush traces.
    telemetry.shutdown();
    outcome.map_err(Failure::failed)
}
