//! The manifests as pods. `deploy/kubernetes/base` and `sidecar` are rendered by kustomize and run
//! by `podman kube play` with the image of `image.rs`, beside real parts in containers of their
//! own on a network the test creates: PostgreSQL holding Coder's schema, read through the
//! read-only role of docs/deploy.md; nginx as the ingress in front of Coder; nginx as the control
//! plane's HTTP stand-in. Compiled with `--features container-tests` (`.ci/run` does).
//!
//! What `podman kube play` (podman 4.3, Debian 12) cannot take as Kubernetes does, and what these
//! tests change on the rendered documents instead (`for_podman`), each said in docs/deploy.md:
//! - A `Secret` in the YAML is stored in a form its own `secretRef` reader refuses ("is not
//!   valid JSON"): the test creates it with `podman secret create` (a JSON map of base64
//!   values), which that reader takes.
//! - Every `containerPort` is published on the host (Kubernetes publishes none), so the second
//!   replica cannot start: the `ports` lists are dropped; callers use the pod's address.
//! - Probes: readiness and startup probes are ignored, an `httpGet` liveness probe becomes
//!   `curl … localhost:0` (named ports unresolved) in a shell the image has not, and nothing
//!   runs health checks without systemd. The probes are dropped, and the test runs them as the
//!   kubelet does: HTTP and gRPC health checks from the node (here, the host) to the pod's
//!   address, and the exec probe's own command inside the container (`podman exec`).
//! - The downward API's `status.podIP` is refused, and `$(VAR)` in `args` is not expanded:
//!   `POD_IP` and `$(POD_IP)` become the pod's fixed address (`kube play --ip`).
//! - Native sidecars (an init container with `restartPolicy: Always`) are unknown, and init
//!   containers with probes refused: the sidecar becomes one of the pod's containers.
//! - Service, HPA, PodDisruptionBudget, NetworkPolicy, ServiceMonitor: not played (the ingress
//!   stand-in addresses the pods).
//!
//! Test-only additions: the empty GCP JWKS fixture is mounted (no fetch of Google's keys), and
//! the sidecar pod's control-plane stand-in gets the client binary and the AWS fixtures mounted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::image::{image, podman, podman_command, release_binary, text};

const TESTBED: &str = "localhost/agent-auth-testbed:1";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SUPERUSER_PASSWORD: &str = "testbed-superuser";
const READER_PASSWORD: &str = "testbed-reader";
/// The last octet of each part's fixed address on the test's network.
const POSTGRES_HOST: u8 = 10;
const REPLICA_HOSTS: [u8; 2] = [11, 12];
const CONTROL_PLANE_HOST: u8 = 20;
const INGRESS_HOST: u8 = 21;
const SIDECAR_POD_HOST: u8 = 30;
const AWS_PATH: &str = "/api/v2/workspaceagents/aws-instance-identity";

/// PostgreSQL and nginx on the debootstrap base (`tests/fixtures/containers`), built once and
/// kept between runs (podman's layer cache).
async fn testbed() {
    static BUILT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            image().await; // makes the base image too
            let dir = format!("{ROOT}/tests/fixtures/containers");
            let file = format!("{dir}/testbed.Containerfile");
            let build = podman(&[
                "build", "--quiet", "--format", "docker", "-f", &file, "-t", TESTBED, &dir,
            ])
            .await;
            assert!(build.status.success(), "{}", text(&build));
        })
        .await;
}

/// What a test made, to remove when it ends.
enum Made {
    Network(String),
    Container(String),
    Pod(String),
    Secret(String),
    File(String),
}

/// A network of the test's own and everything made on it, removed when the test ends (also when
/// it fails).
struct Topology {
    prefix: String,
    subnet: String,
    made: std::sync::Mutex<Vec<Made>>,
}

