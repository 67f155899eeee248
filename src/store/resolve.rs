//! The resolver's one statement (DESIGN.md section 2).
//!
//! It returns every *candidate* (a live, top-level agent of a `workspace_build` job on the
//! workspace's latest build) as a row of its own, and one row telling whether a stale agent
//! (the same, but on an older build) exists. The result therefore grows with the number of
//! agents on the latest build, never with history.

use tokio_postgres::types::Type;
use uuid::Uuid;

use std::sync::Arc;

use super::pipeline::Connections;
use super::{Store, StoreError, Target, is_connection_lost, query_error};

/// The only statement the authentication path runs. `$1` is the verified instance id (text).
///
/// Plan: an index probe on `workspace_agents (auth_instance_id, deleted)`; for each agent of
/// the instance, its resource (primary key) and its build (`workspace_builds (job_id)`, unique):
/// three probes, however old the build. "Latest" is then decided once per *workspace*, not
/// once per agent: the workspace (primary key) and its highest build number (a backward probe
/// on `workspace_builds (workspace_id, build_number)`), both scalar subqueries so they stay
/// index probes however small the tables (joined, PostgreSQL scanned `workspaces` whole). The job's type is checked only for the
/// agents that can matter: the latest build's, and the first stale one found. So an instance
/// with many live agents on old builds costs three probes per old agent, not six
/// (docs/bench/history.md, "Live stale agents").
///
/// Rows: every candidate, then one row whose `stale` is 1 if an agent of the instance sits on
/// an older build of a live workspace, else 0. A job without a build (template import, dry
/// run) drops out at the build join; its type is not needed for that.
pub const RESOLVE_SQL: &str = "\
WITH agent AS (
    SELECT a.id, a.name, a.auth_token, r.job_id, b.id AS build_id, b.workspace_id, b.build_number
    FROM workspace_agents a
    JOIN workspace_resources r ON r.id = a.resource_id
    JOIN workspace_builds b ON b.job_id = r.job_id
    WHERE a.auth_instance_id = $1
      AND a.deleted = false
      AND a.parent_id IS NULL
),
newest AS (
    SELECT g.workspace_id,
           (SELECT max(x.build_number) FROM workspace_builds x
            WHERE x.workspace_id = g.workspace_id) AS build_number
    FROM (SELECT DISTINCT workspace_id FROM agent) g
    WHERE (SELECT NOT w.deleted FROM workspaces w WHERE w.id = g.workspace_id)
)
SELECT g.id AS agent_id, g.name::text AS name, g.auth_token, g.build_id, g.workspace_id,
       NULL::bigint AS stale
FROM agent g
JOIN newest n ON n.workspace_id = g.workspace_id AND n.build_number = g.build_number
JOIN provisioner_jobs j ON j.id = g.job_id
WHERE j.type = 'workspace_build'
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, count(*)
FROM (
    SELECT 1
    FROM agent g
    JOIN newest n ON n.workspace_id = g.workspace_id AND g.build_number < n.build_number
    JOIN provisioner_jobs j ON j.id = g.job_id
    WHERE j.type = 'workspace_build'
    LIMIT 1
) first_stale";

/// A session token: `workspace_agents.auth_token`. A secret, so it has no `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(Uuid);

impl SessionToken {
    /// The canonical UUID text, for the one place that hands it to the caller.
    pub(crate) fn expose(&self) -> String {
        uuid_text(self.0)
    }
}

/// A UUID's canonical text, written directly (not through `fmt`): the token and the ids a
/// login answers with.
pub fn uuid_text(id: Uuid) -> String {
    id.hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_owned()
}

/// An agent that may be authenticated for the instance.
#[derive(Clone)]
pub struct Candidate {
    pub agent_id: Uuid,
    pub name: String,
    pub token: SessionToken,
    pub workspace_id: Uuid,
    pub build_id: Uuid,
}

/// Everything the one statement tells about an instance id.
#[derive(Clone, Default)]
pub struct Resolution {
    /// Candidates on their workspace's latest build.
    pub candidates: Vec<Candidate>,
    /// Some otherwise-valid agent sits on an older build of a live workspace.
    pub stale_agent: bool,
    /// A read replica answered (it may lag the primary).
    pub on_replica: bool,
}

impl Store {
    /// Runs [`RESOLVE_SQL`] once. If the connection turns out dead (the statement never reached
    /// the server), it is forgotten and the statement retried once on another connection.
    ///
    /// The statement runs in a task of its own that holds its place on the connection: a
    /// caller that goes away (deadline, reset) does not abandon it mid-statement. The statement
    /// finishes (bounded by `statement_timeout`) and its place is given back, so a cancelled
    /// login costs the database no more than a completed one, and no cancel request is ever
    /// sent (one would cancel whatever that backend runs at that moment: with statements
    /// pipelined, a neighbour's). A caller gone before its statement was placed costs no
    /// statement at all.
    ///
    /// With read replicas, the next healthy replica runs it; a replica that cannot answer is
    /// skipped from then on (until it answers a probe) and the primary runs it instead.
    ///
    /// The caller waits at most the checkout timeout plus the statement timeout for each
    /// statement, whatever is queued ahead of it on its connection (`Connections::login_limit`);
    /// then it is answered UNAVAILABLE.
    pub async fn resolve(&self, instance_id: &str) -> Result<Resolution, StoreError> {
        if let Some((index, replica)) = self.replicas.pick() {
            match resolve_on(replica, Target::Replica, instance_id).await {
                Ok(mut resolution) => {
                    resolution.on_replica = true;
                    return Ok(resolution);
                }
                Err(e @ StoreError::Unavailable { .. }) => self.replicas.failed(index, &e.report()),
                Err(e) => return Err(e),
            }
        }
        resolve_on(&self.primary, Target::Primary, instance_id).await
    }

