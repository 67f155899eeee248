//! Fuzz entry points: one per parser or verifier of untrusted input. Each takes arbitrary
//! bytes and must return without panicking, whatever they are. `cargo test` drives them with
//! proptest (the module's tests, seeded with the real vectors in `tests/fixtures`); with a
//! nightly toolchain each is a libFuzzer target in one line (see SECURITY.md).
//!
//! Only `cfg(test)` and the `fuzzing` feature build this module, so the server carries none of
//! it.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::identity::aws::{AwsProof, AwsTrust, AwsTrustConfig};
use crate::identity::azure::{AzureTrust, AzureTrustConfig};

fn aws_trust() -> Option<&'static AwsTrust> {
    static TRUST: OnceLock<Option<AwsTrust>> = OnceLock::new();
    TRUST
        .get_or_init(|| AwsTrust::load(&AwsTrustConfig::default(), &crate::trust::read_file).ok())
        .as_ref()
}

fn azure_trust() -> Option<&'static AzureTrust> {
    static TRUST: OnceLock<Option<AzureTrust>> = OnceLock::new();
    TRUST
        .get_or_init(|| {
            AzureTrust::load(&AzureTrustConfig::default(), &crate::trust::read_file).ok()
        })
        .as_ref()
}

/// Splits `data` at its first NUL into two strings (invalid UTF-8 replaced).
fn two(data: &[u8]) -> (String, String) {
    let (a, b) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    (
        String::from_utf8_lossy(a).into_owned(),
        String::from_utf8_lossy(b).into_owned(),
    )
}

/// AWS: the first byte picks the proof form; the rest is `document NUL proof`.
pub fn aws(data: &[u8]) {
    let Some((form, rest)) = data.split_first() else {
        return;
    };
    let (document, proof) = two(rest);
    if let Some(trust) = aws_trust() {
        let proof = if form % 2 == 0 {
            AwsProof::Signature(&proof)
        } else {
            AwsProof::Rsa2048(&proof)
        };
        let _ = trust.verify(&document, proof);
    }
}

/// GCP: a JWT against an empty and a one-key JWKS, at a fixed instant.
pub fn gcp(data: &[u8]) {
    use crate::identity::gcp;
    let token = String::from_utf8_lossy(data);
    let policy = gcp::GcpPolicy {
        audience: "coder".into(),
        allowed_projects: Default::default(),
    };
    let keys: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(GCP_JWKS).unwrap_or(jsonwebtoken::jwk::JwkSet { keys: Vec::new() });
    let _ = gcp::verify(&token, &keys, &policy, SystemTime::UNIX_EPOCH);
    let _ = gcp::verify(
        &token,
        &keys,
        &policy,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    );
}

/// A JWKS with one RSA key whose modulus is not a real key's: parsing and `kid` look-up run.
const GCP_JWKS: &str = r#"{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid":"k1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;

/// Azure: a base64 PKCS#7 against the built-in trust at the 2026 vector's instant, and the
/// issuer-URL judgement that precedes a fetch.
pub fn azure(data: &[u8]) {
    let signature = String::from_utf8_lossy(data);
    if let Some(trust) = azure_trust() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_782_417_405);
        let _ = trust.verify(&signature, at);
        let _ = trust.issuer_to_fetch(&signature);
    }
}

/// Azure's `MM/DD/YY HH:MM:SS -0000` timestamps.
pub fn azure_timestamp(data: &[u8]) {
    let _ = crate::identity::azure::parse_timestamp(&String::from_utf8_lossy(data));
}

/// The `grpc-timeout` header value.
pub fn grpc_timeout(data: &[u8]) {
    let _ = crate::grpc::parse_grpc_timeout(&String::from_utf8_lossy(data));
}

/// The Coder-compatible HTTP bodies, as each endpoint reads them.
pub fn http_body(data: &[u8]) {
    use crate::http::agent::{AwsBody, AzureBody, GoogleBody};
    let _ = serde_json::from_slice::<AwsBody>(data);
    let _ = serde_json::from_slice::<AzureBody>(data);
    let _ = serde_json::from_slice::<GoogleBody>(data);
}

