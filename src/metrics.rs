//! Prometheus metrics (DESIGN.md 3.2; names are contract). One process-wide recorder, rendered by
//! the admin listener's `/metrics`. Labels are bounded: cloud, outcome, pool state, and pinned
//! certificate subjects, never an instance or agent id.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const AUTHENTICATIONS: &str = "agent_auth_authentications_total";
pub const AUTHENTICATION_DURATION: &str = "agent_auth_authentication_duration_seconds";
pub const VERIFY_DURATION: &str = "agent_auth_verify_duration_seconds";
pub const DB_QUERIES: &str = "agent_auth_db_queries_total";
pub const DB_POOL_CONNECTIONS: &str = "agent_auth_db_pool_connections";
pub const DB_POOL_WAITING: &str = "agent_auth_db_pool_waiting";
pub const DB_POOL_WAIT: &str = "agent_auth_db_pool_wait_seconds";
pub const DB_CONNECTION_IN_FLIGHT: &str = "agent_auth_db_connection_statements_in_flight";
pub const DB_CONNECTION_DEPTH: &str = "agent_auth_db_connection_pipeline_depth";
pub const REQUESTS_IN_FLIGHT: &str = "agent_auth_requests_in_flight";
pub const REQUESTS_SHED: &str = "agent_auth_requests_shed_total";
pub const TRUST_EXPIRY: &str = "agent_auth_trust_certificate_expiry_timestamp_seconds";
pub const CONNECTIONS_OPEN: &str = "agent_auth_connections_open";
pub const CONNECTIONS_REFUSED: &str = "agent_auth_connections_refused_total";
pub const CONNECTION_TIMEOUTS: &str = "agent_auth_connection_timeouts_total";
pub const CONNECTIONS_EVICTED: &str = "agent_auth_connections_evicted_total";
pub const MEMORY_BUDGET: &str = "agent_auth_memory_budget_bytes";
pub const MEMORY_REFUSED: &str = "agent_auth_memory_refused_total";
pub const MEMORY_IN_USE: &str = "agent_auth_memory_in_use_bytes";
pub const INSTANCE_CONFLICTS: &str = "agent_auth_instance_conflicts_total";
pub const TRUST_RELOADS: &str = "agent_auth_trust_reloads_total";
pub const TRUST_REFRESH_FAILURES: &str = "agent_auth_trust_refresh_failures_total";
pub const CLOUD_API_CALLS: &str = "agent_auth_cloud_api_calls_total";
pub const CLOUD_API_DURATION: &str = "agent_auth_cloud_api_duration_seconds";
pub const CLOUD_API_CACHE: &str = "agent_auth_cloud_api_cache_total";
pub const CLOUD_API_BATCH_SIZE: &str = "agent_auth_cloud_api_batch_size";
pub const CLOUD_API_FAIL_OPEN: &str = "agent_auth_cloud_api_fail_open_total";
pub const DB_CONNECTIONS_SILENT: &str = "agent_auth_db_connections_silent_total";
pub const DB_CONNECTIONS_TIMED_OUT: &str = "agent_auth_db_connections_timed_out_total";
pub const DB_REPLICA_LAG: &str = "agent_auth_db_replica_lag_seconds";
pub const DB_REPLICA_SKIPPED: &str = "agent_auth_db_replica_skipped_total";

/// Every `outcome` label of `agent_auth_authentications_total`: `ok`, each counted reason of
/// the error table in lower case ([`crate::reasons::Kind`]), and `cancelled` (the caller went away
/// before the answer).
pub fn outcomes() -> impl Iterator<Item = &'static str> {
    std::iter::once("ok")
        .chain(
            crate::reasons::Kind::ALL
                .iter()
                .filter(|kind| kind.counted)
                .map(|kind| kind.outcome),
        )
        .chain(std::iter::once("cancelled"))
}

/// Every `cloud` label of the authentication metrics (`none`: no identity in the request).
pub const CLOUDS: &[&str] = &["aws", "gcp", "azure", "none"];

/// Instance ids per EC2 `DescribeInstances` call (at most 100).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];

/// How often the recorder folds recorded histogram samples into its buckets when nobody
/// scrapes: without it every sample (about 70 bytes) is kept until the next `/metrics`.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder, installed on first use. `None` if another recorder was installed
/// first (then our metrics go there).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(CLOUD_API_BATCH_SIZE.into()),
                    BATCH_BUCKETS,
                )
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            spawn_upkeep(handle.clone());
            Some(handle)
        })
        .as_ref()
}

