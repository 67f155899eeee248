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

/// Connects to `server` (e.g. `http://127.0.0.1:50051`) within `timeout`.
pub async fn connect(server: &str, timeout: Duration) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|_| ClientError::Address(server.to_owned()))?
        .connect_timeout(timeout)
        .timeout(timeout);
    endpoint.connect().await.map_err(|e| ClientError::Connect {
        server: server.to_owned(),
        reason: e.to_string(),
    })
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
