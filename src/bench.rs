//! `agent-auth bench`: a load generator that measures the service next to the physical limit
//! (its own SQL statement run directly, no gRPC, no crypto) and next to an emulation of the
//! incumbent's multi-statement login, in the same run, on the same database and pool size.
//!
//! Data: N agents with history (several builds per workspace with stale agents of the same
//! instance and name, template-import agents, sub-agents, deleted workspaces), generated with
//! `generate_series`. Callers present genuine AWS `signature` documents signed with a key
//! generated here and configured as the server's `default` AWS key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use serde::Serialize;

use crate::grpc::pb;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub agents: u64,
    pub builds_per_workspace: u32,
    pub concurrency: usize,
    pub duration: Duration,
    pub pool_size: usize,
    pub deadline: Duration,
}

/// One scenario's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub statements_per_login: f64,
    pub logins: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub missed_deadline: u64,
    pub errors: BTreeMap<String, u64>,
}

/// Seeds the owned schema: `agents` live agents on latest builds of `agents` workspaces, each
/// workspace with `builds - 1` older builds whose agents carry the same instance id and name
/// (stale history), plus 10 % template-import agents, 5 % sub-agents and 5 % of workspaces
/// deleted. Returns the instance ids of the live agents (`i-` + 17 hex digits of the index).
pub async fn seed(
    client: &tokio_postgres::Client,
    agents: u64,
    builds: u32,
) -> Result<(), tokio_postgres::Error> {
    let builds = i64::from(builds.max(1));
    let agents = i64::try_from(agents).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO workspaces (id, deleted) SELECT md5('w' || g)::uuid, g % 20 = 0 FROM generate_series(1, $1::bigint) g",
            &[&agents],
        )
        .await?;
    for build in 1..=builds {
        client
            .execute(
                "INSERT INTO provisioner_jobs (id, type) SELECT md5('j' || $2::bigint || '-' || g)::uuid, 'workspace_build' FROM generate_series(1, $1::bigint) g",
                &[&agents, &build],
            )
            .await?;
        client
            .execute(
                "INSERT INTO workspace_builds (workspace_id, build_number, job_id) \
                 SELECT md5('w' || g)::uuid, $2::int, md5('j' || $2::bigint || '-' || g)::uuid FROM generate_series(1, $1::bigint) g",
                &[&agents, &(build as i32)],
            )
            .await?;
        client
            .execute(
                "INSERT INTO workspace_resources (id, job_id) SELECT md5('r' || $2::bigint || '-' || g)::uuid, md5('j' || $2::bigint || '-' || g)::uuid FROM generate_series(1, $1::bigint) g",
                &[&agents, &build],
            )
            .await?;
        client
            .execute(
                "INSERT INTO workspace_agents (id, name, resource_id, auth_instance_id) \
                 SELECT md5('a' || $2::bigint || '-' || g)::uuid, 'main', md5('r' || $2::bigint || '-' || g)::uuid, 'i-' || lpad(to_hex(g), 17, '0') \
                 FROM generate_series(1, $1::bigint) g",
                &[&agents, &build],
            )
            .await?;
    }
    // Sub-agents on the latest build (5 %), template-import agents with the same ids (10 %).
    client
        .execute(
            "INSERT INTO workspace_agents (name, resource_id, auth_instance_id, parent_id) \
             SELECT 'devcontainer', md5('r' || $2::bigint || '-' || g)::uuid, 'i-' || lpad(to_hex(g), 17, '0'), md5('a' || $2::bigint || '-' || g)::uuid \
             FROM generate_series(1, $1::bigint) g WHERE g % 20 = 1",
            &[&agents, &builds],
        )
        .await?;
    client
        .batch_execute(&format!(
            "INSERT INTO provisioner_jobs (id, type) SELECT md5('t' || g)::uuid, 'template_version_import' FROM generate_series(1, {agents}) g WHERE g % 10 = 2;
             INSERT INTO workspace_resources (id, job_id) SELECT md5('tr' || g)::uuid, md5('t' || g)::uuid FROM generate_series(1, {agents}) g WHERE g % 10 = 2;
             INSERT INTO workspace_agents (name, resource_id, auth_instance_id) SELECT 'main', md5('tr' || g)::uuid, 'i-' || lpad(to_hex(g), 17, '0') FROM generate_series(1, {agents}) g WHERE g % 10 = 2;
             ANALYZE;"
        ))
        .await
}

