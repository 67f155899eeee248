//! The gRPC contract (DESIGN.md 3.1): request-shape errors, undecodable messages, unimplemented
//! clouds, health, reflection, load shedding, deadlines and database faults.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::helpers::*;
use agent_auth::grpc::pb;

fn aws(document: &str, signature: &str, rsa2048: &str) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        identity: Some(pb::authenticate_request::Identity::Aws(
            pb::AwsInstanceIdentity {
                document: document.into(),
                signature: signature.into(),
                rsa2048: rsa2048.into(),
            },
        )),
        agent_name: String::new(),
    }
}

#[tokio::test]
async fn requests_of_the_wrong_shape_are_invalid_argument_and_run_no_sql() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, |_| {}).await;
    let big = "x".repeat(64 * 1024 + 1);
    let mut long_name = aws(RECORDED_DOCUMENT, RECORDED_SIGNATURE, "");
    long_name.agent_name = big.clone();
    let cases = vec![
        (
            "no identity",
            pb::AuthenticateRequest {
                identity: None,
                agent_name: String::new(),
            },
        ),
        (
            "both AWS proofs",
            aws(RECORDED_DOCUMENT, RECORDED_SIGNATURE, "AAAA"),
        ),
        ("no AWS proof", aws(RECORDED_DOCUMENT, "", "")),
        ("empty document", aws("", RECORDED_SIGNATURE, "")),
        ("document over 64 KiB", aws(&big, RECORDED_SIGNATURE, "")),
        ("signature over 64 KiB", aws(RECORDED_DOCUMENT, &big, "")),
        ("agent name over 64 KiB", long_name),
        (
            "empty GCP token",
            pb::AuthenticateRequest {
                identity: Some(pb::authenticate_request::Identity::Google(
                    pb::GoogleInstanceIdentity::default(),
                )),
                agent_name: String::new(),
            },
        ),
        (
            "empty Azure signature",
            pb::AuthenticateRequest {
                identity: Some(pb::authenticate_request::Identity::Azure(
                    pb::AzureInstanceIdentity::default(),
                )),
                agent_name: String::new(),
            },
        ),
    ];
    for (case, request) in cases {
        db.reset_statements().await;
        let (code, reason, message) = failure(app.authenticate(request).await);
        assert_eq!(code, Code::InvalidArgument, "{case}");
        assert_eq!(reason, "MALFORMED_REQUEST", "{case}");
        assert!(
            message.starts_with("Malformed request: "),
            "{case}: {message}"
        );
        assert_eq!(db.statements().await, 0, "{case}");
    }
}

/// Sends raw bytes as the request message and returns the status.
async fn send_raw(app: &TestServer, message: Vec<u8>) -> tonic::Status {
    send_raw_to(app, "/agentauth.v1.AgentAuth/Authenticate", message).await
}

/// [`send_raw`] to any path.
async fn send_raw_to(app: &TestServer, path: &'static str, message: Vec<u8>) -> tonic::Status {
    #[derive(Clone, Default)]
    struct Raw;
    struct RawEncoder;
    struct RawDecoder;
    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
        }
    }
    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    match grpc.unary(tonic::Request::new(message), path, Raw).await {
        Ok(_) => panic!("raw message was accepted"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_invalid_argument_not_internal() {
    use tonic_types::StatusExt;
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, |_| {}).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated length-delimited field", vec![0x0a, 0x10, 0x0a]),
        ("invalid wire type", vec![0x0f, 0x01]),
        ("invalid UTF-8 in agent_name", vec![0x22, 0x02, 0xff, 0xfe]),
    ];
    for (case, bytes) in cases {
        let status = send_raw(&app, bytes).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(
            status.get_details_error_info().map(|i| i.reason),
            Some("MALFORMED_REQUEST".to_owned()),
            "{case}"
        );
    }
}

#[tokio::test]
async fn unknown_services_and_methods_are_unimplemented_and_run_no_sql() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, |_| {}).await;
    for path in [
        "/agentauth.v1.AgentAuth/Authorize",
        "/agentauth.v1.AgentAuth/",
        "/agentauth.v1.AgentAuth",
        "/no.such.Service/Authenticate",
        "/grpc.health.v1.Health/Nope",
        "/",
    ] {
        let status = send_raw_to(&app, path, Vec::new()).await;
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
    // The services are still served beside them.
    assert!(matches!(
        agent_auth::client::is_serving(&app.grpc_url, "", Duration::from_secs(2)).await,
        Ok(true)
    ));
    assert_eq!(db.resolver_statements().await, 0);
}

