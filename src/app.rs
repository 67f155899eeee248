//! Application wiring: [`App::build`] turns a [`Config`] into bound listeners (port 0 works)
//! and a ready database; [`App::run`] serves until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};

use crate::auth::{Authenticator, Trust};
use crate::config::{Config, ListenAddr, SchemaMode};
use crate::embedded::{EmbeddedError, EmbeddedOptions, EmbeddedPostgres};
use crate::grpc::{self, AgentAuthService};
use crate::http::admin::{self, AdminState};
use crate::identity::TrustError;
use crate::identity::gcp::GcpPolicy;
use crate::limit::Limiter;
use crate::listen::{self, Policy};
use crate::store::{PostgresUrl, Store, StoreError, migrate};
use crate::trust::{GcpKeys, TrustSources, TrustStore};

/// The database name the embedded cluster serves.
pub const EMBEDDED_DATABASE: &str = "agent_auth";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("trust material: {0}")]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("outbound HTTP client: {0}")]
    Fetch(#[from] crate::fetch::FetchError),
    #[error("cannot handle SIGHUP: {0}")]
    Signal(std::io::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the {listener} listener failed")]
    Listener {
        listener: &'static str,
        source: tokio::task::JoinError,
    },
    #[error("TLS: {}", path.display())]
    Tls {
        path: std::path::PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cloud API checks")]
    LiveChecks(#[source] crate::cloud::CloudError),
}

enum GrpcListener {
    Tcp(TcpListener),
    /// The listener, and the socket file it made (removed at shutdown if it is still that one).
    Unix(UnixListener, SocketFile),
}

/// The socket file a unix listener made: its path and identity (device, inode).
struct SocketFile {
    path: std::path::PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// Removes the file if it is still the socket made at start-up: whatever replaced it
    /// meanwhile (a file, another server's socket) is left alone.
    fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => tracing::warn!(
                path = %self.path.display(),
                "the gRPC socket path holds something else now: left in place"
            ),
            Err(_) => {}
        }
    }
}

/// A built application, listening but not yet serving.
pub struct App {
    config: Config,
    /// The gRPC listener's TLS (loaded in `build`, before the database is touched).
    grpc_tls: Option<Arc<rustls::ServerConfig>>,
    grpc_listener: GrpcListener,
    admin_listener: TcpListener,
    http_listener: Option<TcpListener>,
    auth: Authenticator,
    embedded: Option<EmbeddedPostgres>,
    hangup: tokio::signal::unix::Signal,
}

/// The database an app uses: a URL, and the embedded cluster when it started one.
pub struct Database {
    pub url: PostgresUrl,
    pub embedded: Option<EmbeddedPostgres>,
}

/// Starts the embedded cluster when no URL is configured, then migrates (`owned`) or checks
/// (`coder`) the schema.
pub async fn prepare_database(config: &Config) -> Result<Database, AppError> {
    let (url, embedded) = match &config.postgres_url {
        Some(url) => (url.clone(), None),
        None => {
            let cluster = EmbeddedPostgres::start(EmbeddedOptions::new(&config.data_dir)).await?;
            cluster.ensure_database(EMBEDDED_DATABASE).await?;
            tracing::info!(data_dir = %config.data_dir.display(), "embedded PostgreSQL started");
            let url = PostgresUrl::parse(&cluster.connection_string(EMBEDDED_DATABASE))
                .map_err(|e| AppError::Store(StoreError::internal(e)))?;
            (url, Some(cluster))
        }
    };
    // The same settings as every connection of the service: TLS, the connect timeout (which
    // bounds this whole connect), keepalives, the application name.
    let (pg_config, tls) = crate::store::session_settings(&url, &config.store)?;
    tracing::info!(
        database = %url,
        connect_timeout = ?config.store.connect_timeout,
        "connecting to PostgreSQL to {} the schema",
        match config.schema {
            SchemaMode::Owned if !config.store.pooler.is_transaction_mode() => "migrate",
            _ => "check",
        }
    );
    match config.schema {
        SchemaMode::Owned if config.store.pooler.is_transaction_mode() => {
            migrate::check_migrated(&pg_config, tls).await?;
            tracing::info!("owned schema is up to date");
        }
        SchemaMode::Owned => {
            let applied = migrate::run_migrations_with(&pg_config, tls).await?;
            match applied.iter().max() {
                None => tracing::info!("owned schema is up to date: no migration to apply"),
                Some(&newest) => {
                    tracing::info!(applied = applied.len(), newest, "owned schema migrated")
                }
            }
        }
        SchemaMode::Coder => {
            migrate::check_coder_schema(&pg_config, tls).await?;
            tracing::info!("control-plane schema has every table and column agent-auth reads");
        }
    }
    Ok(Database { url, embedded })
}

impl App {
    pub async fn build(config: Config) -> Result<Self, AppError> {
        // One rustls crypto provider per process; a second install is a no-op.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // TLS files first: a bad path fails the start before any migration runs.
        let grpc_tls = config.tls.as_ref().map(server_tls).transpose()?;
        let gcp = GcpKeys::from_config(&config.gcp.jwks)?;
        if let GcpKeys::Remote(jwks) = &gcp {
            // In the background: a machine without internet still serves AWS and Azure.
            jwks.spawn_refresher();
        }
        let store = Arc::new(TrustStore::load(TrustSources {
            aws: config.aws.clone(),
            azure: config.azure.clone(),
            gcp,
        })?);
        crate::metrics::handle();
        crate::trust::log_sources(&store.current(), store.sources());
        // From here on SIGHUP reloads trust; it never stops the process.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(AppError::Signal)?;
        let trust = Trust {
            store,
            azure_issuers: if config.azure.fetch_issuers {
                Some(crate::issuers::IssuerFetcher::new()?)
            } else {
                None
            },
            gcp_policy: GcpPolicy {
                audience: config.gcp.audience.clone(),
                allowed_projects: config.gcp.allowed_projects.iter().cloned().collect(),
            },
        };
        if config.live.aws.is_none() && config.aws_any_account {
            tracing::info!(
                "AWS identity documents are accepted from any account (--aws-allowed-account \
                 any) and are not checked against EC2"
            );
        } else if config.live.aws.is_none() && config.aws.allowed_accounts.is_empty() {
            // SECURITY.md: an AWS identity document never expires, so a copy that leaked from
            // any EC2 instance of any account replays until the instance's agent row is gone.
            tracing::warn!(
                "AWS identity documents are accepted from any account and are not checked \
                 against EC2: an identity document never expires, so any copy (one that leaked, \
                 or one of the real documents published in test suites, this project's \
                 included) replays for as long as an agent with its instance id exists, and \
                 each replay costs a statement; set --aws-allowed-account and --aws-ec2-check \
                 (or --aws-allowed-account any to accept it)"
            );
        }
        let database = prepare_database(&config).await?;
        let store = Store::connect(&database.url, &config.store)?;
        let live = crate::cloud::LiveChecks::new(
            config.live.aws.clone(),
            config.live.gcp.clone(),
            config.live.settings,
        )
        .await
        .map_err(AppError::LiveChecks)?;
        let auth =
            Authenticator::new(trust, store, config.insecure_verify_time).with_live_checks(live);
        let grpc_listener = match &config.grpc_listen {
            ListenAddr::Tcp(addr) => GrpcListener::Tcp(bind(*addr).await?),
            ListenAddr::Unix(path) => {
                let (listener, file) = bind_unix(path)?;
                GrpcListener::Unix(listener, file)
            }
        };
        let admin_listener = bind(config.admin_listen).await?;
        let http_listener = match config.http_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self {
            config,
            grpc_tls,
            grpc_listener,
            admin_listener,
            http_listener,
            auth,
            embedded: database.embedded,
            hangup,
        })
    }

    /// The bound gRPC address (TCP only).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        match &self.grpc_listener {
            GrpcListener::Tcp(l) => l.local_addr().ok(),
            GrpcListener::Unix(..) => None,
        }
    }

    /// The bound Coder-compatible HTTP address, when enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener.local_addr().ok()
    }

    /// Serves until `shutdown` resolves, then: readiness and health flip to not serving, the
    /// listeners stop accepting, in-flight requests get `shutdown_grace` to finish, the pool
    /// closes and an embedded database stops.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let App {
            config,
            grpc_tls,
            grpc_listener,
            admin_listener,
            http_listener,
            auth,
            embedded,
            hangup,
        } = self;
        let bound = Bound {
            grpc: match &grpc_listener {
                GrpcListener::Tcp(listener) => listener.local_addr().ok(),
                GrpcListener::Unix(..) => None,
            },
            admin: admin_listener.local_addr().ok(),
            http: http_listener.as_ref().and_then(|l| l.local_addr().ok()),
        };
        let caps = Caps::new(config.connections);
        let sampler = listen::budget::spawn_sampler(vec![
            ("agent", caps.agent_registry.clone()),
            ("admin", caps.admin_registry.clone()),
        ]);
        let limiter = Limiter::new(config.max_concurrent_requests);
        let store = auth.store().clone();
        let draining = Arc::new(AtomicBool::new(false));
        let (health, health_service) = crate::grpc::Health::new();
        let admin_state = AdminState {
            store: store.clone(),
            trust: auth.trust().clone(),
            draining: draining.clone(),
        };
        let reloader = spawn_reloader(hangup, auth.trust().clone());
        // Health starts as the first probe finds the database.
        let initially_serving = admin::readiness(&admin_state).await.is_ok();
        health.set(initially_serving).await;

        let (stop_tx, stop_rx) = watch::channel(false);
        let (grpc_task, socket_file) = spawn_grpc(
            grpc_listener,
            grpc_tls,
            &caps,
            AgentAuthService::new(auth.clone(), limiter.clone()),
            health_service,
            stop_rx.clone(),
        )?;
        let prober = tokio::spawn(admin::follow_readiness(
            admin_state.clone(),
            health.clone(),
            stop_rx.clone(),
            initially_serving,
        ));
        let admin_task = spawn_admin(admin_listener, &caps, admin_state, stop_rx.clone());
        // The agent endpoints share the use case, the concurrency limit and the connection cap
        // (and each source's share of it) with gRPC.
        let http_task = http_listener.map(|listener| {
            let router = crate::http::agent::router(auth.clone(), limiter.clone(), caps.limits);
            spawn_http(listener, &caps, router, stop_rx.clone())
        });
        log_listeners(&config, &bound);

        shutdown.await;
        tracing::info!("shutting down: not serving, draining in-flight requests");
        draining.store(true, Ordering::SeqCst);
        health.set(false).await;
        let _ = stop_tx.send(true);
        let _ = prober.await;
        let result = drain(grpc_task, admin_task, http_task, config.shutdown_grace).await;
        reloader.abort();
        sampler.abort();
        store.close();
        if let Some(file) = socket_file {
            file.remove();
        }
        if let Some(cluster) = embedded {
            cluster.stop().await?;
            tracing::info!("embedded PostgreSQL stopped");
        }
        result
    }
}