/// Runs the recorder's upkeep every [`UPKEEP_INTERVAL`] on a thread of its own (the exporter
/// runs it only during a scrape otherwise, so memory grew with every request until one came).
/// A thread, not a task: the recorder may be installed before or outside a runtime.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread: samples are folded only when /metrics is scraped");
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        AUTHENTICATIONS,
        "Authentications by cloud and outcome (a reason code in lower case, or ok)."
    );
    describe_histogram!(
        AUTHENTICATION_DURATION,
        Unit::Seconds,
        "Time to answer an authentication, by cloud."
    );
    describe_histogram!(
        VERIFY_DURATION,
        Unit::Seconds,
        "Time of the cryptographic check alone, by cloud."
    );
    describe_counter!(
        DB_QUERIES,
        "SQL statements run by the authentication path, by target (primary, replica)."
    );
    describe_counter!(
        CLOUD_API_CALLS,
        "Calls to cloud APIs for live instance checks, by cloud and outcome (ok, error)."
    );
    describe_histogram!(
        CLOUD_API_DURATION,
        Unit::Seconds,
        "Time of one cloud API call (EC2 calls carry up to 100 instances), by cloud."
    );
    describe_counter!(
        CLOUD_API_CACHE,
        "Live check look-ups by cloud and result: hit (kept answer), shared (joined a call in flight), miss (made the call)."
    );
    describe_histogram!(
        CLOUD_API_BATCH_SIZE,
        "Instance ids per EC2 DescribeInstances call."
    );
    describe_counter!(
        CLOUD_API_FAIL_OPEN,
        "Logins let through unchecked because the cloud API failed and --cloud-check-on-error is open."
    );
    describe_histogram!(
        DB_POOL_WAIT,
        Unit::Seconds,
        "Time to get room for a statement on a database connection."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Open database connections by state (idle: no statement in flight, in_use)."
    );
    describe_gauge!(
        DB_POOL_WAITING,
        "Requests waiting for room on a database connection."
    );
    describe_gauge!(
        DB_CONNECTION_IN_FLIGHT,
        "Statements in flight (pipelined) on each database connection."
    );
    describe_gauge!(
        DB_CONNECTION_DEPTH,
        "Statements each database connection may carry now (adaptive, at most --db-pipeline-depth)."
    );
    describe_gauge!(REQUESTS_IN_FLIGHT, "Authentications being processed.");
    describe_counter!(
        REQUESTS_SHED,
        "Requests refused at once because the concurrency limit was reached."
    );
    export_zeros();
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Open connections by listener (grpc, http, admin)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at once: the listener's cap was reached with none idle to make room, or the client address held its share."
    );
    describe_counter!(
        CONNECTIONS_EVICTED,
        "Connections closed gracefully to make room for a new one (the cap was reached; it was the idlest), by listener."
    );
    describe_gauge!(
        MEMORY_BUDGET,
        Unit::Bytes,
        "The memory budget of what peers hold (--memory-budget), by pool (agent: gRPC and agent HTTP; admin: its reserve)."
    );
    describe_gauge!(
        MEMORY_IN_USE,
        Unit::Bytes,
        "What peers hold of the memory budget now (sampled every second), by pool."
    );
    describe_counter!(
        MEMORY_REFUSED,
        "Work refused at once because the memory budget was spent (a connection was closed to make room), by what: connection, request, body."
    );
    describe_counter!(
        CONNECTION_TIMEOUTS,
        "Connections closed by a timeout, by listener and timeout (handshake, idle)."
    );
    describe_counter!(
        INSTANCE_CONFLICTS,
        "Logins refused because the instance id is on the latest build of more than one workspace."
    );
    describe_counter!(
        DB_CONNECTIONS_SILENT,
        "Database connections declared dead because they delivered nothing for statement_timeout plus a grace with statements waiting."
    );
    describe_counter!(
        DB_CONNECTIONS_TIMED_OUT,
        "Database connections closed because a statement on them ran out of statement_timeout (the statements queued behind it failed at once)."
    );
    describe_gauge!(
        DB_REPLICA_LAG,
        Unit::Seconds,
        "Bound on each read replica's lag behind the primary at the last check (+Inf: unknown)."
    );
    describe_counter!(
        DB_REPLICA_SKIPPED,
        "Logins that passed a read replica over, by replica and reason (down; lag: beyond --replica-max-lag; not_replica: not in recovery, another cluster, or ahead of the primary's timeline)."
    );
    describe_counter!(
        TRUST_RELOADS,
        "Trust reloads on SIGHUP, by result (ok, error: the previous set stayed)."
    );
    describe_counter!(
        TRUST_REFRESH_FAILURES,
        "Failed fetches of remote trust material (GCP JWKS), by cloud."
    );
}

