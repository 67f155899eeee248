//! Thin entry point: parse the command line, start the runtime, run the subcommand
//! (`agent_auth::commands`, one module each, which also owns the exit codes).

use std::process::ExitCode;

use agent_auth::cli::Cli;
use agent_auth::config::{ConfigError, EXIT_CONFIG};
use clap::Parser;

/// mimalloc instead of glibc's malloc: a login allocates a few hundred small blocks (HTTP/2
/// frames, headers, protobuf), and glibc's free alone was 4 % of the server's instructions
/// (`scripts/cpu-per-login`; before and after in docs/bench/history.md, "CPU per login").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A setting's bad value gets the same one line, naming the key, wherever it came from.
        Err(e) => match ConfigError::from_clap(&e) {
            Some(error) => {
                eprintln!("agent-auth: {error}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            None => e.exit(),
        },
    };
    // One TLS crypto provider for the whole process (rustls panics when it must guess).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(agent_auth::commands::run(cli.command)),
        Err(e) => {
            eprintln!("agent-auth: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
