//! Command-line definitions (DESIGN.md 3.4, contract for the flags listed there).
//!
//! The `serve`/`migrate`/`trust` settings are defined once, in [`crate::config::settings`];
//! [`ServeArgs`] carries them with the `--config` file and which were given explicitly.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::config::ServeArgs;

/// `--version`: the version and whether the optional live cloud checks are built in.
pub const VERSION: &str = if cfg!(feature = "live-checks") {
    concat!(env!("CARGO_PKG_VERSION"), " (live cloud checks built in)")
} else {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (without the live cloud checks: build with --features live-checks for them)"
    )
};

#[derive(Debug, Parser)]
#[command(
    name = "agent-auth",
    version = VERSION,
    about = "Authenticates cloud workspace agents by their signed instance identity"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (and admin HTTP) until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Apply the owned schema's migrations and exit.
    Migrate(ServeArgs),
    /// Probe a running server's gRPC health; exit 0 when SERVING, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Send one authentication to a server and print the result.
    Authenticate(AuthenticateArgs),
    /// Run the whole loop on a private embedded database with the recorded AWS document
    /// (`agent-auth-tools demo`, the tools binary beside this one; `demo --help` is its help).
    #[command(disable_help_flag = true)]
    Demo(DemoArgs),
    /// List every pinned certificate (built-in and from files, with the serve flags applied):
    /// cloud, region or role, subject, notAfter, SHA-256, source. Exit 1 when one expires
    /// within 30 days.
    Trust(TrustArgs),
}

/// `agent-auth demo ARGS…`: handed whole to `agent-auth-tools demo`, so the demo's code stays
/// out of this binary (its flags and `--help` are the tools').
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<std::ffi::OsString>,
}

/// `agent-auth trust`: the serve flags that choose trust, and the output format.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// TLS settings of a client command (`authenticate`, `healthcheck`) for a server with TLS.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTlsArgs {
    /// CA bundle that signed the server's certificate; enables TLS (use an https:// server).
    #[arg(long, env = "AGENT_AUTH_CLIENT_TLS_CA", value_name = "PEM_PATH")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mTLS.
    #[arg(
        long,
        env = "AGENT_AUTH_CLIENT_TLS_CERT",
        value_name = "PEM_PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Client key for mTLS.
    #[arg(
        long,
        env = "AGENT_AUTH_CLIENT_TLS_KEY",
        value_name = "PEM_PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The name to expect in the server's certificate, when it differs from the address.
    #[arg(long, env = "AGENT_AUTH_CLIENT_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// The server's gRPC address: http://HOST:PORT or unix:/path.
    #[arg(
        long,
        env = "AGENT_AUTH_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// The service to ask about; empty for the whole server.
    #[arg(long, default_value = "agentauth.v1.AgentAuth")]
    pub service: String,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct AuthenticateArgs {
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// The server's gRPC address: http://HOST:PORT or unix:/path.
    #[arg(
        long,
        env = "AGENT_AUTH_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// File with the exact bytes of the AWS instance identity document.
    #[arg(long, value_name = "FILE", requires = "aws_proof")]
    pub aws_document: Option<PathBuf>,
    /// File with the base64 AWS `signature`.
    #[arg(long, value_name = "FILE", group = "aws_proof")]
    pub aws_signature: Option<PathBuf>,
    /// File with the base64 AWS `rsa2048` PKCS#7.
    #[arg(long, value_name = "FILE", group = "aws_proof")]
    pub aws_rsa2048: Option<PathBuf>,
    /// File with a GCP instance identity JWT.
    #[arg(long, value_name = "FILE")]
    pub gcp_token: Option<PathBuf>,
    /// File with the base64 Azure attested-document PKCS#7.
    #[arg(long, value_name = "FILE")]
    pub azure_signature: Option<PathBuf>,
    /// Select this agent when several share the instance.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub agent_name: String,
    /// Give up after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}
