//! `agent-auth-tools bench`: a load generator that measures the service next to the physical limit
//! (its own SQL statement run directly, no gRPC, no crypto) and next to emulations of the
//! incumbent's multi-statement logins, in the same run, on the same database and pool size.
//!
//! Callers present genuine AWS `signature` documents signed with a key generated here (or
//! `--signing-key` for an external server) and trusted by the server as its `default` AWS key.
//! Speed lives here and in `benches/`, never in timed tests.

pub mod baseline;
pub mod drive;
pub mod plot;
pub mod proxy;
pub mod seed;
pub mod server;
pub mod storm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use serde::Serialize;

pub use drive::{Outcome, table};
pub use server::ServerMode;

use crate::cli::BenchArgs;
use agent_auth::grpc::pb;
use baseline::Incumbent;
use drive::{Cost, Tally};

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Service,
    Raw,
    V2_32,
    V2_33_1One,
    V2_33_1Two,
    V2_33_1History,
    GrpcHealth,
}

impl Scenario {
    /// Every scenario; the first five run by default.
    pub const ALL: [Scenario; 7] = [
        Scenario::Service,
        Scenario::Raw,
        Scenario::V2_32,
        Scenario::V2_33_1One,
        Scenario::V2_33_1Two,
        Scenario::V2_33_1History,
        Scenario::GrpcHealth,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Scenario::Service => "agent-auth",
            Scenario::Raw => "raw",
            Scenario::V2_32 => "v2.32",
            Scenario::V2_33_1One => "v2.33.1-1",
            Scenario::V2_33_1Two => "v2.33.1-2",
            Scenario::V2_33_1History => "v2.33.1-history",
            Scenario::GrpcHealth => "grpc-health",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::Service => "agent-auth (gRPC, verify + 1 statement)",
            Scenario::Raw => "the resolver's statement alone (ceiling)",
            Scenario::V2_32 => "incumbent v2.32 emulation",
            Scenario::V2_33_1One => "incumbent v2.33.1, 1 candidate",
            Scenario::V2_33_1Two => "incumbent v2.33.1, 2 candidates, by name",
            Scenario::V2_33_1History => "incumbent v2.33.1 on rebuilt workspaces",
            Scenario::GrpcHealth => "a gRPC health check on the same channels (the floor)",
        }
    }

    pub fn parse(key: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.key() == key.trim())
            .ok_or_else(|| {
                let keys: Vec<&str> = Self::ALL.iter().map(|s| s.key()).collect();
                format!("unknown scenario {key:?}; one of {}", keys.join(", "))
            })
    }

    pub fn defaults() -> Vec<Scenario> {
        Self::ALL[..5].to_vec()
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub agents: u64,
    pub builds_per_workspace: u32,
    /// Older builds' agents are soft-deleted (Coder ≥ v2.33.4) instead of live.
    pub soft_delete_stale: bool,
    /// Caller counts to run every scenario at (one for a plain run, several for a sweep).
    pub concurrency: Vec<usize>,
    pub duration: Duration,
    /// Stop each scenario after this many logins (within `duration`).
    pub logins: Option<u64>,
    pub pool_size: usize,
    /// The server's `--db-pipeline-depth`.
    pub pipeline_depth: usize,
    pub deadline: Duration,
    pub scenarios: Vec<Scenario>,
    pub server: ServerMode,
    /// PEM RSA key the external server trusts as its `default` AWS certificate's key.
    pub signing_key: Option<PathBuf>,
    /// Added round trip between the load (service and baselines) and the database.
    pub db_rtt: Duration,
    /// PgBouncer in front of the private database, in this mode.
    pub pgbouncer: Option<agent_auth::store::Pooler>,
    /// Which PgBouncer (`--pgbouncer-release`); unset, the one the mode needs
    /// ([`BenchOptions::bouncer`]).
    pub pgbouncer_release: Option<crate::testbed::Release>,
    /// A streaming replica of the private database serves the logins.
    pub replica: bool,
    pub explain: bool,
    pub plot: Option<PathBuf>,
    /// A boot storm instead of the scenarios.
    pub boot_storm: Option<storm::StormOptions>,
    /// The spawned server's --max-concurrent-requests, when not the default.
    pub max_concurrent_requests: Option<usize>,
    /// The server's --log-level (`info` is the default configuration's: a JSON line a login).
    pub server_log_level: String,
    /// Extra settings of the private embedded PostgreSQL.
    pub db_settings: Vec<(String, String)>,
}