impl Topology {
    async fn new(label: &str) -> Self {
        let prefix = format!("aa-{label}-{}", std::process::id());
        let mut topology = Self {
            subnet: String::new(),
            made: std::sync::Mutex::new(Vec::new()),
            prefix,
        };
        let _ = podman(&["network", "rm", "-f", &topology.prefix]).await;
        let create = podman(&["network", "create", &topology.prefix]).await;
        assert!(create.status.success(), "{}", text(&create));
        topology.made(Made::Network(topology.prefix.clone()));
        let subnet = podman(&[
            "network",
            "inspect",
            &topology.prefix,
            "--format",
            "{{range .Subnets}}{{.Subnet}}{{end}}",
        ])
        .await;
        let subnet = text(&subnet);
        let (net, _) = subnet.trim().rsplit_once('.').unwrap();
        topology.subnet = net.to_owned();
        topology
    }

    fn made(&self, made: Made) {
        self.made.lock().unwrap().push(made);
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.subnet)
    }

    fn name(&self, part: &str) -> String {
        format!("{}-{part}", self.prefix)
    }

    /// Starts a container of the testbed image on the network at a fixed address.
    async fn run(&self, part: &str, host: u8, args: &[&str]) -> String {
        let name = self.name(part);
        let ip = self.ip(host);
        let mut all = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.prefix,
            "--ip",
            &ip,
        ];
        all.extend_from_slice(args);
        let run = podman(&all).await;
        assert!(run.status.success(), "{}", text(&run));
        self.made(Made::Container(name.clone()));
        name
    }

    /// PostgreSQL with Coder's schema in database `coder` and the read-only role of docs/deploy.md
    /// (`agent_auth_reader`: CONNECT, USAGE, SELECT on the five tables, nothing else).
    async fn coder_database(&self) -> CoderWorld {
        self.run(
            "postgres",
            POSTGRES_HOST,
            &[
                "--user",
                "postgres",
                "-e",
                &format!("POSTGRES_PASSWORD={SUPERUSER_PASSWORD}"),
                TESTBED,
                "start-postgres",
            ],
        )
        .await;
        let superuser = |db: &str| {
            format!(
                "host={} user=postgres password={SUPERUSER_PASSWORD} dbname={db} connect_timeout=2",
                self.ip(POSTGRES_HOST)
            )
        };
        let up = eventually(Duration::from_secs(60), async || {
            tokio_postgres::connect(&superuser("postgres"), tokio_postgres::NoTls)
                .await
                .is_ok()
        })
        .await;
        assert!(up, "PostgreSQL never came up in its container");
        connect(&superuser("postgres"))
            .await
            .batch_execute("CREATE DATABASE coder")
            .await
            .unwrap();
        let client = connect(&superuser("coder")).await;
        client.batch_execute(CODER_SCHEMA).await.unwrap();
        client
            .batch_execute(&format!(
                "CREATE ROLE agent_auth_reader LOGIN PASSWORD '{READER_PASSWORD}';
                 GRANT CONNECT ON DATABASE coder TO agent_auth_reader;
                 GRANT USAGE ON SCHEMA public TO agent_auth_reader;
                 GRANT SELECT ON workspace_agents, workspace_resources, provisioner_jobs,
                                 workspace_builds, workspaces TO agent_auth_reader;"
            ))
            .await
            .unwrap();
        CoderWorld { client }
    }

    fn reader_url(&self) -> String {
        format!(
            "postgresql://agent_auth_reader:{READER_PASSWORD}@{}:5432/coder?sslmode=disable",
            self.ip(POSTGRES_HOST)
        )
    }

    /// `podman secret create NAME` holding `data` in the form kube play's `secretRef` reads.
    async fn secret(&self, name: &str, data: &[(&str, String)]) {
        let map: serde_json::Map<String, Value> = data
            .iter()
            .map(|(key, value)| {
                let encoded = base64::engine::general_purpose::STANDARD.encode(value);
                ((*key).to_owned(), Value::String(encoded))
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.json");
        std::fs::write(&file, Value::Object(map).to_string()).unwrap();
        let _ = podman(&["secret", "rm", name]).await;
        let create = podman(&["secret", "create", name, file.to_str().unwrap()]).await;
        assert!(create.status.success(), "{}", text(&create));
        self.made(Made::Secret(name.to_owned()));
    }

    /// `podman kube play` of `docs` on the network, its pods at the fixed addresses `hosts`.
    async fn play(&self, docs: &[Value], pod_names: &[String], hosts: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("play.yaml");
        let yaml: Vec<String> = docs.iter().map(Value::to_string).collect();
        std::fs::write(&file, yaml.join("\n---\n")).unwrap();
        for pod in pod_names {
            self.made(Made::Pod(pod.clone()));
        }
        let mut args = vec![
            "kube".to_owned(),
            "play".to_owned(),
            "--network".to_owned(),
            self.prefix.clone(),
        ];
        for host in hosts {
            args.extend(["--ip".to_owned(), self.ip(*host)]);
        }
        args.push(file.to_str().unwrap().to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let play = podman(&args).await;
        assert!(play.status.success(), "{}", text(&play));
    }

    /// An nginx of the testbed image with `config` (a file of tests/fixtures/containers with
    /// its placeholders replaced).
    async fn nginx(&self, part: &str, host: u8, config: &str, replace: &[(&str, String)]) {
        let mut body =
            std::fs::read_to_string(format!("{ROOT}/tests/fixtures/containers/{config}")).unwrap();
        for (from, to) in replace {
            body = body.replace(from, to);
        }
        let path = format!("/var/tmp/{}-{part}.conf", self.prefix);
        std::fs::write(&path, body).unwrap();
        self.made(Made::File(path.clone()));
        let mount = format!("{path}:/etc/nginx/test.conf:ro");
        self.run(
            part,
            host,
            &[
                "-v",
                &mount,
                TESTBED,
                "nginx",
                "-c",
                "/etc/nginx/test.conf",
                "-g",
                "daemon off;",
            ],
        )
        .await;
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        for made in made.iter().rev() {
            let args: &[&str] = match made {
                Made::Pod(name) => &["pod", "rm", "-f", "-t", "0", name],
                Made::Container(name) => &["rm", "-f", "-t", "0", name],
                Made::Secret(name) => &["secret", "rm", name],
                Made::Network(name) => &["network", "rm", "-f", name],
                Made::File(path) => {
                    let _ = std::fs::remove_file(path);
                    continue;
                }
            };
            let _ = podman_command(args).output();
        }
    }
}

/// The documents `kubectl kustomize deploy/kubernetes/OVERLAY` renders.
fn render(overlay: &str) -> Vec<Value> {
    let output = std::process::Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/deploy/kubernetes/{overlay}")])
        .output()
        .unwrap_or_else(|e| panic!("kubectl (with kustomize): {e}"));
    assert!(output.status.success(), "{}", text(&output));
    let yaml = String::from_utf8(output.stdout).unwrap();
    serde_norway::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|doc| doc["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// A probe as the rendered manifest has it.
#[derive(Debug)]
struct Probe {
    container: String,
    kind: &'static str,
    spec: Value,
}

/// Changes a rendered Deployment's pod for `podman kube play` (the list in this file's header):
/// its name, agent-auth's image, the sidecar moved to the containers, no ports, no probes
/// (returned, to be run as the kubelet runs them), `POD_IP` set, the secret renamed, the empty
/// JWKS mounted. Returns the probes.
fn for_podman(deployment: &mut Value, name: &str, secret: &str, pod_ip: &str) -> Vec<Probe> {
    deployment["metadata"]["name"] = json!(name);
    let pod = &mut deployment["spec"]["template"]["spec"];
    let mut sidecars = Vec::new();
    if let Some(inits) = pod["initContainers"].as_array_mut() {
        inits.retain(|init| {
            let sidecar = init["restartPolicy"] == "Always";
            if sidecar {
                sidecars.push(init.clone());
            }
            !sidecar
        });
    }
    if pod["initContainers"].as_array().is_some_and(Vec::is_empty) {
        pod.as_object_mut().unwrap().remove("initContainers");
    }
    let containers = pod["containers"].as_array_mut().unwrap();
    for mut sidecar in sidecars {
        sidecar.as_object_mut().unwrap().remove("restartPolicy");
        containers.push(sidecar);
    }
    let mut probes = Vec::new();
    for container in containers.iter_mut() {
        let object = container.as_object_mut().unwrap();
        object.remove("ports");
        for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
            if let Some(spec) = object.remove(kind) {
                probes.push(Probe {
                    container: object["name"].as_str().unwrap().to_owned(),
                    kind,
                    spec,
                });
            }
        }
        let is_agent_auth = object["image"]
            .as_str()
            .is_some_and(|image| image.contains("agent-auth"));
        if !is_agent_auth {
            continue;
        }
        object.insert("image".into(), json!(crate::image::TAG));
        for source in object
            .get_mut("envFrom")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if source.get("secretRef").is_some() {
                source["secretRef"]["name"] = json!(secret);
            }
        }
        for arg in object
            .get_mut("args")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(text) = arg.as_str().filter(|text| text.contains("$(POD_IP)")) {
                *arg = json!(text.replace("$(POD_IP)", pod_ip));
            }
        }
        let env = object.entry("env").or_insert_with(|| json!([]));
        for var in env.as_array_mut().unwrap().iter_mut() {
            if var["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP" {
                *var = json!({"name": var["name"], "value": pod_ip});
            }
        }
        env.as_array_mut().unwrap().push(
            json!({"name": "AGENT_AUTH_GCP_JWKS", "value": "/etc/agent-auth-test/gcp/empty-jwks.json"}),
        );
        let mounts = object.entry("volumeMounts").or_insert_with(|| json!([]));
        mounts.as_array_mut().unwrap().push(
            json!({"name": "test-jwks", "mountPath": "/etc/agent-auth-test/gcp", "readOnly": true}),
        );
    }
    let volumes = pod
        .as_object_mut()
        .unwrap()
        .entry("volumes")
        .or_insert_with(|| json!([]));
    volumes.as_array_mut().unwrap().push(json!({
        "name": "test-jwks",
        "hostPath": {"path": format!("{ROOT}/tests/fixtures/gcp"), "type": "Directory"}
    }));
    probes
}

/// Runs the manifest's probes of `container` (in pod `pod`, at `ip`) as the kubelet would, until
/// each passes: `httpGet` and `grpc` from the node to the pod's address, `exec` inside the
/// container. Panics naming the first that never passes.
async fn probes_pass(probes: &[Probe], pod: &str, ip: &str) {
    for probe in probes {
        let container = format!("{pod}-{}", probe.container);
        let spec = &probe.spec;
        let passes = eventually(Duration::from_secs(90), async || {
            if let Some(get) = spec.get("httpGet") {
                let port = named_port(&get["port"]);
                let url = format!("http://{ip}:{port}{}", get["path"].as_str().unwrap());
                http_get(&url).await.0 == 200
            } else if let Some(grpc) = spec.get("grpc") {
                agent_auth::client::is_serving(
                    &format!("http://{ip}:{}", grpc["port"]),
                    grpc["service"].as_str().unwrap_or_default(),
                    Duration::from_secs(2),
                )
                .await
                .unwrap_or(false)
            } else if let Some(exec) = spec.get("exec") {
                let command: Vec<&str> = exec["command"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|part| part.as_str().unwrap())
                    .collect();
                let mut args = vec!["exec", container.as_str()];
                args.extend(command);
                podman(&args).await.status.success()
            } else {
                panic!("a probe of a kind this test cannot run: {spec}")
            }
        })
        .await;
        if !passes {
            let logs = podman(&["logs", &container]).await;
            panic!(
                "the {} of {container} never passed: {spec}\n{}",
                probe.kind,
                text(&logs)
            );
        }
        eprintln!("{container}: {} passes", probe.kind);
    }
}

/// Whether GET `url` answers `status` within `limit`.
async fn answers(url: &str, status: u16, limit: Duration) -> bool {
    eventually(limit, async || http_get(url).await.0 == status).await
}

/// The port numbers behind the manifests' named ports.
fn named_port(port: &Value) -> u64 {
    match port {
        Value::Number(number) => number.as_u64().unwrap(),
        Value::String(name) => match name.as_str() {
            "admin" => 9090,
            "aa-admin" => 9091,
            "grpc" => 50051,
            "http" => 8080,
            other => panic!("unknown named port {other}"),
        },
        other => panic!("a port {other}"),
    }
}

fn aws_body(document: &str) -> Vec<u8> {
    json!({"signature": RECORDED_SIGNATURE, "document": document})
        .to_string()
        .into_bytes()
}

/// An agent's login through Coder's AWS path at `base` (the service or the ingress): (status,
/// body).
async fn coder_login(base: &str, document: &str) -> (u16, String) {
    let (status, _, body) = http_post(
        &format!("{base}{AWS_PATH}"),
        "application/json",
        &aws_body(document),
    )
    .await;
    (status, body)
}

/// One agent in Coder's tables for the recorded AWS instance; its session token.
async fn seed(world: &CoderWorld) -> uuid::Uuid {
    let resource = world.build(world.workspace().await, 1).await;
    world.agent(resource, "main", RECORDED_INSTANCE).await
}

/// `callers` agents logging in through `url` (Coder's HTTP path) until `stop`: (logins, failed).
fn logins_through(
    url: String,
    callers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..callers)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut done, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let (status, _, _) =
                        http_post(&url, "application/json", &aws_body(RECORDED_DOCUMENT)).await;
                    done += 1;
                    if status != 200 {
                        failed += 1;
                    }
                }
                (done, failed)
            })
        })
        .collect()
}

