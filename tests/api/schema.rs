//! Schema modes: the owned schema's migrations and query plan, and `--schema coder` against
//! Coder's own schema (tests/fixtures/coder/schema-subset.sql) through a read-only role.

use tonic::Code;

use crate::helpers::*;
use agent_auth::app::App;
use agent_auth::config::Config;

#[tokio::test]
async fn replicas_migrating_together_apply_the_schema_once() {
    let db = TestDb::new().await;
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let runs = (0..4).map(|_| {
        let config = config.clone();
        tokio::spawn(async move { agent_auth::store::migrate::run_migrations(&config).await })
    });
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap().unwrap());
    }
    assert_eq!(applied, vec![1], "exactly one replica applies V1");
}

#[tokio::test]
async fn the_resolver_plan_probes_the_instance_index_on_ten_thousand_agents() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO workspaces (id) SELECT md5('w' || g)::uuid FROM generate_series(1, 5000) g;
             INSERT INTO provisioner_jobs (id, type) SELECT md5('j' || g)::uuid, 'workspace_build' FROM generate_series(1, 10000) g;
             INSERT INTO workspace_builds (workspace_id, build_number, job_id)
                 SELECT md5('w' || ((g + 1) / 2))::uuid, 1 + g % 2, md5('j' || g)::uuid FROM generate_series(1, 10000) g;
             INSERT INTO workspace_resources (id, job_id) SELECT md5('r' || g)::uuid, md5('j' || g)::uuid FROM generate_series(1, 10000) g;
             INSERT INTO workspace_agents (name, resource_id, auth_instance_id)
                 SELECT 'main', md5('r' || g)::uuid, 'i-' || lpad(to_hex(g), 17, '0') FROM generate_series(1, 10000) g;
             ANALYZE;",
        )
        .await
        .unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM workspace_agents", &[])
        .await
        .unwrap()
        .get(0);
    assert!(count >= 10_000);

    let plan: Vec<String> = client
        .query(
            &format!("EXPLAIN {}", agent_auth::store::resolve::RESOLVE_SQL),
            &[&"i-0000000000000002a"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    println!("{plan}");
    assert!(
        plan.contains("workspace_agents_auth_instance_id_deleted_idx"),
        "plan:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan"),
        "no sequential scan expected, plan:\n{plan}"
    );
}

/// A database holding Coder's schema, and a read-only role for it.
async fn coder_database() -> (TestDb, CoderWorld, String) {
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute(CODER_SCHEMA).await.unwrap();
    let role = format!("ro_{}", &db.name[2..14]);
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT CONNECT ON DATABASE {db} TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};",
            db = db.name
        ))
        .await
        .unwrap();
    (db, CoderWorld { client }, role)
}

#[tokio::test]
async fn coder_mode_resolves_against_coders_schema_through_a_read_only_role() {
    let (db, world, role) = coder_database().await;
    let instance = RECORDED_INSTANCE;
    let ws = world.workspace().await;
    let old = world.build(ws, 1).await;
    world.agent(old, "main", instance).await;
    let latest = world.build(ws, 2).await;
    let token = world.agent(latest, "main", instance).await;
    world.agent(latest, "sidecar", instance).await;
    let read_only_url = db.url_as(&role);
    let app = TestServer::in_process(&db, |c| {
        c.database.schema = value("coder");
        c.database.postgres_url = Some(read_only_url);
    })
    .await;

    fails_with(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
        Code::FailedPrecondition,
        "AMBIGUOUS_AGENT",
    );
    let response = success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, "main"))
            .await,
    );
    assert_eq!(response.session_token, token.to_string());

    let history: Option<String> = world
        .client
        .query_one("SELECT to_regclass('refinery_schema_history')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, None, "coder mode must not create tables");
}

#[tokio::test]
async fn coder_mode_refuses_to_start_naming_a_missing_column() {
    let (db, world, _role) = coder_database().await;
    world
        .client
        .batch_execute("ALTER TABLE workspace_agents DROP COLUMN parent_id")
        .await
        .unwrap();
    let mut raw = test_config(&db);
    raw.database.schema = value("coder");
    let error = App::build(Config::try_from(raw).unwrap())
        .await
        .err()
        .expect("start-up must fail");
    let message = error.to_string();
    assert!(
        message.contains("column workspace_agents.parent_id"),
        "{message}"
    );
}