#[tokio::test]
async fn health_reports_serving_overall_and_for_the_service() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, |_| {}).await;
    for service in ["", "agentauth.v1.AgentAuth"] {
        let serving =
            agent_auth::client::is_serving(&app.grpc_url, service, Duration::from_secs(2)).await;
        assert!(matches!(serving, Ok(true)), "{service:?}: {serving:?}");
    }
    assert!(
        agent_auth::client::is_serving(&app.grpc_url, "no.such.Service", Duration::from_secs(2))
            .await
            .is_err()
    );
    assert_eq!(app.admin_get("/healthz").await.0, 200);
    assert_eq!(app.admin_get("/readyz").await, (200, "ready\n".to_owned()));
    let grpc_url = app.grpc_url.clone();
    app.stop().await;
    assert!(
        agent_auth::client::is_serving(&grpc_url, "", Duration::from_secs(1))
            .await
            .is_err(),
        "stopped"
    );
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, |_| {}).await;

    use tonic_reflection::pb::v1;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected v1 reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"agentauth.v1.AgentAuth".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    use tonic_reflection::pb::v1alpha;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        response.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list))
            if list.service.iter().any(|s| s.name == "agentauth.v1.AgentAuth")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_requests_are_shed_at_once_as_overloaded() {
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |c| c.limits.max_concurrent_requests = value(1)).await;
    // Warm the pool: the statement is prepared when a connection opens, and preparing would
    // wait on the lock too; the tests want the statement itself to wait.
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    let lock = lock_agents(&db).await;

    let channel = app.channel().await;
    let first = tokio::spawn(agent_auth::client::authenticate(
        channel,
        aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
    ));
    wait_until_blocked(&db).await;

    fails_with(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
        Code::ResourceExhausted,
        "OVERLOADED",
    );

    lock.batch_execute("ROLLBACK").await.unwrap();
    let response = success(first.await.unwrap());
    assert_eq!(response.session_token, agent.token.to_string());
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
}

/// Hardening defect 9: 200 requests abandoned mid-statement (their deadline passes while the
/// statement waits on a lock) drop no connection and send no cancel request: the pool's
/// backends stay, it opens no connection beyond its size, and every later login succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_logins_keep_their_connections_and_unrelated_logins_never_fail() {
    use prost::Message;
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |c| {
        c.database.db_pool_size = value(4);
        c.database.db_statement_timeout = value("10s");
        c.database.db_checkout_timeout = value("5s");
    })
    .await;
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    let before = agent_backends(&db).await;
    let sessions = async || -> i64 {
        admin()
            .await
            .query_one(
                "SELECT sessions FROM pg_stat_database WHERE datname = $1",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0)
    };
    let sessions_before = sessions().await;

    let lock = lock_agents(&db).await;
    let message = aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, "").encode_to_vec();
    let addr = app.grpc_url.trim_start_matches("http://").to_owned();
    let mut abandoned = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (addr, message) = (addr.clone(), message.clone());
        abandoned.spawn(async move { raw_grpc_status(&addr, "100m", message).await });
    }
    // DEADLINE_EXCEEDED from us, or CANCELLED when tonic's own deadline timer wins the race
    // on a busy machine: either way the caller's deadline ended the request.
    let ended = [Code::DeadlineExceeded, Code::Cancelled].map(|c| (c as i32).to_string());
    while let Some(status) = abandoned.join_next().await {
        let status = status.unwrap();
        assert!(ended.contains(&status), "grpc-status {status}");
    }
    lock.batch_execute("ROLLBACK").await.unwrap();
    let channel = agent_auth::client::connect(&app.grpc_url, Duration::from_secs(30))
        .await
        .unwrap();
    let mut later = tokio::task::JoinSet::new();
    for _ in 0..50 {
        later.spawn(agent_auth::client::authenticate(
            channel.clone(),
            aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
        ));
    }
    while let Some(result) = later.join_next().await {
        success(result.unwrap());
    }
    // No connection was dropped, and the only new sessions are the lock's and the pool
    // growing to its size (the old behaviour reconnected once per abandoned login).
    let after = agent_backends(&db).await;
    assert!(
        before.iter().all(|pid| after.contains(pid)),
        "{before:?} -> {after:?}"
    );
    assert!(after.len() <= 4, "{after:?}");
    let opened = sessions().await - sessions_before;
    assert!(opened <= 1 + 3, "{opened} sessions opened");
    // Metrics are process-wide (other tests run beside this one): at least our 200.
    let (_, metrics) = app.admin_get("/metrics").await;
    let cancelled = metric_sum(
        &metrics,
        "agent_auth_authentications_total",
        &[("cloud", "aws"), ("outcome", "cancelled")],
    );
    assert!(cancelled.unwrap_or(0.0) >= 200.0, "{cancelled:?}");
}

