//! Command-line definitions (DESIGN.md 3.4, contract for the flags listed there).
//!
//! `serve` and `migrate` flags are all optional strings: clap reads the flag or its
//! `AGENT_AUTH_*` env var (flag wins), and [`crate::config`] lays them over the TOML file and
//! the defaults, then parses and validates everything in one place, so every bad value gets
//! the same one-line error naming its key.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "agent-auth",
    version,
    about = "Authenticates cloud workspace agents by their signed instance identity"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (and admin HTTP) until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Apply the owned schema's migrations and exit.
    Migrate(ServeArgs),
    /// Probe a running server's gRPC health; exit 0 when SERVING, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Send one authentication to a server and print the result.
    Authenticate(AuthenticateArgs),
    /// Run the whole loop on a private embedded database with the recorded AWS document.
    Demo(DemoArgs),
    /// List every pinned certificate (built-in and from files, with the serve flags applied):
    /// cloud, region or role, subject, notAfter, SHA-256, source. Exit 1 when one expires
    /// within 30 days.
    Trust(TrustArgs),
    /// Load-test the service next to its own statement alone and the incumbent's emulation.
    Bench(BenchArgs),
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
    /// Database pool size (the same for every scenario).
    #[arg(long, default_value_t = 10)]
    pub pool_size: usize,
    /// Per-login deadline; slower logins are abandoned and count as missed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub deadline: std::time::Duration,
    /// Scenarios to run (comma-separated): agent-auth, raw, v2.32, v2.33.1-1, v2.33.1-2,
    /// v2.33.1-history. Default: all but v2.33.1-history.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub scenarios: Vec<String>,
    /// Round trip added between the load and the database by a loopback proxy (e.g. 2ms).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub db_rtt: std::time::Duration,
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
}

