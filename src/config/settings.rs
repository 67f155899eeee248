//! Every `serve`/`migrate` setting, defined once (DESIGN.md 3.4, contract for the flags it
//! lists).
//!
//! A setting is one field here: its doc comment is the `--help` text and the row of docs/configuration.md
//! (the first paragraph is the short help), its name is the TOML key, `--flag` is the name
//! with `-`, `env` is `AGENT_AUTH_` and the name in upper case (a unit test holds every field
//! to that), `default_value` is the default, and its type parses and prints the value
//! ([`super::values`]). Layering and cross-setting validation live in [`super`].
//!
//! To add a setting: add a field with its doc comment and `#[arg]`, read it in its
//! subsystem's conversion (`convert.rs`), and run `AGENT_AUTH_BLESS=1 cargo test readme` to regenerate the
//! docs/configuration.md table (CI fails while it differs).

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::values::{
    AccountId, AssumeRole, ExistingFile, Flag, HttpUrl, Instant, JwksSource, ListenAddr, LogFilter,
    LogFormat, NonEmpty, OnError, Pooler, RegionFile, SchemaMode, Span,
};

/// The layered settings, typed. Unknown keys in the file are an error.
#[derive(Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// gRPC listener: HOST:PORT, or unix:/path for a socket created with mode 0600.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_LISTEN",
        help_heading = "Listeners",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_listen: ListenAddr,

    /// Admin HTTP listener: /healthz, /readyz, /metrics.
    #[arg(long, env = "AGENT_AUTH_ADMIN_LISTEN", help_heading = "Listeners", value_name = "ADDR", default_value = "127.0.0.1:9090", value_parser = super::values::parse_socket)]
    pub admin_listen: SocketAddr,

    /// Coder-compatible HTTP listener for agents (the three instance-identity endpoints) [default: off].
    #[arg(long, env = "AGENT_AUTH_HTTP_LISTEN", help_heading = "Listeners", value_name = "ADDR", value_parser = super::values::parse_socket)]
    pub http_listen: Option<SocketAddr>,

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
    /// transaction pooling mode.
    ///
    /// `transaction` keeps no state on a connection: no startup `options` (so no per-connection
    /// statement_timeout: set PgBouncer's query_timeout or the role's statement_timeout), and
    /// each login sends its statement unnamed (Parse/Bind/Execute/Sync, one round trip).
    /// `session` sets statement_timeout with one SET per new connection instead of the startup
    /// parameter PgBouncer refuses.
    #[arg(
        long,
        env = "AGENT_AUTH_DB_POOLER",
        help_heading = "Database",
        value_name = "none|session|transaction",
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

    /// Process-wide limit of concurrent authentications; more are shed at once with
    /// RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "AGENT_AUTH_MAX_CONCURRENT_REQUESTS",
        help_heading = "Limits and timeouts",
        value_name = "N",
        default_value = "256"
    )]
    pub max_concurrent_requests: NonZeroUsize,

    /// Every listener: a new connection must send its first bytes within this.
    ///
    /// gRPC: the whole HTTP/2 preface; HTTP: a request.
    #[arg(
        long,
        env = "AGENT_AUTH_CONN_HANDSHAKE_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub conn_handshake_timeout: Span,

    /// Every listener: a connection on which no request started or ended for this long is
    /// closed gracefully (HTTP/2 GOAWAY), whatever keepalive pings flow; so is one on which no
    /// byte moved. The admin listener uses at most 10 s.
    #[arg(
        long,
        env = "AGENT_AUTH_CONN_IDLE_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub conn_idle_timeout: Span,

    /// Open gRPC and agent HTTP connections together at most; over it, the idlest connection
    /// is closed gracefully to make room, or the newcomer at once when none is idle [default:
    /// the open-file limit less 256 and the admin cap, no more than the memory limit holds at
    /// 64 KiB a connection after 96 MiB, at most 16384].
    ///
    /// 0 also means the default.
    #[arg(
        long,
        env = "AGENT_AUTH_MAX_CONNECTIONS",
        help_heading = "Limits and timeouts",
        value_name = "N"
    )]
    pub max_connections: Option<usize>,

    /// Open gRPC and agent HTTP connections from one client address at most; more are closed
    /// at once [default: a quarter of --max-connections, at least 16].
    ///
    /// Behind an ingress or load balancer that does not keep client addresses, every
    /// connection comes from its few addresses: raise this to the cap. 0 also means the
    /// default.
    #[arg(
        long,
        env = "AGENT_AUTH_MAX_CONNECTIONS_PER_SOURCE",
        help_heading = "Limits and timeouts",
        value_name = "N"
    )]
    pub max_connections_per_source: Option<usize>,

    /// Open admin connections at most: the admin listener's own cap (half of it per client
    /// address), so probes and scrapes answer during a flood; over it, the idlest makes room.
    #[arg(
        long,
        env = "AGENT_AUTH_ADMIN_MAX_CONNECTIONS",
        help_heading = "Limits and timeouts",
        value_name = "N",
        default_value = "64"
    )]
    pub admin_max_connections: NonZeroUsize,

    /// Agent and admin HTTP: the whole request head must arrive within this.
    #[arg(
        long,
        env = "AGENT_AUTH_HTTP_HEADER_READ_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub http_header_read_timeout: Span,

    /// Agent HTTP: the whole request body must arrive within this, else 408 and the connection
    /// closes.
    #[arg(
        long,
        env = "AGENT_AUTH_HTTP_BODY_READ_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub http_body_read_timeout: Span,

    /// Agent HTTP: a larger Content-Length gets 413 at once, before the body (no `100
    /// Continue`).
    #[arg(
        long,
        env = "AGENT_AUTH_HTTP_MAX_BODY_SIZE",
        help_heading = "Limits and timeouts",
        value_name = "BYTES",
        default_value = "65536"
    )]
    pub http_max_body_size: NonZeroUsize,

    /// gRPC: the largest request message; a larger one is refused from its length prefix
    /// (OUT_OF_RANGE), never buffered.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_MAX_MESSAGE_SIZE",
        help_heading = "Limits and timeouts",
        value_name = "BYTES",
        default_value = "262144"
    )]
    pub grpc_max_message_size: NonZeroUsize,

    /// gRPC: concurrent requests on one connection.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_MAX_CONCURRENT_STREAMS",
        help_heading = "Limits and timeouts",
        value_name = "N",
        default_value = "100"
    )]
    pub grpc_max_concurrent_streams: NonZeroU32,

    /// gRPC: send an HTTP/2 keepalive ping this often.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_KEEPALIVE_INTERVAL",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub grpc_keepalive_interval: Span,

    /// gRPC: close a connection whose ping is not answered within this.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_KEEPALIVE_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub grpc_keepalive_timeout: Span,

    /// How long in-flight requests may run after SIGTERM.
    #[arg(
        long,
        env = "AGENT_AUTH_SHUTDOWN_GRACE",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub shutdown_grace: Span,

    /// REGION=PEM_PATH: the AWS `signature` key of one region, or `default` for every region
    /// without an operator certificate of its own [default: built-ins (39 regions)].
    ///
    /// Repeatable; comma-separated in the env var. Reloaded on SIGHUP.
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_CERTIFICATE",
        help_heading = "AWS",
        value_name = "REGION=PEM",
        value_delimiter = ','
    )]
    pub aws_certificate: Vec<RegionFile>,

    /// REGION=PEM_PATH: the same for the `rsa2048` PKCS#7 form [default: built-ins (39 regions)].
    ///
    /// Repeatable; comma-separated in the env var. Reloaded on SIGHUP.
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_RSA2048_CERTIFICATE",
        help_heading = "AWS",
        value_name = "REGION=PEM",
        value_delimiter = ','
    )]
    pub aws_rsa2048_certificate: Vec<RegionFile>,

    /// Only AWS accounts listed here pass [default: any, with a warning]. Repeatable; `any`
    /// accepts every account knowingly (no warning).
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_ALLOWED_ACCOUNT",
        help_heading = "AWS",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub aws_allowed_account: Vec<AccountId>,

    /// GCP JWKS: a URL or a file.
    ///
    /// A URL is fetched in the background, cached for `max-age`, and refetched at most once a
    /// minute for an unknown `kid`; a file is static (reloaded on SIGHUP).
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_JWKS",
        help_heading = "GCP",
        value_name = "URL_OR_PATH",
        default_value = "https://www.googleapis.com/oauth2/v3/certs"
    )]
    pub gcp_jwks: JwksSource,

    /// Required `aud` of GCP tokens (what agents request today).
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_AUDIENCE",
        help_heading = "GCP",
        value_name = "AUD",
        default_value = "coder"
    )]
    pub gcp_audience: NonEmpty,

    /// Only GCP projects listed here pass [default: any]. Repeatable.
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_ALLOWED_PROJECT",
        help_heading = "GCP",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub gcp_allowed_project: Vec<String>,

    /// PEM bundle that replaces the built-in Azure roots [default: the 7 roots Microsoft lists].
    ///
    /// Reloaded on SIGHUP.
    #[arg(
        long,
        env = "AGENT_AUTH_AZURE_ROOTS",
        help_heading = "Azure",
        value_name = "PEM_PATH"
    )]
    pub azure_roots: Option<ExistingFile>,

    /// PEM bundle of intermediates added to the built-in Azure ones [default: built-ins (23)].
    ///
    /// Reloaded on SIGHUP.
    #[arg(
        long,
        env = "AGENT_AUTH_AZURE_INTERMEDIATES",
        help_heading = "Azure",
        value_name = "PEM_PATH"
    )]
    pub azure_intermediates: Option<ExistingFile>,

    /// Fetch a missing Azure issuer through the signer's AIA URL.
    ///
    /// Only after the signer's name passed and when its issuer is not pinned:
    /// `www.microsoft.com`, `caissuers.microsoft.com` and `cacerts.digicert.com` only,
    /// `.crt`/`.cer` paths without a query, default ports, public addresses only, 5 s, 1 MiB,
    /// 32 cached (LRU), 8 at once then 30 a minute; a fetched certificate is only an
    /// intermediate.
    #[arg(long, env = "AGENT_AUTH_AZURE_FETCH_ISSUERS", help_heading = "Azure", value_name = "true|false", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub azure_fetch_issuers: Flag,

    /// Only Azure subscriptions listed here pass [default: any]. Repeatable.
    #[arg(
        long,
        env = "AGENT_AUTH_AZURE_ALLOWED_SUBSCRIPTION",
        help_heading = "Azure",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub azure_allowed_subscription: Vec<String>,

    /// PEM certificate (chain) for TLS on the gRPC listener (TCP only); with --tls-key
    /// [default: off].
    #[arg(
        long,
        env = "AGENT_AUTH_TLS_CERT",
        help_heading = "gRPC TLS",
        value_name = "PEM_PATH"
    )]
    pub tls_cert: Option<ExistingFile>,

    /// PEM private key for --tls-cert [default: off].
    #[arg(
        long,
        env = "AGENT_AUTH_TLS_KEY",
        help_heading = "gRPC TLS",
        value_name = "PEM_PATH"
    )]
    pub tls_key: Option<ExistingFile>,

    /// mTLS: callers must present a certificate from this PEM CA bundle [default: off].
    #[arg(
        long,
        env = "AGENT_AUTH_TLS_CLIENT_CA",
        help_heading = "gRPC TLS",
        value_name = "PEM_PATH"
    )]
    pub tls_client_ca: Option<ExistingFile>,

    /// Verify certificates and expiry as of this RFC 3339 instant instead of now; for replaying
    /// recorded documents in tests only (logs a warning) [default: now].
    ///
    /// A command-line flag only: refused from the environment and the config file, so a stray
    /// variable cannot turn it on in production.
    #[arg(long, help_heading = "Testing only", value_name = "RFC3339")]
    #[serde(skip)]
    pub insecure_verify_time: Option<Instant>,

    /// Log format: one JSON line per authentication, never tokens or evidence.
    #[arg(
        long,
        env = "AGENT_AUTH_LOG_FORMAT",
        help_heading = "Telemetry",
        value_name = "json|text",
        default_value = "json"
    )]
    pub log_format: LogFormat,

    /// A tracing filter such as `info` or `agent_auth=debug`.
    #[arg(
        long,
        env = "AGENT_AUTH_LOG_LEVEL",
        help_heading = "Telemetry",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_level: LogFilter,

    /// OTLP/gRPC collector for traces, e.g. `http://otel-collector:4317` [default: off].
    #[arg(
        long,
        env = "AGENT_AUTH_OTLP_ENDPOINT",
        help_heading = "Telemetry",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<HttpUrl>,

    /// Live check of AWS logins with EC2 `DescribeInstances` (docs/trust.md, "Live cloud API checks").
    ///
    /// After a verified login, EC2 must show the instance pending or running, launched when
    /// the document says (needs `ec2:DescribeInstances`).
    #[arg(long, env = "AGENT_AUTH_AWS_EC2_CHECK", help_heading = "Live cloud API checks", value_name = "true|false", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub aws_ec2_check: Flag,

    /// EC2 endpoint for every region instead of the document's regional one (tests, private
    /// endpoints) [default: regional].
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_EC2_ENDPOINT",
        help_heading = "Live cloud API checks",
        value_name = "URL"
    )]
    pub aws_ec2_endpoint: Option<HttpUrl>,

    /// ACCOUNT=ROLE_ARN: the role to assume for instances of that account [default: none].
    /// Repeatable.
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_EC2_ASSUME_ROLE",
        help_heading = "Live cloud API checks",
        value_name = "ACCOUNT=ARN",
        value_delimiter = ','
    )]
    pub aws_ec2_assume_role: Vec<AssumeRole>,

    /// Let the AWS credential chain end at the instance metadata endpoint (after environment,
    /// profile, web identity and ECS).
    #[arg(long, env = "AGENT_AUTH_AWS_EC2_IMDS_CREDENTIALS", help_heading = "Live cloud API checks", value_name = "true|false", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub aws_ec2_imds_credentials: Flag,

    /// EC2 look-ups arriving within this share one `DescribeInstances` call (at most 100 ids;
    /// at most 1s).
    #[arg(
        long,
        env = "AGENT_AUTH_AWS_EC2_BATCH_WINDOW",
        help_heading = "Live cloud API checks",
        value_name = "DURATION",
        default_value = "20ms"
    )]
    pub aws_ec2_batch_window: Span,

    /// Live check of GCP logins with Compute Engine `instances.get`.
    ///
    /// After a verified login, Compute Engine must show the instance running with the token's
    /// id and creation time (needs `compute.instances.get`).
    #[arg(long, env = "AGENT_AUTH_GCP_COMPUTE_CHECK", help_heading = "Live cloud API checks", value_name = "true|false", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub gcp_compute_check: Flag,

    /// Compute Engine endpoint (tests) [default: https://compute.googleapis.com].
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_COMPUTE_ENDPOINT",
        help_heading = "Live cloud API checks",
        value_name = "URL"
    )]
    pub gcp_compute_endpoint: Option<HttpUrl>,

    /// Service-account key file for the Compute API [default: gcp_auth discovery].
    #[arg(
        long,
        env = "AGENT_AUTH_GCP_COMPUTE_CREDENTIALS",
        help_heading = "Live cloud API checks",
        value_name = "PATH"
    )]
    pub gcp_compute_credentials: Option<PathBuf>,

    /// How long a live check keeps a running instance's answer (a negative one: 5 s).
    #[arg(
        long,
        env = "AGENT_AUTH_CLOUD_CHECK_CACHE_TTL",
        help_heading = "Live cloud API checks",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub cloud_check_cache_ttl: Span,

    /// Time limit of one cloud API call attempt.
    #[arg(
        long,
        env = "AGENT_AUTH_CLOUD_CHECK_TIMEOUT",
        help_heading = "Live cloud API checks",
        value_name = "DURATION",
        default_value = "2s"
    )]
    pub cloud_check_timeout: Span,

    /// When a cloud API cannot answer: closed (UNAVAILABLE `CLOUD_API_UNAVAILABLE`) or open
    /// (allow with a warning and a metric).
    #[arg(
        long,
        env = "AGENT_AUTH_CLOUD_CHECK_ON_ERROR",
        help_heading = "Live cloud API checks",
        value_name = "closed|open",
        default_value = "closed"
    )]
    pub cloud_check_on_error: OnError,
}
