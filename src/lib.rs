//! agent-auth: authenticates cloud workspace agents by their signed instance identity.
//!
//! # Layout
//!
//! A request travels down this list and its answer back up:
//!
//! - [`grpc`]: the only module naming tonic/prost types. The service, the codec that turns an
//!   undecodable message into INVALID_ARGUMENT, and the one mapping of errors to status codes.
//! - [`auth`]: the use case. Check the request's shape, verify the evidence, run the one SQL
//!   statement, choose the agent.
//! - [`identity`]: pure verifiers of cloud evidence, `(evidence, trust, now) -> instance`.
//! - [`trust`]: the pinned keys and certificates of every cloud as one set, swapped whole when
//!   SIGHUP reloads the operator's files.
//! - [`store`]: the only module that issues SQL: the pool, migrations, the schema check and
//!   the resolver's single statement.
//!
//! Around them: [`config`] (one typed tree from flags, env and a TOML file), [`app`] (binds the
//! listeners and runs until shutdown), [`listen`] (connection caps, handshake and idle timeouts
//! for every listener), [`http`] (admin and agent endpoints), [`embedded`] (a private
//! PostgreSQL cluster for the default `serve`, the demo and the tests), [`client`] (the gRPC client
//! behind `authenticate` and `demo`), [`demo`], and [`telemetry`].

pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cloud;
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
mod metrics;
pub mod reasons;
pub mod store;
pub mod telemetry;
#[cfg(feature = "tools")]
pub mod tools;
pub mod trust;
