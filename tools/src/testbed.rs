//! Real servers beside an embedded cluster, as `serve` meets them in production: a streaming
//! replica and PgBouncer. Started for the bench and the server's tests from the same
//! PostgreSQL binaries (and PgBouncer: Debian's 1.18 package, or 1.24 built from Debian's
//! source by `scripts/pgbouncer-1.24`), as the cluster's own account.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent_auth::embedded::{
    self, EmbeddedError, EmbeddedOptions, EmbeddedPostgres, SUPERUSER, Supervised, conninfo_quote,
};
use agent_auth::store::Pooler;

/// A streaming replica of `primary` in `options.data_dir`: `pg_basebackup -R` (as the
/// cluster's account), then started like any cluster, read-only.
pub async fn replica(
    primary: &EmbeddedPostgres,
    options: EmbeddedOptions,
) -> Result<EmbeddedPostgres, EmbeddedError> {
    let (pgdata, log_path) = embedded::prepare_cluster_dirs(&options.data_dir)?;
    let mut backup = Command::new(embedded::postgres_program("pg_basebackup")?);
    backup
        .arg("-D")
        .arg(&pgdata)
        .arg("-h")
        .arg(primary.socket_dir())
        .args(["-p", &primary.port().to_string(), "-U", SUPERUSER])
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
    embedded::run_as_cluster_account(backup, "pg_basebackup", &log_path)?;
    EmbeddedPostgres::start(options).await
}

/// A running PgBouncer; stopped (SIGINT) when dropped.
pub struct PgBouncer {
    _process: Supervised,
    pub port: u16,
}

/// Which PgBouncer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Debian 12's package, 1.18: a prepared statement does not outlive its transaction in
    /// transaction mode.
    Debian1_18,
    /// 1.24.1, built once per machine from Debian's source package by `scripts/pgbouncer-1.24`
    /// (run from here when the build is missing), with `max_prepared_statements = 200`.
    Built1_24,
}

/// The 1.24 build's cache, as `scripts/pgbouncer-1.24` makes it.
const BUILT_1_24_DIR: &str = "/var/tmp/agent-auth-pgbouncer-1.24.1";

impl Release {
    /// The release a `--db-pooler` mode needs: `transaction-prepared` the 1.24 build, the
    /// others Debian's package.
    pub fn for_pooler(pooler: Pooler) -> Release {
        match pooler {
            Pooler::TransactionPrepared => Release::Built1_24,
            _ => Release::Debian1_18,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Release::Debian1_18 => "1.18",
            Release::Built1_24 => "1.24",
        }
    }

    fn binary(self) -> Result<PathBuf, EmbeddedError> {
        match self {
            Release::Debian1_18 => ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    EmbeddedError::Start(
                        "pgbouncer is not installed (Debian: apt-get install pgbouncer)".into(),
                    )
                }),
            Release::Built1_24 => {
                let dir = std::env::var_os("AGENT_AUTH_PGBOUNCER_1_24_DIR")
                    .map_or_else(|| PathBuf::from(BUILT_1_24_DIR), PathBuf::from);
                let binary = dir.join("bin/pgbouncer");
                if binary.is_file() {
                    return Ok(binary);
                }
                // The build script of this checkout, when there is one (tests, a bench run
                // from the source tree).
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pgbouncer-1.24");
                let missing = || {
                    EmbeddedError::Start(format!(
                        "PgBouncer 1.24 is not built at {}: run scripts/pgbouncer-1.24 (once \
                         per machine)",
                        binary.display()
                    ))
                };
                if !script.is_file() {
                    return Err(missing());
                }
                let built = Command::new("bash")
                    .arg(&script)
                    .stdout(std::process::Stdio::null())
                    .status();
                match built {
                    Ok(status) if status.success() && binary.is_file() => Ok(binary),
                    _ => Err(missing()),
                }
            }
        }
    }
}