impl BenchOptions {
    /// PgBouncer's mode and release, when one runs: the release asked for, else the one the
    /// mode needs (1.24 for `transaction-prepared`, Debian's 1.18 otherwise).
    fn bouncer(&self) -> Option<(agent_auth::store::Pooler, crate::testbed::Release)> {
        let mode = self
            .pgbouncer
            .filter(|mode| *mode != agent_auth::store::Pooler::None)?;
        let release = self
            .pgbouncer_release
            .unwrap_or(crate::testbed::Release::for_pooler(mode));
        Some((mode, release))
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub commit: Option<String>,
    pub agents: u64,
    pub builds_per_workspace: u32,
    pub soft_delete_stale: bool,
    pub agent_rows: i64,
    pub seed_seconds: f64,
    pub pool_size: usize,
    pub pipeline_depth: usize,
    pub deadline_ms: u128,
    pub db_rtt_ms: f64,
    /// The round trip to the database measured through the load's path (median of 50 empty
    /// queries): the proxy's delays run on tokio's 1 ms timer, so this is the number to quote.
    pub db_round_trip_ms: f64,
    pub db_settings: Vec<String>,
    pub server: String,
    pub outcomes: Vec<Outcome>,
    /// Peak RSS of the server process alone (spawned server only).
    pub server_peak_rss_mib: Option<f64>,
    /// Peak RSS of the bench process (includes the server with `--in-process`).
    pub bench_peak_rss_mib: Option<f64>,
    /// EXPLAIN (ANALYZE, BUFFERS) of the resolver's statement for one live instance.
    pub explain: Option<String>,
    /// The server's --max-concurrent-requests in this run (logins beyond it are shed).
    pub max_concurrent_requests: usize,
    /// The server's --log-level in this run.
    pub server_log_level: String,
    /// PgBouncer between the load and the database: its mode and release (`transaction on
    /// 1.18`), when one ran.
    pub pgbouncer: Option<String>,
    /// The boot storm's results, when one ran (instead of the scenarios).
    pub boot_storm: Option<storm::StormReport>,
}

/// Runs the whole benchmark; prints progress to stderr.
pub async fn run(options: BenchOptions, postgres_url: Option<String>) -> Result<Report, String> {
    let temp = tempfile::Builder::new()
        .prefix("agent-auth-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut cluster = None;
    let url = match postgres_url {
        Some(url) => url,
        None => {
            eprintln!(
                "bench: starting a private PostgreSQL in {}",
                temp.path().display()
            );
            let mut embedded = agent_auth::embedded::EmbeddedOptions::new(temp.path().join("pg"));
            embedded.ephemeral = true;
            embedded.settings = vec![("max_connections".into(), "300".into())];
            embedded
                .settings
                .extend(options.db_settings.iter().cloned());
            let started = agent_auth::embedded::EmbeddedPostgres::start(embedded)
                .await
                .map_err(|e| e.to_string())?;
            started
                .ensure_database("bench")
                .await
                .map_err(|e| e.to_string())?;
            let url = started.connection_string("bench");
            cluster = Some(started);
            url
        }
    };
    let result = run_on(&options, &url, temp.path(), cluster.as_ref()).await;
    if let Some(cluster) = cluster {
        let _ = cluster.stop().await;
    }
    result
}

async fn run_on(
    options: &BenchOptions,
    url: &str,
    scratch: &Path,
    cluster: Option<&agent_auth::embedded::EmbeddedPostgres>,
) -> Result<Report, String> {
    let seeded = seed_database(options, url).await?;
    // A boot storm's agents are all distinct; the scenarios cycle through a sample.
    let sample = options.boot_storm.map_or(1000, |storm| storm.agents);
    let history = seed::history_instances(options.agents, sample);
    let signing = Signing::prepare(options, scratch, &history)?;
    let beside = Beside::start(options, cluster, scratch, seeded.agent_rows).await?;
    let url = beside.url(url);
    let url = url.as_str();
    // The load reaches the database through the latency proxy when one is asked for; seeding
    // and EXPLAIN do not.
    let proxy = if options.db_rtt.is_zero() {
        None
    } else {
        Some(proxy::LatencyProxy::start(url, options.db_rtt).await?)
    };
    let load_url = proxy.as_ref().map_or(url, |p| p.url.as_str());
    let db_round_trip_ms = measure_round_trip(load_url).await?;
    eprintln!("bench: database round trip as the load sees it: {db_round_trip_ms:.2} ms (median)");
    let max_callers = options.concurrency.iter().copied().max().unwrap_or(1);
    let setup = server::ServerSetup {
        postgres_url: load_url,
        pool_size: options.pool_size,
        pipeline_depth: options.pipeline_depth,
        // A storm meets the server's own limit; the scenarios' callers never should.
        max_concurrent_requests: match (options.max_concurrent_requests, options.boot_storm) {
            (Some(limit), _) => limit,
            (None, Some(_)) => agent_auth::config::Settings::defaults()
                .map_err(|e| e.to_string())?
                .limits
                .max_concurrent_requests
                .get(),
            (None, None) => max_callers * 2,
        },
        aws_certificate: &signing.pem_path,
        gcp_jwks: &signing.jwks_path,
        scratch,
        pooler: options.pgbouncer.unwrap_or_default(),
        log_level: &options.server_log_level,
        replica_url: beside.replica.as_ref().map(|(_, url)| url.as_str()),
    };
    let max_concurrent_requests = setup.max_concurrent_requests;
    // The baselines' pool has the server's settings (size, checkout and statement timeouts).
    let store_config = agent_auth::config::Config::try_from(server::settings(&setup)?)
        .map_err(|e| e.to_string())?
        .store;
    let server = server::Server::start(&options.server, &setup).await?;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            agent_auth::client::connect(&server.grpc_url, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let pool = baseline::pool(load_url, &store_config)?;
    let sets = InstanceSets {
        history: Arc::new(history),
        single: Arc::new(seed::single_instances(options.agents, 1000)),
        pair: Arc::new(seed::pair_instances(options.agents, 1000)),
        documents: Arc::new(signing.documents),
        channels: Arc::new(channels),
    };
    let (outcomes, boot_storm) = match options.boot_storm {
        Some(storm) => (Vec::new(), Some(run_storm(storm, &sets, &server).await)),
        None => (run_all(options, &sets, &pool, &server).await, None),
    };
    pool.close();
    let server_peak_rss_mib = server.peak_rss_mib();
    let server_kind = match &options.server {
        ServerMode::Spawn { .. } => "child process",
        ServerMode::InProcess => "in the bench process",
        ServerMode::External { .. } => "external",
    };
    server.stop().await;
    drop(proxy);

    let explain = if options.explain {
        let instance = seed::history_instances(options.agents, 1)
            .pop()
            .unwrap_or_default();
        Some(explain_resolve(&seeded.client, &instance).await?)
    } else {
        None
    };
    let report = Report {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        commit: git_commit(),
        agents: options.agents,
        builds_per_workspace: options.builds_per_workspace,
        soft_delete_stale: options.soft_delete_stale,
        agent_rows: seeded.agent_rows,
        seed_seconds: seeded.seconds,
        pool_size: options.pool_size,
        pipeline_depth: options.pipeline_depth,
        deadline_ms: options.deadline.as_millis(),
        db_rtt_ms: options.db_rtt.as_secs_f64() * 1000.0,
        db_round_trip_ms,
        db_settings: options
            .db_settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        server: server_kind.into(),
        outcomes,
        server_peak_rss_mib,
        bench_peak_rss_mib: server::peak_rss_mib("/proc/self/status"),
        explain,
        max_concurrent_requests,
        server_log_level: options.server_log_level.clone(),
        pgbouncer: options
            .bouncer()
            .map(|(mode, release)| format!("{mode} on {}", release.label())),
        boot_storm,
    };
    if let Some(path) = &options.plot {
        write_plot(&report, path)?;
    }
    Ok(report)
}

/// The seeded database: a connection for EXPLAIN, the agent rows and how long seeding took.
struct Seeded {
    client: tokio_postgres::Client,
    agent_rows: i64,
    seconds: f64,
}

/// Migrates the (empty) database at `url` and seeds the agents with their history.
async fn seed_database(options: &BenchOptions, url: &str) -> Result<Seeded, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let pg_config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    agent_auth::store::migrate::run_migrations(&pg_config)
        .await
        .map_err(|e| text(&e))?;
    let client = agent_auth::store::migrate::dedicated(&pg_config)
        .await
        .map_err(|e| text(&e))?;
    let count = async |client: &tokio_postgres::Client| -> Result<i64, String> {
        client
            .query_one("SELECT count(*) FROM workspace_agents", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| text(&e))
    };
    if count(&client).await? > 0 {
        return Err("the benchmark needs an empty database (it seeds its own agents)".into());
    }
    eprintln!(
        "bench: seeding {} agents x {} builds (+ template imports, sub-agents, deleted workspaces, v2.33.1 groups) ...",
        options.agents, options.builds_per_workspace
    );
    let seeding = Instant::now();
    seed::seed(
        &client,
        options.agents,
        options.builds_per_workspace,
        options.soft_delete_stale,
    )
    .await
    .map_err(|e| text(&e))?;
    let seconds = seeding.elapsed().as_secs_f64();
    let agent_rows = count(&client).await?;
    eprintln!("bench: {agent_rows} agent rows in {seconds:.1} s");
    Ok(Seeded {
        client,
        agent_rows,
        seconds,
    })
}

/// The key the callers sign with, the server's trust files, and the signed documents.
struct Signing {
    pem_path: PathBuf,
    jwks_path: PathBuf,
    documents: Vec<(String, String)>,
}

impl Signing {
    fn prepare(options: &BenchOptions, scratch: &Path, history: &[String]) -> Result<Self, String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        let key = match &options.signing_key {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                PKey::private_key_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => PKey::from_rsa(openssl::rsa::Rsa::generate(1024).map_err(|e| text(&e))?)
                .map_err(|e| text(&e))?,
        };
        let pem_path = scratch.join("bench-aws.pem");
        std::fs::write(&pem_path, self_signed_pem(&key).map_err(|e| text(&e))?)
            .map_err(|e| text(&e))?;
        let jwks_path = scratch.join("jwks.json");
        std::fs::write(&jwks_path, r#"{"keys":[]}"#).map_err(|e| text(&e))?;
        let documents = history
            .iter()
            .map(|i| signed_document(&key, i))
            .collect::<Result<_, _>>()
            .map_err(|e| text(&e))?;
        Ok(Self {
            pem_path,
            jwks_path,
            documents,
        })
    }
}

/// PgBouncer and a streaming replica beside the private cluster, when asked for.
struct Beside {
    bouncer: Option<crate::testbed::PgBouncer>,
    replica: Option<(agent_auth::embedded::EmbeddedPostgres, String)>,
}

impl Beside {
    async fn start(
        options: &BenchOptions,
        cluster: Option<&agent_auth::embedded::EmbeddedPostgres>,
        scratch: &Path,
        agent_rows: i64,
    ) -> Result<Self, String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        let bouncer = match (options.bouncer(), cluster) {
            (None, _) => None,
            (Some((mode, release)), Some(cluster)) => {
                eprintln!(
                    "bench: PgBouncer {} in {mode} mode in front of the database",
                    release.label()
                );
                Some(
                    crate::testbed::PgBouncer::start(
                        cluster,
                        &scratch.join("pgbouncer"),
                        mode,
                        release,
                    )
                    .await
                    .map_err(|e| text(&e))?,
                )
            }
            (Some(_), None) => return Err("--pgbouncer needs the private database".into()),
        };
        let replica = match (options.replica, cluster) {
            (false, _) => None,
            (true, Some(cluster)) => {
                let mut replica_options =
                    agent_auth::embedded::EmbeddedOptions::new(scratch.join("replica"));
                replica_options.ephemeral = true;
                replica_options.settings = vec![("max_connections".into(), "300".into())];
                let replica = crate::testbed::replica(cluster, replica_options)
                    .await
                    .map_err(|e| text(&e))?;
                let replica_url = replica.connection_string("bench");
                wait_for_replay(&replica_url, agent_rows).await?;
                eprintln!("bench: a streaming replica serves the logins");
                Some((replica, replica_url))
            }
            (true, None) => return Err("--replica needs the private database".into()),
        };
        Ok(Self { bouncer, replica })
    }

    /// Where the server and the baselines connect: through PgBouncer when it stands there.
    fn url(&self, direct: &str) -> String {
        self.bouncer
            .as_ref()
            .map_or_else(|| direct.to_owned(), |b| b.connection_string("bench"))
    }
}

/// The boot storm, with the statements the server counted per agent.
async fn run_storm(
    options: storm::StormOptions,
    sets: &InstanceSets,
    server: &server::Server,
) -> storm::StormReport {
    eprintln!(
        "bench: boot storm: {} agents arriving within {:?}",
        options.agents, options.arrival
    );
    let before = server.scrape().await;
    let (mut report, elapsed) =
        storm::run(options, sets.documents.clone(), sets.channels.clone()).await;
    let after = server.scrape().await;
    let queries = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| server::sample(t, agent_auth::metrics::DB_QUERIES))
    };
    report.statements_per_agent = queries(&before)
        .zip(queries(&after))
        .map(|(before, after)| (after - before) / report.agents.max(1) as f64);
    eprintln!(
        "bench: boot storm: {} of {} agents logged in, the last {:.0} ms after the first arrived \
         ({:.0} ms after the last arrived); per agent p50 {:.0} ms, p99 {:.0} ms; {} attempts, \
         {} shed, {} unavailable, {} missed deadlines, {} failed for good; statements/agent {} \
         ({:.1} s in all)",
        report.logged_in,
        report.agents,
        report.all_in_ms,
        report.after_last_arrival_ms,
        report.p50_ms,
        report.p99_ms,
        report.attempts,
        report.shed,
        report.unavailable,
        report.missed_deadline,
        report.failed_for_good,
        drive::or_dash(report.statements_per_agent, 3),
        elapsed.as_secs_f64(),
    );
    report
}

