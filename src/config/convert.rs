//! `Config::try_from(Settings)`, one concern at a time: each function reads the settings of
//! one subsystem, checks what spans several of them, and builds that subsystem's part of the
//! tree (the database and store, the gRPC listener's TLS, the connection limits, each cloud's
//! trust, the live checks). A refusal names the setting to change.

use std::path::PathBuf;
use std::time::Duration;

use super::settings::Settings;
use super::values;
use super::{ConfigError, GcpConfig, ListenAddr, LiveCheckConfig, SchemaMode, TlsConfig};
use crate::identity::aws::AwsTrustConfig;
use crate::identity::azure::AzureTrustConfig;
use crate::store::{PostgresUrl, StoreConfig};

/// The primary's URL (from the flag or its file; none for the embedded cluster) and the
/// store's settings, replicas included.
pub(super) fn database(s: &Settings) -> Result<(Option<PostgresUrl>, StoreConfig), ConfigError> {
    let postgres_url = s.postgres_url.clone().filter(|u| !u.trim().is_empty());
    let postgres_url = match s
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
    if s.schema == SchemaMode::Coder && postgres_url.is_none() {
        return Err(ConfigError::new(
            "schema",
            "coder reads an existing control-plane database: set postgres_url",
        ));
    }
    let postgres_url = postgres_url
        .map(|url| postgres_url_setting("postgres_url", &url))
        .transpose()?;
    let replica_urls = s
        .postgres_replica_url
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(|u| postgres_url_setting("postgres_replica_url", u))
        .collect::<Result<Vec<_>, _>>()?;
    if !replica_urls.is_empty() && postgres_url.is_none() {
        return Err(ConfigError::new(
            "postgres_replica_url",
            "replicas need their primary: set postgres_url",
        ));
    }
    let store = StoreConfig {
        pool_size: s.db_pool_size.get(),
        checkout_timeout: s.db_checkout_timeout.0,
        connect_timeout: s.db_connect_timeout.0,
        statement_timeout: s.db_statement_timeout.0,
        pipeline_depth: s.db_pipeline_depth.get(),
        ca: s.postgres_ca.clone().map(|ca| ca.0),
        pooler: s.db_pooler,
        replica_urls,
        replica_max_lag: s.replica_max_lag.0,
    };
    Ok((postgres_url, store))
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

/// The gRPC listener's TLS: certificate and key together, a client CA only with them, and
/// only on TCP.
pub(super) fn listener_tls(s: &Settings) -> Result<Option<TlsConfig>, ConfigError> {
    match (&s.tls_cert, &s.tls_key, &s.tls_client_ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), client_ca) => {
            if matches!(s.grpc_listen, ListenAddr::Unix(_)) {
                return Err(ConfigError::new(
                    "tls_cert",
                    "TLS is for TCP listeners; a unix socket is protected by its file mode",
                ));
            }
            Ok(Some(TlsConfig {
                cert: cert.0.clone(),
                key: key.0.clone(),
                client_ca: client_ca.as_ref().map(|ca| ca.0.clone()),
            }))
        }
        (None, _, Some(_)) => Err(ConfigError::new(
            "tls_client_ca",
            "needs tls_cert and tls_key",
        )),
        (Some(_), None, _) => Err(ConfigError::new("tls_key", "tls_cert needs tls_key")),
        (None, Some(_), _) => Err(ConfigError::new("tls_cert", "tls_key needs tls_cert")),
    }
}

/// Every listener's caps, deadlines and sizes.
pub(super) fn connection_limits(s: &Settings) -> crate::listen::ConnectionLimits {
    crate::listen::ConnectionLimits {
        handshake_timeout: s.conn_handshake_timeout.0,
        idle_timeout: s.conn_idle_timeout.0,
        max_connections: s.max_connections.filter(|n| *n > 0),
        max_connections_per_source: s.max_connections_per_source.filter(|n| *n > 0),
        admin_max_connections: s.admin_max_connections.get(),
        header_read_timeout: s.http_header_read_timeout.0,
        body_read_timeout: s.http_body_read_timeout.0,
        max_body_bytes: s.http_max_body_size.get(),
        max_message_bytes: s.grpc_max_message_size.get(),
        max_concurrent_streams: s.grpc_max_concurrent_streams.get(),
        keepalive_interval: s.grpc_keepalive_interval.0,
        keepalive_timeout: s.grpc_keepalive_timeout.0,
    }
}

