//! Operating the service: readiness and gRPC health follow the database, a database restart is
//! survived without a restart of ours, pool exhaustion fails fast, shutdown drains, logs carry
//! no secrets, and `/metrics` passes promtool.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::helpers::*;
use agent_auth::embedded::{EmbeddedOptions, EmbeddedPostgres};

async fn serving(app: &TestServer) -> bool {
    matches!(
        agent_auth::client::is_serving(
            &app.grpc_url,
            "agentauth.v1.AgentAuth",
            Duration::from_secs(1)
        )
        .await,
        Ok(true)
    )
}

/// A private cluster for one test, so it can be stopped and started without disturbing others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_flips_readiness_and_the_service_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pg");
    let (cluster, db) = private_database(&data, "restart").await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |c| {
        c.database.db_checkout_timeout = value("500ms");
        c.database.db_connect_timeout = value("1s");
    })
    .await;
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    assert!(serving(&app).await);

    cluster.stop().await.unwrap();
    let started = Instant::now();
    let (code, reason, _) = failure(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    let answered_in = started.elapsed();
    assert_eq!(
        (code, reason.as_str()),
        (Code::Unavailable, "DATABASE_UNAVAILABLE")
    );
    assert!(
        answered_in < Duration::from_secs(3),
        "failed fast: {answered_in:?}"
    );
    assert_eq!(app.admin_get("/readyz").await.0, 503);
    let flipped = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), async || !serving(&app).await).await,
        "health NOT_SERVING within 5 s"
    );
    println!(
        "health flipped to NOT_SERVING {:?} after the database stopped",
        flipped.elapsed() + answered_in
    );

    let cluster = private_cluster(&data).await;
    let restarted = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), async || app
            .authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await
            .is_ok())
        .await,
        "logins recover without restarting the service"
    );
    println!(
        "first successful login {:?} after the database came back",
        restarted.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), async || serving(&app).await).await,
        "health SERVING again"
    );
    println!(
        "health SERVING again {:?} after the database came back",
        restarted.elapsed()
    );
    assert_eq!(app.admin_get("/readyz").await.0, 200);
    app.stop().await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_unavailable_after_the_checkout_timeout() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    // One connection carrying one statement at a time: the second login finds no room.
    let app = TestServer::in_process(&db, |c| {
        c.database.db_pool_size = value(1);
        c.database.db_pipeline_depth = value(1);
        c.database.db_checkout_timeout = value("200ms");
    })
    .await;
    // Warm the pool: the statement is prepared when a connection opens, and preparing would
    // wait on the lock too; the tests want the statement itself to wait.
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    let lock = lock_agents(&db).await;
    let holder = tokio::spawn(agent_auth::client::authenticate(
        app.channel().await,
        aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
    ));
    wait_until_blocked(&db).await;
    let message = fails_with(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );
    assert_eq!(message, "The database is unavailable. Retry later.");
    lock.batch_execute("ROLLBACK").await.unwrap();
    success(holder.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_shutdown_completes() {
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |_| {}).await;
    // Warm the pool: the statement is prepared when a connection opens, and preparing would
    // wait on the lock too; the tests want the statement itself to wait.
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    let lock = lock_agents(&db).await;
    let in_flight = tokio::spawn(agent_auth::client::authenticate(
        app.channel().await,
        aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
    ));
    wait_until_blocked(&db).await;
    let admin_url = app.admin_url.clone();
    let stopping = tokio::spawn(app.stop());
    assert!(
        eventually(Duration::from_secs(5), async || http_get(&format!(
            "{admin_url}/healthz"
        ))
        .await
        .0 == 0)
        .await,
        "listeners stop accepting"
    );
    lock.batch_execute("ROLLBACK").await.unwrap();
    let response = success(in_flight.await.unwrap());
    assert_eq!(response.session_token, agent.token.to_string());
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_authentication_and_no_secrets() {
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, RECORDED_INSTANCE).await;
    let server = TestServer::binary(&db, &[]).await;
    let channel = server.channel().await;
    success(
        agent_auth::client::authenticate(
            channel.clone(),
            aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
        )
        .await,
    );
    let forged = RECORDED_DOCUMENT.replace("t2.micro", "t2.nano");
    failure(
        agent_auth::client::authenticate(channel, aws_request(&forged, RECORDED_SIGNATURE, ""))
            .await,
    );
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "exit 0 after SIGTERM");

    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let auths: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "authentication")
        .collect();
    assert_eq!(auths.len(), 2, "{logs}");
    assert_eq!(
        (&auths[0]["outcome"], &auths[0]["reason"]),
        (&"ok".into(), &"".into())
    );
    assert_eq!(
        (&auths[1]["outcome"], &auths[1]["reason"]),
        (&"invalid_identity".into(), &"INVALID_IDENTITY".into())
    );
    for line in &auths {
        // Every field of the line, and one span: the RPC's, not repeated in a list.
        let mut keys: Vec<&str> = line
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "cloud",
                "detail",
                "duration_ms",
                "instance",
                "level",
                "message",
                "outcome",
                "reason",
                "request_id",
                "span",
                "target",
                "timestamp"
            ],
            "{line}"
        );
        assert_eq!(
            line["span"],
            serde_json::json!({
                "name": "agentauth.v1.AgentAuth/Authenticate",
                "otel.kind": "server",
                "rpc.system": "grpc",
                "rpc.service": "agentauth.v1.AgentAuth",
                "rpc.method": "Authenticate",
            })
        );
        assert_eq!(
            (&line["level"], &line["target"]),
            (&"INFO".into(), &"agent_auth::auth".into())
        );
        assert_eq!(line["cloud"], "aws");
        assert_eq!(line["request_id"].as_str().map(str::len), Some(32));
        assert!(line["duration_ms"].as_f64().is_some());
    }
    assert_eq!(
        auths[0]["instance"].as_str().map(str::len),
        Some(12),
        "a short hash of the instance id"
    );
    for secret in [
        agent.token.to_string(),
        RECORDED_INSTANCE.to_owned(),
        "ami-0c02fb55956c7d316".to_owned(),
    ]
    .into_iter()
    .chain(RECORDED_SIGNATURE.lines().map(str::to_owned))
    {
        assert!(!logs.contains(&secret), "the logs contain {secret:?}");
    }
}

