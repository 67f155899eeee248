//! The service under test: a child `agent-auth serve` process (the default, so that its peak
//! memory and CPU are its own), the server inside the bench process (`--in-process`), or a
//! server somebody else runs (`--server`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the service comes from.
#[derive(Debug, Clone)]
pub enum ServerMode {
    /// A child process, started under `wrapper` when it is not empty (e.g. valgrind).
    Spawn {
        wrapper: Vec<String>,
    },
    InProcess,
    External {
        url: String,
        metrics: Option<SocketAddr>,
    },
}

/// What the started server needs: its database, pool, trust and limits.
pub struct ServerSetup<'a> {
    pub postgres_url: &'a str,
    pub pool_size: usize,
    pub pipeline_depth: usize,
    pub max_concurrent_requests: usize,
    pub aws_certificate: &'a Path,
    pub gcp_jwks: &'a Path,
    pub scratch: &'a Path,
    pub pooler: agent_auth::store::Pooler,
    pub log_level: &'a str,
    pub replica_url: Option<&'a str>,
}

enum Running {
    Child {
        child: Box<tokio::process::Child>,
        log: PathBuf,
        /// How long to wait for it to become ready, and to exit.
        patience: Duration,
    },
    InProcess {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    },
    External,
}

/// A started (or reached) server.
pub struct Server {
    pub grpc_url: String,
    metrics: Option<SocketAddr>,
    in_process_metrics: bool,
    running: Running,
}

impl Server {
    pub async fn start(mode: &ServerMode, setup: &ServerSetup<'_>) -> Result<Self, String> {
        match mode {
            ServerMode::External { url, metrics } => Ok(Self {
                grpc_url: url.clone(),
                metrics: *metrics,
                in_process_metrics: false,
                running: Running::External,
            }),
            ServerMode::InProcess => start_in_process(setup).await,
            ServerMode::Spawn { wrapper } => spawn(setup, wrapper).await,
        }
    }

    /// The server's Prometheus text, if reachable.
    pub async fn scrape(&self) -> Option<String> {
        if self.in_process_metrics {
            return agent_auth::metrics::handle().map(|h| h.render());
        }
        admin_get(self.metrics?, "/metrics").await
    }