/// One login of the database cut-off: when it began and how long it took (from the test's
/// start), and its error code.
struct Call {
    began: Duration,
    took: Duration,
    code: Option<tonic::Code>,
}

/// What the logins saw around a database cut-off at `cut`, undone at `back`.
#[derive(Debug, Default)]
struct DatabaseOutage {
    before_cut_failed: usize,
    unavailable: usize,
    other_codes: Vec<tonic::Code>,
    /// The longest failed login that began before the connections stalled (the cut plus
    /// agent-auth's stall limit, the statement timeout): placed on a connection that then fell
    /// silent, it waits at most the checkout and statement timeouts.
    slowest_in_flight: Duration,
    /// The longest failed login that began later.
    slowest_later: Duration,
    first_unavailable_after_cut: Option<Duration>,
    first_success_after_back: Option<Duration>,
}

impl DatabaseOutage {
    fn of(calls: &[Call], cut: Duration, back: Duration) -> Self {
        let mut outage = Self::default();
        for call in calls {
            let ended = call.began + call.took;
            match call.code {
                None if ended > back => {
                    let after = ended - back;
                    let first = outage.first_success_after_back.get_or_insert(after);
                    *first = (*first).min(after);
                }
                None => {}
                Some(_) if ended < cut => outage.before_cut_failed += 1,
                Some(code) => {
                    if code == tonic::Code::Unavailable {
                        outage.unavailable += 1;
                    } else {
                        outage.other_codes.push(code);
                    }
                    let after = ended - cut;
                    let first = outage.first_unavailable_after_cut.get_or_insert(after);
                    *first = (*first).min(after);
                    // The stall limit is the statement timeout: the manifests keep the default.
                    let stalled = cut + Duration::from_secs(2) + Duration::from_millis(200);
                    let slowest = if call.began < stalled {
                        &mut outage.slowest_in_flight
                    } else {
                        &mut outage.slowest_later
                    };
                    *slowest = (*slowest).max(call.took);
                }
            }
        }
        outage
    }
}