/// Settings shared by `serve` and `migrate`. Every flag also reads `AGENT_AUTH_<FLAG>` and the
/// key `<flag>` (with `_`) in the `--config` TOML file; precedence flag > env > file > default.
/// `agent-auth trust`: the serve flags that choose trust, and the output format.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Default, Clone, Args, Serialize)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (flag names with `-` → `_`).
    #[arg(long, env = "AGENT_AUTH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,

    /// gRPC listener: HOST:PORT, or unix:/path for a socket created with mode 0600
    /// [default: 127.0.0.1:50051]
    #[arg(
        long,
        help_heading = "Listeners",
        env = "AGENT_AUTH_GRPC_LISTEN",
        value_name = "ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<String>,

    /// Admin HTTP listener (/healthz, /readyz, /metrics) [default: 127.0.0.1:9090]
    #[arg(
        long,
        help_heading = "Listeners",
        env = "AGENT_AUTH_ADMIN_LISTEN",
        value_name = "ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,

    /// Coder-compatible HTTP listener for agents (off unless set)
    #[arg(
        long,
        help_heading = "Listeners",
        env = "AGENT_AUTH_HTTP_LISTEN",
        value_name = "ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,

    /// PostgreSQL URL or key=value string. Without it, an embedded PostgreSQL is started
    /// in --data-dir.
    #[arg(
        long,
        help_heading = "Database",
        env = "AGENT_AUTH_POSTGRES_URL",
        value_name = "URL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,

    /// A file holding the PostgreSQL URL (e.g. a mounted Kubernetes Secret), so the password
    /// is not in the process arguments. Exclusive with --postgres-url.
    #[arg(
        long,
        help_heading = "Database",
        env = "AGENT_AUTH_POSTGRES_URL_FILE",
        value_name = "PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url_file: Option<String>,

    /// PEM CA for the database's TLS certificate when the URL has no `sslrootcert`: with it,
    /// chain and host name are verified. `sslmode` in the URL (disable, prefer, require,
    /// verify-ca, verify-full) means what it means to libpq.
    #[arg(
        long,
        help_heading = "Database",
        env = "AGENT_AUTH_POSTGRES_CA",
        value_name = "PEM_PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_ca: Option<String>,

    /// Embedded database directory [default: $XDG_DATA_HOME/agent-auth, or
    /// /var/lib/agent-auth as root]
    #[arg(
        long,
        help_heading = "Database",
        env = "AGENT_AUTH_DATA_DIR",
        value_name = "DIR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,

    /// owned (run migrations) or coder (read an existing control-plane schema, write
    /// nothing) [default: owned]
    #[arg(
        long,
        help_heading = "Database",
        env = "AGENT_AUTH_SCHEMA",
        value_name = "MODE"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,

    /// Maximum pooled database connections [default: 10]
    #[arg(
        long,
        help_heading = "Database",
        env = "AGENT_AUTH_DB_POOL_SIZE",
        value_name = "N"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_pool_size: Option<String>,

    /// Longest wait for a pooled connection [default: 1s]
    #[arg(
        long,
        help_heading = "Database",
        env = "AGENT_AUTH_DB_CHECKOUT_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_checkout_timeout: Option<String>,

    /// Longest wait to open a database connection [default: 5s]
    #[arg(
        long,
        help_heading = "Database",
        env = "AGENT_AUTH_DB_CONNECT_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_connect_timeout: Option<String>,

    /// Server-side statement_timeout for every statement [default: 2s]
    #[arg(
        long,
        help_heading = "Database",
        env = "AGENT_AUTH_DB_STATEMENT_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_statement_timeout: Option<String>,

    /// Process-wide limit of concurrent authentications; more are shed at once with
    /// RESOURCE_EXHAUSTED [default: 256]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_MAX_CONCURRENT_REQUESTS",
        value_name = "N"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<String>,

    /// A new connection must send its first bytes (gRPC: the whole HTTP/2 preface; HTTP: a
    /// request) within this, on every listener [default: 10s]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_CONN_HANDSHAKE_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_handshake_timeout: Option<String>,

    /// A connection with no bytes read or written for this long is closed, on every listener
    /// [default: 60s]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_CONN_IDLE_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_idle_timeout: Option<String>,

    /// Open gRPC + HTTP connections at most; more are accepted and closed at once [default:
    /// the open-file limit less 256 and the admin cap, at most 16384]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_MAX_CONNECTIONS",
        value_name = "N"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<String>,

    /// Open admin connections at most [default: 64]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_ADMIN_MAX_CONNECTIONS",
        value_name = "N"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_max_connections: Option<String>,

    /// HTTP (agent and admin): the whole request head must arrive within this [default: 10s]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_HTTP_HEADER_READ_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_header_read_timeout: Option<String>,

    /// HTTP: the whole request body must arrive within this [default: 10s]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_HTTP_BODY_READ_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_body_read_timeout: Option<String>,

    /// HTTP: a larger Content-Length gets 413 at once, before the body [default: 65536]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_HTTP_MAX_BODY_SIZE",
        value_name = "BYTES"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_max_body_size: Option<String>,

    /// gRPC: the largest request message [default: 262144]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_GRPC_MAX_MESSAGE_SIZE",
        value_name = "BYTES"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_max_message_size: Option<String>,

    /// gRPC: concurrent requests on one connection [default: 100]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_GRPC_MAX_CONCURRENT_STREAMS",
        value_name = "N"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_max_concurrent_streams: Option<String>,

    /// gRPC: send an HTTP/2 keepalive ping this often [default: 30s]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_GRPC_KEEPALIVE_INTERVAL",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_keepalive_interval: Option<String>,

    /// gRPC: close a connection whose ping is not answered within this [default: 10s]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_GRPC_KEEPALIVE_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_keepalive_timeout: Option<String>,

    /// REGION=PEM_PATH: replaces the built-in AWS `signature` key for REGION (or `default`).
    /// Repeatable; comma-separated in the env var.
    #[arg(
        long,
        help_heading = "AWS",
        env = "AGENT_AUTH_AWS_CERTIFICATE",
        value_name = "REGION=PEM",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aws_certificate: Vec<String>,

    /// REGION=PEM_PATH: the AWS RSA-2048 certificate for the `rsa2048` PKCS#7 form.
    /// Repeatable; comma-separated in the env var.
    #[arg(
        long,
        help_heading = "AWS",
        env = "AGENT_AUTH_AWS_RSA2048_CERTIFICATE",
        value_name = "REGION=PEM",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aws_rsa2048_certificate: Vec<String>,

    /// Only AWS accounts listed here pass (all when none). Repeatable.
    #[arg(
        long,
        help_heading = "AWS",
        env = "AGENT_AUTH_AWS_ALLOWED_ACCOUNT",
        value_name = "ID",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aws_allowed_account: Vec<String>,

    /// GCP JWKS: a URL (fetched in the background, cached for max-age) or a file
    /// [default: https://www.googleapis.com/oauth2/v3/certs]
    #[arg(
        long,
        help_heading = "GCP",
        env = "AGENT_AUTH_GCP_JWKS",
        value_name = "URL_OR_PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gcp_jwks: Option<String>,

    /// Required `aud` of GCP tokens; agents request `coder` [default: coder]
    #[arg(
        long,
        help_heading = "GCP",
        env = "AGENT_AUTH_GCP_AUDIENCE",
        value_name = "AUD"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gcp_audience: Option<String>,

    /// Only GCP projects listed here pass (all when none). Repeatable.
    #[arg(
        long,
        help_heading = "GCP",
        env = "AGENT_AUTH_GCP_ALLOWED_PROJECT",
        value_name = "ID",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gcp_allowed_project: Vec<String>,

    /// PEM bundle that replaces the built-in Azure roots (DigiCert Global Root G2 and G3).
    #[arg(
        long,
        help_heading = "Azure",
        env = "AGENT_AUTH_AZURE_ROOTS",
        value_name = "PEM_PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_roots: Option<String>,

    /// PEM bundle of intermediates added to the built-in Azure ones.
    #[arg(
        long,
        help_heading = "Azure",
        env = "AGENT_AUTH_AZURE_INTERMEDIATES",
        value_name = "PEM_PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_intermediates: Option<String>,

    /// Fetch missing Azure issuer certificates through the signer's AIA URLs (Microsoft and
    /// DigiCert hosts only, public addresses only, 5 s, 1 MiB, cached) [default: false]
    #[arg(
        long,
        help_heading = "Azure",
        env = "AGENT_AUTH_AZURE_FETCH_ISSUERS",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_fetch_issuers: Option<String>,

    /// Only Azure subscriptions listed here pass (all when none). Repeatable.
    #[arg(
        long,
        help_heading = "Azure",
        env = "AGENT_AUTH_AZURE_ALLOWED_SUBSCRIPTION",
        value_name = "ID",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub azure_allowed_subscription: Vec<String>,

    /// PEM certificate (chain) for TLS on the gRPC listener; with --tls-key.
    #[arg(
        long,
        help_heading = "gRPC TLS",
        env = "AGENT_AUTH_TLS_CERT",
        value_name = "PEM_PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        help_heading = "gRPC TLS",
        env = "AGENT_AUTH_TLS_KEY",
        value_name = "PEM_PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,

    /// PEM CA bundle: callers must present a certificate from it (mTLS).
    #[arg(
        long,
        help_heading = "gRPC TLS",
        env = "AGENT_AUTH_TLS_CLIENT_CA",
        value_name = "PEM_PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<String>,

    /// Verify certificates and expiry as of this RFC 3339 instant instead of now. For replaying
    /// recorded documents in tests only.
    /// A command-line flag only: refused from the environment and the config file, so a stray
    /// variable cannot turn it on in production.
    #[arg(long, help_heading = "Testing only", value_name = "RFC3339")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_verify_time: Option<String>,

    /// json or text [default: json]
    #[arg(
        long,
        help_heading = "Telemetry",
        env = "AGENT_AUTH_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,

    /// A tracing filter such as `info` or `agent_auth=debug` [default: info]
    #[arg(
        long,
        help_heading = "Telemetry",
        env = "AGENT_AUTH_LOG_LEVEL",
        value_name = "FILTER"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// OTLP/gRPC collector for traces, e.g. http://otel-collector:4317 (off unless set)
    #[arg(
        long,
        help_heading = "Telemetry",
        env = "AGENT_AUTH_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,

    /// How long in-flight requests may run after SIGTERM [default: 10s]
    #[arg(
        long,
        help_heading = "Limits and timeouts",
        env = "AGENT_AUTH_SHUTDOWN_GRACE",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,

    /// Live check: after a verified AWS login, EC2 DescribeInstances must show the instance
    /// pending or running, launched when the document says (needs ec2:DescribeInstances)
    /// [default: false]
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_AWS_EC2_CHECK",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_ec2_check: Option<String>,

    /// EC2 endpoint instead of the document's regional one (tests, VPC endpoints)
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_AWS_EC2_ENDPOINT",
        value_name = "URL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_ec2_endpoint: Option<String>,

    /// Role to assume for instances of an account (ACCOUNT=ROLE_ARN). Repeatable.
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_AWS_EC2_ASSUME_ROLE",
        value_name = "ACCOUNT=ARN",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aws_ec2_assume_role: Vec<String>,

    /// Let the AWS credential chain fall back to the instance metadata endpoint (after
    /// environment, profile, web identity and ECS) [default: false]
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_AWS_EC2_IMDS_CREDENTIALS",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_ec2_imds_credentials: Option<String>,

    /// How long EC2 look-ups wait to share one DescribeInstances call [default: 20ms]
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_AWS_EC2_BATCH_WINDOW",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_ec2_batch_window: Option<String>,

    /// Live check: after a verified GCP login, Compute Engine instances.get must show the
    /// instance running with the token's id and creation time (needs compute.instances.get)
    /// [default: false]
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_GCP_COMPUTE_CHECK",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gcp_compute_check: Option<String>,

    /// Compute Engine endpoint [default: https://compute.googleapis.com]
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_GCP_COMPUTE_ENDPOINT",
        value_name = "URL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gcp_compute_endpoint: Option<String>,

    /// Service-account key file for Compute Engine (gcp_auth discovery when unset)
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_GCP_COMPUTE_CREDENTIALS",
        value_name = "PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gcp_compute_credentials: Option<String>,

    /// How long a live check keeps a running instance's answer [default: 60s]
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_CLOUD_CHECK_CACHE_TTL",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_check_cache_ttl: Option<String>,

    /// Time limit of one cloud API call attempt [default: 2s]
    #[arg(
        long,
        help_heading = "Live cloud API checks",
        env = "AGENT_AUTH_CLOUD_CHECK_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_check_timeout: Option<String>,

    /// When a cloud API cannot answer: closed (UNAVAILABLE CLOUD_API_UNAVAILABLE) or open
    /// (allow, warn, count) [default: closed]
    #[arg(
        long,
        env = "AGENT_AUTH_CLOUD_CHECK_ON_ERROR",
        value_name = "closed|open"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_check_on_error: Option<String>,
}

