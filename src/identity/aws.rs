//! AWS EC2 instance identity (DESIGN.md section 4, AWS).
//!
//! Two proofs are accepted for the exact document bytes:
//! - `signature`: raw RSA PKCS#1 v1.5 over SHA-256 of the document, under the region's legacy
//!   RSA-1024 key. This is what today's Coder agents send.
//! - `rsa2048`: PKCS#7 SignedData (BER, as AWS emits it) under the region's RSA-2048
//!   certificate, verified with OpenSSL because pure-Rust CMS cannot parse BER today.
//!
//! The key is chosen by the document's `region`: a region's own key when one is configured,
//! otherwise the `default` key. Rule from review: never try every key in turn (Coder does);
//! a signature under one region's key must not pass for another region.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use openssl::hash::MessageDigest;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use openssl::stack::Stack;
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use serde::Deserialize;

use super::{IdentityError, InstanceId, TrustError};

/// The region name that stands for every region without a key of its own.
pub const DEFAULT_REGION: &str = "default";

/// AWS's published RSA certificates for the `signature` form, as `(regions, PEM)`.
/// Sources are listed in `roots/aws/README.md`.
const BUILTIN_SIGNATURE_CERTIFICATES: &[(&[&str], &[u8])] = &[
    (&[DEFAULT_REGION], include_bytes!("roots/aws/default.pem")),
    (&["af-south-1"], include_bytes!("roots/aws/af-south-1.pem")),
    (&["ap-east-1"], include_bytes!("roots/aws/ap-east-1.pem")),
    (&["ap-south-2"], include_bytes!("roots/aws/ap-south-2.pem")),
    (
        &["ap-southeast-3"],
        include_bytes!("roots/aws/ap-southeast-3.pem"),
    ),
    (
        &["ap-southeast-4"],
        include_bytes!("roots/aws/ap-southeast-4.pem"),
    ),
    (
        &["cn-north-1", "cn-northwest-1"],
        include_bytes!("roots/aws/cn.pem"),
    ),
    (
        &["eu-central-2"],
        include_bytes!("roots/aws/eu-central-2.pem"),
    ),
    (&["eu-south-1"], include_bytes!("roots/aws/eu-south-1.pem")),
    (&["eu-south-2"], include_bytes!("roots/aws/eu-south-2.pem")),
    (
        &["il-central-1"],
        include_bytes!("roots/aws/il-central-1.pem"),
    ),
    (
        &["me-central-1"],
        include_bytes!("roots/aws/me-central-1.pem"),
    ),
    (&["me-south-1"], include_bytes!("roots/aws/me-south-1.pem")),
    (
        &["us-gov-east-1", "us-gov-west-1"],
        include_bytes!("roots/aws/us-gov.pem"),
    ),
];

/// Where AWS trust comes from: built-ins, replaced per region by operator files.
#[derive(Debug, Clone, Default)]
pub struct AwsTrustConfig {
    /// `--aws-certificate REGION=PEM_PATH`: replaces the built-in key for that region.
    pub signature_certificates: Vec<(String, PathBuf)>,
    /// `--aws-rsa2048-certificate REGION=PEM_PATH`.
    pub rsa2048_certificates: Vec<(String, PathBuf)>,
    /// `--aws-allowed-account`: when non-empty, only these accounts pass.
    pub allowed_accounts: Vec<String>,
}

/// One pinned certificate, kept for its key and so operators can see its expiry.
#[derive(Clone)]
pub struct PinnedCertificate {
    pub region: String,
    pub certificate: X509,
    key: PKey<Public>,
}

/// The loaded AWS trust material. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct AwsTrust {
    signature_keys: BTreeMap<String, PinnedCertificate>,
    rsa2048_certificates: BTreeMap<String, PinnedCertificate>,
    allowed_accounts: HashSet<String>,
}

/// The proof that accompanies a document.
#[derive(Debug, Clone, Copy)]
pub enum AwsProof<'a> {
    /// Base64 of IMDS `/signature`.
    Signature(&'a str),
    /// Base64 of IMDS `/rsa2048`.
    Rsa2048(&'a str),
}

/// What a verified document says about its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsIdentity {
    pub instance_id: InstanceId,
    pub account_id: String,
    pub region: String,
    pub pending_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    instance_id: String,
    region: String,
    account_id: String,
    #[serde(default)]
    pending_time: Option<String>,
}

