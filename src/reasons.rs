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

    /// Whether a client should retry later (HTTP adds `Retry-After`).
    pub fn retryable(&self) -> bool {
        matches!(
            self.grpc,
            GrpcCode::Unavailable | GrpcCode::ResourceExhausted
        )
    }
}

/// Declares the rows as constants of [`Kind`] and [`Kind::ALL`] from one list, so a row cannot
/// be left out of `ALL` (the metrics' outcome labels and the distinctness test read it).
macro_rules! kinds {
    ($($(#[$meta:meta])* $name:ident = $value:expr;)*) => {
        impl Kind {
            $($(#[$meta])* pub const $name: Kind = $value;)*

            /// Every row, in the order declared.
            pub const ALL: &'static [Kind] = &[$(Kind::$name),*];
        }
    };
}

kinds! {
    MALFORMED_REQUEST = Kind::new(
        "MALFORMED_REQUEST",
        "malformed_request",
        GrpcCode::InvalidArgument,
        400,
    );
    INVALID_IDENTITY = Kind::new(
        "INVALID_IDENTITY",
        "invalid_identity",
        GrpcCode::Unauthenticated,
        401,
    );
    INSTANCE_NOT_FOUND = Kind::new(
        "INSTANCE_NOT_FOUND",
        "instance_not_found",
        GrpcCode::NotFound,
        404,
    );
    AGENT_NAME_NOT_FOUND = Kind::new(
        "AGENT_NAME_NOT_FOUND",
        "agent_name_not_found",
        GrpcCode::NotFound,
        404,
    );
    AMBIGUOUS_AGENT = Kind::new(
        "AMBIGUOUS_AGENT",
        "ambiguous_agent",
        GrpcCode::FailedPrecondition,
        409,
    );
    /// Coder answers 400 here, and agents rely on it.
    NOT_LATEST_BUILD = Kind::new(
        "NOT_LATEST_BUILD",
        "not_latest_build",
        GrpcCode::FailedPrecondition,
        400,
    );
    DATABASE_UNAVAILABLE = Kind::new(
        "DATABASE_UNAVAILABLE",
        "database_unavailable",
        GrpcCode::Unavailable,
        503,
    );
    TRUST_UNAVAILABLE = Kind::new(
        "TRUST_UNAVAILABLE",
        "trust_unavailable",
        GrpcCode::Unavailable,
        503,
    );
    CLOUD_API_UNAVAILABLE = Kind::new(
        "CLOUD_API_UNAVAILABLE",
        "cloud_api_unavailable",
        GrpcCode::Unavailable,
        503,
    );
    INTERNAL = Kind::new("INTERNAL", "internal", GrpcCode::Internal, 500);
    OVERLOADED = Kind {
        counted: false,
        ..Kind::new("OVERLOADED", "overloaded", GrpcCode::ResourceExhausted, 429)
    };
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
