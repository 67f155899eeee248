//! AWS EC2 instance identity (DESIGN.md section 4, AWS).
//!
//! Two proofs are accepted for the exact document bytes:
//! - `signature`: raw RSA PKCS#1 v1.5 over SHA-256 of the document, under the region's legacy
//!   RSA-1024 key. This is what today's Coder agents send.
//! - `rsa2048`: PKCS#7 SignedData (BER, as AWS emits it) under the region's RSA-2048
//!   certificate, verified with OpenSSL because pure-Rust CMS cannot parse BER today.
//!
//! The key is chosen by the document's `region` exactly (DESIGN.md 4): the operator's
//! certificate for the region, else the operator's `default`, else the built-in certificate of
//! the region (all 39 regions, both forms), else no key. Rule from review: never try every key
//! in turn (Coder does); a signature under one region's key must not pass for another region.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY};
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use serde::Deserialize;

use super::{IdentityError, InstanceId, Source, TrustError};

/// The region name of an operator certificate that covers every region without an operator
/// certificate of its own (built-ins included).
pub const DEFAULT_REGION: &str = "default";

/// AWS's published certificates for every region, as `(region, signature PEM, rsa2048 PEM)`.
/// Sources and fingerprints: `roots/aws/README.md`.
macro_rules! builtin {
    ($region:literal) => {
        (
            $region,
            include_bytes!(concat!("roots/aws/rsa/", $region, ".pem")).as_slice(),
            include_bytes!(concat!("roots/aws/rsa2048/", $region, ".pem")).as_slice(),
        )
    };
}

/// Every region AWS lists (39 in 2026). The legacy shared key is simply the key of the
/// regions that use it; an unlisted region has no built-in key.
pub const BUILTIN_CERTIFICATES: &[(&str, &[u8], &[u8])] = &[
    builtin!("af-south-1"),
    builtin!("ap-east-1"),
    builtin!("ap-east-2"),
    builtin!("ap-northeast-1"),
    builtin!("ap-northeast-2"),
    builtin!("ap-northeast-3"),
    builtin!("ap-south-1"),
    builtin!("ap-south-2"),
    builtin!("ap-southeast-1"),
    builtin!("ap-southeast-2"),
    builtin!("ap-southeast-3"),
    builtin!("ap-southeast-4"),
    builtin!("ap-southeast-5"),
    builtin!("ap-southeast-6"),
    builtin!("ap-southeast-7"),
    builtin!("ca-central-1"),
    builtin!("ca-west-1"),
    builtin!("cn-north-1"),
    builtin!("cn-northwest-1"),
    builtin!("eu-central-1"),
    builtin!("eu-central-2"),
    builtin!("eu-north-1"),
    builtin!("eu-south-1"),
    builtin!("eu-south-2"),
    builtin!("eu-west-1"),
    builtin!("eu-west-2"),
    builtin!("eu-west-3"),
    builtin!("eusc-de-east-1"),
    builtin!("il-central-1"),
    builtin!("me-central-1"),
    builtin!("me-south-1"),
    builtin!("mx-central-1"),
    builtin!("sa-east-1"),
    builtin!("us-east-1"),
    builtin!("us-east-2"),
    builtin!("us-gov-east-1"),
    builtin!("us-gov-west-1"),
    builtin!("us-west-1"),
    builtin!("us-west-2"),
];

/// Where AWS trust comes from: built-ins, with the operator's files taking precedence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsTrustConfig {
    /// `--aws-certificate REGION=PEM_PATH` (`REGION` may be `default`).
    pub signature_certificates: Vec<(String, PathBuf)>,
    /// `--aws-rsa2048-certificate REGION=PEM_PATH` (same rules).
    pub rsa2048_certificates: Vec<(String, PathBuf)>,
    /// `--aws-allowed-account`: when non-empty, only these accounts pass.
    pub allowed_accounts: Vec<String>,
}

/// The two proof forms, each with its own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsForm {
    /// IMDS `/signature`: RSA PKCS#1 v1.5 over SHA-256 (legacy RSA-1024 keys).
    Signature,
    /// IMDS `/rsa2048`: PKCS#7 under the region's RSA-2048 certificate.
    Rsa2048,
}

impl AwsForm {
    /// The proto field name, used in logs, metrics labels and `agent-auth trust`.
    pub fn label(self) -> &'static str {
        match self {
            AwsForm::Signature => "signature",
            AwsForm::Rsa2048 => "rsa2048",
        }
    }

    /// The flag that adds or replaces a key of this form.
    pub fn flag(self) -> &'static str {
        match self {
            AwsForm::Signature => "--aws-certificate",
            AwsForm::Rsa2048 => "--aws-rsa2048-certificate",
        }
    }
}

