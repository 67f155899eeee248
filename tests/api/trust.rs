//! Built-in trust against real evidence, operator certificates for the newest regions, live
//! reload on SIGHUP through the binary, and `agent-auth trust`.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::helpers::*;
use agent_auth::grpc::pb;

/// One real EC2 document from `tests/fixtures/aws-real` with the proofs it has.
struct RealVector {
    folder: &'static str,
    region: &'static str,
    instance: &'static str,
    document: String,
    signature: Option<String>,
    rsa2048: Option<String>,
}

const REAL: &[(&str, &str, &str)] = &[
    (
        "us-east-2-i-075f088c72ad3271c",
        "us-east-2",
        "i-075f088c72ad3271c",
    ),
    (
        "us-west-2-i-078517ca8a70a1dde",
        "us-west-2",
        "i-078517ca8a70a1dde",
    ),
    (
        "ap-southeast-2-i-050c2e3dd07033e9e",
        "ap-southeast-2",
        "i-050c2e3dd07033e9e",
    ),
];

fn real_vectors() -> Vec<RealVector> {
    let read = |folder: &str, file: &str| {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/aws-real/{folder}/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .ok()
    };
    REAL.iter()
        .map(|(folder, region, instance)| RealVector {
            folder,
            region,
            instance,
            document: read(folder, "document.json").unwrap(),
            signature: read(folder, "signature.b64"),
            rsa2048: read(folder, "rsa2048.b64"),
        })
        .collect()
}

/// `(form, request)` for every proof the vector has.
fn requests(vector: &RealVector) -> Vec<(&'static str, pb::AuthenticateRequest)> {
    let request = |signature: &str, rsa2048: &str| pb::AuthenticateRequest {
        identity: Some(pb::authenticate_request::Identity::Aws(
            pb::AwsInstanceIdentity {
                document: vector.document.clone(),
                signature: signature.into(),
                rsa2048: rsa2048.into(),
            },
        )),
        agent_name: String::new(),
    };
    let mut out = Vec::new();
    if let Some(signature) = &vector.signature {
        out.push(("signature", request(signature, "")));
    }
    if let Some(rsa2048) = &vector.rsa2048 {
        out.push(("rsa2048", request("", rsa2048)));
    }
    out
}

#[tokio::test]
async fn every_real_aws_vector_authenticates_with_built_in_trust_in_every_form_it_has() {
    let db = TestDb::migrated().await;
    let vectors = real_vectors();
    let mut tokens = Vec::new();
    for vector in &vectors {
        tokens.push(seed_agent(&db, vector.instance).await.token);
    }
    // No trust flag at all.
    let app = TestServer::in_process(&db, |_| {}).await;
    let mut forms = 0;
    for (vector, token) in vectors.iter().zip(&tokens) {
        for (form, request) in requests(vector) {
            let response = app.authenticate(request).await.unwrap_or_else(|s| {
                panic!(
                    "{} ({form}): {}",
                    vector.folder,
                    agent_auth::client::describe(&s)
                )
            });
            assert_eq!(
                response.session_token,
                token.to_string(),
                "{}",
                vector.folder
            );
            assert_eq!(response.instance_id, vector.instance);
            forms += 1;
        }
    }
    // 3 documents: us-east-2 in both forms, us-west-2 rsa2048, ap-southeast-2 signature.
    assert_eq!(forms, 4);
}

#[tokio::test]
async fn each_real_vector_fails_when_its_regions_key_is_replaced_by_a_generated_one() {
    let db = TestDb::migrated().await;
    let vectors = real_vectors();
    for vector in &vectors {
        seed_agent(&db, vector.instance).await;
    }
    let (small, large) = (AwsKey::generate(1024), AwsKey::generate(2048));
    let signature_flags: Vec<String> = vectors.iter().map(|v| small.flag(v.region)).collect();
    let rsa2048_flags: Vec<String> = vectors.iter().map(|v| large.flag(v.region)).collect();
    let app = TestServer::in_process(&db, |c| {
        c.aws.aws_certificate = values(&signature_flags);
        c.aws.aws_rsa2048_certificate = values(&rsa2048_flags);
    })
    .await;
    for vector in &vectors {
        for (form, request) in requests(vector) {
            let (code, reason, message) = failure(app.authenticate(request).await);
            assert_eq!(
                (code, reason.as_str(), message.as_str()),
                (
                    Code::Unauthenticated,
                    "INVALID_IDENTITY",
                    "Invalid AWS identity."
                ),
                "{} ({form})",
                vector.folder
            );
        }
    }
}

