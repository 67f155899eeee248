//! One configuration tree, layered defaults < TOML file < env < flag (DESIGN.md 3.4).
//!
//! clap yields the flag or env value as a string; figment merges those over the file and the
//! defaults; [`Config::from_raw`] parses and validates. Every error names its key, and `main`
//! prints it on one line and exits 64 (EX_USAGE).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::cli::ServeArgs;
use crate::identity::aws::AwsTrustConfig;
use crate::identity::azure::AzureTrustConfig;
use crate::store::StoreConfig;

/// Exit code for bad configuration (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// A configuration error: the key and what is wrong with it. Shown with all three names an
/// operator may have used: `--flag`, `AGENT_AUTH_FLAG` and the TOML key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid configuration: --{} (env AGENT_AUTH_{}, key {key}): {message}",
    key.replace('_', "-"),
    key.to_ascii_uppercase()
)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// The raw layered values, as written by people. Unknown keys in the file are an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub grpc_listen: String,
    pub admin_listen: String,
    pub http_listen: Option<String>,
    pub postgres_url: Option<String>,
    pub postgres_url_file: Option<String>,
    pub postgres_ca: Option<String>,
    pub data_dir: Option<String>,
    pub schema: String,
    pub db_pool_size: usize,
    pub db_checkout_timeout: String,
    pub db_connect_timeout: String,
    pub db_statement_timeout: String,
    pub max_concurrent_requests: usize,
    pub conn_handshake_timeout: String,
    pub conn_idle_timeout: String,
    /// 0: derived from the open-file limit.
    pub max_connections: usize,
    pub admin_max_connections: usize,
    pub http_header_read_timeout: String,
    pub http_body_read_timeout: String,
    pub http_max_body_size: usize,
    pub grpc_max_message_size: usize,
    pub grpc_max_concurrent_streams: u32,
    pub grpc_keepalive_interval: String,
    pub grpc_keepalive_timeout: String,
    pub aws_certificate: Vec<String>,
    pub aws_rsa2048_certificate: Vec<String>,
    pub aws_allowed_account: Vec<String>,
    pub gcp_jwks: String,
    pub gcp_audience: String,
    pub gcp_allowed_project: Vec<String>,
    pub azure_roots: Option<String>,
    pub azure_intermediates: Option<String>,
    pub azure_fetch_issuers: bool,
    pub azure_allowed_subscription: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_client_ca: Option<String>,
    pub insecure_verify_time: Option<String>,
    pub log_format: String,
    pub log_level: String,
    pub otlp_endpoint: Option<String>,
    pub shutdown_grace: String,
    pub aws_ec2_check: bool,
    pub aws_ec2_endpoint: Option<String>,
    pub aws_ec2_assume_role: Vec<String>,
    pub aws_ec2_imds_credentials: bool,
    pub aws_ec2_batch_window: String,
    pub gcp_compute_check: bool,
    pub gcp_compute_endpoint: Option<String>,
    pub gcp_compute_credentials: Option<String>,
    pub cloud_check_cache_ttl: String,
    pub cloud_check_timeout: String,
    pub cloud_check_on_error: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            grpc_listen: "127.0.0.1:50051".into(),
            admin_listen: "127.0.0.1:9090".into(),
            http_listen: None,
            postgres_url: None,
            postgres_url_file: None,
            postgres_ca: None,
            data_dir: None,
            schema: "owned".into(),
            db_pool_size: 10,
            db_checkout_timeout: "1s".into(),
            db_connect_timeout: "5s".into(),
            db_statement_timeout: "2s".into(),
            max_concurrent_requests: 256,
            conn_handshake_timeout: "10s".into(),
            conn_idle_timeout: "60s".into(),
            max_connections: 0,
            admin_max_connections: 64,
            http_header_read_timeout: "10s".into(),
            http_body_read_timeout: "10s".into(),
            http_max_body_size: crate::listen::DEFAULT_MAX_BODY_BYTES,
            grpc_max_message_size: crate::listen::DEFAULT_MAX_MESSAGE_BYTES,
            grpc_max_concurrent_streams: 100,
            grpc_keepalive_interval: "30s".into(),
            grpc_keepalive_timeout: "10s".into(),
            aws_certificate: Vec::new(),
            aws_rsa2048_certificate: Vec::new(),
            aws_allowed_account: Vec::new(),
            gcp_jwks: crate::identity::gcp::GOOGLE_JWKS_URL.into(),
            gcp_audience: "coder".into(),
            gcp_allowed_project: Vec::new(),
            azure_roots: None,
            azure_intermediates: None,
            azure_fetch_issuers: false,
            azure_allowed_subscription: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            insecure_verify_time: None,
            log_format: "json".into(),
            log_level: "info".into(),
            otlp_endpoint: None,
            shutdown_grace: "10s".into(),
            aws_ec2_check: false,
            aws_ec2_endpoint: None,
            aws_ec2_assume_role: Vec::new(),
            aws_ec2_imds_credentials: false,
            aws_ec2_batch_window: "20ms".into(),
            gcp_compute_check: false,
            gcp_compute_endpoint: None,
            gcp_compute_credentials: None,
            cloud_check_cache_ttl: "60s".into(),
            cloud_check_timeout: "2s".into(),
            cloud_check_on_error: "closed".into(),
        }
    }
}

