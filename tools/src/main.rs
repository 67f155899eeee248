//! `agent-auth-tools`: `demo` and `bench`.

use std::process::ExitCode;

use agent_auth_tools::cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the whole process (rustls panics when it must guess).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("agent-auth-tools: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => agent_auth_tools::demo::command(args).await,
            Command::Bench(args) => agent_auth_tools::bench::command(*args).await,
        }
    })
}