/// The addresses the listeners were bound to (TCP only).
struct Bound {
    grpc: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

/// The connection caps of the listeners: gRPC and agent HTTP share one (and each source's
/// share of it), admin has its own.
struct Caps {
    limits: listen::ConnectionLimits,
    agent_permits: Arc<Semaphore>,
    agent_registry: Arc<listen::Registry>,
    admin_permits: Arc<Semaphore>,
    admin_registry: Arc<listen::Registry>,
    admin_idle: std::time::Duration,
}

impl Caps {
    /// Sizes the caps and the memory budgets from the settings and what the process may open,
    /// and says so once.
    fn new(limits: listen::ConnectionLimits) -> Self {
        let open_files = crate::listen::raise_open_file_limit();
        let memory_limit = crate::listen::memory_limit();
        let agent_cap = limits.agent_cap(open_files);
        let per_source = limits.per_source(agent_cap);
        let budget = listen::budget::memory_budget(limits.memory_budget, memory_limit);
        let admin_budget = listen::budget::admin_reserve(budget, limits.admin_max_connections);
        let agent_budget = budget - admin_budget;
        crate::metrics::record_memory_budget("agent", agent_budget);
        crate::metrics::record_memory_budget("admin", admin_budget);
        tracing::info!(
            open_files,
            memory_limit,
            memory_budget = budget,
            admin_memory_reserve = admin_budget,
            grpc_and_http = agent_cap,
            per_source,
            admin = limits.admin_max_connections,
            "connection caps and memory budget"
        );
        Self {
            limits,
            agent_permits: Arc::new(Semaphore::new(agent_cap)),
            agent_registry: listen::Registry::new(per_source, agent_budget),
            admin_permits: Arc::new(Semaphore::new(limits.admin_max_connections)),
            admin_registry: listen::Registry::new(limits.admin_max_connections / 2, admin_budget),
            admin_idle: limits.idle_timeout.min(listen::ADMIN_IDLE_TIMEOUT),
        }
    }