/// Where the gRPC listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Where the GCP signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

/// GCP settings.
#[derive(Debug, Clone)]
pub struct GcpConfig {
    pub jwks: JwksSource,
    pub audience: String,
    pub allowed_projects: Vec<String>,
}

/// `--tls-cert`, `--tls-key`, `--tls-client-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, callers must present a certificate signed by it.
    pub client_ca: Option<PathBuf>,
}

/// `--schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaMode {
    /// The service's own migrations create the tables.
    Owned,
    /// The control plane's tables; no migrations, no writes, a start-up check.
    Coder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_listen: ListenAddr,
    pub admin_listen: SocketAddr,
    /// Coder-compatible HTTP endpoints; off when `None`.
    pub http_listen: Option<SocketAddr>,
    /// `None`: start the embedded database in `data_dir`.
    pub postgres_url: Option<String>,
    pub data_dir: PathBuf,
    pub schema: SchemaMode,
    pub store: StoreConfig,
    pub max_concurrent_requests: usize,
    /// Timeouts and caps of the listeners' connections.
    pub connections: crate::listen::ConnectionLimits,
    pub aws: AwsTrustConfig,
    pub azure: AzureTrustConfig,
    pub gcp: GcpConfig,
    /// TLS (and mTLS with a client CA) on the gRPC listener.
    pub tls: Option<TlsConfig>,
    pub insecure_verify_time: Option<SystemTime>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// OTLP/gRPC traces endpoint.
    pub otlp_endpoint: Option<String>,
    pub shutdown_grace: Duration,
    /// The live cloud API checks (off unless turned on).
    pub live: LiveCheckConfig,
}

/// `--aws-ec2-check`, `--gcp-compute-check` and their shared settings.
#[derive(Debug, Clone)]
pub struct LiveCheckConfig {
    pub aws: Option<crate::cloud::aws::AwsCheckConfig>,
    pub gcp: Option<crate::cloud::gcp::GcpCheckConfig>,
    pub settings: crate::cloud::CheckSettings,
}

