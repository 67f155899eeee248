//! The test harness: one throwaway PostgreSQL cluster per test run (or `TEST_DATABASE_URL`),
//! a fresh database per test, the real server on 127.0.0.1:0, and real AWS-style signatures
//! from keys generated here.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use agent_auth::app::App;
use agent_auth::config::{Config, Settings};
use agent_auth::embedded::{EmbeddedOptions, EmbeddedPostgres};
use agent_auth::grpc::pb;
use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use openssl::x509::X509;
use tokio_postgres::{Client, NoTls};
use tonic::transport::Channel;
use uuid::Uuid;

/// Recorded AWS vector (exact bytes; see tests/fixtures/aws).
pub const RECORDED_DOCUMENT: &str = include_str!("../fixtures/aws/us-east-1-document.json");
pub const RECORDED_SIGNATURE: &str = include_str!("../fixtures/aws/us-east-1-signature.txt");
pub const RECORDED_INSTANCE: &str = "i-076e9b91f7c420782";

struct Harness {
    /// libpq string for the maintenance database; `dbname` is appended per use.
    admin: String,
    _cluster: Option<EmbeddedPostgres>,
}

/// Starts the run's cluster once. Its supervisor thread outlives every test; the server gets
/// SIGINT when this process exits, so nothing is left running.
fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        std::thread::spawn(start_harness)
            .join()
            .unwrap_or_else(|_| panic!("the PostgreSQL harness thread panicked"))
    })
}

fn start_harness() -> Harness {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
            let admin = Harness { admin: url, _cluster: None };
            let client = connect(&admin.admin).await;
            client
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await
                .unwrap_or_else(|e| panic!("TEST_DATABASE_URL must allow pg_stat_statements (shared_preload_libraries): {e}"));
            return admin;
        }
        remove_stale_clusters();
        let dir = std::env::temp_dir().join(format!("agent-auth-test-{}", std::process::id()));
        let mut options = EmbeddedOptions::new(&dir);
        options.ephemeral = true;
        options.settings = vec![
            ("shared_preload_libraries".into(), "pg_stat_statements".into()),
            ("max_connections".into(), "300".into()),
        ];
        let cluster = EmbeddedPostgres::start(options).await.unwrap_or_else(|e| {
            panic!(
                "the tests need a PostgreSQL server: {e}. Install it (Debian: apt-get install \
                 postgresql) or set TEST_DATABASE_URL to a superuser connection string"
            )
        });
        let admin = cluster.connection_string("postgres");
        connect(&admin)
            .await
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"));
        Harness {
            admin,
            _cluster: Some(cluster),
        }
    })
}

/// Removes clusters of earlier runs whose process is gone.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("agent-auth-test-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub async fn connect(conn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Replaces or appends `dbname` in a libpq key=value string or URL.
fn with_dbname(base: &str, dbname: &str) -> String {
    if base.starts_with("postgres://") || base.starts_with("postgresql://") {
        let mut url = base.to_owned();
        if let Some(q) = url.find('?') {
            url.truncate(q);
        }
        let (prefix, _) = url.rsplit_once('/').unwrap_or((&url, ""));
        let query = base.find('?').map(|q| &base[q..]).unwrap_or("");
        format!("{prefix}/{dbname}{query}")
    } else {
        let kept: Vec<&str> = base
            .split_whitespace()
            .filter(|kv| !kv.starts_with("dbname="))
            .collect();
        format!("{} dbname={dbname}", kept.join(" "))
    }
}