/// A minimal OTLP/gRPC trace collector: it records (span name, trace id) of what it receives.
async fn otlp_collector() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    type Spans = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;
    struct Collector(Spans);
    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.0.lock().unwrap();
            for resource in request.into_inner().resource_spans {
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        let trace_id: String =
                            span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                        spans.push((span.name, trace_id));
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }
    let spans: Spans = Default::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(Collector(spans.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_under_the_callers_trace() {
    let (collector, spans) = otlp_collector().await;
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let server = TestServer::binary(&db, &["--otlp-endpoint", &collector]).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut client =
        agent_auth::grpc::pb::agent_auth_client::AgentAuthClient::new(server.channel().await);
    let mut request = tonic::Request::new(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.authenticate(request).await.expect("authenticates");
    let (status, _) = server.terminate().await;
    assert!(status.success());

    let spans = spans.lock().unwrap().clone();
    for name in ["agentauth.v1.AgentAuth/Authenticate", "verify", "query"] {
        assert!(
            spans.iter().any(|(n, t)| n == name && t == trace_id),
            "span {name} in trace {trace_id}: {spans:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_changes_nothing_for_callers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let server = TestServer::binary(&db, &["--otlp-endpoint", &format!("http://{closed}")]).await;
    let channel = server.channel().await;
    for _ in 0..20 {
        success(
            agent_auth::client::authenticate(
                channel.clone(),
                aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
            )
            .await,
        );
    }
    let (status, _) = server.terminate().await;
    assert!(
        status.success(),
        "exit 0 even though traces could not be flushed"
    );
}

/// `promtool`: on the machine, else extracted from Debian's `prometheus` package into
/// `/var/tmp/agent-auth-tools` on first use (only that binary, not the server), as the tests
/// get moto. Fails, never skips, when neither works.
fn promtool() -> std::path::PathBuf {
    let fetched = "/var/tmp/agent-auth-tools/promtool";
    for candidate in ["/usr/bin/promtool", "/usr/local/bin/promtool", fetched] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    let script = "set -e; d=$(mktemp -d); cd \"$d\"; \
        apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null; }; \
        dpkg -x prometheus_*.deb root; mkdir -p /var/tmp/agent-auth-tools; \
        install -m 0755 root/usr/bin/promtool /var/tmp/agent-auth-tools/promtool; rm -rf \"$d\"";
    let status = std::process::Command::new("sh")
        .args(["-c", script])
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()) && std::path::Path::new(fetched).exists(),
        "promtool is needed and could not be fetched ({status:?}): apt-get install prometheus, \
         or put promtool on /usr/local/bin"
    );
    fetched.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let db = TestDb::migrated().await;
    let app = TestServer::in_process(&db, |_| {}).await;
    failure(
        app.authenticate(aws_request(RECORDED_DOCUMENT, "AAAA", ""))
            .await,
    );
    let (status, text) = app.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(promtool())
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and the leaf certificates (for `localhost` and 127.0.0.1) it signs.
struct TestCa(crate::pki::Ca);

impl TestCa {
    fn new(name: &str) -> Self {
        Self(crate::pki::Ca::new(name))
    }

    /// A leaf signed by this CA: (certificate PEM, key PEM).
    fn issue(&self, cn: &str) -> (Vec<u8>, Vec<u8>) {
        self.0.issue(&crate::pki::Spec {
            dns: &["localhost"],
            ips: &["127.0.0.1"],
            ..crate::pki::Spec::new(cn)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_callers_without_a_certificate_from_the_client_ca() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let stranger_ca = TestCa::new("stranger CA");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let (server_cert, server_key) = server_ca.issue("localhost");
    let (cert_path, key_path) = (
        write("server.pem", &server_cert),
        write("server.key", &server_key),
    );
    let client_ca_path = write("client-ca.pem", &client_ca.0.cert.to_pem().unwrap());
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |c| {
        c.tls.tls_cert = Some(value(cert_path));
        c.tls.tls_key = Some(value(key_path));
        c.tls.tls_client_ca = Some(value(client_ca_path));
    })
    .await;
    let url = app.grpc_url.replace("http://", "https://");
    let tls = |identity: Option<(Vec<u8>, Vec<u8>)>| agent_auth::client::ClientTls {
        ca_pem: server_ca.0.cert.to_pem().unwrap(),
        identity_pem: identity,
        domain: Some("localhost".into()),
    };
    let call = async |tls: agent_auth::client::ClientTls| match agent_auth::client::connect_with(
        &url,
        Duration::from_secs(5),
        Some(&tls),
    )
    .await
    {
        Ok(channel) => agent_auth::client::authenticate(
            channel,
            aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
        )
        .await
        .map_err(|s| s.code()),
        Err(_) => Err(Code::Unavailable),
    };

    let response = call(tls(Some(client_ca.issue("control-plane"))))
        .await
        .expect("a client certificate from the CA is accepted");
    assert_eq!(response.session_token, agent.token.to_string());
    assert!(call(tls(None)).await.is_err(), "no client certificate");
    assert!(
        call(tls(Some(stranger_ca.issue("intruder"))))
            .await
            .is_err(),
        "a certificate from another CA"
    );
    let plaintext = logs_in_over_a_new_connection(&app.grpc_url, Duration::from_secs(2)).await;
    assert!(!plaintext, "plaintext is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_limit_ends_ok_shed_or_unavailable_never_internal_and_within_deadline() {
    let db = TestDb::migrated().await;
    seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |c| {
        c.limits.max_concurrent_requests = value(4);
        c.database.db_pool_size = value(2);
        c.database.db_checkout_timeout = value("300ms");
    })
    .await;
    let channel = app.channel().await;
    let deadline = Duration::from_secs(2);
    let calls = (0..150).map(|_| {
        let mut client =
            agent_auth::grpc::pb::agent_auth_client::AgentAuthClient::new(channel.clone());
        tokio::spawn(async move {
            let mut request =
                tonic::Request::new(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""));
            request.set_timeout(deadline);
            let started = Instant::now();
            let code = match client.authenticate(request).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            };
            (code, started.elapsed())
        })
    });
    let mut outcomes = std::collections::BTreeMap::new();
    for call in calls.collect::<Vec<_>>() {
        let (code, took) = call.await.unwrap();
        assert!(
            matches!(code, Code::Ok | Code::ResourceExhausted | Code::Unavailable),
            "{code:?}"
        );
        assert!(
            took < deadline + Duration::from_millis(500),
            "answered after {took:?}"
        );
        *outcomes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    println!("150 concurrent logins, limit 4, pool 2: {outcomes:?}");
    assert!(outcomes.contains_key("Ok"));
    let (_, metrics) = app.admin_get("/metrics").await;
    if outcomes.contains_key("ResourceExhausted") {
        let shed = metric_sum(&metrics, "agent_auth_requests_shed_total", &[])
            .expect("agent_auth_requests_shed_total");
        assert!(shed >= outcomes["ResourceExhausted"] as f64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_encrypts_by_default_and_verifies_with_a_ca() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pg");
    std::fs::create_dir_all(&data).unwrap();
    let ca = TestCa::new("database CA");
    let (cert, key) = ca.issue("localhost");
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let (cert_path, key_path) = (tls_dir.join("server.crt"), tls_dir.join("server.key"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let ca_path = tls_dir.join("ca.pem");
    std::fs::write(&ca_path, ca.0.cert.to_pem().unwrap()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&tls_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if nix::unistd::geteuid().is_root() {
            let postgres = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("postgres account");
            for path in [&cert_path, &key_path] {
                std::os::unix::fs::chown(
                    path,
                    Some(postgres.uid.as_raw()),
                    Some(postgres.gid.as_raw()),
                )
                .unwrap();
            }
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = EmbeddedOptions::new(&data);
    options.ephemeral = true;
    options.port = port;
    options.loopback_tcp = true;
    options.settings = vec![
        ("ssl".into(), "on".into()),
        ("ssl_cert_file".into(), cert_path.display().to_string()),
        ("ssl_key_file".into(), key_path.display().to_string()),
    ];
    let cluster = EmbeddedPostgres::start(options).await.expect("TLS cluster");
    cluster.ensure_database("tls").await.unwrap();
    let local = TestDb {
        name: "tls".into(),
        url: cluster.connection_string("tls"),
    };
    let tcp = format!("host=localhost port={port} user=agent_auth dbname=tls sslmode=require");

    // Without a CA: encrypted, not verified (libpq `require`); migrations run over TLS too.
    let app = TestServer::in_process(&local, |c| c.database.postgres_url = Some(tcp.clone())).await;
    seed_agent(&local, RECORDED_INSTANCE).await;
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    let encrypted: (i64, bool) = {
        let row = local
            .client()
            .await
            .query_one(
                "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_ssl s \
                 JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'agent-auth'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        encrypted.0 > 0 && encrypted.1,
        "the service's connections use TLS: {encrypted:?}"
    );
    app.stop().await;

    // With the right CA: verified.
    let ca_arg = ca_path.display().to_string();
    let app = TestServer::in_process(&local, |c| {
        c.database.postgres_url = Some(tcp.clone());
        c.database.postgres_ca = Some(value(ca_arg.clone()));
    })
    .await;
    success(
        app.authenticate(aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""))
            .await,
    );
    app.stop().await;

    // With another CA: the server is not trusted, and start-up says so.
    let other = TestCa::new("someone else");
    let other_path = tls_dir.join("other.pem");
    std::fs::write(&other_path, other.0.cert.to_pem().unwrap()).unwrap();
    let mut raw = test_config(&local);
    raw.database.postgres_url = Some(tcp.clone());
    raw.database.postgres_ca = Some(value(other_path.display().to_string()));
    let error = agent_auth::app::App::build(agent_auth::config::Config::try_from(raw).unwrap())
        .await
        .err()
        .expect("an untrusted database certificate fails start-up");
    assert!(error.to_string().contains("cannot connect"), "{error}");
    cluster.stop().await.unwrap();
}