/// The seven regions most implementations have no key for.
const NEWEST_REGIONS: &[&str] = &[
    "ap-east-2",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-west-1",
    "mx-central-1",
    "eusc-de-east-1",
];

#[tokio::test]
async fn the_seven_newest_regions_take_an_operator_certificate_and_a_foreign_key_fails_naming_the_region()
 {
    let db = TestDb::migrated().await;
    let keys: Vec<AwsKey> = NEWEST_REGIONS
        .iter()
        .map(|_| AwsKey::generate(1024))
        .collect();
    let mut cases = Vec::new();
    for region in NEWEST_REGIONS {
        let instance = instance_id();
        let agent = seed_agent(&db, &instance).await;
        cases.push((
            *region,
            aws_document(&instance, region, "123456789012"),
            agent,
        ));
    }
    let flags: Vec<String> = NEWEST_REGIONS
        .iter()
        .zip(&keys)
        .map(|(region, key)| key.flag(region))
        .collect();
    let app = TestServer::in_process(&db, |c| c.aws.aws_certificate = values(&flags)).await;
    for ((region, document, agent), key) in cases.iter().zip(&keys) {
        let response = success(
            app.authenticate(aws_request(document, &key.sign(document), ""))
                .await,
        );
        assert_eq!(response.session_token, agent.token.to_string(), "{region}");
    }
    app.stop().await;

    // Without the operator's certificate the region's built-in key is used, and a document
    // signed by another key fails; the log line names the region and where the key came from.
    let server = TestServer::binary(&db, &[]).await;
    for ((region, document, _), key) in cases.iter().zip(&keys) {
        let result = agent_auth::client::authenticate(
            server.channel().await,
            aws_request(document, &key.sign(document), ""),
        )
        .await;
        let (code, reason, _) = failure(result);
        assert_eq!(
            (code, reason.as_str()),
            (Code::Unauthenticated, "INVALID_IDENTITY"),
            "{region}"
        );
    }
    // A region AWS has not listed: no key at all, and the log says which flag adds one.
    let unknown = aws_document(&instance_id(), "xx-future-1", "123456789012");
    let key = &keys[0];
    let result = agent_auth::client::authenticate(
        server.channel().await,
        aws_request(&unknown, &key.sign(&unknown), ""),
    )
    .await;
    assert_eq!(failure(result).1, "INVALID_IDENTITY");
    let (_, log) = server.terminate().await;
    for region in NEWEST_REGIONS {
        assert!(
            log.contains(&format!(
                "AWS signature key for region {region}: pinned as {region}, built-in"
            )),
            "the log does not name {region}:\n{log}"
        );
    }
    assert!(
        log.contains("--aws-certificate xx-future-1=PEM_PATH"),
        "the log does not name the flag for an unknown region:\n{log}"
    );
}

