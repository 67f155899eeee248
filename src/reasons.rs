//! The table of refusal kinds (DESIGN.md 3.1 gRPC, 3.2 metrics, 3.3 HTTP: contract): for each
//! way a login can be refused, its `ErrorInfo` reason, metric outcome, gRPC code and HTTP
//! status. A leaf module: the use case ([`crate::auth::AuthError::kind`]), both transports and
//! the metrics read it; it reads nothing.

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
