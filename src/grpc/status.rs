//! The one place where errors become gRPC statuses (DESIGN.md 3.1, contract).
//! Each status carries a `google.rpc.ErrorInfo` with domain `agent-auth` and the reason code.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "agent-auth";

fn with_reason(code: Code, message: String, reason: &str) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new()),
    )
}

/// INVALID_ARGUMENT / MALFORMED_REQUEST, for shape errors found outside the use case.
pub fn malformed(what: &str) -> Status {
    to_status(&AuthError::Malformed(what.to_owned()))
}

/// RESOURCE_EXHAUSTED / OVERLOADED.
pub fn overloaded() -> Status {
    with_reason(
        Code::ResourceExhausted,
        "The server is overloaded. Retry later.".into(),
        "OVERLOADED",
    )
}

/// Maps a use-case error to its status. Internals (verifier causes, SQL errors) stay in logs.
pub fn to_status(error: &AuthError) -> Status {
    let code = match error {
        AuthError::Malformed(_) => Code::InvalidArgument,
        AuthError::InvalidIdentity { .. } => Code::Unauthenticated,
        AuthError::InstanceNotFound { .. } | AuthError::AgentNameNotFound { .. } => Code::NotFound,
        AuthError::AmbiguousAgent { .. }
        | AuthError::InstanceConflict { .. }
        | AuthError::NotLatestBuild { .. } => Code::FailedPrecondition,
        AuthError::DatabaseUnavailable(_)
        | AuthError::TrustUnavailable(_)
        | AuthError::CloudApiUnavailable(_) => Code::Unavailable,
        AuthError::Internal(_) => Code::Internal,
    };
    with_reason(code, error.message(), error.reason())
}
