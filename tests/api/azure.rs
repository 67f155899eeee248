//! Azure attested documents end to end: the four recorded documents, and chains generated here
//! (root → intermediate → leaf) for every way a document can be wrong.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::X509;
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

/// The expired Baltimore root, the only root the 2022 document chains to (it is not built in).
fn baltimore_roots(dir: &std::path::Path) -> String {
    let path = dir.join("baltimore.pem");
    std::fs::write(&path, fixture("baltimore-cybertrust-root.pem")).unwrap();
    path.display().to_string()
}

/// The recorded roots for the older tests: DigiCert Global Root G2 and Baltimore.
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

/// Built-in trust alone carries the 2023, 2024 and 2026 documents; the 2022 one needs only
/// the expired Baltimore root, given by the operator.
#[tokio::test]
async fn the_four_recorded_documents_authenticate_at_their_verify_times_with_built_in_trust() {
    let dir = tempfile::tempdir().unwrap();
    let baltimore = baltimore_roots(dir.path());
    for (file, vm_id, verify_at) in RECORDED {
        let db = TestDb::migrated().await;
        let agent = seed_agent(&db, vm_id).await;
        let roots = file.contains("2022").then(|| baltimore.clone());
        let app = TestServer::in_process(&db, |c| {
            c.azure.azure_roots = roots.map(value);
            c.insecure_verify_time = Some(value(verify_at));
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
        let app = TestServer::in_process(&db, |c| {
            c.azure.azure_roots = Some(value(roots));
            c.insecure_verify_time = Some(value(at));
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
    crate::pki::rsa(2048)
}

fn certificate(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    days: (i64, i64),
    san: Option<&str>,
) -> X509 {
    certificate_with(cn, key, issuer, ca, days, san, None)
}

/// As [`certificate`], with an AIA "CA Issuers" URL when `aia` is given.
fn certificate_with(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    days: (i64, i64),
    san: Option<&str>,
    aia: Option<&str>,
) -> X509 {
    let dns: Vec<&str> = san.into_iter().collect();
    let spec = crate::pki::Spec {
        ca,
        days,
        dns: &dns,
        aia,
        ..crate::pki::Spec::new(cn)
    };
    crate::pki::certificate(&spec, key, issuer)
}

impl Pki {
    fn new() -> Self {
        Self::named("Test Issuing CA")
    }

    /// A root and an intermediate called `intermediate_cn`.
    fn named(intermediate_cn: &str) -> Self {
        let root_key = key();
        let root = certificate("Test Root", &root_key, None, true, (-10, 3650), None);
        let intermediate_key = key();
        let intermediate = certificate(
            intermediate_cn,
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
    let app = TestServer::in_process(&db, |c| {
        c.azure.azure_roots = Some(value(roots));
        c.azure.azure_intermediates = Some(value(intermediates));
        c.azure.azure_allowed_subscription = vec![subscription.into()];
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
    let app =
        TestServer::in_process(&db, |c| c.insecure_verify_time = Some(value(verify_at))).await;
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
    let (leaf, leaf_key) = aia_leaf(
        "metadata.azure.com",
        &format!("http://{addr}/issuer.crt"),
        Some((&pki.intermediate, &pki.intermediate_key)),
    );
    let db = TestDb::migrated().await;
    let vm_id = uuid::Uuid::new_v4().to_string();
    seed_agent(&db, &vm_id).await;
    let roots = pki.roots();
    let app = TestServer::in_process(&db, |c| {
        c.azure.azure_roots = Some(value(roots));
        c.azure.azure_fetch_issuers = value("true");
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

// ---------------------------------------------------------------------------------------------
// Issuer fetching (AIA) with a resolver stub: the allowed hosts resolve to a loopback server,
// so the real fetcher, allow-list and cache run and nothing leaves the machine.

/// Resolves every name to one loopback address and records the names asked.
#[derive(Clone)]
struct StubResolver {
    addr: std::net::SocketAddr,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for StubResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        self.asked.lock().unwrap().push(name.as_str().to_owned());
        std::future::ready(Ok(vec![self.addr].into_iter()))
    }
}

/// A loopback "PKI host" that answers every GET with `body`; returns the resolver stub that
/// points every name at it and the Host headers it was asked with.
async fn pki_host(body: Vec<u8>) -> (StubResolver, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    pki_host_with(move |_| body.clone()).await
}

/// As [`pki_host`], answering each path with `body(path)`.
async fn pki_host_with(
    body: impl Fn(&str) -> Vec<u8> + Clone + Send + Sync + 'static,
) -> (StubResolver, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::sync::{Arc, Mutex};
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let seen = hosts.clone();
    let router = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
            let (seen, body) = (seen.clone(), body.clone());
            async move {
                let host = headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.lock().unwrap().push(host);
                body(uri.path())
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let resolver = StubResolver {
        addr,
        asked: Arc::new(Mutex::new(Vec::new())),
    };
    (resolver, hosts)
}

fn issuer_fetcher(
    resolver: StubResolver,
    rate: agent_auth::issuers::FetchRate,
) -> agent_auth::issuers::IssuerFetcher<StubResolver> {
    let fetcher = agent_auth::fetch::Fetcher::with_resolver(
        resolver,
        Duration::from_secs(5),
        agent_auth::fetch::DEFAULT_MAX_BYTES,
    )
    .unwrap();
    agent_auth::issuers::IssuerFetcher::with_fetcher(fetcher, rate)
}

/// A leaf for `cn` with an AIA "CA Issuers" URL, under `issuer` or self-signed, valid from a
/// day ago to a day ahead.
fn aia_leaf(cn: &str, url: &str, issuer: Option<(&X509, &PKey<Private>)>) -> (X509, PKey<Private>) {
    let leaf_key = key();
    let leaf = certificate_with(cn, &leaf_key, issuer, false, (-1, 1), None, Some(url));
    (leaf, leaf_key)
}

fn azure_trust_with_roots(roots: String) -> agent_auth::identity::azure::AzureTrust {
    agent_auth::identity::azure::AzureTrust::load(
        &agent_auth::identity::azure::AzureTrustConfig {
            roots: Some(roots.into()),
            ..Default::default()
        },
        &agent_auth::trust::read_file,
    )
    .unwrap()
}

const CAISSUERS_URL: &str = "http://caissuers.microsoft.com/pkiops/certs/Test%20Issuing%20CA.crt";

/// coder#25418: the leaf's issuer lives on `caissuers.microsoft.com`. The fetcher asks that
/// host, and the chain then completes at the pinned root.
#[tokio::test]
async fn a_leaf_whose_issuer_is_on_caissuers_microsoft_com_completes_its_chain_by_fetching_it() {
    let pki = Pki::new();
    let (resolver, hosts) = pki_host(pki.intermediate.to_der().unwrap()).await;
    let asked = resolver.asked.clone();
    let fetcher = issuer_fetcher(resolver, Default::default());
    let trust = azure_trust_with_roots(pki.roots());
    let leaf = aia_leaf(
        "metadata.azure.com",
        CAISSUERS_URL,
        Some((&pki.intermediate, &pki.intermediate_key)),
    );
    let vm_id = uuid::Uuid::new_v4().to_string();
    let signature = pki.sign(&content(&vm_id, "s", -60, 3600), &leaf);
    let now = SystemTime::now();
    assert!(matches!(
        trust.verify(&signature, now),
        Err(agent_auth::identity::IdentityError::UntrustedChain(_))
    ));
    let fetched = found(fetcher.complete_chain(&trust, &signature).await.unwrap());
    assert_eq!(fetched.len(), 1);
    assert_eq!(*asked.lock().unwrap(), ["caissuers.microsoft.com"]);
    assert_eq!(*hosts.lock().unwrap(), ["caissuers.microsoft.com"]);
    let verified = trust.verify_with(&signature, now, &fetched).unwrap();
    assert_eq!(verified.instance_id.as_str(), vm_id);
    // The second document from the same issuer is served from the cache: no new request.
    let again = found(fetcher.complete_chain(&trust, &signature).await.unwrap());
    assert_eq!(again.len(), 1);
    assert_eq!(hosts.lock().unwrap().len(), 1);
}

/// Junk costs nothing: a self-signed "metadata.azure.com", a signer that is not Azure
/// metadata, and a signer whose issuer is already pinned make no fetch at all.
#[tokio::test]
async fn self_signed_misnamed_or_pinned_issuer_signers_make_no_fetch() {
    let pki = Pki::new();
    let (resolver, hosts) = pki_host(pki.intermediate.to_der().unwrap()).await;
    let asked = resolver.asked.clone();
    let fetcher = issuer_fetcher(resolver, Default::default());
    let vm_id = uuid::Uuid::new_v4().to_string();
    let document = content(&vm_id, "s", -60, 3600);
    let trust = azure_trust_with_roots(pki.roots());
    let self_signed = aia_leaf("metadata.azure.com", CAISSUERS_URL, None);
    let misnamed = aia_leaf(
        "evil.example.com",
        CAISSUERS_URL,
        Some((&pki.intermediate, &pki.intermediate_key)),
    );
    for leaf in [&self_signed, &misnamed] {
        let signature = pki.sign(&document, leaf);
        assert!(fetcher.complete_chain(&trust, &signature).await.is_err());
    }
    // The issuer pinned (as an intermediate) but the leaf expired: fetching cannot help.
    let pinned = agent_auth::identity::azure::AzureTrust::load(
        &agent_auth::identity::azure::AzureTrustConfig {
            roots: Some(pki.roots().into()),
            intermediates: Some(pki.intermediates().into()),
            ..Default::default()
        },
        &agent_auth::trust::read_file,
    )
    .unwrap();
    let expired = pki.leaf("metadata.azure.com", None, (-10, -1));
    let signature = pki.sign(&document, &expired);
    assert!(pinned.verify(&signature, SystemTime::now()).is_err());
    assert!(fetcher.complete_chain(&pinned, &signature).await.is_err());
    assert!(asked.lock().unwrap().is_empty());
    assert!(hosts.lock().unwrap().is_empty());
}

/// `count` documents signed under `pki`'s intermediate, each leaf naming its own AIA URL
/// (`…/certs/{name}-{i}.crt` on www.microsoft.com).
fn documents_naming_urls(pki: &Pki, document: &str, name: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let url = format!("http://www.microsoft.com/pkiops/certs/{name}-{i}.crt");
            let leaf = aia_leaf(
                "metadata.azure.com",
                &url,
                Some((&pki.intermediate, &pki.intermediate_key)),
            );
            pki.sign(document, &leaf)
        })
        .collect()
}

fn found(issuers: agent_auth::issuers::Issuers) -> Vec<X509> {
    match issuers {
        agent_auth::issuers::Issuers::Found(found) => found,
        agent_auth::issuers::Issuers::NotFound => panic!("not found"),
        agent_auth::issuers::Issuers::RateLimited => panic!("rate limited"),
    }
}

/// 100 leaves naming 100 distinct AIA URLs for one issuer cost one fetch: the issuer is
/// known by name from then on, and the cache holds only it.
#[tokio::test]
async fn a_hundred_distinct_issuer_urls_for_one_issuer_cost_one_fetch() {
    let pki = Pki::new();
    let (resolver, hosts) = pki_host(pki.intermediate.to_der().unwrap()).await;
    let fetcher = issuer_fetcher(resolver, Default::default());
    let trust = azure_trust_with_roots(pki.roots());
    let document = content(&uuid::Uuid::new_v4().to_string(), "s", -60, 3600);
    for i in 0..100 {
        let url = format!("http://www.microsoft.com/pkiops/certs/flood-{i}.crt");
        let leaf = aia_leaf(
            "metadata.azure.com",
            &url,
            Some((&pki.intermediate, &pki.intermediate_key)),
        );
        let signature = pki.sign(&document, &leaf);
        assert_eq!(
            found(fetcher.complete_chain(&trust, &signature).await.unwrap()).len(),
            1
        );
    }
    assert_eq!(hosts.lock().unwrap().len(), 1);
    assert_eq!(fetcher.cached(), 1);
}

/// With the default rate, a burst of documents under an unpinned CA is cut off after the
/// burst allowance, and then answered "rate limited" (retry later), never "not found".
#[tokio::test]
async fn issuer_fetches_are_rate_limited() {
    let (pki, attacker) = (Pki::new(), Pki::named("Not Pinned CA"));
    let (resolver, hosts) = pki_host(attacker.intermediate.to_der().unwrap()).await;
    let fetcher = issuer_fetcher(resolver, Default::default());
    let trust = azure_trust_with_roots(pki.roots());
    let document = content(&uuid::Uuid::new_v4().to_string(), "s", -60, 3600);
    // Made first: key generation is slow enough to refill the bucket between fetches.
    let signatures = documents_naming_urls(&attacker, &document, "burst", 40);
    let mut limited = 0;
    for signature in &signatures {
        match fetcher.complete_chain(&trust, signature).await.unwrap() {
            agent_auth::issuers::Issuers::RateLimited => limited += 1,
            agent_auth::issuers::Issuers::NotFound => {}
            agent_auth::issuers::Issuers::Found(_) => panic!("an unpinned CA was kept"),
        }
    }
    let burst = agent_auth::issuers::FetchRate::default().burst as usize;
    let fetched = hosts.lock().unwrap().len();
    // A test that ran slowly may have earned one or two refills (one per 2 s).
    assert!((burst..burst + 3).contains(&fetched), "{fetched}");
    assert_eq!(limited, 40 - fetched);
    assert_eq!(fetcher.cached(), 0, "nothing an unpinned CA signed is kept");
}

/// Second review, finding 7: self-made documents (their own CA, the signer named
/// metadata.azure.com, AIA URLs on the allowed hosts) drained the global fetch budget and 40
/// of them evicted the 32-entry cache, so legitimate documents got a final 401. Now junk never
/// enters the cache (only issuers signed by a pinned CA do, found by name with no fetch), a
/// URL that gave nothing is not asked again, and a legitimate document that needs a fetch
/// while the budget is spent is told to retry (TRUST_UNAVAILABLE), not refused.
#[tokio::test]
async fn junk_documents_can_neither_evict_nor_starve_the_issuers_legitimate_ones_need() {
    let (pki, attacker) = (Pki::new(), Pki::named("Self Made CA"));
    let (legit_der, junk_der) = (
        pki.intermediate.to_der().unwrap(),
        attacker.intermediate.to_der().unwrap(),
    );
    let (resolver, hosts) = pki_host_with(move |path: &str| {
        if path.contains("legit") {
            legit_der.clone()
        } else {
            junk_der.clone()
        }
    })
    .await;
    let fetcher = issuer_fetcher(resolver, Default::default());
    let trust = azure_trust_with_roots(pki.roots());
    let document = content(&uuid::Uuid::new_v4().to_string(), "s", -60, 3600);
    let legit = |url: &str| {
        let leaf = aia_leaf(
            "metadata.azure.com",
            url,
            Some((&pki.intermediate, &pki.intermediate_key)),
        );
        pki.sign(&document, &leaf)
    };
    // A legitimate document's issuer is fetched once and kept.
    let first = legit("http://caissuers.microsoft.com/pkiops/certs/legit.crt");
    assert_eq!(
        found(fetcher.complete_chain(&trust, &first).await.unwrap()).len(),
        1
    );
    // An issuer never seen (made now: key generation refills the budget while it runs).
    let other = Pki::named("Another Issuing CA");
    let other_trust = azure_trust_with_roots(other.roots());
    let leaf = aia_leaf(
        "metadata.azure.com",
        "http://www.microsoft.com/pkiops/certs/legit-new.crt",
        Some((&other.intermediate, &other.intermediate_key)),
    );
    let unseen = other.sign(&document, &leaf);
    // 40 junk documents, each naming its own URL: the budget is spent, nothing is kept.
    let junk = documents_naming_urls(&attacker, &document, "junk", 40);
    for junk in &junk {
        assert!(!matches!(
            fetcher.complete_chain(&trust, junk).await.unwrap(),
            agent_auth::issuers::Issuers::Found(_)
        ));
    }
    // With the budget spent, the unseen issuer is "retry later", not a refusal.
    assert!(matches!(
        fetcher.complete_chain(&other_trust, &unseen).await.unwrap(),
        agent_auth::issuers::Issuers::RateLimited
    ));
    assert_eq!(fetcher.cached(), 1, "junk evicted the legitimate issuer");
    // The same junk again costs no fetch (remembered as useless).
    let asked = hosts.lock().unwrap().len();
    let leaf = aia_leaf(
        "metadata.azure.com",
        "http://www.microsoft.com/pkiops/certs/junk-0.crt",
        Some((&attacker.intermediate, &attacker.intermediate_key)),
    );
    let _ = fetcher
        .complete_chain(&trust, &attacker.sign(&document, &leaf))
        .await;
    assert_eq!(hosts.lock().unwrap().len(), asked);
    // Ten legitimate documents, each naming a URL never seen: their issuer is known by name,
    // so every one completes its chain with no fetch and no budget.
    let now = SystemTime::now();
    for i in 0..10 {
        let signature = legit(&format!(
            "http://www.microsoft.com/pkiops/certs/other-{i}.crt"
        ));
        let issuers = found(fetcher.complete_chain(&trust, &signature).await.unwrap());
        assert!(trust.verify_with(&signature, now, &issuers).is_ok());
    }
    assert_eq!(hosts.lock().unwrap().len(), asked);
}

/// Second review, finding 8: an Azure signer key of the caller's choosing (RSA-3072 with a
/// 3,071-bit exponent) cost about 15 times an honest check, because the signature was checked
/// before anything else. The key is judged first now: too large a modulus or exponent, or an
/// unusual curve or type, is refused before any signature work.
#[test]
fn a_costly_signer_key_is_refused_before_its_signature_is_checked() {
    let pki = Pki::new();
    let trust = azure_trust_with_roots(pki.roots());
    let document = content(&uuid::Uuid::new_v4().to_string(), "s", -60, 3600);
    // 2^64 + 1: odd, and far larger than any honest exponent.
    let big_e = crate::pki::rsa_with_exponent(2048, "18446744073709551617");
    let big_n = crate::pki::rsa(4608);
    for (what, leaf_key) in [("exponent", big_e), ("bits", big_n)] {
        let leaf = certificate(
            "metadata.azure.com",
            &leaf_key,
            Some((&pki.intermediate, &pki.intermediate_key)),
            false,
            (-1, 1),
            None,
        );
        let signature = pki.sign(&document, &(leaf, leaf_key));
        let error = trust
            .verify(&signature, SystemTime::now())
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("signer key") && e.contains(what)),
            "{error:?}"
        );
    }
}
