//! The gRPC client behind `authenticate`, `healthcheck` and `demo`.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::grpc::pb;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {0}")]
    Address(String),
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("{0}")]
    Status(String),
}

/// Client TLS: the CA that signed the server, and optionally a client identity for mTLS.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub domain: Option<String>,
}

impl ClientTls {
    /// From the client commands' flags; `None` without `--tls-ca`.
    pub fn from_args(args: &crate::cli::ClientTlsArgs) -> Result<Option<Self>, ClientError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ClientError::Address(format!("{}: {e}", p.display())))
        };
        let Some(ca) = &args.tls_ca else {
            return Ok(None);
        };
        let identity_pem = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        Ok(Some(Self {
            ca_pem: read(ca)?,
            identity_pem,
            domain: args.tls_domain.clone(),
        }))
    }
}

/// Connects to `server` within `timeout`: `http://HOST:PORT`, or `unix:/path` for a server
/// listening on a unix socket.
pub async fn connect(server: &str, timeout: Duration) -> Result<Channel, ClientError> {
    connect_with(server, timeout, None).await
}

/// As [`connect`], over TLS when `tls` is given (`https://HOST:PORT`).
pub async fn connect_with(
    server: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<Channel, ClientError> {
    let failed = |e: tonic::transport::Error| ClientError::Connect {
        server: server.to_owned(),
        reason: cause(&e, timeout),
    };
    if let Some(path) = server.strip_prefix("unix:") {
        let path = std::path::PathBuf::from(path);
        // The URI is required by the API but unused: every connection goes to the socket.
        let endpoint = Endpoint::from_static("http://localhost")
            .connect_timeout(timeout)
            .timeout(timeout);
        return endpoint
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
            .await
            .map_err(failed);
    }
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(ClientError::Address(format!(
            "{server:?}: no scheme: use http://HOST:PORT (https:// with --tls-ca) or unix:/PATH"
        )));
    }
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| ClientError::Address(format!("{server:?}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(tls) = tls {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity_pem {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(config).map_err(failed)?;
    }
    endpoint.connect().await.map_err(failed)
}

/// Why a connection failed, in words an operator acts on: the innermost cause (refused, timed
/// out, no such socket file, a TLS failure), not the transport's "transport error".
fn cause(error: &tonic::transport::Error, timeout: Duration) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        if let Some(io) = source.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused: nothing listens there (is the server running, on this \
                     address?)"
                        .into()
                }
                std::io::ErrorKind::TimedOut => format!("no answer within {timeout:?}"),
                std::io::ErrorKind::NotFound => {
                    "no such socket file (is the server running, with this --grpc-listen?)".into()
                }
                _ => io.to_string(),
            };
        }
        innermost = source;
    }
    if innermost.to_string().contains("elapsed") {
        return format!("no answer within {timeout:?}");
    }
    innermost.to_string()
}

/// Sends one `Authenticate`.
pub async fn authenticate(
    channel: Channel,
    request: pb::AuthenticateRequest,
) -> Result<pb::AuthenticateResponse, tonic::Status> {
    let mut client = pb::agent_auth_client::AgentAuthClient::new(channel);
    client
        .authenticate(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Describes a failed status on one line: code, reason and message.
pub fn describe(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    format!("{:?} [{}] {}", status.code(), reason, status.message())
}

/// Asks the health service about `service` ("" for the whole server); true when SERVING.
pub async fn is_serving(
    server: &str,
    service: &str,
    timeout: Duration,
) -> Result<bool, ClientError> {
    is_serving_with(server, service, timeout, None).await
}

/// As [`is_serving`], over TLS when `tls` is given.
pub async fn is_serving_with(
    server: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<bool, ClientError> {
    let channel = connect_with(server, timeout, tls).await?;
    check_serving(channel, service)
        .await
        .map_err(|s| ClientError::Status(describe(&s)))
}

/// Asks the health service on an open `channel` about `service`; true when SERVING.
pub async fn check_serving(channel: Channel, service: &str) -> Result<bool, tonic::Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status
        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}

/// The evidence named by `agent-auth authenticate`'s file flags.
pub fn identity_from_files(
    args: &crate::cli::AuthenticateArgs,
) -> Result<pb::authenticate_request::Identity, String> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    (|| -> Result<pb::authenticate_request::Identity, String> {
        use pb::authenticate_request::Identity;
        if let Some(document) = &args.aws_document {
            return Ok(Identity::Aws(pb::AwsInstanceIdentity {
                document: read(document)?,
                signature: args
                    .aws_signature
                    .as_deref()
                    .map(read)
                    .transpose()?
                    .unwrap_or_default(),
                rsa2048: args
                    .aws_rsa2048
                    .as_deref()
                    .map(read)
                    .transpose()?
                    .unwrap_or_default(),
            }));
        }
        if let Some(token) = &args.gcp_token {
            return Ok(Identity::Google(pb::GoogleInstanceIdentity {
                json_web_token: read(token)?.trim().to_owned(),
            }));
        }
        if let Some(signature) = &args.azure_signature {
            return Ok(Identity::Azure(pb::AzureInstanceIdentity {
                signature: read(signature)?,
                encoding: "pkcs7".into(),
            }));
        }
        Err("give --aws-document with --aws-signature or --aws-rsa2048, --gcp-token, or --azure-signature".into())
    })()
}
