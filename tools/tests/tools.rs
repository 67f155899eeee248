//! `agent-auth-tools` as its users run it: the demo, the bench, and the README's quick start
//! (the tools beside the server binary, which `cargo test` at the root builds too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

/// The repository's root (the server package), where the README and the fixtures are.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `agent-auth` server binary beside the tools' (the bench spawns it from there).
fn server_binary() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_agent-auth-tools")).with_file_name("agent-auth");
    assert!(
        server.is_file(),
        "{} is missing: run `cargo test` at the repository's root (it builds both packages)",
        server.display()
    );
    server
}

fn tools() -> Command {
    server_binary();
    command(env!("CARGO_BIN_EXE_agent-auth-tools"))
}

/// `program` with no `AGENT_AUTH_*` variable of the caller's and the empty GCP JWKS.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENT_AUTH_") {
            command.env_remove(key);
        }
    }
    // No fetch of Google's keys from a test: the empty JWKS fixture.
    command.env(
        "AGENT_AUTH_GCP_JWKS",
        format!("{ROOT}/tests/fixtures/gcp/empty-jwks.json"),
    );
    command
}

/// Runs a `bench … --json` command to success and returns its report.
fn bench_report(command: &mut Command) -> serde_json::Value {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The scenario of each outcome in a bench report, in order.
fn scenario_keys(outcomes: &[serde_json::Value]) -> Vec<&str> {
    outcomes
        .iter()
        .map(|o| o["scenario"].as_str().unwrap())
        .collect()
}

#[test]
fn the_demo_authenticates_the_recorded_document_on_an_embedded_database() {
    let output = tools().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("session token: "), "{stdout}");
    assert!(
        stdout.contains("matches workspace_agents.auth_token"),
        "{stdout}"
    );
    // The demo sets the recorded document's account: no replay warning, no warning at all.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("WARN"), "{stderr}");
}

#[test]
fn bench_runs_every_scenario_and_counts_one_statement_per_login() {
    let report = bench_report(tools().args([
        "bench",
        "--agents",
        "300",
        "--duration",
        "1s",
        "--concurrency",
        "4",
        "--json",
    ]));
    let outcomes = report["outcomes"].as_array().unwrap();
    let keys = scenario_keys(outcomes);
    assert_eq!(
        keys,
        ["agent-auth", "raw", "v2.32", "v2.33.1-1", "v2.33.1-2"]
    );
    for outcome in outcomes {
        assert!(outcome["logins"].as_u64().unwrap() > 0, "{outcome}");
    }
    // The incumbent's own failures (template-import agents shadowing the real one) are its
    // answers; ours, the raw statement and v2.33.1 on fresh workspaces must have none.
    for i in [0, 1, 3, 4] {
        assert_eq!(
            outcomes[i]["errors"],
            serde_json::json!({}),
            "{}",
            outcomes[i]
        );
    }
    // Statements per login: ours from agent_auth_db_queries_total of the server process, the
    // emulations counted as they run.
    let statements: Vec<f64> = outcomes
        .iter()
        .map(|o| o["statements_per_login"].as_f64().unwrap())
        .collect();
    assert_eq!(statements, [1.0, 1.0, 7.0, 11.0, 15.0]);
    assert!(outcomes[0]["pool_wait_ms_mean"].as_f64().is_some());
    assert_eq!(report["server"], "child process");
    assert!(report["server_peak_rss_mib"].as_f64().unwrap() > 1.0);
}

