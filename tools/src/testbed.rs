//! Real servers beside an embedded cluster, as `serve` meets them in production: a streaming
//! replica and PgBouncer. Started for the bench and the server's tests from the same
//! PostgreSQL binaries (and Debian's `pgbouncer` package), as the cluster's own account.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agent_auth::embedded::{
    self, EmbeddedError, EmbeddedOptions, EmbeddedPostgres, SUPERUSER, Supervised, conninfo_quote,
};

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

impl PgBouncer {
    /// PgBouncer (`pool_mode` `session` or `transaction`) on a free loopback port in front of
    /// `cluster`, trusting every client (it is for loopback tests and benches only).
    pub async fn start(
        cluster: &EmbeddedPostgres,
        dir: &Path,
        pool_mode: &str,
    ) -> Result<PgBouncer, EmbeddedError> {
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
                 max_client_conn = 1000\ndefault_pool_size = 20\n\
                 ignore_startup_parameters = extra_float_digits\n",
                socket = cluster.socket_dir().display(),
                cluster_port = cluster.port(),
                users = users.display(),
            ),
        )
        .map_err(io)?;
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                EmbeddedError::Start(
                    "pgbouncer is not installed (Debian: apt-get install pgbouncer)".into(),
                )
            })?;
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

    /// A libpq key=value connection string for `dbname` through the pooler.
    pub fn connection_string(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} sslmode=disable dbname={}",
            self.port,
            conninfo_quote(dbname)
        )
    }
}
