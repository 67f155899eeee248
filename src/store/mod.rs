//! The only module that issues SQL.
//!
//! - [`Store::resolve`] runs the resolver's single statement ([`resolve::RESOLVE_SQL`]) per
//!   authentication: one statement, one round trip, no transaction, no SET, no validation query.
//! - [`migrate`] applies the owned schema under an advisory lock, or checks Coder's schema.
//!
//! Connection rules (DESIGN.md 5), each learnt the hard way elsewhere:
//! - a few long-lived connections, each shared by many statements at once ([`pipeline`]);
//!   every wait is bounded (checkout, connect, `statement_timeout`);
//! - no query on checkout (it would double the round trips); a connection found dead is
//!   replaced and the statement retried once on another;
//! - the resolver's statement is prepared when a connection opens, so an authentication costs
//!   one round trip on a cached plan;
//! - `statement_timeout` travels in the startup packet (`options`), never as a `SET` per
//!   statement; behind PgBouncer ([`Pooler`]) it is one `SET` per connection (session mode) or
//!   PgBouncer's and the role's business (transaction mode, where nothing may live on a
//!   connection: the statement is sent unnamed, Parse/Bind/Execute/Sync in one round trip).
//! - read replicas ([`replicas`]) take the logins in turn while they are within
//!   `--replica-max-lag` of the primary; the primary answers what a replica could not find, and
//!   everything when no replica is usable.

pub mod admin;
pub mod conninfo;
mod depth;
pub mod migrate;
mod pipeline;
mod replicas;
pub mod resolve;
pub mod tls;
pub mod url;

pub use url::PostgresUrl;

use std::time::Duration;

pub use pipeline::SILENCE_GRACE;
pub use resolve::{Candidate, Resolution};

/// `--db-pooler`: what sits between the service and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// PostgreSQL itself: `statement_timeout` in the startup packet, the statement prepared
    /// once per connection.
    #[default]
    None,
    /// PgBouncer in session mode: a connection is one server session, but PgBouncer refuses
    /// the startup `options`, so `statement_timeout` is one `SET` when a connection opens.
    Session,
    /// PgBouncer in transaction mode: consecutive statements may reach different server
    /// sessions, so nothing is kept on one: no startup options, no `SET`, no named statement.
    Transaction,
    /// PgBouncer 1.21 or later in transaction mode with `max_prepared_statements` above 0: as
    /// [`Pooler::Transaction`], but the statement is prepared once per connection, named, and
    /// PgBouncer prepares it on whichever server session runs it (so PostgreSQL plans it once
    /// per session, not on every login). Configured, not detected: PgBouncer does not say its
    /// version or settings to a client, and an older one fails the login (INTERNAL, saying to
    /// set `transaction`) rather than slowing down.
    TransactionPrepared,
}

impl Pooler {
    /// A transaction-mode pooler: no session state (the migration lock cannot be held).
    pub fn is_transaction_mode(self) -> bool {
        matches!(self, Pooler::Transaction | Pooler::TransactionPrepared)
    }
}

/// Where a statement ran, the label of `agent_auth_db_queries_total{target}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary,
    Replica,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
        }
    }
}

/// Pool and connection settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub pool_size: usize,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    /// Statements in flight on one connection at most (`--db-pipeline-depth`).
    pub pipeline_depth: usize,
    /// `--postgres-ca`: verify the server certificate against it (libpq `verify-full`).
    pub ca: Option<std::path::PathBuf>,
    pub pooler: Pooler,
    /// `--postgres-replica-url`s, in order.
    pub replica_urls: Vec<PostgresUrl>,
    /// `--replica-max-lag`: a replica further behind the primary is skipped.
    pub replica_max_lag: Duration,
}

/// What caused a [`StoreError`]: the driver's error, an I/O or TLS error.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why the database could not answer. Callers see UNAVAILABLE or INTERNAL; the text and its
/// causes ([`StoreError::report`]) are for logs and readiness reasons.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, gone, shutting down or refusing for now: worth retrying.
    #[error("database unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// Every connection is full and the checkout timeout passed: overload, not a dead database
    /// (a replica that is only busy is not skipped for it).
    #[error("database unavailable: {0}")]
    Busy(&'static str),
    /// A statement or set-up that should not fail did: a bug or a misconfiguration.
    #[error("database error: {context}")]
    Internal {
        context: String,
        #[source]
        source: Option<Cause>,
    },
}

impl StoreError {
    pub fn unavailable(context: impl Into<String>) -> Self {
        StoreError::Unavailable {
            context: context.into(),
            source: None,
        }
    }

