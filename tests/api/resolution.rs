//! Every resolution rule of DESIGN.md section 2, each through the real server.

use tonic::Code;

use crate::helpers::*;

/// A server that trusts one generated key as the `default` AWS key.
async fn setup() -> (TestDb, World, TestApp, AwsKey) {
    let db = TestDb::migrated().await;
    let world = World::new(&db).await;
    let key = AwsKey::generate(1024);
    let flag = key.flag("default");
    let app = TestApp::spawn(&db, |c| c.aws_certificate = vec![value(flag)]).await;
    (db, world, app, key)
}

async fn login(
    app: &TestApp,
    key: &AwsKey,
    instance: &str,
    name: &str,
) -> Result<agent_auth::grpc::pb::AuthenticateResponse, tonic::Status> {
    let document = aws_document(instance, "us-east-1", "123456789012");
    app.authenticate(aws_request(&document, &key.sign(&document), name))
        .await
}

#[tokio::test]
async fn a_single_agent_on_the_latest_build_gets_its_token_and_details() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let ws = world.workspace().await;
    let resource = world.build(ws, 1).await;
    let agent = world.agent(resource, "main", &instance).await;

    let response = success(login(&app, &key, &instance, "").await);
    assert_eq!(response.session_token, agent.token.to_string());
    assert_eq!(response.agent_id, agent.id.to_string());
    assert_eq!(response.agent_name, "main");
    assert_eq!(response.workspace_id, ws.to_string());
    assert_eq!(response.instance_id, instance);
    assert_eq!(response.cloud, agent_auth::grpc::pb::Cloud::Aws as i32);
    let build: uuid::Uuid = world
        .client
        .query_one(
            "SELECT id FROM workspace_builds WHERE workspace_id = $1",
            &[&ws],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(response.workspace_build_id, build.to_string());
}

#[tokio::test]
async fn two_agents_without_a_name_are_ambiguous_and_listed_sorted() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let resource = world.build(world.workspace().await, 1).await;
    world.agent(resource, "beta", &instance).await;
    world.agent(resource, "alpha", &instance).await;

    let (code, reason, message) = failure(login(&app, &key, &instance, "").await);
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(reason, "AMBIGUOUS_AGENT");
    assert_eq!(
        message,
        format!(
            "Multiple agents found with instance ID \"{instance}\". Set CODER_AGENT_NAME to one of: alpha, beta"
        )
    );
}

#[tokio::test]
async fn a_name_selects_its_agent_after_trimming() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let resource = world.build(world.workspace().await, 1).await;
    let alpha = world.agent(resource, "alpha", &instance).await;
    let beta = world.agent(resource, "beta", &instance).await;

    assert_eq!(
        success(login(&app, &key, &instance, "alpha").await).session_token,
        alpha.token.to_string()
    );
    assert_eq!(
        success(login(&app, &key, &instance, "  beta\t").await).session_token,
        beta.token.to_string()
    );
}

#[tokio::test]
async fn an_unknown_name_is_agent_name_not_found() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let resource = world.build(world.workspace().await, 1).await;
    world.agent(resource, "main", &instance).await;

    let message = fails_with(
        login(&app, &key, &instance, "Main").await,
        Code::NotFound,
        "AGENT_NAME_NOT_FOUND",
    );
    assert_eq!(
        message,
        format!("No agent found with instance ID \"{instance}\" and name \"Main\".")
    );
}

#[tokio::test]
async fn a_whitespace_only_name_counts_as_not_given() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let resource = world.build(world.workspace().await, 1).await;
    let agent = world.agent(resource, "main", &instance).await;

    assert_eq!(
        success(login(&app, &key, &instance, "   ").await).session_token,
        agent.token.to_string()
    );
}

#[tokio::test]
async fn an_unknown_instance_is_instance_not_found() {
    let (_db, _world, app, key) = setup().await;
    let instance = instance_id();
    let message = fails_with(
        login(&app, &key, &instance, "").await,
        Code::NotFound,
        "INSTANCE_NOT_FOUND",
    );
    assert_eq!(
        message,
        format!("Instance with id \"{instance}\" not found.")
    );
}