/// One pinned certificate, kept for its key and so operators can see its expiry.
#[derive(Clone)]
pub struct PinnedCertificate {
    pub region: String,
    pub form: AwsForm,
    pub source: Source,
    pub certificate: X509,
    /// The certificate's RSA key, parsed once: a verification then costs the RSA operation
    /// alone (OpenSSL 3's EVP layer looked providers up and rebuilt the key's Montgomery
    /// context on every call).
    key: Arc<ParsedPublicKey>,
}

/// One form's keys, in the contract's precedence: the operator's certificate for the region,
/// else the operator's `default`, else the built-in one for the region.
#[derive(Clone)]
struct Keys {
    form: AwsForm,
    operator: BTreeMap<String, PinnedCertificate>,
    builtin: BTreeMap<String, PinnedCertificate>,
}

impl Keys {
    fn load(
        form: AwsForm,
        builtin_pems: impl Iterator<Item = (&'static str, &'static [u8])>,
        files: &[(String, PathBuf)],
        read: super::ReadFile,
    ) -> Result<Self, TrustError> {
        let mut builtin = BTreeMap::new();
        for (region, pem) in builtin_pems {
            let what = format!("built-in AWS {} certificate for {region}", form.label());
            builtin.insert(
                region.to_owned(),
                pin(region, form, Source::BuiltIn, pem, &what)?,
            );
        }
        let mut operator = BTreeMap::new();
        for (region, path) in files {
            let pem = read(path)?;
            let source = Source::File(path.clone());
            let what = path.display().to_string();
            operator.insert(region.clone(), pin(region, form, source, &pem, &what)?);
        }
        Ok(Self {
            form,
            operator,
            builtin,
        })
    }

    fn pick(&self, region: &str) -> Result<&PinnedCertificate, IdentityError> {
        self.operator
            .get(region)
            .or_else(|| self.operator.get(DEFAULT_REGION))
            .or_else(|| self.builtin.get(region))
            .ok_or_else(|| {
                IdentityError::NoTrustedKey(format!(
                    "AWS {} key for region {region}: none is built in; add one with {} {region}=PEM_PATH",
                    self.form.label(),
                    self.form.flag()
                ))
            })
    }

    /// Every pinned certificate: the operator's, then the built-ins.
    fn all(&self) -> impl Iterator<Item = &PinnedCertificate> {
        self.operator.values().chain(self.builtin.values())
    }
}