    /// The policy of an agent-facing listener (`grpc` or `http`).
    fn agent(&self, listener: &'static str, first_bytes: usize, tls: bool) -> Policy {
        Policy {
            listener,
            permits: self.agent_permits.clone(),
            registry: self.agent_registry.clone(),
            first_bytes,
            handshake_timeout: self.limits.handshake_timeout,
            idle_timeout: self.limits.idle_timeout,
            connection_cost: listen::budget::connection_cost(tls),
        }
    }

    fn admin(&self) -> Policy {
        Policy {
            listener: "admin",
            permits: self.admin_permits.clone(),
            registry: self.admin_registry.clone(),
            first_bytes: 1,
            handshake_timeout: self.limits.handshake_timeout,
            idle_timeout: self.admin_idle,
            connection_cost: listen::budget::connection_cost(false),
        }
    }
}

/// Resolves once the stop signal is sent.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// SIGHUP reloads the trust files, off the async workers (reading and parsing blocks).
fn spawn_reloader(
    mut hangup: tokio::signal::unix::Signal,
    trust: Arc<TrustStore>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading trust files");
            let trust = trust.clone();
            let _ = tokio::task::spawn_blocking(move || trust.reload()).await;
        }
    })
}

/// Serves gRPC (the service, health and reflection) on its TCP or unix listener; returns the
/// task and the socket file to remove at the end.
fn spawn_grpc(
    listener: GrpcListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    caps: &Caps,
    service: AgentAuthService,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: watch::Receiver<bool>,
) -> Result<(tokio::task::JoinHandle<()>, Option<SocketFile>), AppError> {
    let max_message = caps.limits.max_message_bytes;
    let router = grpc::routes::Routes::new(
        service.into_server(max_message),
        health.max_decoding_message_size(max_message),
        reflection()
            .build_v1()?
            .max_decoding_message_size(max_message),
        reflection()
            .build_v1alpha()?
            .max_decoding_message_size(max_message),
    );
    let policy = caps.agent("grpc", listen::HTTP2_PREFACE_BYTES, tls.is_some());
    let protocol = listen::Protocol::http2(&caps.limits, tls);
    Ok(match listener {
        GrpcListener::Tcp(listener) => (
            tokio::spawn(listen::serve(
                listen::incoming(listener, policy),
                protocol,
                router,
                stopped(stop),
            )),
            None,
        ),
        GrpcListener::Unix(listener, file) => (
            tokio::spawn(listen::serve(
                listen::incoming(listener, policy),
                protocol,
                router,
                stopped(stop),
            )),
            Some(file),
        ),
    })
}

