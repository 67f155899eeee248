//! `agent-auth migrate`: the owned schema's migrations (or the Coder schema's check), then exit.

use super::Failure;
use crate::app::prepare_database;
use crate::config::{Config, ServeArgs};
use crate::telemetry;

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let config = Config::load(&args)?;
    telemetry::init(config.log_format, &config.log_level, None);
    let database = prepare_database(&config).await.map_err(Failure::failed)?;
    if let Some(cluster) = database.embedded {
        let _ = cluster.stop().await;
    }
    println!("agent-auth: schema is up to date");
    Ok(())
}