/// One unary call over a bare HTTP/2 connection, so no client-side timer races the server's
/// answer; returns `grpc-status`.
async fn raw_grpc_status(addr: &str, grpc_timeout: &str, message: Vec<u8>) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/agentauth.v1.AgentAuth/Authenticate"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let mut framed = vec![0u8];
    framed.extend((message.len() as u32).to_be_bytes());
    framed.extend(message);
    send.send_data(framed.into(), true).unwrap();
    let response = response.await.unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_owned();
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    trailers
        .get("grpc-status")
        .map(|s| s.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_is_honoured_with_deadline_exceeded_while_the_database_is_slow() {
    use prost::Message;
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |c| c.database.db_statement_timeout = value("30s")).await;
    // Warm the pool: the statement is prepared when a connection opens, and preparing would
    // wait on the lock too; the tests want the statement itself to wait.
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    let lock = lock_agents(&db).await;

    let message = aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, "").encode_to_vec();
    let addr = app.grpc_url.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let status = raw_grpc_status(&addr, "300m", message).await;
    let waited = started.elapsed();
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());
    assert!(
        waited < Duration::from_secs(5),
        "answered after {waited:?}, far past the 300 ms deadline"
    );
    // The abandoned statement is not cancelled (a cancel request would cancel whatever that
    // backend runs next) and its connection is not dropped: it finishes when the lock goes,
    // and the same backend serves the next login.
    let waiting = admin()
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            &[&db.name],
        )
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1, "the statement should still be running");
    let pid: i32 = waiting[0].get(0);
    lock.batch_execute("ROLLBACK").await.unwrap();
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    assert!(
        agent_backends(&db).await.contains(&pid),
        "the abandoned statement's connection was dropped"
    );
    // Metrics are process-wide (other tests run beside this one): at least ours.
    let (_, metrics) = app.admin_get("/metrics").await;
    let cancelled = metric_sum(
        &metrics,
        "agent_auth_authentications_total",
        &[("cloud", "aws"), ("outcome", "cancelled")],
    );
    assert!(cancelled.unwrap_or(0.0) >= 1.0, "{cancelled:?}");
}

#[tokio::test]
async fn a_database_that_refuses_connections_is_unavailable_and_recovery_needs_no_restart() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |_| {}).await;
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );

    db.allow_connections(false).await;

    let message = fails_with(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );
    assert!(
        !message.contains("connect"),
        "no driver detail in {message:?}"
    );
    let (status, body) = app.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");

    db.allow_connections(true).await;
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    assert_eq!(app.admin_get("/readyz").await.0, 200);
}

/// `--grpc-listen unix:PATH` removes only a stale socket: a file, a directory, a symlink and a
/// socket another process listens on are refused with a clear error and left as they were.
#[tokio::test]
async fn a_unix_socket_path_replaces_only_a_stale_socket() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let build = |path: &std::path::Path| {
        let mut raw = test_config(&db);
        raw.listeners.grpc_listen = value(format!("unix:{}", path.display()));
        agent_auth::app::App::build(agent_auth::config::Config::try_from(raw).unwrap())
    };
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "precious").unwrap();
    let directory = dir.path().join("dir.sock");
    std::fs::create_dir(&directory).unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let live = dir.path().join("live.sock");
    let _other = std::os::unix::net::UnixListener::bind(&live).unwrap();
    for (path, words) in [
        (&file, "not a socket"),
        (&directory, "a directory"),
        (&link, "a symbolic link"),
        (&live, "another process is listening"),
    ] {
        let error = match build(path).await {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(words), "{}: {error}", path.display());
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    assert!(directory.is_dir());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::os::unix::net::UnixStream::connect(&live).is_ok());
    // A stale socket (its listener gone, the file left behind) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let app = build(&stale).await.unwrap();
    drop(app);
    // Nothing of the staging directory is left next to the socket.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".agent-auth-socket-")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_listener_is_private_to_its_user_and_serves_grpc() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, RECORDED_INSTANCE).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent-auth.sock");
    let listen = format!("unix:{}", socket.display());
    let app =
        TestServer::in_process(&db, |c| c.listeners.grpc_listen = value(listen.clone())).await;

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let channel = agent_auth::client::connect(&listen, Duration::from_secs(5))
        .await
        .unwrap();
    let response = success(
        agent_auth::client::authenticate(
            channel,
            aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
        )
        .await,
    );
    assert_eq!(response.session_token, agent.token.to_string());
    assert!(matches!(
        agent_auth::client::is_serving(&listen, "", Duration::from_secs(2)).await,
        Ok(true)
    ));
    app.stop().await;
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