/// Every scenario at every caller count, each summed up on one line as it ends.
async fn run_all(
    options: &BenchOptions,
    sets: &InstanceSets,
    pool: &deadpool_postgres::Pool,
    server: &server::Server,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for &callers in &options.concurrency {
        for &scenario in &options.scenarios {
            let outcome = run_scenario(scenario, callers, options, sets, pool, server).await;
            // Everything a reader of this line alone needs to trust the rate: the statements
            // each login cost and whether any failed.
            eprintln!(
                "bench: {:<45} {callers:>4} callers: {:>7.0} logins/s, p50 {:.2} ms, p99 {:.2} ms, \
                 missed {}, errors {}, statements/login {}",
                outcome.description,
                outcome.per_second,
                outcome.p50_ms,
                outcome.p99_ms,
                outcome.missed_deadline,
                outcome.errors.values().sum::<u64>(),
                drive::or_dash(outcome.statements_per_login, 2),
            );
            outcomes.push(outcome);
        }
    }
    outcomes
}

/// The SVG of logins/s and p99 against callers, with the run's facts as its subtitle.
fn write_plot(report: &Report, path: &Path) -> Result<(), String> {
    let subtitle = format!(
        "{} · commit {} · {} agents × {} builds · pool {} · database round trip {:.2} ms · 2 cores",
        &report.date[..10.min(report.date.len())],
        report.commit.as_deref().unwrap_or("?"),
        report.agents,
        report.builds_per_workspace,
        report.pool_size,
        report.db_round_trip_ms
    );
    std::fs::write(path, plot::svg(&report.outcomes, &subtitle))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

/// The instances and clients the scenarios share.
struct InstanceSets {
    history: Arc<Vec<String>>,
    single: Arc<Vec<String>>,
    pair: Arc<Vec<String>>,
    documents: Arc<Vec<(String, String)>>,
    channels: Arc<Vec<tonic::transport::Channel>>,
}

async fn run_scenario(
    scenario: Scenario,
    callers: usize,
    options: &BenchOptions,
    sets: &InstanceSets,
    pool: &deadpool_postgres::Pool,
    server: &server::Server,
) -> Outcome {
    let until = drive::Until {
        duration: options.duration,
        logins: options.logins,
    };
    let deadline = options.deadline;
    let label = format!("{} x{callers}", scenario.key());
    let load = |instances: &Arc<Vec<String>>| baseline::Load {
        label: &label,
        pool: pool.clone(),
        instances: instances.clone(),
        concurrency: callers,
        until,
        deadline,
    };
    let counted = |(tally, elapsed): (Tally, Duration)| {
        let (statements, pool_wait) = tally.counted_costs();
        let some = |v| (tally.logins() > 0).then_some(v);
        (some(statements), some(pool_wait), tally, elapsed)
    };
    let mut depth_in_use = None;
    let (statements, pool_wait, tally, elapsed) = match scenario {
        Scenario::Service | Scenario::GrpcHealth => {
            let before = server.scrape().await;
            let (tally, elapsed) =
                run_service(scenario, &label, sets, callers, until, deadline).await;
            let after = server.scrape().await;
            // A sample absent before the run has not been touched yet: zero.
            let delta = |name: &str| -> Option<f64> {
                let before = server::sample(before.as_ref()?, name).unwrap_or(0.0);
                Some(server::sample(after.as_ref()?, name)? - before)
            };
            let logins = tally.logins().max(1) as f64;
            let statements = delta(agent_auth::metrics::DB_QUERIES).map(|q| q / logins);
            let pool_wait = delta(&format!("{}_sum", agent_auth::metrics::DB_POOL_WAIT))
                .zip(delta(&format!(
                    "{}_count",
                    agent_auth::metrics::DB_POOL_WAIT
                )))
                .map(|(sum, count)| sum * 1000.0 / count.max(1.0));
            // The mean over every connection's series (the primary's and any replica's); a
            // health check puts nothing on them.
            let logins_ran = scenario == Scenario::Service;
            depth_in_use = after.as_deref().filter(|_| logins_ran).and_then(|text| {
                let name = agent_auth::metrics::DB_CONNECTION_DEPTH;
                let series = text
                    .lines()
                    .filter(|line| line.starts_with(&format!("{name}{{")))
                    .count();
                let sum = server::sample(text, name)?;
                (series > 0).then(|| sum / series as f64)
            });
            (statements, pool_wait, tally, elapsed)
        }
        Scenario::Raw => counted(baseline::run_raw(load(&sets.history)).await),
        Scenario::V2_32 => {
            counted(baseline::run_incumbent(load(&sets.history), Incumbent::V2_32, None).await)
        }
        Scenario::V2_33_1One => {
            counted(baseline::run_incumbent(load(&sets.single), Incumbent::V2_33_1, None).await)
        }
        Scenario::V2_33_1Two => counted(
            baseline::run_incumbent(load(&sets.pair), Incumbent::V2_33_1, Some("dev")).await,
        ),
        Scenario::V2_33_1History => {
            counted(baseline::run_incumbent(load(&sets.history), Incumbent::V2_33_1, None).await)
        }
    };
    let mut outcome = tally.outcome(
        scenario.key(),
        scenario.description(),
        callers,
        elapsed,
        (statements, pool_wait),
    );
    outcome.depth_in_use = depth_in_use;
    outcome
}

/// The service over real gRPC: a login per call, or for [`Scenario::GrpcHealth`] a health
/// check (`grpc.health.v1`, the whole server) on the same channels, which measures what the
/// gRPC transport alone costs both processes per call, with no verification and no statement
/// (`scripts/cpu-per-login` counts its instructions beside a login's).
async fn run_service(
    scenario: Scenario,
    label: &str,
    sets: &InstanceSets,
    callers: usize,
    until: drive::Until,
    deadline: Duration,
) -> (Tally, Duration) {
    let (channels, documents) = (sets.channels.clone(), sets.documents.clone());
    drive::drive(label, callers, until, deadline, move |n| {
        let channel = channels[n as usize % channels.len()].clone();
        // A login's evidence; none for a health check.
        let evidence = (scenario == Scenario::Service)
            .then(|| documents[n as usize % documents.len()].clone());
        async move {
            let code = |status: tonic::Status| format!("{:?}", status.code());
            let Some((document, signature)) = evidence else {
                return match agent_auth::client::check_serving(channel, "").await {
                    Ok(true) => Ok(Cost::default()),
                    Ok(false) => Err("NOT_SERVING".to_owned()),
                    Err(status) => Err(code(status)),
                };
            };
            let request = pb::AuthenticateRequest {
                identity: Some(pb::authenticate_request::Identity::Aws(
                    pb::AwsInstanceIdentity {
                        document,
                        signature,
                        rsa2048: String::new(),
                    },
                )),
                agent_name: String::new(),
            };
            agent_auth::client::authenticate(channel, request)
                .await
                .map(|_| Cost::default())
                .map_err(code)
        }
    })
    .await
}

/// Median time of an empty query (a round trip that executes nothing) on a dedicated connection.
async fn measure_round_trip(url: &str) -> Result<f64, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    let client = agent_auth::store::migrate::dedicated(&config)
        .await
        .map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(50);
    for _ in 0..50 {
        let started = Instant::now();
        client.simple_query("").await.map_err(|e| e.to_string())?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples.get(samples.len() / 2).copied().unwrap_or(0.0))
}

