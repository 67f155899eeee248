//! `agent-auth healthcheck`: exit 0 when the server's gRPC health says SERVING (exec probes).

use super::Failure;
use crate::cli::HealthcheckArgs;
use crate::client::{ClientTls, is_serving_with};

pub async fn run(args: HealthcheckArgs) -> Result<(), Failure> {
    let tls = ClientTls::from_args(&args.tls).map_err(|e| Failure::Usage(e.to_string()))?;
    let serving = is_serving_with(&args.server, &args.service, args.timeout, tls.as_ref())
        .await
        .map_err(Failure::failed)?;
    if !serving {
        return Err(Failure::Failed(format!("{} is not serving", args.server)));
    }
    println!("SERVING");
    Ok(())
}
