//! The container image as users run it: built by podman from `deploy/Dockerfile` with the
//! release binary (`deploy/podman/build-image`, on a base image made with debootstrap: no
//! registry here), then run as its own non-root user on a read-only root filesystem against a
//! real PostgreSQL. Compiled with `--features container-tests` (`.ci/run` does), which needs
//! podman, runc and debootstrap (Debian packages) and `cargo build --release` first.

use std::process::Output;
use std::time::Duration;

use crate::helpers::*;

pub const TAG: &str = "localhost/agent-auth:test";
/// The image's size at most (the issue's aim).
const MAX_IMAGE_BYTES: u64 = 100 * 1000 * 1000;

pub fn containers_conf() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/podman/containers.conf").to_owned()
}

/// `podman ARGS` with this machine's engine settings (`deploy/podman/containers.conf`).
pub fn podman_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new("podman");
    command.env("CONTAINERS_CONF", containers_conf()).args(args);
    command
}

pub async fn podman(args: &[&str]) -> Output {
    tokio::process::Command::from(podman_command(args))
        .output()
        .await
        .unwrap_or_else(|e| panic!("podman (apt-get install podman runc): {e}"))
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The release binary the image is built from (`AGENT_AUTH_RELEASE_BINARY`, or the target
/// directory's).
pub fn release_binary() -> String {
    if let Ok(path) = std::env::var("AGENT_AUTH_RELEASE_BINARY") {
        return path;
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_owned());
    let path = format!("{target}/release/agent-auth");
    assert!(
        std::path::Path::new(&path).is_file(),
        "no release binary at {path}: run `cargo build --release` first"
    );
    path
}

/// Builds the image once per test run.
pub async fn image() {
    static BUILT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let output = tokio::process::Command::new("bash")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/deploy/podman/build-image"
                ))
                .args([&release_binary(), TAG])
                .env("CONTAINERS_CONF", containers_conf())
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "{}", text(&output));
        })
        .await;
}

/// Small, non-root, no shell, its health command the binary's own: the image is the binary
/// and what it links.
#[tokio::test]
async fn the_image_is_small_and_runs_as_a_non_root_user_without_a_shell() {
    image().await;
    let inspect = podman(&[
        "image",
        "inspect",
        TAG,
        "--format",
        "{{.Size}} {{.Config.User}} {{.Config.Entrypoint}}",
    ])
    .await;
    let inspect = text(&inspect);
    let mut fields = inspect.split_whitespace();
    let size: u64 = fields.next().unwrap().parse().unwrap();
    eprintln!("image size {size} bytes");
    assert!(size <= MAX_IMAGE_BYTES, "the image is {size} bytes");
    assert_eq!(fields.next(), Some("10001:10001"));
    assert_eq!(fields.next(), Some("[agent-auth]"));
    let health = podman(&[
        "image",
        "inspect",
        TAG,
        "--format",
        "{{json .Config.Healthcheck.Test}}",
    ])
    .await;
    assert_eq!(
        text(&health).trim(),
        r#"["CMD","agent-auth","healthcheck","--server","http://127.0.0.1:50051"]"#
    );
    let shell = podman(&["run", "--rm", "--entrypoint", "/bin/sh", TAG, "-c", "true"]).await;
    assert!(!shell.status.success(), "the image has a shell");
    let id = podman(&[
        "run",
        "--rm",
        "--read-only",
        "--entrypoint",
        "/usr/local/bin/agent-auth",
        TAG,
        "--version",
    ])
    .await;
    assert!(id.status.success(), "{}", text(&id));
    // The image is the server operators deploy: with the live cloud checks.
    assert!(
        text(&id).contains("live cloud checks built in"),
        "{}",
        text(&id)
    );
}

/// The image serves from a read-only root filesystem as uid 10001: ready, a real login over
/// gRPC, its health command (`agent-auth healthcheck`, no shell) passes inside it, and SIGTERM
/// (`podman stop`) ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_from_a_read_only_root_filesystem() {
    image().await;
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, RECORDED_INSTANCE).await;
    // The test cluster listens on a unix socket only; the container reaches it over loopback.
    let proxy = BlackHoleProxy::start(&db).await;
    let (grpc, admin) = (free_port(), free_port());
    let name = format!("agent-auth-test-{}", std::process::id());
    let url = format!("AGENT_AUTH_POSTGRES_URL={}", proxy.url);
    let grpc_listen = format!("AGENT_AUTH_GRPC_LISTEN=127.0.0.1:{grpc}");
    let admin_listen = format!("AGENT_AUTH_ADMIN_LISTEN=127.0.0.1:{admin}");
    let jwks = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gcp/empty-jwks.json:/etc/agent-auth/jwks.json:ro"
    );
    let run = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--read-only",
        "--network",
        "host",
        "-e",
        &url,
        "-e",
        &grpc_listen,
        "-e",
        &admin_listen,
        // No fetch of Google's keys from a test: the fixture's empty JWKS, mounted.
        "-v",
        jwks,
        "-e",
        "AGENT_AUTH_GCP_JWKS=/etc/agent-auth/jwks.json",
        TAG,
    ])
    .await;
    assert!(run.status.success(), "{}", text(&run));
    let ready = eventually(Duration::from_secs(60), async || {
        http_get(&format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .0
            == 200
    })
    .await;
    if !ready {
        let logs = podman(&["logs", &name]).await;
        let _ = podman(&["rm", "-f", &name]).await;
        panic!("the container never became ready: {}", text(&logs));
    }
    let token = recorded_login(&format!("http://127.0.0.1:{grpc}")).await;
    assert_eq!(token, agent.token.to_string());
    let health = podman(&[
        "exec",
        &name,
        "agent-auth",
        "healthcheck",
        "--server",
        &format!("http://127.0.0.1:{grpc}"),
    ])
    .await;
    assert!(health.status.success(), "{}", text(&health));
    let user = podman(&["inspect", &name, "--format", "{{.Config.User}}"]).await;
    assert_eq!(text(&user).trim(), "10001:10001");
    let stop = podman(&["stop", "--time", "20", &name]).await;
    assert!(stop.status.success(), "{}", text(&stop));
    let exited = podman(&["inspect", &name, "--format", "{{.State.ExitCode}}"]).await;
    let logs = podman(&["logs", &name]).await;
    let _ = podman(&["rm", "-f", &name]).await;
    assert_eq!(text(&exited).trim(), "0", "{}", text(&logs));
}