/// Configuration values: the first byte picks a setting, the rest is its value. Settings that
/// name files are left out (a fuzzer must not read `/dev/zero`).
pub fn config_value(data: &[u8]) {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let value = String::from_utf8_lossy(rest).into_owned();
    let flag = match which % 12 {
        0 => "--grpc-listen",
        1 => "--admin-listen",
        2 => "--http-listen",
        3 => "--postgres-url",
        4 => "--schema",
        5 => "--db-checkout-timeout",
        6 => "--conn-idle-timeout",
        7 => "--aws-allowed-account",
        8 => "--log-format",
        9 => "--otlp-endpoint",
        10 => "--insecure-verify-time",
        _ => "--aws-ec2-assume-role",
    };
    let flags = [
        "--postgres-url",
        "postgres://u@127.0.0.1/d",
        flag,
        value.as_str(),
    ];
    if let Ok(settings) = crate::config::Settings::from_flags(flags) {
        let _ = crate::config::Config::try_from(settings);
    }
    let _ = crate::config::redact_postgres_url(&value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Several thousand cases per property; `PROPTEST_CASES` raises it.
    fn cases() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048);
        // A fixed seed: CI explores the same cases every run (no flaky red); set
        // PROPTEST_RNG_SEED to explore others.
        let seed = std::env::var("PROPTEST_RNG_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed_a9e7);
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
            ..ProptestConfig::default()
        }
    }

    fn fixture(path: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Every real AWS proof: `(document, proof, is_rsa2048)`.
    fn aws_vectors() -> Vec<(String, String, bool)> {
        let mut out = vec![(
            fixture("aws/us-east-1-document.json"),
            fixture("aws/us-east-1-signature.txt"),
            false,
        )];
        for folder in [
            "us-east-2-i-075f088c72ad3271c",
            "us-west-2-i-078517ca8a70a1dde",
            "ap-southeast-2-i-050c2e3dd07033e9e",
        ] {
            let document = fixture(&format!("aws-real/{folder}/document.json"));
            for (file, rsa2048) in [("signature.b64", false), ("rsa2048.b64", true)] {
                let path = format!(
                    "{}/tests/fixtures/aws-real/{folder}/{file}",
                    env!("CARGO_MANIFEST_DIR")
                );
                if let Ok(proof) = std::fs::read_to_string(path) {
                    out.push((document.clone(), proof, rsa2048));
                }
            }
        }
        out
    }

    fn verify_aws(document: &str, proof: &str, rsa2048: bool) -> bool {
        let proof = if rsa2048 {
            AwsProof::Rsa2048(proof)
        } else {
            AwsProof::Signature(proof)
        };
        aws_trust().is_some_and(|t| t.verify(document, proof).is_ok())
    }

    /// `text` with one bit of one byte flipped; `None` when that is no longer UTF-8 (such
    /// bytes cannot reach a verifier: protobuf strings and JSON are UTF-8).
    fn flip(text: &str, index: usize, bit: u8) -> Option<String> {
        let mut bytes = text.as_bytes().to_vec();
        let i = index % bytes.len();
        bytes[i] ^= 1 << (bit % 8);
        String::from_utf8(bytes).ok()
    }

    #[test]
    fn every_real_aws_vector_verifies_untouched() {
        let vectors = aws_vectors();
        assert_eq!(vectors.len(), 5);
        for (document, proof, rsa2048) in &vectors {
            assert!(verify_aws(document, proof, *rsa2048), "{document}");
        }
    }

    #[test]
    fn the_real_azure_document_verifies_untouched() {
        let document = fixture("azure/azure-attested-2026-g2-regular.b64");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_782_417_405);
        assert!(azure_trust().is_some_and(|t| t.verify(&document, at).is_ok()));
    }

    /// Not sampled but exhaustive: every single-bit change of every real AWS proof and
    /// document, and of the 2026 Azure document, fails (about 75,000 verifications).
    #[test]
    fn every_single_bit_flip_of_every_real_vector_fails() {
        let mut tried = 0usize;
        for (document, proof, rsa2048) in aws_vectors() {
            for (target, in_proof) in [(&document, false), (&proof, true)] {
                for index in 0..target.len() {
                    for bit in 0..8 {
                        let Some(flipped) = flip(target, index, bit) else {
                            continue;
                        };
                        let (d, p) = if in_proof {
                            (document.as_str(), flipped.as_str())
                        } else {
                            (flipped.as_str(), proof.as_str())
                        };
                        assert!(!verify_aws(d, p, rsa2048), "byte {index} bit {bit}");
                        tried += 1;
                    }
                }
            }
        }
        let document = fixture("azure/azure-attested-2026-g2-regular.b64");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_782_417_405);
        let trust = azure_trust().unwrap_or_else(|| panic!("no Azure trust"));
        for index in 0..document.len() {
            for bit in 0..8 {
                if let Some(flipped) = flip(&document, index, bit) {
                    assert!(
                        trust.verify(&flipped, at).is_err(),
                        "Azure byte {index} bit {bit}"
                    );
                    tried += 1;
                }
            }
        }
        assert!(tried > 50_000, "{tried}");
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn no_aws_input_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            aws(&data);
        }

        #[test]
        fn one_flipped_bit_anywhere_in_a_real_aws_document_or_proof_fails(
            vector in 0usize..5, in_proof in any::<bool>(), index in any::<usize>(), bit in any::<u8>()
        ) {
            let vectors = aws_vectors();
            let (document, proof, rsa2048) = &vectors[vector % vectors.len()];
            let (document, proof) = if in_proof {
                (Some(document.clone()), flip(proof, index, bit))
            } else {
                (flip(document, index, bit), Some(proof.clone()))
            };
            if let (Some(document), Some(proof)) = (document, proof) {
                prop_assert!(!verify_aws(&document, &proof, *rsa2048));
            }
        }

        #[test]
        fn no_gcp_token_panics(token in "[A-Za-z0-9_.=-]{0,600}|\\PC{0,300}") {
            gcp(token.as_bytes());
        }

        #[test]
        fn no_azure_input_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            azure(&data);
        }

        #[test]
        fn one_flipped_bit_anywhere_in_a_real_azure_document_fails(
            index in any::<usize>(), bit in any::<u8>()
        ) {
            let document = fixture("azure/azure-attested-2026-g2-regular.b64");
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_782_417_405);
            let trust = azure_trust().ok_or_else(|| TestCaseError::fail("no trust"))?;
            if let Some(flipped) = flip(&document, index, bit) {
                prop_assert!(trust.verify(&flipped, at).is_err());
            }
        }

        #[test]
        fn no_timestamp_panics_and_real_dates_parse(
            text in "\\PC{0,40}",
            (month, day, year, hour, minute, second) in (1u8..=12, 1u8..=28, 0u8..=99, 0u8..24, 0u8..60, 0u8..60)
        ) {
            azure_timestamp(text.as_bytes());
            let value = format!("{month:02}/{day:02}/{year:02} {hour:02}:{minute:02}:{second:02} -0000");
            let parsed = crate::identity::azure::parse_timestamp(&value);
            let expected = time::Date::from_calendar_date(
                2000 + i32::from(year),
                time::Month::try_from(month).map_err(|e| TestCaseError::fail(e.to_string()))?,
                day,
            )
            .map(|d| {
                d.with_hms(hour, minute, second)
                    .map(|t| t.assume_utc().unix_timestamp())
            });
            prop_assert_eq!(parsed.ok(), expected.ok().and_then(Result::ok));
        }

        #[test]
        fn grpc_timeouts_parse_exactly_or_not_at_all(
            text in "\\PC{0,12}", amount in 0u64..100_000_000, unit in "[HMSmun]"
        ) {
            grpc_timeout(text.as_bytes());
            let parsed = crate::grpc::parse_grpc_timeout(&format!("{amount}{unit}"));
            let expected = match unit.as_str() {
                "H" => Duration::from_secs(amount * 3600),
                "M" => Duration::from_secs(amount * 60),
                "S" => Duration::from_secs(amount),
                "m" => Duration::from_millis(amount),
                "u" => Duration::from_micros(amount),
                _ => Duration::from_nanos(amount),
            };
            prop_assert_eq!(parsed, Some(expected));
        }

        #[test]
        fn no_http_body_panics(data in proptest::collection::vec(any::<u8>(), 0..1024), json in "\\PC{0,200}") {
            http_body(&data);
            http_body(json.as_bytes());
        }

        #[test]
        fn no_config_value_panics(which in any::<u8>(), value in "\\PC{0,80}") {
            let mut data = vec![which];
            data.extend_from_slice(value.as_bytes());
            config_value(&data);
        }

        #[test]
        fn a_redacted_url_never_shows_its_password(
            // Upper case and digits first: never a substring of the lower-case user, host or
            // the rest of the string.
            user in "[a-z]{1,8}", password in "P[0-9]{3}[A-Za-z0-9!*~]{0,12}", host in "[a-z]{1,10}",
            conninfo in any::<bool>()
        ) {
            let url = if conninfo {
                format!("host={host} user={user} password={password} dbname=d")
            } else {
                format!("postgres://{user}:{password}@{host}/d?password={password}")
            };
            let shown = crate::config::redact_postgres_url(&url);
            prop_assert!(!shown.contains(&password), "{}", shown);
        }
    }
}
