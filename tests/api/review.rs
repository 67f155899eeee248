//! The second adversarial review's findings (issue "Hardening, second pass"), one test each,
//! through the real binary where the defect was seen there. Loops are bounded in count and time.

use std::sync::Arc;
use std::time::Duration;

use agent_auth::grpc::pb;

use agent_auth::store::SILENCE_GRACE;

use crate::helpers::*;

/// The metrics upkeep's period (5 s, `metrics::UPKEEP_INTERVAL`) and a second.
const UPKEEP_PERIOD: Duration = Duration::from_secs(6);

/// Finding 6: histogram samples piled up until someone scraped `/metrics` (about 70 bytes per
/// request, refused ones included). With the upkeep on a timer, 200,000 requests and no scrape
/// leave the server's memory where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_memory_stays_flat_without_a_scrape() {
    let db = TestDb::migrated().await;
    let server = ServeProcess::start(&db, &["--log-level", "error"]).await;
    let channel = server.channel().await;
    // Refused at once (no identity): the cheapest request that still records an
    // authentication and its duration.
    let flood = async |count: usize| {
        let workers: Vec<_> = (0..16)
            .map(|_| {
                let channel = channel.clone();
                tokio::spawn(async move {
                    for _ in 0..count / 16 {
                        let refused = agent_auth::client::authenticate(
                            channel.clone(),
                            pb::AuthenticateRequest::default(),
                        )
                        .await;
                        assert!(refused.is_err());
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
    };
    flood(20_000).await;
    // One upkeep period for the warm-up's samples.
    tokio::time::sleep(UPKEEP_PERIOD).await;
    let before = server.rss_kib();
    flood(200_000).await;
    tokio::time::sleep(UPKEEP_PERIOD).await;
    let after = server.rss_kib();
    let grown = after.saturating_sub(before);
    // Unfolded, 200,000 samples are about 14 MB.
    assert!(
        grown < 4 * 1024,
        "RSS grew {grown} KiB over 200,000 requests with no scrape ({before} → {after} KiB)"
    );
    eprintln!("RSS {before} → {after} KiB over 200,000 requests with no scrape");
    let (_, text) = http_get(&format!("{}/metrics", server.admin_url)).await;
    assert!(
        metric_sum(
            &text,
            "agent_auth_authentications_total",
            &[("cloud", "none")]
        )
        .unwrap_or(0.0)
            >= 220_000.0
    );
    server.terminate().await;
}

async fn metric(server: &ServeProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", server.admin_url)).await;
    metric_sum(&text, name, labels).unwrap_or(-1.0)
}

/// A login for `instance` signed by `key`, for the agent `name` ("" for the only one).
fn login(key: &AwsKey, instance: &str, name: &str) -> pb::AuthenticateRequest {
    let document = aws_document(instance, "us-east-1", "123456789012");
    aws_request(&document, &key.sign(&document), name)
}

/// Finding 5: a replica whose replay was paused handed out tokens for a deleted workspace, a
/// deleted agent, an old build's agent and an instance claimed by two workspaces. With
/// `--replica-max-lag`, a replica further behind is skipped (and counted) and the primary
/// refuses all four; caught up again, the replica serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_lag_bound_is_skipped() {
    let dir = reachable_tempdir();
    let (primary, db) = private_database(&dir.path().join("primary"), "lagging").await;
    let mut options = agent_auth::embedded::EmbeddedOptions::new(dir.path().join("replica"));
    options.ephemeral = true;
    let replica = primary.replica(options).await.unwrap();
    let replica_url = replica.connection_string(&db.name);

    let world = World::new(&db).await;
    let deleted_workspace = world.workspace().await;
    let gone = instance_id();
    world
        .agent(world.build(deleted_workspace, 1).await, "main", &gone)
        .await;
    let deleted_agent = instance_id();
    let agent = world
        .agent(
            world.build(world.workspace().await, 1).await,
            "main",
            &deleted_agent,
        )
        .await;
    let rebuilt_workspace = world.workspace().await;
    let old_build = instance_id();
    world
        .agent(world.build(rebuilt_workspace, 1).await, "main", &old_build)
        .await;
    let claimed = instance_id();
    world
        .agent(world.build(world.workspace().await, 1).await, "main", &claimed)
        .await;
    let on_replica = async |instance: &str| {
        connect(&replica_url)
            .await
            .query_opt(
                "SELECT 1 FROM workspace_agents WHERE auth_instance_id = $1",
                &[&instance],
            )
            .await
            .map(|row| row.is_some())
            .unwrap_or(false)
    };
    assert!(eventually(Duration::from_secs(10), async || on_replica(&claimed).await).await);

    let key = Arc::new(AwsKey::generate(1024));
    let flag = key.flag("default");
    let server = ServeProcess::start(
        &db,
        &[
            "--aws-certificate",
            &flag,
            "--postgres-replica-url",
            &replica_url,
            "--replica-max-lag",
            "1s",
            "--log-level",
            "warn",
        ],
    )
    .await;
    let channel = server.channel().await;
    let lag = ("replica", "1");
    let current = eventually(Duration::from_secs(10), async || {
        metric(&server, "agent_auth_db_replica_lag_seconds", &[lag]).await <= 1.0
    });
    assert!(current.await, "the replica is measured within the bound");
    for instance in [&gone, &deleted_agent, &old_build, &claimed] {
        success(agent_auth::client::authenticate(channel.clone(), login(&key, instance, "")).await);
    }
    assert_eq!(
        metric(&server, "agent_auth_db_queries_total", &[("target", "replica")]).await,
        4.0,
        "the replica served the four while current"
    );

    // Finding 15: a document for an unknown instance (a replay) cost two statements per
    // request with a replica; the primary's miss is now remembered for a moment.
    let unknown = instance_id();
    let primary_before =
        metric(&server, "agent_auth_db_queries_total", &[("target", "primary")]).await;
    for _ in 0..5 {
        let result = agent_auth::client::authenticate(channel.clone(), login(&key, &unknown, "")).await;
        fails_with(result, tonic::Code::NotFound, "INSTANCE_NOT_FOUND");
    }
    let on_primary =
        metric(&server, "agent_auth_db_queries_total", &[("target", "primary")]).await
            - primary_before;
    assert_eq!(on_primary, 1.0, "five replays asked the primary {on_primary} times");

    // Replay paused; the primary revokes all four.
    let replica_admin = connect(&replica_url).await;
    replica_admin
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    world.delete_workspace(deleted_workspace).await;
    world
        .exec(
            "UPDATE workspace_agents SET deleted = true WHERE id = $1",
            &[&agent.id],
        )
        .await;
    world
        .agent(
            world.build(rebuilt_workspace, 2).await,
            "main",
            &instance_id(),
        )
        .await;
    world
        .agent(world.build(world.workspace().await, 1).await, "main", &claimed)
        .await;
    assert!(!on_replica(&instance_id()).await);
    let skipped = eventually(Duration::from_secs(10), async || {
        metric(&server, "agent_auth_db_replica_lag_seconds", &[lag]).await > 1.0
    });
    assert!(skipped.await, "the paused replica's lag passes the bound");
    let replica_before =
        metric(&server, "agent_auth_db_queries_total", &[("target", "replica")]).await;
    let refusals = [
        (&gone, "INSTANCE_NOT_FOUND"),
        (&deleted_agent, "INSTANCE_NOT_FOUND"),
        (&old_build, "NOT_LATEST_BUILD"),
    ];
    for (instance, reason) in refusals {
        let result = agent_auth::client::authenticate(channel.clone(), login(&key, instance, "")).await;
        let (_, got, message) = failure(result);
        assert_eq!(got, reason, "{message}");
    }
    let conflict =
        agent_auth::client::authenticate(channel.clone(), login(&key, &claimed, "")).await;
    assert!(conflict.is_err(), "an instance claimed by two workspaces got a token");
    assert_eq!(
        metric(&server, "agent_auth_db_queries_total", &[("target", "replica")]).await,
        replica_before,
        "nothing ran on the lagging replica"
    );
    assert!(
        metric(
            &server,
            "agent_auth_db_replica_skipped_total",
            &[lag, ("reason", "lag")]
        )
        .await
            >= 4.0
    );

    // Caught up: served by the replica again, and it refuses as the primary does.
    replica_admin
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    let back = eventually(Duration::from_secs(15), async || {
        let before =
            metric(&server, "agent_auth_db_queries_total", &[("target", "replica")]).await;
        let result =
            agent_auth::client::authenticate(channel.clone(), login(&key, &old_build, "")).await;
        result.is_err()
            && metric(&server, "agent_auth_db_queries_total", &[("target", "replica")]).await
                > before
    });
    assert!(back.await, "the replica serves again once caught up");
    server.terminate().await;
    drop(replica);
}

/// A TCP proxy on loopback to a cluster's unix socket that can stop forwarding on the
/// connections it has (a black hole: the peer still acknowledges, nothing comes back) while
/// new connections still work.
struct BlackHoleProxy {
    url: String,
    /// Connections numbered below this forward nothing any more.
    cutoff: Arc<std::sync::atomic::AtomicU64>,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Forwards `from` to `to` until the connection `number` falls below `cutoff`; then holds both
/// open and silent.
async fn pump(
    number: u64,
    cutoff: Arc<std::sync::atomic::AtomicU64>,
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if number < cutoff.load(std::sync::atomic::Ordering::SeqCst) {
            return std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl BlackHoleProxy {
    async fn start(db: &TestDb) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let field = |key: &str| {
            db.url
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('\'').to_owned())
                .unwrap()
        };
        let socket = format!("{}/.s.PGSQL.{}", field("host"), field("port"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!(
            "host=127.0.0.1 port={port} user={} dbname={} sslmode=disable",
            field("user"),
            field("dbname")
        );
        let cutoff = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let task = {
            let (cutoff, accepted) = (cutoff.clone(), accepted.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let number = accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = tokio::net::UnixStream::connect(&socket).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(number, cutoff.clone(), client_read, server_write));
                    tokio::spawn(pump(number, cutoff.clone(), server_read, client_write));
                }
            })
        };
        Self {
            url,
            cutoff,
            accepted,
            task,
        }
    }

    /// From now on, every connection opened so far forwards nothing.
    fn black_hole_existing(&self) {
        use std::sync::atomic::Ordering;
        self.cutoff
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Finding 4: a proxy that stopped forwarding on the existing database connections (new ones
/// still worked) kept every login failing and `/readyz` at 503 for as long as the test ran.
/// A connection silent for `statement_timeout` plus [`SILENCE_GRACE`] with statements waiting
/// is now declared dead and replaced: logins and readiness come back within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_database_connection_is_replaced_within_seconds() {
    let db = TestDb::migrated().await;
    let agents = agents(&db, 8).await;
    let proxy = BlackHoleProxy::start(&db).await;
    let through = TestDb {
        name: db.name.clone(),
        url: proxy.url.clone(),
    };
    let key = Arc::new(AwsKey::generate(1024));
    let flag = key.flag("default");
    let server = ServeProcess::start(
        &through,
        &[
            "--aws-certificate",
            &flag,
            "--db-statement-timeout",
            "1s",
            "--log-level",
            "error",
        ],
    )
    .await;
    let channel = server.channel().await;
    let all_log_in = async || {
        let calls: Vec<_> = agents
            .iter()
            .map(|(instance, token)| {
                let (channel, request, token) = (channel.clone(), login(&key, instance, ""), *token);
                tokio::spawn(async move {
                    agent_auth::client::authenticate(channel, request)
                        .await
                        .is_ok_and(|r| r.session_token == token.to_string())
                })
            })
            .collect();
        let mut all = true;
        for call in calls {
            all &= call.await.unwrap();
        }
        all
    };
    assert!(all_log_in().await);

    proxy.black_hole_existing();
    let cut = std::time::Instant::now();
    let back = eventually(Duration::from_secs(20), async || all_log_in().await).await;
    let recovered = cut.elapsed();
    assert!(back, "logins never came back after the black hole");
    // statement_timeout (1 s) + the grace, a reconnect, and a login's own time.
    assert!(
        recovered < Duration::from_secs(1) + SILENCE_GRACE + Duration::from_secs(5),
        "logins came back only after {recovered:?}"
    );
    let ready = eventually(Duration::from_secs(5), async || {
        http_get(&format!("{}/readyz", server.admin_url)).await.0 == 200
    });
    assert!(ready.await, "/readyz did not come back");
    assert!(
        metric(&server, "agent_auth_db_connections_silent_total", &[]).await >= 1.0,
        "the silent connection was counted"
    );
    eprintln!("logins back {recovered:?} after the database connections were black-holed");
    server.terminate().await;
}

/// Finding 3: with 30–50 % of the calls on one busy channel given 1–5 ms deadlines, the
/// cancelled streams tripped h2's rapid-reset guard (20 pending resets), whose GOAWAY failed
/// the neighbours' calls (UNAVAILABLE "GOAWAY"). Half the calls here are cancelled after 1 ms;
/// none of the others may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_churn_never_fails_a_neighbour_on_the_same_channel() {
    let db = TestDb::migrated().await;
    let agents = Arc::new(agents(&db, 16).await);
    let key = Arc::new(AwsKey::generate(1024));
    let flag = key.flag("default");
    let server =
        ServeProcess::start(&db, &["--aws-certificate", &flag, "--log-level", "error"]).await;
    let channel = server.channel().await;
    let workers: Vec<_> = (0..64)
        .map(|worker| {
            let (channel, agents, key) = (channel.clone(), agents.clone(), key.clone());
            tokio::spawn(async move {
                let mut client =
                    pb::agent_auth_client::AgentAuthClient::new(channel);
                let (mut failed, mut cancelled, mut ok) = (Vec::new(), 0, 0);
                for call in 0..120usize {
                    let (instance, token) = &agents[(worker + call) % agents.len()];
                    let mut request = tonic::Request::new(login(&key, instance, ""));
                    let churn = call % 2 == 0;
                    request.set_timeout(if churn {
                        Duration::from_millis(1)
                    } else {
                        Duration::from_secs(20)
                    });
                    match client.authenticate(request).await {
                        Ok(answer) => {
                            assert_eq!(answer.into_inner().session_token, token.to_string());
                            ok += 1;
                        }
                        Err(_) if churn => cancelled += 1,
                        Err(status) => failed.push(agent_auth::client::describe(&status)),
                    }
                }
                (failed, cancelled, ok)
            })
        })
        .collect();
    let (mut failed, mut cancelled, mut ok) = (Vec::new(), 0, 0);
    for worker in workers {
        let (f, c, o) = worker.await.unwrap();
        failed.extend(f);
        cancelled += c;
        ok += o;
    }
    eprintln!("{ok} ok, {cancelled} cancelled by their 1 ms deadline, {} neighbours failed", failed.len());
    assert!(cancelled > 100, "the churn did not happen ({cancelled} cancelled)");
    assert!(
        failed.is_empty(),
        "{} of 3,840 calls with a 20 s deadline failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    server.terminate().await;
}
