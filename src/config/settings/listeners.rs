//! The "Listeners" group of [`super::Settings`] and its conversion (read as they are by
//! `Config::try_from`).

use std::net::SocketAddr;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::super::values::ListenAddr;

/// The three listeners' addresses.
#[derive(Clone, Args, Serialize, Deserialize)]
pub struct ListenerSettings {
    /// gRPC listener: HOST:PORT, or unix:/path for a socket created with mode 0600.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_LISTEN",
        help_heading = "Listeners",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_listen: ListenAddr,

    /// Admin HTTP listener: /healthz, /readyz, /metrics.
    #[arg(long, env = "AGENT_AUTH_ADMIN_LISTEN", help_heading = "Listeners", value_name = "ADDR", default_value = "127.0.0.1:9090", value_parser = super::super::values::parse_socket)]
    pub admin_listen: SocketAddr,

    /// Coder-compatible HTTP listener for agents (the three instance-identity endpoints) [default: off].
    #[arg(long, env = "AGENT_AUTH_HTTP_LISTEN", help_heading = "Listeners", value_name = "ADDR", value_parser = super::super::values::parse_socket)]
    pub http_listen: Option<SocketAddr>,
}