/// The loaded AWS trust material. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct AwsTrust {
    signature_keys: Keys,
    rsa2048_keys: Keys,
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
    /// Built-in certificates of every region, with the operator's files taking precedence.
    pub fn load(config: &AwsTrustConfig, read: super::ReadFile) -> Result<Self, TrustError> {
        Ok(Self {
            signature_keys: Keys::load(
                AwsForm::Signature,
                BUILTIN_CERTIFICATES.iter().map(|(r, pem, _)| (*r, *pem)),
                &config.signature_certificates,
                read,
            )?,
            rsa2048_keys: Keys::load(
                AwsForm::Rsa2048,
                BUILTIN_CERTIFICATES.iter().map(|(r, _, pem)| (*r, *pem)),
                &config.rsa2048_certificates,
                read,
            )?,
            allowed_accounts: config.allowed_accounts.iter().cloned().collect(),
        })
    }

    /// Every pinned certificate, for expiry reporting and `agent-auth trust`.
    pub fn certificates(&self) -> impl Iterator<Item = &PinnedCertificate> {
        self.signature_keys.all().chain(self.rsa2048_keys.all())
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
        let (keys, proof) = match proof {
            AwsProof::Signature(proof) => (&self.signature_keys, proof),
            AwsProof::Rsa2048(proof) => (&self.rsa2048_keys, proof),
        };
        let pinned = keys.pick(&parsed.region)?;
        let proof = super::decode_base64(proof)?;
        let checked = match keys.form {
            AwsForm::Signature => verify_rsa_sha256(&pinned.key, document.as_bytes(), &proof),
            AwsForm::Rsa2048 => verify_pkcs7(&pinned.certificate, document.as_bytes(), &proof),
        };
        // The log says which key was tried, so an operator can tell a forgery from a region
        // whose certificate changed.
        checked.map_err(|e| match e {
            IdentityError::BadSignature(cause) => IdentityError::BadSignature(format!(
                "{cause}; AWS {} key for region {}: pinned as {}, {}",
                keys.form.label(),
                parsed.region,
                pinned.region,
                pinned.source
            )),
            other => other,
        })?;
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

fn verify_rsa_sha256(
    key: &ParsedPublicKey,
    data: &[u8],
    signature: &[u8],
) -> Result<(), IdentityError> {
    key.verify_sig(data, signature)
        .map_err(|_| IdentityError::BadSignature("RSA PKCS#1 v1.5 SHA-256 mismatch".into()))
}

/// Verifies AWS's PKCS#7 against the pinned certificate only (no chain: the certificate is the
/// trust anchor, as in AWS's own `openssl smime -verify -noverify` procedure). Content carried
/// inside the PKCS#7 (IMDS attaches the document) must verify and equal the document byte for
/// byte; only a PKCS#7 whose envelope carries no content is checked against the document as
/// detached content. (Verifying detached whenever possible would ignore an altered embedded
/// copy.)
fn verify_pkcs7(certificate: &X509, document: &[u8], der: &[u8]) -> Result<(), IdentityError> {
    let bad = |e: openssl::error::ErrorStack| IdentityError::BadSignature(e.to_string());
    let envelope = super::pkcs7::check_envelope(der)?;
    envelope.check_signer(certificate)?;
    let pkcs7 =
        Pkcs7::from_der(der).map_err(|e| IdentityError::Malformed(format!("PKCS#7: {e}")))?;
    let mut certs = Stack::new().map_err(bad)?;
    certs.push(certificate.clone()).map_err(bad)?;
    let store = X509StoreBuilder::new().map_err(bad)?.build();
    let flags = Pkcs7Flags::NOVERIFY | Pkcs7Flags::NOINTERN | Pkcs7Flags::BINARY;
    if !envelope.attached {
        return pkcs7
            .verify(&certs, &store, Some(document), None, flags)
            .map_err(bad);
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

fn pin(
    region: &str,
    form: AwsForm,
    source: Source,
    pem: &[u8],
    what: &str,
) -> Result<PinnedCertificate, TrustError> {
    let bad = |reason: String| TrustError::BadCertificate {
        what: what.to_owned(),
        reason,
    };
    let certificate = super::pem::certificate(pem).map_err(bad)?;
    let key = certificate.public_key().map_err(|e| bad(e.to_string()))?;
    let rsa = key
        .rsa()
        .map_err(|_| bad("the key is not RSA (AWS keys are)".into()))?;
    let der = rsa
        .public_key_to_der_pkcs1()
        .map_err(|e| bad(e.to_string()))?;
    let key = ParsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, der).map_err(
        |e| {
            bad(format!(
                "the RSA key is not usable ({e}; AWS keys are 1024 or 2048 bits)"
            ))
        },
    )?;
    Ok(PinnedCertificate {
        region: region.to_owned(),
        form,
        source,
        certificate,
        key: Arc::new(key),
    })
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
        match AwsTrust::load(&AwsTrustConfig::default(), &crate::trust::read_file) {
            Ok(trust) => trust,
            Err(e) => panic!("built-in trust must load: {e}"),
        }
    }

    #[test]
    fn recorded_us_east_1_document_verifies_with_the_builtin_us_east_1_key() {
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
    fn a_region_aws_never_listed_has_no_key_and_the_error_names_the_flag() {
        let moved = DOCUMENT.replace("\"us-east-1\"", "\"xx-nowhere-9\"");
        let error = builtin().verify(&moved, AwsProof::Signature(SIGNATURE));
        let Err(IdentityError::NoTrustedKey(text)) = error else {
            panic!("expected NoTrustedKey, got {:?}", error.map(|_| ()));
        };
        assert!(text.contains("xx-nowhere-9"), "{text}");
        assert!(
            text.contains("--aws-certificate xx-nowhere-9=PEM_PATH"),
            "{text}"
        );
        let rsa2048 = builtin().verify(&moved, AwsProof::Rsa2048("AAAA"));
        assert!(
            matches!(&rsa2048, Err(IdentityError::NoTrustedKey(t)) if t.contains("--aws-rsa2048-certificate")),
            "{:?}",
            rsa2048.map(|_| ())
        );
    }

    #[test]
    fn every_region_has_both_forms_built_in_and_each_holds_an_rsa_key() {
        let trust = builtin();
        assert_eq!(BUILTIN_CERTIFICATES.len(), 39);
        assert_eq!(trust.signature_keys.builtin.len(), 39);
        assert_eq!(trust.rsa2048_keys.builtin.len(), 39);
        let rsa_bits = |c: &PinnedCertificate| {
            c.certificate
                .public_key()
                .and_then(|k| k.rsa())
                .map(|k| k.size() * 8)
                .ok()
        };
        assert!(trust.certificates().all(|c| rsa_bits(c).is_some()));
        // RSA-2048 keys are what the form's name says.
        assert!(trust.rsa2048_keys.all().all(|c| rsa_bits(c) == Some(2048)));
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