/// One connection opened (`delta` 1) or closed (-1) on `listener`.
pub fn record_connection_open(listener: &'static str, delta: f64) {
    metrics::gauge!(CONNECTIONS_OPEN, "listener" => listener).increment(delta);
}

/// One connection closed at once because `listener` was at its cap.
pub fn record_connection_refused(listener: &'static str) {
    metrics::counter!(CONNECTIONS_REFUSED, "listener" => listener).increment(1);
}

/// One connection asked to close to make room on `listener`.
pub fn record_connection_evicted(listener: &'static str) {
    metrics::counter!(CONNECTIONS_EVICTED, "listener" => listener).increment(1);
}

/// The memory budget of `pool` (agent, admin), in bytes.
pub fn record_memory_budget(pool: &'static str, bytes: u64) {
    metrics::gauge!(MEMORY_BUDGET, "pool" => pool).set(bytes as f64);
}

/// What `pool` holds of its memory budget now, in bytes.
pub fn record_memory_in_use(pool: &'static str, bytes: u64) {
    metrics::gauge!(MEMORY_IN_USE, "pool" => pool).set(bytes as f64);
}

/// One `what` (connection, request, body) refused because the memory budget was spent.
pub fn record_memory_refused(what: &'static str) {
    metrics::counter!(MEMORY_REFUSED, "what" => what).increment(1);
}

/// One connection closed by its `timeout` (handshake, idle).
pub fn record_connection_timeout(listener: &'static str, timeout: &'static str) {
    metrics::counter!(CONNECTION_TIMEOUTS, "listener" => listener, "timeout" => timeout)
        .increment(1);
}

/// The series of read replica `number` (1-based), at zero and unknown lag until measured.
pub fn replica_series(number: usize) {
    let replica = number.to_string();
    metrics::gauge!(DB_REPLICA_LAG, "replica" => replica.clone()).set(f64::INFINITY);
    for reason in ["down", "lag", "not_replica"] {
        metrics::counter!(DB_REPLICA_SKIPPED, "replica" => replica.clone(), "reason" => reason)
            .absolute(0);
    }
}

/// Read replica `number`'s lag bound at the last check (`None`: unknown).
pub fn record_replica_lag(number: usize, lag: Option<Duration>) {
    metrics::gauge!(DB_REPLICA_LAG, "replica" => number.to_string())
        .set(lag.map_or(f64::INFINITY, |lag| lag.as_secs_f64()));
}

/// One login passed read replica `number` over for `reason` (down, lag, not_replica).
pub fn record_replica_skipped(number: usize, reason: &'static str) {
    metrics::counter!(DB_REPLICA_SKIPPED, "replica" => number.to_string(), "reason" => reason)
        .increment(1);
}

/// One database connection closed because a statement on it ran out of statement_timeout.
pub fn record_db_connection_timed_out() {
    metrics::counter!(DB_CONNECTIONS_TIMED_OUT).increment(1);
}

/// One database connection declared dead for its silence.
pub fn record_db_connection_silent() {
    metrics::counter!(DB_CONNECTIONS_SILENT).increment(1);
}

/// Counts one login refused for an instance claimed by several workspaces.
pub fn record_instance_conflict() {
    metrics::counter!(INSTANCE_CONFLICTS).increment(1);
}

