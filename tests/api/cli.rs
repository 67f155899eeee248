//! The binary as operators use it: configuration errors, precedence, `authenticate`, `trust`.

use std::process::Command;

use crate::helpers::*;

fn agent_auth() -> Command {
    let mut command = Command::new(server_binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENT_AUTH_") {
            command.env_remove(key);
        }
    }
    // No fetch of Google's keys from a test: the empty JWKS fixture, unless a flag says
    // otherwise (flags beat the environment).
    command.env(
        "AGENT_AUTH_GCP_JWKS",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gcp/empty-jwks.json"
        ),
    );
    command
}

#[test]
fn bad_configuration_exits_64_with_one_line_naming_the_key() {
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--db-pool-size", "many"], vec![], "db_pool_size"),
        (
            vec![],
            vec![("AGENT_AUTH_DB_CHECKOUT_TIMEOUT", "soon")],
            "db_checkout_timeout",
        ),
        (vec!["--grpc-listen", "nowhere"], vec![], "grpc_listen"),
        (vec!["--schema", "theirs"], vec![], "schema"),
        (
            vec!["--aws-certificate", "us-east-1=/no/such.pem"],
            vec![],
            "aws_certificate",
        ),
        (vec!["--config", "/no/such.toml"], vec![], "config"),
        (vec!["--http-listen", "nowhere"], vec![], "http_listen"),
        (
            vec!["--azure-fetch-issuers", "maybe"],
            vec![],
            "azure_fetch_issuers",
        ),
        (vec!["--gcp-jwks", "/no/such/jwks.json"], vec![], "gcp_jwks"),
        // Booleans are exactly true or false (or the flag alone).
        (vec!["--aws-ec2-check", "yes"], vec![], "aws_ec2_check"),
        (
            vec![],
            vec![("AGENT_AUTH_GCP_COMPUTE_CHECK", "on")],
            "gcp_compute_check",
        ),
    ];
    for (args, env, key) in cases {
        let output = agent_auth()
            .arg("serve")
            .args(&args)
            .envs(env.clone())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{key} not named in {stderr}");
        // The flag, the env var and the TOML key, whichever the operator used.
        let flag = format!("--{}", key.replace('_', "-"));
        let env = format!("AGENT_AUTH_{}", key.to_ascii_uppercase());
        assert!(
            stderr.contains(&flag) && stderr.contains(&env),
            "{flag} / {env} not named in {stderr}"
        );
    }
}

#[test]
fn flags_beat_env_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent-auth.toml");
    std::fs::write(
        &file,
        "db_pool_size = 3\nmax_concurrent_requests = 30\nshutdown_grace = \"3s\"\n",
    )
    .unwrap();
    let output = agent_auth()
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .args(["--max-concurrent-requests", "77"])
        .env("AGENT_AUTH_MAX_CONCURRENT_REQUESTS", "55")
        .env("AGENT_AUTH_SHUTDOWN_GRACE", "5s")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("db_pool_size = 3\n"),
        "file value kept: {printed}"
    );
    assert!(
        printed.contains("max_concurrent_requests = 77\n"),
        "flag wins: {printed}"
    );
    assert!(
        printed.contains("shutdown_grace = \"5s\"\n"),
        "env beats file: {printed}"
    );
}

/// `--check-config` prints TOML that `--config` reads back, with no password in it, whether
/// the URL or a libpq key=value string carries it.
#[test]
fn check_config_prints_toml_that_reads_back_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "postgres://agent:s3cr%40t@db.example:5432/coder?sslmode=require",
        "postgresql://agent:s3cr%40t@db.example/coder?password=s3cr%40t&sslmode=require",
        "host=db.example user=agent password='s3cr@t with space' dbname=coder",
        "host=db.example password=s3cr@t dbname=coder",
    ] {
        let output = agent_auth()
            .args(["serve", "--check-config", "--postgres-url", url])
            .args(["--grpc-listen", "0.0.0.0:7000"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{url}");
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(!printed.contains("s3cr"), "{printed}");
        assert!(printed.contains("REDACTED"), "{printed}");
        assert!(
            printed.contains("grpc_listen = \"0.0.0.0:7000\""),
            "{printed}"
        );
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, &printed).unwrap();
        let again = agent_auth()
            .args(["serve", "--check-config", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            again.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&again.stdout), printed);
    }
}

