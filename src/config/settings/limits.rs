//! The "Limits and timeouts" group of [`super::Settings`] and its conversion
//! (`LimitSettings::connection_limits`).

use std::num::{NonZeroU32, NonZeroUsize};

use clap::Args;
use serde::{Deserialize, Serialize};

use super::super::values::{Size, Span};

/// Every listener's caps, deadlines and sizes, the request limit and the drain.
#[derive(Clone, Args, Serialize, Deserialize)]
pub struct LimitSettings {
    /// Process-wide limit of concurrent authentications; more are shed at once with
    /// RESOURCE_EXHAUSTED.
    ///
    /// A guard against unbounded work, not a throttle: the database connections bound the
    /// statements in flight, and a login waiting for one gives up after
    /// --db-checkout-timeout. 1024 lets a boot storm of 10,000 agents in one second log in
    /// without a shed attempt (a shed agent backs off and retries: at 256, the backoff set the
    /// storm's tail) with the server's peak RSS at 51–53 MiB.
    #[arg(
        long,
        env = "AGENT_AUTH_MAX_CONCURRENT_REQUESTS",
        help_heading = "Limits and timeouts",
        value_name = "N",
        default_value = "1024"
    )]
    pub max_concurrent_requests: NonZeroUsize,

    /// Every listener: a new connection must send its first bytes within this.
    ///
    /// gRPC: the whole HTTP/2 preface; HTTP: a request.
    #[arg(
        long,
        env = "AGENT_AUTH_CONN_HANDSHAKE_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub conn_handshake_timeout: Span,

    /// Every listener: a connection on which no request started or ended for this long is
    /// closed gracefully (HTTP/2 GOAWAY), whatever keepalive pings flow; so is one on which no
    /// byte moved. The admin listener uses at most 10 s.
    #[arg(
        long,
        env = "AGENT_AUTH_CONN_IDLE_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub conn_idle_timeout: Span,

    /// The most memory that what peers hold may take: open connections, their requests, and
    /// the messages and bodies received so far [default: half the container's memory limit
    /// when one is set, else 128MiB].
    ///
    /// Each connection, request, gRPC message (from its length prefix) and received HTTP body
    /// byte is charged before it is held; with the budget spent, new work is refused at once
    /// (RESOURCE_EXHAUSTED, 503) and the idlest connection with nothing being worked on is
    /// closed to make room. The admin listener keeps a reserve of its own out of it. At least
    /// 16MiB.
    #[arg(
        long,
        env = "AGENT_AUTH_MEMORY_BUDGET",
        help_heading = "Limits and timeouts",
        value_name = "SIZE"
    )]
    pub memory_budget: Option<Size>,

    /// Open gRPC and agent HTTP connections together at most; over it, the idlest connection
    /// is closed gracefully to make room, or the newcomer at once when none is idle [default:
    /// the open-file limit less 256 and the admin cap, at most 16384].
    ///
    /// 0 also means the default.
    #[arg(
        long,
        env = "AGENT_AUTH_MAX_CONNECTIONS",
        help_heading = "Limits and timeouts",
        value_name = "N"
    )]
    pub max_connections: Option<usize>,

    /// Open gRPC and agent HTTP connections from one client address at most; more are closed
    /// at once [default: a quarter of --max-connections, at least 16].
    ///
    /// Behind an ingress or load balancer that does not keep client addresses, every
    /// connection comes from its few addresses: raise this to the cap. 0 also means the
    /// default.
    #[arg(
        long,
        env = "AGENT_AUTH_MAX_CONNECTIONS_PER_SOURCE",
        help_heading = "Limits and timeouts",
        value_name = "N"
    )]
    pub max_connections_per_source: Option<usize>,

    /// Open admin connections at most: the admin listener's own cap (half of it per client
    /// address), so probes and scrapes answer during a flood; over it, the idlest makes room.
    #[arg(
        long,
        env = "AGENT_AUTH_ADMIN_MAX_CONNECTIONS",
        help_heading = "Limits and timeouts",
        value_name = "N",
        default_value = "64"
    )]
    pub admin_max_connections: NonZeroUsize,

    /// Agent and admin HTTP: the whole request head must arrive within this.
    #[arg(
        long,
        env = "AGENT_AUTH_HTTP_HEADER_READ_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub http_header_read_timeout: Span,

    /// Agent HTTP: the whole request body must arrive within this, else 408 and the connection
    /// closes.
    #[arg(
        long,
        env = "AGENT_AUTH_HTTP_BODY_READ_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub http_body_read_timeout: Span,

    /// Agent HTTP: a larger Content-Length gets 413 at once, before the body (no `100
    /// Continue`).
    #[arg(
        long,
        env = "AGENT_AUTH_HTTP_MAX_BODY_SIZE",
        help_heading = "Limits and timeouts",
        value_name = "BYTES",
        default_value = "65536"
    )]
    pub http_max_body_size: NonZeroUsize,

    /// gRPC: the largest request message; a larger one is refused from its length prefix
    /// (OUT_OF_RANGE), never buffered.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_MAX_MESSAGE_SIZE",
        help_heading = "Limits and timeouts",
        value_name = "BYTES",
        default_value = "262144"
    )]
    pub grpc_max_message_size: NonZeroUsize,

    /// gRPC: concurrent requests on one connection.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_MAX_CONCURRENT_STREAMS",
        help_heading = "Limits and timeouts",
        value_name = "N",
        default_value = "100"
    )]
    pub grpc_max_concurrent_streams: NonZeroU32,

    /// gRPC: send an HTTP/2 keepalive ping this often.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_KEEPALIVE_INTERVAL",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub grpc_keepalive_interval: Span,

    /// gRPC: close a connection whose ping is not answered within this.
    #[arg(
        long,
        env = "AGENT_AUTH_GRPC_KEEPALIVE_TIMEOUT",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub grpc_keepalive_timeout: Span,

    /// How long in-flight requests may run after SIGTERM.
    #[arg(
        long,
        env = "AGENT_AUTH_SHUTDOWN_GRACE",
        help_heading = "Limits and timeouts",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub shutdown_grace: Span,
}

impl LimitSettings {
    /// Every listener's caps, deadlines and sizes.
    pub fn connection_limits(&self) -> crate::listen::ConnectionLimits {
        crate::listen::ConnectionLimits {
            handshake_timeout: self.conn_handshake_timeout.0,
            idle_timeout: self.conn_idle_timeout.0,
            max_connections: self.max_connections.filter(|n| *n > 0),
            max_connections_per_source: self.max_connections_per_source.filter(|n| *n > 0),
            admin_max_connections: self.admin_max_connections.get(),
            header_read_timeout: self.http_header_read_timeout.0,
            body_read_timeout: self.http_body_read_timeout.0,
            max_body_bytes: self.http_max_body_size.get(),
            max_message_bytes: self.grpc_max_message_size.get(),
            max_concurrent_streams: self.grpc_max_concurrent_streams.get(),
            keepalive_interval: self.grpc_keepalive_interval.0,
            keepalive_timeout: self.grpc_keepalive_timeout.0,
            memory_budget: self.memory_budget.map(|size| size.0),
        }
    }
}
