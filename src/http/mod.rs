//! HTTP: the admin endpoints. (The Coder-compatible agent endpoints come later.)

pub mod admin;
