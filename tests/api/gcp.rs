//! GCP instance identity tokens end to end: JWTs signed with keys generated here and served as a
//! JWKS from a local HTTP server, so fetching, caching and the unknown-kid refetch run for real.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::*;
pub(crate) use crate::pki::GcpKey;
use agent_auth::grpc::pb;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a `format=full` token as GCE issues them.
pub(crate) fn claims(instance_id: &str, project: &str) -> Value {
    json!({
        "aud": "coder",
        "azp": "112233445566778899000",
        "email": "123-compute@developer.gserviceaccount.com",
        "exp": now() + 3600,
        "iat": now(),
        "iss": "https://accounts.google.com",
        "sub": "112233445566778899000",
        "google": {"compute_engine": {
            "instance_creation_timestamp": now() - 86_400,
            "instance_id": instance_id,
            "instance_name": "dev-vm",
            "project_id": project,
            "project_number": 123456789012_i64,
            "zone": "us-central1-a"
        }}
    })
}

pub(crate) fn gcp_request(token: &str) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        identity: Some(pb::authenticate_request::Identity::Google(
            pb::GoogleInstanceIdentity {
                json_web_token: token.into(),
            },
        )),
        agent_name: String::new(),
    }
}

/// A JWKS endpoint on loopback whose keys, status and max-age the test changes, counting hits.
#[derive(Clone)]
pub(crate) struct JwksServer {
    state: Arc<Mutex<(Vec<Value>, u16, u64)>>,
    hits: Arc<AtomicUsize>,
    pub(crate) url: String,
}