/// Serves `/healthz`, `/readyz` and `/metrics`.
fn spawn_admin(
    listener: TcpListener,
    caps: &Caps,
    state: AdminState,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(listen::serve(
        listen::incoming(listener, caps.admin()),
        listen::Protocol::http1(&caps.limits, caps.admin_idle),
        admin::router(state),
        stopped(stop),
    ))
}

/// Serves the Coder-compatible agent endpoints.
fn spawn_http(
    listener: TcpListener,
    caps: &Caps,
    router: axum::Router,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(listen::serve(
        listen::incoming(listener, caps.agent("http", 1, false)),
        listen::Protocol::http1(&caps.limits, caps.limits.idle_timeout),
        router,
        stopped(stop),
    ))
}

/// One line per listener, with the bound address, so an operator sees what serves where.
fn log_listeners(config: &Config, bound: &Bound) {
    match (&config.grpc_listen, bound.grpc) {
        (ListenAddr::Unix(path), _) => tracing::info!(
            socket = %path.display(),
            "gRPC listening on a unix socket (mode 0600; agentauth.v1, health, reflection)"
        ),
        (ListenAddr::Tcp(configured), bound) => tracing::info!(
            address = %bound.unwrap_or(*configured),
            tls = config.tls.is_some(),
            "gRPC listening (agentauth.v1, health, reflection)"
        ),
    }
    tracing::info!(
        address = %bound.admin.unwrap_or(config.admin_listen),
        "admin HTTP listening (/healthz, /readyz, /metrics)"
    );
    if let Some(addr) = bound.http {
        tracing::info!(
            address = %addr,
            "Coder-compatible agent HTTP listening (/api/v2/workspaceagents/*)"
        );
    }
}