/// Every counter of DESIGN.md 3.2 (and ours) exists from the start, at 0, with each label set
/// that is known in advance, so dashboards and alerts see a series before the first event.
fn export_zeros() {
    for cloud in CLOUDS {
        for outcome in outcomes() {
            metrics::counter!(AUTHENTICATIONS, "cloud" => *cloud, "outcome" => outcome).absolute(0);
        }
    }
    for target in ["primary", "replica"] {
        metrics::counter!(DB_QUERIES, "target" => target).absolute(0);
    }
    metrics::counter!(REQUESTS_SHED).absolute(0);
    metrics::gauge!(REQUESTS_IN_FLIGHT).set(0.0);
    metrics::counter!(TRUST_REFRESH_FAILURES, "cloud" => "gcp").absolute(0);
    for cloud in ["aws", "gcp"] {
        for outcome in ["ok", "error"] {
            metrics::counter!(CLOUD_API_CALLS, "cloud" => cloud, "outcome" => outcome).absolute(0);
        }
        for result in ["hit", "shared", "miss"] {
            metrics::counter!(CLOUD_API_CACHE, "cloud" => cloud, "result" => result).absolute(0);
        }
        metrics::counter!(CLOUD_API_FAIL_OPEN, "cloud" => cloud).absolute(0);
    }
    metrics::counter!(INSTANCE_CONFLICTS).absolute(0);
    metrics::counter!(DB_CONNECTIONS_SILENT).absolute(0);
    metrics::counter!(DB_CONNECTIONS_TIMED_OUT).absolute(0);
    for result in ["ok", "error"] {
        metrics::counter!(TRUST_RELOADS, "result" => result).absolute(0);
    }
    for what in ["connection", "request", "body"] {
        metrics::counter!(MEMORY_REFUSED, "what" => what).absolute(0);
    }
    for listener in ["grpc", "http", "admin"] {
        metrics::gauge!(CONNECTIONS_OPEN, "listener" => listener).set(0.0);
        metrics::counter!(CONNECTIONS_REFUSED, "listener" => listener).absolute(0);
        metrics::counter!(CONNECTIONS_EVICTED, "listener" => listener).absolute(0);
        for timeout in ["handshake", "idle"] {
            metrics::counter!(CONNECTION_TIMEOUTS, "listener" => listener, "timeout" => timeout)
                .absolute(0);
        }
    }
}

/// Counts one trust reload.
pub fn record_trust_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(TRUST_RELOADS, "result" => result).increment(1);
}

/// One pinned certificate as the expiry gauge sees it: cloud, subject label, notAfter (Unix).
pub type Expiry<'a> = (&'a str, &'a str, i64);

/// The trust-expiry gauge, rendered from the set in force (so a reload replaces its series):
/// one series per pinned certificate label, the later expiry when two share a label.
fn render_trust_expiry<'a>(pinned: impl Iterator<Item = Expiry<'a>>) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    let mut series: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (cloud, label, t) in pinned {
        let entry = series.entry((cloud, label)).or_insert(t);
        *entry = (*entry).max(t);
    }
    let mut out = format!(
        "# HELP {TRUST_EXPIRY} Expiry (Unix time) of each pinned certificate, by cloud and subject.\n# TYPE {TRUST_EXPIRY} gauge\n"
    );
    for ((cloud, subject), t) in series {
        let _ = writeln!(
            out,
            "{TRUST_EXPIRY}{{cloud=\"{}\",subject=\"{}\"}} {t}",
            escape_label(cloud),
            escape_label(subject)
        );
    }
    out
}

/// Escapes a label value for the Prometheus text format.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The certificate's notAfter as Unix seconds.
pub fn not_after(certificate: &openssl::x509::X509Ref) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(certificate.not_after()).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

/// A short, bounded label for a certificate: its CN, else its O.
pub fn subject_label(certificate: &openssl::x509::X509Ref) -> String {
    use openssl::nid::Nid;
    let name = certificate.subject_name();
    for nid in [Nid::COMMONNAME, Nid::ORGANIZATIONNAME] {
        if let Some(value) = name
            .entries_by_nid(nid)
            .next()
            .and_then(|e| e.data().to_string().ok())
        {
            return value;
        }
    }
    "unknown".into()
}

