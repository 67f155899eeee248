//! agent-auth: authenticates cloud workspace agents by their signed instance identity.
//!
//! # Tour
//!
//! A request travels down this list and its answer back up:
//!
//! - [`grpc`]: the only module naming tonic/prost types (with `app` and `client`). The
//!   service, the codec that turns an undecodable message into INVALID_ARGUMENT, gRPC health,
//!   trace context, and errors as statuses. `http` serves the same use case as Coder's HTTP
//!   endpoints.
//! - [`auth`]: the use case. Check the request's shape, verify the evidence, run the one SQL
//!   statement, choose the agent; [`auth::AuthError`] is every way it refuses.
//! - [`reasons`]: the table of refusals: reason, metric outcome, gRPC code, HTTP status.
//! - [`identity`]: pure verifiers of cloud evidence, `(evidence, trust, now) -> instance`.
//! - [`trust`]: the pinned keys and certificates of every cloud as one set, swapped whole when
//!   SIGHUP reloads the operator's files; the GCP JWKS cache.
//! - [`store`]: the only module that issues SQL: the pool, migrations, the schema check and the
//!   resolver's single statement.
//!
//! Around them: [`config`] (every setting defined once in [`config::settings`], layered from
//! defaults, a TOML file, env and flags), [`app`] (binds the listeners and runs until
//! shutdown), `listen` (connection caps, handshake and idle deadlines for every listener),
//! `limit` (the process-wide concurrency limit), `http` (admin and agent endpoints), `metrics`,
//! [`issuers`] and [`fetch`] (outbound HTTP for Azure issuers and GCP keys), [`cloud`] (optional
//! live checks), [`embedded`] (a private PostgreSQL cluster for the default `serve`, the demo
//! and the tests), [`client`] (the gRPC client behind `authenticate` and `healthcheck`),
//! [`telemetry`], [`cli`], and on top [`commands`] (one module per subcommand, and the exit
//! codes). The demo, the bench and the test bed are another package
//! (`tools/`, binary `agent-auth-tools`) built on this library's public API. ARCHITECTURE.md
//! has the layers, the request path and the invariants with the tests that hold them.

pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod embedded;
pub mod fetch;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod grpc;
mod http;
pub mod identity;
pub mod issuers;
mod limit;
mod listen;
pub mod metrics;
pub mod reasons;
mod recent;
pub mod report;
pub mod store;
pub mod telemetry;
pub mod trust;
