//! Every resolution rule of DESIGN.md section 2 through the real server: a table of rules
//! (the rows around an instance, the logins and what each gets), and the cases that need more.

use std::future::Future;
use std::pin::Pin;

use tonic::Code;

use crate::helpers::*;

/// A server that trusts one generated key as the `default` AWS key.
async fn setup() -> (TestDb, World, TestServer, AwsKey) {
    let db = TestDb::migrated().await;
    let world = World::new(&db).await;
    let key = AwsKey::generate(1024);
    let flag = key.flag("default");
    let app = TestServer::in_process(&db, |c| c.aws.aws_certificate = vec![value(flag)]).await;
    (db, world, app, key)
}

async fn login(
    app: &TestServer,
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

/// What a login with a name gets.
enum Expect {
    /// The token of the agent of this name in the layout.
    TokenOf(&'static str),
    /// Refused with this code and reason.
    Refused(Code, &'static str),
    /// Refused with this code, reason and message (`{instance}` stands for the case's
    /// instance id).
    Saying(Code, &'static str, &'static str),
}

/// The agents a layout made that a login may expect, by name.
type Agents = Vec<(&'static str, Agent)>;
type Layout = for<'a> fn(&'a World, &'a str) -> Pin<Box<dyn Future<Output = Agents> + 'a>>;

/// One rule of DESIGN.md section 2: the rows around a fresh instance id, then logins with
/// names and what each gets.
struct Rule {
    rule: &'static str,
    layout: Layout,
    logins: &'static [(&'static str, Expect)],
}

const RULES: &[Rule] = &[
    Rule {
        rule: "two agents without a name are ambiguous, listed sorted",
        layout: |world, instance| {
            Box::pin(async move {
                let resource = world.build(world.workspace().await, 1).await;
                world.agent(resource, "beta", instance).await;
                world.agent(resource, "alpha", instance).await;
                vec![]
            })
        },
        logins: &[(
            "",
            Expect::Saying(
                Code::FailedPrecondition,
                "AMBIGUOUS_AGENT",
                "Multiple agents found with instance ID \"{instance}\". Set CODER_AGENT_NAME to one of: alpha, beta",
            ),
        )],
    },
    Rule {
        rule: "a name selects its agent after trimming",
        layout: |world, instance| {
            Box::pin(async move {
                let resource = world.build(world.workspace().await, 1).await;
                let alpha = world.agent(resource, "alpha", instance).await;
                let beta = world.agent(resource, "beta", instance).await;
                vec![("alpha", alpha), ("beta", beta)]
            })
        },
        logins: &[
            ("alpha", Expect::TokenOf("alpha")),
            ("  beta\t", Expect::TokenOf("beta")),
        ],
    },
    Rule {
        rule: "an unknown name is AGENT_NAME_NOT_FOUND (names are case-sensitive)",
        layout: |world, instance| {
            Box::pin(async move {
                let resource = world.build(world.workspace().await, 1).await;
                world.agent(resource, "main", instance).await;
                vec![]
            })
        },
        logins: &[(
            "Main",
            Expect::Saying(
                Code::NotFound,
                "AGENT_NAME_NOT_FOUND",
                "No agent found with instance ID \"{instance}\" and name \"Main\".",
            ),
        )],
    },
    Rule {
        rule: "a whitespace-only name counts as not given",
        layout: |world, instance| {
            Box::pin(async move {
                let resource = world.build(world.workspace().await, 1).await;
                vec![("main", world.agent(resource, "main", instance).await)]
            })
        },
        logins: &[("   ", Expect::TokenOf("main"))],
    },
    Rule {
        rule: "an unknown instance is INSTANCE_NOT_FOUND",
        layout: |_, _| Box::pin(async { vec![] }),
        logins: &[(
            "",
            Expect::Saying(
                Code::NotFound,
                "INSTANCE_NOT_FOUND",
                "Instance with id \"{instance}\" not found.",
            ),
        )],
    },
    Rule {
        rule: "an agent only on an older build is NOT_LATEST_BUILD, named or not",
        layout: |world, instance| {
            Box::pin(async move {
                let ws = world.workspace().await;
                let old = world.build(ws, 1).await;
                world.agent(old, "main", instance).await;
                let latest = world.build(ws, 2).await;
                world.agent(latest, "main", &instance_id()).await;
                vec![]
            })
        },
        logins: &[
            (
                "",
                Expect::Saying(
                    Code::FailedPrecondition,
                    "NOT_LATEST_BUILD",
                    "Resource found for id \"{instance}\", but isn't registered on the latest history.",
                ),
            ),
            (
                "main",
                Expect::Refused(Code::FailedPrecondition, "NOT_LATEST_BUILD"),
            ),
        ],
    },
    Rule {
        rule: "stale history with the same name does not make the latest agent ambiguous",
        layout: |world, instance| {
            Box::pin(async move {
                let ws = world.workspace().await;
                for number in 1..=30 {
                    let resource = world.build(ws, number).await;
                    world.agent(resource, "main", instance).await;
                }
                let latest = world.build(ws, 31).await;
                vec![("main", world.agent(latest, "main", instance).await)]
            })
        },
        logins: &[("", Expect::TokenOf("main"))],
    },
    Rule {
        rule: "template import and dry-run agents are invisible",
        layout: |world, instance| {
            Box::pin(async move {
                for job_type in ["template_version_import", "template_version_dry_run"] {
                    let resource = world.template_job_resource(job_type).await;
                    world.agent(resource, "main", instance).await;
                }
                vec![]
            })
        },
        logins: &[("", Expect::Refused(Code::NotFound, "INSTANCE_NOT_FOUND"))],
    },
    Rule {
        rule: "beside template import and dry-run agents, the workspace's agent logs in",
        layout: |world, instance| {
            Box::pin(async move {
                for job_type in ["template_version_import", "template_version_dry_run"] {
                    let resource = world.template_job_resource(job_type).await;
                    world.agent(resource, "main", instance).await;
                }
                let resource = world.build(world.workspace().await, 1).await;
                vec![("main", world.agent(resource, "main", instance).await)]
            })
        },
        logins: &[("", Expect::TokenOf("main"))],
    },
    Rule {
        rule: "sub-agents never match or cause ambiguity",
        layout: |world, instance| {
            Box::pin(async move {
                let resource = world.build(world.workspace().await, 1).await;
                let parent = world.agent(resource, "main", instance).await;
                world
                    .agent_with(resource, "devcontainer", instance, false, Some(parent.id))
                    .await;
                vec![("main", parent)]
            })
        },
        logins: &[
            ("", Expect::TokenOf("main")),
            (
                "devcontainer",
                Expect::Refused(Code::NotFound, "AGENT_NAME_NOT_FOUND"),
            ),
        ],
    },
    Rule {
        // Not NOT_LATEST_BUILD: the deleted agent on the old build does not count as stale.
        rule: "deleted agents are invisible on the latest and on older builds",
        layout: |world, instance| {
            Box::pin(async move {
                let ws = world.workspace().await;
                let old = world.build(ws, 1).await;
                world.agent_with(old, "main", instance, true, None).await;
                let latest = world.build(ws, 2).await;
                world.agent_with(latest, "main", instance, true, None).await;
                vec![]
            })
        },
        logins: &[("", Expect::Refused(Code::NotFound, "INSTANCE_NOT_FOUND"))],
    },
    Rule {
        rule: "agents of deleted workspaces are invisible",
        layout: |world, instance| {
            Box::pin(async move {
                let ws = world.workspace().await;
                let old = world.build(ws, 1).await;
                world.agent(old, "main", instance).await;
                let latest = world.build(ws, 2).await;
                world.agent(latest, "main", instance).await;
                world.delete_workspace(ws).await;
                vec![]
            })
        },
        logins: &[("", Expect::Refused(Code::NotFound, "INSTANCE_NOT_FOUND"))],
    },
    Rule {
        rule: "a live workspace wins over a deleted one for a recycled instance id",
        layout: |world, instance| {
            Box::pin(async move {
                let gone = world.workspace().await;
                let resource = world.build(gone, 1).await;
                world.agent(resource, "main", instance).await;
                world.delete_workspace(gone).await;
                let live = world.workspace().await;
                let resource = world.build(live, 1).await;
                vec![("main", world.agent(resource, "main", instance).await)]
            })
        },
        logins: &[("", Expect::TokenOf("main"))],
    },
];

/// Every rule of [`RULES`] on one server, each around its own instance id.
#[tokio::test]
async fn every_resolution_rule_holds_through_the_real_server() {
    let (_db, world, app, key) = setup().await;
    for rule in RULES {
        let instance = instance_id();
        let agents = (rule.layout)(&world, &instance).await;
        for (name, expect) in rule.logins {
            let answer = login(&app, &key, &instance, name).await;
            let case = format!("{}: name {name:?}", rule.rule);
            match expect {
                Expect::TokenOf(agent) => {
                    let (_, agent) = agents
                        .iter()
                        .find(|(n, _)| n == agent)
                        .unwrap_or_else(|| panic!("{case}: the layout made no {agent}"));
                    let response = answer.unwrap_or_else(|e| panic!("{case}: {e:?}"));
                    assert_eq!(response.session_token, agent.token.to_string(), "{case}");
                    assert_eq!(response.agent_id, agent.id.to_string(), "{case}");
                }
                Expect::Refused(code, reason) => {
                    let (got_code, got_reason, _) = failure(answer);
                    assert_eq!((got_code, got_reason.as_str()), (*code, *reason), "{case}");
                }
                Expect::Saying(code, reason, message) => {
                    let (got_code, got_reason, got_message) = failure(answer);
                    assert_eq!(
                        (got_code, got_reason.as_str(), got_message),
                        (*code, *reason, message.replace("{instance}", &instance)),
                        "{case}"
                    );
                }
            }
        }
    }
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
    let app = TestServer::in_process(&db, |c| {
        c.aws.aws_certificate = vec![value(flag)];
        c.listeners.http_listen = Some(value("127.0.0.1:0"));
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