/// A fresh, empty database for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("t_{}", Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database: {e}"));
        Self {
            url: with_dbname(&harness().admin, &name),
            name,
        }
    }

    /// A fresh database with the owned schema applied.
    pub async fn migrated() -> Self {
        let db = Self::new().await;
        let config: tokio_postgres::Config = db.url.parse().unwrap_or_else(|e| panic!("{e}"));
        agent_auth::store::migrate::run_migrations(&config)
            .await
            .unwrap_or_else(|e| panic!("migrations: {e}"));
        db
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A connection string for another role on this database.
    pub fn url_as(&self, user: &str) -> String {
        let kept: Vec<&str> = self
            .url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("user="))
            .collect();
        format!("{} user={user}", kept.join(" "))
    }

    /// How many statements have run in this database since the last reset (pg_stat_statements,
    /// read from the maintenance database so the count is not disturbed).
    pub async fn statements(&self) -> i64 {
        admin()
            .await
            .query_one(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)",
                &[&self.name],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"))
            .get(0)
    }

    /// Calls of the resolver's statement alone (a test's own statements, such as a lock, left
    /// out).
    pub async fn resolver_statements(&self) -> i64 {
        admin()
            .await
            .query_one(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1) \
                 AND query = $2",
                &[&self.name, &agent_auth::store::resolve::RESOLVE_SQL],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"))
            .get(0)
    }

    /// Makes the database refuse (or accept again) new connections, closing existing ones:
    /// the service sees a database that is down.
    pub async fn allow_connections(&self, allow: bool) {
        let admin = admin().await;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
                self.name
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if !allow {
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    &[&self.name],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    pub async fn reset_statements(&self) {
        admin().await
            .execute(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = $1), 0)",
                &[&self.name],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements_reset: {e}"));
    }
}

/// A superuser connection to the maintenance database.
pub async fn admin() -> Client {
    connect(&harness().admin).await
}

/// A running server.
pub struct TestApp {
    pub grpc_url: String,
    pub admin_url: String,
    /// The Coder-compatible HTTP listener, when `http_listen` was set.
    pub http_url: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), agent_auth::app::AppError>>>,
}

impl TestApp {
    /// Starts the server on loopback with `db`, after `edit` adjusts the settings.
    pub async fn spawn(db: &TestDb, edit: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_config(db);
        edit(&mut settings);
        Self::spawn_config(Config::try_from(settings).unwrap_or_else(|e| panic!("{e}"))).await
    }

    pub async fn spawn_config(config: Config) -> Self {
        let unix = match &config.grpc_listen {
            agent_auth::config::ListenAddr::Unix(path) => Some(format!("unix:{}", path.display())),
            agent_auth::config::ListenAddr::Tcp(_) => None,
        };
        let app = App::build(config)
            .await
            .unwrap_or_else(|e| panic!("App::build: {e}"));
        let grpc_url = unix.unwrap_or_else(|| {
            format!(
                "http://{}",
                app.grpc_addr().unwrap_or_else(|| panic!("no gRPC address"))
            )
        });
        let admin = app
            .admin_addr()
            .unwrap_or_else(|| panic!("no admin address"));
        let http_url = app.http_addr().map(|a| format!("http://{a}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Self {
            grpc_url,
            http_url,
            admin_url: format!("http://{admin}"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        agent_auth::client::connect(&self.grpc_url, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn authenticate(
        &self,
        request: pb::AuthenticateRequest,
    ) -> Result<pb::AuthenticateResponse, tonic::Status> {
        agent_auth::client::authenticate(self.channel().await, request).await
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(&format!("{}{path}", self.admin_url)).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = task.await.unwrap_or_else(|e| panic!("server task: {e}"));
            result.unwrap_or_else(|e| panic!("server: {e}"));
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Settings for a test server: loopback, port 0, the test's database.
pub fn test_config(db: &TestDb) -> Settings {
    Settings::from_flags([
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--postgres-url",
        &db.url,
        "--log-level",
        "warn",
        "--db-pool-size",
        "4",
        // Never the real Google URL: tests reach loopback only.
        "--gcp-jwks",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gcp/empty-jwks.json"
        ),
    ])
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A setting's value from the text an operator would write for it.
pub fn value<T>(text: impl std::fmt::Display) -> T
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = text.to_string();
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} as a setting: {e}"))
}

/// [`value`] for each of several.
pub fn values<T>(texts: &[String]) -> Vec<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    texts.iter().map(value).collect()
}

/// The tests' one HTTP client (hyper-util's, HTTP/1.1, a new connection per request):
/// (status, headers as `name: value` lines, body). Status 0 when nothing answered (nothing
/// listens yet, or the listener closed during the request).
pub async fn http_request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<bytes::Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::CONNECTION, "close");
    if let Some(content_type) = content_type {
        request = request.header(http::header::CONTENT_TYPE, content_type);
    }
    let request = request
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))
        .unwrap_or_else(|e| panic!("{e}"));
    let Ok(response) = client.request(request).await else {
        return (0, String::new(), String::new());
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| format!("{name}: {}\r\n", value.to_str().unwrap_or_default()))
        .collect();
    let body = match response.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => return (0, String::new(), String::new()),
    };
    (status, headers, body)
}

