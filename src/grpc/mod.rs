//! gRPC: the only module naming tonic and prost types.
//!
//! - [`pb`]: code generated from `proto/agentauth/v1/agent_auth.proto` (contract).
//! - [`AgentAuthService`]: translates messages to [`crate::auth`] and back, sheds load and
//!   honours the caller's deadline.
//! - [`status`]: the one mapping of errors to status codes and `ErrorInfo` reasons.
//! - [`codec`]: answers INVALID_ARGUMENT for a message that does not decode.
//! - [`routes`]: the listener's services by name, and [`damaged_frames_are_malformed`].

pub mod codec;
pub mod routes;
pub mod status;

use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::auth::{AuthRequest, Authenticated, Authenticator, Evidence};
use crate::identity::Cloud;
use crate::limit::Limiter;
use crate::store::resolve::uuid_text;

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    tonic::include_proto!("agentauth.v1");

    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("agentauth_descriptor");
}

/// The fully-qualified service name, as health checks name it.
pub const SERVICE_NAME: &str = "agentauth.v1.AgentAuth";

/// `agentauth.v1.AgentAuth`.
#[derive(Clone)]
pub struct AgentAuthService {
    auth: Authenticator,
    limiter: Limiter,
}

impl AgentAuthService {
    pub fn new(auth: Authenticator, limiter: Limiter) -> Self {
        Self { auth, limiter }
    }

    /// The tonic service; a request message over `max_message_bytes` is refused from its
    /// length prefix (OUT_OF_RANGE), before it is buffered.
    pub fn into_server(
        self,
        max_message_bytes: usize,
    ) -> pb::agent_auth_server::AgentAuthServer<Self> {
        pb::agent_auth_server::AgentAuthServer::new(self)
            .max_decoding_message_size(max_message_bytes)
    }
}

/// What tonic answers itself, before our codec sees a message, when a request's frames are
/// damaged: a frame cut short by the end of the stream, a bad compressed flag. Its INTERNAL
/// would page someone for a caller's mistake.
const TONIC_FRAME_ERRORS: &[&str] = &[
    "Unexpected EOF decoding stream",
    "protocol error: received message with",
    "Error decompressing",
];

/// Applied to every gRPC service's answer ([`routes`]): tonic's own INTERNAL for a damaged
/// request frame becomes INVALID_ARGUMENT with reason MALFORMED_REQUEST, as any malformed
/// request does (DESIGN.md 3.1). Other responses pass untouched (a success carries no
/// `grpc-status` header).
pub fn damaged_frames_are_malformed(
    response: tonic::codegen::http::Response<tonic::body::Body>,
) -> tonic::codegen::http::Response<tonic::body::Body> {
    match Status::from_header_map(response.headers()) {
        Some(status)
            if status.code() == tonic::Code::Internal
                && TONIC_FRAME_ERRORS
                    .iter()
                    .any(|prefix| status.message().starts_with(prefix)) =>
        {
            tracing::debug!(error = status.message(), "damaged request frame");
            status::malformed("the request's gRPC frame is cut short or damaged").into_http()
        }
        _ => response,
    }
}

#[tonic::async_trait]
impl pb::agent_auth_server::AgentAuth for AgentAuthService {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let Some(_permit) = self.limiter.try_acquire() else {
            return Err(status::overloaded());
        };
        // tonic's transport also enforces `grpc-timeout`, but answers CANCELLED; finishing a
        // little earlier lets the caller see DEADLINE_EXCEEDED, as gRPC specifies.
        let span = tracing::info_span!(
            "agentauth.v1.AgentAuth/Authenticate",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = SERVICE_NAME,
            rpc.method = "Authenticate",
        );
        if crate::telemetry::traces_exported() {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let _ = span.set_parent(remote_context(request.metadata()));
        }
        let deadline = grpc_timeout(request.metadata())
            .map(|limit| limit.saturating_sub((limit / 20).min(Duration::from_millis(20))));
        let work = tracing::Instrument::instrument(
            self.auth
                .authenticate(into_auth_request(request.into_inner())),
            span,
        );
        let result = match deadline {
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(result) => result,
                Err(_) => return Err(Status::deadline_exceeded("The deadline expired.")),
            },
            None => work.await,
        };
        match result {
            Ok(authenticated) => Ok(Response::new(into_response(authenticated))),
            Err(e) => Err(status::to_status(&e)),
        }
    }
}

fn into_auth_request(message: pb::AuthenticateRequest) -> AuthRequest {
    use pb::authenticate_request::Identity;
    let evidence = message.identity.map(|identity| match identity {
        Identity::Aws(aws) => Evidence::Aws {
            document: aws.document,
            signature: aws.signature,
            rsa2048: aws.rsa2048,
        },
        Identity::Google(google) => Evidence::Google {
            json_web_token: google.json_web_token,
        },
        Identity::Azure(azure) => Evidence::Azure {
            signature: azure.signature,
            encoding: azure.encoding,
        },
    });
    AuthRequest {
        evidence,
        agent_name: message.agent_name,
    }
}

fn into_response(authenticated: Authenticated) -> pb::AuthenticateResponse {
    let Authenticated {
        cloud,
        instance_id,
        agent,
    } = authenticated;
    pb::AuthenticateResponse {
        session_token: agent.token.expose(),
        agent_id: uuid_text(agent.agent_id),
        agent_name: agent.name,
        workspace_id: uuid_text(agent.workspace_id),
        workspace_build_id: uuid_text(agent.build_id),
        instance_id: instance_id.as_str().to_owned(),
        cloud: match cloud {
            Cloud::Aws => pb::Cloud::Aws,
            Cloud::Google => pb::Cloud::Google,
            Cloud::Azure => pb::Cloud::Azure,
        } as i32,
    }
}

/// Reads the `grpc-timeout` header.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// Parses a `grpc-timeout` value (gRPC over HTTP/2: 1 to 8 ASCII digits and a unit H, M, S,
/// m, u, n); anything else is no deadline.
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Reads W3C trace context from gRPC metadata.
pub struct MetadataExtractor<'a>(pub &'a tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The caller's trace context, from `traceparent`/`tracestate` metadata.
pub fn remote_context(metadata: &tonic::metadata::MetadataMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(metadata))
    })
}

/// gRPC health (`grpc.health.v1`), set for the whole server and the service together; the
/// admin listener's readiness probe drives it.
#[derive(Clone)]
pub struct Health(tonic_health::server::HealthReporter);

impl Health {
    /// The reporter and the service to add to the server.
    pub fn new() -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        (Self(reporter), service)
    }

    /// SERVING or NOT_SERVING, for "" and [`SERVICE_NAME`].
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        for service in ["", SERVICE_NAME] {
            self.0.set_service_status(service, status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().ok()?);
        grpc_timeout(&metadata)
    }

    #[test]
    fn grpc_timeout_units_parse() {
        assert_eq!(timeout_of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout_of("150m"), Some(Duration::from_millis(150)));
        assert_eq!(timeout_of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout_of("5x"), None);
        assert_eq!(timeout_of("S"), None);
        assert_eq!(timeout_of("+5S"), None);
        assert_eq!(timeout_of("123456789S"), None);
    }
}