/// Through the binary: a replaced trust file takes effect on SIGHUP without a restart; a
/// broken one keeps the previous set, the process alive and ready, and counts one error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_in_a_replaced_certificate_and_a_broken_file_keeps_the_old_set() {
    let db = TestDb::migrated().await;
    let instance = instance_id();
    let agent = seed_agent(&db, &instance).await;
    let document = aws_document(&instance, "us-east-1", "123456789012");
    let (old, new) = (AwsKey::generate(1024), AwsKey::generate(1024));
    let dir = tempfile::tempdir().unwrap();
    let trust_file = dir.path().join("aws.pem");
    std::fs::copy(&old.pem_path, &trust_file).unwrap();
    let flag = format!("default={}", trust_file.display());
    let server = TestServer::binary(&db, &["--aws-certificate", &flag]).await;
    let login = async |key: &AwsKey| {
        agent_auth::client::authenticate(
            server.channel().await,
            aws_request(&document, &key.sign(&document), ""),
        )
        .await
    };
    assert_eq!(
        success(login(&old).await).session_token,
        agent.token.to_string()
    );
    assert_eq!(failure(login(&new).await).1, "INVALID_IDENTITY");

    std::fs::copy(&new.pem_path, &trust_file).unwrap();
    let sent = Instant::now();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let swapped = eventually(Duration::from_secs(1), async || login(&new).await.is_ok()).await;
    let latency = sent.elapsed();
    assert!(
        swapped,
        "the new key did not pass within a second of SIGHUP"
    );
    println!("trust reload latency (SIGHUP to first login with the new key): {latency:?}");
    assert_eq!(failure(login(&old).await).1, "INVALID_IDENTITY");

    std::fs::write(&trust_file, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let counted = eventually(Duration::from_secs(5), async || {
        let (_, text) = http_get(&format!("{}/metrics", server.admin_url)).await;
        metric_sum(
            &text,
            "agent_auth_trust_reloads_total",
            &[("result", "error")],
        ) == Some(1.0)
    })
    .await;
    assert!(counted, "the failed reload was not counted");
    assert_eq!(
        success(login(&new).await).session_token,
        agent.token.to_string()
    );
    assert_eq!(
        http_get(&format!("{}/readyz", server.admin_url)).await.0,
        200
    );
    let (_, text) = http_get(&format!("{}/metrics", server.admin_url)).await;
    assert_eq!(
        metric_sum(&text, "agent_auth_trust_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
    assert!(
        log.contains("trust reload failed") && log.contains(&trust_file.display().to_string()),
        "the failed reload's log line does not name the file:\n{log}"
    );
}

/// `agent-auth trust ARGS`, its GCP keys from `jwks` (a loopback JWKS server: the command
/// fetches a remote JWKS, and tests never reach Google).
async fn trust_command(jwks: &str, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(server_binary());
    command.args(["trust", "--gcp-jwks", jwks]).args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// A JWKS server on loopback with one key, `kid`.
async fn jwks_server(kid: &str) -> crate::gcp::JwksServer {
    let key = crate::gcp::GcpKey::generate(kid);
    crate::gcp::JwksServer::start(vec![key.jwk.clone()], 300).await
}

#[tokio::test]
async fn the_trust_command_lists_every_region_in_both_forms_and_every_built_in_azure_ca() {
    let jwks = jwks_server("trust-test-key").await;
    let output = trust_command(&jwks.url, &["--json"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("").to_owned();
    for form in ["signature", "rsa2048"] {
        let regions: std::collections::BTreeSet<String> = listed
            .iter()
            .filter(|v| field(v, "cloud") == "aws" && field(v, "role").ends_with(form))
            .map(|v| field(v, "role"))
            .collect();
        assert_eq!(regions.len(), 39, "{form}: {regions:?}");
        assert!(regions.contains(&format!("eusc-de-east-1 {form}")));
    }
    let azure_files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/identity/roots/azure"
    ))
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pem"))
    })
    .count();
    let azure: Vec<&serde_json::Value> = listed
        .iter()
        .filter(|v| field(v, "cloud") == "azure")
        .collect();
    assert_eq!(azure.len(), azure_files);
    assert_eq!(azure_files, 30);
    for cn in [
        "Microsoft TLS G2 RSA CA OCSP 16",
        "Microsoft TLS RSA Root G2",
        "DigiCert TLS ECC P384 Root G5",
        "Microsoft RSA Root Certificate Authority 2017",
    ] {
        assert!(
            azure.iter().any(|v| field(v, "subject") == cn),
            "{cn} missing"
        );
    }
    assert!(
        listed
            .iter()
            .all(|v| field(v, "source") == "built-in" || field(v, "cloud") == "gcp")
    );
    assert!(
        listed
            .iter()
            .filter(|v| field(v, "cloud") != "gcp")
            .all(|v| field(v, "sha256").len() == 64)
    );

    // GCP: the key fetched now from the JWKS server, in force.
    let gcp: Vec<&serde_json::Value> = listed
        .iter()
        .filter(|v| field(v, "cloud") == "gcp")
        .collect();
    assert_eq!(gcp.len(), 1, "{gcp:?}");
    assert_eq!(field(gcp[0], "subject"), "trust-test-key");
    assert_eq!(field(gcp[0], "source"), jwks.url);
    // In force: every AWS certificate and GCP key, the Azure certificates not yet expired.
    let replay_only: Vec<&serde_json::Value> =
        listed.iter().filter(|v| v["in_force"] == false).collect();
    assert!(
        replay_only.iter().all(|v| field(v, "cloud") == "azure"),
        "{replay_only:?}"
    );

    // The table names the same things, one line each plus a header, then where the GCP keys
    // come from and what is in force.
    let table = trust_command(&jwks.url, &[]).await;
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("CLOUD"), "{text}");
    assert!(text.contains("ca-west-1 rsa2048"));
    assert_eq!(text.lines().count(), listed.len() + 3, "{text}");
    let mut tail = text.lines().rev();
    let (summary, gcp_line) = (tail.next().unwrap(), tail.next().unwrap());
    assert!(
        gcp_line.starts_with(&format!("gcp: 1 JWKS keys from {}: fetched now", jwks.url)),
        "{gcp_line}"
    );
    assert!(
        summary.contains(&format!(
            "kept only to replay recorded documents (expired, never trusted for a new login): {} Azure certificates",
            replay_only.len()
        )),
        "{summary}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("(expired: replay only)"))
            .count(),
        replay_only.len()
    );
}

