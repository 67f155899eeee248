//! Azure attested documents end to end: the four recorded documents, and chains generated here
//! (root → intermediate → leaf) for every way a document can be wrong.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use tonic::Code;

use crate::helpers::*;
use agent_auth::grpc::pb;

const RECORDED: &[(&str, &str, &str)] = &[
    (
        "azure-attested-2022-regular.b64",
        "bd8e7443-24a0-41f3-b949-8baf4fd1c573",
        "2022-04-19T02:27:21Z",
    ),
    (
        "azure-attested-2023-govcloud.b64",
        "990878d4-068a-4ac4-9ee9-1231d2218ef2",
        "2023-03-08T18:09:33Z",
    ),
    (
        "azure-attested-2024-rsa.b64",
        "960a4b4a-dab2-44ef-9b73-7753043b4f16",
        "2024-04-22T18:32:45Z",
    ),
    (
        "azure-attested-2026-g2-regular.b64",
        "dc18de58-292f-4794-9a5d-a4192bad0039",
        "2026-06-25T19:56:45Z",
    ),
];

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/azure/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn azure_request(signature: &str) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        identity: Some(pb::authenticate_request::Identity::Azure(
            pb::AzureInstanceIdentity {
                signature: signature.into(),
                encoding: "pkcs7".into(),
            },
        )),
        agent_name: String::new(),
    }
}