/// AWS trust, and whether documents of any account are accepted (`any`, alone).
pub(super) fn aws_trust(s: &Settings) -> Result<(AwsTrustConfig, bool), ConfigError> {
    let any_account = s
        .aws_allowed_account
        .iter()
        .any(|a| a.0 == values::ANY_ACCOUNT);
    if any_account && s.aws_allowed_account.len() > 1 {
        return Err(ConfigError::new(
            "aws_allowed_account",
            "`any` accepts every account: give it alone, or list the accounts",
        ));
    }
    let trust = AwsTrustConfig {
        signature_certificates: region_files(&s.aws_certificate),
        rsa2048_certificates: region_files(&s.aws_rsa2048_certificate),
        allowed_accounts: s
            .aws_allowed_account
            .iter()
            .map(|a| a.0.clone())
            .filter(|a| a != values::ANY_ACCOUNT)
            .collect(),
    };
    Ok((trust, any_account))
}

fn region_files(files: &[values::RegionFile]) -> Vec<(String, PathBuf)> {
    files
        .iter()
        .map(|f| (f.region.clone(), f.path.clone()))
        .collect()
}

/// Azure trust: replaced roots or intermediates, subscriptions, issuer fetching.
pub(super) fn azure_trust(s: &Settings) -> AzureTrustConfig {
    AzureTrustConfig {
        roots: s.azure_roots.clone().map(|f| f.0),
        intermediates: s.azure_intermediates.clone().map(|f| f.0),
        allowed_subscriptions: trimmed(&s.azure_allowed_subscription),
        fetch_issuers: s.azure_fetch_issuers.0,
    }
}

/// GCP trust: the JWKS, the audience, the projects.
pub(super) fn gcp_trust(s: &Settings) -> GcpConfig {
    GcpConfig {
        jwks: s.gcp_jwks.clone(),
        audience: s.gcp_audience.0.clone(),
        allowed_projects: trimmed(&s.gcp_allowed_project),
    }
}

fn trimmed(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The optional live EC2 and Compute Engine checks and their shared settings.
pub(super) fn live_checks(s: &Settings) -> Result<LiveCheckConfig, ConfigError> {
    if s.aws_ec2_batch_window.0 > Duration::from_secs(1) {
        return Err(ConfigError::new(
            "aws_ec2_batch_window",
            "at most 1s: every first look-up of a batch waits this long",
        ));
    }
    let gcp = match s.gcp_compute_check.0 {
        false => None,
        true => Some(crate::cloud::gcp::GcpCheckConfig {
            endpoint: s.gcp_compute_endpoint.clone().map(|u| u.0),
            credentials: match &s.gcp_compute_credentials {
                Some(path) if !path.is_file() => {
                    return Err(ConfigError::new(
                        "gcp_compute_credentials",
                        format!("{} is not a readable file", path.display()),
                    ));
                }
                other => other.clone(),
            },
        }),
    };
    let aws = s
        .aws_ec2_check
        .0
        .then(|| crate::cloud::aws::AwsCheckConfig {
            endpoint: s.aws_ec2_endpoint.clone().map(|u| u.0),
            assume_roles: s
                .aws_ec2_assume_role
                .iter()
                .map(|r| (r.account.clone(), r.arn.clone()))
                .collect(),
            imds_credentials: s.aws_ec2_imds_credentials.0,
            batch_window: s.aws_ec2_batch_window.0,
        });
    Ok(LiveCheckConfig {
        aws,
        gcp,
        settings: crate::cloud::CheckSettings {
            cache_ttl: s.cloud_check_cache_ttl.0,
            timeout: s.cloud_check_timeout.0,
            on_error: s.cloud_check_on_error,
        },
    })
}
