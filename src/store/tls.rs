//! TLS to PostgreSQL, with libpq's meaning of `sslmode` (tokio-postgres knows `disable`,
//! `prefer` — the default — and `require`):
//! - without `--postgres-ca`, the connection is encrypted when the server offers TLS, but the
//!   server certificate is not verified (libpq's `prefer`/`require` do not verify either), so a
//!   server with a self-signed certificate keeps working as it did over plaintext;
//! - with `--postgres-ca FILE`, the certificate must chain to that CA and match the host name
//!   (libpq's `verify-full`).
//!
//! PostgreSQL never uses TLS on a unix socket, so the embedded database is unaffected.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// The connector for every connection the service opens (pool, migrations, schema check).
pub fn connector(ca: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Internal(format!("TLS setup: {e}")))?;
    let config = match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| StoreError::Internal(format!("{}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
                let certificate = certificate
                    .map_err(|e| StoreError::Internal(format!("{}: {e}", path.display())))?;
                roots
                    .add(certificate)
                    .map_err(|e| StoreError::Internal(format!("{}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// Accepts any server certificate but still checks the handshake signatures, which is what
/// libpq does below `verify-ca`: protection from passive eavesdropping, not from an active
/// attacker. Operators who need more pass `--postgres-ca`.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
