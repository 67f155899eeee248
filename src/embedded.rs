//! A private PostgreSQL cluster run from the local server binaries: the default database of
//! `serve`, the demo's, and the test harness's.
//!
//! - Binaries: `initdb` and `postgres` from PATH, else the newest `/usr/lib/postgresql/*/bin`.
//! - The cluster lives in `<data_dir>/pgdata` (created on first run, reused after) and listens
//!   only on a unix socket in `<data_dir>/run` (mode 0700), never on TCP, with trust auth.
//! - `initdb` and `postgres` refuse to run as root: as root they run as the unprivileged
//!   `postgres` account, which owns the data directory.
//! - The server is a child of a supervisor thread that lives exactly as long as it does. It
//!   gets SIGINT (fast shutdown) if that thread, and so this process, dies; it has its own
//!   process group so a terminal's Ctrl-C reaches only us, and we stop it after draining.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use tokio::sync::watch;

/// The superuser the embedded cluster is initialised with.
pub const SUPERUSER: &str = "agent_auth";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or under \
         /usr/lib/postgresql/*/bin: install PostgreSQL (Debian: apt-get install postgresql) \
         or pass --postgres-url"
    )]
    BinariesMissing,
    #[error(
        "running as root needs the unprivileged `postgres` account to own the embedded \
         database: install PostgreSQL (Debian: apt-get install postgresql) or pass --postgres-url"
    )]
    NoUnprivilegedUser,
    #[error("embedded database: {0}")]
    Io(String),
    #[error(
        "the data dir {dir} is in use by PostgreSQL process {pid} (another agent-auth serve?): \
         stop it or choose another --data-dir"
    )]
    InUse { dir: String, pid: i32 },
    #[error("embedded database did not start: {0}")]
    Start(String),
}

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    /// Port number; with a private socket directory it only names the socket file.
    pub port: u16,
    /// Trade durability for speed (tests and the demo): no fsync at all.
    pub ephemeral: bool,
    /// Extra `-c name=value` server settings (`listen_addresses` is not one of them: see
    /// `loopback_tcp`).
    pub settings: Vec<(String, String)>,
    /// Also listen on 127.0.0.1 at `port`: for tests of TLS and passwords only; the service
    /// (`serve` without a URL, `demo`, `bench`) never sets it (test
    /// `tidy::only_tests_open_the_embedded_cluster_to_tcp`).
    pub loopback_tcp: bool,
}

impl EmbeddedOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            port: 5432,
            ephemeral: false,
            settings: Vec::new(),
            loopback_tcp: false,
        }
    }
}

/// A running cluster. Call [`EmbeddedPostgres::stop`] to shut it down cleanly.
pub struct EmbeddedPostgres {
    socket_dir: PathBuf,
    port: u16,
    /// The postmaster; interrupted (fast shutdown) when dropped.
    process: Supervised,
    log_path: PathBuf,
}

struct Account {
    uid: u32,
    gid: u32,
}

impl EmbeddedPostgres {
    /// Initialises the cluster if needed, starts it, and waits until it accepts connections.
    pub async fn start(options: EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin = find_binaries()?;
        let account = unprivileged_account()?;
        let ClusterDirs {
            pgdata,
            socket_dir,
            log_path,
        } = ClusterDirs::prepare(&options.data_dir, account.as_ref())?;
        if !pgdata.join("PG_VERSION").is_file() {
            let mut initdb = Command::new(bin.join("initdb"));
            initdb.arg("-D").arg(&pgdata).args([
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
            ]);
            if options.ephemeral {
                initdb.arg("--no-sync");
            }
            run_to_end(initdb, "initdb", account.as_ref(), &log_path)?;
        }
        // A cluster another process runs here is not ours to use or to stop.
        if let Some(pid) = running_postmaster(&pgdata) {
            return Err(EmbeddedError::InUse {
                dir: options.data_dir.display().to_string(),
                pid,
            });
        }
        let mut postgres = Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&pgdata)
            .arg("-k")
            .arg(&socket_dir)
            .args(["-p", &options.port.to_string()])
            .args(["-c", "unix_socket_permissions=0700"]);
        if options.ephemeral {
            for setting in [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ] {
                postgres.args(["-c", setting]);
            }
        }
        for (name, value) in &options.settings {
            postgres.arg("-c").arg(format!("{name}={value}"));
        }
        // Last, so no extra setting can turn TCP on: the socket only, unless `loopback_tcp`.
        postgres.args([
            "-c",
            if options.loopback_tcp {
                "listen_addresses=127.0.0.1"
            } else {
                "listen_addresses="
            },
        ]);
        let cluster = Self {
            socket_dir,
            port: options.port,
            process: Supervised::as_account(postgres, account.as_ref(), &log_path)?,
            log_path,
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// A libpq key=value connection string for `dbname`.
    pub fn connection_string(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_quote(&self.socket_dir.to_string_lossy()),
            self.port,
            SUPERUSER,
            conninfo_quote(dbname)
        )
    }

    /// Creates `dbname` unless it exists.
    pub async fn ensure_database(&self, dbname: &str) -> Result<(), EmbeddedError> {
        let client = self.admin_client().await?;
        crate::store::admin::ensure_database(&client, dbname)
            .await
            .map_err(EmbeddedError::Io)
    }

    /// A superuser connection to the `postgres` database.
    pub async fn admin_client(&self) -> Result<tokio_postgres::Client, EmbeddedError> {
        let (client, connection) =
            tokio_postgres::connect(&self.connection_string("postgres"), tokio_postgres::NoTls)
                .await
                .map_err(|e| EmbeddedError::Io(format!("cannot connect: {e}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// True while the server process runs.
    pub fn is_running(&self) -> bool {
        !self.process.has_exited()
    }

    /// Fast shutdown (SIGINT), waiting up to 30 s, then SIGKILL.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        self.process.stop().await;
        Ok(())
    }

    async fn wait_ready(&self) -> Result<(), EmbeddedError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.process.exit_status() {
                return Err(EmbeddedError::Start(format!(
                    "postgres exited ({status}); see {}",
                    self.log_path.display()
                )));
            }
            match self.admin_client().await {
                Ok(client) if crate::store::admin::answers(&client).await => return Ok(()),
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(EmbeddedError::Start(format!(
                        "postgres did not accept connections within 60 s; see {}",
                        self.log_path.display()
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// What the test bed (`agent_auth_tools::testbed`: a streaming replica, PgBouncer) needs to run
/// beside a cluster as the cluster's own account. The service itself uses none of it.
impl EmbeddedPostgres {
    /// The private socket directory the cluster listens in.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The port that names the cluster's socket file.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Prepares `data_dir` for a cluster (as [`EmbeddedPostgres::start`] does) without starting
/// one; returns its `pgdata` directory and log file.
pub fn prepare_cluster_dirs(data_dir: &Path) -> Result<(PathBuf, PathBuf), EmbeddedError> {
    let account = unprivileged_account()?;
    let dirs = ClusterDirs::prepare(data_dir, account.as_ref())?;
    Ok((dirs.pgdata, dirs.log_path))
}

/// Creates `dir` (if missing) owned by the cluster's account with `mode`; never follows a link.
pub fn prepare_dir_for_cluster(dir: &Path, mode: u32) -> Result<(), EmbeddedError> {
    let account = unprivileged_account()?;
    prepare_dir(dir, account.as_ref(), mode)
}

/// Runs `command` to its end as the cluster's account, its output appended to `log_path`.
pub fn run_as_cluster_account(
    command: Command,
    name: &str,
    log_path: &Path,
) -> Result<(), EmbeddedError> {
    let account = unprivileged_account()?;
    run_to_end(command, name, account.as_ref(), log_path)
}

/// A server process run as the cluster's account (the postmaster itself, PgBouncer beside it):
/// its output appended to `log_path`, SIGINT when this process dies, and SIGINT when dropped.
pub struct Supervised {
    pid: Pid,
    exited: watch::Receiver<Option<ExitStatus>>,
}

impl Supervised {
    pub fn spawn(command: Command, log_path: &Path) -> Result<Self, EmbeddedError> {
        let account = unprivileged_account()?;
        Self::as_account(command, account.as_ref(), log_path)
    }

    /// As [`Supervised::spawn`], as `account` (already looked up).
    fn as_account(
        command: Command,
        account: Option<&Account>,
        log_path: &Path,
    ) -> Result<Self, EmbeddedError> {
        let (pid, exited) = supervise(command, account, log_path)?;
        Ok(Self { pid, exited })
    }

    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// How it exited, once it has.
    fn exit_status(&self) -> Option<ExitStatus> {
        *self.exited.borrow()
    }

    /// SIGINT (a fast shutdown for PostgreSQL and PgBouncer alike), waiting up to 30 s, then
    /// SIGKILL; returns once it has exited.
    async fn stop(&mut self) {
        if self.has_exited() {
            return;
        }
        let _ = kill(self.pid, Signal::SIGINT);
        let timed_out = tokio::time::timeout(
            Duration::from_secs(30),
            self.exited.wait_for(Option::is_some),
        )
        .await
        .is_err();
        if timed_out {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = self.exited.wait_for(Option::is_some).await;
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = kill(self.pid, Signal::SIGINT);
        }
    }
}

/// A PostgreSQL client program (`pg_basebackup`, say): next to the server binaries, else the
/// newest Debian version's, else from PATH.
pub fn postgres_program(name: &str) -> Result<PathBuf, EmbeddedError> {
    let bin = find_binaries()?;
    Ok(std::iter::once(bin)
        .chain(debian_bin_dirs().into_iter().rev())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name)))
}

/// Spawns a server (PostgreSQL, PgBouncer) as `account`, its output appended to `log_path`, in
/// a process group of its own, from a thread that waits on it, so the parent-death signal fires
/// when (and only when) this process goes away.
fn supervise(
    mut command: Command,
    account: Option<&Account>,
    log_path: &Path,
) -> Result<(Pid, watch::Receiver<Option<ExitStatus>>), EmbeddedError> {
    as_account(&mut command, account);
    command
        .stdout(log_file(log_path)?)
        .stderr(log_file(log_path)?)
        .stdin(Stdio::null())
        .process_group(0);
    set_parent_death_signal(&mut command);
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = watch::channel(None);
    std::thread::Builder::new()
        .name("postgres-supervisor".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = pid_tx.send(Ok(child.id()));
                let status = child.wait();
                let _ = exit_tx.send(Some(status.unwrap_or_else(|_| failed_status())));
            }
            Err(e) => {
                let _ = pid_tx.send(Err(e.to_string()));
            }
        })
        .map_err(|e| EmbeddedError::Start(format!("cannot start a supervisor thread: {e}")))?;
    let pid = pid_rx
        .recv()
        .map_err(|_| EmbeddedError::Start("supervisor thread ended".into()))?
        .map_err(|e| EmbeddedError::Start(format!("cannot run postgres: {e}")))?;
    let pid = i32::try_from(pid).map_err(|_| EmbeddedError::Start("pid out of range".into()))?;
    Ok((Pid::from_raw(pid), exit_rx))
}

fn failed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(1 << 8)
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe. It runs after std has switched uid/gid, which would otherwise
    // clear the setting.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(std::io::Error::from)
        });
    }
}

/// A cluster's directories under its data dir, prepared: the top level stays ours (root's, when
/// root) and only traversable by others; the cluster's own directories belong to the account
/// that runs it. No step follows a symbolic link.
struct ClusterDirs {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
}

impl ClusterDirs {
    fn prepare(data_dir: &Path, account: Option<&Account>) -> Result<Self, EmbeddedError> {
        let pgdata = data_dir.join("pgdata");
        let socket_dir = data_dir.join("run");
        fs::create_dir_all(data_dir)
            .map_err(|e| EmbeddedError::Io(format!("{}: {e}", data_dir.display())))?;
        let top_mode = if account.is_some() { 0o711 } else { 0o700 };
        prepare_dir(data_dir, None, top_mode)?;
        prepare_dir(&pgdata, account, 0o700)?;
        prepare_dir(&socket_dir, account, 0o700)?;
        Ok(Self {
            pgdata,
            socket_dir,
            log_path: data_dir.join("postgres.log"),
        })
    }
}

/// Runs `command` (as the cluster's account) to its end, its output appended to `log_path`.
fn run_to_end(
    mut command: Command,
    name: &str,
    account: Option<&Account>,
    log_path: &Path,
) -> Result<(), EmbeddedError> {
    as_account(&mut command, account);
    let status = command
        .stdout(log_file(log_path)?)
        .stderr(log_file(log_path)?)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| EmbeddedError::Start(format!("cannot run {name}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(EmbeddedError::Start(format!(
            "{name} failed ({status}); see {}",
            log_path.display()
        )))
    }
}

fn as_account(command: &mut Command, account: Option<&Account>) {
    if let Some(account) = account {
        command.uid(account.uid).gid(account.gid);
    }
}

/// `Some(postgres account)` when running as root; `None` otherwise (run as ourselves).
fn unprivileged_account() -> Result<Option<Account>, EmbeddedError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some(Account {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        _ => Err(EmbeddedError::NoUnprivilegedUser),
    }
}

/// Creates `dir` if missing (its parent must exist), then sets its owner (`account`, else
/// ourselves) and `mode` through a handle opened with `O_NOFOLLOW | O_DIRECTORY`: a symbolic
/// link (or anything but a directory) at `dir` is refused, never followed, so a planted link
/// cannot hand another directory to the `postgres` account.
fn prepare_dir(dir: &Path, account: Option<&Account>, mode: u32) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| EmbeddedError::Io(format!("{}: {e}", dir.display()));
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| refuse_link(dir, e))?;
    let (uid, gid) = match account {
        Some(account) => (account.uid, account.gid),
        None => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
    };
    std::os::unix::fs::fchown(&handle, Some(uid), Some(gid)).map_err(io)?;
    handle
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)
}

/// Opens the server log for appending; a symbolic link there is refused, never followed.
fn log_file(path: &Path) -> Result<File, EmbeddedError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| refuse_link(path, e))
}

/// A refused open said plainly: `O_NOFOLLOW` meets a symbolic link as `ELOOP` (or `ENOTDIR`
/// with `O_DIRECTORY`).
fn refuse_link(path: &Path, e: std::io::Error) -> EmbeddedError {
    let refused = [nix::errno::Errno::ELOOP, nix::errno::Errno::ENOTDIR]
        .iter()
        .any(|code| e.raw_os_error() == Some(*code as i32));
    if !refused {
        return EmbeddedError::Io(format!("{}: {e}", path.display()));
    }
    let link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    EmbeddedError::Io(if link {
        format!(
            "{} is a symbolic link; refusing to follow it (remove it and start again)",
            path.display()
        )
    } else {
        format!("{} is not a directory; refusing to use it", path.display())
    })
}

/// The PID in `pgdata/postmaster.pid` when that process is alive (a stale file from a crash
/// is PostgreSQL's own to clear).
fn running_postmaster(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    match nix::sys::signal::kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}

/// The directory holding both `initdb` and `postgres`.
pub fn find_binaries() -> Result<PathBuf, EmbeddedError> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Ok(dir);
    }
    debian_bin_dirs()
        .into_iter()
        .rev()
        .find(|bin| has_both(bin))
        .ok_or(EmbeddedError::BinariesMissing)
}

/// Debian's `/usr/lib/postgresql/<major>/bin` directories, oldest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.into_iter().map(|(_, bin)| bin).collect()
}

/// A value for a libpq `key=value` connection string: single-quoted, `\\` and `'` escaped.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}