/// GET: (status, body); status 0 when nothing answered.
pub async fn http_get(url: &str) -> (u16, String) {
    let (status, _, body) = http_request("GET", url, None, b"").await;
    (status, body)
}

/// POST with a content type: (status, headers, body).
pub async fn http_post(url: &str, content_type: &str, body: &[u8]) -> (u16, String, String) {
    http_request("POST", url, Some(content_type), body).await
}

/// The sum of the Prometheus samples of `name` whose labels include every pair in `labels`;
/// `None` when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The code, `ErrorInfo` reason and message of a failed call.
pub fn failure(
    result: Result<pb::AuthenticateResponse, tonic::Status>,
) -> (tonic::Code, String, String) {
    use tonic_types::StatusExt;
    match result {
        Ok(response) => panic!("expected a failure, got agent {:?}", response.agent_name),
        Err(status) => {
            let info = status.get_details_error_info();
            if let Some(info) = &info {
                assert_eq!(info.domain, "agent-auth", "ErrorInfo domain");
            }
            (
                status.code(),
                info.map(|i| i.reason).unwrap_or_default(),
                status.message().to_owned(),
            )
        }
    }
}

/// Asserts that a call failed with this code and `ErrorInfo` reason; returns the message.
#[track_caller]
pub fn fails_with(
    result: Result<pb::AuthenticateResponse, tonic::Status>,
    code: tonic::Code,
    reason: &str,
) -> String {
    let (got_code, got_reason, message) = failure(result);
    assert_eq!((got_code, got_reason.as_str()), (code, reason), "{message}");
    message
}

pub fn success(
    result: Result<pb::AuthenticateResponse, tonic::Status>,
) -> pb::AuthenticateResponse {
    result.unwrap_or_else(|s| panic!("expected success, got {}", agent_auth::client::describe(&s)))
}

// ---------------------------------------------------------------------------------------------
// Evidence.

