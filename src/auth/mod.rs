//! The use case: check the request's shape, verify the evidence, run the one SQL statement,
//! choose the agent.
//!
//! Ordering rule (DESIGN.md 3.1): the evidence is verified before any database call, so an
//! unverifiable request never costs a query. Transport layers (gRPC, HTTP) only translate their
//! messages into [`AuthRequest`] and [`AuthError`] into their status codes; there is no second
//! implementation of these rules.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::cloud::LiveEvidence;
use crate::identity::aws::{AwsIdentity, AwsProof};
use crate::identity::gcp::{self, GcpFailure, GcpPolicy};
use crate::identity::{Cloud, IdentityError, InstanceId};
use crate::store::{Candidate, Resolution, Store, StoreError};

mod error;
use crate::trust::{TrustSet, TrustStore};
pub use error::AuthError;

/// The largest accepted string field (DESIGN.md 3.1: "a field over 64 KiB" is malformed).
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// Evidence as the caller sent it, not yet checked.
#[derive(Debug, Clone)]
pub enum Evidence {
    Aws {
        document: String,
        signature: String,
        rsa2048: String,
    },
    Google {
        json_web_token: String,
    },
    Azure {
        signature: String,
        encoding: String,
    },
}

/// One authentication request, independent of the transport.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub evidence: Option<Evidence>,
    pub agent_name: String,
}

/// A successful authentication.
pub struct Authenticated {
    pub cloud: Cloud,
    pub instance_id: InstanceId,
    pub agent: Candidate,
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Database(e)
    }
}

/// The trust material of every cloud: the reloadable set, and what never changes at run time.
pub struct Trust {
    /// Pinned keys and certificates; SIGHUP swaps them (see `crate::trust`).
    pub store: Arc<TrustStore>,
    /// Set when `--azure-fetch-issuers` is on.
    pub azure_issuers: Option<crate::issuers::IssuerFetcher>,
    pub gcp_policy: GcpPolicy,
}

/// Verifies evidence and resolves agents. Shared by every transport.
#[derive(Clone)]
pub struct Authenticator {
    trust: Arc<Trust>,
    store: Store,
    /// `--insecure-verify-time`: verify as of this instant instead of now (tests only).
    verify_time: Option<SystemTime>,
    /// `--aws-ec2-check` / `--gcp-compute-check`.
    live: Option<Arc<crate::cloud::LiveChecks>>,
    /// What the primary recently did not find after a replica did not either.
    primary_misses: Arc<PrimaryMisses>,
}

/// How long the primary's "not found" (after a replica's) is trusted without asking again: a
/// workspace created meanwhile logs in at most this much later.
pub const PRIMARY_MISS_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// Instance ids and agent names (of verified evidence only) the primary did not find lately,
/// and whether it was the instance (else the name) it did not find.
type PrimaryMisses = crate::recent::Recent<(String, String, bool)>;

fn primary_miss(instance_id: &str, name: Option<&str>, instance: bool) -> (String, String, bool) {
    (
        instance_id.to_owned(),
        name.unwrap_or_default().to_owned(),
        instance,
    )
}

impl Authenticator {
    /// The primary's remembered miss for this instance and name, as the error it was.
    fn remembered_miss(&self, instance_id: &InstanceId, name: Option<&str>) -> Option<AuthError> {
        if self
            .primary_misses
            .contains(&primary_miss(instance_id.as_str(), name, true))
        {
            return Some(AuthError::InstanceNotFound {
                instance_id: instance_id.clone(),
            });
        }
        let name = name?;
        self.primary_misses
            .contains(&primary_miss(instance_id.as_str(), Some(name), false))
            .then(|| AuthError::AgentNameNotFound {
                instance_id: instance_id.clone(),
                name: name.to_owned(),
            })
    }
}

impl Authenticator {
    pub fn new(trust: Trust, store: Store, verify_time: Option<SystemTime>) -> Self {
        Self {
            trust: Arc::new(trust),
            store,
            verify_time,
            live: None,
            primary_misses: Arc::new(PrimaryMisses::new(4096, PRIMARY_MISS_TTL)),
        }
    }

