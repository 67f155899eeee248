//! GCP instance identity tokens (DESIGN.md section 4, GCP).
//!
//! [`verify`] is pure: an RS256 JWT checked against a given JWKS, audience, issuer, `exp`/`iat`
//! (60 s leeway, against the `now` it is given), the instance-id claim and the project
//! allow-list. [`crate::trust::jwks::Jwks`] holds the keys.

use std::collections::HashSet;

use std::time::SystemTime;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{IdentityError, InstanceId};

/// The issuers Google uses for instance identity tokens.
pub const ISSUERS: &[&str] = &["https://accounts.google.com", "accounts.google.com"];
/// Leeway on `exp` and `iat`.
pub const LEEWAY_SECONDS: i64 = 60;

/// What a verified token says about its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpIdentity {
    pub instance_id: InstanceId,
    pub project_id: String,
    pub zone: String,
    pub instance_name: String,
    pub instance_creation_timestamp: Option<i64>,
}

/// Why a token failed, separating the one failure a fresh JWKS could cure.
#[derive(Debug)]
pub enum GcpFailure {
    UnknownKid(String),
    Invalid(IdentityError),
}

#[derive(Deserialize)]
struct Claims {
    exp: i64,
    iat: i64,
    #[serde(default)]
    google: Option<GoogleClaims>,
}

#[derive(Deserialize)]
struct GoogleClaims {
    #[serde(default)]
    compute_engine: Option<ComputeEngine>,
}

#[derive(Deserialize)]
struct ComputeEngine {
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    project_id: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    instance_name: String,
    #[serde(default)]
    instance_creation_timestamp: Option<i64>,
}

/// The checks besides the keys.
#[derive(Debug, Clone)]
pub struct GcpPolicy {
    pub audience: String,
    pub allowed_projects: HashSet<String>,
}

/// Verifies `token` against `keys` as of `now`.
pub fn verify(
    token: &str,
    keys: &JwkSet,
    policy: &GcpPolicy,
    now: SystemTime,
) -> Result<GcpIdentity, GcpFailure> {
    let invalid = |e: IdentityError| GcpFailure::Invalid(e);
    // `alg: none` and unknown algorithms do not even parse as a header here.
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| invalid(IdentityError::Malformed(format!("JWT header: {e}"))))?;
    if header.alg != Algorithm::RS256 {
        return Err(invalid(IdentityError::Rejected(format!(
            "algorithm {:?} is not RS256",
            header.alg
        ))));
    }
    let kid = header
        .kid
        .ok_or_else(|| invalid(IdentityError::Rejected("JWT has no kid".into())))?;
    let jwk = keys
        .find(&kid)
        .ok_or_else(|| GcpFailure::UnknownKid(kid.clone()))?;
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|e| invalid(IdentityError::NoTrustedKey(format!("JWK {kid}: {e}"))))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&policy.audience]);
    validation.set_issuer(ISSUERS);
    // Time is checked below against `now`, which may be pinned for replays.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| invalid(IdentityError::BadSignature(format!("JWT: {e}"))))?
        .claims;
    let now = super::unix_seconds(now);
    if claims.exp.saturating_add(LEEWAY_SECONDS) < now {
        return Err(invalid(IdentityError::Rejected("token expired".into())));
    }
    if claims.iat.saturating_sub(LEEWAY_SECONDS) > now {
        return Err(invalid(IdentityError::Rejected(
            "token issued in the future".into(),
        )));
    }
    let engine = claims
        .google
        .and_then(|g| g.compute_engine)
        .ok_or_else(|| {
            invalid(IdentityError::Rejected(
                "no google.compute_engine claims (format=full)".into(),
            ))
        })?;
    if !policy.allowed_projects.is_empty() && !policy.allowed_projects.contains(&engine.project_id)
    {
        return Err(invalid(IdentityError::NotAllowed(format!(
            "project {}",
            engine.project_id
        ))));
    }
    let instance_id = InstanceId::new(engine.instance_id).ok_or_else(|| {
        invalid(IdentityError::Rejected(
            "empty instance_id claim, or one with a control character".into(),
        ))
    })?;
    Ok(GcpIdentity {
        instance_id,
        project_id: engine.project_id,
        zone: engine.zone,
        instance_name: engine.instance_name,
        instance_creation_timestamp: engine.instance_creation_timestamp,
    })
}