/// Every counter of DESIGN.md 3.2 is exported at 0 from the start, with its known label sets,
/// before any request (here: a fresh server process, whose /metrics is its own).
#[tokio::test]
async fn every_counter_is_exported_at_zero_before_the_first_request() {
    let db = TestDb::migrated().await;
    let server = TestServer::binary(&db, &[]).await;
    let (status, text) = http_get(&format!("{}/metrics", server.admin_url)).await;
    assert_eq!(status, 200);
    for (name, labels) in [
        ("agent_auth_requests_shed_total", vec![]),
        ("agent_auth_db_queries_total", vec![]),
        ("agent_auth_instance_conflicts_total", vec![]),
        ("agent_auth_trust_reloads_total", vec![("result", "error")]),
        (
            "agent_auth_authentications_total",
            vec![("cloud", "aws"), ("outcome", "ok")],
        ),
        (
            "agent_auth_authentications_total",
            vec![("cloud", "azure"), ("outcome", "cancelled")],
        ),
        (
            "agent_auth_connections_refused_total",
            vec![("listener", "grpc")],
        ),
    ] {
        assert_eq!(
            metric_sum(&text, name, &labels),
            Some(0.0),
            "{name} {labels:?} missing from:\n{text}"
        );
    }
    assert_eq!(
        metric_sum(&text, "agent_auth_requests_in_flight", &[]),
        Some(0.0)
    );
    server.terminate().await;
}

#[tokio::test]
async fn metrics_expose_outcomes_histograms_statements_and_pinned_certificate_expiry() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |_| {}).await;
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );

    let (status, text) = app.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        metric_sum(&text, name, labels).unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert!(
        value(
            "agent_auth_authentications_total",
            &[("cloud", "aws"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(value("agent_auth_db_queries_total", &[]) >= 1.0);
    assert!(
        text.contains(
            "agent_auth_authentication_duration_seconds_bucket{cloud=\"aws\",le=\"0.005\"}"
        ),
        "a real histogram"
    );
    assert!(text.contains("agent_auth_verify_duration_seconds_bucket{cloud=\"aws\""));
    // DigiCert Global Root G2 ends 2038-01-15T12:00:00Z.
    assert_eq!(
        value(
            "agent_auth_trust_certificate_expiry_timestamp_seconds",
            &[("cloud", "azure"), ("subject", "DigiCert Global Root G2")]
        ),
        2147169600.0
    );
    // One series per pinned AWS certificate, named by region and form: the built-in
    // certificates of all 39 regions for both forms.
    assert!(text.contains("agent_auth_trust_certificate_expiry_timestamp_seconds{cloud=\"aws\",subject=\"ec2.amazonaws.com (us-east-1, signature)\"}"));
    // ca-west-1's RSA-2048 certificate ends 2203-05-13T15:37:01Z.
    assert_eq!(
        value(
            "agent_auth_trust_certificate_expiry_timestamp_seconds",
            &[
                ("cloud", "aws"),
                ("subject", "ec2.amazonaws.com (ca-west-1, rsa2048)")
            ]
        ),
        7364187421.0
    );
    let aws_series = text
        .lines()
        .filter(|l| {
            l.starts_with("agent_auth_trust_certificate_expiry_timestamp_seconds{cloud=\"aws\"")
        })
        .count();
    assert_eq!(aws_series, 39 * 2);
    for name in [
        "agent_auth_db_pool_connections",
        "agent_auth_db_pool_waiting",
        "agent_auth_requests_in_flight",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} described"
        );
        assert!(
            text.contains(&format!("# TYPE {name} gauge")),
            "{name} is a gauge"
        );
    }
    assert!(
        !text.contains(RECORDED_INSTANCE),
        "no instance id in labels"
    );
}
