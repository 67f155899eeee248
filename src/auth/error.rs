//! Every way a login ends without a token, and what each way is to a caller, a transport and a
//! metric, in one table (DESIGN.md 3.1 gRPC, 3.2 metrics, 3.3 HTTP: contract). Adding an
//! [`AuthError`] variant does not compile until [`AuthError::kind`] and
//! [`AuthError::message`] map it; gRPC, HTTP, the metric and the log read only from here.

use super::go_quote;
use crate::identity::{Cloud, IdentityError, InstanceId};

/// gRPC status codes, named here so the table stays free of tonic (`grpc::status` converts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    InvalidArgument = 3,
    NotFound = 5,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// The `google.rpc.ErrorInfo` reason (contract).
    pub reason: &'static str,
    /// The `outcome` label of `agent_auth_authentications_total`: the reason in lower case.
    pub outcome: &'static str,
    pub grpc: GrpcCode,
    /// The Coder-compatible HTTP status.
    pub http: u16,
    /// Whether it is counted as an authentication (an overloaded request never reached one).
    pub counted: bool,
}

impl Kind {
    const fn new(reason: &'static str, outcome: &'static str, grpc: GrpcCode, http: u16) -> Self {
        Self {
            reason,
            outcome,
            grpc,
            http,
            counted: true,
        }
    }

    pub const MALFORMED_REQUEST: Kind = Kind::new(
        "MALFORMED_REQUEST",
        "malformed_request",
        GrpcCode::InvalidArgument,
        400,
    );
    pub const INVALID_IDENTITY: Kind = Kind::new(
        "INVALID_IDENTITY",
        "invalid_identity",
        GrpcCode::Unauthenticated,
        401,
    );
    pub const INSTANCE_NOT_FOUND: Kind = Kind::new(
        "INSTANCE_NOT_FOUND",
        "instance_not_found",
        GrpcCode::NotFound,
        404,
    );
    pub const AGENT_NAME_NOT_FOUND: Kind = Kind::new(
        "AGENT_NAME_NOT_FOUND",
        "agent_name_not_found",
        GrpcCode::NotFound,
        404,
    );
    pub const AMBIGUOUS_AGENT: Kind = Kind::new(
        "AMBIGUOUS_AGENT",
        "ambiguous_agent",
        GrpcCode::FailedPrecondition,
        409,
    );
    /// Coder answers 400 here, and agents rely on it.
    pub const NOT_LATEST_BUILD: Kind = Kind::new(
        "NOT_LATEST_BUILD",
        "not_latest_build",
        GrpcCode::FailedPrecondition,
        400,
    );
    pub const DATABASE_UNAVAILABLE: Kind = Kind::new(
        "DATABASE_UNAVAILABLE",
        "database_unavailable",
        GrpcCode::Unavailable,
        503,
    );
    pub const TRUST_UNAVAILABLE: Kind = Kind::new(
        "TRUST_UNAVAILABLE",
        "trust_unavailable",
        GrpcCode::Unavailable,
        503,
    );
    pub const CLOUD_API_UNAVAILABLE: Kind = Kind::new(
        "CLOUD_API_UNAVAILABLE",
        "cloud_api_unavailable",
        GrpcCode::Unavailable,
        503,
    );
    pub const INTERNAL: Kind = Kind::new("INTERNAL", "internal", GrpcCode::Internal, 500);
    pub const OVERLOADED: Kind = Kind {
        counted: false,
        ..Kind::new("OVERLOADED", "overloaded", GrpcCode::ResourceExhausted, 429)
    };

    /// Every row.
    pub const ALL: [Kind; 11] = [
        Kind::MALFORMED_REQUEST,
        Kind::INVALID_IDENTITY,
        Kind::INSTANCE_NOT_FOUND,
        Kind::AGENT_NAME_NOT_FOUND,
        Kind::AMBIGUOUS_AGENT,
        Kind::NOT_LATEST_BUILD,
        Kind::DATABASE_UNAVAILABLE,
        Kind::TRUST_UNAVAILABLE,
        Kind::CLOUD_API_UNAVAILABLE,
        Kind::INTERNAL,
        Kind::OVERLOADED,
    ];

    /// Whether a client should retry later (HTTP adds `Retry-After`).
    pub fn retryable(&self) -> bool {
        matches!(
            self.grpc,
            GrpcCode::Unavailable | GrpcCode::ResourceExhausted
        )
    }
}

