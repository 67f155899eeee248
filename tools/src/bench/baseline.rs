//! The baselines that run beside the service on the same database and pool size: the
//! resolver's statement alone (the ceiling), and the incumbent's logins written as plain SQL,
//! statement by statement, each a round trip on one pooled connection with the statements
//! prepared once per connection as pgx's statement cache does (docs: `../shared/notes/coder.md`).
//!
//! The emulations count the statements they run, so "statements per login" is measured, not
//! assumed. They are lower bounds of the incumbent's own counts (#24973 measured 13 for v2.32
//! and 19 / 26 for v2.33.1 with one / two agents, including look-ups not emulated here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_auth::store::{self, StoreConfig};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::drive::{Cost, Tally, Until, drive};

const AGENT_BY_INSTANCE: &str = "SELECT * FROM workspace_agents WHERE auth_instance_id = $1::text AND deleted = false ORDER BY created_at DESC LIMIT 1";
/// v2.33's `GetWorkspaceAgentsByInstanceID :many`.
const AGENTS_BY_INSTANCE: &str = "SELECT * FROM workspace_agents WHERE auth_instance_id = $1::text AND deleted = false AND parent_id IS NULL ORDER BY created_at DESC";
const RESOURCE_BY_ID: &str = "SELECT * FROM workspace_resources WHERE id = $1::uuid";
const JOB_BY_ID: &str =
    "SELECT *, type::text AS job_type FROM provisioner_jobs WHERE id = $1::uuid";
const BUILD_BY_JOB: &str = "SELECT * FROM workspace_builds WHERE job_id = $1::uuid";
const WORKSPACE_BY_ID: &str = "SELECT * FROM workspaces WHERE id = $1::uuid";
const BUILD_BY_ID: &str = "SELECT * FROM workspace_builds WHERE id = $1::uuid";
const LATEST_BUILD: &str = "SELECT * FROM workspace_builds WHERE workspace_id = $1::uuid ORDER BY build_number DESC LIMIT 1";

/// Which incumbent login to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incumbent {
    /// v2.32: agent by instance id, resource, job (+ the authorization look-ups of the build by
    /// job and the workspace by id), build by id, latest build: 7 statements.
    V2_32,
    /// v2.33.1: all candidates, then per candidate its resource and job (+ the same
    /// authorization look-ups) keeping workspace_build jobs, selection by name or uniqueness,
    /// the selected agent's resource and job fetched again, build by id, latest build:
    /// 7 + 4 per candidate (11 for one candidate, 15 for two).
    V2_33_1,
}

/// One login's connection and the statements it has run.
struct Session<'a> {
    client: &'a Object,
    statements: u32,
}

impl Session<'_> {
    async fn rows(&mut self, sql: &str, param: &(dyn ToSql + Sync)) -> Result<Vec<Row>, String> {
        let statement = self.client.prepare_cached(sql).await.map_err(sql_error)?;
        self.statements += 1;
        self.client
            .query(&statement, &[param])
            .await
            .map_err(sql_error)
    }

    async fn one(&mut self, sql: &str, param: &(dyn ToSql + Sync)) -> Result<Row, String> {
        self.rows(sql, param)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| "404: no row".to_owned())
    }

    /// The resource and job of `agent` plus, for a workspace build's job, the authorization
    /// cascade (build by job, workspace by id) that the incumbent's `GetProvisionerJobByID`
    /// ran: 4 statements. (A template import's job is authorized through its template version
    /// instead, which the owned schema does not carry: 2 statements counted, a lower bound.)
    async fn job_of(&mut self, agent: &Row) -> Result<JobOf, String> {
        let resource = self
            .one(RESOURCE_BY_ID, &uuid(agent, "resource_id")?)
            .await?;
        let job_id = uuid(&resource, "job_id")?;
        let job = self.one(JOB_BY_ID, &job_id).await?;
        let job_type: String = job.try_get("job_type").map_err(sql_error)?;
        if job_type != "workspace_build" {
            return Ok(JobOf {
                job_type,
                workspace_id: uuid::Uuid::nil(),
                build_id: uuid::Uuid::nil(),
            });
        }
        let build = self.one(BUILD_BY_JOB, &job_id).await?;
        let workspace_id = uuid(&build, "workspace_id")?;
        self.one(WORKSPACE_BY_ID, &workspace_id).await?;
        Ok(JobOf {
            job_type,
            workspace_id,
            build_id: uuid(&build, "id")?,
        })
    }

    /// The incumbent's closing steps: the build by id and the workspace's latest build.
    async fn latest_check(&mut self, job: &JobOf) -> Result<(), String> {
        self.one(BUILD_BY_ID, &job.build_id).await?;
        let latest = self.one(LATEST_BUILD, &job.workspace_id).await?;
        if uuid(&latest, "id")? == job.build_id {
            Ok(())
        } else {
            Err("400: not the latest build".into())
        }
    }
}

struct JobOf {
    job_type: String,
    workspace_id: uuid::Uuid,
    build_id: uuid::Uuid,
}

fn sql_error(e: tokio_postgres::Error) -> String {
    format!("sql: {e}")
}