    /// Turns on the live cloud API checks (when any is configured).
    pub fn with_live_checks(mut self, checks: crate::cloud::LiveChecks) -> Self {
        self.live = checks.enabled().then(|| Arc::new(checks));
        self
    }

    fn now(&self) -> SystemTime {
        self.verify_time.unwrap_or_else(SystemTime::now)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The reloadable trust set.
    pub fn trust(&self) -> &Arc<TrustStore> {
        &self.trust.store
    }

    /// Authenticates one request and logs one line about it (never the evidence or token).
    pub async fn authenticate(&self, request: AuthRequest) -> Result<Authenticated, AuthError> {
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4()
            .simple()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .to_owned();
        let cloud = request.evidence.as_ref().map(evidence_cloud);
        let cloud_label = cloud.map(Cloud::label).unwrap_or("none");
        // Counts and logs the request as `cancelled` if this future is dropped before the
        // answer (the caller went away, or its deadline passed), wherever it was.
        let mut unfinished = Unfinished {
            request_id: &request_id,
            cloud: cloud_label,
            started,
            armed: true,
        };
        let mut instance = String::new();
        let result = self.run(request, &mut instance).await;
        unfinished.armed = false;
        // The reason code (contract) and its metrics label; "ok" on success.
        let (reason, outcome) = match &result {
            Ok(_) => ("", "ok"),
            Err(e) => (e.kind().reason, e.kind().outcome),
        };
        let detail = match &result {
            Err(
                e @ (AuthError::InvalidIdentity { .. }
                | AuthError::InstanceConflict { .. }
                | AuthError::Database(_)
                | AuthError::CloudApiUnavailable(_)
                | AuthError::Internal(_)),
            ) => crate::report::chain(e),
            _ => String::new(),
        };
        record_outcome(
            &request_id,
            cloud_label,
            started,
            outcome,
            reason,
            &instance,
            &detail,
        );
        result
    }

    /// `instance` receives a short hash of the verified instance id, for the log line.
    async fn run(
        &self,
        request: AuthRequest,
        instance: &mut String,
    ) -> Result<Authenticated, AuthError> {
        let name = agent_name(&request.agent_name)?;
        let evidence = request
            .evidence
            .ok_or_else(|| AuthError::Malformed("no identity is set".into()))?;
        let cloud = evidence_cloud(&evidence);
        let verify_started = Instant::now();
        let verified = tracing::Instrument::instrument(
            self.verify(evidence),
            tracing::info_span!("verify", cloud = cloud.label()),
        )
        .await;
        crate::metrics::record_verify(cloud.label(), verify_started.elapsed());
        let (cloud, instance_id, live_evidence) = verified?;
        *instance = short_hash(instance_id.as_str());
        // With read replicas, what the primary did not find a moment ago is answered at once: a
        // replayed document costs neither a replica nor the primary a statement again within
        // [`PRIMARY_MISS_TTL`].
        if self.store.has_replicas()
            && let Some(miss) = self.remembered_miss(&instance_id, name)
        {
            return Err(miss);
        }
        let resolution = self.store.resolve(instance_id.as_str()).await?;
        let on_replica = resolution.on_replica;
        let agent = match select(&instance_id, name, resolution) {
            // A replica may lag: what it did not find, the primary may have (the one case
            // where a login costs two statements). What the primary did not find either is
            // remembered briefly (and answered above before any statement), so a replayed
            // document costs one statement on each per [`PRIMARY_MISS_TTL`], not per request.
            Err(AuthError::InstanceNotFound { .. } | AuthError::AgentNameNotFound { .. })
                if on_replica =>
            {
                let resolution = self.store.resolve_on_primary(instance_id.as_str()).await?;
                match select(&instance_id, name, resolution) {
                    Err(
                        miss @ (AuthError::InstanceNotFound { .. }
                        | AuthError::AgentNameNotFound { .. }),
                    ) => {
                        let instance = matches!(miss, AuthError::InstanceNotFound { .. });
                        self.primary_misses.insert(primary_miss(
                            instance_id.as_str(),
                            name,
                            instance,
                        ));
                        return Err(miss);
                    }
                    other => other?,
                }
            }
            other => other?,
        };
        // Only now, with the evidence verified and the agent chosen, may a login spend cloud
        // API quota: forged and unknown instances never reach this line.
        if let Some(live) = &self.live {
            // Boxed, like every rarely taken await that holds an HTTP client's future: inline,
            // they made every login's future several kilobytes that tonic copies (callgrind).
            tracing::Instrument::instrument(
                Box::pin(live.check(&live_evidence)),
                tracing::info_span!("cloud_check", cloud = cloud.label()),
            )
            .await
            .map_err(|failure| match failure {
                crate::cloud::Failure::Rejected(cause) => AuthError::InvalidIdentity {
                    cloud,
                    cause: IdentityError::NotLive(cause),
                },
                crate::cloud::Failure::Unavailable(cause) => AuthError::CloudApiUnavailable(cause),
            })?;
        }
        Ok(Authenticated {
            cloud,
            instance_id,
            agent,
        })
    }

    /// Verifies the evidence of any cloud: the only step before the database. The whole
    /// request uses one snapshot of the trust set, even if a reload swaps it meanwhile.
    async fn verify(
        &self,
        evidence: Evidence,
    ) -> Result<(Cloud, InstanceId, LiveEvidence), AuthError> {
        let set = self.trust.store.current();
        Ok(match evidence {
            Evidence::Aws {
                document,
                signature,
                rsa2048,
            } => {
                let identity = verify_aws(&set, &document, &signature, &rsa2048)?;
                let live = LiveEvidence::Aws {
                    region: identity.region,
                    account_id: identity.account_id,
                    instance_id: identity.instance_id.as_str().to_owned(),
                    pending_time: identity.pending_time,
                };
                (Cloud::Aws, identity.instance_id, live)
            }
            Evidence::Google { json_web_token } => {
                check_field("json_web_token", &json_web_token, true)?;
                let identity = self.verify_gcp(&set, json_web_token.trim()).await?;
                let live = LiveEvidence::Gcp {
                    project_id: identity.project_id,
                    zone: identity.zone,
                    instance_name: identity.instance_name,
                    instance_id: identity.instance_id.as_str().to_owned(),
                    instance_creation_timestamp: identity.instance_creation_timestamp,
                };
                (Cloud::Google, identity.instance_id, live)
            }
            Evidence::Azure {
                signature,
                encoding,
            } => {
                check_field("signature", &signature, true)?;
                if !(encoding.is_empty() || encoding == "pkcs7") {
                    return Err(AuthError::Malformed(
                        "encoding must be pkcs7 or empty".into(),
                    ));
                }
                (
                    Cloud::Azure,
                    Box::pin(self.verify_azure(&set, &signature))
                        .await?
                        .instance_id,
                    LiveEvidence::None,
                )
            }
        })
    }

    /// Verifies an Azure document; when the chain is incomplete and issuer fetching is on, the
    /// signer's issuer is looked up (or fetched) and the chain is tried once more. A spent
    /// fetch budget is TRUST_UNAVAILABLE (retry later), never a final refusal.
    async fn verify_azure(
        &self,
        set: &Arc<TrustSet>,
        signature: &str,
    ) -> Result<crate::identity::azure::AzureIdentity, AuthError> {
        use crate::issuers::Issuers;
        let invalid = |cause| AuthError::InvalidIdentity {
            cloud: Cloud::Azure,
            cause,
        };
        let verify = |extra: Vec<openssl::x509::X509>| {
            let (trust, signature, now) = (set.clone(), signature.to_owned(), self.now());
            azure_work(move || trust.azure.verify_with(&signature, now, &extra))
        };
        match (verify(Vec::new()).await?, &self.trust.azure_issuers) {
            (Err(cause @ IdentityError::UntrustedChain(_)), Some(fetcher)) => {
                // The signer's name and issuer are judged (and its signature checked, off the
                // async workers) before any fetch.
                let request = {
                    let (trust, signature) = (set.clone(), signature.to_owned());
                    azure_work(move || trust.azure.issuer_to_fetch(&signature))
                        .await?
                        .map_err(invalid)?
                };
                match fetcher.fetch(&set.azure, &request).await {
                    Issuers::Found(fetched) => verify(fetched).await?.map_err(invalid),
                    Issuers::NotFound => Err(invalid(cause)),
                    Issuers::RateLimited => Err(AuthError::TrustUnavailable(Cloud::Azure)),
                }
            }
            (outcome, _) => outcome.map_err(invalid),
        }
    }

    /// Verifies a GCP token; an unknown `kid` earns one rate-limited JWKS refetch.
    async fn verify_gcp(&self, set: &TrustSet, token: &str) -> Result<gcp::GcpIdentity, AuthError> {
        let keys = &set.gcp_keys;
        let policy = &self.trust.gcp_policy;
        let invalid = |cause| AuthError::InvalidIdentity {
            cloud: Cloud::Google,
            cause,
        };
        let current = keys
            .current()
            .ok_or(AuthError::TrustUnavailable(Cloud::Google))?;
        let outcome = match gcp::verify(token, &current, policy, self.now()) {
            Err(GcpFailure::UnknownKid(_)) => {
                match Box::pin(keys.refetch_for_unknown_kid()).await {
                    Some(fresh) => gcp::verify(token, &fresh, policy, self.now()),
                    None => return Err(AuthError::TrustUnavailable(Cloud::Google)),
                }
            }
            other => other,
        };
        match outcome {
            Ok(identity) => Ok(identity),
            Err(GcpFailure::UnknownKid(kid)) => Err(invalid(IdentityError::NoTrustedKey(format!(
                "JWT kid {kid:?} is not in the JWKS"
            )))),
            Err(GcpFailure::Invalid(cause)) => Err(invalid(cause)),
        }
    }
}

/// Checks the AWS request's shape, then verifies the document with its one proof.
fn verify_aws(
    set: &TrustSet,
    document: &str,
    signature: &str,
    rsa2048: &str,
) -> Result<AwsIdentity, AuthError> {
    check_field("document", document, true)?;
    check_field("signature", signature, false)?;
    check_field("rsa2048", rsa2048, false)?;
    let proof = match (signature.is_empty(), rsa2048.is_empty()) {
        (false, true) => AwsProof::Signature(signature),
        (true, false) => AwsProof::Rsa2048(rsa2048),
        (true, true) => {
            return Err(AuthError::Malformed(
                "one of signature or rsa2048 is required".into(),
            ));
        }
        (false, false) => {
            return Err(AuthError::Malformed(
                "set signature or rsa2048, not both".into(),
            ));
        }
    };
    set.aws
        .verify(document, proof)
        .map_err(|cause| AuthError::InvalidIdentity {
            cloud: Cloud::Aws,
            cause,
        })
}

/// Records an authentication whose future was dropped before it answered.
struct Unfinished<'a> {
    request_id: &'a str,
    cloud: &'static str,
    started: Instant,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        record_outcome(
            self.request_id,
            self.cloud,
            self.started,
            "cancelled",
            "",
            "",
            "",
        );
    }
}

