//! The databases: the run's throwaway cluster (or `TEST_DATABASE_URL`), a fresh database per
//! test, private clusters a test may stop, Coder's own schema, and locks that hold a statement.

use super::*;

struct Harness {
    /// libpq string for the maintenance database; `dbname` is appended per use.
    admin: String,
    _cluster: Option<EmbeddedPostgres>,
}

/// Starts the run's cluster once. Its supervisor thread outlives every test; the server gets
/// SIGINT when this process exits, so nothing is left running.
fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        std::thread::spawn(start_harness)
            .join()
            .unwrap_or_else(|_| panic!("the PostgreSQL harness thread panicked"))
    })
}

fn start_harness() -> Harness {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
            let admin = Harness { admin: url, _cluster: None };
            let client = connect(&admin.admin).await;
            client
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await
                .unwrap_or_else(|e| panic!("TEST_DATABASE_URL must allow pg_stat_statements (shared_preload_libraries): {e}"));
            return admin;
        }
        remove_stale_clusters();
        let dir = std::env::temp_dir().join(format!("agent-auth-test-{}", std::process::id()));
        let mut options = EmbeddedOptions::new(&dir);
        options.ephemeral = true;
        options.settings = vec![
            ("shared_preload_libraries".into(), "pg_stat_statements".into()),
            ("max_connections".into(), "300".into()),
        ];
        let cluster = EmbeddedPostgres::start(options).await.unwrap_or_else(|e| {
            panic!(
                "the tests need a PostgreSQL server: {e}. Install it (Debian: apt-get install \
                 postgresql) or set TEST_DATABASE_URL to a superuser connection string"
            )
        });
        let admin = cluster.connection_string("postgres");
        connect(&admin)
            .await
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"));
        Harness {
            admin,
            _cluster: Some(cluster),
        }
    })
}

/// Removes clusters of earlier runs whose process is gone.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("agent-auth-test-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub async fn connect(conn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Replaces or appends `dbname` in a libpq key=value string or URL.
fn with_dbname(base: &str, dbname: &str) -> String {
    if base.starts_with("postgres://") || base.starts_with("postgresql://") {
        let mut url = base.to_owned();
        if let Some(q) = url.find('?') {
            url.truncate(q);
        }
        let (prefix, _) = url.rsplit_once('/').unwrap_or((&url, ""));
        let query = base.find('?').map(|q| &base[q..]).unwrap_or("");
        format!("{prefix}/{dbname}{query}")
    } else {
        let kept: Vec<&str> = base
            .split_whitespace()
            .filter(|kv| !kv.starts_with("dbname="))
            .collect();
        format!("{} dbname={dbname}", kept.join(" "))
    }
}

/// A fresh, empty database for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("t_{}", Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database: {e}"));
        Self {
            url: with_dbname(&harness().admin, &name),
            name,
        }
    }

    /// A fresh database with the owned schema applied.
    pub async fn migrated() -> Self {
        let db = Self::new().await;
        let config: tokio_postgres::Config = db.url.parse().unwrap_or_else(|e| panic!("{e}"));
        agent_auth::store::migrate::run_migrations(&config)
            .await
            .unwrap_or_else(|e| panic!("migrations: {e}"));
        db
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A connection string for another role on this database.
    pub fn url_as(&self, user: &str) -> String {
        let kept: Vec<&str> = self
            .url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("user="))
            .collect();
        format!("{} user={user}", kept.join(" "))
    }

    /// How many statements have run in this database since the last reset (pg_stat_statements,
    /// read from the maintenance database so the count is not disturbed).
    pub async fn statements(&self) -> i64 {
        admin()
            .await
            .query_one(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)",
                &[&self.name],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"))
            .get(0)
    }

    /// Calls of the resolver's statement alone (a test's own statements, such as a lock, left
    /// out).
    pub async fn resolver_statements(&self) -> i64 {
        admin()
            .await
            .query_one(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1) \
                 AND query = $2",
                &[&self.name, &agent_auth::store::resolve::RESOLVE_SQL],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"))
            .get(0)
    }

    /// Makes the database refuse (or accept again) new connections, closing existing ones:
    /// the service sees a database that is down.
    pub async fn allow_connections(&self, allow: bool) {
        let admin = admin().await;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
                self.name
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if !allow {
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    &[&self.name],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    pub async fn reset_statements(&self) {
        admin().await
            .execute(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = $1), 0)",
                &[&self.name],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements_reset: {e}"));
    }
}

/// A superuser connection to the maintenance database.
pub async fn admin() -> Client {
    connect(&harness().admin).await
}