/// An AWS-style signing key with its self-signed certificate written to a PEM file.
pub struct AwsKey {
    key: PKey<Private>,
    pub certificate: X509,
    pub pem_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl AwsKey {
    /// `bits` 1024 mimics AWS's legacy `signature` keys; 2048 its `rsa2048` ones.
    pub fn generate(bits: u32) -> Self {
        let key = crate::pki::rsa(bits);
        let certificate = crate::pki::certificate(
            &crate::pki::Spec {
                days: (0, 365),
                ..crate::pki::Spec::new("ec2.amazonaws.com")
            },
            &key,
            None,
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pem_path = dir.path().join("aws.pem");
        std::fs::write(
            &pem_path,
            certificate.to_pem().unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Self {
            key,
            certificate,
            pem_path,
            _dir: dir,
        }
    }

    /// `REGION=PATH` for `--aws-certificate`.
    pub fn flag(&self, region: &str) -> String {
        format!("{region}={}", self.pem_path.display())
    }

    /// Base64 RSA PKCS#1 v1.5 SHA-256 over the document, wrapped at 64 columns as IMDS does.
    pub fn sign(&self, document: &str) -> String {
        let mut signer =
            Signer::new(MessageDigest::sha256(), &self.key).unwrap_or_else(|e| panic!("{e}"));
        signer
            .update(document.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        wrap64(&signer.sign_to_vec().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Base64 PKCS#7 SignedData over the document, like IMDS `/rsa2048`: no certificates,
    /// detached or with the content attached.
    pub fn sign_pkcs7(&self, document: &str, detached: bool) -> String {
        use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
        use openssl::stack::Stack;
        let mut flags = Pkcs7Flags::BINARY | Pkcs7Flags::NOCERTS;
        if detached {
            flags |= Pkcs7Flags::DETACHED;
        }
        let certs = Stack::new().unwrap_or_else(|e| panic!("{e}"));
        let pkcs7 = Pkcs7::sign(
            &self.certificate,
            &self.key,
            &certs,
            document.as_bytes(),
            flags,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        wrap64(&pkcs7.to_der().unwrap_or_else(|e| panic!("{e}")))
    }
}

fn wrap64(bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    b64.as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An instance identity document in IMDS's own layout.
pub fn aws_document(instance_id: &str, region: &str, account: &str) -> String {
    format!(
        "{{\n  \"accountId\" : \"{account}\",\n  \"architecture\" : \"x86_64\",\n  \"availabilityZone\" : \"{region}a\",\n  \"imageId\" : \"ami-0c02fb55956c7d316\",\n  \"instanceId\" : \"{instance_id}\",\n  \"instanceType\" : \"t3.micro\",\n  \"pendingTime\" : \"2026-11-01T10:00:00Z\",\n  \"privateIp\" : \"10.0.0.12\",\n  \"region\" : \"{region}\",\n  \"version\" : \"2017-09-30\"\n}}"
    )
}

pub fn aws_request(document: &str, signature: &str, agent_name: &str) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        identity: Some(pb::authenticate_request::Identity::Aws(
            pb::AwsInstanceIdentity {
                document: document.into(),
                signature: signature.into(),
                rsa2048: String::new(),
            },
        )),
        agent_name: agent_name.into(),
    }
}

/// A fresh random EC2 instance id.
pub fn instance_id() -> String {
    format!("i-{}", &Uuid::new_v4().simple().to_string()[..17])
}

// ---------------------------------------------------------------------------------------------
// Rows in the owned schema.

/// Writes control-plane rows for one test.
pub struct World {
    pub client: Client,
}

/// What a seeded agent looks like to the caller.
#[derive(Debug, Clone, Copy)]
pub struct Agent {
    pub id: Uuid,
    pub token: Uuid,
}

impl World {
    pub async fn new(db: &TestDb) -> Self {
        Self {
            client: db.client().await,
        }
    }

    pub async fn workspace(&self) -> Uuid {
        let id = Uuid::new_v4();
        self.exec(
            "INSERT INTO workspaces (id, name) VALUES ($1, 'ws')",
            &[&id],
        )
        .await;
        id
    }

    pub async fn delete_workspace(&self, workspace: Uuid) {
        self.exec(
            "UPDATE workspaces SET deleted = true WHERE id = $1",
            &[&workspace],
        )
        .await;
    }

    /// A build of `workspace` with a `workspace_build` job and one resource; returns the
    /// resource.
    pub async fn build(&self, workspace: Uuid, number: i32) -> Uuid {
        let job = self.job("workspace_build").await;
        self.exec(
            "INSERT INTO workspace_builds (id, workspace_id, build_number, job_id) VALUES ($1, $2, $3, $4)",
            &[&Uuid::new_v4(), &workspace, &number, &job],
        )
        .await;
        self.resource(job).await
    }

    /// A resource of a job that is not a build (`template_version_import` or
    /// `template_version_dry_run`).
    pub async fn template_job_resource(&self, job_type: &str) -> Uuid {
        let job = self.job(job_type).await;
        self.resource(job).await
    }

    pub async fn agent(&self, resource: Uuid, name: &str, instance: &str) -> Agent {
        self.agent_with(resource, name, instance, false, None).await
    }

    pub async fn agent_with(
        &self,
        resource: Uuid,
        name: &str,
        instance: &str,
        deleted: bool,
        parent: Option<Uuid>,
    ) -> Agent {
        let agent = Agent {
            id: Uuid::new_v4(),
            token: Uuid::new_v4(),
        };
        self.exec(
            "INSERT INTO workspace_agents (id, name, resource_id, auth_token, auth_instance_id, deleted, parent_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&agent.id, &name, &resource, &agent.token, &instance, &deleted, &parent],
        )
        .await;
        agent
    }

    async fn job(&self, job_type: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.exec(
            "INSERT INTO provisioner_jobs (id, type) VALUES ($1, $2::text::provisioner_job_type)",
            &[&id, &job_type],
        )
        .await;
        id
    }

    async fn resource(&self, job: Uuid) -> Uuid {
        let id = Uuid::new_v4();
        self.exec(
            "INSERT INTO workspace_resources (id, job_id) VALUES ($1, $2)",
            &[&id, &job],
        )
        .await;
        id
    }

    pub async fn exec(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) {
        self.client
            .execute(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Whether the recorded AWS document logs in over a new connection to `url` (connect within
/// `timeout`); false for any failure, refused connections included.
pub async fn logs_in_over_a_new_connection(url: &str, timeout: Duration) -> bool {
    match agent_auth::client::connect(url, timeout).await {
        Ok(channel) => agent_auth::client::authenticate(
            channel,
            aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
        )
        .await
        .is_ok(),
        Err(_) => false,
    }
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's metric `name` summed over the series with `labels` (-1 if it has none).
pub async fn metric(server: &ServeProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", server.admin_url)).await;
    metric_sum(&text, name, labels).unwrap_or(-1.0)
}

/// Whether the database at `url` (a replica) holds an agent bound to `instance` yet.
pub async fn replayed(url: &str, instance: &str) -> bool {
    connect(url)
        .await
        .query_opt(
            "SELECT 1 FROM workspace_agents WHERE auth_instance_id = $1",
            &[&instance],
        )
        .await
        .map(|row| row.is_some())
        .unwrap_or(false)
}

/// A loopback port free at this instant.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The real binary running `serve` against a test database, on free loopback ports.
pub struct ServeProcess {
    child: tokio::process::Child,
    pub grpc_url: String,
    pub admin_url: String,
}

impl ServeProcess {
    /// Starts `agent-auth serve` with `extra` flags and waits until `/readyz` answers 200.
    pub async fn start(db: &TestDb, extra: &[&str]) -> Self {
        Self::start_with(db, extra, |_| {}).await
    }

    /// As [`ServeProcess::start`], with `edit` changing the process's environment last (a test
    /// that must see what the defaults here hide, such as the metadata endpoint).
    pub async fn start_with(
        db: &TestDb,
        extra: &[&str],
        edit: impl FnOnce(&mut tokio::process::Command),
    ) -> Self {
        let (grpc, admin) = (free_port(), free_port());
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-auth"));
        command
            .args(["serve", "--postgres-url", &db.url])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")]);
        if !extra.contains(&"--gcp-jwks") {
            command.args([
                "--gcp-jwks",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/gcp/empty-jwks.json"
                ),
            ]);
        }
        // The AWS SDK must never reach an instance metadata endpoint or a developer's own
        // credentials from a test: explicit test credentials, no profile files, IMDS off.
        command
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/nonexistent/agent-auth-test")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/agent-auth-test",
            )
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        edit(&mut command);
        let child = command.spawn().unwrap_or_else(|e| panic!("spawn: {e}"));
        let process = Self {
            child,
            grpc_url: format!("http://127.0.0.1:{grpc}"),
            admin_url: format!("http://127.0.0.1:{admin}"),
        };
        let ready = eventually(Duration::from_secs(30), async || {
            http_get(&format!("{}/readyz", process.admin_url)).await.0 == 200
        });
        assert!(ready.await, "serve never became ready");
        process
    }

    pub async fn channel(&self) -> Channel {
        agent_auth::client::connect(&self.grpc_url, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The process's resident memory in KiB (`VmRSS` of /proc).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().unwrap_or_else(|| panic!("exited early"));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("{e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.id().unwrap_or_else(|| panic!("exited early"));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// SIGTERM, then the exit status and everything the process wrote to stderr.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        use tokio::io::AsyncReadExt;
        let pid = self.child.id().unwrap_or_else(|| panic!("exited early"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr).await;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within 30 s of SIGTERM"))
            .unwrap_or_else(|e| panic!("{e}"));
        (status, stderr)
    }
}

/// A temporary directory the clusters' unprivileged account may pass through.
pub fn reachable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .unwrap_or_else(|e| panic!("{e}"));
    dir
}

/// A PostgreSQL cluster of the test's own in `data` (so the test may stop and restart it).
pub async fn private_cluster(data: &std::path::Path) -> agent_auth::embedded::EmbeddedPostgres {
    let mut options = agent_auth::embedded::EmbeddedOptions::new(data);
    options.ephemeral = true;
    agent_auth::embedded::EmbeddedPostgres::start(options)
        .await
        .unwrap_or_else(|e| panic!("private cluster: {e}"))
}

/// [`private_cluster`] with a migrated database `name`.
pub async fn private_database(
    data: &std::path::Path,
    name: &str,
) -> (agent_auth::embedded::EmbeddedPostgres, TestDb) {
    let cluster = private_cluster(data).await;
    cluster
        .ensure_database(name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.connection_string(name);
    agent_auth::store::migrate::run_migrations(&url.parse().unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let db = TestDb {
        name: name.into(),
        url,
    };
    (cluster, db)
}

/// The server-side pids of the service's pooled connections to `db`.
pub async fn agent_backends(db: &TestDb) -> Vec<i32> {
    admin()
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'agent-auth' ORDER BY pid",
            &[&db.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// `count` agents, each on its own workspace and instance: (instance, token).
pub async fn agents(db: &TestDb, count: usize) -> Vec<(String, Uuid)> {
    let world = World::new(db).await;
    let mut agents = Vec::with_capacity(count);
    for _ in 0..count {
        let instance = instance_id();
        let resource = world.build(world.workspace().await, 1).await;
        agents.push((
            instance.clone(),
            world.agent(resource, "main", &instance).await.token,
        ));
    }
    agents
}

/// A login for `instance` with a document signed by `key` (us-east-1).
pub fn request(key: &AwsKey, instance: &str) -> pb::AuthenticateRequest {
    let document = aws_document(instance, "us-east-1", "123456789012");
    aws_request(&document, &key.sign(&document), "")
}

/// One workspace whose latest (only) build has one agent `main` bound to `instance`.
pub async fn seed_agent(db: &TestDb, instance: &str) -> Agent {
    let world = World::new(db).await;
    let resource = world.build(world.workspace().await, 1).await;
    world.agent(resource, "main", instance).await
}

/// Runs `agent-auth authenticate --server SERVER ARGS…` and checks it printed `token`.
pub async fn assert_authenticate_command_prints(server: &str, args: &[&str], token: Uuid) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_agent-auth"));
    command
        .args(["authenticate", "--server", server])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("session_token: {token}")),
        "{stdout}"
    );
}

/// Holds an exclusive lock on `workspace_agents`, so the resolver's statement waits; roll back
/// the returned connection's transaction to release it.
pub async fn lock_agents(db: &TestDb) -> Client {
    let client = db.client().await;
    client
        .batch_execute("BEGIN; LOCK TABLE workspace_agents IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client
}

/// Waits until a statement in `db` is blocked on a lock (the resolver behind [`lock_agents`]).
pub async fn wait_until_blocked(db: &TestDb) {
    let blocked = eventually(Duration::from_secs(10), async || {
        admin()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                &[&db.name],
            )
            .await
            .map(|row| row.get::<_, i64>(0) > 0)
            .unwrap_or(false)
    });
    assert!(blocked.await, "no statement ever waited on the lock");
}

/// A TCP proxy on loopback to a cluster's unix socket that can stop forwarding on the
/// connections it has (a black hole: the peer still acknowledges, nothing comes back) while
/// new connections still work.
pub struct BlackHoleProxy {
    pub url: String,
    /// Connections numbered below this forward nothing any more.
    cutoff: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Forwards `from` to `to` until the connection `number` falls below `cutoff`; then holds both
/// open and silent.
async fn pump(
    number: u64,
    cutoff: std::sync::Arc<std::sync::atomic::AtomicU64>,
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if number < cutoff.load(std::sync::atomic::Ordering::SeqCst) {
            return std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl BlackHoleProxy {
    pub async fn start(db: &TestDb) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let field = |key: &str| {
            db.url
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('\'').to_owned())
                .unwrap()
        };
        let socket = format!("{}/.s.PGSQL.{}", field("host"), field("port"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!(
            "host=127.0.0.1 port={port} user={} dbname={} sslmode=disable",
            field("user"),
            field("dbname")
        );
        let cutoff = std::sync::Arc::new(AtomicU64::new(0));
        let accepted = std::sync::Arc::new(AtomicU64::new(0));
        let task = {
            let (cutoff, accepted) = (cutoff.clone(), accepted.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let number = accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = tokio::net::UnixStream::connect(&socket).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(number, cutoff.clone(), client_read, server_write));
                    tokio::spawn(pump(number, cutoff.clone(), server_read, client_write));
                }
            })
        };
        Self {
            url,
            cutoff,
            accepted,
            task,
        }
    }

    /// From now on, every connection opened so far forwards nothing.
    pub fn black_hole_existing(&self) {
        use std::sync::atomic::Ordering;
        self.cutoff
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Coder's schema (the compatibility fixture: the tables agent-auth reads, as Coder creates them).
pub const CODER_SCHEMA: &str = include_str!("../fixtures/coder/schema-subset.sql");

/// Rows in Coder's schema, with the NOT NULL columns it requires.
pub struct CoderWorld {
    pub client: tokio_postgres::Client,
}

impl CoderWorld {
    pub async fn workspace(&self) -> Uuid {
        let id = Uuid::new_v4();
        self.client
            .execute(
                "INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id, name) \
                 VALUES ($1, now(), now(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'ws-' || left(gen_random_uuid()::text, 8))",
                &[&id],
            )
            .await
            .unwrap();
        id
    }

    pub async fn build(&self, workspace: Uuid, number: i32) -> Uuid {
        let job = Uuid::new_v4();
        let resource = Uuid::new_v4();
        self.client
            .execute(
                "INSERT INTO provisioner_jobs (id, created_at, updated_at, organization_id, initiator_id, provisioner, storage_method, type, input, file_id) \
                 VALUES ($1, now(), now(), gen_random_uuid(), gen_random_uuid(), 'terraform', 'file', 'workspace_build', '{}', gen_random_uuid())",
                &[&job],
            )
            .await
            .unwrap();
        self.client
            .execute(
                "INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id, build_number, transition, initiator_id, job_id) \
                 VALUES (gen_random_uuid(), now(), now(), $1, gen_random_uuid(), $2, 'start', gen_random_uuid(), $3)",
                &[&workspace, &number, &job],
            )
            .await
            .unwrap();
        self.client
            .execute(
                "INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name) VALUES ($1, now(), $2, 'start', 'aws_instance', 'dev')",
                &[&resource, &job],
            )
            .await
            .unwrap();
        resource
    }

    pub async fn agent(&self, resource: Uuid, name: &str, instance: &str) -> Uuid {
        let token = Uuid::new_v4();
        self.client
            .execute(
                "INSERT INTO workspace_agents (id, created_at, updated_at, name, resource_id, auth_token, auth_instance_id, architecture, operating_system) \
                 VALUES (gen_random_uuid(), now(), now(), $1, $2, $3, $4, 'amd64', 'linux')",
                &[&name, &resource, &token, &instance],
            )
            .await
            .unwrap();
        token
    }
}

/// Logs the recorded AWS document in over a new gRPC channel to `server`; the session token.
#[cfg(feature = "container-tests")]
pub async fn recorded_login(server: &str) -> String {
    let channel = agent_auth::client::connect(server, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{server}: {e}"));
    success(
        agent_auth::client::authenticate(
            channel,
            aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
        )
        .await,
    )
    .session_token
}