/// The one metric and the one log line of every authentication (never the evidence or token).
fn record_outcome(
    request_id: &str,
    cloud: &'static str,
    started: Instant,
    outcome: &'static str,
    reason: &str,
    instance: &str,
    detail: &str,
) {
    crate::metrics::record_authentication(cloud, outcome, started.elapsed());
    tracing::info!(
        request_id,
        cloud,
        outcome,
        reason,
        instance,
        detail,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "authentication"
    );
}

/// Runs Azure's OpenSSL work (PKCS#7 and chain checks: about 0.5 ms honest, more for a
/// caller-chosen key within the accepted sizes) on the blocking pool, at most half the cores'
/// worth at once: a flood of Azure documents queues here (and is shed by the concurrency
/// limit) while the async workers keep serving other logins, `/healthz` and `/metrics`. A
/// failed task is a bug: INTERNAL, not an invalid identity.
async fn azure_work<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthError> {
    static PERMITS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    let permits = PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Arc::new(tokio::sync::Semaphore::new((cores / 2).max(1)))
    });
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .map_err(|e| AuthError::Internal(format!("Azure verifier pool: {e}")))?;
    // The permit goes with the work: a caller that leaves does not free a place for more.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| AuthError::Internal(format!("Azure verifier task: {e}")))
}