impl Config {
    /// Layers defaults, the `--config` file and the flags/env from clap, then validates.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::from_raw(Self::layered(args)?)
    }

    /// The layered raw values (defaults < file < env < flags), before validation.
    pub fn layered(args: &ServeArgs) -> Result<RawConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        if std::env::var_os(INSECURE_VERIFY_TIME_ENV).is_some() {
            return Err(ConfigError::new(
                "insecure_verify_time",
                format!("is a command-line flag only; unset {INSECURE_VERIFY_TIME_ENV}"),
            ));
        }
        if let Some(path) = &args.config {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            if Figment::from(Toml::file_exact(path))
                .find_value("insecure_verify_time")
                .is_ok()
            {
                return Err(ConfigError::new(
                    "insecure_verify_time",
                    format!(
                        "is a command-line flag only; remove it from {}",
                        path.display()
                    ),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Serialized::defaults(args));
        // figment reads "yes", "on" and "1" as true; operators get exactly true or false.
        for key in BOOLEAN_KEYS {
            if let Ok(figment::value::Value::String(_, text)) = figment.find_value(key)
                && text != "true"
                && text != "false"
            {
                return Err(ConfigError::new(
                    key,
                    format!("expected true or false, found {text:?}"),
                ));
            }
        }
        figment.extract_lossy().map_err(figment_error)
    }

    /// Parses and validates raw values.
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let live = live_checks(&raw)?;
        let grpc_listen = parse_listen("grpc_listen", &raw.grpc_listen)?;
        let admin_listen = parse_socket("admin_listen", &raw.admin_listen)?;
        let http_listen = match raw.http_listen.as_deref() {
            None | Some("") => None,
            Some(addr) => Some(parse_socket("http_listen", addr)?),
        };
        let schema = match raw.schema.as_str() {
            "owned" => SchemaMode::Owned,
            "coder" => SchemaMode::Coder,
            other => {
                return Err(ConfigError::new(
                    "schema",
                    format!("expected owned or coder, found {other:?}"),
                ));
            }
        };
        let postgres_url = raw.postgres_url.filter(|u| !u.trim().is_empty());
        let postgres_url = match raw.postgres_url_file.as_deref().filter(|p| !p.is_empty()) {
            None => postgres_url,
            Some(_) if postgres_url.is_some() => {
                return Err(ConfigError::new(
                    "postgres_url_file",
                    "set postgres_url or postgres_url_file, not both",
                ));
            }
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("postgres_url_file", format!("cannot read {path}: {e}"))
                })?;
                let url = text.trim().to_owned();
                if url.is_empty() {
                    return Err(ConfigError::new(
                        "postgres_url_file",
                        format!("{path} is empty"),
                    ));
                }
                Some(url)
            }
        };
        if schema == SchemaMode::Coder && postgres_url.is_none() {
            return Err(ConfigError::new(
                "schema",
                "coder reads an existing control-plane database: set postgres_url",
            ));
        }
        if let Some(url) = &postgres_url {
            crate::store::tls::parse(url).map_err(|e| {
                ConfigError::new(
                    "postgres_url",
                    format!("{e} (in {})", redact_postgres_url(url)),
                )
            })?;
        }
        if raw.db_pool_size == 0 {
            return Err(ConfigError::new("db_pool_size", "must be at least 1"));
        }
        if raw.max_concurrent_requests == 0 {
            return Err(ConfigError::new(
                "max_concurrent_requests",
                "must be at least 1",
            ));
        }
        let positive = |key: &str, value: usize| {
            if value == 0 {
                Err(ConfigError::new(key, "must be at least 1"))
            } else {
                Ok(value)
            }
        };
        let connections = crate::listen::ConnectionLimits {
            handshake_timeout: parse_duration(
                "conn_handshake_timeout",
                &raw.conn_handshake_timeout,
            )?,
            idle_timeout: parse_duration("conn_idle_timeout", &raw.conn_idle_timeout)?,
            max_connections: (raw.max_connections > 0).then_some(raw.max_connections),
            admin_max_connections: positive("admin_max_connections", raw.admin_max_connections)?,
            header_read_timeout: parse_duration(
                "http_header_read_timeout",
                &raw.http_header_read_timeout,
            )?,
            body_read_timeout: parse_duration(
                "http_body_read_timeout",
                &raw.http_body_read_timeout,
            )?,
            max_body_bytes: positive("http_max_body_size", raw.http_max_body_size)?,
            max_message_bytes: positive("grpc_max_message_size", raw.grpc_max_message_size)?,
            max_concurrent_streams: u32::try_from(positive(
                "grpc_max_concurrent_streams",
                raw.grpc_max_concurrent_streams as usize,
            )?)
            .unwrap_or(u32::MAX),
            keepalive_interval: parse_duration(
                "grpc_keepalive_interval",
                &raw.grpc_keepalive_interval,
            )?,
            keepalive_timeout: parse_duration(
                "grpc_keepalive_timeout",
                &raw.grpc_keepalive_timeout,
            )?,
        };
        let store = StoreConfig {
            pool_size: raw.db_pool_size,
            checkout_timeout: parse_duration("db_checkout_timeout", &raw.db_checkout_timeout)?,
            connect_timeout: parse_duration("db_connect_timeout", &raw.db_connect_timeout)?,
            statement_timeout: parse_duration("db_statement_timeout", &raw.db_statement_timeout)?,
            ca: optional_file("postgres_ca", raw.postgres_ca.as_deref())?,
        };
        let aws = AwsTrustConfig {
            signature_certificates: parse_region_files("aws_certificate", &raw.aws_certificate)?,
            rsa2048_certificates: parse_region_files(
                "aws_rsa2048_certificate",
                &raw.aws_rsa2048_certificate,
            )?,
            allowed_accounts: parse_accounts(&raw.aws_allowed_account)?,
        };
        let azure = AzureTrustConfig {
            roots: optional_file("azure_roots", raw.azure_roots.as_deref())?,
            intermediates: optional_file(
                "azure_intermediates",
                raw.azure_intermediates.as_deref(),
            )?,
            allowed_subscriptions: raw
                .azure_allowed_subscription
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            fetch_issuers: raw.azure_fetch_issuers,
        };
        let jwks = raw.gcp_jwks.trim();
        let gcp = GcpConfig {
            jwks: if jwks.starts_with("https://") || jwks.starts_with("http://") {
                jwks.parse::<hyper::Uri>()
                    .map_err(|e| ConfigError::new("gcp_jwks", format!("invalid URL: {e}")))?;
                JwksSource::Url(jwks.to_owned())
            } else {
                match optional_file("gcp_jwks", Some(jwks))? {
                    Some(path) => JwksSource::File(path),
                    None => return Err(ConfigError::new("gcp_jwks", "expected a URL or a file")),
                }
            },
            audience: match raw.gcp_audience.trim() {
                "" => return Err(ConfigError::new("gcp_audience", "must not be empty")),
                audience => audience.to_owned(),
            },
            allowed_projects: raw
                .gcp_allowed_project
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        };
        let tls = match (
            optional_file("tls_cert", raw.tls_cert.as_deref())?,
            optional_file("tls_key", raw.tls_key.as_deref())?,
            optional_file("tls_client_ca", raw.tls_client_ca.as_deref())?,
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), client_ca) => {
                if matches!(grpc_listen, ListenAddr::Unix(_)) {
                    return Err(ConfigError::new(
                        "tls_cert",
                        "TLS is for TCP listeners; a unix socket is protected by its file mode",
                    ));
                }
                Some(TlsConfig {
                    cert,
                    key,
                    client_ca,
                })
            }
            (None, _, Some(_)) => {
                return Err(ConfigError::new(
                    "tls_client_ca",
                    "needs tls_cert and tls_key",
                ));
            }
            (Some(_), None, _) => {
                return Err(ConfigError::new("tls_key", "tls_cert needs tls_key"));
            }
            (None, Some(_), _) => {
                return Err(ConfigError::new("tls_cert", "tls_key needs tls_cert"));
            }
        };
        let insecure_verify_time = match raw.insecure_verify_time.as_deref() {
            None | Some("") => None,
            Some(t) => Some(
                humantime::parse_rfc3339_weak(t)
                    .map_err(|e| ConfigError::new("insecure_verify_time", e.to_string()))?,
            ),
        };
        let log_format = match raw.log_format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(ConfigError::new(
                    "log_format",
                    format!("expected json or text, found {other:?}"),
                ));
            }
        };
        tracing_subscriber::EnvFilter::try_new(&raw.log_level)
            .map_err(|e| ConfigError::new("log_level", e.to_string()))?;
        Ok(Self {
            grpc_listen,
            admin_listen,
            http_listen,
            postgres_url,
            data_dir: match raw.data_dir.filter(|d| !d.is_empty()) {
                Some(dir) => PathBuf::from(dir),
                None => default_data_dir(),
            },
            schema,
            store,
            max_concurrent_requests: raw.max_concurrent_requests,
            connections,
            aws,
            azure,
            gcp,
            tls,
            insecure_verify_time,
            log_format,
            log_level: raw.log_level,
            otlp_endpoint: optional_url("otlp_endpoint", raw.otlp_endpoint.as_deref())?,
            shutdown_grace: parse_duration("shutdown_grace", &raw.shutdown_grace)?,
            live,
        })
    }
}

