//! Coder-compatible agent endpoints (DESIGN.md 3.3, contract), so today's Coder agents work
//! unchanged once an ingress routes `/api/v2/workspaceagents/*-instance-identity` here.
//!
//! Same semantics and code path as gRPC: the body becomes an [`AuthRequest`] for
//! [`Authenticator::authenticate`], and [`AuthError`] becomes an HTTP status here, in one place.
//!
//! Body handling: JSON, whatever the `Content-Type` says (Coder reads the body as JSON without
//! looking at the header, and agents send `application/json`); unknown fields are ignored;
//! invalid JSON → 400 "Request body must be valid JSON."; a `Content-Length` over the limit
//! (64 KiB) → 413 at once, before any of the body is read (so no `100 Continue` is sent); a
//! body that does not arrive within the body-read timeout → 408 and the connection closes.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, AuthRequest, Authenticator, Evidence};
use crate::limit::Limiter;

#[derive(Clone)]
struct AgentState {
    auth: Authenticator,
    limiter: Limiter,
    max_body_bytes: usize,
    body_read_timeout: std::time::Duration,
}

pub fn router(
    auth: Authenticator,
    limiter: Limiter,
    limits: crate::listen::ConnectionLimits,
) -> Router {
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
        .with_state(AgentState {
            auth,
            limiter,
            max_body_bytes: limits.max_body_bytes,
            body_read_timeout: limits.body_read_timeout,
        })
}

#[derive(Deserialize)]
pub(crate) struct AwsBody {
    #[serde(default)]
    signature: String,
    #[serde(default)]
    document: String,
    #[serde(default)]
    agent_name: String,
}

#[derive(Deserialize)]
pub(crate) struct AzureBody {
    #[serde(default)]
    signature: String,
    #[serde(default)]
    encoding: String,
    #[serde(default)]
    agent_name: String,
}

#[derive(Deserialize)]
pub(crate) struct GoogleBody {
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

async fn aws(State(state): State<AgentState>, request: Request) -> Response {
    handle(state, request, |b: AwsBody| AuthRequest {
        evidence: Some(Evidence::Aws {
            document: b.document,
            signature: b.signature,
            rsa2048: String::new(),
        }),
        agent_name: b.agent_name,
    })
    .await
}

async fn azure(State(state): State<AgentState>, request: Request) -> Response {
    handle(state, request, |b: AzureBody| AuthRequest {
        evidence: Some(Evidence::Azure {
            signature: b.signature,
            encoding: b.encoding,
        }),
        agent_name: b.agent_name,
    })
    .await
}

async fn google(State(state): State<AgentState>, request: Request) -> Response {
    handle(state, request, |b: GoogleBody| AuthRequest {
        evidence: Some(Evidence::Google {
            json_web_token: b.json_web_token,
        }),
        agent_name: b.agent_name,
    })
    .await
}

async fn handle<B: for<'de> Deserialize<'de>>(
    state: AgentState,
    request: Request,
    into_request: impl FnOnce(B) -> AuthRequest,
) -> Response {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body must be at most {} bytes.",
                state.max_body_bytes
            ),
            String::new(),
        )
    };
    // Judged from the header alone: the body is never polled, so hyper sends no 100 Continue.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > state.max_body_bytes as u64) {
        return close_after(too_large());
    }
    let read = axum::body::to_bytes(request.into_body(), state.max_body_bytes);
    let body = match tokio::time::timeout(state.body_read_timeout, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) if is_length_limit(&e) => return close_after(too_large()),
        Ok(Err(e)) if is_budget_spent(&e) => {
            return close_after(with_retry_after(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is out of memory for new requests; retry.".into(),
                String::new(),
            )));
        }
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Request body could not be read.".into(),
                e.to_string(),
            );
        }
        Err(_) => {
            return close_after(error(
                StatusCode::REQUEST_TIMEOUT,
                "Request body was not received in time.".into(),
                String::new(),
            ));
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
        return to_response(&AuthError::Overloaded);
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

/// Whether reading the body stopped at the size limit (a chunked body over it).
fn is_length_limit(e: &axum::Error) -> bool {
    caused_by(e, |cause| cause.is::<http_body_util::LengthLimitError>())
}

/// Whether reading the body stopped because the memory budget was spent.
fn is_budget_spent(e: &axum::Error) -> bool {
    caused_by(e, |cause| {
        matches!(
            cause.downcast_ref::<crate::listen::BodyError>(),
            Some(crate::listen::BodyError::Spent)
        )
    })
}

/// Whether `e` or any of its causes is `what`.
fn caused_by(e: &axum::Error, what: impl Fn(&(dyn std::error::Error + 'static)) -> bool) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if what(cause) {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The connection closes after this response: the rest of a refused body is never read.
fn close_after(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A use-case error as its HTTP answer, from the error table (DESIGN.md 3.3).
fn to_response(e: &AuthError) -> Response {
    let kind = e.kind();
    let status = StatusCode::from_u16(kind.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let response = error(status, e.message(), String::new());
    if kind.retryable() {
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
