//! One integration-test binary: the real server over real gRPC on loopback, against a real
//! PostgreSQL (a throwaway cluster per run, a fresh database per test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws;
mod azure;
mod cli;
#[cfg(feature = "live-checks")]
mod cloud;
mod connections;
mod contract;
mod gcp;
mod hardening;
mod helpers;
mod http;
#[cfg(feature = "container-tests")]
mod image;
mod memory;
mod operations;
mod pipeline;
mod pki;
#[cfg(feature = "container-tests")]
mod pods;
mod resolution;
mod review;
mod scaling;
mod schema;
mod tidy;
mod trust;
