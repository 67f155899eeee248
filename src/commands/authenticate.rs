//! `agent-auth authenticate`: one authentication from evidence in files, printing the answer.

use super::Failure;
use crate::cli::AuthenticateArgs;
use crate::client::{self, ClientTls};
use crate::grpc::pb;

pub async fn run(args: AuthenticateArgs) -> Result<(), Failure> {
    let identity = client::identity_from_files(&args).map_err(Failure::Usage)?;
    let tls = ClientTls::from_args(&args.tls).map_err(|e| Failure::Usage(e.to_string()))?;
    let channel = client::connect_with(&args.server, args.timeout, tls.as_ref())
        .await
        .map_err(Failure::failed)?;
    let request = pb::AuthenticateRequest {
        identity: Some(identity),
        agent_name: args.agent_name,
    };
    let response = client::authenticate(channel, request)
        .await
        .map_err(|status| {
            Failure::Failed(format!(
                "authentication failed: {}",
                client::describe(&status)
            ))
        })?;
    println!("session_token: {}", response.session_token);
    println!("agent: {} ({})", response.agent_name, response.agent_id);
    println!(
        "workspace: {}  build: {}",
        response.workspace_id, response.workspace_build_id
    );
    println!("instance: {}", response.instance_id);
    Ok(())
}