/// Waits until the replica at `url` has as many agent rows as were seeded.
async fn wait_for_replay(url: &str, agent_rows: i64) -> Result<(), String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    let client = agent_auth::store::migrate::dedicated(&config)
        .await
        .map_err(|e| e.to_string())?;
    for _ in 0..600 {
        let replayed: i64 = client
            .query_one("SELECT count(*) FROM workspace_agents", &[])
            .await
            .and_then(|r| r.try_get(0))
            .unwrap_or(-1);
        if replayed == agent_rows {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the replica did not catch up within 60 s".into())
}

/// EXPLAIN (ANALYZE, BUFFERS) of the resolver's statement for `instance`, on a dedicated
/// connection: the plan PostgreSQL picks for that value, then the generic plan, which is what a
/// prepared statement runs from its sixth execution on when PostgreSQL finds it no costlier.
async fn explain_resolve(
    client: &tokio_postgres::Client,
    instance: &str,
) -> Result<String, String> {
    let sql = format!(
        "EXPLAIN (ANALYZE, BUFFERS) {}",
        agent_auth::store::resolve::RESOLVE_SQL
    );
    let lines = |rows: Vec<tokio_postgres::Row>| -> String {
        rows.iter()
            .filter_map(|row| row.try_get::<_, String>(0).ok())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let custom = client
        .query(&sql, &[&instance])
        .await
        .map_err(|e| format!("EXPLAIN: {e}"))?;
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .map_err(|e| format!("SET plan_cache_mode: {e}"))?;
    let prepared = client
        .prepare_typed(&sql, &[tokio_postgres::types::Type::TEXT])
        .await
        .map_err(|e| format!("PREPARE: {e}"))?;
    let generic = client
        .query(&prepared, &[&instance])
        .await
        .map_err(|e| format!("EXPLAIN (generic): {e}"))?;
    Ok(format!(
        "-- the plan for this value\n{}\n-- the generic plan (a prepared statement's from its sixth execution, when no costlier)\n{}",
        lines(custom),
        lines(generic)
    ))
}

/// The short commit of the working directory, when it is a git checkout.
fn git_commit() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !commit.is_empty()).then_some(commit)
}

