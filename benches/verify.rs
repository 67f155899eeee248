//! Per-call verification cost of each cloud, next to the bare primitive it cannot avoid.
//! `cargo bench --bench verify`. Results are recorded in the issue notes and BENCHMARKS.md.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_auth::identity::aws::{AwsProof, AwsTrust, AwsTrustConfig};
use agent_auth::identity::azure::{AzureTrust, AzureTrustConfig};
use agent_auth::identity::gcp::{self, GcpPolicy};
use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use openssl::hash::MessageDigest;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::sign::Verifier;
use openssl::stack::Stack;
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;

const AWS_DOCUMENT: &str = include_str!("../tests/fixtures/aws/us-east-1-document.json");
const AWS_SIGNATURE: &str = include_str!("../tests/fixtures/aws/us-east-1-signature.txt");
const AWS_DEFAULT_CERT: &[u8] = include_bytes!("../src/identity/roots/aws/rsa/us-east-1.pem");
const AZURE_DOCUMENT: &str =
    include_str!("../tests/fixtures/azure/azure-attested-2026-g2-regular.b64");

fn decode(b64: &str) -> Vec<u8> {
    let compact: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .expect("base64")
}

fn aws(c: &mut Criterion) {
    let trust =
        AwsTrust::load(&AwsTrustConfig::default(), &agent_auth::trust::read_file).expect("trust");
    let key = X509::from_pem(AWS_DEFAULT_CERT)
        .expect("cert")
        .public_key()
        .expect("key");
    let signature = decode(AWS_SIGNATURE);
    let mut group = c.benchmark_group("aws");
    group.bench_function("full_verify", |b| {
        b.iter(|| {
            trust
                .verify(black_box(AWS_DOCUMENT), AwsProof::Signature(AWS_SIGNATURE))
                .expect("verifies")
        })
    });
    group.bench_function("bare_rsa1024_sha256", |b| {
        b.iter(|| {
            let mut verifier = Verifier::new(MessageDigest::sha256(), &key).expect("verifier");
            verifier
                .update(black_box(AWS_DOCUMENT.as_bytes()))
                .expect("update");
            assert!(verifier.verify(&signature).expect("verify"));
        })
    });
    group.finish();
}

fn gcp(c: &mut Criterion) {
    let rsa = Rsa::generate(2048).expect("rsa");
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "k", "n": b64(rsa.n().to_vec()), "e": b64(rsa.e().to_vec())
    }]}))
    .expect("jwks");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let claims = serde_json::json!({
        "aud": "coder", "iss": "https://accounts.google.com", "exp": now + 3600, "iat": now,
        "google": {"compute_engine": {"instance_id": "123", "project_id": "p", "zone": "z", "instance_name": "n"}}
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k".into());
    let der = rsa.private_key_to_der().expect("der");
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_der(&der),
    )
    .expect("jwt");
    let policy = GcpPolicy {
        audience: "coder".into(),
        allowed_projects: HashSet::new(),
    };
    let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .expect("sig");
    let public = PKey::public_key_from_der(&rsa.public_key_to_der().expect("pub")).expect("pkey");
    let mut group = c.benchmark_group("gcp");
    group.bench_function("full_verify", |b| {
        b.iter(|| {
            gcp::verify(black_box(&token), &jwks, &policy, SystemTime::now())
                .map_err(|_| ())
                .expect("verifies")
        })
    });
    group.bench_function("bare_rsa2048_sha256", |b| {
        b.iter(|| {
            let mut verifier = Verifier::new(MessageDigest::sha256(), &public).expect("verifier");
            verifier
                .update(black_box(signing_input.as_bytes()))
                .expect("update");
            assert!(verifier.verify(&signature).expect("verify"));
        })
    });
    group.finish();
}

fn azure(c: &mut Criterion) {
    let trust = AzureTrust::load(&AzureTrustConfig::default(), &agent_auth::trust::read_file)
        .expect("trust");
    let at = humantime::parse_rfc3339("2026-06-25T19:56:45Z").expect("time");
    let der = decode(AZURE_DOCUMENT);
    let mut group = c.benchmark_group("azure");
    group.bench_function("full_verify", |b| {
        b.iter(|| {
            trust
                .verify(black_box(AZURE_DOCUMENT), at)
                .expect("verifies")
        })
    });
    group.bench_function("bare_pkcs7_signature", |b| {
        let none = Stack::new().expect("stack");
        let store = X509StoreBuilder::new().expect("store").build();
        b.iter(|| {
            let pkcs7 = Pkcs7::from_der(black_box(&der)).expect("pkcs7");
            let mut out = Vec::new();
            pkcs7
                .verify(&none, &store, None, Some(&mut out), Pkcs7Flags::NOVERIFY)
                .expect("verify");
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = aws, gcp, azure }
criterion_main!(benches);
