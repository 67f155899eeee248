//! HTTP: the admin endpoints and the Coder-compatible agent endpoints.

pub mod admin;
pub mod agent;