    /// [`Store::resolve`] on the primary: for what a replica did not find.
    pub async fn resolve_on_primary(&self, instance_id: &str) -> Result<Resolution, StoreError> {
        resolve_on(&self.primary, Target::Primary, instance_id).await
    }
}

async fn resolve_on(
    connections: &Arc<Connections>,
    target: Target,
    instance_id: &str,
) -> Result<Resolution, StoreError> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let limit = connections.login_limit();
    let connections = Arc::clone(connections);
    let instance_id = instance_id.to_owned();
    // Boxed: the task is 2.7 kB (tokio-postgres's query future), and tokio moves a future
    // it spawns several times by value (into the task, and when it finishes); a box is moved
    // as a pointer (callgrind: about 2,000 instructions a login less).
    let task = Box::pin(async move {
        let result = resolve_detached(&connections, target, &instance_id, &answer).await;
        let _ = answer.send(result);
    });
    // The statement's span (a child of the request's), on the task that runs it. Only traces
    // have spans other than a request's (`telemetry::init`): without them it is off at its
    // callsite, and the task is not given the request's span either, which it would look up,
    // enter and leave on every poll for nothing (the request's line is written by the caller).
    let span = tracing::info_span!(
        "query",
        db.system = "postgresql",
        db.operation = "resolve",
        db.target = target.label()
    );
    tokio::spawn(tracing::Instrument::instrument(task, span));
    match tokio::time::timeout(limit, answered).await {
        Ok(answer) => {
            answer.map_err(|_| StoreError::internal("the resolver task ended without an answer"))?
        }
        Err(_) => Err(StoreError::unavailable(format!(
            "the database did not answer within {limit:?} (the checkout timeout and the \
             statement timeout)"
        ))),
    }
}

async fn resolve_detached(
    connections: &Arc<Connections>,
    target: Target,
    instance_id: &str,
    answer: &tokio::sync::oneshot::Sender<Result<Resolution, StoreError>>,
) -> Result<Resolution, StoreError> {
    let gone = || StoreError::unavailable("the caller went away before the statement");
    let claim = connections.claim().await?;
    if answer.is_closed() {
        return Err(gone());
    }
    let sent = std::time::Instant::now();
    let first = query(&claim.live, target, instance_id).await;
    if first.is_ok() {
        claim.answered(sent.elapsed());
    }
    let rows = match first {
        // Closed because a statement ahead on it timed out: this one reached the server and
        // would have waited out its own timeout too. Not retried.
        Err(e) if claim.live.timed_out() => {
            return Err(StoreError::unavailable_by(
                "a statement ahead on the connection ran out of statement_timeout",
                e,
            ));
        }
        Err(e) if is_connection_lost(&e) => {
            // Boxed like every rare await here: the task is copied when it is spawned.
            let claim = Box::pin(claim.replace()).await?;
            if answer.is_closed() {
                return Err(gone());
            }
            query(&claim.live, target, instance_id)
                .await
                .map_err(query_error)?
        }
        other => other.map_err(query_error)?,
    };
    parse(&rows)
}

/// The resolver's statement as each connection prepares it ([`super::pipeline`]): one text
/// parameter, the instance id.
pub(super) const STATEMENT: super::pipeline::Prepared = super::pipeline::Prepared {
    sql: RESOLVE_SQL,
    types: &[Type::TEXT],
};

/// Runs the statement prepared when the connection opened (Bind/Execute/Sync; behind PgBouncer
/// with `transaction-prepared`, PgBouncer prepares it on the server session that runs it when
/// that one has not yet), or behind `--db-pooler transaction` the unnamed statement
/// (Parse/Bind/Execute/Sync): one round trip either way, pipelined with the other statements in
/// flight on the connection.
async fn query(
    live: &super::pipeline::Live,
    target: Target,
    instance_id: &str,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    crate::metrics::record_query(target.label());
    match &live.statement {
        Some(statement) => {
            live.answer(live.client.query(statement, &[&instance_id]))
                .await
        }
        None => {
            live.answer(
                live.client
                    .query_typed(RESOLVE_SQL, &[(&instance_id, Type::TEXT)]),
            )
            .await
        }
    }
}

fn parse(rows: &[tokio_postgres::Row]) -> Result<Resolution, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::internal_by("unexpected row shape", e);
    let mut resolution = Resolution::default();
    for row in rows {
        let stale: Option<i64> = row.try_get("stale").map_err(bad)?;
        if let Some(count) = stale {
            resolution.stale_agent |= count > 0;
            continue;
        }
        resolution.candidates.push(Candidate {
            agent_id: row.try_get("agent_id").map_err(bad)?,
            name: row.try_get("name").map_err(bad)?,
            token: SessionToken(row.try_get("auth_token").map_err(bad)?),
            workspace_id: row.try_get("workspace_id").map_err(bad)?,
            build_id: row.try_get("build_id").map_err(bad)?,
        });
    }
    Ok(resolution)
}