impl AwsTrust {
    /// Built-in certificates, with the operator's files laid over them.
    pub fn load(config: &AwsTrustConfig) -> Result<Self, TrustError> {
        let mut signature_keys = BTreeMap::new();
        for (regions, pem) in BUILTIN_SIGNATURE_CERTIFICATES {
            for region in *regions {
                let pinned = pin(
                    region,
                    pem,
                    &format!("built-in AWS certificate for {region}"),
                )?;
                signature_keys.insert((*region).to_owned(), pinned);
            }
        }
        for (region, path) in &config.signature_certificates {
            signature_keys.insert(
                region.clone(),
                pin(region, &read(path)?, &path_label(path))?,
            );
        }
        let mut rsa2048_certificates = BTreeMap::new();
        for (region, path) in &config.rsa2048_certificates {
            rsa2048_certificates.insert(
                region.clone(),
                pin(region, &read(path)?, &path_label(path))?,
            );
        }
        Ok(Self {
            signature_keys,
            rsa2048_certificates,
            allowed_accounts: config.allowed_accounts.iter().cloned().collect(),
        })
    }

    /// Every pinned certificate, for expiry reporting.
    pub fn certificates(&self) -> impl Iterator<Item = &PinnedCertificate> {
        self.signature_keys
            .values()
            .chain(self.rsa2048_certificates.values())
    }

    /// Verifies `document` (its exact bytes) with `proof`.
    pub fn verify(
        &self,
        document: &str,
        proof: AwsProof<'_>,
    ) -> Result<AwsIdentity, IdentityError> {
        let parsed: Document = serde_json::from_str(document).map_err(|e| {
            IdentityError::Malformed(format!("document is not the expected JSON: {e}"))
        })?;
        if !is_region_name(&parsed.region) {
            return Err(IdentityError::Malformed(
                "document region is not a region name".into(),
            ));
        }
        match proof {
            AwsProof::Signature(signature) => {
                let pinned = pick(&self.signature_keys, &parsed.region, "signature")?;
                verify_rsa_sha256(
                    &pinned.key,
                    document.as_bytes(),
                    &super::decode_base64(signature)?,
                )?;
            }
            AwsProof::Rsa2048(pkcs7) => {
                let pinned = pick(&self.rsa2048_certificates, &parsed.region, "rsa2048")?;
                verify_pkcs7(
                    &pinned.certificate,
                    document.as_bytes(),
                    &super::decode_base64(pkcs7)?,
                )?;
            }
        }
        // Only a verified document's fields are trusted from here on.
        if !is_instance_id(&parsed.instance_id) {
            return Err(IdentityError::Rejected(
                "instanceId is not an EC2 instance id".into(),
            ));
        }
        if !self.allowed_accounts.is_empty() && !self.allowed_accounts.contains(&parsed.account_id)
        {
            return Err(IdentityError::NotAllowed(format!(
                "account {}",
                parsed.account_id
            )));
        }
        let instance_id = InstanceId::new(parsed.instance_id)
            .ok_or_else(|| IdentityError::Rejected("empty instanceId".into()))?;
        Ok(AwsIdentity {
            instance_id,
            account_id: parsed.account_id,
            region: parsed.region,
            pending_time: parsed.pending_time,
        })
    }
}

fn pick<'a>(
    keys: &'a BTreeMap<String, PinnedCertificate>,
    region: &str,
    form: &str,
) -> Result<&'a PinnedCertificate, IdentityError> {
    keys.get(region)
        .or_else(|| keys.get(DEFAULT_REGION))
        .ok_or_else(|| IdentityError::NoTrustedKey(format!("AWS {form} in region {region}")))
}

fn verify_rsa_sha256(
    key: &PKey<Public>,
    data: &[u8],
    signature: &[u8],
) -> Result<(), IdentityError> {
    let bad = |e: openssl::error::ErrorStack| IdentityError::BadSignature(e.to_string());
    let mut verifier = Verifier::new(MessageDigest::sha256(), key).map_err(bad)?;
    verifier.update(data).map_err(bad)?;
    if verifier.verify(signature).map_err(bad)? {
        Ok(())
    } else {
        Err(IdentityError::BadSignature(
            "RSA PKCS#1 v1.5 SHA-256 mismatch".into(),
        ))
    }
}

/// Verifies AWS's PKCS#7 against the pinned certificate only (no chain: the certificate is the
/// trust anchor, as in AWS's own `openssl smime -verify -noverify` procedure). Detached content
/// is checked against the document; attached content must equal the document byte for byte.
fn verify_pkcs7(certificate: &X509, document: &[u8], der: &[u8]) -> Result<(), IdentityError> {
    let bad = |e: openssl::error::ErrorStack| IdentityError::BadSignature(e.to_string());
    let pkcs7 =
        Pkcs7::from_der(der).map_err(|e| IdentityError::Malformed(format!("PKCS#7: {e}")))?;
    let mut certs = Stack::new().map_err(bad)?;
    certs.push(certificate.clone()).map_err(bad)?;
    let store = X509StoreBuilder::new().map_err(bad)?.build();
    let flags = Pkcs7Flags::NOVERIFY | Pkcs7Flags::NOINTERN | Pkcs7Flags::BINARY;
    let detached = pkcs7.verify(&certs, &store, Some(document), None, flags);
    if detached.is_ok() {
        return Ok(());
    }
    let mut content = Vec::new();
    pkcs7
        .verify(&certs, &store, None, Some(&mut content), flags)
        .map_err(bad)?;
    if content == document {
        Ok(())
    } else {
        Err(IdentityError::BadSignature(
            "PKCS#7 content differs from the document".into(),
        ))
    }
}