/// Instance ids of live agents (workspace not deleted) to log in with.
pub fn live_instances(agents: u64, sample: usize) -> Vec<String> {
    let step = (agents / sample.max(1) as u64).max(1);
    (1..=agents)
        .step_by(step as usize)
        .filter(|g| g % 20 != 0)
        .take(sample)
        .map(|g| format!("i-{g:017x}"))
        .collect()
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

/// Latencies and error counts gathered by the callers.
#[derive(Default)]
pub struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    missed: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.missed += other.missed;
    }

    fn outcome(mut self, scenario: &str, statements: f64, elapsed: Duration) -> Outcome {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
            self.latencies_us[i] as f64 / 1000.0
        };
        let logins = self.latencies_us.len() as u64;
        Outcome {
            scenario: scenario.to_owned(),
            statements_per_login: statements,
            logins,
            per_second: logins as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            missed_deadline: self.missed,
            errors: self.errors,
        }
    }
}

/// Runs `work` from `concurrency` callers for `duration`; each call's outcome is Ok or an
/// error label. Calls that take longer than `deadline` are counted as missed (and failed).
async fn drive<F, Fut>(
    concurrency: usize,
    duration: Duration,
    deadline: Duration,
    work: F,
) -> (Tally, Duration)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (stop, counter, work) = (stop.clone(), counter.clone(), work.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let begun = Instant::now();
                    match tokio::time::timeout(deadline, work(n)).await {
                        Ok(Ok(())) => tally.latencies_us.push(begun.elapsed().as_micros() as u64),
                        Ok(Err(label)) => *tally.errors.entry(label).or_default() += 1,
                        Err(_) => {
                            tally.missed += 1;
                            *tally.errors.entry("deadline".into()).or_default() += 1;
                        }
                    }
                }
                tally
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.merge(tally);
        }
    }
    (total, started.elapsed())
}

/// The service over real gRPC.
pub async fn run_service(
    channels: Vec<tonic::transport::Channel>,
    documents: Arc<Vec<(String, String)>>,
    options: &BenchOptions,
) -> (Tally, Duration) {
    let channels = Arc::new(channels);
    drive(
        options.concurrency,
        options.duration,
        options.deadline,
        move |n| {
            let channel = channels[n as usize % channels.len()].clone();
            let (document, signature) = documents[n as usize % documents.len()].clone();
            async move {
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
                crate::client::authenticate(channel, request)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}", s.code()))
            }
        },
    )
    .await
}

/// Drives logins that each check out a pooled connection and run `login` on it.
async fn drive_on_pool<F, Fut>(
    pool: Pool,
    instances: Arc<Vec<String>>,
    options: &BenchOptions,
    login: F,
) -> (Tally, Duration)
where
    F: Fn(deadpool_postgres::Object, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    drive(
        options.concurrency,
        options.duration,
        options.deadline,
        move |n| {
            let (pool, login) = (pool.clone(), login.clone());
            let instance = instances[n as usize % instances.len()].clone();
            async move {
                let client = pool.get().await.map_err(|_| "pool".to_owned())?;
                login(client, instance).await
            }
        },
    )
    .await
}

/// The resolver's statement alone, through a pool of the same size: the same prepared
/// statement the service runs, without gRPC or cryptography.
pub async fn run_raw(
    pool: Pool,
    instances: Arc<Vec<String>>,
    options: &BenchOptions,
) -> (Tally, Duration) {
    drive_on_pool(pool, instances, options, |client, instance| async move {
        let sql = |e: tokio_postgres::Error| format!("sql: {e}");
        let statement = crate::store::resolve::prepare(&client).await.map_err(sql)?;
        let rows = client.query(&statement, &[&instance]).await.map_err(sql)?;
        if rows.is_empty() {
            Err("no rows".into())
        } else {
            Ok(())
        }
    })
    .await
}

