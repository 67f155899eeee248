//! The tools around agent-auth that are not the server, in their own package and binary
//! (`agent-auth-tools`): the demo, the load bench and their seeders, the bench's baseline pool,
//! and the test bed of real servers beside a cluster (a streaming replica, PgBouncer) that the
//! bench and the server's tests share. They reach the server only through the `agent_auth`
//! library's public API; the server package cannot depend on this one (that would be a cycle),
//! so no tool code can reach the `agent-auth` binary or its image.

pub mod bench;
pub mod cli;
pub mod demo;
mod seed;
pub mod testbed;
