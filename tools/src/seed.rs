//! Writes the demo's example rows into the owned schema. Never used by the server.

use tokio_postgres::Client;
use uuid::Uuid;

/// One workspace with one latest `workspace_build` build whose resource holds one agent.
pub struct SeededAgent {
    pub workspace_id: Uuid,
    pub build_id: Uuid,
    pub agent_id: Uuid,
    pub auth_token: Uuid,
}

/// Inserts a workspace, a `workspace_build` job, build number 1, a resource and an agent bound
/// to `instance_id`, in one transaction.
pub async fn seed_agent(
    client: &mut Client,
    instance_id: &str,
    agent_name: &str,
) -> Result<SeededAgent, String> {
    let err = |e: tokio_postgres::Error| format!("seeding: {e}");
    let seeded = SeededAgent {
        workspace_id: Uuid::new_v4(),
        build_id: Uuid::new_v4(),
        agent_id: Uuid::new_v4(),
        auth_token: Uuid::new_v4(),
    };
    let job_id = Uuid::new_v4();
    let resource_id = Uuid::new_v4();
    let tx = client.transaction().await.map_err(err)?;
    tx.execute(
        "INSERT INTO workspaces (id, name) VALUES ($1, 'demo')",
        &[&seeded.workspace_id],
    )
    .await
    .map_err(err)?;
    tx.execute(
        "INSERT INTO provisioner_jobs (id, type) VALUES ($1, 'workspace_build')",
        &[&job_id],
    )
    .await
    .map_err(err)?;
    tx.execute(
        "INSERT INTO workspace_builds (id, workspace_id, build_number, job_id) VALUES ($1, $2, 1, $3)",
        &[&seeded.build_id, &seeded.workspace_id, &job_id],
    )
    .await
    .map_err(err)?;
    tx.execute(
        "INSERT INTO workspace_resources (id, job_id, name) VALUES ($1, $2, 'vm')",
        &[&resource_id, &job_id],
    )
    .await
    .map_err(err)?;
    tx.execute(
        "INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &seeded.agent_id,
            &agent_name,
            &resource_id,
            &seeded.auth_token,
            &instance_id,
        ],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(seeded)
}
