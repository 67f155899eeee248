//! Scaling past one database, against the real servers: PgBouncer (Debian's 1.18) in session
//! and transaction mode in front of a cluster of the test's own, and a streaming replica made
//! with `pg_basebackup -R`.

use std::sync::Arc;
use std::time::Duration;

use agent_auth::embedded::{EmbeddedOptions, EmbeddedPostgres};
use agent_auth_tools::testbed::{self, PgBouncer};

use crate::helpers::*;

/// Every agent logs in `rounds` times, all at once; each gets its own token. Returns failures.
async fn storm(
    server: &TestServer,
    key: &Arc<AwsKey>,
    agents: &[(String, uuid::Uuid)],
    rounds: usize,
) -> usize {
    let channel = server.channel().await;
    let calls: Vec<_> = (0..rounds)
        .flat_map(|_| agents.iter())
        .map(|(instance, token)| {
            let (channel, key, instance, token) =
                (channel.clone(), key.clone(), instance.clone(), *token);
            tokio::spawn(async move {
                match agent_auth::client::authenticate(channel, request(&key, &instance)).await {
                    Ok(response) => {
                        assert_eq!(
                            response.session_token,
                            token.to_string(),
                            "a caller got another caller's row"
                        );
                        true
                    }
                    Err(_) => false,
                }
            })
        })
        .collect();
    let mut failed = 0;
    for call in calls {
        if !call.await.unwrap() {
            failed += 1;
        }
    }
    failed
}

async fn queries(server: &TestServer, target: &str) -> f64 {
    metric(server, "agent_auth_db_queries_total", &[("target", target)]).await
}

/// The same database reached through PgBouncer.
fn through(db: &TestDb, url: String) -> TestDb {
    TestDb {
        name: db.name.clone(),
        url,
    }
}

/// Through PgBouncer in every mode, with the pipeline at its default depth: every login gets
/// its own agent's token with exactly one statement, on Debian's 1.18 (session, and transaction
/// mode keeping nothing on a connection: no startup options, no named statement) and on 1.24
/// (session, and `transaction-prepared`: one Parse per connection, not per login, with PgBouncer
/// preparing the statement on each server session that runs it). A transaction-mode pooler the
/// service was not told about is named in the readiness reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_go_through_pgbouncer_in_session_and_transaction_mode() {
    use agent_auth::store::Pooler;
    use agent_auth_tools::testbed::Release;
    let dir = reachable_tempdir();
    let (cluster, db) = private_database(&dir.path().join("pg"), "pooled").await;
    let agents = agents(&db, 20).await;
    let key = Arc::new(AwsKey::generate(1024));
    let flag = key.flag("default");
    for (mode, release) in [
        (Pooler::Session, Release::Debian1_18),
        (Pooler::Transaction, Release::Debian1_18),
        (Pooler::Session, Release::Built1_24),
        (Pooler::TransactionPrepared, Release::Built1_24),
    ] {
        let case = format!("{mode} on PgBouncer {}", release.label());
        let here = dir.path().join(format!("{mode}-{}", release.label()));
        let bouncer = PgBouncer::start(&cluster, &here, mode, release)
            .await
            .unwrap();
        let pooled = through(&db, bouncer.connection_string(&db.name));
        let server = TestServer::binary(
            &pooled,
            &[
                "--aws-certificate",
                &flag,
                "--db-pooler",
                &mode.to_string(),
                // Its stderr is a pipe read only at the end: one log line per login would fill
                // it and stall the server.
                "--log-level",
                "warn",
            ],
        )
        .await;
        assert_eq!(storm(&server, &key, &agents, 10).await, 0, "{case}");
        assert_eq!(
            queries(&server, "primary").await,
            200.0,
            "{case}: one statement per login"
        );
        server.terminate().await;
        if release == Release::Built1_24 {
            let stats = bouncer.stats(&db.name).await.unwrap();
            let count = |name: &str| stats.get(name).copied().unwrap_or(-1);
            let (parses, binds) = (count("total_client_parse_count"), count("total_bind_count"));
            if mode == Pooler::TransactionPrepared {
                // The four connections of --db-pool-size each parse once (a reconnect would
                // add one); the 200 logins only bind.
                assert!((1..=8).contains(&parses), "{case}: {stats:?}");
                assert!(binds >= 200, "{case}: {stats:?}");
                assert!(
                    count("total_server_parse_count") >= 1,
                    "{case}: PgBouncer prepares it on the server: {stats:?}"
                );
            }
        }
    }

    // Not told: PgBouncer refuses the startup parameter that carries statement_timeout, and
    // the reason says which setting to change.
    let bouncer = PgBouncer::start(
        &cluster,
        &dir.path().join("untold"),
        agent_auth::store::Pooler::Transaction,
        agent_auth_tools::testbed::Release::Debian1_18,
    )
    .await
    .unwrap();
    let mut config = test_config(&through(&db, bouncer.connection_string(&db.name)));
    config.aws.aws_certificate = values(std::slice::from_ref(&flag));
    let app =
        TestServer::in_process_config(agent_auth::config::Config::try_from(config).unwrap()).await;
    let (status, reason) = app.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(reason.contains("--db-pooler"), "{reason}");
    let failure = app.authenticate(request(&key, &agents[0].0)).await;
    fails_with(failure, tonic::Code::Unavailable, "DATABASE_UNAVAILABLE");
    app.stop().await;
}

