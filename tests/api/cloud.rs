//! Live cloud API checks against local servers: EC2 is moto in server mode (a real EC2 API
//! implementation, driven by the real aws-sdk-ec2), Compute Engine is a small fake here with a
//! token endpoint, so gcp_auth's real service-account flow runs. Nothing leaves the machine.
//! Each test runs `agent-auth serve` as its own process, so its /metrics counts only its calls.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use tonic::Code;

use crate::gcp::{GcpKey, claims, gcp_request};
use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// moto

/// The moto server of this test run (one process, stopped with the test binary).
struct Moto {
    url: String,
    /// The watchdog shell: it ends moto and itself once this process is gone.
    _watchdog: std::process::Child,
}

/// The `moto_server` to use: `AGENT_AUTH_MOTO_SERVER`, else the project's venv, which is
/// created on first use (Python 3 with venv, PyPI reachable), as `.ci/run` does.
fn moto_binary() -> String {
    if let Ok(path) = std::env::var("AGENT_AUTH_MOTO_SERVER") {
        return path;
    }
    let venv =
        std::env::var("AGENT_AUTH_VENV").unwrap_or_else(|_| "/var/tmp/agent-auth-venv".into());
    let binary = format!("{venv}/bin/moto_server");
    if !std::path::Path::new(&binary).exists() {
        let status = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "[ -x '{venv}/bin/pip' ] || python3 -m venv '{venv}'; '{venv}/bin/pip' install -q 'moto[ec2,server]==5.2.5'"
                ),
            ])
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()) && std::path::Path::new(&binary).exists(),
            "moto_server is required for the EC2 check tests and could not be installed into {venv}: \
             install it with `python3 -m venv {venv} && {venv}/bin/pip install 'moto[ec2,server]==5.2.5'` \
             or point AGENT_AUTH_MOTO_SERVER at a moto_server ({status:?})"
        );
    }
    binary
}

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let binary = moto_binary();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        // A watchdog shell stops moto when this test process is gone.
        let script = format!(
            "'{binary}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
             while kill -0 {} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 1; done; kill $m 2>/dev/null",
            std::process::id()
        );
        let watchdog = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            url,
            _watchdog: watchdog,
        }
    })
}

/// An EC2 client of moto, with explicit test credentials (never a metadata endpoint).
async fn ec2() -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(&moto().url)
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// Runs `count` instances in moto; returns (id, launch time in Unix seconds) of each.
async fn run_instances(count: i32) -> Vec<(String, i64)> {
    let output = ec2()
        .await
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(count)
        .max_count(count)
        .send()
        .await
        .unwrap();
    output
        .instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap().to_owned(),
                i.launch_time().unwrap().secs(),
            )
        })
        .collect()
}

/// A document for `instance` with `pendingTime` at `pending` (Unix seconds), signed by `key`.
fn ec2_request(
    key: &AwsKey,
    instance: &str,
    pending: i64,
) -> agent_auth::grpc::pb::AuthenticateRequest {
    let pending =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(pending as u64));
    let document = aws_document(instance, "us-east-1", "123456789012")
        .replace("2026-11-01T10:00:00Z", &pending.to_string());
    aws_request(&document, &key.sign(&document), "")
}

async fn serve_with_ec2_check(db: &TestDb, key: &AwsKey, extra: &[&str]) -> TestServer {
    let certificate = key.flag("us-east-1");
    let mut args = vec![
        "--aws-certificate",
        &certificate,
        "--aws-ec2-check",
        "true",
        "--log-level",
        "warn",
    ];
    if !extra.contains(&"--aws-ec2-endpoint") {
        args.extend(["--aws-ec2-endpoint", moto().url.as_str()]);
    }
    args.extend(extra);
    TestServer::binary(db, &args).await
}

async fn aws_calls(server: &TestServer) -> f64 {
    metric(
        server,
        "agent_auth_cloud_api_calls_total",
        &[("cloud", "aws")],
    )
    .await
}