fn uuid(row: &Row, column: &str) -> Result<uuid::Uuid, String> {
    row.try_get(column).map_err(sql_error)
}

/// Coder v2.32's login. Its job step stands in for "build by id from the job's input", which
/// the owned schema does not carry: one statement either way.
async fn v2_32(session: &mut Session<'_>, instance: &str) -> Result<(), String> {
    let agent = session.one(AGENT_BY_INSTANCE, &instance).await?;
    let job = session.job_of(&agent).await?;
    // v2.32 took the newest agent for the instance; when that is a template import's, it
    // answered 400 ("jobs cannot be authenticated"), as emulated.
    if job.job_type != "workspace_build" {
        return Err("400: not a workspace_build job".into());
    }
    session.latest_check(&job).await
}

/// Coder v2.33.1's login. Stale agents of earlier builds survive its job-type filter, so a
/// rebuilt workspace answers 409 with no way out (#25155), as emulated.
async fn v2_33_1(
    session: &mut Session<'_>,
    instance: &str,
    name: Option<&str>,
) -> Result<(), String> {
    let candidates = session.rows(AGENTS_BY_INSTANCE, &instance).await?;
    let mut kept = Vec::new();
    for agent in &candidates {
        if session.job_of(agent).await?.job_type == "workspace_build" {
            kept.push(agent);
        }
    }
    let named = |agent: &&&Row| match name {
        Some(name) => agent.try_get::<_, String>("name").ok().as_deref() == Some(name),
        None => true,
    };
    let selected: Vec<&Row> = kept.iter().filter(named).copied().collect();
    let agent = match selected.as_slice() {
        [] => return Err("404: no candidate".into()),
        [agent] => *agent,
        _ => return Err("409: ambiguous".into()),
    };
    let job = session.job_of(agent).await?;
    session.latest_check(&job).await
}

/// Where and how hard a baseline runs: its callers share `pool` and log in as `instances`.
pub struct Load<'a> {
    pub label: &'a str,
    pub pool: Pool,
    pub instances: Arc<Vec<String>>,
    pub concurrency: usize,
    pub until: Until,
    pub deadline: Duration,
}

/// Drives logins that each check out a pooled connection and run `login` on it, timing the
/// checkout.
async fn drive_on_pool<F, Fut>(load: Load<'_>, login: F) -> (Tally, Duration)
where
    F: Fn(Object, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u32, String>> + Send,
{
    let Load {
        label,
        pool,
        instances,
        concurrency,
        until,
        deadline,
    } = load;
    drive(label, concurrency, until, deadline, move |n| {
        let (pool, login) = (pool.clone(), login.clone());
        let instance = instances[n as usize % instances.len()].clone();
        async move {
            let waited = Instant::now();
            let client = pool.get().await.map_err(|_| "pool".to_owned())?;
            let pool_wait = waited.elapsed();
            let statements = login(client, instance).await?;
            Ok(Cost {
                statements,
                pool_wait,
            })
        }
    })
    .await
}

/// The resolver's statement alone: the same prepared statement the service runs, through a
/// pool of the same size, without gRPC or cryptography.
pub async fn run_raw(load: Load<'_>) -> (Tally, Duration) {
    let login = |client: Object, instance: String| async move {
        // Cached per connection, as the service prepares it once per connection.
        let statement = client
            .prepare_typed_cached(
                agent_auth::store::resolve::RESOLVE_SQL,
                &[tokio_postgres::types::Type::TEXT],
            )
            .await
            .map_err(sql_error)?;
        let rows = client
            .query(&statement, &[&instance])
            .await
            .map_err(sql_error)?;
        if rows.is_empty() {
            Err("no rows".into())
        } else {
            Ok(1)
        }
    };
    drive_on_pool(load, login).await
}

/// An incumbent emulation; `name` is the `agent_name` the callers send (v2.33.1 only).
pub async fn run_incumbent(
    load: Load<'_>,
    version: Incumbent,
    name: Option<&'static str>,
) -> (Tally, Duration) {
    let login = move |client: Object, instance: String| async move {
        let mut session = Session {
            client: &client,
            statements: 0,
        };
        match version {
            Incumbent::V2_32 => v2_32(&mut session, &instance).await?,
            Incumbent::V2_33_1 => v2_33_1(&mut session, &instance, name).await?,
        }
        Ok(session.statements)
    };
    drive_on_pool(load, login).await
}

/// A checkout-per-statement pool with the service's connection settings, for the bench's
/// baselines (the resolver's statement alone, the incumbent's logins).
pub fn pool(url: &str, config: &StoreConfig) -> Result<Pool, String> {
    let url = store::PostgresUrl::parse(url)?;
    let (pg_config, tls) = store::connection_settings(&url, config).map_err(|e| e.to_string())?;
    let manager = Manager::from_config(
        pg_config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(config.checkout_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.checkout_timeout))
        .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
            // Prepared (and cached) when a connection opens, as the service does.
            Box::pin(async move {
                client
                    .prepare_typed_cached(
                        store::resolve::RESOLVE_SQL,
                        &[tokio_postgres::types::Type::TEXT],
                    )
                    .await
                    .map(|_| ())
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("cannot build the pool: {e}"))
}