/// The recorded roots: DigiCert Global Root G2 (built in) and the expired Baltimore root.
fn recorded_roots(dir: &std::path::Path) -> String {
    let path = dir.join("roots.pem");
    let g2 = std::fs::read_to_string(format!(
        "{}/src/identity/roots/azure/digicert-global-root-g2.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    std::fs::write(
        &path,
        format!("{g2}\n{}", fixture("baltimore-cybertrust-root.pem")),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn the_four_recorded_documents_authenticate_at_their_verify_times() {
    let dir = tempfile::tempdir().unwrap();
    let roots = recorded_roots(dir.path());
    for (file, vm_id, verify_at) in RECORDED {
        let db = TestDb::migrated().await;
        let agent = seed_agent(&db, vm_id).await;
        let roots = roots.clone();
        let app = TestApp::spawn(&db, |c| {
            c.azure_roots = Some(roots);
            c.insecure_verify_time = Some((*verify_at).into());
        })
        .await;
        let response = success(app.authenticate(azure_request(&fixture(file))).await);
        assert_eq!(response.session_token, agent.token.to_string(), "{file}");
        assert_eq!(response.instance_id, *vm_id);
        assert_eq!(response.cloud, pb::Cloud::Azure as i32);
    }
}

#[tokio::test]
async fn recorded_documents_fail_past_expires_on_and_after_the_leaf_expired() {
    let cases = [
        ("azure-attested-2022-regular.b64", "2022-04-19T08:00:00Z"),
        ("azure-attested-2023-govcloud.b64", "2023-03-09T00:00:00Z"),
        ("azure-attested-2024-rsa.b64", "2024-04-23T00:00:00Z"),
        ("azure-attested-2026-g2-regular.b64", "2026-06-26T02:00:00Z"),
        ("azure-attested-2026-g2-regular.b64", "2027-01-01T00:00:00Z"),
        // Before createdOn: Coder's pinned time for the 2026 test is 19 h early.
        ("azure-attested-2026-g2-regular.b64", "2026-06-25T00:00:00Z"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let roots = recorded_roots(dir.path());
    for (file, at) in cases {
        let db = TestDb::migrated().await;
        let roots = roots.clone();
        let app = TestApp::spawn(&db, |c| {
            c.azure_roots = Some(roots);
            c.insecure_verify_time = Some(at.into());
        })
        .await;
        let (code, reason, message) =
            failure(app.authenticate(azure_request(&fixture(file))).await);
        assert_eq!(
            (code, reason.as_str(), message.as_str()),
            (
                Code::Unauthenticated,
                "INVALID_IDENTITY",
                "Invalid Azure identity."
            ),
            "{file} at {at}"
        );
    }
}

/// A generated CA hierarchy that signs Azure-style attested documents.
struct Pki {
    intermediate: X509,
    intermediate_key: PKey<Private>,
    dir: tempfile::TempDir,
}

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn certificate(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    days: (i64, i64),
    san: Option<&str>,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let serial = openssl::bn::BigNum::from_u32(rand_u32())
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    builder.set_serial_number(&serial).unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_pubkey(key).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    builder
        .set_not_before(&Asn1Time::from_unix(now + days.0 * 86_400).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::from_unix(now + days.1 * 86_400).unwrap())
        .unwrap();
    if ca {
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    }
    if let Some(san) = san {
        let ext = SubjectAlternativeName::new()
            .dns(san)
            .build(&builder.x509v3_context(issuer.map(|i| &**i.0), None))
            .unwrap();
        builder.append_extension(ext).unwrap();
    }
    match issuer {
        Some((issuer, issuer_key)) => {
            builder.set_issuer_name(issuer.subject_name()).unwrap();
            builder.sign(issuer_key, MessageDigest::sha256()).unwrap();
        }
        None => {
            builder.set_issuer_name(&name).unwrap();
            builder.sign(key, MessageDigest::sha256()).unwrap();
        }
    }
    builder.build()
}

fn rand_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32 >> 1
}

impl Pki {
    fn new() -> Self {
        let root_key = key();
        let root = certificate("Test Root", &root_key, None, true, (-10, 3650), None);
        let intermediate_key = key();
        let intermediate = certificate(
            "Test Issuing CA",
            &intermediate_key,
            Some((&root, &root_key)),
            true,
            (-10, 3650),
            None,
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("roots.pem"), root.to_pem().unwrap()).unwrap();
        std::fs::write(
            dir.path().join("intermediates.pem"),
            intermediate.to_pem().unwrap(),
        )
        .unwrap();
        Self {
            intermediate,
            intermediate_key,
            dir,
        }
    }

    fn roots(&self) -> String {
        self.dir.path().join("roots.pem").display().to_string()
    }

    fn intermediates(&self) -> String {
        self.dir
            .path()
            .join("intermediates.pem")
            .display()
            .to_string()
    }

    /// A leaf under the intermediate.
    fn leaf(&self, cn: &str, san: Option<&str>, days: (i64, i64)) -> (X509, PKey<Private>) {
        let leaf_key = key();
        let leaf = certificate(
            cn,
            &leaf_key,
            Some((&self.intermediate, &self.intermediate_key)),
            false,
            days,
            san,
        );
        (leaf, leaf_key)
    }

    /// Base64 PKCS#7 with the content attached and only the leaf embedded, as IMDS sends it.
    fn sign(&self, content: &str, leaf: &(X509, PKey<Private>)) -> String {
        let pkcs7 = Pkcs7::sign(
            &leaf.0,
            &leaf.1,
            &Stack::new().unwrap(),
            content.as_bytes(),
            Pkcs7Flags::BINARY,
        )
        .unwrap();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(pkcs7.to_der().unwrap())
    }
}

/// IMDS's `MM/DD/YY HH:MM:SS -0000` for now + `offset` seconds.
fn imds_time(offset: i64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + offset;
    let formatted =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t as u64)).to_string();
    // 2026-11-23T08:00:00Z
    let (y, m, d, time) = (
        &formatted[2..4],
        &formatted[5..7],
        &formatted[8..10],
        &formatted[11..19],
    );
    format!("{m}/{d}/{y} {time} -0000")
}

fn content(vm_id: &str, subscription: &str, created: i64, expires: i64) -> String {
    format!(
        r#"{{"licenseType":"","nonce":"20261123-080000","plan":{{"name":"","product":"","publisher":""}},"sku":"22_04-lts-gen2","subscriptionId":"{subscription}","timeStamp":{{"createdOn":"{}","expiresOn":"{}"}},"vmId":"{vm_id}"}}"#,
        imds_time(created),
        imds_time(expires)
    )
}

#[tokio::test]
async fn generated_chains_authenticate_and_every_defect_is_invalid_identity_without_sql() {
    let pki = Pki::new();
    let other = Pki::new();
    let db = TestDb::migrated().await;
    let vm_id = uuid::Uuid::new_v4().to_string();
    let agent = seed_agent(&db, &vm_id).await;
    let subscription = "8d10da13-8125-4ba9-a717-bf7490507b3d";
    let (roots, intermediates) = (pki.roots(), pki.intermediates());
    let app = TestApp::spawn(&db, |c| {
        c.azure_roots = Some(roots);
        c.azure_intermediates = Some(intermediates);
        c.azure_allowed_subscription = vec![subscription.into()];
    })
    .await;

    let good_leaf = pki.leaf(
        "metadata.azure.com",
        Some("eastus.metadata.azure.com"),
        (-1, 180),
    );
    let good = content(&vm_id, subscription, -3600, 5 * 3600);
    let response = success(
        app.authenticate(azure_request(&pki.sign(&good, &good_leaf)))
            .await,
    );
    assert_eq!(response.session_token, agent.token.to_string());
    let subdomain = pki.leaf("westeurope.metadata.azure.com", None, (-1, 180));
    success(
        app.authenticate(azure_request(&pki.sign(&good, &subdomain)))
            .await,
    );

    let signed = pki.sign(&good, &good_leaf);
    let tampered = {
        use base64::Engine as _;
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(&signed)
            .unwrap();
        let at = der
            .windows(vm_id.len())
            .position(|w| w == vm_id.as_bytes())
            .unwrap();
        der[at] = if der[at] == b'0' { b'1' } else { b'0' };
        base64::engine::general_purpose::STANDARD.encode(der)
    };
    let cases: Vec<(&str, String)> = vec![
        ("tampered content", tampered),
        (
            "untrusted root",
            other.sign(&good, &other.leaf("metadata.azure.com", None, (-1, 180))),
        ),
        (
            "wrong signer CN",
            pki.sign(&good, &pki.leaf("metadata.azure.evil.com", None, (-1, 180))),
        ),
        (
            "CN right but SAN wrong",
            pki.sign(
                &good,
                &pki.leaf(
                    "metadata.azure.com",
                    Some("attacker.example.com"),
                    (-1, 180),
                ),
            ),
        ),
        (
            "expiresOn past",
            pki.sign(
                &content(&vm_id, subscription, -8 * 3600, -2 * 3600),
                &good_leaf,
            ),
        ),
        (
            "createdOn in the future",
            pki.sign(&content(&vm_id, subscription, 3600, 7 * 3600), &good_leaf),
        ),
        (
            "leaf expired",
            pki.sign(&good, &pki.leaf("metadata.azure.com", None, (-30, -1))),
        ),
        (
            "empty vmId",
            pki.sign(&content("", subscription, -3600, 3600), &good_leaf),
        ),
        (
            "subscription not allowed",
            pki.sign(
                &content(&vm_id, "00000000-0000-0000-0000-000000000000", -3600, 3600),
                &good_leaf,
            ),
        ),
        ("content is not JSON", pki.sign("not json", &good_leaf)),
        ("garbage", "bm90IGEgcGtjczc=".into()),
        ("not base64", "***".into()),
        ("truncated", signed[..signed.len() / 2].to_owned()),
    ];
    for (case, signature) in cases {
        db.reset_statements().await;
        let (code, reason, message) = failure(app.authenticate(azure_request(&signature)).await);
        assert_eq!(
            (code, reason.as_str()),
            (Code::Unauthenticated, "INVALID_IDENTITY"),
            "{case}"
        );
        assert_eq!(
            message, "Invalid Azure identity.",
            "{case}: no verifier detail may leak"
        );
        assert_eq!(
            db.statements().await,
            0,
            "{case}: no SQL before verification"
        );
    }

    let (code, reason, _) = failure(
        app.authenticate(azure_request(&"A".repeat(64 * 1024 + 1)))
            .await,
    );
    assert_eq!(
        (code, reason.as_str()),
        (Code::InvalidArgument, "MALFORMED_REQUEST"),
        "oversized"
    );
    let mut wrong_encoding = azure_request(&signed);
    if let Some(pb::authenticate_request::Identity::Azure(azure)) = &mut wrong_encoding.identity {
        azure.encoding = "json".into();
    }
    let (code, _, _) = failure(app.authenticate(wrong_encoding).await);
    assert_eq!(code, Code::InvalidArgument, "unknown encoding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticate_command_sends_an_azure_document() {
    let (file, vm_id, verify_at) = RECORDED[3];
    let db = TestDb::migrated().await;
    let agent = seed_agent(&db, vm_id).await;
    let app = TestApp::spawn(&db, |c| c.insecure_verify_time = Some(verify_at.into())).await;
    let path = format!("{}/tests/fixtures/azure/{file}", env!("CARGO_MANIFEST_DIR"));
    assert_authenticate_command_prints(&app.grpc_url, &["--azure-signature", &path], agent.token)
        .await;
}

/// With `--azure-fetch-issuers`, an incomplete chain makes the server look at the signer's AIA
/// URLs, and a URL off the allow-list (here: loopback) is never requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_fetching_never_requests_a_url_off_the_allow_list() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "not a certificate"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let pki = Pki::new();
    let leaf_key = key();
    #[allow(deprecated)]
    let leaf = {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "metadata.azure.com")
            .unwrap();
        let name = name.build();
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        builder.set_subject_name(&name).unwrap();
        builder
            .set_issuer_name(pki.intermediate.subject_name())
            .unwrap();
        builder.set_pubkey(&leaf_key).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        builder
            .set_not_before(&Asn1Time::from_unix(now - 86_400).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::from_unix(now + 86_400).unwrap())
            .unwrap();
        let aia = openssl::x509::X509Extension::new_nid(
            None,
            None,
            openssl::nid::Nid::INFO_ACCESS,
            &format!("caIssuers;URI:http://{addr}/issuer.crt"),
        )
        .unwrap();
        builder.append_extension(aia).unwrap();
        builder
            .sign(&pki.intermediate_key, MessageDigest::sha256())
            .unwrap();
        builder.build()
    };
    let db = TestDb::migrated().await;
    let vm_id = uuid::Uuid::new_v4().to_string();
    seed_agent(&db, &vm_id).await;
    let roots = pki.roots();
    let app = TestApp::spawn(&db, |c| {
        c.azure_roots = Some(roots);
        c.azure_fetch_issuers = true;
    })
    .await;
    let signature = pki.sign(&content(&vm_id, "s", -60, 3600), &(leaf, leaf_key));
    let (code, reason, message) = failure(app.authenticate(azure_request(&signature)).await);
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (
            Code::Unauthenticated,
            "INVALID_IDENTITY",
            "Invalid Azure identity."
        )
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a loopback AIA URL must not be fetched"
    );
}