/// An optional http:// or https:// URL (empty = unset).
fn optional_url(key: &str, value: Option<&str>) -> Result<Option<String>, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            url.parse::<hyper::Uri>()
                .map_err(|e| ConfigError::new(key, e.to_string()))?;
            Ok(Some(url.to_owned()))
        }
        Some(other) => Err(ConfigError::new(
            key,
            format!("expected an http:// or https:// URL, found {other:?}"),
        )),
    }
}

/// Validates the live check settings.
fn live_checks(raw: &RawConfig) -> Result<LiveCheckConfig, ConfigError> {
    let mut assume_roles = Vec::new();
    for entry in raw
        .aws_ec2_assume_role
        .iter()
        .filter(|e| !e.trim().is_empty())
    {
        match entry.trim().split_once('=') {
            Some((account, arn)) if is_account_id(account) && arn.starts_with("arn:") => {
                assume_roles.push((account.to_owned(), arn.to_owned()));
            }
            _ => {
                return Err(ConfigError::new(
                    "aws_ec2_assume_role",
                    format!("expected ACCOUNT=arn:aws:iam::ACCOUNT:role/NAME, found {entry:?}"),
                ));
            }
        }
    }
    let aws_endpoint = optional_url("aws_ec2_endpoint", raw.aws_ec2_endpoint.as_deref())?;
    let gcp_endpoint = optional_url("gcp_compute_endpoint", raw.gcp_compute_endpoint.as_deref())?;
    let batch_window = parse_duration("aws_ec2_batch_window", &raw.aws_ec2_batch_window)?;
    if batch_window > Duration::from_secs(1) {
        return Err(ConfigError::new(
            "aws_ec2_batch_window",
            "at most 1s: every first look-up of a batch waits this long",
        ));
    }
    let timeout = parse_duration("cloud_check_timeout", &raw.cloud_check_timeout)?;
    if timeout.is_zero() {
        return Err(ConfigError::new(
            "cloud_check_timeout",
            "must be above zero",
        ));
    }
    let on_error = match raw.cloud_check_on_error.trim() {
        "closed" => crate::cloud::OnError::Closed,
        "open" => crate::cloud::OnError::Open,
        other => {
            return Err(ConfigError::new(
                "cloud_check_on_error",
                format!("expected closed or open, found {other:?}"),
            ));
        }
    };
    Ok(LiveCheckConfig {
        aws: raw
            .aws_ec2_check
            .then_some(crate::cloud::aws::AwsCheckConfig {
                endpoint: aws_endpoint,
                assume_roles,
                imds_credentials: raw.aws_ec2_imds_credentials,
                batch_window,
            }),
        gcp: match raw.gcp_compute_check {
            true => Some(crate::cloud::gcp::GcpCheckConfig {
                endpoint: gcp_endpoint,
                credentials: optional_file(
                    "gcp_compute_credentials",
                    raw.gcp_compute_credentials.as_deref(),
                )?,
            }),
            false => None,
        },
        settings: crate::cloud::CheckSettings {
            cache_ttl: parse_duration("cloud_check_cache_ttl", &raw.cloud_check_cache_ttl)?,
            timeout,
            on_error,
        },
    })
}