/// An AWS-style document and its base64 signature.
pub fn signed_document(
    key: &PKey<Private>,
    instance: &str,
) -> Result<(String, String), openssl::error::ErrorStack> {
    use base64::Engine as _;
    let document = format!(
        "{{\n  \"accountId\" : \"123456789012\",\n  \"instanceId\" : \"{instance}\",\n  \"pendingTime\" : \"2026-11-01T10:00:00Z\",\n  \"region\" : \"us-east-1\",\n  \"version\" : \"2017-09-30\"\n}}"
    );
    let mut signer = Signer::new(MessageDigest::sha256(), key)?;
    signer.update(document.as_bytes())?;
    Ok((
        document,
        base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec()?),
    ))
}

fn self_signed_pem(key: &PKey<Private>) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let mut name = openssl::x509::X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "bench")?;
    let name = name.build();
    let mut builder = openssl::x509::X509::builder()?;
    builder.set_version(2)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(key)?;
    builder.set_not_before(&*openssl::asn1::Asn1Time::days_from_now(0)?)?;
    builder.set_not_after(&*openssl::asn1::Asn1Time::days_from_now(365)?)?;
    builder.sign(key, MessageDigest::sha256())?;
    builder.build().to_pem()
}

/// `agent-auth-tools bench`: runs the load test and prints its report.
pub async fn command(args: BenchArgs) -> ExitCode {
    agent_auth::telemetry::init(agent_auth::config::LogFormat::Text, "warn", None);
    let scenarios = if args.scenarios.is_empty() {
        Ok(Scenario::defaults())
    } else {
        args.scenarios.iter().map(|s| Scenario::parse(s)).collect()
    };
    let scenarios = match scenarios {
        Ok(scenarios) => scenarios,
        Err(e) => {
            eprintln!("agent-auth-tools: bench: {e}");
            return ExitCode::from(64);
        }
    };
    let server = match (args.server, args.in_process) {
        (Some(url), _) => ServerMode::External {
            url,
            metrics: args.server_metrics,
        },
        (None, true) => ServerMode::InProcess,
        (None, false) => ServerMode::Spawn {
            wrapper: args
                .server_wrapper
                .as_deref()
                .map(|w| w.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
        },
    };
    let mut db_settings = Vec::new();
    for setting in &args.db_setting {
        match setting.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                db_settings.push((key.trim().to_owned(), value.trim().to_owned()));
            }
            _ => {
                eprintln!(
                    "agent-auth-tools: bench: --db-setting expects KEY=VALUE, found {setting:?}"
                );
                return ExitCode::from(64);
            }
        }
    }
    let boot_storm = args.boot_storm.map(|agents| storm::StormOptions {
        agents,
        arrival: args.arrival,
        deadline: args.deadline,
        give_up: args.give_up,
    });
    // The history group holds 19 in 20 of the agents (the 20th's workspace is deleted): seed
    // enough for every storm agent to be a distinct one that can log in.
    let agents = match args.boot_storm {
        Some(storm) => args.agents.max(storm as u64 * 20 / 19 + 1),
        None => args.agents,
    };
    let options = BenchOptions {
        agents,
        builds_per_workspace: args.builds,
        soft_delete_stale: args.soft_delete_stale,
        concurrency: if args.sweep.is_empty() {
            vec![args.concurrency]
        } else {
            args.sweep
        },
        duration: args.duration,
        logins: args.logins,
        pool_size: args.pool_size,
        pipeline_depth: args.pipeline_depth,
        deadline: args.deadline,
        scenarios,
        server,
        signing_key: args.signing_key,
        db_rtt: args.db_rtt,
        pgbouncer: args.pgbouncer,
        pgbouncer_release: args.pgbouncer_release.map(|r| r.0),
        replica: args.replica,
        explain: args.explain,
        plot: args.plot,
        boot_storm,
        max_concurrent_requests: args.max_concurrent_requests,
        server_log_level: args.server_log_level,
        db_settings,
    };
    match run(options, args.postgres_url).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("agent-auth-tools: bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                println!(
                    "{} · commit {} · {} agent rows ({} agents x {} builds{}) · pool {} × depth {} · deadline {} ms · database round trip {:.2} ms · server: {}",
                    report.date,
                    report.commit.as_deref().unwrap_or("?"),
                    report.agent_rows,
                    report.agents,
                    report.builds_per_workspace,
                    if report.soft_delete_stale {
                        ", older agents soft-deleted"
                    } else {
                        ""
                    },
                    report.pool_size,
                    report.pipeline_depth,
                    report.deadline_ms,
                    report.db_round_trip_ms,
                    report.server
                );
                print!("{}", table(&report.outcomes));
                for outcome in &report.outcomes {
                    if let Some(depth) = outcome.depth_in_use {
                        println!(
                            "pipeline depth in use after {} callers: {depth:.1} (of {})",
                            outcome.concurrency, report.pipeline_depth
                        );
                    }
                }
                if let Some(rss) = report.server_peak_rss_mib {
                    println!("peak RSS of the server process: {rss:.1} MiB");
                }
                if let Some(rss) = report.bench_peak_rss_mib {
                    println!("peak RSS of the bench process: {rss:.1} MiB");
                }
                if let Some(plan) = &report.explain {
                    println!("\n{plan}");
                }
                if let Some(storm) = &report.boot_storm {
                    println!(
                        "boot storm: {} agents within {:.0} ms: the last held its token {:.0} ms \
                         after the first arrived ({:.0} ms after the last arrived); per agent \
                         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} attempts, {} shed, {} \
                         unavailable, {} missed deadlines; {} failed for good; statements per \
                         agent {}",
                        storm.agents,
                        storm.arrival_ms,
                        storm.all_in_ms,
                        storm.after_last_arrival_ms,
                        storm.p50_ms,
                        storm.p99_ms,
                        storm.max_ms,
                        storm.attempts,
                        storm.shed,
                        storm.unavailable,
                        storm.missed_deadline,
                        storm.failed_for_good,
                        drive::or_dash(storm.statements_per_agent, 3),
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent-auth-tools: bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
