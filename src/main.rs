//! Thin entry point: parse the command line, load configuration, run.

use std::process::ExitCode;

use agent_auth::app::App;
use agent_auth::cli::{AuthenticateArgs, Cli, Command, ServeArgs};
use agent_auth::config::{Config, EXIT_CONFIG};
use agent_auth::grpc::pb;
use agent_auth::{client, telemetry};
use clap::Parser;

/// mimalloc instead of glibc's malloc: a login allocates a few hundred small blocks (HTTP/2
/// frames, headers, protobuf), and glibc's free alone was 4 % of the server's instructions
/// (`scripts/cpu-per-login`; before and after in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A setting's bad value gets the same one line, naming the key, wherever it came from.
        Err(e) => match agent_auth::config::ConfigError::from_clap(&e) {
            Some(error) => {
                eprintln!("agent-auth: {error}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            None => e.exit(),
        },
    };
    // One TLS crypto provider for the whole process (rustls panics when it must guess).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("agent-auth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Migrate(args) => migrate(args).await,
            Command::Healthcheck(args) => {
                let tls = match client::ClientTls::from_args(&args.tls) {
                    Ok(tls) => tls,
                    Err(e) => {
                        eprintln!("agent-auth: {e}");
                        return ExitCode::from(EXIT_CONFIG as u8);
                    }
                };
                match client::is_serving_with(
                    &args.server,
                    &args.service,
                    args.timeout,
                    tls.as_ref(),
                )
                .await
                {
                    Ok(true) => {
                        println!("SERVING");
                        ExitCode::SUCCESS
                    }
                    Ok(false) => {
                        eprintln!("agent-auth: {} is not serving", args.server);
                        ExitCode::FAILURE
                    }
                    Err(e) => {
                        eprintln!("agent-auth: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Authenticate(args) => authenticate(args).await,
            Command::Trust(args) => agent_auth::trust::command(args).await,
        }
    })
}

fn load(args: &ServeArgs) -> Result<Config, ExitCode> {
    Config::load(args).map_err(|e| {
        eprintln!("agent-auth: {e}");
        ExitCode::from(EXIT_CONFIG as u8)
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match load(&args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if args.check_config {
        // The effective settings as TOML that --config reads back, passwords redacted.
        return match Config::layered(&args).and_then(|settings| {
            settings
                .to_redacted_toml()
                .map_err(|e| agent_auth::config::ConfigError::new("config", e))
        }) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("agent-auth: {e}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
        };
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
            tracing::error!(error = %e, "start-up failed");
            return ExitCode::FAILURE;
        }
    };
    let outcome = app.run(agent_auth::app::shutdown_signal()).await;
    // After the listeners drained and the embedded database stopped: flush traces.
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-auth: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(args: ServeArgs) -> ExitCode {
    let config = match load(&args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    telemetry::init(config.log_format, &config.log_level, None);
    match agent_auth::app::prepare_database(&config).await {
        Ok(database) => {
            if let Some(cluster) = database.embedded {
                let _ = cluster.stop().await;
            }
            println!("agent-auth: schema is up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent-auth: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn authenticate(args: AuthenticateArgs) -> ExitCode {
    let identity = client::identity_from_files(&args);
    let identity = match identity {
        Ok(identity) => identity,
        Err(e) => {
            eprintln!("agent-auth: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let tls = match client::ClientTls::from_args(&args.tls) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("agent-auth: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let channel = match client::connect_with(&args.server, args.timeout, tls.as_ref()).await {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("agent-auth: {e}");
            return ExitCode::FAILURE;
        }
    };
    let request = pb::AuthenticateRequest {
        identity: Some(identity),
        agent_name: args.agent_name,
    };
    match client::authenticate(channel, request).await {
        Ok(response) => {
            println!("session_token: {}", response.session_token);
            println!("agent: {} ({})", response.agent_name, response.agent_id);
            println!(
                "workspace: {}  build: {}",
                response.workspace_id, response.workspace_build_id
            );
            println!("instance: {}", response.instance_id);
            ExitCode::SUCCESS
        }
        Err(status) => {
            eprintln!(
                "agent-auth: authentication failed: {}",
                client::describe(&status)
            );
            ExitCode::FAILURE
        }
    }
}
