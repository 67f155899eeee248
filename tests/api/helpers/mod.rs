//! The test harness: one throwaway PostgreSQL cluster per test run (or `TEST_DATABASE_URL`),
//! a fresh database per test, the real server on 127.0.0.1:0, and real AWS-style signatures
//! from keys generated here. One file per concern: `database`, `server`, `calls` (HTTP,
//! metrics, gRPC failures), `evidence`, `world` (control-plane rows), `network` (a black-hole
//! proxy), `attack` (peers that try to make the server hold memory); the tests
//! `use crate::helpers::*`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use agent_auth::app::App;
use agent_auth::config::{Config, Settings};
use agent_auth::embedded::{EmbeddedOptions, EmbeddedPostgres};
use agent_auth::grpc::pb;
use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use openssl::x509::X509;
use tokio_postgres::{Client, NoTls};
use tonic::transport::Channel;
use uuid::Uuid;

mod attack;
mod calls;
mod database;
mod evidence;
mod network;
mod server;
mod world;

pub use attack::*;
pub use calls::*;
pub use database::*;
pub use evidence::*;
pub use network::*;
pub use server::*;
pub use world::*;