fn assert_invalid_identity(
    result: Result<agent_auth::grpc::pb::AuthenticateResponse, tonic::Status>,
    what: &str,
) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    // The caller learns nothing of the check: the fixed message of any invalid identity.
    assert_eq!(
        status.message(),
        agent_auth::identity::Cloud::Aws.invalid_identity_message(),
        "{what}"
    );
}

#[tokio::test]
async fn a_running_instance_passes_once_per_cache_lifetime_and_unproven_logins_spend_no_calls() {
    let db = TestDb::migrated().await;
    let key = AwsKey::generate(1024);
    let (instance, launched) = run_instances(1).await.remove(0);
    let agent = seed_agent(&db, &instance).await;
    let server = serve_with_ec2_check(&db, &key, &[]).await;
    let channel = server.channel().await;
    let login = |request| agent_auth::client::authenticate(channel.clone(), request);

    // Forged and unknown instances are refused before any call.
    let mut forged = ec2_request(&key, &instance, launched);
    if let Some(agent_auth::grpc::pb::authenticate_request::Identity::Aws(aws)) =
        &mut forged.identity
    {
        aws.document = aws.document.replace("t3.micro", "t3.large");
    }
    assert_invalid_identity(login(forged).await, "forged");
    let unknown = run_instances(1).await.remove(0);
    let status = login(ec2_request(&key, &unknown.0, unknown.1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(aws_calls(&server).await, 0.0, "no call for unproven logins");

    let response = login(ec2_request(&key, &instance, launched)).await.unwrap();
    assert_eq!(response.session_token, agent.token.to_string());
    assert_eq!(aws_calls(&server).await, 1.0);
    // A kept answer: the same login again makes no call.
    login(ec2_request(&key, &instance, launched)).await.unwrap();
    assert_eq!(aws_calls(&server).await, 1.0, "a cache hit makes no call");
    let hits = metric(
        &server,
        "agent_auth_cloud_api_cache_total",
        &[("cloud", "aws"), ("result", "hit")],
    )
    .await;
    assert_eq!(hits, 1.0);
    assert_eq!(
        metric(
            &server,
            "agent_auth_cloud_api_calls_total",
            &[("cloud", "aws"), ("outcome", "ok")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_role_configured_for_the_account_is_assumed_through_sts_first() {
    // moto serves STS too; the endpoint override applies to the SDK configuration the
    // AssumeRole provider is built from.
    let db = TestDb::migrated().await;
    let key = AwsKey::generate(1024);
    let (instance, launched) = run_instances(1).await.remove(0);
    let agent = seed_agent(&db, &instance).await;
    let server = serve_with_ec2_check(
        &db,
        &key,
        &[
            "--aws-ec2-assume-role",
            "123456789012=arn:aws:iam::123456789012:role/agent-auth-reader",
        ],
    )
    .await;
    let response = agent_auth::client::authenticate(
        server.channel().await,
        ec2_request(&key, &instance, launched),
    )
    .await
    .unwrap();
    assert_eq!(response.session_token, agent.token.to_string());
    assert_eq!(aws_calls(&server).await, 1.0);
}

#[tokio::test]
async fn stopped_terminated_and_earlier_boot_documents_are_invalid_identities() {
    let db = TestDb::migrated().await;
    let key = AwsKey::generate(1024);
    let instances = run_instances(3).await;
    for (instance, _) in &instances {
        seed_agent(&db, instance).await;
    }
    let client = ec2().await;
    client
        .stop_instances()
        .instance_ids(&instances[0].0)
        .send()
        .await
        .unwrap();
    client
        .terminate_instances()
        .instance_ids(&instances[1].0)
        .send()
        .await
        .unwrap();
    let server = serve_with_ec2_check(&db, &key, &[]).await;
    let channel = server.channel().await;
    let login = |request| agent_auth::client::authenticate(channel.clone(), request);

    assert_invalid_identity(
        login(ec2_request(&key, &instances[0].0, instances[0].1)).await,
        "stopped",
    );
    assert_invalid_identity(
        login(ec2_request(&key, &instances[1].0, instances[1].1)).await,
        "terminated",
    );
    // A document captured an hour before the instance's latest launch: an earlier boot.
    let (running, launched) = &instances[2];
    assert_invalid_identity(
        login(ec2_request(&key, running, launched - 3600)).await,
        "earlier boot",
    );
    // The same instance with its current document passes (the kept answer is the instance's
    // state, judged per document).
    login(ec2_request(&key, running, *launched)).await.unwrap();
    let rejected = metric(
        &server,
        "agent_auth_authentications_total",
        &[("cloud", "aws"), ("outcome", "invalid_identity")],
    )
    .await;
    assert_eq!(rejected, 3.0);
}

#[tokio::test]
async fn an_unreachable_ec2_endpoint_fails_closed_by_default_and_open_when_asked() {
    let db = TestDb::migrated().await;
    let key = AwsKey::generate(1024);
    let instance = instance_id();
    let agent = seed_agent(&db, &instance).await;
    // Nothing listens on port 9 of loopback: connection refused at once.
    let dead = [
        "--aws-ec2-endpoint",
        "http://127.0.0.1:9",
        "--cloud-check-timeout",
        "500ms",
    ];

    let closed = serve_with_ec2_check(&db, &key, &dead).await;
    let status = agent_auth::client::authenticate(
        closed.channel().await,
        ec2_request(&key, &instance, 1_793_527_200),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        agent_auth::grpc::status::to_status(&agent_auth::auth::AuthError::CloudApiUnavailable(
            agent_auth::cloud::CloudError::Lost("any cause")
        ))
        .message(),
        status.message()
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "no internals: {status:?}"
    );
    let errors = metric(
        &closed,
        "agent_auth_cloud_api_calls_total",
        &[("cloud", "aws"), ("outcome", "error")],
    )
    .await;
    assert!(errors >= 1.0, "{errors}");
    drop(closed);

    let mut open_args = dead.to_vec();
    open_args.extend(["--cloud-check-on-error", "open"]);
    let open = serve_with_ec2_check(&db, &key, &open_args).await;
    let response = agent_auth::client::authenticate(
        open.channel().await,
        ec2_request(&key, &instance, 1_793_527_200),
    )
    .await
    .unwrap();
    assert_eq!(response.session_token, agent.token.to_string());
    assert_eq!(
        metric(
            &open,
            "agent_auth_cloud_api_fail_open_total",
            &[("cloud", "aws")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_burst_of_200_logins_for_200_instances_makes_a_handful_of_calls() {
    let db = TestDb::migrated().await;
    let key = AwsKey::generate(1024);
    let instances = run_instances(200).await;
    let world = World::new(&db).await;
    let mut tokens = Vec::new();
    for (instance, _) in &instances {
        let resource = world.build(world.workspace().await, 1).await;
        tokens.push(world.agent(resource, "main", instance).await.token);
    }
    // A window wide enough for the whole burst even on a loaded machine (at the default 20 ms
    // the same burst made 4 calls alone and 7 to 11 beside the rest of the suite), so the
    // assertion is about batching, not timing: 200 ids need at least 2 calls of at most 100.
    let server = serve_with_ec2_check(
        &db,
        &key,
        &[
            "--max-concurrent-requests",
            "400",
            "--aws-ec2-batch-window",
            "250ms",
        ],
    )
    .await;
    let channel = server.channel().await;
    let logins: Vec<_> = instances
        .iter()
        .map(|(instance, launched)| {
            let request = ec2_request(&key, instance, *launched);
            tokio::spawn(agent_auth::client::authenticate(channel.clone(), request))
        })
        .collect();
    for (login, token) in logins.into_iter().zip(&tokens) {
        let response = login.await.unwrap().unwrap();
        assert_eq!(&response.session_token, &token.to_string());
    }
    let calls = aws_calls(&server).await;
    let batched = metric(&server, "agent_auth_cloud_api_batch_size_sum", &[]).await;
    println!("200 logins for 200 instances: {calls} DescribeInstances calls, {batched} ids in all");
    assert!((2.0..=4.0).contains(&calls), "{calls} calls");
    assert_eq!(batched, 200.0, "every instance asked for exactly once");
}

// ---------------------------------------------------------------------------------------------
// Compute Engine

/// A fake OAuth token endpoint and Compute Engine `instances.get`, counting calls.
#[derive(Clone)]
struct FakeCompute {
    instances: Arc<Mutex<std::collections::HashMap<String, Value>>>,
    calls: Arc<Mutex<Vec<String>>>,
    url: String,
}

impl FakeCompute {
    async fn start() -> Self {
        let instances: Arc<Mutex<std::collections::HashMap<String, Value>>> = Arc::default();
        let calls: Arc<Mutex<Vec<String>>> = Arc::default();
        let (i, c) = (instances.clone(), calls.clone());
        let router = axum::Router::new()
            .route(
                "/token",
                axum::routing::post(|body: String| async move {
                    assert!(body.contains("grant_type=urn"), "{body}");
                    axum::Json(json!({"access_token": "fake-access-token", "expires_in": 3600, "token_type": "Bearer"}))
                }),
            )
            .route(
                "/compute/v1/projects/{project}/zones/{zone}/instances/{name}",
                axum::routing::get(
                    move |axum::extract::Path((project, zone, name)): axum::extract::Path<(String, String, String)>,
                          headers: axum::http::HeaderMap| {
                        let (i, c) = (i.clone(), c.clone());
                        async move {
                            let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
                            if bearer != Some("Bearer fake-access-token") {
                                return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                            }
                            c.lock().unwrap().push(format!("{project}/{zone}/{name}"));
                            match i.lock().unwrap().get(&name) {
                                Some(instance) => (axum::http::StatusCode::OK, instance.to_string()),
                                None => (axum::http::StatusCode::NOT_FOUND, "{}".into()),
                            }
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            instances,
            calls,
            url,
        }
    }

    fn set(&self, name: &str, instance: Value) {
        self.instances.lock().unwrap().insert(name.into(), instance);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn compute_engine_checks_status_id_and_creation_time_through_a_real_token_flow() {
    let db = TestDb::migrated().await;
    let fake = FakeCompute::start().await;
    let signing = GcpKey::generate("k1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signing.jwk.clone()]}).to_string()).unwrap();
    // A service-account key whose token_uri is the fake: gcp_auth signs and posts a real
    // JWT-bearer grant.
    let sa_pem =
        String::from_utf8(crate::pki::rsa(2048).private_key_to_pem_pkcs8().unwrap()).unwrap();
    let credentials = dir.path().join("sa.json");
    std::fs::write(
        &credentials,
        json!({
            "type": "service_account", "project_id": "my-project", "private_key_id": "1",
            "private_key": sa_pem, "client_email": "agent-auth@my-project.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": format!("{}/token", fake.url),
        })
        .to_string(),
    )
    .unwrap();

    // Four instances with their tokens: running, terminated, a reused name (other id) and a
    // recreated one (same id string, other creation time).
    let mut cases = Vec::new();
    for (name, status, id_shift, created_shift) in [
        ("vm-running", "RUNNING", 0, 0),
        ("vm-terminated", "TERMINATED", 0, 0),
        ("vm-reused", "RUNNING", 1, 0),
        ("vm-recreated", "RUNNING", 0, 60),
    ] {
        let instance = format!("{}", 4_000_000_000_000_000_000u64 + cases.len() as u64);
        let agent = seed_agent(&db, &instance).await;
        let mut token_claims = claims(&instance, "my-project");
        token_claims["google"]["compute_engine"]["instance_name"] = json!(name);
        let created = token_claims["google"]["compute_engine"]["instance_creation_timestamp"]
            .as_i64()
            .unwrap();
        let found_created = humantime::format_rfc3339_millis(
            UNIX_EPOCH + Duration::from_secs((created + created_shift) as u64),
        )
        .to_string();
        fake.set(
            name,
            json!({
                "id": format!("{}", instance.parse::<u64>().unwrap() + id_shift),
                "name": name,
                "status": status,
                "creationTimestamp": found_created.replace('Z', "+00:00"),
            }),
        );
        cases.push((name, signing.sign(&token_claims), agent));
    }

    let jwks_arg = jwks.display().to_string();
    let credentials_arg = credentials.display().to_string();
    let server = TestServer::binary(
        &db,
        &[
            "--gcp-jwks",
            &jwks_arg,
            "--gcp-compute-check",
            "true",
            "--gcp-compute-endpoint",
            &fake.url,
            "--gcp-compute-credentials",
            &credentials_arg,
            "--log-level",
            "warn",
        ],
    )
    .await;
    let channel = server.channel().await;
    for (name, token, agent) in &cases {
        let result = agent_auth::client::authenticate(channel.clone(), gcp_request(token)).await;
        if *name == "vm-running" {
            assert_eq!(result.unwrap().session_token, agent.token.to_string());
        } else {
            let status = result.expect_err(name);
            assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
            assert_eq!(
                status.message(),
                agent_auth::identity::Cloud::Google.invalid_identity_message()
            );
        }
    }
    let mut calls = fake.calls();
    calls.sort();
    assert_eq!(
        calls,
        [
            "my-project/us-central1-a/vm-recreated",
            "my-project/us-central1-a/vm-reused",
            "my-project/us-central1-a/vm-running",
            "my-project/us-central1-a/vm-terminated",
        ]
    );
    // The running one is kept: a second login makes no call.
    agent_auth::client::authenticate(channel.clone(), gcp_request(&cases[0].1))
        .await
        .unwrap();
    assert_eq!(fake.calls().len(), 4);
    assert_eq!(
        metric(
            &server,
            "agent_auth_cloud_api_calls_total",
            &[("cloud", "gcp"), ("outcome", "ok")]
        )
        .await,
        4.0
    );
}

/// A metadata endpoint stand-in on loopback that counts the requests it gets.
async fn counting_imds() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let router = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            axum::http::StatusCode::NOT_FOUND
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, hits)
}

/// The credential chain never asks the instance metadata endpoint, with metadata NOT disabled
/// in the environment and no other credentials anywhere: a stand-in endpoint (through
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT`) sees no request. The control: with
/// `--aws-ec2-imds-credentials true` the same stand-in is asked, so the redirection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_sdk_never_asks_the_metadata_endpoint_unless_told_to() {
    let db = TestDb::migrated().await;
    let key = AwsKey::generate(1024);
    let (instance, launched) = run_instances(1).await.remove(0);
    seed_agent(&db, &instance).await;
    for (imds_credentials, asked) in [("false", false), ("true", true)] {
        let (imds, hits) = counting_imds().await;
        let certificate = key.flag("us-east-1");
        let args = [
            "--aws-certificate",
            &certificate,
            "--aws-ec2-check",
            "true",
            "--aws-ec2-endpoint",
            moto().url.as_str(),
            "--aws-ec2-imds-credentials",
            imds_credentials,
            "--log-level",
            "error",
        ];
        let server = TestServer::binary_with(&db, &args, |command| {
            command
                .env_remove("AWS_EC2_METADATA_DISABLED")
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds);
        })
        .await;
        // No credentials anywhere: the check cannot be made (fails closed), whatever it asks.
        let answer = agent_auth::client::authenticate(
            server.channel().await,
            ec2_request(&key, &instance, launched),
        )
        .await;
        assert!(answer.is_err(), "{answer:?}");
        let count = hits.load(std::sync::atomic::Ordering::SeqCst);
        server.terminate().await;
        assert_eq!(
            count > 0,
            asked,
            "--aws-ec2-imds-credentials {imds_credentials}: {count} metadata requests"
        );
    }
}