fn pin(region: &str, pem: &[u8], what: &str) -> Result<PinnedCertificate, TrustError> {
    let bad = |reason: String| TrustError::BadCertificate {
        what: what.to_owned(),
        reason,
    };
    let certificate = X509::from_pem(pem).map_err(|e| bad(e.to_string()))?;
    let key = certificate.public_key().map_err(|e| bad(e.to_string()))?;
    if key.rsa().is_err() {
        return Err(bad("the key is not RSA (AWS keys are)".into()));
    }
    Ok(PinnedCertificate {
        region: region.to_owned(),
        certificate,
        key,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })
}

fn path_label(path: &Path) -> String {
    path.display().to_string()
}

/// `i-` and 8 or 17 lower-case hex digits.
fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Lower-case letters, digits and dashes, e.g. `us-gov-west-1`.
fn is_region_name(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENT: &str = include_str!("../../tests/fixtures/aws/us-east-1-document.json");
    const SIGNATURE: &str = include_str!("../../tests/fixtures/aws/us-east-1-signature.txt");

    fn builtin() -> AwsTrust {
        match AwsTrust::load(&AwsTrustConfig::default()) {
            Ok(trust) => trust,
            Err(e) => panic!("built-in trust must load: {e}"),
        }
    }

    #[test]
    fn recorded_us_east_1_document_verifies_with_the_builtin_default_key() {
        let identity = builtin().verify(DOCUMENT, AwsProof::Signature(SIGNATURE));
        let identity = identity.map_err(|e| e.to_string());
        assert_eq!(
            identity.map(|i| (i.instance_id.to_string(), i.account_id, i.region)),
            Ok((
                "i-076e9b91f7c420782".into(),
                "628783029487".into(),
                "us-east-1".into()
            ))
        );
    }

    #[test]
    fn recorded_signature_fails_for_an_empty_object_document() {
        assert!(
            builtin()
                .verify("{}", AwsProof::Signature(SIGNATURE))
                .is_err()
        );
    }

    #[test]
    fn recorded_signature_fails_when_one_document_byte_changes() {
        let tampered = DOCUMENT.replace("t2.micro", "t2.large");
        assert!(matches!(
            builtin().verify(&tampered, AwsProof::Signature(SIGNATURE)),
            Err(IdentityError::BadSignature(_))
        ));
    }

    #[test]
    fn recorded_signature_fails_when_the_document_claims_a_region_with_its_own_key() {
        // Same bytes except the region: the Hong Kong key is chosen and must not verify.
        let moved = DOCUMENT.replace("\"us-east-1\"", "\"ap-east-1\"");
        assert!(
            builtin()
                .verify(&moved, AwsProof::Signature(SIGNATURE))
                .is_err()
        );
    }

    #[test]
    fn allow_list_refuses_other_accounts() {
        let mut trust = builtin();
        trust.allowed_accounts = ["111111111111".to_owned()].into_iter().collect();
        assert!(matches!(
            trust.verify(DOCUMENT, AwsProof::Signature(SIGNATURE)),
            Err(IdentityError::NotAllowed(_))
        ));
        trust.allowed_accounts.insert("628783029487".into());
        assert!(
            trust
                .verify(DOCUMENT, AwsProof::Signature(SIGNATURE))
                .is_ok()
        );
    }

    #[test]
    fn rsa2048_without_a_configured_certificate_has_no_trusted_key() {
        assert!(matches!(
            builtin().verify(DOCUMENT, AwsProof::Rsa2048("AAAA")),
            Err(IdentityError::NoTrustedKey(_))
        ));
    }

    #[test]
    fn every_builtin_certificate_holds_an_rsa_key() {
        let trust = builtin();
        assert_eq!(trust.signature_keys.len(), 16);
        assert!(trust.certificates().all(|c| c.key.rsa().is_ok()));
    }

    #[test]
    fn instance_ids_are_recognised() {
        assert!(is_instance_id("i-076e9b91f7c420782"));
        assert!(is_instance_id("i-0123abcd"));
        assert!(!is_instance_id("i-076E9B91F7C420782"));
        assert!(!is_instance_id("i-"));
        assert!(!is_instance_id("x-076e9b91f7c420782"));
    }
}
