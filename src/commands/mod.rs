//! The subcommands of `agent-auth`, one module each, above everything else: each parses
//! nothing (clap did), runs its part of the library and returns `Result<(), Failure>`, and
//! [`run`] turns that into the one line on stderr and the exit code, in one place.

mod authenticate;
mod demo;
mod healthcheck;
mod migrate;
mod serve;
mod trust;

use std::process::ExitCode;

use crate::cli::Command;
use crate::config::{ConfigError, EXIT_CONFIG};

/// Why a command did not succeed, and so its exit code.
#[derive(Debug)]
pub enum Failure {
    /// A bad setting or argument: exit 64 (EX_USAGE), with this line.
    Usage(String),
    /// The command ran and failed: exit 1, with this line.
    Failed(String),
    /// Failed and already said why (in the log, or as warnings): exit 1, nothing more.
    Reported,
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Failure::Usage(error.to_string())
    }
}

impl Failure {
    /// A failure whose cause is `error`, said with its causes.
    fn failed(error: impl std::error::Error + 'static) -> Self {
        Failure::Failed(crate::report::chain(&error))
    }

    /// Prints the failure's line (if it has one) and gives its exit code.
    pub fn report(self) -> ExitCode {
        match self {
            Failure::Usage(line) => {
                eprintln!("agent-auth: {line}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
            Failure::Failed(line) => {
                eprintln!("agent-auth: {line}");
                ExitCode::FAILURE
            }
            Failure::Reported => ExitCode::FAILURE,
        }
    }
}

/// Runs `command` to its end.
pub async fn run(command: Command) -> ExitCode {
    let outcome = match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Authenticate(args) => authenticate::run(args).await,
        Command::Trust(args) => trust::run(args).await,
        Command::Demo(args) => demo::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
