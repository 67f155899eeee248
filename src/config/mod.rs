//! One configuration tree, layered defaults < TOML file < env < flag (DESIGN.md 3.4).
//!
//! [`Settings`] defines every setting once (flag, env var, TOML key, default, type, help).
//! clap parses flags and env vars into it, typed; [`Config::layered`] lays the ones given
//! explicitly over the `--config` file and the defaults with figment; `Config::try_from`
//! checks what involves several settings and builds the tree the rest of the service reads.
//! Every error names its key, and `main` prints it on one line and exits 64 (EX_USAGE).

mod error;
mod reference;
pub mod settings;
pub mod values;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, FromArgMatches};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use crate::identity::aws::AwsTrustConfig;
use crate::identity::azure::AzureTrustConfig;
use crate::store::{PostgresUrl, StoreConfig};

pub use error::ConfigError;
pub use reference::settings_table;
pub use settings::Settings;
pub use settings::{GcpConfig, LiveCheckConfig, TlsConfig};
pub use values::{JwksSource, ListenAddr, LogFormat, SchemaMode};

/// Exit code for bad configuration (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

pub use crate::store::url::{REDACTED, redact_postgres_url};

/// The real setting nearest to `key` (a `-` written for `_`, a typo), if one is near enough.
fn did_you_mean(key: &str) -> Option<String> {
    let written = key.replace('-', "_").to_ascii_lowercase();
    Settings::keys()
        .map(|k| (strsim::damerau_levenshtein(&written, &k), k))
        .filter(|(distance, k)| *distance <= 2.max(k.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

impl ConfigError {
    /// A flag or env var that clap could not parse into its setting's type, as a
    /// configuration error naming the setting (other clap errors are clap's to print).
    pub fn from_clap(error: &clap::Error) -> Option<Self> {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        if !matches!(
            error.kind(),
            ErrorKind::ValueValidation | ErrorKind::InvalidValue
        ) {
            return None;
        }
        let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
            return None;
        };
        let key = arg
            .trim_start_matches("--")
            .split([' ', '='])
            .next()?
            .replace('-', "_");
        if !Settings::keys().any(|k| k == key) {
            return None;
        }
        let message = match std::error::Error::source(error) {
            Some(source) => source.to_string(),
            None => match error.get(ContextKind::InvalidValue) {
                Some(value) => format!("invalid value {value}"),
                None => "invalid value".to_owned(),
            },
        };
        Some(Self::new(&key, message))
    }
}

/// `serve`, `migrate` and `trust`: the settings, the file to layer them over, and which of
/// them the operator gave as a flag or env var (those beat the file; the rest are defaults).
#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub config: Option<PathBuf>,
    pub check_config: bool,
    pub settings: Settings,
    /// Keys given on the command line or in the environment.
    pub explicit: BTreeSet<String>,
}

/// The clap side of [`ServeArgs`]: the two file options and the flattened settings.
#[derive(Debug, Clone, Args)]
struct ServeFlags {
    /// TOML file with any of these settings (keys: the flag names with `_` for `-`).
    #[arg(long, env = "AGENT_AUTH_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    settings: Settings,
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        use clap::parser::ValueSource;
        let flags = ServeFlags::from_arg_matches(matches)?;
        let explicit = Settings::keys()
            .filter(|key| {
                matches!(
                    matches.value_source(key),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .collect();
        Ok(Self {
            config: flags.config,
            check_config: flags.check_config,
            settings: flags.settings,
            explicit,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        short_help(ServeFlags::augment_args(command))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        short_help(ServeFlags::augment_args_for_update(command))
    }
}

/// `-h` and `--help` both print the short reference (a line or two per flag: what it does and
/// its default); the prose is in docs/configuration.md.
fn short_help(command: clap::Command) -> clap::Command {
    command.disable_help_flag(true).arg(
        clap::Arg::new("help")
            .short('h')
            .long("help")
            .action(clap::ArgAction::HelpShort)
            .help("Print this reference (docs/configuration.md explains each setting)"),
    )
}

impl Settings {
    /// The settings as clap defines them, without reading any env var.
    fn command() -> clap::Command {
        Self::augment_args(clap::Command::new("agent-auth").no_binary_name(true))
            .mut_args(|arg| arg.env(None::<&str>))
    }

    /// Every key (TOML key = clap id = field name).
    pub fn keys() -> impl Iterator<Item = String> {
        Self::command()
            .get_arguments()
            .map(|arg| arg.get_id().as_str().to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// The settings these `serve` flags give over the defaults; no env var or file is read.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let clap_error = |e: clap::Error| {
            ConfigError::from_clap(&e).unwrap_or_else(|| ConfigError::new("config", e.to_string()))
        };
        let matches = Self::command()
            .try_get_matches_from(flags)
            .map_err(clap_error)?;
        Self::from_arg_matches(&matches).map_err(clap_error)
    }

    /// Every setting at its default (the `default_value`s of [`Settings`]).
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_flags(std::iter::empty::<String>())
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_listen: ListenAddr,
    pub admin_listen: SocketAddr,
    /// Coder-compatible HTTP endpoints; off when `None`.
    pub http_listen: Option<SocketAddr>,
    /// `None`: start the embedded database in `data_dir`.
    pub postgres_url: Option<PostgresUrl>,
    pub data_dir: PathBuf,
    pub schema: SchemaMode,
    pub store: StoreConfig,
    pub max_concurrent_requests: usize,
    /// `--aws-allowed-account any`: the operator accepts AWS documents of every account.
    pub aws_any_account: bool,
    /// Timeouts and caps of the listeners' connections.
    pub connections: crate::listen::ConnectionLimits,
    pub aws: AwsTrustConfig,
    pub azure: AzureTrustConfig,
    pub gcp: GcpConfig,
    /// TLS (and mTLS with a client CA) on the gRPC listener.
    pub tls: Option<TlsConfig>,
    pub insecure_verify_time: Option<SystemTime>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// OTLP/gRPC traces endpoint.
    pub otlp_endpoint: Option<String>,
    pub shutdown_grace: Duration,
    /// The live cloud API checks (off unless turned on).
    pub live: LiveCheckConfig,
}

/// The environment variable that `--insecure-verify-time` must never be read from.
const INSECURE_VERIFY_TIME_ENV: &str = "AGENT_AUTH_INSECURE_VERIFY_TIME";

impl Config {
    /// Layers defaults, the `--config` file and the flags/env from clap, then validates.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::try_from(Self::layered(args)?)
    }

    /// The layered settings (defaults < file < env < flags), before cross-setting checks.
    pub fn layered(args: &ServeArgs) -> Result<Settings, ConfigError> {
        if std::env::var_os(INSECURE_VERIFY_TIME_ENV).is_some() {
            return Err(ConfigError::new(
                "insecure_verify_time",
                format!("is a command-line flag only; unset {INSECURE_VERIFY_TIME_ENV}"),
            ));
        }
        let mut figment = Figment::from(Serialized::defaults(&args.settings));
        if let Some(path) = &args.config {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            if Figment::from(Toml::file_exact(path))
                .find_value("insecure_verify_time")
                .is_ok()
            {
                return Err(ConfigError::new(
                    "insecure_verify_time",
                    format!(
                        "is a command-line flag only; remove it from {}",
                        path.display()
                    ),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let given = figment::value::Value::serialize(&args.settings).map_err(figment_error)?;
        let explicit: figment::value::Dict = given
            .into_dict()
            .unwrap_or_default()
            .into_iter()
            .filter(|(key, _)| args.explicit.contains(key))
            .collect();
        let mut settings = extract(&figment.merge(Serialized::defaults(explicit)))?;
        // Never layered: from the command line or nowhere.
        settings.insecure_verify_time = args.settings.insecure_verify_time;
        Ok(settings)
    }
}

impl TryFrom<Settings> for Config {
    type Error = ConfigError;

    /// The checks that involve several settings, and the tree the service reads.
    fn try_from(s: Settings) -> Result<Self, ConfigError> {
        // In this order, so that of several bad settings the same one is named as always.
        let (postgres_url, store) = s.database.store()?;
        let tls = s.tls.config(&s.listeners.grpc_listen)?;
        let live = s.live.config()?;
        let (aws, aws_any_account) = s.aws.trust()?;
        Ok(Self {
            tls,
            live,
            connections: s.limits.connection_limits(),
            azure: s.azure.trust(),
            gcp: s.gcp.trust(),
            aws,
            aws_any_account,
            postgres_url,
            store,
            grpc_listen: s.listeners.grpc_listen,
            admin_listen: s.listeners.admin_listen,
            http_listen: s.listeners.http_listen,
            data_dir: s
                .database
                .data_dir
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(default_data_dir),
            schema: s.database.schema,
            max_concurrent_requests: s.limits.max_concurrent_requests.get(),
            insecure_verify_time: s.insecure_verify_time.map(|t| t.0),
            log_format: s.telemetry.log_format,
            log_level: s.telemetry.log_level.0,
            otlp_endpoint: s.telemetry.otlp_endpoint.map(|u| u.0),
            shutdown_grace: s.limits.shutdown_grace.0,
        })
    }
}

/// The settings, group by group, from the layered values; a key that is no setting is refused
/// first, naming the setting it was probably meant to be. (The groups are flattened into one
/// table, which serde's `flatten` cannot deserialise with `deny_unknown_fields`, and whose
/// buffered values would lose the key a bad value was under: each group is extracted on its
/// own, so a bad value's error still names its key.)
fn extract(figment: &Figment) -> Result<Settings, ConfigError> {
    let all: figment::value::Dict = figment.extract().map_err(figment_error)?;
    let keys: BTreeSet<String> = Settings::keys().collect();
    if let Some(found) = all.keys().find(|key| !keys.contains(*key)) {
        return Err(unknown_key(found));
    }
    Ok(Settings {
        listeners: figment.extract().map_err(figment_error)?,
        database: figment.extract().map_err(figment_error)?,
        limits: figment.extract().map_err(figment_error)?,
        aws: figment.extract().map_err(figment_error)?,
        gcp: figment.extract().map_err(figment_error)?,
        azure: figment.extract().map_err(figment_error)?,
        tls: figment.extract().map_err(figment_error)?,
        insecure_verify_time: None,
        telemetry: figment.extract().map_err(figment_error)?,
        live: figment.extract().map_err(figment_error)?,
    })
}

/// A key of the --config file that is no setting.
fn unknown_key(found: &str) -> ConfigError {
    let hint = match did_you_mean(found) {
        Some(key) => format!("; did you mean `{key}`?"),
        None => "; the keys are the flags' names with `_` for `-` (`serve --help`)".to_owned(),
    };
    ConfigError::unknown(
        found,
        format!("unknown key `{found}` in the --config file{hint}"),
    )
}

/// A value figment could not read, named by its setting (the first part of its path: a list
/// item's index is said in the message, so the error still names the setting).
fn figment_error(e: figment::Error) -> ConfigError {
    match e.path.split_first() {
        None => ConfigError::new("config", e.kind.to_string()),
        Some((key, [])) => ConfigError::new(key, e.kind.to_string()),
        Some((key, within)) => {
            ConfigError::new(key, format!("{} (at {})", e.kind, within.join(".")))
        }
    }
}

/// What `--check-config` prints (passwords redacted), so a `?settings` in a log line shows no
/// password either.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_redacted_toml() {
            Ok(text) => write!(f, "Settings {{ {} }}", text.trim_end().replace('\n', ", ")),
            Err(_) => f.write_str("Settings { .. }"),
        }
    }
}

impl Settings {
    /// The settings as TOML that `--config` reads back, with every password redacted and the
    /// command-line-only `insecure_verify_time` left out.
    pub fn to_redacted_toml(&self) -> Result<String, String> {
        let mut shown = self.clone();
        shown.database.postgres_url = shown
            .database
            .postgres_url
            .as_deref()
            .map(redact_postgres_url);
        for url in &mut shown.database.postgres_replica_url {
            *url = redact_postgres_url(url);
        }
        shown.insecure_verify_time = None;
        toml::to_string(&shown).map_err(|e| e.to_string())
    }
}

/// `$XDG_DATA_HOME/agent-auth` (or `~/.local/share/agent-auth`); `/var/lib/agent-auth` as root,
/// since the unprivileged account that runs PostgreSQL cannot enter `/root`.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/agent-auth");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("agent-auth");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/agent-auth"),
        None => PathBuf::from("agent-auth-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: impl FnOnce(&mut Settings)) -> Result<Config, ConfigError> {
        let mut settings = Settings::defaults()?;
        edit(&mut settings);
        Config::try_from(settings)
    }

    /// The URL is a `PostgresUrl` from the settings on: a `?config` or `?settings` in a log
    /// line shows no password.
    #[test]
    fn debug_of_the_settings_and_the_config_never_shows_a_password() {
        let mut settings = Settings::defaults().unwrap();
        settings.database.postgres_url = Some("postgres://u:hunter2@db.example/coder".into());
        settings.database.postgres_replica_url = vec!["host=r password=sesame dbname=coder".into()];
        let shown = format!("{settings:?}");
        assert!(
            shown.contains("db.example") && shown.contains("REDACTED"),
            "{shown}"
        );
        let config = Config::try_from(settings).unwrap();
        for shown in [shown, format!("{config:?}"), format!("{:?}", config.store)] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("sesame"),
                "{shown}"
            );
        }
    }

    /// What `serve` makes of these flags (no env var: clap reads them, tests may not set them).
    fn parse(flags: &[&str]) -> Result<Config, ConfigError> {
        let command = ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true))
            .mut_args(|arg| arg.env(None::<&str>));
        let args = command
            .try_get_matches_from(flags)
            .map_err(|e| {
                ConfigError::from_clap(&e).unwrap_or_else(|| ConfigError::new("?", e.to_string()))
            })
            .and_then(|m| {
                ServeArgs::from_arg_matches(&m).map_err(|e| ConfigError::new("?", e.to_string()))
            })?;
        Config::load(&args)
    }

    #[test]
    fn a_file_takes_booleans_and_the_text_of_flags() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else {
            return assert!(dir.is_ok());
        };
        let path = dir.path().join("c.toml");
        let text = "aws_ec2_check = true\ngcp_compute_check = \"false\"\nshutdown_grace = \"3s\"\n";
        assert!(std::fs::write(&path, text).is_ok());
        let config = parse(&["--config", &path.display().to_string()]).map(|c| {
            (
                c.live.aws.is_some(),
                c.live.gcp.is_some(),
                c.shutdown_grace,
                c.store.pool_size,
            )
        });
        assert_eq!(config, Ok((true, false, Duration::from_secs(3), 4)));
    }

    #[test]
    fn defaults_are_valid() {
        let config = with(|_| {}).map_err(|e| e.to_string());
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |flags: &[&str]| parse(flags).err().map(|e| e.key);
        for (flags, name) in [
            (&["--grpc-listen", "nowhere"][..], "grpc_listen"),
            (&["--schema", "theirs"], "schema"),
            (&["--db-checkout-timeout", "soon"], "db_checkout_timeout"),
            (&["--db-pool-size", "0"], "db_pool_size"),
            (&["--aws-certificate", "nokey"], "aws_certificate"),
            (&["--aws-allowed-account", "12"], "aws_allowed_account"),
            (&["--log-format", "xml"], "log_format"),
            (&["--schema", "coder"], "schema"),
            (&["--cloud-check-on-error", "ajar"], "cloud_check_on_error"),
            (
                &["--aws-ec2-assume-role", "123=arn:aws:iam::123:role/x"],
                "aws_ec2_assume_role",
            ),
            (
                &["--aws-ec2-endpoint", "localhost:5000"],
                "aws_ec2_endpoint",
            ),
            (&["--aws-ec2-batch-window", "5s"], "aws_ec2_batch_window"),
            (&["--cloud-check-timeout", "0s"], "cloud_check_timeout"),
            (
                &[
                    "--gcp-compute-check",
                    "--gcp-compute-credentials",
                    "/nonexistent/sa.json",
                ],
                "gcp_compute_credentials",
            ),
        ] {
            assert_eq!(key(flags), Some(name.into()), "{flags:?}");
        }
        // Credentials for a check that is off are not looked at.
        assert!(parse(&["--gcp-compute-credentials", "/nonexistent/sa.json"]).is_ok());
    }

    #[test]
    fn live_checks_are_off_by_default_and_on_when_asked() {
        let off = with(|_| {}).map(|c| (c.live.aws.is_none(), c.live.gcp.is_none()));
        assert_eq!(off, Ok((true, true)));
        let on = parse(&[
            "--aws-ec2-check",
            "--aws-ec2-assume-role",
            "123456789012=arn:aws:iam::123456789012:role/ro",
            "--cloud-check-on-error",
            "open",
        ])
        .map(|c| {
            let aws = c.live.aws.unwrap_or_default();
            (
                aws.assume_roles,
                aws.batch_window,
                c.live.settings.cache_ttl,
                c.live.settings.on_error,
            )
        });
        assert_eq!(
            on,
            Ok((
                vec![(
                    "123456789012".into(),
                    "arn:aws:iam::123456789012:role/ro".into()
                )],
                Duration::from_millis(20),
                Duration::from_secs(60),
                crate::cloud::OnError::Open
            ))
        );
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else {
            return assert!(dir.is_ok());
        };
        let path = dir.path().join("agent-auth.toml");
        let written = std::fs::write(&path, "db_pool_size = 7\nmax_concurrent_requests = 9\n");
        assert!(written.is_ok());
        let config = parse(&[
            "--config",
            &path.display().to_string(),
            "--max-concurrent-requests",
            "11",
        ])
        .map_err(|e| e.to_string());
        assert_eq!(
            config.map(|c| (c.store.pool_size, c.max_concurrent_requests, c.schema)),
            Ok((7, 11, SchemaMode::Owned))
        );
    }

    #[test]
    fn any_aws_account_is_accepted_alone_only() {
        let any = parse(&["--aws-allowed-account", "ANY"])
            .map(|c| (c.aws_any_account, c.aws.allowed_accounts.is_empty()));
        assert_eq!(any, Ok((true, true)));
        let listed = parse(&["--aws-allowed-account", "111111111111"])
            .map(|c| (c.aws_any_account, c.aws.allowed_accounts));
        assert_eq!(listed, Ok((false, vec!["111111111111".to_owned()])));
        let both = parse(&["--aws-allowed-account", "any,111111111111"]).err();
        assert_eq!(both.map(|e| e.key), Some("aws_allowed_account".to_owned()));
    }

    #[test]
    fn unknown_and_mistyped_file_keys_are_errors() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else {
            return assert!(dir.is_ok());
        };
        for (text, key) in [
            ("db_pool_sise = 7\n", "db_pool_sise"),
            ("db_pool_size = \"many\"\n", "db_pool_size"),
            ("db_pool_size = 0\n", "db_pool_size"),
            ("aws_ec2_check = \"yes\"\n", "aws_ec2_check"),
            ("grpc_listen = \"unix:run/a.sock\"\n", "grpc_listen"),
            // One bad value in each group: the groups are read one by one, and each names
            // the key, not the group.
            ("max_connections = \"lots\"\n", "max_connections"),
            ("aws_allowed_account = [\"12\"]\n", "aws_allowed_account"),
            ("gcp_audience = \"\"\n", "gcp_audience"),
            ("azure_fetch_issuers = \"maybe\"\n", "azure_fetch_issuers"),
            ("tls_key = \"/nonexistent/key.pem\"\n", "tls_key"),
            ("log_format = \"xml\"\n", "log_format"),
            ("admin_listen = 9090\n", "admin_listen"),
            // A group's name is no key: the file is flat, as the flags are.
            ("[database]\ndb_pool_size = 2\n", "database"),
        ] {
            let path = dir.path().join("c.toml");
            assert!(std::fs::write(&path, text).is_ok());
            assert_eq!(
                parse(&["--config", &path.display().to_string()])
                    .err()
                    .map(|e| e.key),
                Some(key.to_owned()),
                "{text}"
            );
        }
    }
}