fn figment_error(e: figment::Error) -> ConfigError {
    let key = if e.path.is_empty() {
        "config".to_owned()
    } else {
        e.path.join(".")
    };
    ConfigError::new(&key, e.kind.to_string())
}

fn parse_socket(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("expected HOST:PORT with an IP host, found {value:?}"),
        )
    })
}

fn parse_listen(key: &str, value: &str) -> Result<ListenAddr, ConfigError> {
    match value.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') => Ok(ListenAddr::Unix(PathBuf::from(path))),
        Some(_) => Err(ConfigError::new(
            key,
            "a unix socket path must be absolute (unix:/path)",
        )),
        None => parse_socket(key, value).map(ListenAddr::Tcp),
    }
}

/// The settings that take exactly `true` or `false`.
const BOOLEAN_KEYS: &[&str] = &[
    "azure_fetch_issuers",
    "aws_ec2_check",
    "aws_ec2_imds_credentials",
    "gcp_compute_check",
];

/// The environment variable that `--insecure-verify-time` must never be read from.
const INSECURE_VERIFY_TIME_ENV: &str = "AGENT_AUTH_INSECURE_VERIFY_TIME";

/// What stands in for a password wherever a URL or conninfo is printed or logged.
pub const REDACTED: &str = "REDACTED";