#[test]
fn bench_sweeps_callers_behind_a_slow_network_and_plots_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("sweep.svg");
    let report = bench_report(
        tools()
            .args([
                "bench",
                "--agents",
                "200",
                "--builds",
                "2",
                "--duration",
                "400ms",
                "--sweep",
                "1,3",
                "--scenarios",
                "agent-auth,v2.33.1-history",
                "--db-rtt",
                "4ms",
                "--in-process",
                "--explain",
                "--json",
                "--plot",
            ])
            .arg(&plot),
    );
    let outcomes = report["outcomes"].as_array().unwrap();
    let shape: Vec<(u64, &str)> = outcomes
        .iter()
        .map(|o| {
            (
                o["concurrency"].as_u64().unwrap(),
                o["scenario"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (1, "agent-auth"),
            (1, "v2.33.1-history"),
            (3, "agent-auth"),
            (3, "v2.33.1-history")
        ]
    );
    // The proxy really delays: the measured round trip includes the 4 ms.
    let rtt = report["db_round_trip_ms"].as_f64().unwrap();
    assert!(rtt >= 4.0, "{rtt}");
    // v2.33.1 answers 409 for every workspace that was rebuilt (stale agents of the same name);
    // ours logs the same instances in.
    assert_eq!(outcomes[1]["logins"], 0);
    assert!(outcomes[1]["errors"]["409: ambiguous"].as_u64().unwrap() > 0);
    assert!(outcomes[2]["logins"].as_u64().unwrap() > 0);
    assert_eq!(outcomes[2]["errors"], serde_json::json!({}));
    assert_eq!(report["server"], "in the bench process");
    let plan = report["explain"].as_str().unwrap();
    assert!(plan.contains("Execution Time"), "{plan}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        4,
        "2 scenarios x 2 panels"
    );
}

#[test]
fn bench_measures_the_grpc_floor_with_health_checks_and_no_statement() {
    let report = bench_report(tools().args([
        "bench",
        "--agents",
        "100",
        "--builds",
        "1",
        "--concurrency",
        "3",
        "--logins",
        "60",
        "--duration",
        "30s",
        "--scenarios",
        "grpc-health,agent-auth",
        "--json",
    ]));
    let outcomes = report["outcomes"].as_array().unwrap();
    let keys = scenario_keys(outcomes);
    assert_eq!(keys, ["grpc-health", "agent-auth"]);
    // Every health check answered SERVING, and none of them ran a statement (read from the
    // server's own counter); the logins after them ran exactly one each.
    assert_eq!(outcomes[0]["logins"], 60, "{}", outcomes[0]);
    assert_eq!(outcomes[0]["errors"], serde_json::json!({}));
    assert_eq!(outcomes[0]["statements_per_login"].as_f64(), Some(0.0));
    assert_eq!(outcomes[1]["logins"], 60, "{}", outcomes[1]);
    assert_eq!(outcomes[1]["statements_per_login"].as_f64(), Some(1.0));
}

#[test]
fn bench_rejects_an_unknown_scenario_with_a_usage_error() {
    let output = tools()
        .args(["bench", "--scenarios", "v9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown scenario \"v9\""), "{stderr}");
}

/// `agent-auth demo` (a command of the contract) runs the tools' demo in its place: same
/// output, same help.
#[test]
fn the_servers_demo_command_runs_the_tools_demo() {
    let output = command(server_binary()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("matches workspace_agents.auth_token"),
        "{stdout}"
    );
    let help = command(server_binary())
        .args(["demo", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--ready-file"), "{text}");
}

/// A boot storm through the binaries: every agent of a small storm is a distinct one, logs in
/// with one statement (the server's own counter), and none fails for good.
#[test]
fn a_boot_storm_logs_every_agent_in_once_and_counts_its_statements() {
    let report = bench_report(tools().args([
        "bench",
        "--boot-storm",
        "400",
        "--arrival",
        "500ms",
        "--builds",
        "2",
        "--json",
    ]));
    let storm = &report["boot_storm"];
    assert_eq!(storm["agents"], 400, "{storm}");
    assert_eq!(storm["logged_in"], 400, "{storm}");
    assert_eq!(storm["failed_for_good"], 0, "{storm}");
    let attempts = storm["attempts"].as_u64().unwrap();
    let retried = storm["shed"].as_u64().unwrap()
        + storm["unavailable"].as_u64().unwrap()
        + storm["missed_deadline"].as_u64().unwrap();
    assert_eq!(attempts, 400 + retried, "{storm}");
    // One statement per login, and a retried (shed) attempt runs none.
    let statements = storm["statements_per_agent"].as_f64().unwrap();
    assert!((1.0..=1.05).contains(&statements), "{storm}");
    assert!(storm["all_in_ms"].as_f64().unwrap() >= storm["p50_ms"].as_f64().unwrap());
    assert_eq!(report["outcomes"], serde_json::json!([]));
}

/// The default limit of concurrent logins is sized for a boot storm: a thousand agents arriving
/// together are all admitted (none shed: at most 1,000 are ever in flight, under the default of
/// 1,024), where the old default of 256 shed those beyond it and their backoff set the storm's
/// tail (BENCHMARKS.md, the boot storm rows).
#[test]
fn the_default_limit_admits_a_storm_of_a_thousand_agents_unshed() {
    let report = bench_report(tools().args([
        "bench",
        "--boot-storm",
        "1000",
        "--arrival",
        "1ms",
        "--builds",
        "1",
        "--json",
    ]));
    assert_eq!(
        report["max_concurrent_requests"], 1024,
        "the server's default"
    );
    let storm = &report["boot_storm"];
    assert_eq!(
        (
            &storm["logged_in"],
            &storm["shed"],
            &storm["failed_for_good"]
        ),
        (&1000.into(), &0.into(), &0.into()),
        "{storm}"
    );
}

/// The README's quick start (its server part, on the test's binaries), as a newcomer runs it.
fn quick_start(env: &[(&str, &str)]) -> std::process::Output {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let block = readme
        .split("<!-- quick-start -->\n```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n<!-- /quick-start -->").next())
        .expect("the README's quick-start block");
    assert!(
        block.contains("cargo build --release --locked\n"),
        "{block}"
    );
    let script = block
        .replace("cargo build --release --locked\n", "")
        .replace(
            "bin=\"${CARGO_TARGET_DIR:-target}/release\"",
            &format!("bin={}", server_binary().parent().unwrap().display()),
        );
    let mut bash = Command::new("bash");
    bash.current_dir(ROOT)
        .args(["-c", &script])
        .envs(env.iter().copied());
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENT_AUTH_") && !env.iter().any(|(k, _)| *k == key) {
            bash.env_remove(key);
        }
    }
    bash.output().unwrap()
}

/// The quick start calls the server it started, wherever another listens: a server already on
/// 127.0.0.1:50051 (the old fixed port) changes nothing.
#[test]
fn the_quick_start_calls_the_server_it_started() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:50051");
    let output = quick_start(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("SERVING"), "{stdout}");
    assert!(stdout.contains("session_token: "), "{stdout}");
    drop(squatter);
}

/// A demo server that cannot start (its port taken) ends the quick start at once with its own
/// cause, never with a failed login against whatever holds the port.
#[test]
fn the_quick_start_stops_with_the_cause_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let output = quick_start(&[("AGENT_AUTH_DEMO_GRPC_LISTEN", &address)]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("INVALID_IDENTITY") && !stdout.contains("session_token"),
        "{stdout}\n{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    drop(taken);
}