impl JwksServer {
    pub(crate) async fn start(keys: Vec<Value>, max_age: u64) -> Self {
        let state = Arc::new(Mutex::new((keys, 200, max_age)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (state.clone(), hits.clone());
        let router = axum::Router::new().route(
            "/oauth2/v3/certs",
            axum::routing::get(move || {
                let (s, h) = (s.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (keys, status, max_age) = s.lock().unwrap().clone();
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("cache-control", format!("public, max-age={max_age}"))],
                        json!({ "keys": keys }).to_string(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/oauth2/v3/certs", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { state, hits, url }
    }

    fn set_keys(&self, keys: Vec<Value>) {
        self.state.lock().unwrap().0 = keys;
    }

    fn set_status(&self, status: u16) {
        self.state.lock().unwrap().1 = status;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Waits until the server has fetched GCP keys (they load in the background).
async fn wait_for_keys(app: &TestServer, token: &str) {
    let ready = eventually(
        Duration::from_secs(10),
        async || !matches!(app.authenticate(gcp_request(token)).await, Err(s) if s.code() == Code::Unavailable),
    );
    assert!(ready.await, "GCP keys never loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_tokens_authenticate_and_every_defect_is_invalid_identity_without_sql() {
    let key = GcpKey::generate("k1");
    let stranger = GcpKey::generate("k1");
    let server = JwksServer::start(vec![key.jwk.clone()], 300).await;
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, "4242424242424242").await;
    let url = server.url.clone();
    let app = TestServer::in_process(&db, |c| {
        c.gcp.gcp_jwks = value(url);
        c.gcp.gcp_allowed_project = vec!["dev-project".into()];
    })
    .await;

    let good = key.sign(&claims("4242424242424242", "dev-project"));
    wait_for_keys(&app, &good).await;
    let response = success(app.authenticate(gcp_request(&good)).await);
    assert_eq!(response.session_token, agent.token.to_string());
    assert_eq!(response.cloud, pb::Cloud::Google as i32);

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims("4242424242424242", "dev-project");
        edit(&mut c);
        key.sign(&c)
    };
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": "k1"})),
        b64(claims("4242424242424242", "dev-project"))
    );
    let hmac = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims("4242424242424242", "dev-project"),
            &EncodingKey::from_secret(b"k1"),
        )
        .unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("someone-else")),
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example.com")),
        ),
        ("expired", with(&|c| c["exp"] = json!(now() - 120))),
        (
            "issued in the future",
            with(&|c| c["iat"] = json!(now() + 600)),
        ),
        (
            "no compute_engine claims",
            with(&|c| c["google"] = json!({})),
        ),
        (
            "empty instance id",
            with(&|c| c["google"]["compute_engine"]["instance_id"] = json!("")),
        ),
        // The third review's finding 9: NUL reached PostgreSQL (INTERNAL, "invalid byte
        // sequence"); no control character is an instance id.
        (
            "NUL in the instance id",
            with(&|c| c["google"]["compute_engine"]["instance_id"] = json!("4242\u{0}42")),
        ),
        (
            "an escape in the instance id",
            with(&|c| c["google"]["compute_engine"]["instance_id"] = json!("4242\u{1b}[2J")),
        ),
        (
            "project not allowed",
            with(&|c| c["google"]["compute_engine"]["project_id"] = json!("other-project")),
        ),
        (
            "signed by another key with the same kid",
            stranger.sign(&claims("4242424242424242", "dev-project")),
        ),
        ("alg none", unsigned),
        ("HS256", hmac),
        ("garbage", "not.a.jwt".into()),
        ("truncated", good[..good.len() - 10].to_owned()),
    ];
    for (case, token) in cases {
        db.reset_statements().await;
        let (code, reason, message) = failure(app.authenticate(gcp_request(&token)).await);
        assert_eq!(
            (code, reason.as_str()),
            (Code::Unauthenticated, "INVALID_IDENTITY"),
            "{case}"
        );
        assert_eq!(
            message, "Invalid GCP identity.",
            "{case}: no verifier detail may leak"
        );
        assert_eq!(
            db.statements().await,
            0,
            "{case}: no SQL before verification"
        );
    }
    // Within the leeway, expiry is still accepted.
    success(
        app.authenticate(gcp_request(&with(&|c| c["exp"] = json!(now() - 30))))
            .await,
    );
    let (code, _, _) = failure(
        app.authenticate(gcp_request(&"x".repeat(64 * 1024 + 1)))
            .await,
    );
    assert_eq!(code, Code::InvalidArgument, "oversized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_the_jwks_at_most_once_a_minute() {
    let old = GcpKey::generate("old");
    let rotated = GcpKey::generate("rotated");
    let later = GcpKey::generate("later");
    let server = JwksServer::start(vec![old.jwk.clone()], 3600).await;
    let db = TestDb::migrated().await;
    seed_agent(&db, "77").await;
    let url = server.url.clone();
    let app = TestServer::in_process(&db, |c| c.gcp.gcp_jwks = value(url)).await;
    wait_for_keys(&app, &old.sign(&claims("77", "p"))).await;
    success(
        app.authenticate(gcp_request(&old.sign(&claims("77", "p"))))
            .await,
    );
    let after_start = server.hits();

    server.set_keys(vec![old.jwk.clone(), rotated.jwk.clone()]);
    success(
        app.authenticate(gcp_request(&rotated.sign(&claims("77", "p"))))
            .await,
    );
    assert_eq!(
        server.hits(),
        after_start + 1,
        "one refetch for the unknown kid"
    );

    server.set_keys(vec![
        old.jwk.clone(),
        rotated.jwk.clone(),
        later.jwk.clone(),
    ]);
    fails_with(
        app.authenticate(gcp_request(&later.sign(&claims("77", "p"))))
            .await,
        Code::Unauthenticated,
        "INVALID_IDENTITY",
    );
    assert_eq!(
        server.hits(),
        after_start + 1,
        "no second refetch within a minute"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_serving_with_the_cached_keys() {
    let key = GcpKey::generate("k");
    let server = JwksServer::start(vec![key.jwk.clone()], 1).await;
    let db = TestDb::migrated().await;
    seed_agent(&db, "88").await;
    let url = server.url.clone();
    let app = TestServer::in_process(&db, |c| c.gcp.gcp_jwks = value(url)).await;
    let token = key.sign(&claims("88", "p"));
    wait_for_keys(&app, &token).await;

    server.set_status(500);
    let before = server.hits();
    assert!(
        eventually(Duration::from_secs(10), async || server.hits()
            >= before + 2)
        .await,
        "refresh retried"
    );
    success(app.authenticate(gcp_request(&token)).await);
}

#[tokio::test]
async fn without_fetched_keys_gcp_is_unavailable_and_aws_still_serves() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = TestServer::in_process(&db, |c| {
        c.gcp.gcp_jwks = value(format!("http://{closed}/certs"))
    })
    .await;

    let key = GcpKey::generate("k");
    fails_with(
        app.authenticate(gcp_request(&key.sign(&claims("1", "p"))))
            .await,
        Code::Unavailable,
        "TRUST_UNAVAILABLE",
    );
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    assert_eq!(
        app.admin_get("/readyz").await.0,
        200,
        "a missing JWKS does not block readiness"
    );
}

#[tokio::test]
async fn a_jwks_file_is_static_trust() {
    let key = GcpKey::generate("file-key");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": [key.jwk]}).to_string()).unwrap();
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, "99").await;
    let file = path.display().to_string();
    let app = TestServer::in_process(&db, |c| c.gcp.gcp_jwks = value(file)).await;
    let response = success(
        app.authenticate(gcp_request(&key.sign(&claims("99", "p"))))
            .await,
    );
    assert_eq!(response.session_token, agent.token.to_string());
    let other = GcpKey::generate("other");
    let (code, _, _) = failure(
        app.authenticate(gcp_request(&other.sign(&claims("99", "p"))))
            .await,
    );
    assert_eq!(
        code,
        Code::Unauthenticated,
        "unknown kid with a static JWKS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticate_command_sends_a_gcp_token() {
    let key = GcpKey::generate("cli");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [key.jwk]}).to_string()).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{}\n", key.sign(&claims("555", "p")))).unwrap();
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, "555").await;
    let file = jwks.display().to_string();
    let app = TestServer::in_process(&db, |c| c.gcp.gcp_jwks = value(file)).await;
    let token = token.display().to_string();
    assert_authenticate_command_prints(&app.grpc_url, &["--gcp-token", &token], agent.token).await;
}

/// Hostile numbers in the time claims (`exp` at i64::MAX, `iat` at i64::MIN) are judged with
/// checked arithmetic: no overflow panic, a clear answer, and the server goes on serving.
#[tokio::test]
async fn extreme_exp_and_iat_claims_are_judged_without_overflow() {
    let key = GcpKey::generate("k1");
    let server = JwksServer::start(vec![key.jwk.clone()], 300).await;
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, "4343434343434343").await;
    let url = server.url.clone();
    let app = TestServer::in_process(&db, |c| c.gcp.gcp_jwks = value(url)).await;
    let good = key.sign(&claims("4343434343434343", "p"));
    wait_for_keys(&app, &good).await;
    let mut extreme = claims("4343434343434343", "p");
    extreme["exp"] = json!(i64::MAX);
    extreme["iat"] = json!(i64::MIN);
    let response = success(app.authenticate(gcp_request(&key.sign(&extreme))).await);
    assert_eq!(response.session_token, agent.token.to_string());
    let mut past = claims("4343434343434343", "p");
    past["exp"] = json!(i64::MIN);
    fails_with(
        app.authenticate(gcp_request(&key.sign(&past))).await,
        Code::Unauthenticated,
        "INVALID_IDENTITY",
    );
    success(app.authenticate(gcp_request(&good)).await);
}