impl RawConfig {
    /// The settings as TOML that `--config` reads back, with every password redacted and the
    /// command-line-only `insecure_verify_time` left out.
    pub fn to_redacted_toml(&self) -> Result<String, String> {
        let mut shown = self.clone();
        shown.postgres_url = shown.postgres_url.as_deref().map(redact_postgres_url);
        shown.insecure_verify_time = None;
        toml::to_string(&shown).map_err(|e| e.to_string())
    }
}

/// A PostgreSQL URL (`postgres://user:password@host/db?password=…`) or libpq key=value
/// string (`password=… host=…`) with every password replaced by [`REDACTED`].
pub fn redact_postgres_url(value: &str) -> String {
    match value.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, hosts)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:{REDACTED}@{hosts}"),
                    None => format!("{userinfo}@{hosts}"),
                },
                None => authority.to_owned(),
            };
            let tail = match tail.split_once('?') {
                Some((path, query)) => {
                    let query: Vec<String> = query
                        .split('&')
                        .map(|pair| match pair.split_once('=') {
                            Some((key, _)) if key == "password" => format!("{key}={REDACTED}"),
                            _ => pair.to_owned(),
                        })
                        .collect();
                    format!("{path}?{}", query.join("&"))
                }
                None => tail.to_owned(),
            };
            format!("{scheme}://{authority}{tail}")
        }
        None => redact_conninfo(value),
    }
}

/// `password=…` in a libpq key=value string becomes `password=REDACTED`; a string that does
/// not split into pairs is redacted whole.
fn redact_conninfo(value: &str) -> String {
    use crate::store::conninfo;
    match conninfo::pairs(value) {
        Some(mut pairs) => {
            for pair in pairs.iter_mut().filter(|p| p.key == "password") {
                pair.raw = REDACTED.into();
            }
            conninfo::join(&pairs)
        }
        None => REDACTED.into(),
    }
}

fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let duration = humantime::parse_duration(value)
        .map_err(|e| ConfigError::new(key, format!("{e} (use a duration such as 500ms or 2s)")))?;
    if duration.is_zero() {
        return Err(ConfigError::new(key, "must be longer than zero"));
    }
    Ok(duration)
}