/// Coder v2.32's login, statement by statement (agent by instance id, its resource, its job,
/// the authorization look-ups of the build by job and the workspace by id, the build by id,
/// and the workspace's latest build), each a round trip on one pooled connection, with the
/// statements prepared once per connection as pgx's statement cache does.
pub const INCUMBENT_V2_32: &[&str] = &[
    "SELECT * FROM workspace_agents WHERE auth_instance_id = $1::text AND deleted = false ORDER BY created_at DESC LIMIT 1",
    "SELECT * FROM workspace_resources WHERE id = $1::uuid",
    "SELECT *, type::text AS job_type FROM provisioner_jobs WHERE id = $1::uuid",
    "SELECT * FROM workspace_builds WHERE job_id = $1::uuid",
    "SELECT * FROM workspaces WHERE id = $1::uuid",
    "SELECT * FROM workspace_builds WHERE id = $1::uuid",
    "SELECT * FROM workspace_builds WHERE workspace_id = $1::uuid ORDER BY build_number DESC LIMIT 1",
];

/// Runs statement `i` of [`INCUMBENT_V2_32`] (prepared and cached on the connection).
async fn incumbent_step(
    client: &deadpool_postgres::Object,
    i: usize,
    param: &(dyn tokio_postgres::types::ToSql + Sync),
) -> Result<tokio_postgres::Row, String> {
    let sql = |e: tokio_postgres::Error| format!("sql: {e}");
    let statement = client
        .prepare_cached(INCUMBENT_V2_32[i])
        .await
        .map_err(sql)?;
    client.query_one(&statement, &[param]).await.map_err(sql)
}

pub async fn run_incumbent(
    pool: Pool,
    instances: Arc<Vec<String>>,
    options: &BenchOptions,
) -> (Tally, Duration) {
    drive_on_pool(pool, instances, options, |client, instance| async move {
        let column = |row: &tokio_postgres::Row, name: &str| -> Result<uuid::Uuid, String> {
            row.try_get(name).map_err(|e| format!("sql: {e}"))
        };
        let agent = incumbent_step(&client, 0, &instance).await?;
        let resource = incumbent_step(&client, 1, &column(&agent, "resource_id")?).await?;
        let job_id = column(&resource, "job_id")?;
        let job = incumbent_step(&client, 2, &job_id).await?;
        // v2.32 took the newest agent for the instance; when that is a template import's, it
        // answered 400 here ("jobs cannot be authenticated"), as emulated.
        let job_type: String = job.try_get("job_type").map_err(|e| format!("sql: {e}"))?;
        if job_type != "workspace_build" {
            return Err("400: not a workspace_build job".into());
        }
        let build = incumbent_step(&client, 3, &job_id).await?;
        let (workspace_id, build_id) = (column(&build, "workspace_id")?, column(&build, "id")?);
        incumbent_step(&client, 4, &workspace_id).await?;
        incumbent_step(&client, 5, &build_id).await?;
        let latest = incumbent_step(&client, 6, &workspace_id).await?;
        if column(&latest, "id")? == build_id {
            Ok(())
        } else {
            Err("400: not the latest build".into())
        }
    })
    .await
}

pub fn summarize(tally: Tally, scenario: &str, statements: f64, elapsed: Duration) -> Outcome {
    tally.outcome(scenario, statements, elapsed)
}

/// Renders outcomes as a Markdown table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | statements/login | logins/s | p50 ms | p95 ms | p99 ms | missed deadline | errors |\n|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:?} |\n",
            o.scenario,
            o.statements_per_login,
            o.per_second,
            o.p50_ms,
            o.p95_ms,
            o.p99_ms,
            o.missed_deadline,
            o.errors
        ));
    }
    out
}

