//! The gRPC client behind `authenticate`, `healthcheck` and `demo`.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::grpc::pb;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {0:?}")]
    Address(String),
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("{0}")]
    Status(String),
}

/// Connects to `server` within `timeout`: `http://HOST:PORT`, or `unix:/path` for a server
/// listening on a unix socket.
pub async fn connect(server: &str, timeout: Duration) -> Result<Channel, ClientError> {
    let failed = |e: tonic::transport::Error| ClientError::Connect {
        server: server.to_owned(),
        reason: e.to_string(),
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
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|_| ClientError::Address(server.to_owned()))?
        .connect_timeout(timeout)
        .timeout(timeout);
    endpoint.connect().await.map_err(failed)
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
    let channel = connect(server, timeout).await?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|s| ClientError::Status(describe(&s)))?;
    Ok(response.into_inner().status
        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}
