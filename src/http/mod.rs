//! HTTP: the admin endpoints and the Coder-compatible agent endpoints (served by
//! `crate::listen::serve`, like gRPC).

pub mod admin;
pub mod agent;
