//! The tools that ship in the same binary but are not the server: `agent-auth bench` and
//! `agent-auth demo` (cargo feature `tools`, on by default; `--no-default-features` builds the
//! server alone, without them or their dependencies). No server module reaches in here (test
//! `tidy::the_server_never_reaches_into_the_tools`).

pub mod bench;
pub mod demo;
mod seed;