fn parse_region_files(key: &str, values: &[String]) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    values
        .iter()
        .filter(|v| !v.trim().is_empty())
        .map(|value| {
            let (region, path) = value.split_once('=').ok_or_else(|| {
                ConfigError::new(key, format!("expected REGION=PEM_PATH, found {value:?}"))
            })?;
            let region = region.trim();
            if region.is_empty() || path.trim().is_empty() {
                return Err(ConfigError::new(
                    key,
                    format!("expected REGION=PEM_PATH, found {value:?}"),
                ));
            }
            let path = Path::new(path.trim());
            if !path.is_file() {
                return Err(ConfigError::new(
                    key,
                    format!("{} is not a readable file", path.display()),
                ));
            }
            Ok((region.to_owned(), path.to_owned()))
        })
        .collect()
}

fn optional_file(key: &str, value: Option<&str>) -> Result<Option<PathBuf>, ConfigError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(path) if Path::new(path).is_file() => Ok(Some(PathBuf::from(path))),
        Some(path) => Err(ConfigError::new(
            key,
            format!("{path} is not a readable file"),
        )),
    }
}

/// An AWS account id: 12 digits.
fn is_account_id(value: &str) -> bool {
    value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit())
}

fn parse_accounts(values: &[String]) -> Result<Vec<String>, ConfigError> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|account| {
            if is_account_id(account) {
                Ok(account.to_owned())
            } else {
                Err(ConfigError::new(
                    "aws_allowed_account",
                    format!("expected a 12-digit account id, found {account:?}"),
                ))
            }
        })
        .collect()
}

