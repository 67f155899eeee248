//! The Coder-compatible HTTP endpoints: the same use case as gRPC, Coder's request and response
//! JSON, and byte-for-byte bodies for every status.

use serde_json::json;

use crate::helpers::*;

const AWS: &str = "/api/v2/workspaceagents/aws-instance-identity";
const AZURE: &str = "/api/v2/workspaceagents/azure-instance-identity";
const GOOGLE: &str = "/api/v2/workspaceagents/google-instance-identity";

async fn http_app(
    db: &TestDb,
    edit: impl FnOnce(&mut agent_auth::config::Settings),
) -> (TestServer, String) {
    let app = TestServer::in_process(db, |c| {
        c.listeners.http_listen = Some(value("127.0.0.1:0"));
        edit(c);
    })
    .await;
    let base = app.http_url.clone().expect("http listener");
    (app, base)
}

fn aws_body(agent_name: Option<&str>) -> Vec<u8> {
    let mut body = json!({"signature": RECORDED_SIGNATURE, "document": RECORDED_DOCUMENT, "unknown_field": [1, 2]});
    if let Some(name) = agent_name {
        body["agent_name"] = json!(name);
    }
    body.to_string().into_bytes()
}

#[tokio::test]
async fn the_aws_endpoint_returns_the_session_token_and_coder_shaped_errors() {
    let db = TestDb::migrated().await;
    let (_app, base) = http_app(&db, |_| {}).await;
    let url = format!("{base}{AWS}");

    let (status, _, body) = http_post(&url, "application/json", &aws_body(None)).await;
    assert_eq!(
        (status, body.as_str()),
        (
            404,
            format!("{{\"message\":\"Instance with id \\\"{RECORDED_INSTANCE}\\\" not found.\"}}")
                .as_str()
        )
    );

    let world = World::new(&db).await;
    let resource = world.build(world.workspace().await, 1).await;
    let alpha = world.agent(resource, "alpha", RECORDED_INSTANCE).await;
    world.agent(resource, "beta", RECORDED_INSTANCE).await;
    let (status, _, body) = http_post(&url, "application/json", &aws_body(None)).await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        format!(
            "{{\"message\":\"Multiple agents found with instance ID \\\"{RECORDED_INSTANCE}\\\". Set CODER_AGENT_NAME to one of: alpha, beta\"}}"
        )
    );
    let (status, _, body) = http_post(&url, "application/json", &aws_body(Some("  alpha "))).await;
    assert_eq!(
        (status, body),
        (200, format!("{{\"session_token\":\"{}\"}}", alpha.token))
    );
    let (status, _, body) = http_post(&url, "application/json", &aws_body(Some("gamma"))).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        format!(
            "{{\"message\":\"No agent found with instance ID \\\"{RECORDED_INSTANCE}\\\" and name \\\"gamma\\\".\"}}"
        )
    );

    let forged = json!({"signature": RECORDED_SIGNATURE, "document": RECORDED_DOCUMENT.replace("t2.micro", "t2.nano")});
    let (status, _, body) =
        http_post(&url, "application/json", forged.to_string().as_bytes()).await;
    assert_eq!(
        (status, body.as_str()),
        (401, "{\"message\":\"Invalid AWS identity.\"}")
    );

    // A rebuilt workspace whose latest build has no agent for the instance.
    let ws = world.workspace().await;
    let old = world.build(ws, 1).await;
    let stale = "i-0123456789abcdef0";
    world.agent(old, "main", stale).await;
    world.build(ws, 2).await;
    let key = AwsKey::generate(1024);
    let flag = key.flag("default");
    let (_app2, base2) = http_app(&db, |c| c.aws.aws_certificate = vec![value(flag)]).await;
    let document = aws_document(stale, "us-east-1", "123456789012");
    let body = json!({"signature": key.sign(&document), "document": document});
    let (status, _, text) = http_post(
        &format!("{base2}{AWS}"),
        "application/json",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        text,
        format!(
            "{{\"message\":\"Resource found for id \\\"{stale}\\\", but isn't registered on the latest history.\"}}"
        )
    );
}