/// TLS settings of a client command (`authenticate`, `healthcheck`) for a server with TLS.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTlsArgs {
    /// CA bundle that signed the server's certificate; enables TLS (use an https:// server).
    #[arg(long, env = "AGENT_AUTH_CLIENT_TLS_CA", value_name = "PEM_PATH")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mTLS.
    #[arg(
        long,
        env = "AGENT_AUTH_CLIENT_TLS_CERT",
        value_name = "PEM_PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Client key for mTLS.
    #[arg(
        long,
        env = "AGENT_AUTH_CLIENT_TLS_KEY",
        value_name = "PEM_PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The name to expect in the server's certificate, when it differs from the address.
    #[arg(long, env = "AGENT_AUTH_CLIENT_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// The server's gRPC address: http://HOST:PORT or unix:/path.
    #[arg(
        long,
        env = "AGENT_AUTH_HEALTHCHECK_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// The service to ask about; empty for the whole server.
    #[arg(long, default_value = "agentauth.v1.AgentAuth")]
    pub service: String,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct AuthenticateArgs {
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// The server's gRPC address: http://HOST:PORT or unix:/path.
    #[arg(
        long,
        env = "AGENT_AUTH_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// File with the exact bytes of the AWS instance identity document.
    #[arg(long, value_name = "FILE", requires = "aws_proof")]
    pub aws_document: Option<PathBuf>,
    /// File with the base64 AWS `signature`.
    #[arg(long, value_name = "FILE", group = "aws_proof")]
    pub aws_signature: Option<PathBuf>,
    /// File with the base64 AWS `rsa2048` PKCS#7.
    #[arg(long, value_name = "FILE", group = "aws_proof")]
    pub aws_rsa2048: Option<PathBuf>,
    /// File with a GCP instance identity JWT.
    #[arg(long, value_name = "FILE")]
    pub gcp_token: Option<PathBuf>,
    /// File with the base64 Azure attested-document PKCS#7.
    #[arg(long, value_name = "FILE")]
    pub azure_signature: Option<PathBuf>,
    /// Select this agent when several share the instance.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub agent_name: String,
    /// Give up after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Keep the demo database here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// After the demo, keep serving until Ctrl-C so `agent-auth authenticate` can be tried.
    #[arg(long)]
    pub serve: bool,
    /// gRPC listener while serving [default: 127.0.0.1:50051 with --serve, else a free port]
    #[arg(long, value_name = "ADDR")]
    pub grpc_listen: Option<String>,
}