/// `$XDG_DATA_HOME/agent-auth` (or `~/.local/share/agent-auth`); `/var/lib/agent-auth` as root,
/// since the unprivileged account that runs PostgreSQL cannot enter `/root`.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/agent-auth");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("agent-auth");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/agent-auth"),
        None => PathBuf::from("agent-auth-data"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted_from_urls_and_conninfo_strings() {
        let cases = [
            (
                "postgres://u:pw@h:5432/db?sslmode=require",
                "postgres://u:REDACTED@h:5432/db?sslmode=require",
            ),
            (
                "postgres://u:p%40w@h1,h2/db",
                "postgres://u:REDACTED@h1,h2/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?password=pw&x=1",
                "postgres://h/db?password=REDACTED&x=1",
            ),
            ("postgres://u:p@w@h/db", "postgres://u:REDACTED@h/db"),
            (
                "host=h password=pw dbname=d",
                "host=h password=REDACTED dbname=d",
            ),
            (
                "host=h password = 'p w\\' x' dbname=d",
                "host=h password=REDACTED dbname=d",
            ),
            ("password=", "password=REDACTED"),
            ("host=h", "host=h"),
        ];
        for (input, expected) in cases {
            assert_eq!(super::redact_postgres_url(input), expected, "{input}");
        }
    }

    use super::*;

    fn with(edit: impl FnOnce(&mut RawConfig)) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        edit(&mut raw);
        Config::from_raw(raw)
    }

    #[test]
    fn defaults_are_valid() {
        let config = with(|_| {}).map_err(|e| e.to_string());
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |edit: fn(&mut RawConfig)| with(edit).err().map(|e| e.key);
        assert_eq!(
            key(|r| r.grpc_listen = "nowhere".into()),
            Some("grpc_listen".into())
        );
        assert_eq!(key(|r| r.schema = "theirs".into()), Some("schema".into()));
        assert_eq!(
            key(|r| r.db_checkout_timeout = "soon".into()),
            Some("db_checkout_timeout".into())
        );
        assert_eq!(key(|r| r.db_pool_size = 0), Some("db_pool_size".into()));
        assert_eq!(
            key(|r| r.aws_certificate = vec!["nokey".into()]),
            Some("aws_certificate".into())
        );
        assert_eq!(
            key(|r| r.aws_allowed_account = vec!["12".into()]),
            Some("aws_allowed_account".into())
        );
        assert_eq!(
            key(|r| r.log_format = "xml".into()),
            Some("log_format".into())
        );
        assert_eq!(key(|r| r.schema = "coder".into()), Some("schema".into()));
        for (edit, name) in [
            (
                (|r: &mut RawConfig| r.cloud_check_on_error = "ajar".into()) as fn(&mut RawConfig),
                "cloud_check_on_error",
            ),
            (
                |r| r.aws_ec2_assume_role = vec!["123=arn:aws:iam::123:role/x".into()],
                "aws_ec2_assume_role",
            ),
            (
                |r| r.aws_ec2_endpoint = Some("localhost:5000".into()),
                "aws_ec2_endpoint",
            ),
            (
                |r| r.aws_ec2_batch_window = "5s".into(),
                "aws_ec2_batch_window",
            ),
            (
                |r| r.cloud_check_timeout = "0s".into(),
                "cloud_check_timeout",
            ),
            (
                |r| {
                    r.gcp_compute_check = true;
                    r.gcp_compute_credentials = Some("/nonexistent/sa.json".into());
                },
                "gcp_compute_credentials",
            ),
        ] {
            assert_eq!(key(edit), Some(name.into()));
        }
    }

    #[test]
    fn live_checks_are_off_by_default_and_on_when_asked() {
        let off = with(|_| {}).map(|c| (c.live.aws.is_none(), c.live.gcp.is_none()));
        assert_eq!(off, Ok((true, true)));
        let on = with(|r| {
            r.aws_ec2_check = true;
            r.aws_ec2_assume_role = vec!["123456789012=arn:aws:iam::123456789012:role/ro".into()];
            r.cloud_check_on_error = "open".into();
        })
        .map(|c| {
            let aws = c.live.aws.unwrap_or_default();
            (
                aws.assume_roles,
                aws.batch_window,
                c.live.settings.cache_ttl,
                c.live.settings.on_error,
            )
        });
        assert_eq!(
            on,
            Ok((
                vec![(
                    "123456789012".into(),
                    "arn:aws:iam::123456789012:role/ro".into()
                )],
                Duration::from_millis(20),
                Duration::from_secs(60),
                crate::cloud::OnError::Open
            ))
        );
    }

    #[test]
    fn unix_listeners_need_an_absolute_path() {
        assert_eq!(
            parse_listen("grpc_listen", "unix:/run/a.sock").ok(),
            Some(ListenAddr::Unix("/run/a.sock".into()))
        );
        assert!(parse_listen("grpc_listen", "unix:run/a.sock").is_err());
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else {
            return assert!(dir.is_ok());
        };
        let path = dir.path().join("agent-auth.toml");
        let written = std::fs::write(&path, "db_pool_size = 7\nmax_concurrent_requests = 9\n");
        assert!(written.is_ok());
        let args = ServeArgs {
            config: Some(path),
            max_concurrent_requests: Some("11".into()),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).map_err(|e| e.to_string());
        assert_eq!(
            config.map(|c| (c.store.pool_size, c.max_concurrent_requests, c.schema)),
            Ok((7, 11, SchemaMode::Owned))
        );
    }

    #[test]
    fn unknown_and_mistyped_file_keys_are_errors() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else {
            return assert!(dir.is_ok());
        };
        for (text, key) in [
            ("db_pool_sise = 7\n", "db_pool_sise"),
            ("db_pool_size = \"many\"\n", "db_pool_size"),
        ] {
            let path = dir.path().join("c.toml");
            assert!(std::fs::write(&path, text).is_ok());
            let args = ServeArgs {
                config: Some(path),
                ..ServeArgs::default()
            };
            assert_eq!(
                Config::load(&args).err().map(|e| e.key),
                Some(key.to_owned()),
                "{text}"
            );
        }
    }
}
