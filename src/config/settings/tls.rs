//! The "gRPC TLS" group of [`super::Settings`] and its conversion (`TlsSettings::config`, the gRPC
//! listener's `TlsConfig`).

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::super::error::ConfigError;
use super::super::values::ExistingFile;
use super::super::values::ListenAddr;

/// TLS on the gRPC listener.
#[derive(Clone, Args, Serialize, Deserialize)]
pub struct TlsSettings {
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
}

/// `--tls-cert`, `--tls-key`, `--tls-client-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, callers must present a certificate signed by it.
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// The gRPC listener's TLS: certificate and key together, a client CA only with them, and
    /// only on TCP.
    pub fn config(&self, grpc_listen: &ListenAddr) -> Result<Option<TlsConfig>, ConfigError> {
        match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), client_ca) => {
                if matches!(grpc_listen, ListenAddr::Unix(_)) {
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
}
