//! `agent-auth demo` (a command of the contract): the demo lives in the tools binary,
//! `agent-auth-tools`, so this one holds none of its code; it runs `agent-auth-tools demo` with
//! the same arguments in its place (exec: same process, signals and exit status).

use std::os::unix::process::CommandExt as _;

use super::Failure;
use crate::cli::DemoArgs;

/// The tools binary's name, looked for beside this executable.
const TOOLS: &str = "agent-auth-tools";

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Failed(format!("demo: cannot find this executable: {e}")))?;
    let tools = exe.with_file_name(TOOLS);
    if !tools.is_file() {
        return Err(Failure::Usage(format!(
            "demo: the demo is in the tools binary, and {} is missing (the container image \
             has the server only): build both with `cargo build --release --locked` and run \
             `{TOOLS} demo`",
            tools.display()
        )));
    }
    // Only returns when the exec failed.
    let error = std::process::Command::new(&tools)
        .arg("demo")
        .args(&args.args)
        .exec();
    Err(Failure::Failed(format!(
        "demo: cannot run {}: {error}",
        tools.display()
    )))
}
