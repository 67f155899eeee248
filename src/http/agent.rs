//! Coder-compatible agent endpoints (DESIGN.md 3.3, contract), so today's Coder agents work
//! unchanged once an ingress routes `/api/v2/workspaceagents/*-instance-identity` here.
//!
//! Same semantics and code path as gRPC: the body becomes an [`AuthRequest`] for
//! [`Authenticator::authenticate`], and [`AuthError`] becomes an HTTP status here, in one place.
//!
//! Body handling: JSON, whatever the `Content-Type` says (Coder reads the body as JSON without
//! looking at the header, and agents send `application/json`); unknown fields are ignored;
//! invalid JSON → 400 "Request body must be valid JSON."; a body over 64 KiB → 413.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, AuthRequest, Authenticator, Evidence};
use crate::limit::Limiter;

/// The largest accepted body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct AgentState {
    auth: Authenticator,
    limiter: Limiter,
}

pub fn router(auth: Authenticator, limiter: Limiter) -> Router {
    Router::new()
        .route("/api/v2/workspaceagents/aws-instance-identity", post(aws))
        .route(
            "/api/v2/workspaceagents/azure-instance-identity",
            post(azure),
        )
        .route(
            "/api/v2/workspaceagents/google-instance-identity",
            post(google),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AgentState { auth, limiter })
}

#[derive(Deserialize)]
struct AwsBody {
    #[serde(default)]
    signature: String,
    #[serde(default)]
    document: String,
    #[serde(default)]
    agent_name: String,
}

#[derive(Deserialize)]
struct AzureBody {
    #[serde(default)]
    signature: String,
    #[serde(default)]
    encoding: String,
    #[serde(default)]
    agent_name: String,
}

#[derive(Deserialize)]
struct GoogleBody {
    #[serde(default)]
    json_web_token: String,
    #[serde(default)]
    agent_name: String,
}

/// `codersdk.Response`: `detail` is left out when empty.
#[derive(Serialize)]
struct ErrorBody {
    message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    detail: String,
}

#[derive(Serialize)]
struct TokenBody {
    session_token: String,
}

async fn aws(State(state): State<AgentState>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, body, |b: AwsBody| AuthRequest {
        evidence: Some(Evidence::Aws {
            document: b.document,
            signature: b.signature,
            rsa2048: String::new(),
        }),
        agent_name: b.agent_name,
    })
    .await
}

async fn azure(State(state): State<AgentState>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, body, |b: AzureBody| AuthRequest {
        evidence: Some(Evidence::Azure {
            signature: b.signature,
            encoding: b.encoding,
        }),
        agent_name: b.agent_name,
    })
    .await
}

async fn google(State(state): State<AgentState>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, body, |b: GoogleBody| AuthRequest {
        evidence: Some(Evidence::Google {
            json_web_token: b.json_web_token,
        }),
        agent_name: b.agent_name,
    })
    .await
}

async fn handle<B: for<'de> Deserialize<'de>>(
    state: AgentState,
    body: Result<Bytes, BytesRejection>,
    into_request: impl FnOnce(B) -> AuthRequest,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body must be at most {MAX_BODY_BYTES} bytes."),
                String::new(),
            );
        }
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Request body could not be read.".into(),
                rejection.body_text(),
            );
        }
    };
    let parsed: B = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Request body must be valid JSON.".into(),
                e.to_string(),
            );
        }
    };
    let Some(_permit) = state.limiter.try_acquire() else {
        return with_retry_after(error(
            StatusCode::TOO_MANY_REQUESTS,
            "The server is overloaded. Retry later.".into(),
            String::new(),
        ));
    };
    match state.auth.authenticate(into_request(parsed)).await {
        Ok(authenticated) => (
            StatusCode::OK,
            axum::Json(TokenBody {
                session_token: authenticated.agent.token.expose(),
            }),
        )
            .into_response(),
        Err(e) => to_response(&e),
    }
}

/// The one mapping of use-case errors to HTTP (DESIGN.md 3.3).
fn to_response(e: &AuthError) -> Response {
    let status = match e {
        AuthError::Malformed(_) | AuthError::NotLatestBuild { .. } => StatusCode::BAD_REQUEST,
        AuthError::InvalidIdentity { .. } => StatusCode::UNAUTHORIZED,
        AuthError::InstanceNotFound { .. } | AuthError::AgentNameNotFound { .. } => {
            StatusCode::NOT_FOUND
        }
        AuthError::AmbiguousAgent { .. } => StatusCode::CONFLICT,
        AuthError::DatabaseUnavailable(_)
        | AuthError::TrustUnavailable(_)
        | AuthError::CloudApiUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let response = error(status, e.message(), String::new());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        with_retry_after(response)
    } else {
        response
    }
}

fn error(status: StatusCode, message: String, detail: String) -> Response {
    (status, axum::Json(ErrorBody { message, detail })).into_response()
}

fn with_retry_after(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