/// Runs the whole benchmark; prints progress to stderr and returns the outcomes.
pub async fn run(
    options: BenchOptions,
    postgres_url: Option<String>,
) -> Result<Vec<Outcome>, String> {
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
            let mut embedded = crate::embedded::EmbeddedOptions::new(temp.path().join("pg"));
            embedded.ephemeral = true;
            embedded.settings = vec![("max_connections".into(), "200".into())];
            let started = crate::embedded::EmbeddedPostgres::start(embedded)
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
    let result = run_on(&options, &url, temp.path()).await;
    if let Some(cluster) = cluster {
        let _ = cluster.stop().await;
    }
    result
}

async fn run_on(
    options: &BenchOptions,
    url: &str,
    scratch: &std::path::Path,
) -> Result<Vec<Outcome>, String> {
    let pg_config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    crate::store::migrate::run_migrations(&pg_config)
        .await
        .map_err(|e| e.to_string())?;
    let client = crate::store::migrate::dedicated(&pg_config)
        .await
        .map_err(|e| e.to_string())?;
    let existing: i64 = client
        .query_one("SELECT count(*) FROM workspace_agents", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| e.to_string())?;
    if existing > 0 {
        return Err("the benchmark needs an empty database (it seeds its own agents)".into());
    }
    let seeding = Instant::now();
    seed(&client, options.agents, options.builds_per_workspace)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "bench: seeded {} agents x {} builds (+ template imports, sub-agents, deleted workspaces) in {:.1?}",
        options.agents,
        options.builds_per_workspace,
        seeding.elapsed()
    );

    let key = PKey::from_rsa(openssl::rsa::Rsa::generate(1024).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let pem_path = scratch.join("bench-aws.pem");
    std::fs::write(&pem_path, self_signed_pem(&key).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let jwks_path = scratch.join("jwks.json");
    std::fs::write(&jwks_path, r#"{"keys":[]}"#).map_err(|e| e.to_string())?;
    let instances = live_instances(options.agents, 1000);
    let documents: Vec<(String, String)> = instances
        .iter()
        .map(|i| signed_document(&key, i))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;

    let raw = crate::config::RawConfig {
        grpc_listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        postgres_url: Some(url.to_owned()),
        db_pool_size: options.pool_size,
        max_concurrent_requests: options.concurrency.max(1) * 2,
        aws_certificate: vec![format!("default={}", pem_path.display())],
        gcp_jwks: jwks_path.display().to_string(),
        log_level: "warn".into(),
        ..crate::config::RawConfig::default()
    };
    let config = crate::config::Config::from_raw(raw).map_err(|e| e.to_string())?;
    let store_config = config.store.clone();
    let app = crate::app::App::build(config)
        .await
        .map_err(|e| e.to_string())?;
    let addr = app.grpc_addr().ok_or("no gRPC address")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stop_rx.await;
    }));
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            crate::client::connect(&format!("http://{addr}"), Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let mut outcomes = Vec::new();

    eprintln!(
        "bench: agent-auth over gRPC, {} callers for {:?} ...",
        options.concurrency, options.duration
    );
    let before = queries_so_far();
    let (tally, elapsed) = run_service(channels, Arc::new(documents), options).await;
    let logins = tally.latencies_us.len().max(1) as f64;
    let statements = (queries_so_far() - before) / logins;
    outcomes.push(summarize(
        tally,
        "agent-auth (gRPC, verify + 1 statement)",
        statements,
        elapsed,
    ));

    let store = crate::store::Store::connect(url, &store_config).map_err(|e| e.to_string())?;
    let instances = Arc::new(instances);
    eprintln!("bench: the resolver's statement alone ...");
    let (tally, elapsed) = run_raw(store.pool().clone(), instances.clone(), options).await;
    outcomes.push(summarize(tally, "raw statement (ceiling)", 1.0, elapsed));
    eprintln!("bench: incumbent v2.32 emulation ...");
    let (tally, elapsed) = run_incumbent(store.pool().clone(), instances, options).await;
    outcomes.push(summarize(
        tally,
        "incumbent v2.32 emulation",
        INCUMBENT_V2_32.len() as f64,
        elapsed,
    ));
    store.close();

    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(outcomes)
}

fn queries_so_far() -> f64 {
    crate::metrics::handle()
        .map(|h| h.render())
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(crate::metrics::DB_QUERIES))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
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

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
