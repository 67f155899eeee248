//! The "Database" group of [`super::Settings`] and its conversion (`DatabaseSettings::store`: the
//! primary's URL and the `StoreConfig`).

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::super::error::ConfigError;
use super::super::values::{ExistingFile, Pooler, SchemaMode, Span};
use crate::store::{PostgresUrl, StoreConfig};

/// The database: where it is, what sits in front of it, the connections to it.
#[derive(Clone, Args, Serialize, Deserialize)]
pub struct DatabaseSettings {
    /// PostgreSQL URL or libpq key=value string [default: embedded].
    ///
    /// Without it, an embedded PostgreSQL is started in --data-dir. `sslmode` (`disable`,
    /// `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert` mean what they mean
    /// to libpq. Never printed or logged with its password (`--check-config` shows
    /// `REDACTED`).
    #[arg(
        long,
        env = "AGENT_AUTH_POSTGRES_URL",
        help_heading = "Database",
        value_name = "URL"
    )]
    pub postgres_url: Option<String>,

    /// A file holding the PostgreSQL URL (a mounted Kubernetes Secret) [default: none].
    ///
    /// So the password is not in the process arguments. Exclusive with --postgres-url.
    #[arg(
        long,
        env = "AGENT_AUTH_POSTGRES_URL_FILE",
        help_heading = "Database",
        value_name = "PATH"
    )]
    pub postgres_url_file: Option<PathBuf>,

    /// A streaming replica's URL (repeatable) [default: none].
    ///
    /// Logins resolve on the replicas in turn (a dead one is skipped and probed in the
    /// background); a replica's INSTANCE_NOT_FOUND or AGENT_NAME_NOT_FOUND is asked again of the
    /// primary, since a new workspace may not have reached the replica yet. Migrations and the
    /// schema check use --postgres-url only. Same TLS rules as --postgres-url.
    #[arg(
        long,
        env = "AGENT_AUTH_POSTGRES_REPLICA_URL",
        help_heading = "Database",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub postgres_replica_url: Vec<String>,

    /// A replica serves logins only while it holds everything the primary had committed this
    /// long ago (checked every second against the primary's WAL position); a replica further
    /// behind, or whose position cannot be read, is skipped until it catches up.
    ///
    /// So a login read on a replica is at most this plus one second stale: a workspace or
    /// agent deleted, or a build superseded, within that window may still log in there.
    #[arg(
        long,
        env = "AGENT_AUTH_REPLICA_MAX_LAG",
        help_heading = "Database",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub replica_max_lag: Span,

    /// What sits between the service and PostgreSQL: none, or PgBouncer in session or
    /// transaction pooling mode (`transaction-prepared`: PgBouncer 1.21 or later with
    /// max_prepared_statements above 0).
    ///
    /// `transaction` keeps no state on a connection: no startup `options` (so no per-connection
    /// statement_timeout: set PgBouncer's query_timeout or the role's statement_timeout), and
    /// each login sends its statement unnamed (Parse/Bind/Execute/Sync, one round trip), which
    /// PostgreSQL plans every time. `transaction-prepared` is the same with the statement
    /// prepared once per connection and PgBouncer preparing it on each server session, as
    /// fast as `session`; an older PgBouncer, or max_prepared_statements = 0, fails logins
    /// (INTERNAL) with a log line saying to set `transaction`. `session` sets
    /// statement_timeout with one SET per new connection instead of the startup parameter
    /// PgBouncer refuses.
    #[arg(
        long,
        env = "AGENT_AUTH_DB_POOLER",
        help_heading = "Database",
        value_name = "none|session|transaction|transaction-prepared",
        default_value = "none"
    )]
    pub db_pooler: Pooler,

    /// PEM CA for the database's certificate when the URL has no `sslrootcert` [default: none].
    ///
    /// With it, `prefer`/`require` also verify chain and host name (libpq `verify-full`);
    /// without a CA, `verify-ca`/`verify-full` are refused at start-up and `prefer`/`require`
    /// encrypt without verifying, which is warned about once at start-up when the database is
    /// not on loopback or a unix socket.
    #[arg(
        long,
        env = "AGENT_AUTH_POSTGRES_CA",
        help_heading = "Database",
        value_name = "PEM_PATH"
    )]
    pub postgres_ca: Option<ExistingFile>,

    /// Embedded database directory [default: $XDG_DATA_HOME/agent-auth (~/.local/share/agent-auth); /var/lib/agent-auth as root].
    ///
    /// Its top level stays yours (root's), the cluster's directories belong to the `postgres`
    /// account, and a symlink in it is refused.
    #[arg(
        long,
        env = "AGENT_AUTH_DATA_DIR",
        help_heading = "Database",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,

    /// owned (run migrations) or coder (read an existing control-plane schema, write nothing).
    ///
    /// `coder` refuses to start naming any missing table or column.
    #[arg(
        long,
        env = "AGENT_AUTH_SCHEMA",
        help_heading = "Database",
        value_name = "owned|coder",
        default_value = "owned"
    )]
    pub schema: SchemaMode,

    /// Database connections (long-lived; each carries many statements at once). Few is
    /// better: every connection is a PostgreSQL backend process (in the bench, 4 served
    /// 1.2–1.6× the logins of 10).
    #[arg(
        long,
        env = "AGENT_AUTH_DB_POOL_SIZE",
        help_heading = "Database",
        value_name = "N",
        default_value = "4"
    )]
    pub db_pool_size: NonZeroUsize,

    /// Statements in flight on one connection at most (pipelined: sent without waiting for
    /// the answers before them). The depth in use adapts up to it: about 8 with the database
    /// near, up to this with it far. 1 gives one statement per connection at a time.
    #[arg(
        long,
        env = "AGENT_AUTH_DB_PIPELINE_DEPTH",
        help_heading = "Database",
        value_name = "N",
        default_value = "32"
    )]
    pub db_pipeline_depth: NonZeroUsize,

    /// Longest wait for room on a connection (all hold --db-pipeline-depth statements), then
    /// UNAVAILABLE.
    #[arg(
        long,
        env = "AGENT_AUTH_DB_CHECKOUT_TIMEOUT",
        help_heading = "Database",
        value_name = "DURATION",
        default_value = "1s"
    )]
    pub db_checkout_timeout: Span,

    /// Longest wait to open a database connection.
    #[arg(
        long,
        env = "AGENT_AUTH_DB_CONNECT_TIMEOUT",
        help_heading = "Database",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub db_connect_timeout: Span,

    /// Server-side `statement_timeout` of every statement.
    #[arg(
        long,
        env = "AGENT_AUTH_DB_STATEMENT_TIMEOUT",
        help_heading = "Database",
        value_name = "DURATION",
        default_value = "2s"
    )]
    pub db_statement_timeout: Span,
}