#[tokio::test]
async fn an_agent_only_on_an_older_build_is_not_latest_build() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let ws = world.workspace().await;
    let old = world.build(ws, 1).await;
    world.agent(old, "main", &instance).await;
    let latest = world.build(ws, 2).await;
    world.agent(latest, "main", &instance_id()).await;

    let message = fails_with(
        login(&app, &key, &instance, "").await,
        Code::FailedPrecondition,
        "NOT_LATEST_BUILD",
    );
    assert_eq!(
        message,
        format!(
            "Resource found for id \"{instance}\", but isn't registered on the latest history."
        )
    );
    // A name does not turn a stale agent into a match either.
    fails_with(
        login(&app, &key, &instance, "main").await,
        Code::FailedPrecondition,
        "NOT_LATEST_BUILD",
    );
}

#[tokio::test]
async fn stale_history_with_the_same_name_does_not_make_the_latest_agent_ambiguous() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let ws = world.workspace().await;
    for number in 1..=30 {
        let resource = world.build(ws, number).await;
        world.agent(resource, "main", &instance).await;
    }
    let latest = world.build(ws, 31).await;
    let current = world.agent(latest, "main", &instance).await;

    assert_eq!(
        success(login(&app, &key, &instance, "").await).session_token,
        current.token.to_string()
    );
}

#[tokio::test]
async fn template_import_and_dry_run_agents_are_invisible() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    for job_type in ["template_version_import", "template_version_dry_run"] {
        let resource = world.template_job_resource(job_type).await;
        world.agent(resource, "main", &instance).await;
    }
    fails_with(
        login(&app, &key, &instance, "").await,
        Code::NotFound,
        "INSTANCE_NOT_FOUND",
    );

    let resource = world.build(world.workspace().await, 1).await;
    let agent = world.agent(resource, "main", &instance).await;
    assert_eq!(
        success(login(&app, &key, &instance, "").await).session_token,
        agent.token.to_string()
    );
}

#[tokio::test]
async fn sub_agents_never_match_or_cause_ambiguity() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let resource = world.build(world.workspace().await, 1).await;
    let parent = world.agent(resource, "main", &instance).await;
    world
        .agent_with(resource, "devcontainer", &instance, false, Some(parent.id))
        .await;

    assert_eq!(
        success(login(&app, &key, &instance, "").await).session_token,
        parent.token.to_string()
    );
    fails_with(
        login(&app, &key, &instance, "devcontainer").await,
        Code::NotFound,
        "AGENT_NAME_NOT_FOUND",
    );
}

#[tokio::test]
async fn deleted_agents_are_invisible_on_the_latest_and_on_older_builds() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let ws = world.workspace().await;
    let old = world.build(ws, 1).await;
    world.agent_with(old, "main", &instance, true, None).await;
    let latest = world.build(ws, 2).await;
    world
        .agent_with(latest, "main", &instance, true, None)
        .await;

    // Not NOT_LATEST_BUILD: the deleted agent on the old build does not count as stale.
    fails_with(
        login(&app, &key, &instance, "").await,
        Code::NotFound,
        "INSTANCE_NOT_FOUND",
    );
}

#[tokio::test]
async fn agents_of_deleted_workspaces_are_invisible() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let ws = world.workspace().await;
    let old = world.build(ws, 1).await;
    world.agent(old, "main", &instance).await;
    let latest = world.build(ws, 2).await;
    world.agent(latest, "main", &instance).await;
    world.delete_workspace(ws).await;

    fails_with(
        login(&app, &key, &instance, "").await,
        Code::NotFound,
        "INSTANCE_NOT_FOUND",
    );
}

#[tokio::test]
async fn a_live_workspace_wins_over_a_deleted_one_for_a_recycled_instance_id() {
    let (_db, world, app, key) = setup().await;
    let instance = instance_id();
    let gone = world.workspace().await;
    let resource = world.build(gone, 1).await;
    world.agent(resource, "main", &instance).await;
    world.delete_workspace(gone).await;
    let live = world.workspace().await;
    let resource = world.build(live, 1).await;
    let agent = world.agent(resource, "main", &instance).await;

    assert_eq!(
        success(login(&app, &key, &instance, "").await).session_token,
        agent.token.to_string()
    );
}

