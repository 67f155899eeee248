//! Every way a login ends without a token. Each variant maps to its row of the table in
//! [`crate::reasons`] (gRPC code, HTTP status, reason, metric outcome) and to its public
//! message, here and nowhere else: adding a variant does not compile until [`AuthError::kind`]
//! and [`AuthError::message`] map it; gRPC, HTTP, the metric and the log read only these.

use super::go_quote;
use crate::identity::{Cloud, IdentityError, InstanceId};
use crate::reasons::Kind;

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
    /// The database could not answer: unavailable or busy (retry later), or failing
    /// (internal), as the store said, with its causes.
    #[error(transparent)]
    Database(crate::store::StoreError),
    #[error("{0} trust material is not available yet")]
    TrustUnavailable(Cloud),
    #[error("cloud API check")]
    CloudApiUnavailable(#[source] crate::cloud::CloudError),
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
            AuthError::Database(crate::store::StoreError::Internal { .. }) => Kind::INTERNAL,
            AuthError::Database(_) => Kind::DATABASE_UNAVAILABLE,
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
            AuthError::Database(crate::store::StoreError::Internal { .. }) => {
                "Internal error.".into()
            }
            AuthError::Database(_) => "The database is unavailable. Retry later.".into(),
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