impl DatabaseSettings {
    /// The primary's URL (from the flag or its file; none for the embedded cluster) and the
    /// store's settings, replicas included.
    pub fn store(&self) -> Result<(Option<PostgresUrl>, StoreConfig), ConfigError> {
        let postgres_url = self.postgres_url.clone().filter(|u| !u.trim().is_empty());
        let postgres_url = match self
            .postgres_url_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
        {
            None => postgres_url,
            Some(_) if postgres_url.is_some() => {
                return Err(ConfigError::new(
                    "postgres_url_file",
                    "set postgres_url or postgres_url_file, not both",
                ));
            }
            Some(path) => Some(url_from_file(&path)?),
        };
        if self.schema == SchemaMode::Coder && postgres_url.is_none() {
            return Err(ConfigError::new(
                "schema",
                "coder reads an existing control-plane database: set postgres_url",
            ));
        }
        let postgres_url = postgres_url
            .map(|url| postgres_url_setting("postgres_url", &url))
            .transpose()?;
        let replica_urls = super::trimmed(&self.postgres_replica_url)
            .iter()
            .map(|u| postgres_url_setting("postgres_replica_url", u))
            .collect::<Result<Vec<_>, _>>()?;
        if !replica_urls.is_empty() && postgres_url.is_none() {
            return Err(ConfigError::new(
                "postgres_replica_url",
                "replicas need their primary: set postgres_url",
            ));
        }
        let store = StoreConfig {
            pool_size: self.db_pool_size.get(),
            checkout_timeout: self.db_checkout_timeout.0,
            connect_timeout: self.db_connect_timeout.0,
            statement_timeout: self.db_statement_timeout.0,
            pipeline_depth: self.db_pipeline_depth.get(),
            ca: self.postgres_ca.clone().map(|ca| ca.0),
            pooler: self.db_pooler,
            replica_urls,
            replica_max_lag: self.replica_max_lag.0,
        };
        Ok((postgres_url, store))
    }
}

/// `--postgres-url-file`: the URL, trimmed; an empty file is refused.
fn url_from_file(path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "postgres_url_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    match text.trim() {
        "" => Err(ConfigError::new(
            "postgres_url_file",
            format!("{} is empty", path.display()),
        )),
        url => Ok(url.to_owned()),
    }
}

/// A connection string the store can use, or an error naming `key` (the password redacted).
fn postgres_url_setting(key: &str, url: &str) -> Result<PostgresUrl, ConfigError> {
    PostgresUrl::parse(url).map_err(|e| ConfigError::new(key, e))
}