/// Whether the database at `url` (a replica) holds an agent bound to `instance` yet.
pub async fn replayed(url: &str, instance: &str) -> bool {
    connect(url)
        .await
        .query_opt(
            "SELECT 1 FROM workspace_agents WHERE auth_instance_id = $1",
            &[&instance],
        )
        .await
        .map(|row| row.is_some())
        .unwrap_or(false)
}

/// A temporary directory the clusters' unprivileged account may pass through.
pub fn reachable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .unwrap_or_else(|e| panic!("{e}"));
    dir
}

/// A PostgreSQL cluster of the test's own in `data` (so the test may stop and restart it).
pub async fn private_cluster(data: &std::path::Path) -> agent_auth::embedded::EmbeddedPostgres {
    let mut options = agent_auth::embedded::EmbeddedOptions::new(data);
    options.ephemeral = true;
    agent_auth::embedded::EmbeddedPostgres::start(options)
        .await
        .unwrap_or_else(|e| panic!("private cluster: {e}"))
}

/// [`private_cluster`] with a migrated database `name`.
pub async fn private_database(
    data: &std::path::Path,
    name: &str,
) -> (agent_auth::embedded::EmbeddedPostgres, TestDb) {
    let cluster = private_cluster(data).await;
    cluster
        .ensure_database(name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.connection_string(name);
    agent_auth::store::migrate::run_migrations(&url.parse().unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let db = TestDb {
        name: name.into(),
        url,
    };
    (cluster, db)
}

/// The server-side pids of the service's pooled connections to `db`.
pub async fn agent_backends(db: &TestDb) -> Vec<i32> {
    admin()
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'agent-auth' ORDER BY pid",
            &[&db.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Holds an exclusive lock on `workspace_agents`, so the resolver's statement waits; roll back
/// the returned connection's transaction to release it.
pub async fn lock_agents(db: &TestDb) -> Client {
    let client = db.client().await;
    client
        .batch_execute("BEGIN; LOCK TABLE workspace_agents IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client
}

/// Waits until a statement in `db` is blocked on a lock (the resolver behind [`lock_agents`]).
pub async fn wait_until_blocked(db: &TestDb) {
    let blocked = eventually(Duration::from_secs(10), async || {
        admin()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                &[&db.name],
            )
            .await
            .map(|row| row.get::<_, i64>(0) > 0)
            .unwrap_or(false)
    });
    assert!(blocked.await, "no statement ever waited on the lock");
}

/// Coder's schema (the compatibility fixture: the tables agent-auth reads, as Coder creates them).
pub const CODER_SCHEMA: &str = include_str!("../../fixtures/coder/schema-subset.sql");

/// Rows in Coder's schema, with the NOT NULL columns it requires.
pub struct CoderWorld {
    pub client: tokio_postgres::Client,
}

impl CoderWorld {
    pub async fn workspace(&self) -> Uuid {
        let id = Uuid::new_v4();
        self.client
            .execute(
                "INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id, name) \
                 VALUES ($1, now(), now(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'ws-' || left(gen_random_uuid()::text, 8))",
                &[&id],
            )
            .await
            .unwrap();
        id
    }

    pub async fn build(&self, workspace: Uuid, number: i32) -> Uuid {
        let job = Uuid::new_v4();
        let resource = Uuid::new_v4();
        self.client
            .execute(
                "INSERT INTO provisioner_jobs (id, created_at, updated_at, organization_id, initiator_id, provisioner, storage_method, type, input, file_id) \
                 VALUES ($1, now(), now(), gen_random_uuid(), gen_random_uuid(), 'terraform', 'file', 'workspace_build', '{}', gen_random_uuid())",
                &[&job],
            )
            .await
            .unwrap();
        self.client
            .execute(
                "INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id, build_number, transition, initiator_id, job_id) \
                 VALUES (gen_random_uuid(), now(), now(), $1, gen_random_uuid(), $2, 'start', gen_random_uuid(), $3)",
                &[&workspace, &number, &job],
            )
            .await
            .unwrap();
        self.client
            .execute(
                "INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name) VALUES ($1, now(), $2, 'start', 'aws_instance', 'dev')",
                &[&resource, &job],
            )
            .await
            .unwrap();
        resource
    }

    pub async fn agent(&self, resource: Uuid, name: &str, instance: &str) -> Uuid {
        let token = Uuid::new_v4();
        self.client
            .execute(
                "INSERT INTO workspace_agents (id, created_at, updated_at, name, resource_id, auth_token, auth_instance_id, architecture, operating_system) \
                 VALUES (gen_random_uuid(), now(), now(), $1, $2, $3, $4, 'amd64', 'linux')",
                &[&name, &resource, &token, &instance],
            )
            .await
            .unwrap();
        token
    }
}