/// The handles every login records to, registered once with our recorder: a `counter!` or
/// `histogram!` call builds its key and looks it up in the registry each time (about 1,000
/// instructions each, four or five per login, in `scripts/cpu-per-login`).
struct Hot {
    authentications: Vec<(&'static str, &'static str, metrics::Counter)>,
    authentication_duration: Vec<(&'static str, metrics::Histogram)>,
    verify_duration: Vec<(&'static str, metrics::Histogram)>,
    queries: Vec<(&'static str, metrics::Counter)>,
    pool_wait: metrics::Histogram,
    requests_in_flight: metrics::Gauge,
}

/// The cached handles, only when our recorder is the process's: a handle taken before a
/// recorder is installed, or from another one, would not reach `/metrics`.
fn hot() -> Option<&'static Hot> {
    static HOT: OnceLock<Hot> = OnceLock::new();
    handle()?;
    Some(HOT.get_or_init(|| {
        Hot {
            authentications: CLOUDS
                .iter()
                .flat_map(|cloud| outcomes().map(move |outcome| (*cloud, outcome)))
                .map(|(cloud, outcome)| {
                    let counter =
                        metrics::counter!(AUTHENTICATIONS, "cloud" => cloud, "outcome" => outcome);
                    (cloud, outcome, counter)
                })
                .collect(),
            authentication_duration: CLOUDS
                .iter()
                .map(|cloud| {
                    (
                        *cloud,
                        metrics::histogram!(AUTHENTICATION_DURATION, "cloud" => *cloud),
                    )
                })
                .collect(),
            verify_duration: CLOUDS
                .iter()
                .map(|cloud| {
                    (
                        *cloud,
                        metrics::histogram!(VERIFY_DURATION, "cloud" => *cloud),
                    )
                })
                .collect(),
            queries: ["primary", "replica"]
                .into_iter()
                .map(|target| (target, metrics::counter!(DB_QUERIES, "target" => target)))
                .collect(),
            pool_wait: metrics::histogram!(DB_POOL_WAIT),
            requests_in_flight: metrics::gauge!(REQUESTS_IN_FLIGHT),
        }
    }))
}

/// `agent_auth_requests_in_flight`, for a request to raise while it runs.
pub fn requests_in_flight() -> metrics::Gauge {
    match hot() {
        Some(hot) => hot.requests_in_flight.clone(),
        None => metrics::gauge!(REQUESTS_IN_FLIGHT),
    }
}

/// Records one authentication.
pub fn record_authentication(cloud: &'static str, outcome: &'static str, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let cached = hot().and_then(|hot| {
        let counter = hot
            .authentications
            .iter()
            .find(|(c, o, _)| *c == cloud && *o == outcome)?;
        let histogram = hot
            .authentication_duration
            .iter()
            .find(|(c, _)| *c == cloud)?;
        Some((&counter.2, &histogram.1))
    });
    match cached {
        Some((counter, histogram)) => {
            counter.increment(1);
            histogram.record(seconds);
        }
        None => {
            metrics::counter!(AUTHENTICATIONS, "cloud" => cloud, "outcome" => outcome).increment(1);
            metrics::histogram!(AUTHENTICATION_DURATION, "cloud" => cloud).record(seconds);
        }
    }
}

/// Records the time of one cryptographic check.
pub fn record_verify(cloud: &'static str, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    match hot().and_then(|hot| hot.verify_duration.iter().find(|(c, _)| *c == cloud)) {
        Some((_, histogram)) => histogram.record(seconds),
        None => metrics::histogram!(VERIFY_DURATION, "cloud" => cloud).record(seconds),
    }
}

/// Counts one statement of the authentication path.
pub fn record_query(target: &'static str) {
    match hot().and_then(|hot| hot.queries.iter().find(|(t, _)| *t == target)) {
        Some((_, counter)) => counter.increment(1),
        None => metrics::counter!(DB_QUERIES, "target" => target).increment(1),
    }
}

/// Records how long one statement waited for room on a connection.
pub fn record_pool_wait(elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    match hot() {
        Some(hot) => hot.pool_wait.record(seconds),
        None => metrics::histogram!(DB_POOL_WAIT).record(seconds),
    }
}

/// The database connections at one instant.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    /// Open connections with no statement in flight.
    pub idle: usize,
    /// Open connections with statements in flight.
    pub in_use: usize,
    /// Callers waiting for room on a connection.
    pub waiting: usize,
    /// Statements in flight on each connection, in order.
    pub in_flight: Vec<usize>,
    /// How many statements each connection may carry now (the adaptive pipeline depth).
    pub depth: Vec<usize>,
}

/// Renders the Prometheus text, refreshing the pool gauges first; `trust` is every pinned
/// certificate in force.
pub fn render<'a>(pool: &Pool, trust: impl Iterator<Item = Expiry<'a>>) -> String {
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(pool.idle as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(pool.in_use as f64);
    metrics::gauge!(DB_POOL_WAITING).set(pool.waiting as f64);
    for (connection, depth) in pool.depth.iter().enumerate() {
        metrics::gauge!(DB_CONNECTION_DEPTH, "connection" => connection.to_string())
            .set(*depth as f64);
    }
    for (connection, in_flight) in pool.in_flight.iter().enumerate() {
        metrics::gauge!(DB_CONNECTION_IN_FLIGHT, "connection" => connection.to_string())
            .set(*in_flight as f64);
    }
    let mut text = match handle() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    };
    text.push_str(&render_trust_expiry(trust));
    text
}