#[tokio::test]
async fn bad_bodies_get_400_or_413_with_a_clear_message() {
    let db = TestDb::migrated().await;
    let (_app, base) = http_app(&db, |_| {}).await;
    let url = format!("{base}{AWS}");

    let (status, _, body) = http_post(&url, "application/json", b"{not json").await;
    assert_eq!(status, 400);
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed["message"], "Request body must be valid JSON.");
    assert!(parsed["detail"].as_str().is_some_and(|d| !d.is_empty()));

    let (status, _, body) = http_post(
        &url,
        "application/json",
        json!({"document": RECORDED_DOCUMENT})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            "{\"message\":\"Malformed request: one of signature or rsa2048 is required.\"}"
        )
    );
    let (status, _, body) = http_post(&format!("{base}{GOOGLE}"), "application/json", b"{}").await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            "{\"message\":\"Malformed request: json_web_token is required.\"}"
        )
    );

    let huge =
        json!({"signature": "A".repeat(70 * 1024), "document": RECORDED_DOCUMENT}).to_string();
    let (status, _, body) = http_post(&url, "application/json", huge.as_bytes()).await;
    assert_eq!(
        (status, body.as_str()),
        (
            413,
            "{\"message\":\"Request body must be at most 65536 bytes.\"}"
        )
    );

    // Documented choice: the Content-Type is not checked, as Coder does not check it.
    let (status, _, _) = http_post(&url, "text/plain", &aws_body(None)).await;
    assert_eq!(
        status, 404,
        "a JSON body is read whatever the content type says"
    );
}

#[tokio::test]
async fn the_azure_and_google_endpoints_authenticate_real_evidence() {
    let db = TestDb::migrated().await;
    let vm_id = "dc18de58-292f-4794-9a5d-a4192bad0039";
    let azure_agent = seed_agent(&db, vm_id).await;
    let (_app, base) = http_app(&db, |c| {
        c.insecure_verify_time = Some(value("2026-06-25T19:56:45Z"))
    })
    .await;
    let signature = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/azure/azure-attested-2026-g2-regular.b64"
    ))
    .unwrap();
    let body = json!({"encoding": "pkcs7", "signature": signature});
    let (status, _, text) = http_post(
        &format!("{base}{AZURE}"),
        "application/json",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        (status, text),
        (
            200,
            format!("{{\"session_token\":\"{}\"}}", azure_agent.token)
        )
    );
    let (status, _, text) = http_post(
        &format!("{base}{AZURE}"),
        "application/json",
        json!({"signature": "AAAA"}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (401, "{\"message\":\"Invalid Azure identity.\"}")
    );

    // GCP with the empty test JWKS: a token cannot verify.
    let (status, _, text) = http_post(
        &format!("{base}{GOOGLE}"),
        "application/json",
        json!({"json_web_token": "a.b.c"}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (401, "{\"message\":\"Invalid GCP identity.\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_429_and_an_unavailable_database_is_503_with_retry_after() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let (app, base) = http_app(&db, |c| c.limits.max_concurrent_requests = value(1)).await;
    let url = format!("{base}{AWS}");
    assert_eq!(
        http_post(&url, "application/json", &aws_body(None)).await.0,
        200,
        "warm the pool"
    );
    let lock = lock_agents(&db).await;
    let held = tokio::spawn({
        let url = url.clone();
        async move { http_post(&url, "application/json", &aws_body(None)).await }
    });
    wait_until_blocked(&db).await;
    let (status, headers, body) = http_post(&url, "application/json", &aws_body(None)).await;
    assert_eq!(
        (status, body.as_str()),
        (
            429,
            "{\"message\":\"The server is overloaded. Retry later.\"}"
        )
    );
    assert!(
        headers.to_ascii_lowercase().contains("retry-after: 1"),
        "{headers}"
    );
    lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(held.await.unwrap().0, 200);

    db.allow_connections(false).await;
    let (status, headers, body) = http_post(&url, "application/json", &aws_body(None)).await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "{\"message\":\"The database is unavailable. Retry later.\"}"
        )
    );
    assert!(
        headers.to_ascii_lowercase().contains("retry-after: 1"),
        "{headers}"
    );
    db.allow_connections(true).await;
    drop(app);
}