/// `--db-pooler transaction-prepared` in front of a pooler that does not keep prepared
/// statements (made certain here: PgBouncer 1.18 deallocates them after every transaction, as
/// it loses them to another server session under load): the login fails INTERNAL, changes
/// nothing, and the log line says which setting to use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_prepared_on_a_pooler_that_drops_statements_says_to_set_transaction() {
    use agent_auth::store::Pooler;
    let dir = reachable_tempdir();
    let (cluster, db) = private_database(&dir.path().join("pg"), "forgetful").await;
    let agents = agents(&db, 1).await;
    let key = Arc::new(AwsKey::generate(1024));
    let bouncer = PgBouncer::start_with(
        &cluster,
        &dir.path().join("bouncer"),
        Pooler::TransactionPrepared,
        agent_auth_tools::testbed::Release::Debian1_18,
        &[
            ("server_reset_query", "DEALLOCATE ALL"),
            ("server_reset_query_always", "1"),
        ],
    )
    .await
    .unwrap();
    let server = TestServer::binary(
        &through(&db, bouncer.connection_string(&db.name)),
        &[
            "--aws-certificate",
            &key.flag("default"),
            "--db-pooler",
            "transaction-prepared",
        ],
    )
    .await;
    let failure = server.authenticate(request(&key, &agents[0].0)).await;
    fails_with(failure, tonic::Code::Internal, "INTERNAL");
    let (_, logs) = server.terminate().await;
    assert!(
        logs.contains("does not keep prepared statements")
            && logs.contains("set --db-pooler transaction"),
        "{logs}"
    );
}

