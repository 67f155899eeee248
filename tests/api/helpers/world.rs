//! Control-plane rows in the owned schema: workspaces, builds, agents.

use super::*;

/// Writes control-plane rows for one test.
pub struct World {
    pub client: Client,
}

/// What a seeded agent looks like to the caller.
#[derive(Debug, Clone, Copy)]
pub struct Agent {
    pub id: Uuid,
    pub token: Uuid,
}

impl World {
    pub async fn new(db: &TestDb) -> Self {
        Self {
            client: db.client().await,
        }
    }

    pub async fn workspace(&self) -> Uuid {
        let id = Uuid::new_v4();
        self.exec(
            "INSERT INTO workspaces (id, name) VALUES ($1, 'ws')",
            &[&id],
        )
        .await;
        id
    }

    pub async fn delete_workspace(&self, workspace: Uuid) {
        self.exec(
            "UPDATE workspaces SET deleted = true WHERE id = $1",
            &[&workspace],
        )
        .await;
    }

    /// A build of `workspace` with a `workspace_build` job and one resource; returns the
    /// resource.
    pub async fn build(&self, workspace: Uuid, number: i32) -> Uuid {
        let job = self.job("workspace_build").await;
        self.exec(
            "INSERT INTO workspace_builds (id, workspace_id, build_number, job_id) VALUES ($1, $2, $3, $4)",
            &[&Uuid::new_v4(), &workspace, &number, &job],
        )
        .await;
        self.resource(job).await
    }

    /// A resource of a job that is not a build (`template_version_import` or
    /// `template_version_dry_run`).
    pub async fn template_job_resource(&self, job_type: &str) -> Uuid {
        let job = self.job(job_type).await;
        self.resource(job).await
    }

    pub async fn agent(&self, resource: Uuid, name: &str, instance: &str) -> Agent {
        self.agent_with(resource, name, instance, false, None).await
    }

    pub async fn agent_with(
        &self,
        resource: Uuid,
        name: &str,
        instance: &str,
        deleted: bool,
        parent: Option<Uuid>,
    ) -> Agent {
        let agent = Agent {
            id: Uuid::new_v4(),
            token: Uuid::new_v4(),
        };
        self.exec(
            "INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id, deleted, parent_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&agent.id, &name, &resource, &agent.token, &instance, &deleted, &parent],
        )
        .await;
        agent
    }

    async fn job(&self, job_type: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.exec(
            "INSERT INTO provisioner_jobs (id, type) VALUES ($1, $2::text::provisioner_job_type)",
            &[&id, &job_type],
        )
        .await;
        id
    }

    async fn resource(&self, job: Uuid) -> Uuid {
        let id = Uuid::new_v4();
        self.exec(
            "INSERT INTO workspace_resources (id, job_id) VALUES ($1, $2)",
            &[&id, &job],
        )
        .await;
        id
    }

    pub async fn exec(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) {
        self.client
            .execute(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// `count` agents, each on its own workspace and instance: (instance, token).
pub async fn agents(db: &TestDb, count: usize) -> Vec<(String, Uuid)> {
    let world = World::new(db).await;
    let mut agents = Vec::with_capacity(count);
    for _ in 0..count {
        let instance = instance_id();
        let resource = world.build(world.workspace().await, 1).await;
        agents.push((
            instance.clone(),
            world.agent(resource, "main", &instance).await.token,
        ));
    }
    agents
}

/// One workspace whose latest (only) build has one agent `main` bound to `instance`.
pub async fn seed_agent(db: &TestDb, instance: &str) -> Agent {
    let world = World::new(db).await;
    let resource = world.build(world.workspace().await, 1).await;
    world.agent(resource, "main", instance).await
}
