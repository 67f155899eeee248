//! `agent-auth-tools demo`: the whole loop on a private embedded database with the real recorded AWS
//! document (instance `i-076e9b91f7c420782`, us-east-1), through a real gRPC client.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::DemoArgs;
use crate::seed;
use agent_auth::app::{App, EMBEDDED_DATABASE};
use agent_auth::config::{Config, Settings};
use agent_auth::embedded::{EmbeddedOptions, EmbeddedPostgres};
use agent_auth::grpc::pb;
use agent_auth::store::migrate;

/// The recorded document and signature (exact bytes; see tests/fixtures/aws).
pub const RECORDED_DOCUMENT: &str =
    include_str!("../../tests/fixtures/aws/us-east-1-document.json");
pub const RECORDED_SIGNATURE: &str =
    include_str!("../../tests/fixtures/aws/us-east-1-signature.txt");
pub const RECORDED_INSTANCE_ID: &str = "i-076e9b91f7c420782";
/// The AWS account of the recorded document.
pub const RECORDED_ACCOUNT_ID: &str = "628783029487";

/// `agent-auth-tools demo`: runs the demo, printing each step.
pub async fn command(args: DemoArgs) -> ExitCode {
    agent_auth::telemetry::init(agent_auth::config::LogFormat::Text, "warn", None);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-auth-tools: demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo, printing each step. Returns an error message on failure.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let temp;
    let data_dir = match args.data_dir.clone() {
        Some(dir) => dir,
        None => {
            temp = tempfile::Builder::new()
                .prefix("agent-auth-demo-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            temp.path().to_owned()
        }
    };
    println!("1. Starting a private PostgreSQL in {}", data_dir.display());
    let mut options = EmbeddedOptions::new(&data_dir);
    options.ephemeral = true;
    let cluster = EmbeddedPostgres::start(options)
        .await
        .map_err(|e| e.to_string())?;
    let outcome = with_cluster(&cluster, &data_dir, &args).await;
    println!("6. Stopping PostgreSQL");
    cluster.stop().await.map_err(|e| e.to_string())?;
    outcome
}

async fn with_cluster(
    cluster: &EmbeddedPostgres,
    cluster_dir: &std::path::Path,
    args: &DemoArgs,
) -> Result<(), String> {
    cluster
        .ensure_database(EMBEDDED_DATABASE)
        .await
        .map_err(|e| e.to_string())?;
    let url = cluster.connection_string(EMBEDDED_DATABASE);
    let pg_config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    migrate::run_migrations(&pg_config)
        .await
        .map_err(|e| e.to_string())?;
    println!("2. Applied the owned schema's migrations");

    let mut client = migrate::dedicated(&pg_config)
        .await
        .map_err(|e| e.to_string())?;
    let seeded = seed::seed_agent(&mut client, RECORDED_INSTANCE_ID, "main").await?;
    println!(
        "3. Seeded workspace {} with latest build {} and agent \"main\" bound to {RECORDED_INSTANCE_ID}",
        seeded.workspace_id, seeded.build_id
    );

    let grpc_listen = args.grpc_listen.clone();
    // The demo is AWS only: no GCP keys, so nothing is fetched from the internet.
    let empty_jwks = cluster_dir.join("gcp-jwks.json");
    std::fs::write(&empty_jwks, r#"{"keys":[]}"#).map_err(|e| e.to_string())?;
    let settings = Settings::from_flags([
        "--grpc-listen".into(),
        grpc_listen,
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--postgres-url".into(),
        url,
        "--log-level".into(),
        "warn".into(),
        "--gcp-jwks".into(),
        empty_jwks.display().to_string(),
        // The recorded document's account: what an operator sets (and no replay warning).
        "--aws-allowed-account".into(),
        RECORDED_ACCOUNT_ID.into(),
    ])
    .map_err(|e| e.to_string())?;
    let config = Config::try_from(settings).map_err(|e| e.to_string())?;
    let app = App::build(config).await.map_err(|e| e.to_string())?;
    let addr = app.grpc_addr().ok_or("the gRPC listener has no address")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stop_rx.await;
    }));
    println!("4. Serving gRPC on {addr}");

    let server_url = format!("http://{addr}");
    let result = async {
        let channel = agent_auth::client::connect(&server_url, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        agent_auth::client::authenticate(
            channel,
            pb::AuthenticateRequest {
                identity: Some(pb::authenticate_request::Identity::Aws(
                    pb::AwsInstanceIdentity {
                        document: RECORDED_DOCUMENT.into(),
                        signature: RECORDED_SIGNATURE.into(),
                        rsa2048: String::new(),
                    },
                )),
                agent_name: String::new(),
            },
        )
        .await
        .map_err(|s| agent_auth::client::describe(&s))
    }
    .await;
    let checked = result.and_then(|response| {
        println!(
            "5. Authenticated the recorded AWS document over gRPC: agent {} ({}) of workspace {}\n   session token: {}",
            response.agent_name, response.agent_id, response.workspace_id, response.session_token
        );
        if response.session_token == seeded.auth_token.to_string() {
            println!("   (matches workspace_agents.auth_token of the seeded agent)");
            Ok(())
        } else {
            Err("the token received differs from the seeded agent's token".to_owned())
        }
    });
    let checked = checked.and_then(|()| match (&args.ready_file, args.serve) {
        (Some(file), true) => {
            // Whole or not at all: a script polling for it never reads half an address.
            let partial = file.with_extension("partial");
            std::fs::write(&partial, &server_url)
                .and_then(|()| std::fs::rename(&partial, file))
                .map_err(|e| format!("cannot write {}: {e}", file.display()))
        }
        _ => Ok(()),
    });
    if args.serve && checked.is_ok() {
        println!(
            "   Serving until Ctrl-C. Try, from the source tree:\n   \
             agent-auth authenticate --server {server_url} \\\n     \
             --aws-document tests/fixtures/aws/us-east-1-document.json \\\n     \
             --aws-signature tests/fixtures/aws/us-east-1-signature.txt"
        );
        agent_auth::app::shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    checked
}