impl PgBouncer {
    /// PgBouncer in front of `cluster` on a free loopback port, in the pool mode of `pooler`
    /// (`session`, or `transaction` for both transaction modes), trusting every client (it is
    /// for loopback tests and benches only).
    pub async fn start(
        cluster: &EmbeddedPostgres,
        dir: &Path,
        pooler: Pooler,
        release: Release,
    ) -> Result<PgBouncer, EmbeddedError> {
        Self::start_with(cluster, dir, pooler, release, &[]).await
    }

    /// [`PgBouncer::start`] with more `[pgbouncer]` settings (`name = value` lines).
    pub async fn start_with(
        cluster: &EmbeddedPostgres,
        dir: &Path,
        pooler: Pooler,
        release: Release,
        settings: &[(&str, &str)],
    ) -> Result<PgBouncer, EmbeddedError> {
        let pool_mode = match pooler {
            Pooler::Session => "session",
            Pooler::Transaction | Pooler::TransactionPrepared => "transaction",
            Pooler::None => {
                return Err(EmbeddedError::Start(
                    "PgBouncer needs a pool mode: session or transaction".into(),
                ));
            }
        };
        let mut more = match release {
            Release::Debian1_18 => String::new(),
            Release::Built1_24 => "max_prepared_statements = 200\n".to_owned(),
        };
        for (name, value) in settings {
            more.push_str(&format!("{name} = {value}\n"));
        }
        let io = |e: std::io::Error| EmbeddedError::Io(format!("{}: {e}", dir.display()));
        fs::create_dir_all(dir).map_err(io)?;
        embedded::prepare_dir_for_cluster(dir, 0o711)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io)?
            .port();
        let users = dir.join("users.txt");
        fs::write(&users, format!("\"{SUPERUSER}\" \"\"\n")).map_err(io)?;
        let config = dir.join("pgbouncer.ini");
        fs::write(
            &config,
            format!(
                "[databases]\n* = host={socket} port={cluster_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = {pool_mode}\n\
                 admin_users = {SUPERUSER}\n\
                 max_client_conn = 1000\ndefault_pool_size = 20\n\
                 ignore_startup_parameters = extra_float_digits\n{more}",
                socket = cluster.socket_dir().display(),
                cluster_port = cluster.port(),
                users = users.display(),
            ),
        )
        .map_err(io)?;
        let binary = release.binary()?;
        let log_path = dir.join("pgbouncer.log");
        let mut command = Command::new(binary);
        command.arg(&config);
        let process = Supervised::spawn(command, &log_path)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if process.has_exited() || tokio::time::Instant::now() > deadline {
                return Err(EmbeddedError::Start(format!(
                    "pgbouncer did not start; see {}",
                    log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(PgBouncer {
            _process: process,
            port,
        })
    }

    /// PgBouncer's `SHOW STATS` row of `dbname` (its admin console): the counters by name,
    /// such as `total_client_parse_count` (a client's Parse of a named statement, 1.21 and
    /// later), `total_server_parse_count` and `total_bind_count`.
    pub async fn stats(
        &self,
        dbname: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, String> {
        let admin = self.connection_string("pgbouncer");
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("PgBouncer's admin console: {e}"))?;
        let driver = tokio::spawn(connection);
        let messages = client
            .simple_query("SHOW STATS")
            .await
            .map_err(|e| format!("SHOW STATS: {e}"));
        drop(client);
        let _ = driver.await;
        let row = messages?.into_iter().find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) if row.get("database") == Some(dbname) => {
                Some(row)
            }
            _ => None,
        });
        let row = row.ok_or_else(|| format!("SHOW STATS has no row for {dbname}"))?;
        Ok(row
            .columns()
            .iter()
            .enumerate()
            .filter_map(|(i, column)| {
                let value = row.get(i)?.parse().ok()?;
                Some((column.name().to_owned(), value))
            })
            .collect())
    }

    /// A libpq key=value connection string for `dbname` through the pooler.
    pub fn connection_string(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} sslmode=disable dbname={}",
            self.port,
            conninfo_quote(dbname)
        )
    }
}