    /// Peak resident memory of the server process (VmHWM), when it is a child of ours.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        match &self.running {
            Running::Child { child, .. } => peak_rss_mib(&format!("/proc/{}/status", child.id()?)),
            _ => None,
        }
    }

    pub async fn stop(self) {
        match self.running {
            Running::Child {
                mut child,
                patience,
                ..
            } => {
                if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                if tokio::time::timeout(patience / 3, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            Running::InProcess { stop, task } => {
                let _ = stop.send(());
                let _ = task.await;
            }
            Running::External => {}
        }
    }
}

/// The server's settings; the baselines take their pool settings from here too.
pub fn settings(setup: &ServerSetup<'_>) -> Result<agent_auth::config::Settings, String> {
    agent_auth::config::Settings::from_flags(
        vec![
            "--grpc-listen".to_owned(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--postgres-url".into(),
            setup.postgres_url.to_owned(),
            "--db-pool-size".into(),
            setup.pool_size.to_string(),
            "--db-pipeline-depth".into(),
            setup.pipeline_depth.to_string(),
            "--max-concurrent-requests".into(),
            setup.max_concurrent_requests.to_string(),
            "--aws-certificate".into(),
            format!("default={}", setup.aws_certificate.display()),
            "--gcp-jwks".into(),
            setup.gcp_jwks.display().to_string(),
            "--log-level".into(),
            setup.log_level.to_owned(),
            "--db-pooler".into(),
            setup.pooler.to_string(),
        ]
        .into_iter()
        .chain(
            setup
                .replica_url
                .into_iter()
                .flat_map(|url| ["--postgres-replica-url".to_owned(), url.to_owned()]),
        ),
    )
    .map_err(|e| e.to_string())
}

async fn start_in_process(setup: &ServerSetup<'_>) -> Result<Server, String> {
    let config =
        agent_auth::config::Config::try_from(settings(setup)?).map_err(|e| e.to_string())?;
    let app = agent_auth::app::App::build(config)
        .await
        .map_err(|e| e.to_string())?;
    let addr = app.grpc_addr().ok_or("no gRPC address")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = app
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Server {
        grpc_url: format!("http://{addr}"),
        metrics: None,
        in_process_metrics: true,
        running: Running::InProcess { stop, task },
    })
}

/// Starts `agent-auth serve` (the server binary beside this one) on free loopback ports with the same settings
/// as the in-process server ([`settings`], written as its `--config` file), and waits until
/// its readiness endpoint answers 200.
async fn spawn(setup: &ServerSetup<'_>, wrapper: &[String]) -> Result<Server, String> {
    let (grpc, admin) = (free_port()?, free_port()?);
    let mut raw = settings(setup)?;
    raw.listeners.grpc_listen = agent_auth::config::ListenAddr::Tcp(grpc);
    raw.listeners.admin_listen = admin;
    let config = setup.scratch.join("server.toml");
    let text = toml::to_string(&raw).map_err(|e| format!("server configuration: {e}"))?;
    std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    let exe = server_binary()?;
    let log = setup.scratch.join("server.log");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = tokio::process::Command::new(program);
            command.args(args).arg(exe);
            command
        }
        None => tokio::process::Command::new(exe),
    };
    // A wrapped server (valgrind) starts and stops many times slower.
    let patience = Duration::from_secs(if wrapper.is_empty() { 60 } else { 600 });
    command.arg("serve").arg("--config").arg(&config);
    // The environment would override the file: the child runs on the file alone, like the
    // in-process server.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AGENT_AUTH_") {
            command.env_remove(name);
        }
    }
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let mut server = Server {
        grpc_url: format!("http://{grpc}"),
        metrics: Some(admin),
        in_process_metrics: false,
        running: Running::Child {
            child: Box::new(child),
            log,
            patience,
        },
    };
    let started = Instant::now();
    loop {
        if admin_get(admin, "/readyz").await.is_some() {
            return Ok(server);
        }
        if let Running::Child {
            child,
            log,
            patience,
        } = &mut server.running
        {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > *patience {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                return Err(format!(
                    "the server did not become ready ({}): {}",
                    exited.map_or_else(
                        || format!("still starting after {} s", patience.as_secs()),
                        |s| s.to_string()
                    ),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())
}

/// The body of a 2xx answer from the server's admin listener, through the one HTTP client.
async fn admin_get(addr: SocketAddr, path: &str) -> Option<String> {
    static HTTP: std::sync::OnceLock<Option<agent_auth::fetch::Fetcher>> =
        std::sync::OnceLock::new();
    let fetcher = HTTP
        .get_or_init(|| {
            agent_auth::fetch::Fetcher::new(Duration::from_secs(5), 16 * 1024 * 1024).ok()
        })
        .as_ref()?;
    let fetched = fetcher.get(&format!("http://{addr}{path}")).await.ok()?;
    Some(String::from_utf8_lossy(&fetched.body).into_owned())
}

/// VmHWM from a `/proc/<pid>/status` file, in MiB.
pub fn peak_rss_mib(status_path: &str) -> Option<f64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The sum of every sample `name` (whatever its labels) in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The `agent-auth` server binary in the directory of this one (`cargo build` puts both in
/// `target/<profile>/`).
pub fn server_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let server = exe.with_file_name("agent-auth");
    if server.is_file() {
        Ok(server)
    } else {
        Err(format!(
            "the server binary {} is missing: build it beside the tools (cargo build --release \
             builds both)",
            server.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_whole_names_only() {
        let text = "# HELP x\nagent_auth_db_queries_total 42\nagent_auth_db_pool_wait_seconds_sum 0.5\nagent_auth_db_pool_wait_seconds_count 10\n";
        assert_eq!(sample(text, "agent_auth_db_queries_total"), Some(42.0));
        assert_eq!(
            sample(text, "agent_auth_db_pool_wait_seconds_count"),
            Some(10.0)
        );
        assert_eq!(sample(text, "agent_auth_db_pool_wait_seconds"), None);
        assert!(peak_rss_mib("/proc/self/status").is_some_and(|m| m > 0.0));
    }
}