    pub fn unavailable_by(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        StoreError::Unavailable {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub fn internal(context: impl Into<String>) -> Self {
        StoreError::Internal {
            context: context.into(),
            source: None,
        }
    }

    pub fn internal_by(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        StoreError::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// The message and its causes on one line.
    pub fn report(&self) -> String {
        crate::report::chain(self)
    }
}

/// A handle on the connections (the primary's, and each replica's). Cheap to clone.
#[derive(Clone)]
pub struct Store {
    primary: std::sync::Arc<pipeline::Connections>,
    replicas: std::sync::Arc<replicas::Replicas>,
}

/// The libpq settings of a connection and its TLS connector.
pub type Settings = (
    tokio_postgres::Config,
    tokio_postgres_rustls::MakeRustlsConnect,
);

/// The libpq settings and TLS connector of every connection the service opens to `url`: the
/// start-up schema connection and the pool's alike (the pool's add `statement_timeout`,
/// [`connection_settings`]): TLS as `sslmode` and `--postgres-ca` say, the connect timeout
/// (which bounds the whole connect: TCP, TLS and the startup exchange), keepalives and
/// `TCP_USER_TIMEOUT`, the application name.
pub fn session_settings(url: &PostgresUrl, config: &StoreConfig) -> Result<Settings, StoreError> {
    Ok(settings(url, config)?.0)
}

/// [`session_settings`], and whether the server's certificate is verified.
fn settings(url: &PostgresUrl, config: &StoreConfig) -> Result<(Settings, bool), StoreError> {
    let tls::Target {
        config: mut pg_config,
        tls,
        verified,
    } = tls::target(url, config.ca.as_deref())?;
    pg_config.connect_timeout(config.connect_timeout);
    // A peer gone without a word (a partition, a dead host) is found by the kernel: keepalive
    // probes on an idle connection, and a bound on unacknowledged data on a busy one. A URL's
    // own `keepalives_*` / `tcp_user_timeout` win.
    if pg_config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        pg_config
            .keepalives(true)
            .keepalives_idle(TCP_KEEPALIVE_IDLE)
            .keepalives_interval(TCP_KEEPALIVE_INTERVAL)
            .keepalives_retries(TCP_KEEPALIVE_RETRIES);
    }
    if pg_config.get_tcp_user_timeout().is_none() {
        pg_config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("agent-auth");
    }
    Ok(((pg_config, tls), verified))
}

/// [`session_settings`] for the pool's connections: with `statement_timeout` in the startup
/// packet (without a pooler; behind one it is a `SET` or the pooler's business). An unverified
/// server certificate is warned about here, once per database (the start-up connection goes to
/// the primary a moment earlier).
pub fn connection_settings(
    url: &PostgresUrl,
    config: &StoreConfig,
) -> Result<Settings, StoreError> {
    let ((mut pg_config, tls), verified) = settings(url, config)?;
    tls::warn_if_unverified(&pg_config, verified);
    if config.pooler == Pooler::None {
        let mut options = pg_config.get_options().unwrap_or_default().to_owned();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!(
            "-c statement_timeout={}",
            statement_timeout_ms(config)
        ));
        pg_config.options(&options);
    }
    Ok((pg_config, tls))
}

/// TCP keepalive on database sockets: the first probe after this much idleness, ...
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// ... then one this often, ...
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// ... and the connection is dropped after this many unanswered.
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Data sent and not acknowledged for this long drops the connection (`TCP_USER_TIMEOUT`).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

fn statement_timeout_ms(config: &StoreConfig) -> u128 {
    config.statement_timeout.as_millis().max(1)
}

impl Store {
    /// Sets up the connections to the primary and each replica. None is opened until its
    /// first statement.
    pub fn connect(url: &PostgresUrl, config: &StoreConfig) -> Result<Self, StoreError> {
        let open = |url: &PostgresUrl| -> Result<pipeline::Connections, StoreError> {
            let (pg_config, tls) = connection_settings(url, config)?;
            Ok(pipeline::Connections::new(
                pg_config,
                tls,
                pipeline::Shape {
                    connections: config.pool_size,
                    depth: config.pipeline_depth,
                    checkout_timeout: config.checkout_timeout,
                    connect_timeout: config.connect_timeout,
                    pooler: config.pooler,
                    statement_timeout_ms: statement_timeout_ms(config),
                    statement: resolve::STATEMENT,
                },
            ))
        };
        let replicas = config
            .replica_urls
            .iter()
            .map(&open)
            .collect::<Result<Vec<_>, _>>()?;
        let primary = std::sync::Arc::new(open(url)?);
        let replicas =
            std::sync::Arc::new(replicas::Replicas::new(replicas, config.replica_max_lag));
        if !replicas.is_empty() {
            replicas.spawn_lag_monitor(std::sync::Arc::clone(&primary));
        }
        Ok(Self { primary, replicas })
    }

    /// Readiness: the primary answers a round trip, or else at least one usable replica (up,
    /// and within the lag bound) does (logins still resolve there; only a replica's misses need
    /// the primary). The empty query makes the server answer without executing a statement, so
    /// probes never show up in statement counts (`pg_stat_statements`,
    /// `agent_auth_db_queries_total`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let primary = ping(&self.primary).await;
        if primary.is_err() {
            for replica in self.replicas.usable() {
                if ping(replica).await.is_ok() {
                    return Ok(());
                }
            }
        }
        primary
    }