/// A GCP JWKS that cannot be fetched is a warning and exit 1: GCP logins would all fail. An
/// empty file is the operator turning GCP off.
#[tokio::test]
async fn the_trust_command_warns_when_gcp_has_no_keys() {
    let closed = free_port();
    let url = format!("http://127.0.0.1:{closed}/oauth2/v3/certs");
    let output = trust_command(&url, &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("warning: gcp: cannot fetch the JWKS from {url}")),
        "{stderr}"
    );
    // An empty JWKS file is GCP turned off: said on stdout, no warning, exit 0.
    let empty = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gcp/empty-jwks.json"
    );
    let output = trust_command(empty, &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("gcp: no key in {empty}")) && stdout.contains("GCP is off"),
        "{stdout}"
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_trust_command_applies_the_flags_and_exits_1_for_a_certificate_expiring_within_30_days()
{
    let jwks = jwks_server("k").await;
    let key = crate::pki::rsa(1024);
    let soon = crate::pki::certificate(
        &crate::pki::Spec {
            days: (0, 10),
            ..crate::pki::Spec::new("ec2.amazonaws.com")
        },
        &key,
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("soon.pem");
    std::fs::write(&path, soon.to_pem().unwrap()).unwrap();
    let flag = format!("ca-west-1={}", path.display());
    let output = trust_command(&jwks.url, &["--aws-certificate", &flag]).await;
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("ca-west-1 signature") && l.contains(&path.display().to_string())),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: aws ec2.amazonaws.com (ca-west-1, signature)")
            && stderr.contains("within 30 days"),
        "{stderr}"
    );
}

/// The third review's finding 8: an AWS certificate file holding one whole certificate and then
/// half of another (a rewrite caught mid-way, or a file cut short) loaded as the first alone.
/// Every PEM trust file goes through one strict reader now: the command refuses it, naming the
/// file and why, and so does a file of random bytes (which was called "truncated").
#[tokio::test]
async fn an_aws_certificate_file_with_half_a_second_certificate_is_refused() {
    let server = jwks_server("k").await;
    let (first, second) = (AwsKey::generate(1024), AwsKey::generate(1024));
    let second_pem = second.certificate.to_pem().unwrap();
    let mut cut = first.certificate.to_pem().unwrap();
    cut.extend_from_slice(&second_pem[..second_pem.len() / 2]);
    let dir = tempfile::tempdir().unwrap();
    let (cut_path, random_path) = (dir.path().join("cut.pem"), dir.path().join("random.pem"));
    std::fs::write(&cut_path, &cut).unwrap();
    std::fs::write(&random_path, [0x8f_u8, 0x01, 0xfe, 0x42, 0x00, 0x13]).unwrap();
    for (path, why) in [(&cut_path, "cut short"), (&random_path, "not PEM")] {
        let flag = format!("default={}", path.display());
        let output = trust_command(&server.url, &["--aws-certificate", &flag]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{}: {stderr}", path.display());
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        assert!(stderr.contains(why), "{why:?} not in {stderr}");
    }
}
