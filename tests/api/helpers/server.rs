//! The server under test, one type with two ways to run ([`TestServer`]: in this process or
//! the real binary), its settings, and waiting for it.

use super::*;

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
pub async fn metric(server: &TestServer, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", server.admin_url)).await;
    metric_sum(&text, name, labels).unwrap_or(-1.0)
}

/// The `agent-auth` binary the binary-mode tests run: `AGENT_AUTH_SERVER_BINARY` when set (CI
/// runs the memory tests once more against the release build), else the one cargo built.
pub fn server_binary() -> std::path::PathBuf {
    std::env::var_os("AGENT_AUTH_SERVER_BINARY")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_agent-auth").into())
}

/// A loopback port free at this instant.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A running server, one of two ways: the `App` in this process ([`TestServer::in_process`]:
/// settings edited in Rust, stopped gracefully and its result checked) or the real binary
/// ([`TestServer::binary`]: `agent-auth serve` with flags, its environment, signals, memory and
/// stderr). Either is called the same way (`grpc_url`, `channel`, `authenticate`,
/// `admin_get`).
pub struct TestServer {
    pub grpc_url: String,
    pub admin_url: String,
    /// The Coder-compatible HTTP listener, when `http_listen` was set (in process).
    pub http_url: Option<String>,
    running: Running,
}

enum Running {
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: Option<tokio::task::JoinHandle<Result<(), agent_auth::app::AppError>>>,
    },
    Binary {
        child: tokio::process::Child,
    },
}

impl TestServer {
    /// The server in this process on loopback with `db`, after `edit` adjusts the settings.
    pub async fn in_process(db: &TestDb, edit: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_config(db);
        edit(&mut settings);
        Self::in_process_config(Config::try_from(settings).unwrap_or_else(|e| panic!("{e}"))).await
    }

    /// The server in this process with a finished `config`.
    pub async fn in_process_config(config: Config) -> Self {
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
            running: Running::InProcess {
                stop: Some(stop),
                task: Some(task),
            },
        }
    }

    /// `agent-auth serve` (the real binary) against `db` with `extra` flags, on free loopback
    /// ports; returns once `/readyz` answers 200. Its stderr is a pipe read only by
    /// [`TestServer::terminate`]: a test that logs every login passes `--log-level warn`.
    pub async fn binary(db: &TestDb, extra: &[&str]) -> Self {
        Self::binary_with(db, extra, |_| {}).await
    }

    /// As [`TestServer::binary`], with `edit` changing the process's environment last (a test
    /// that must see what the defaults here hide, such as the metadata endpoint).
    pub async fn binary_with(
        db: &TestDb,
        extra: &[&str],
        edit: impl FnOnce(&mut tokio::process::Command),
    ) -> Self {
        let (grpc, admin) = (free_port(), free_port());
        let mut command = tokio::process::Command::new(server_binary());
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
        let server = Self {
            grpc_url: format!("http://127.0.0.1:{grpc}"),
            admin_url: format!("http://127.0.0.1:{admin}"),
            http_url: None,
            running: Running::Binary { child },
        };
        let ready = eventually(Duration::from_secs(30), async || {
            http_get(&format!("{}/readyz", server.admin_url)).await.0 == 200
        });
        assert!(ready.await, "serve never became ready");
        server
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

    /// The binary's process id.
    fn pid(&self) -> nix::unistd::Pid {
        match &self.running {
            Running::Binary { child } => nix::unistd::Pid::from_raw(
                child.id().unwrap_or_else(|| panic!("exited early")) as i32,
            ),
            Running::InProcess { .. } => panic!("a process of its own: use TestServer::binary"),
        }
    }

    /// The binary's resident memory in KiB (`VmRSS` of /proc).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("{e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }

    /// Sends `signal` to the binary.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The binary: SIGTERM, then its exit status and everything it wrote to stderr.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        use tokio::io::AsyncReadExt;
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let Running::Binary { child } = &mut self.running else {
            panic!("a process of its own: use TestServer::binary");
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr).await;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within 30 s of SIGTERM"))
            .unwrap_or_else(|e| panic!("{e}"));
        (status, stderr)
    }

    /// Stops the server and checks it stopped cleanly: in process, its `run` returned `Ok`;
    /// the binary, it exited 0 after SIGTERM.
    pub async fn stop(mut self) {
        if let Running::InProcess { stop, task } = &mut self.running {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
            if let Some(task) = task.take() {
                let result = task.await.unwrap_or_else(|e| panic!("server task: {e}"));
                result.unwrap_or_else(|e| panic!("server: {e}"));
            }
            return;
        }
        let (status, stderr) = self.terminate().await;
        assert!(status.success(), "{status}: {stderr}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The binary is killed on drop (`kill_on_drop`); the App is told to stop.
        if let Running::InProcess { stop, .. } = &mut self.running
            && let Some(stop) = stop.take()
        {
            let _ = stop.send(());
        }
    }
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