/// The standalone manifests (`base/`: two replicas, `--schema coder` through the read-only
/// role) as pods: their probes pass, each answers gRPC and Coder's HTTP endpoint; an ingress
/// sends the instance-identity paths to them and the rest to the control plane. Then the
/// faults: one replica stopped while logins run through the ingress, and the database cut off
/// and brought back while logins run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_manifests_run_as_pods_behind_an_ingress() {
    testbed().await;
    let net = Topology::new("base").await;
    let world = net.coder_database().await;
    let token = seed(&world).await;

    let mut docs = render("base");
    let secret_doc = find(&docs, "Secret").clone();
    assert_eq!(
        secret_doc["metadata"]["name"], "agent-auth-database",
        "the Deployment's secretRef"
    );
    assert!(
        secret_doc["stringData"]["AGENT_AUTH_POSTGRES_URL"]
            .as_str()
            .unwrap()
            .contains("agent_auth_reader"),
        "base/ connects as the read-only role"
    );
    let secret = net.name("database");
    net.secret(&secret, &[("AGENT_AUTH_POSTGRES_URL", net.reader_url())])
        .await;
    let name = net.name("agent-auth");
    docs.retain(|doc| doc["kind"] == "ConfigMap" || doc["kind"] == "Deployment");
    assert_eq!(
        find(&docs, "ConfigMap")["data"]["AGENT_AUTH_SCHEMA"],
        "coder"
    );
    let deployment = docs.iter_mut().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let probes = for_podman(deployment, &name, &secret, "");
    let kinds: Vec<&str> = probes.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, ["readinessProbe", "livenessProbe"]);
    net.play(
        &docs,
        &[format!("{name}-pod-0"), format!("{name}-pod-1")],
        &REPLICA_HOSTS,
    )
    .await;

    // Each replica: the probes pass, gRPC and Coder's HTTP endpoint log the agent in, and the
    // image's own health command passes inside it.
    for (index, host) in REPLICA_HOSTS.iter().enumerate() {
        let (pod, ip) = (format!("{name}-pod-{index}"), net.ip(*host));
        probes_pass(&probes, &pod, &ip).await;
        let grpc_token = recorded_login(&format!("http://{ip}:50051")).await;
        assert_eq!(grpc_token, token.to_string());
        assert_eq!(
            coder_login(&format!("http://{ip}:8080"), RECORDED_DOCUMENT).await,
            (200, format!("{{\"session_token\":\"{token}\"}}"))
        );
        let health = podman(&[
            "exec",
            &format!("{pod}-agent-auth"),
            "agent-auth",
            "healthcheck",
        ])
        .await;
        assert!(health.status.success(), "{}", text(&health));
    }

    // Coder's routing in front: the identity paths to agent-auth, the rest to the control plane.
    net.nginx(
        "control-plane",
        CONTROL_PLANE_HOST,
        "control-plane.nginx.conf",
        &[],
    )
    .await;
    let upstreams: String = REPLICA_HOSTS
        .iter()
        .map(|host| format!("server {}:8080;\n        ", net.ip(*host)))
        .collect();
    net.nginx(
        "ingress",
        INGRESS_HOST,
        "ingress.nginx.conf",
        &[
            ("@AGENT_AUTH_UPSTREAMS@", upstreams),
            (
                "@CONTROL_PLANE@",
                format!("{}:8080", net.ip(CONTROL_PLANE_HOST)),
            ),
        ],
    )
    .await;
    let ingress = format!("http://{}", net.ip(INGRESS_HOST));
    let up = eventually(Duration::from_secs(30), async || {
        http_get(&format!("{ingress}/api/v2/buildinfo")).await.0 == 200
    })
    .await;
    if !up {
        let logs = podman(&["logs", &net.name("ingress")]).await;
        panic!("the ingress never answered: {}", text(&logs));
    }
    let (_, body) = http_get(&format!("{ingress}/api/v2/buildinfo")).await;
    assert_eq!(body, r#"{"served_by":"control-plane stand-in"}"#);
    assert_eq!(
        coder_login(&ingress, RECORDED_DOCUMENT).await,
        (200, format!("{{\"session_token\":\"{token}\"}}"))
    );
    let forged = RECORDED_DOCUMENT.replace("t2.micro", "t2.nano");
    assert_eq!(
        coder_login(&ingress, &forged).await,
        (401, r#"{"message":"Invalid AWS identity."}"#.to_owned())
    );

    // One replica stopped (SIGTERM, as a rollout or a drained node does) while 8 agents log in
    // through the ingress: only requests in flight on it may fail.
    let callers = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = logins_through(format!("{ingress}{AWS_PATH}"), callers, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let stopped = podman(&["stop", "--time", "20", &format!("{name}-pod-1-agent-auth")]).await;
    let stop_took = started.elapsed();
    assert!(stopped.status.success(), "{}", text(&stopped));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut done, mut failed) = (0, 0);
    for worker in workers {
        let (d, f) = worker.await.unwrap();
        done += d;
        failed += f;
    }
    eprintln!(
        "replica stopped in {stop_took:?} while {done} logins ran through the ingress: {failed} failed"
    );
    assert!(done > 100, "too few logins ran: {done}");
    assert!(
        failed <= callers as u64,
        "{failed} of {done} logins failed: more than the {callers} that can be in flight"
    );

    // The database cut off while logins run against the remaining replica: they fail with
    // UNAVAILABLE, /readyz turns 503; back on the network, logins return without a restart.
    let ip = net.ip(REPLICA_HOSTS[0]);
    let readyz = format!("http://{ip}:9090/readyz");
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (grpc, done) = (format!("http://{ip}:50051"), done.clone());
            tokio::spawn(async move {
                // A deadline well past any the server sets, so its own answer is what is seen.
                let channel = agent_auth::client::connect(&grpc, Duration::from_secs(30))
                    .await
                    .unwrap();
                let mut calls = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let began = start.elapsed();
                    let answer = agent_auth::client::authenticate(
                        channel.clone(),
                        aws_request(RECORDED_DOCUMENT, RECORDED_SIGNATURE, ""),
                    )
                    .await;
                    let code = answer.as_ref().err().map(tonic::Status::code);
                    calls.push(Call {
                        began,
                        took: start.elapsed() - began,
                        code,
                    });
                    if code.is_some() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                calls
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let postgres = net.name("postgres");
    let disconnect = podman(&["network", "disconnect", &net.prefix, &postgres]).await;
    let cut = start.elapsed();
    assert!(disconnect.status.success(), "{}", text(&disconnect));
    let unready = answers(&readyz, 503, Duration::from_secs(30)).await;
    let unready_after = start.elapsed() - cut;
    assert!(
        unready,
        "/readyz never turned 503 with the database cut off"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let reconnect = podman(&[
        "network",
        "connect",
        "--ip",
        &net.ip(POSTGRES_HOST),
        &net.prefix,
        &postgres,
    ])
    .await;
    assert!(reconnect.status.success(), "{}", text(&reconnect));
    let back = start.elapsed();
    let ready = answers(&readyz, 200, Duration::from_secs(60)).await;
    let ready_after = start.elapsed() - back;
    assert!(
        ready,
        "/readyz never returned to 200 after the database came back"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for caller in callers {
        calls.extend(caller.await.unwrap());
    }
    let outage = DatabaseOutage::of(&calls, cut, back);
    eprintln!(
        "database cut off: /readyz 503 after {unready_after:?}, {outage:?}; back: /readyz 200 \
         after {ready_after:?}"
    );
    assert!(unready_after < Duration::from_secs(10), "{unready_after:?}");
    assert_eq!(outage.before_cut_failed, 0, "{outage:?}");
    assert!(outage.other_codes.is_empty(), "{outage:?}");
    assert!(outage.unavailable > 0, "{outage:?}");
    // Calls placed before the connections stalled wait at most the checkout timeout and the
    // statement timeout (1 s + 2 s); later ones find every connection stalled and fail at the
    // checkout timeout (1 s).
    assert!(
        outage.slowest_in_flight < Duration::from_secs(8),
        "{outage:?}"
    );
    assert!(
        outage.slowest_later < Duration::from_millis(2500),
        "{outage:?}"
    );
    let logins_back = outage
        .first_success_after_back
        .expect("no login succeeded after the database came back");
    assert!(logins_back < Duration::from_secs(30), "{outage:?}");
}

/// The sidecar overlay as a pod: agent-auth beside the control plane, gRPC on the shared unix
/// socket. Its probes pass (the startup probe's command inside it, readiness and liveness on the
/// pod's address), and the control-plane stand-in, another container of the pod running as the
/// control plane's uid, gets the agent's token over the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_pod_serves_the_control_plane_over_its_unix_socket() {
    testbed().await;
    let net = Topology::new("sidecar").await;
    let world = net.coder_database().await;
    let token = seed(&world).await;

    let mut docs = render("sidecar");
    let secret = net.name("reader");
    net.secret(&secret, &[("AGENT_AUTH_POSTGRES_URL", net.reader_url())])
        .await;
    docs.retain(|doc| doc["kind"] == "Deployment");
    let name = net.name("coder");
    let pod_ip = net.ip(SIDECAR_POD_HOST);
    let probes = for_podman(&mut docs[0], &name, &secret, &pod_ip);
    let kinds: Vec<&str> = probes.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, ["startupProbe", "readinessProbe", "livenessProbe"]);
    // The control plane: a container that stays up, with the client binary and the agent's
    // evidence mounted, as the control plane's uid (the pod's securityContext).
    let pod = &mut docs[0]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 1000);
    let coder = pod["containers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "coder")
        .unwrap();
    coder["image"] = json!(TESTBED);
    coder["command"] = json!(["sleep", "infinity"]);
    coder["volumeMounts"].as_array_mut().unwrap().extend([
        json!({"name": "test-client", "mountPath": "/opt/client/agent-auth", "readOnly": true}),
        json!({"name": "test-aws", "mountPath": "/opt/aws", "readOnly": true}),
    ]);
    pod["volumes"].as_array_mut().unwrap().extend([
        json!({"name": "test-client", "hostPath": {"path": release_binary(), "type": "File"}}),
        json!({"name": "test-aws", "hostPath": {"path": format!("{ROOT}/tests/fixtures/aws"), "type": "Directory"}}),
    ]);
    net.play(&docs, &[format!("{name}-pod-0")], &[SIDECAR_POD_HOST])
        .await;
    let pod = format!("{name}-pod-0");
    probes_pass(&probes, &pod, &pod_ip).await;

    let stand_in = format!("{pod}-coder");
    let uid = podman(&["exec", &stand_in, "id", "-u"]).await;
    assert_eq!(text(&uid).trim(), "1000");
    let login = podman(&[
        "exec",
        &stand_in,
        "/opt/client/agent-auth",
        "authenticate",
        "--server",
        "unix:/run/agent-auth/agent-auth.sock",
        "--aws-document",
        "/opt/aws/us-east-1-document.json",
        "--aws-signature",
        "/opt/aws/us-east-1-signature.txt",
    ])
    .await;
    assert!(login.status.success(), "{}", text(&login));
    assert!(
        text(&login).contains(&format!("session_token: {token}")),
        "{}",
        text(&login)
    );
    // The socket is the only gRPC listener: nothing answers gRPC on the pod's address.
    let tcp = agent_auth::client::is_serving(
        &format!("http://{pod_ip}:50051"),
        "",
        Duration::from_secs(2),
    )
    .await;
    assert!(tcp.is_err(), "gRPC answered over TCP: {tcp:?}");
}
