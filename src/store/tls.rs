//! TLS to PostgreSQL, with libpq's meaning of `sslmode` and `sslrootcert` in the URL or
//! key=value string (tokio-postgres itself knows only `disable`, `prefer` and `require`, and
//! no `sslrootcert`; [`target`] takes both out and carries them out here):
//! - `disable`: plaintext;
//! - `prefer` (the default) and `require`: encrypted (when offered / always), the server
//!   certificate not verified, as libpq does; with a CA (`sslrootcert` or `--postgres-ca`)
//!   the certificate must chain to it and match the host name, as before;
//! - `verify-ca`: TLS always, the certificate must chain to the CA (host name not checked);
//! - `verify-full`: TLS always, chain and host name. Both need a CA.
//!
//! An unverified connection to a database that is not on loopback or a unix socket is warned
//! about once at start-up. PostgreSQL never uses TLS on a unix socket, so the embedded database
//! is unaffected.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::url::{PostgresUrl, SslMode};
use super::{Cause, StoreError};

/// Where and how to connect.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// Whether the server's certificate is verified.
    pub verified: bool,
}

/// The settings and TLS connector for `url`; `ca` is `--postgres-ca` (the URL's
/// `sslrootcert` wins).
pub fn target(url: &PostgresUrl, ca: Option<&Path>) -> Result<Target, StoreError> {
    let parsed = url.parsed().clone();
    let root = parsed.root_cert.as_deref().or(ca);
    let mut config = parsed.config;
    let (ssl_mode, check) = match (parsed.mode, root) {
        (SslMode::Disable, _) => (tokio_postgres::config::SslMode::Disable, Check::None),
        (SslMode::Prefer, None) => (tokio_postgres::config::SslMode::Prefer, Check::None),
        (SslMode::Require, None) => (tokio_postgres::config::SslMode::Require, Check::None),
        (SslMode::Prefer, Some(root)) => {
            (tokio_postgres::config::SslMode::Prefer, Check::Full(root))
        }
        (SslMode::Require | SslMode::VerifyFull, Some(root)) => {
            (tokio_postgres::config::SslMode::Require, Check::Full(root))
        }
        (SslMode::VerifyCa, Some(root)) => {
            (tokio_postgres::config::SslMode::Require, Check::Chain(root))
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(StoreError::internal(
                "sslmode=verify-ca and verify-full need a CA: add sslrootcert=FILE to the URL or pass --postgres-ca",
            ));
        }
    };
    config.ssl_mode(ssl_mode);
    let verified =
        !matches!(check, Check::None) && ssl_mode != tokio_postgres::config::SslMode::Disable;
    Ok(Target {
        config,
        tls: build(check)?,
        verified,
    })
}

/// Logs one warning when the database is reached over a network without a verified
/// certificate (loopback and unix sockets are exempt).
pub fn warn_if_unverified(config: &tokio_postgres::Config, verified: bool) {
    let remote = unverified_remote_hosts(config, verified);
    if !remote.is_empty() {
        tracing::warn!(
            hosts = remote.join(","),
            "the database's TLS certificate is not verified: an attacker on the network could \
             impersonate it; set sslmode=verify-full and sslrootcert (or --postgres-ca)"
        );
    }
}

/// The hosts reached over a network without a verified certificate.
fn unverified_remote_hosts(config: &tokio_postgres::Config, verified: bool) -> Vec<String> {
    use tokio_postgres::config::Host;
    if verified {
        return Vec::new();
    }
    config
        .get_hosts()
        .iter()
        .filter_map(|host| match host {
            Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What the connector checks of the server's certificate.
enum Check<'a> {
    None,
    Chain(&'a Path),
    Full(&'a Path),
}

/// The connector for connections outside the pool's settings (tests, bench): verify-full with
/// `ca`, else unverified TLS when offered.
pub fn connector(ca: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    build(ca.map_or(Check::None, Check::Full))
}

fn build(check: Check<'_>) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::internal_by("TLS setup", e))?;
    let roots = |path: &Path| -> Result<rustls::RootCertStore, StoreError> {
        use rustls::pki_types::pem::PemObject as _;
        let bad = |e: Cause| StoreError::internal_by(path.display().to_string(), e);
        let pem = std::fs::read(path).map_err(|e| bad(e.into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(certificate.map_err(|e| bad(e.into()))?)
                .map_err(|e| bad(e.into()))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        Ok(roots)
    };
    let config = match check {
        Check::Full(path) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
        Check::Chain(path) => {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(path)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| StoreError::internal_by("TLS setup", e))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    provider,
                    chain: Some(webpki),
                }))
                .with_no_client_auth()
        }
        Check::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient {
                provider,
                chain: None,
            }))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// Below libpq's `verify-full`: with `chain` (`verify-ca`) the certificate must chain to the CA
/// but its host name is not checked; without (`prefer`/`require`) any certificate is accepted,
/// which protects from passive eavesdropping, not from an active attacker. Either way the
/// handshake signatures are checked with the provider's algorithms.
#[derive(Debug)]
struct Lenient {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::url::parse;
    use super::*;

    fn remote(url: &str, verified: bool) -> Vec<String> {
        let config = parse(url).map(|p| p.config).unwrap_or_default();
        unverified_remote_hosts(&config, verified)
    }

    #[test]
    fn only_unverified_connections_over_a_network_are_warned_about() {
        assert_eq!(
            remote("postgres://u@db.example.com/d", false),
            ["db.example.com"]
        );
        assert!(remote("postgres://u@db.example.com/d", true).is_empty());
        for local in [
            "postgres://u@localhost/d",
            "postgres://u@127.0.0.1/d",
            "postgres://u@[::1]/d",
            "host=/var/run/postgresql dbname=d",
        ] {
            assert!(remote(local, false).is_empty(), "{local}");
        }
    }

    #[test]
    fn unknown_sslmodes_are_refused() {
        assert!(parse("postgres://u@h/d?sslmode=maybe").is_err());
        assert!(parse("postgres://u@h/d?sslmode=verify-ca").is_ok());
    }
}