/// Waits up to `grace` for the listeners to finish their in-flight requests.
async fn drain(
    grpc: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<()>>,
    grace: std::time::Duration,
) -> Result<(), AppError> {
    let drained = tokio::time::timeout(grace, async {
        let grpc = grpc.await;
        let admin = admin.await;
        if let Some(http) = http
            && let Err(e) = http.await
        {
            tracing::warn!(error = %e, "HTTP listener task failed");
        }
        (grpc, admin)
    })
    .await;
    match drained {
        Ok((Ok(()), Ok(()))) => Ok(()),
        Ok((Err(source), _)) => Err(AppError::Listener {
            listener: "gRPC",
            source,
        }),
        Ok((_, Err(source))) => Err(AppError::Listener {
            listener: "admin",
            source,
        }),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "in-flight requests did not finish within the grace period"
            );
            Ok(())
        }
    }
}

/// The gRPC listener's TLS settings (HTTP/2 by ALPN); with a client CA, a caller without a
/// certificate from it is refused during the handshake.
fn server_tls(tls: &crate::config::TlsConfig) -> Result<Arc<rustls::ServerConfig>, AppError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &std::path::Path, e: Box<dyn std::error::Error + Send + Sync>| AppError::Tls {
        path: path.to_owned(),
        source: e,
    };
    let certificates = |path: &std::path::Path| {
        let pems = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(path, e.into()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(path, e.into()))?;
        if pems.is_empty() {
            return Err(bad(path, "no PEM certificate in the file".into()));
        }
        Ok(pems)
    };
    let chain = certificates(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| bad(&tls.key, e.into()))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates(ca)? {
                roots.add(certificate).map_err(|e| bad(ca, e.into()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| bad(ca, e.into()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => {
            tracing::warn!("TLS without --tls-client-ca: callers are not authenticated");
            builder.with_no_client_auth()
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| bad(&tls.cert, e.into()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Binds a unix socket readable and writable by our own user only (mode 0600).
///
/// Whatever is at `path` is never removed unless it is a stale socket (one nobody answers
/// on): a live socket is another server's, and a file, directory or symlink is refused. The
/// socket is bound inside a private (0700) staging directory next to `path`, given mode 0600
/// there, and then hard-linked into place, so it is never reachable with a wider mode and the
/// link cannot replace anything that appeared meanwhile.
fn bind_unix(path: &std::path::Path) -> Result<(UnixListener, SocketFile), AppError> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::FileTypeExt;
    let err = |source: std::io::Error| AppError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(err(Error::new(
                        ErrorKind::AddrInUse,
                        "another process is listening on this socket",
                    )));
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing a stale socket");
                    std::fs::remove_file(path).map_err(err)?;
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(meta) => {
            let kind = if meta.is_dir() {
                "a directory"
            } else if meta.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "a file that is not a socket"
            };
            return Err(err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{kind} is in the way; refusing to remove it"),
            )));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".agent-auth-socket-")
        .tempdir_in(parent)
        .map_err(err)?;
    let staged = staging.path().join("grpc.sock");
    let listener = UnixListener::bind(&staged).map_err(err)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    std::fs::hard_link(&staged, path).map_err(err)?;
    let identity = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&staged).map_err(err)?;
        (meta.dev(), meta.ino())
    };
    // Dropping the staging directory removes the staged name; the listener keeps the socket.
    drop(staging);
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            identity,
        },
    ))
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled: a SIGTERM that arrives once the listeners answer (readiness
/// may already be 200) drains the server instead of killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = signal(SignalKind::terminate())
        .and_then(|term| signal(SignalKind::interrupt()).map(|int| (term, int)));
    async move {
        let Ok((mut term, mut int)) = handlers else {
            // Without signal handlers, fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