/// The first 12 hex digits of SHA-256: enough to correlate log lines, not an identifier.
fn short_hash(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

fn evidence_cloud(evidence: &Evidence) -> Cloud {
    match evidence {
        Evidence::Aws { .. } => Cloud::Aws,
        Evidence::Google { .. } => Cloud::Google,
        Evidence::Azure { .. } => Cloud::Azure,
    }
}

fn check_field(name: &str, value: &str, required: bool) -> Result<(), AuthError> {
    if required && value.is_empty() {
        return Err(AuthError::Malformed(format!("{name} is required")));
    }
    if value.len() > MAX_FIELD_BYTES {
        return Err(AuthError::Malformed(format!(
            "{name} is larger than {MAX_FIELD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The trimmed agent name; `None` when empty or only whitespace (DESIGN.md 2).
fn agent_name(raw: &str) -> Result<Option<&str>, AuthError> {
    check_field("agent_name", raw, false)?;
    let trimmed = raw.trim();
    Ok(if trimmed.is_empty() {
        None
    } else {
        Some(trimmed)
    })
}

/// Chooses the agent from the statement's result (DESIGN.md 2, resolution semantics):
/// candidates in more than one workspace → a conflict, whatever the name (the rows carry the
/// workspace, so this costs no second statement); no candidate → NOT_LATEST_BUILD if a stale agent exists, else INSTANCE_NOT_FOUND; a name →
/// exactly that candidate or AGENT_NAME_NOT_FOUND; no name → the only candidate or
/// AMBIGUOUS_AGENT listing the sorted names.
pub fn select(
    instance_id: &InstanceId,
    name: Option<&str>,
    resolution: Resolution,
) -> Result<Candidate, AuthError> {
    let Resolution {
        mut candidates,
        stale_agent,
        on_replica: _,
    } = resolution;
    if candidates.is_empty() {
        return Err(if stale_agent {
            AuthError::NotLatestBuild {
                instance_id: instance_id.clone(),
            }
        } else {
            AuthError::InstanceNotFound {
                instance_id: instance_id.clone(),
            }
        });
    }
    let mut workspaces: Vec<uuid::Uuid> = candidates.iter().map(|c| c.workspace_id).collect();
    workspaces.sort();
    workspaces.dedup();
    if workspaces.len() > 1 {
        crate::metrics::record_instance_conflict();
        return Err(AuthError::InstanceConflict {
            instance_id: instance_id.clone(),
            workspaces,
        });
    }
    if let Some(name) = name {
        return candidates
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| AuthError::AgentNameNotFound {
                instance_id: instance_id.clone(),
                name: name.to_owned(),
            });
    }
    if candidates.len() == 1 {
        return candidates
            .pop()
            .ok_or_else(|| AuthError::Internal("no candidate".into()));
    }
    let mut names: Vec<String> = candidates.into_iter().map(|c| c.name).collect();
    names.sort();
    Err(AuthError::AmbiguousAgent {
        instance_id: instance_id.clone(),
        names,
    })
}

/// Quotes like Go's `%q`, which the incumbent's messages use: `"` and `\` escaped, control and
/// non-printable characters as escapes.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_quote_escapes_like_go() {
        assert_eq!(go_quote("i-1"), "\"i-1\"");
        assert_eq!(go_quote("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\x01\"");
    }

    #[test]
    fn whitespace_only_name_means_not_given() {
        assert!(matches!(agent_name("  \t "), Ok(None)));
        assert!(matches!(agent_name(" main "), Ok(Some("main"))));
    }

    #[test]
    fn oversized_name_is_malformed() {
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        assert!(matches!(agent_name(&long), Err(AuthError::Malformed(_))));
    }
}