/// Logins resolve on a streaming replica; what the replica has not replayed yet is found on
/// the primary (two statements, counted apart); a replica stopped under load costs no more
/// logins than those in flight and the primary takes over; the replica back is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_resolve_on_a_streaming_replica_and_fall_back_to_the_primary() {
    let dir = reachable_tempdir();
    let (primary, db) = private_database(&dir.path().join("primary"), "replicated").await;
    let mut options = EmbeddedOptions::new(dir.path().join("replica"));
    options.ephemeral = true;
    let replica = testbed::replica(&primary, options.clone()).await.unwrap();
    let replica_url = replica.connection_string(&db.name);
    let replica_db = through(&db, replica_url.clone());
    let agents = agents(&db, 10).await;
    let replayed = async |instance: &str| replayed(&replica_url, instance).await;
    assert!(
        eventually(Duration::from_secs(10), async || replayed(&agents[9].0)
            .await)
        .await
    );
    let key = Arc::new(AwsKey::generate(1024));
    let flag = key.flag("default");
    let server = TestServer::binary(
        &db,
        &[
            "--aws-certificate",
            &flag,
            "--postgres-replica-url",
            &replica_url,
            "--log-level",
            "warn",
        ],
    )
    .await;

    // The replica serves once its lag was measured within the bound (the first check runs at
    // start-up; the bound is --replica-max-lag).
    let measured = eventually(Duration::from_secs(10), async || {
        metric(
            &server,
            "agent_auth_db_replica_lag_seconds",
            &[("replica", "1")],
        )
        .await
            <= 5.0
    });
    assert!(measured.await, "the replica's lag was never measured");

    // Served by the replica: its statements, none on the primary; the replica's own
    // statistics see them (index scans of workspace_agents, which this probe does not make,
    // flushed within a second or so of a backend going idle).
    let index_scans = async |url: &str| -> i64 {
        connect(url)
            .await
            .query_one(
                "SELECT coalesce(sum(idx_scan), 0)::bigint FROM pg_stat_user_tables \
                 WHERE relname = 'workspace_agents'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    let replica_before = index_scans(&replica_url).await;
    assert_eq!(storm(&server, &key, &agents, 2).await, 0);
    assert_eq!(queries(&server, "replica").await, 20.0);
    assert_eq!(queries(&server, "primary").await, 0.0);
    let seen = eventually(Duration::from_secs(20), async || {
        index_scans(&replica_url).await >= replica_before + 20
    });
    assert!(seen.await, "the replica's statistics count the logins");

    // A workspace the paused replica has not seen: the primary finds it.
    let admin = replica_db.client().await;
    admin
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let fresh = agents_on_primary(&db).await;
    assert!(!replayed(&fresh.0).await, "the replica is paused");
    assert_eq!(
        storm(&server, &key, std::slice::from_ref(&fresh), 1).await,
        0
    );
    assert_eq!(queries(&server, "replica").await, 21.0);
    assert_eq!(
        queries(&server, "primary").await,
        1.0,
        "one retry on the primary"
    );
    admin
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();

    // The replica stops in the middle of a storm: the primary answers.
    let load = {
        let (grpc, key, agents) = (server.grpc_url.clone(), key.clone(), agents.clone());
        tokio::spawn(async move {
            let channel = agent_auth::client::connect(&grpc, Duration::from_secs(5))
                .await
                .unwrap();
            let mut failed = 0;
            for _ in 0..40 {
                let calls: Vec<_> = agents
                    .iter()
                    .map(|(instance, _)| {
                        let (channel, key, instance) =
                            (channel.clone(), key.clone(), instance.clone());
                        tokio::spawn(async move {
                            agent_auth::client::authenticate(channel, request(&key, &instance))
                                .await
                                .is_ok()
                        })
                    })
                    .collect();
                for call in calls {
                    if !call.await.unwrap() {
                        failed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            failed
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let on_primary_before = queries(&server, "primary").await;
    replica.stop().await.unwrap();
    let failed = load.await.unwrap();
    assert!(
        failed <= agents.len(),
        "{failed} logins failed: more than the {} in flight when the replica stopped",
        agents.len()
    );
    let on_primary = queries(&server, "primary").await;
    assert!(
        on_primary > on_primary_before,
        "the primary took over ({on_primary_before} → {on_primary})"
    );
    assert_eq!(storm(&server, &key, &agents, 1).await, 0);

    // The replica back: logins return to it.
    let _replica = EmbeddedPostgres::start(options).await.unwrap();
    let before = queries(&server, "replica").await;
    let back = eventually(Duration::from_secs(15), async || {
        storm(&server, &key, &agents[..1], 1).await == 0
            && queries(&server, "replica").await > before
    });
    assert!(back.await, "the replica is used again");

    server.terminate().await;
}

/// One more agent on the primary: (instance, token).
async fn agents_on_primary(db: &TestDb) -> (String, uuid::Uuid) {
    agents(db, 1).await.remove(0)
}

/// The third review's finding 3: after `pg_promote()` on a configured replica, the lag monitor
/// read the promoted server's own write position, measured it as current, and for 12 s and more
/// it handed out a superseded build's token and one for a deleted workspace. A replica is used
/// only while it is in recovery, of the primary's system and timeline: the promoted one is
/// skipped (`not_replica`) and the primary refuses both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_is_no_replica_and_answers_no_login() {
    let dir = reachable_tempdir();
    let (primary, db) = private_database(&dir.path().join("primary"), "promoted").await;
    let mut options = EmbeddedOptions::new(dir.path().join("replica"));
    options.ephemeral = true;
    let replica = testbed::replica(&primary, options).await.unwrap();
    let replica_url = replica.connection_string(&db.name);

    let world = World::new(&db).await;
    let deleted_workspace = world.workspace().await;
    let gone = instance_id();
    world
        .agent(world.build(deleted_workspace, 1).await, "main", &gone)
        .await;
    let rebuilt_workspace = world.workspace().await;
    let old_build = instance_id();
    world
        .agent(world.build(rebuilt_workspace, 1).await, "main", &old_build)
        .await;
    assert!(
        eventually(Duration::from_secs(10), async || replayed(
            &replica_url,
            &old_build
        )
        .await)
        .await
    );

    let key = Arc::new(AwsKey::generate(1024));
    let flag = key.flag("default");
    let server = TestServer::binary(
        &db,
        &[
            "--aws-certificate",
            &flag,
            "--postgres-replica-url",
            &replica_url,
            "--log-level",
            "warn",
        ],
    )
    .await;
    let channel = server.channel().await;
    let login = |instance: &str| {
        let document = aws_document(instance, "us-east-1", "123456789012");
        aws_request(&document, &key.sign(&document), "")
    };
    let replica_queries = async || {
        metric(
            &server,
            "agent_auth_db_queries_total",
            &[("target", "replica")],
        )
        .await
    };
    let serving = eventually(Duration::from_secs(10), async || {
        agent_auth::client::authenticate(channel.clone(), login(&old_build))
            .await
            .is_ok()
            && replica_queries().await >= 1.0
    });
    assert!(serving.await, "the replica never served a login");

    // (Logins before the monitor's first check passed it over too.)
    let not_replica = [("replica", "1"), ("reason", "not_replica")];
    let skipped_before = metric(&server, "agent_auth_db_replica_skipped_total", &not_replica).await;
    // The replica is promoted; the primary moves on without it.
    connect(&replica_url)
        .await
        .batch_execute("SELECT pg_promote()")
        .await
        .unwrap();
    world.delete_workspace(deleted_workspace).await;
    world
        .agent(
            world.build(rebuilt_workspace, 2).await,
            "other",
            &instance_id(),
        )
        .await;
    // Logins go on meanwhile; the monitor finds it promoted within a check or two.
    let mut skipped = false;
    for _ in 0..200 {
        let _ = agent_auth::client::authenticate(channel.clone(), login(&gone)).await;
        if metric(&server, "agent_auth_db_replica_skipped_total", &not_replica).await
            > skipped_before
        {
            skipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(skipped, "the promoted replica was never skipped");
    let before = replica_queries().await;
    for instance in [&gone, &old_build] {
        let result = agent_auth::client::authenticate(channel.clone(), login(instance)).await;
        let code = result.map(|_| ()).map_err(|s| s.code());
        assert!(
            matches!(
                code,
                Err(tonic::Code::NotFound | tonic::Code::FailedPrecondition)
            ),
            "{instance}: {code:?}"
        );
    }
    assert_eq!(
        replica_queries().await,
        before,
        "the promoted server answered a login"
    );
    server.terminate().await;
}
