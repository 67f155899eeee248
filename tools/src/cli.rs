//! `agent-auth-tools`' command line: `demo` and `bench`. The server's own commands (`serve`,
//! `migrate`, `healthcheck`, `authenticate`, `trust`) are the `agent-auth` binary's.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agent-auth-tools",
    version,
    about = "The demo and the load bench of agent-auth (not the server: that is `agent-auth`)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole loop on a private embedded database with the recorded AWS document.
    Demo(DemoArgs),
    /// Load-test the service next to its own statement alone and the incumbent's emulation.
    Bench(Box<BenchArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Live agents to seed (history group; the v2.33.1 groups add a tenth each).
    #[arg(long, default_value_t = 10_000)]
    pub agents: u64,
    /// Builds per workspace (older ones keep stale agents of the same instance and name).
    #[arg(long, default_value_t = 3)]
    pub builds: u32,
    /// Soft-delete the agents of older builds (as Coder does since v2.33.4) instead of
    /// leaving them live (older deployments).
    #[arg(long)]
    pub soft_delete_stale: bool,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Run every scenario at each of these caller counts instead (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub sweep: Vec<usize>,
    /// How long each scenario runs (at each caller count).
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Database pool size (the same for every scenario; the server's default).
    #[arg(long, default_value_t = 4)]
    pub pool_size: usize,
    /// The server's statements in flight per database connection (its --db-pipeline-depth).
    #[arg(long, default_value_t = 32)]
    pub pipeline_depth: usize,
    /// Stop each scenario after this many logins (or at --duration, whichever comes first).
    #[arg(long, value_name = "N")]
    pub logins: Option<u64>,
    /// Run the spawned server under this command (split on spaces), e.g.
    /// "valgrind --tool=callgrind --callgrind-out-file=server.out" (scripts/cpu-per-login).
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["server", "in_process"])]
    pub server_wrapper: Option<String>,
    /// The server's --log-level: `warn` logs nothing per login; `info` is the server's default
    /// (one JSON line a login).
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    pub server_log_level: String,
    /// Per-login deadline; slower logins are abandoned and count as missed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub deadline: std::time::Duration,
    /// Scenarios to run (comma-separated): agent-auth, raw, v2.32, v2.33.1-1, v2.33.1-2,
    /// v2.33.1-history, grpc-health (a health check: the transport's floor). Default: the
    /// first five.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub scenarios: Vec<String>,
    /// Round trip added between the load and the database by a loopback proxy (e.g. 2ms).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub db_rtt: std::time::Duration,
    /// Put PgBouncer in this pooling mode between the load and the private database, and run
    /// the server with the same --db-pooler: session, transaction or transaction-prepared.
    #[arg(long, value_name = "MODE", conflicts_with = "postgres_url")]
    pub pgbouncer: Option<agent_auth::store::Pooler>,
    /// Which PgBouncer: 1.18 (Debian's package) or 1.24 (built by scripts/pgbouncer-1.24)
    /// [default: 1.24 for transaction-prepared, 1.18 otherwise].
    #[arg(long, value_name = "1.18|1.24", requires = "pgbouncer")]
    pub pgbouncer_release: Option<PgBouncerRelease>,
    /// Make a streaming replica of the private database (pg_basebackup) and let the server
    /// resolve logins there (--postgres-replica-url).
    #[arg(long, conflicts_with = "postgres_url")]
    pub replica: bool,
    /// An empty database to use instead of a private embedded one.
    #[arg(long, value_name = "URL")]
    pub postgres_url: Option<String>,
    /// A setting of the private embedded PostgreSQL (e.g. shared_buffers=1GB). Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub db_setting: Vec<String>,
    /// Run the server inside the bench process instead of as a child process.
    #[arg(long, conflicts_with = "server")]
    pub in_process: bool,
    /// Load a server that is already running (it must use --postgres-url's database and trust
    /// --signing-key's certificate as its `default` AWS certificate).
    #[arg(long, value_name = "URL", requires_all = ["postgres_url", "signing_key"])]
    pub server: Option<String>,
    /// The external server's admin listener, to read statements and pool waits from /metrics.
    #[arg(long, value_name = "HOST:PORT", requires = "server")]
    pub server_metrics: Option<std::net::SocketAddr>,
    /// PEM RSA private key to sign documents with (with --server).
    #[arg(long, value_name = "PEM")]
    pub signing_key: Option<PathBuf>,
    /// Print EXPLAIN (ANALYZE, BUFFERS) of the resolver's statement after the run.
    #[arg(long)]
    pub explain: bool,
    /// Write an SVG of logins/s and p99 against callers (use with --sweep).
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A boot storm instead of the scenarios: N distinct agents arrive within --arrival, each
    /// logs in once and retries as Coder's agent does (backoff from 100 ms to 10 s, jittered)
    /// until it holds its token; reports how long until the last one does.
    #[arg(long, value_name = "N", conflicts_with_all = ["sweep", "scenarios"])]
    pub boot_storm: Option<usize>,
    /// With --boot-storm: the window the agents arrive in, evenly spread.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "boot_storm")]
    pub arrival: std::time::Duration,
    /// The spawned server's --max-concurrent-requests (default: twice the callers for the
    /// scenarios, the server's own default for a boot storm).
    #[arg(long, value_name = "N", conflicts_with = "server")]
    pub max_concurrent_requests: Option<usize>,
    /// With --boot-storm: an agent without a token this long after it arrived fails for good.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "boot_storm")]
    pub give_up: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Keep the demo database here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// After the demo, keep serving until Ctrl-C so `agent-auth authenticate` can be tried.
    #[arg(long)]
    pub serve: bool,
    /// gRPC listener (the default takes a free port on loopback).
    #[arg(
        long,
        value_name = "ADDR",
        env = "AGENT_AUTH_DEMO_GRPC_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub grpc_listen: String,
    /// With --serve: once it serves, write the server's address (http://HOST:PORT) to FILE,
    /// so a script calls this server and no other.
    #[arg(long, value_name = "FILE", requires = "serve")]
    pub ready_file: Option<PathBuf>,
}

/// `--pgbouncer-release`.
#[derive(Debug, Clone, Copy)]
pub struct PgBouncerRelease(pub crate::testbed::Release);

impl std::str::FromStr for PgBouncerRelease {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "1.18" => Ok(Self(crate::testbed::Release::Debian1_18)),
            "1.24" => Ok(Self(crate::testbed::Release::Built1_24)),
            other => Err(format!("{other}: expected 1.18 or 1.24")),
        }
    }
}
