//! `agent-auth trust`: what the service would pin with these settings, a remote GCP JWKS
//! fetched now, and what is in force. Exit 1 when a certificate in force expires within 30
//! days, or a remote JWKS cannot be fetched or holds no key (an empty file turns GCP off).

use std::time::SystemTime;

use super::Failure;
use crate::cli::TrustArgs;
use crate::config::Config;
use crate::trust::{
    GcpKeys, TrustSources, TrustStore, expiry_warnings, gcp_summary, in_force_summary, listing,
    pinned,
};

pub async fn run(args: TrustArgs) -> Result<(), Failure> {
    let config = Config::load(&args.serve)?;
    let trust_failed = |e: &dyn std::fmt::Display| Failure::Failed(format!("trust: {e}"));
    let gcp = GcpKeys::from_config(&config.gcp.jwks).map_err(|e| trust_failed(&e))?;
    let store = TrustStore::load(TrustSources {
        aws: config.aws.clone(),
        azure: config.azure.clone(),
        gcp,
    })
    .map_err(|e| trust_failed(&e))?;
    let set = store.current();
    let gcp = gcp_summary(&set.gcp_keys).await;
    let pinned = pinned(&set);
    print!(
        "{}",
        listing(&pinned, args.json).map_err(|e| trust_failed(&e))?
    );
    let mut warnings = expiry_warnings(&pinned, SystemTime::now());
    match gcp {
        Ok(line) if !args.json => println!("{line}"),
        Ok(_) => {}
        Err(warning) => warnings.push(warning),
    }
    if !args.json {
        println!("{}", in_force_summary(&pinned));
    }
    for warning in &warnings {
        eprintln!("agent-auth: warning: {warning}");
    }
    if warnings.is_empty() {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}
