//! Schema management: the owned schema's migrations, and the check of Coder's schema.

use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

refinery::embed_migrations!("migrations");

/// Key of the session advisory lock held while migrating, so that replicas starting together
/// do not race on `refinery_schema_history` (refinery takes no lock of its own).
/// Session locks do not survive a transaction-pooling proxy: migrate through a direct connection.
pub const MIGRATION_LOCK_KEY: i64 = 0x6167_656e_7461_7574; // "agentaut"

/// Tables and columns the resolver reads (DESIGN.md section 2).
pub const REQUIRED_COLUMNS: &[(&str, &[&str])] = &[
    (
        "workspace_agents",
        &[
            "id",
            "name",
            "resource_id",
            "auth_token",
            "auth_instance_id",
            "parent_id",
            "deleted",
            "created_at",
        ],
    ),
    ("workspace_resources", &["id", "job_id"]),
    ("provisioner_jobs", &["id", "type"]),
    (
        "workspace_builds",
        &["id", "workspace_id", "build_number", "job_id"],
    ),
    ("workspaces", &["id", "deleted"]),
];

/// Opens a dedicated connection (not from the pool) for schema work, with TLS as the pool
/// would use it when `tls` is given (else unverified TLS when offered, see `super::tls`).
/// The whole connect's bound when the settings name none (a tool's own settings).
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn dedicated(config: &tokio_postgres::Config) -> Result<Client, StoreError> {
    dedicated_with(config, super::tls::connector(None)?).await
}

pub async fn dedicated_with(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
) -> Result<Client, StoreError> {
    // tokio-postgres bounds only the socket's connect by `connect_timeout`; a server that
    // accepts and never answers (a black hole) is bounded here, the whole connect at once.
    let limit = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let (client, connection) = tokio::time::timeout(limit, config.connect(tls))
        .await
        .map_err(|_| {
            StoreError::unavailable(format!(
                "{}: no answer within {limit:?} (--db-connect-timeout)",
                super::connect_error_place(config)
            ))
        })?
        .map_err(|e| StoreError::unavailable(super::connect_error(&e, config)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "schema connection ended");
        }
    });
    Ok(client)
}

/// Applies the owned schema's pending migrations under [`MIGRATION_LOCK_KEY`].
/// Returns the versions applied by this call.
pub async fn run_migrations(config: &tokio_postgres::Config) -> Result<Vec<i32>, StoreError> {
    run_migrations_with(config, super::tls::connector(None)?).await
}

/// As [`run_migrations`], over the given TLS connector.
pub async fn run_migrations_with(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
) -> Result<Vec<i32>, StoreError> {
    let mut client = dedicated_with(config, tls).await?;
    let internal = |e: tokio_postgres::Error| StoreError::internal_by("migration lock", e);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(internal)?;
    let outcome = match holds_coders_tables(&client).await {
        Ok(false) => migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| StoreError::internal_by("migration failed", e)),
        Ok(true) => Err(StoreError::internal(
            "this database already holds workspace_agents and the other tables agent-auth reads, \
             but no agent-auth migration history: it is a control plane's own database (Coder's). \
             Next to Coder run with --schema coder (read-only: nothing is migrated or written); \
             the owned schema needs a database of its own",
        )),
        Err(e) => Err(internal(e)),
    };
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(internal)?;
    let report = outcome?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.version())
        .collect())
}

/// Whether the database holds the tables agent-auth reads without its own migration history:
/// a control plane's database, which the owned schema's first migration would collide with.
async fn holds_coders_tables(
    client: &tokio_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NULL \
                    AND to_regclass('workspace_agents') IS NOT NULL",
            &[],
        )
        .await?;
    row.try_get(0)
}

/// `--db-pooler transaction` or `transaction-prepared`: a transaction-mode pooler cannot hold
/// the session lock that migrating takes, so `serve` only checks that every migration is
/// applied (one statement, no state on the connection) and otherwise names the command to run
/// against the database.
pub async fn check_migrated(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
) -> Result<(), StoreError> {
    let client = dedicated_with(config, tls).await?;
    let newest = migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0);
    let applied: Option<i32> = client
        .query_typed("SELECT max(version) FROM refinery_schema_history", &[])
        .await
        .ok()
        .and_then(|rows| rows.first().and_then(|row| row.try_get(0).ok()));
    if applied.unwrap_or(0) >= newest {
        return Ok(());
    }
    Err(StoreError::internal(format!(
        "the owned schema is not at migration {newest} (found {}), and a transaction-mode \
         pooler (--db-pooler transaction[-prepared]) cannot hold the migration lock: run \
         `agent-auth migrate` with --postgres-url of the database itself, not of the pooler",
        applied.map_or_else(|| "none".to_owned(), |v| v.to_string())
    )))
}

/// `--schema coder`: reads only the catalog and names every missing table or column.
/// Writes nothing; needs only the rights a read-only role has.
pub async fn check_coder_schema(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
) -> Result<(), StoreError> {
    let client = dedicated_with(config, tls).await?;
    let tables: Vec<&str> = REQUIRED_COLUMNS.iter().map(|(t, _)| *t).collect();
    let rows = client
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = ANY($1)",
            &[&tables],
        )
        .await
        .map_err(|e| StoreError::unavailable_by("cannot read the catalog", e))?;
    let present = rows
        .iter()
        .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?)))
        .collect::<Result<std::collections::HashSet<(String, String)>, tokio_postgres::Error>>()
        .map_err(|e| StoreError::internal_by("unexpected catalog row", e))?;
    let missing = missing_columns(&present);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StoreError::internal(format!(
            "the control-plane schema lacks what agent-auth reads: {}",
            missing.join(", ")
        )))
    }
}

fn missing_columns(present: &std::collections::HashSet<(String, String)>) -> Vec<String> {
    let mut missing = Vec::new();
    for (table, columns) in REQUIRED_COLUMNS {
        if !present.iter().any(|(t, _)| t == table) {
            missing.push(format!("table {table}"));
            continue;
        }
        for column in *columns {
            if !present.contains(&((*table).to_owned(), (*column).to_owned())) {
                missing.push(format!("column {table}.{column}"));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tables_and_columns_are_each_named() {
        let mut present = std::collections::HashSet::new();
        for (table, columns) in REQUIRED_COLUMNS {
            if *table == "workspaces" {
                continue;
            }
            for column in *columns {
                if *column != "parent_id" {
                    present.insert(((*table).to_owned(), (*column).to_owned()));
                }
            }
        }
        assert_eq!(
            missing_columns(&present),
            vec![
                "column workspace_agents.parent_id".to_owned(),
                "table workspaces".to_owned()
            ]
        );
    }
}