/// Every way an authentication can fail. `message()` is what the caller may see.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("invalid {cloud} identity: {cause}")]
    InvalidIdentity { cloud: Cloud, cause: IdentityError },
    #[error("instance not found")]
    InstanceNotFound { instance_id: InstanceId },
    #[error("agent name not found")]
    AgentNameNotFound {
        instance_id: InstanceId,
        name: String,
    },
    #[error("ambiguous agent")]
    AmbiguousAgent {
        instance_id: InstanceId,
        names: Vec<String>,
    },
    /// The instance id is on the latest build of more than one live workspace: a VM belongs to
    /// one workspace, so no token is ever handed out for it (DESIGN.md 2).
    #[error("instance claimed by workspaces {}", workspaces.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", "))]
    InstanceConflict {
        instance_id: InstanceId,
        workspaces: Vec<uuid::Uuid>,
    },
    #[error("not on the latest build")]
    NotLatestBuild { instance_id: InstanceId },
    #[error("{0}")]
    DatabaseUnavailable(String),
    #[error("{0} trust material is not available yet")]
    TrustUnavailable(Cloud),
    #[error("cloud API check: {0}")]
    CloudApiUnavailable(String),
    #[error("internal: {0}")]
    Internal(String),
    /// Shed by the process-wide concurrency limit before the use case ran (the transports
    /// answer it; the use case never returns it).
    #[error("overloaded")]
    Overloaded,
}

impl AuthError {
    /// This error's row of the table.
    pub fn kind(&self) -> Kind {
        match self {
            AuthError::Malformed(_) => Kind::MALFORMED_REQUEST,
            AuthError::InvalidIdentity { .. } => Kind::INVALID_IDENTITY,
            AuthError::InstanceNotFound { .. } => Kind::INSTANCE_NOT_FOUND,
            AuthError::AgentNameNotFound { .. } => Kind::AGENT_NAME_NOT_FOUND,
            // One VM claimed by two workspaces is, to the caller, an ambiguity it cannot fix by
            // naming an agent; the log says which workspaces.
            AuthError::AmbiguousAgent { .. } | AuthError::InstanceConflict { .. } => {
                Kind::AMBIGUOUS_AGENT
            }
            AuthError::NotLatestBuild { .. } => Kind::NOT_LATEST_BUILD,
            AuthError::DatabaseUnavailable(_) => Kind::DATABASE_UNAVAILABLE,
            AuthError::TrustUnavailable(_) => Kind::TRUST_UNAVAILABLE,
            AuthError::CloudApiUnavailable(_) => Kind::CLOUD_API_UNAVAILABLE,
            AuthError::Internal(_) => Kind::INTERNAL,
            AuthError::Overloaded => Kind::OVERLOADED,
        }
    }

    /// The caller-visible message. Verifier and database internals never appear here.
    pub fn message(&self) -> String {
        match self {
            AuthError::Malformed(what) => format!("Malformed request: {what}."),
            AuthError::InvalidIdentity { cloud, .. } => cloud.invalid_identity_message().into(),
            AuthError::InstanceNotFound { instance_id } => {
                format!(
                    "Instance with id {} not found.",
                    go_quote(instance_id.as_str())
                )
            }
            AuthError::AgentNameNotFound { instance_id, name } => format!(
                "No agent found with instance ID {} and name {}.",
                go_quote(instance_id.as_str()),
                go_quote(name)
            ),
            AuthError::AmbiguousAgent { instance_id, names } => format!(
                "Multiple agents found with instance ID {}. Set CODER_AGENT_NAME to one of: {}",
                go_quote(instance_id.as_str()),
                names.join(", ")
            ),
            AuthError::InstanceConflict { instance_id, .. } => format!(
                "Instance ID {} is claimed by more than one workspace.",
                go_quote(instance_id.as_str())
            ),
            AuthError::NotLatestBuild { instance_id } => format!(
                "Resource found for id {}, but isn't registered on the latest history.",
                go_quote(instance_id.as_str())
            ),
            AuthError::DatabaseUnavailable(_) => "The database is unavailable. Retry later.".into(),
            AuthError::TrustUnavailable(_) => {
                "The signing keys are not available yet. Retry later.".into()
            }
            AuthError::CloudApiUnavailable(_) => {
                "The cloud API could not confirm the instance. Retry later.".into()
            }
            AuthError::Internal(_) => "Internal error.".into(),
            AuthError::Overloaded => "The server is overloaded. Retry later.".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_distinct_and_its_outcome_is_its_reason_in_lower_case() {
        let mut reasons: Vec<_> = Kind::ALL.iter().map(|k| k.reason).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), Kind::ALL.len());
        for kind in Kind::ALL {
            assert_eq!(kind.outcome, kind.reason.to_ascii_lowercase());
        }
    }
}