    /// Whether the primary's connections answered statements within the stall limit (the
    /// statement timeout): a database slow under load, but answering. Readiness asks this when
    /// its own round trip timed out (it waits behind the statements queued on a connection).
    pub fn answered_lately(&self) -> bool {
        self.primary.answered_lately()
    }

    /// Whether read replicas are configured.
    pub fn has_replicas(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// How many connections are open, how busy each is, and who waits for room: the
    /// primary's, then each replica's.
    pub fn occupancy(&self) -> crate::metrics::Pool {
        let mut pool = self.primary.occupancy();
        for replica in self.replicas.all() {
            let more = replica.occupancy();
            pool.idle += more.idle;
            pool.in_use += more.in_use;
            pool.waiting += more.waiting;
            pool.in_flight.extend(more.in_flight);
            pool.depth.extend(more.depth);
        }
        pool
    }

    /// Refuses new statements and closes the connections (used at shutdown).
    pub fn close(&self) {
        self.primary.close();
        self.replicas.close();
    }
}

/// One round trip on one of `connections`.
async fn ping(connections: &std::sync::Arc<pipeline::Connections>) -> Result<(), StoreError> {
    let claim = connections.claim().await?;
    match claim.live.answer(claim.live.client.simple_query("")).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // A dead connection must not make the next request pay for it.
            claim.discard().await;
            Err(query_error(e))
        }
    }
}

/// Connection-level failures and server shutdown or overload are retryable (UNAVAILABLE);
/// anything else (a schema mismatch, a type error) is a bug or misconfiguration (INTERNAL).
/// A failed connection said the way an operator can act on it: where (host or socket, port,
/// database, user; never the password) and PostgreSQL's own reason (`password authentication
/// failed for user "x"`, `database "x" does not exist`) or the system's (`Connection refused`,
/// a host name that does not resolve).
pub fn connect_error(e: &tokio_postgres::Error, config: &tokio_postgres::Config) -> String {
    let reason = match e.as_db_error() {
        // PgBouncer refuses the startup parameter that carries statement_timeout.
        Some(db) if db.message().contains("unsupported startup parameter") => format!(
            "{} (a connection pooler such as PgBouncer: set --db-pooler session or transaction)",
            db.message()
        ),
        Some(db) => db.message().to_owned(),
        None => {
            // The innermost cause: the I/O error under tokio-postgres's "error connecting".
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            let text = cause.to_string();
            if text.contains("lookup address") || text.contains("Name or service not known") {
                format!("could not translate host name to an address: {text}")
            } else {
                text
            }
        }
    };
    format!("{}: {reason}", connect_error_place(config))
}

/// "cannot connect to PostgreSQL at HOST port PORT (database, user)": where a connection was
/// going, never its password.
pub fn connect_error_place(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => format!("socket {}", path.display()),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let user = config.get_user().unwrap_or("(default)");
    let database = config.get_dbname().unwrap_or(user);
    format!(
        "cannot connect to PostgreSQL at {} port {} (database {database:?}, user {user:?})",
        if hosts.is_empty() {
            "localhost".into()
        } else {
            hosts.join(",")
        },
        if ports.is_empty() {
            "5432".into()
        } else {
            ports.join(",")
        },
    )
}

fn query_error(e: tokio_postgres::Error) -> StoreError {
    if is_connection_lost(&e) {
        return StoreError::unavailable_by("connection lost", e);
    }
    match e.code().map(|c| c.code()) {
        // invalid_sql_statement_name, duplicate_prepared_statement: the connection's prepared
        // statement is not where it was prepared, so statements of one connection reach
        // different server sessions: a transaction-mode pooler the service was not told of, or
        // told `transaction-prepared` of one that does not keep prepared statements.
        Some("26000" | "42P05") => StoreError::internal_by(
            "the database is reached through a transaction-mode pooler that does not keep \
             prepared statements (PgBouncer pool_mode=transaction, before 1.21 or with \
             max_prepared_statements = 0?): set --db-pooler transaction",
            e,
        ),
        // query_canceled (statement_timeout), admin/crash shutdown, cannot_connect_now,
        // too_many_connections, connection_exception class, insufficient_resources class.
        Some(code)
            if code == "57014"
                || code.starts_with("57P")
                || code.starts_with("08")
                || code.starts_with("53") =>
        {
            StoreError::unavailable_by("database refused", e)
        }
        _ => StoreError::internal_by("the statement failed", e),
    }
}

/// True when the connection itself failed, so the statement never ran on the server.
fn is_connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || (e.code().is_none() && e.as_db_error().is_none() && is_io(e))
}

fn is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<std::io::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}
