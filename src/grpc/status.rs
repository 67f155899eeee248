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
    to_status(&AuthError::Overloaded)
}

/// Maps an error to its status from the error table. Internals (verifier causes, SQL errors)
/// stay in logs.
pub fn to_status(error: &AuthError) -> Status {
    let kind = error.kind();
    with_reason(
        Code::from_i32(kind.grpc as i32),
        error.message(),
        kind.reason,
    )
}