#[tokio::test]
async fn the_statement_returns_one_row_for_all_stale_history() {
    let db = TestDb::migrated().await;
    let world = World::new(&db).await;
    let instance = instance_id();
    let ws = world.workspace().await;
    for number in 1..=50 {
        let resource = world.build(ws, number).await;
        world.agent(resource, "main", &instance).await;
    }
    let latest = world.build(ws, 51).await;
    world.agent(latest, "main", &instance).await;

    let run = async |instance: &str| {
        let rows = world
            .client
            .query(agent_auth::store::resolve::RESOLVE_SQL, &[&instance])
            .await
            .unwrap();
        let agents: Vec<Option<uuid::Uuid>> = rows.iter().map(|r| r.get("agent_id")).collect();
        let stale: Vec<Option<i64>> = rows.iter().map(|r| r.get("stale")).collect();
        (agents, stale)
    };
    // One candidate row, then one aggregate row that says whether a stale agent exists, not
    // how many: the statement stops at the first one.
    let (agents, stale) = run(&instance).await;
    assert!(agents[0].is_some(), "the candidate comes first");
    assert_eq!(stale, [None, Some(1)]);

    // Without the latest build's agent, the same history is "not the latest build".
    let history = world.workspace().await;
    let other = instance_id();
    for number in 1..=3 {
        let resource = world.build(history, number).await;
        world.agent(resource, "main", &other).await;
    }
    world.build(history, 4).await;
    let (agents, stale) = run(&other).await;
    assert_eq!((agents, stale), (vec![None], vec![Some(1)]));
}

/// A VM belongs to one workspace: when two live workspaces' latest builds both claim the
/// instance id, no name (not even one only one of them has) yields a token, over gRPC and HTTP,
/// each refusal is counted, and it still costs one statement.
#[tokio::test]
async fn an_instance_claimed_by_two_workspaces_never_yields_a_token_whatever_the_name() {
    let db = TestDb::migrated().await;
    let world = World::new(&db).await;
    let key = AwsKey::generate(1024);
    let flag = key.flag("default");
    let app = TestApp::spawn(&db, |c| {
        c.aws_certificate = vec![value(flag)];
        c.http_listen = Some(value("127.0.0.1:0"));
    })
    .await;
    let instance = instance_id();
    let first = world.build(world.workspace().await, 1).await;
    let second = world.build(world.workspace().await, 3).await;
    world.agent(first, "main", &instance).await;
    world.agent(first, "alpha", &instance).await;
    world.agent(second, "main", &instance).await;
    world.agent(second, "beta", &instance).await;
    let expected = format!("Instance ID \"{instance}\" is claimed by more than one workspace.");

    db.reset_statements().await;
    for name in ["main", "alpha", "beta", "", "nobody"] {
        let (code, reason, message) = failure(login(&app, &key, &instance, name).await);
        assert_eq!(
            (code, reason.as_str(), message.as_str()),
            (
                Code::FailedPrecondition,
                "AMBIGUOUS_AGENT",
                expected.as_str()
            ),
            "name {name:?}"
        );
    }
    assert_eq!(db.statements().await, 5, "one statement per login");

    let document = aws_document(&instance, "us-east-1", "123456789012");
    let body = serde_json::json!({
        "document": document,
        "signature": key.sign(&document),
        "agent_name": "alpha",
    });
    let url = format!(
        "{}/api/v2/workspaceagents/aws-instance-identity",
        app.http_url.clone().unwrap()
    );
    let (status, _, text) = http_post(&url, "application/json", body.to_string().as_bytes()).await;
    assert_eq!(status, 409);
    assert_eq!(text, serde_json::json!({ "message": expected }).to_string());
    assert!(!text.contains('-') || !text.contains("token"));

    let (_, metrics) = app.admin_get("/metrics").await;
    assert_eq!(
        metric_sum(&metrics, "agent_auth_instance_conflicts_total", &[]),
        Some(6.0)
    );

    // The other workspace moves on to a build without the agent: the claim is single again.
    let second_workspace: uuid::Uuid = world
        .client
        .query_one(
            "SELECT workspace_id FROM workspace_builds b JOIN workspace_resources r ON r.job_id = b.job_id WHERE r.id = $1",
            &[&second],
        )
        .await
        .unwrap()
        .get(0);
    world.build(second_workspace, 4).await;
    let response = success(login(&app, &key, &instance, "alpha").await);
    assert_eq!(response.agent_name, "alpha");
}