/// A production pod with a stray variable or config key must not accept expired evidence.
#[test]
fn insecure_verify_time_is_a_command_line_flag_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent-auth.toml");
    std::fs::write(&file, "insecure_verify_time = \"2022-04-19T02:27:21Z\"\n").unwrap();
    let from_file = agent_auth()
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let from_env = agent_auth()
        .args(["serve", "--check-config"])
        .env("AGENT_AUTH_INSECURE_VERIFY_TIME", "2022-04-19T02:27:21Z")
        .output()
        .unwrap();
    for output in [from_file, from_env] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("insecure_verify_time") && stderr.contains("command-line flag only"),
            "{stderr}"
        );
    }
    let flag = agent_auth()
        .args([
            "serve",
            "--check-config",
            "--insecure-verify-time",
            "2022-04-19T02:27:21Z",
        ])
        .output()
        .unwrap();
    assert!(flag.status.success());
}

/// `--postgres-url-file` (a mounted Secret) takes the place of `--postgres-url`.
#[tokio::test]
async fn the_postgres_url_can_come_from_a_file() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("url");
    std::fs::write(&file, format!("{}\n", db.url)).unwrap();
    let output = agent_auth()
        .args(["migrate", "--postgres-url-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let both = agent_auth()
        .args(["migrate", "--postgres-url", &db.url, "--postgres-url-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&both.stderr).contains("postgres_url_file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticate_command_prints_the_token_from_a_running_server() {
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, RECORDED_INSTANCE).await;
    let app = TestServer::in_process(&db, |_| {}).await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/aws");
    let (document, signature) = (
        format!("{fixtures}/us-east-1-document.json"),
        format!("{fixtures}/us-east-1-signature.txt"),
    );
    assert_authenticate_command_prints(
        &app.grpc_url,
        &["--aws-document", &document, "--aws-signature", &signature],
        agent.token,
    )
    .await;
}

/// `agent-auth migrate` against `db`, with text logs.
async fn migrate(db: &TestDb) -> std::process::Output {
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        agent_auth()
            .args(["migrate", "--log-format", "text", "--postgres-url", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_the_owned_schema_and_healthcheck_probes_a_server() {
    let db = TestDb::new().await;
    let output = migrate(&db).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tables: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'workspace%' OR tablename = 'provisioner_jobs'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 5);
    // The first migration says what it applied, as numbers.
    let first = String::from_utf8_lossy(&output.stderr);
    assert!(
        first.contains("owned schema migrated applied=1 newest=1"),
        "{first}"
    );
    // Again, on the migrated schema: PostgreSQL's NOTICEs ("… already exists, skipping") and
    // refinery's own lines stay out of the operator's log.
    let url = db.url.clone();
    let again = tokio::task::spawn_blocking(move || {
        agent_auth()
            .args(["migrate", "--postgres-url", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(again.status.success());
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(
        !log.contains("NOTICE") && !log.contains("refinery"),
        "{log}"
    );
    assert!(log.contains("no migration to apply"), "{log}");

    let app = TestServer::in_process(&db, |_| {}).await;
    let server = app.grpc_url.clone();
    let serving = tokio::task::spawn_blocking(move || {
        agent_auth()
            .args(["healthcheck", "--server", &server])
            .output()
            .unwrap()
    });
    let serving = serving.await.unwrap();
    assert!(serving.status.success());
    assert_eq!(String::from_utf8_lossy(&serving.stdout), "SERVING\n");
    let closed = free_port();
    let down = tokio::task::spawn_blocking(move || {
        agent_auth()
            .args([
                "healthcheck",
                "--timeout",
                "500ms",
                "--server",
                &format!("http://127.0.0.1:{closed}"),
            ])
            .output()
            .unwrap()
    });
    assert_eq!(down.await.unwrap().status.code(), Some(1));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `serve` with no --postgres-url: the embedded cluster starts in --data-dir, the service
/// answers, and SIGTERM stops both with exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_an_embedded_database_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (grpc, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-auth"))
        .args(["serve", "--log-format", "text"])
        .args([
            "--gcp-jwks",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/gcp/empty-jwks.json"
            ),
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .args([
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .env_remove("AGENT_AUTH_POSTGRES_URL")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = eventually(std::time::Duration::from_secs(60), async || {
        http_get(&format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .0
            == 200
    });
    assert!(ready.await, "embedded serve never became ready");
    assert!(data_dir.join("pgdata/postmaster.pid").exists());

    let channel = agent_auth::client::connect(
        &format!("http://127.0.0.1:{grpc}"),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let (code, reason, _) = failure(
        agent_auth::client::authenticate(
            channel,
            aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
        )
        .await,
    );
    assert_eq!(
        (code, reason.as_str()),
        (tonic::Code::NotFound, "INSTANCE_NOT_FOUND"),
        "empty embedded database"
    );

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !data_dir.join("pgdata/postmaster.pid").exists(),
        "the embedded cluster was stopped"
    );
}

/// Runs `serve ARGS` on loopback listeners with text logs, expects exit 1 (a start-up failure)
/// and returns what it wrote to stderr.
fn serve_fails(args: &[&str]) -> String {
    let output = agent_auth()
        .args(["serve", "--log-format", "text"])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

/// A database that cannot be reached is named with its cause, once, and never with a password.
#[tokio::test]
async fn database_failures_name_where_and_why() {
    let db = TestDb::new().await;
    let closed = free_port();
    let missing_db = db.url.replace(&db.name, "no_such_database");
    let cases = [
        (
            format!("postgres://agent:s3cret@127.0.0.1:{closed}/coder"),
            vec![
                format!("127.0.0.1 port {closed}"),
                "\"coder\"".into(),
                "Connection refused".into(),
            ],
        ),
        (
            missing_db,
            vec![
                "database \"no_such_database\" does not exist".into(),
                "socket".into(),
            ],
        ),
        (
            "postgres://agent:s3cret@no-such-host.invalid/coder".into(),
            vec![
                "no-such-host.invalid".into(),
                "could not translate host name".into(),
            ],
        ),
    ];
    for (url, expected) in cases {
        let stderr = serve_fails(&["--postgres-url", &url, "--db-connect-timeout", "3s"]);
        for words in expected {
            assert!(stderr.contains(&words), "{words:?} not in {stderr}");
        }
        assert!(!stderr.contains("s3cret"), "{stderr}");
        assert_eq!(
            stderr.matches("cannot connect to PostgreSQL").count(),
            1,
            "printed once: {stderr}"
        );
        // The fatal error is the last line and the only ERROR.
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert_eq!(
            stderr.trim_end().lines().last(),
            Some(errors[0]),
            "{stderr}"
        );
    }
}

/// The third review's finding 5: the start-up schema connection was built without the connect
/// timeout, so `serve` and `migrate` against a database that accepts TCP and never answers
/// waited for the kernel (minutes), with no listener and nothing logged. Both fail within
/// `--db-connect-timeout` now, saying what they waited for, and the log says what it waits for
/// before it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_database_fails_the_start_within_the_connect_timeout() {
    let db = TestDb::new().await;
    let proxy = BlackHoleProxy::start(&db).await;
    proxy.black_hole_all();
    let url = proxy.url.clone();
    for command in ["serve", "migrate"] {
        let url = url.clone();
        let started = std::time::Instant::now();
        let output = tokio::task::spawn_blocking(move || {
            let mut run = agent_auth();
            run.args([command, "--log-format", "text"]);
            if command == "serve" {
                run.args([
                    "--grpc-listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                ]);
            }
            run.args(["--postgres-url", &url, "--db-connect-timeout", "2s"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            took < std::time::Duration::from_secs(8),
            "{command} took {took:?}: {stderr}"
        );
        for words in [
            "connecting to PostgreSQL to migrate the schema",
            "connect_timeout=2s",
            "no answer within 2s (--db-connect-timeout)",
        ] {
            assert!(
                stderr.contains(words),
                "{command}: {words:?} not in {stderr}"
            );
        }
    }
}

/// A second `serve` on a data dir whose cluster is running refuses to start, naming the PID,
/// and leaves the first cluster alone.
#[tokio::test]
async fn a_second_serve_on_a_busy_data_dir_exits_1_naming_the_pid() {
    let data = tempfile::tempdir().unwrap();
    let mut options = agent_auth::embedded::EmbeddedOptions::new(data.path());
    options.ephemeral = true;
    let first = agent_auth::embedded::EmbeddedPostgres::start(options)
        .await
        .unwrap();
    let pid = std::fs::read_to_string(data.path().join("pgdata/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let data_dir = data.path().display().to_string();
    let stderr = serve_fails(&["--data-dir", &data_dir]);
    assert!(stderr.contains(&format!("process {pid}")), "{stderr}");
    assert!(!stderr.contains("embedded PostgreSQL started"), "{stderr}");
    assert!(first.is_running());
    first.stop().await.unwrap();
}

/// A JWKS that cannot be fetched is one warning, then quiet retries (DEBUG) until it changes.
#[tokio::test]
async fn an_unreachable_jwks_warns_once() {
    let db = TestDb::migrated().await;
    let jwks = format!("http://127.0.0.1:{}/certs", free_port());
    let server = TestServer::binary(&db, &["--gcp-jwks", &jwks, "--log-format", "text"]).await;
    // The refresher retries after 1 s, then 2 s: three attempts in 3.5 s.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let (_, log) = server.terminate().await;
    assert_eq!(log.matches("GCP JWKS fetch failed").count(), 1, "{log}");
}

/// A wrong password against a server that checks passwords (scram-sha-256 on loopback) is
/// said as PostgreSQL says it, and the password itself is never printed.
#[tokio::test]
async fn a_wrong_password_is_named_as_the_cause() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut options = agent_auth::embedded::EmbeddedOptions::new(data.path());
    options.ephemeral = true;
    options.port = port;
    options.loopback_tcp = true;
    let cluster = agent_auth::embedded::EmbeddedPostgres::start(options)
        .await
        .unwrap();
    std::fs::write(
        data.path().join("pgdata/pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let admin = connect(&cluster.connection_string("postgres")).await;
    admin
        .batch_execute("CREATE ROLE agent LOGIN PASSWORD 'right-one'; SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let url = format!("postgres://agent:wrong-one@127.0.0.1:{port}/postgres?sslmode=disable");
    let stderr = serve_fails(&["--postgres-url", &url]);
    assert!(
        stderr.contains("password authentication failed for user \"agent\""),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("127.0.0.1 port {port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-one"), "{stderr}");
    drop(admin);
    cluster.stop().await.unwrap();
}

/// `healthcheck` and `authenticate` name the cause and the fix: an address without a scheme, a
/// port nothing listens on, a socket file that is not there. Both read `AGENT_AUTH_SERVER`.
#[test]
fn client_commands_name_the_cause_and_the_fix() {
    let closed = free_port();
    let evidence = [
        "--aws-document",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/aws/us-east-1-document.json"
        ),
        "--aws-signature",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/aws/us-east-1-signature.txt"
        ),
    ];
    let no_scheme = format!("127.0.0.1:{closed}");
    let refused = format!("http://127.0.0.1:{closed}");
    let cases = [
        (no_scheme.as_str(), "no scheme: use http://HOST:PORT"),
        (
            refused.as_str(),
            "connection refused: nothing listens there",
        ),
        ("unix:/no/such/agent-auth.sock", "no such socket file"),
    ];
    for (server, expected) in cases {
        for command in ["healthcheck", "authenticate"] {
            let mut run = agent_auth();
            run.arg(command).env("AGENT_AUTH_SERVER", server);
            if command == "authenticate" {
                run.args(evidence);
            }
            let output = run.output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(1),
                "{command} {server}: {stderr}"
            );
            assert!(
                stderr.contains(expected) && stderr.contains(server),
                "{command} {server}: {stderr}"
            );
            assert!(!stderr.contains("transport error"), "{stderr}");
        }
    }
}

/// An unknown key in the config file is named as written, with the real key it is nearest to;
/// no flag or env var is invented for it.
#[test]
fn an_unknown_config_key_gets_a_did_you_mean_and_no_invented_names() {
    let dir = tempfile::tempdir().unwrap();
    for (written, meant) in [
        ("grpc-listen = \"127.0.0.1:1\"\n", Some("grpc_listen")),
        ("db_pool_sise = 7\n", Some("db_pool_size")),
        ("frobnicate = 1\n", None),
    ] {
        let path = dir.path().join("agent-auth.toml");
        std::fs::write(&path, written).unwrap();
        let output = agent_auth()
            .args(["serve", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let key = written.split(' ').next().unwrap();
        assert!(stderr.contains(&format!("unknown key `{key}`")), "{stderr}");
        match meant {
            Some(meant) => assert!(
                stderr.contains(&format!("did you mean `{meant}`?")),
                "{stderr}"
            ),
            None => assert!(!stderr.contains("did you mean"), "{stderr}"),
        }
        let invented_env = format!("AGENT_AUTH_{}", key.to_ascii_uppercase());
        assert!(
            !stderr.contains(&invented_env) && !stderr.contains(&format!("--{key} (")),
            "{stderr}"
        );
    }
}

/// `migrate` against a database that already holds Coder's tables refuses before touching it,
/// says why, and points at `--schema coder`.
#[tokio::test]
async fn migrate_over_coders_tables_suggests_schema_coder() {
    let db = TestDb::new().await;
    db.client().await.batch_execute(CODER_SCHEMA).await.unwrap();
    let output = migrate(&db).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already holds workspace_agents") && stderr.contains("--schema coder"),
        "{stderr}"
    );
    let history: Option<String> = db
        .client()
        .await
        .query_one("SELECT to_regclass('refinery_schema_history')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, None, "nothing may be written");
}

/// `serve --help` is a short reference an operator reads through: at most 150 lines, the same
/// as `-h`, every setting's flag in it, and no pointer to prose that is not there.
#[test]
fn serve_help_is_a_short_reference() {
    let long = agent_auth().args(["serve", "--help"]).output().unwrap();
    let short = agent_auth().args(["serve", "-h"]).output().unwrap();
    assert!(long.status.success());
    let text = String::from_utf8_lossy(&long.stdout);
    let lines = text.lines().count();
    eprintln!("serve --help: {lines} lines");
    assert!(lines <= 150, "serve --help is {lines} lines:\n{text}");
    assert_eq!(long.stdout, short.stdout);
    for flag in [
        "--postgres-url",
        "--schema",
        "--db-pool-size",
        "--max-connections",
        "--gcp-jwks",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    assert!(!text.contains("below"), "{text}");
}

/// Where the tools binary is not beside the server (the container image), `agent-auth demo`
/// says where the demo is, exit 64, and runs nothing.
#[test]
fn the_demo_command_without_the_tools_binary_says_where_the_demo_is() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("agent-auth");
    std::fs::copy(env!("CARGO_BIN_EXE_agent-auth"), &alone).unwrap();
    let output = Command::new(&alone).arg("demo").output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("agent-auth-tools") && stderr.contains("is missing"),
        "{stderr}"
    );
}
