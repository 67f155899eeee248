//! Azure IMDS attested documents (DESIGN.md section 4, Azure).
//!
//! 1. Base64 → PKCS#7 SignedData with the JSON attached; verify the signature with the signer
//!    certificate embedded in it (OpenSSL).
//! 2. Build the chain from that signer through pinned intermediates to pinned roots, at `now`.
//!    Rule from review: the system trust store is never consulted, so no CA the host happens to
//!    trust can sign "Azure" documents.
//! 3. The signer must be `metadata.azure.{com,us,cn}` or `metadata.microsoftazure.de` (or a
//!    subdomain): its CN, and when it has SAN DNS names, at least one of them.
//! 4. `timeStamp.expiresOn` not past and `createdOn` not in the future (60 s leeway each);
//!    `subscriptionId` against the allow-list; `vmId` must not be empty.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use openssl::nid::Nid;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509, X509StoreContext};
use serde::Deserialize;

use super::{IdentityError, InstanceId, Source, TrustError};

/// Leeway on `createdOn` and `expiresOn`.
pub const LEEWAY_SECONDS: i64 = 60;

/// Names an Azure IMDS signer may carry (and their subdomains).
const SIGNER_NAMES: &[&str] = &[
    "metadata.azure.com",
    "metadata.azure.us",
    "metadata.azure.cn",
    "metadata.microsoftazure.de",
];

/// Built-in roots, those Microsoft's "Azure Certificate Authority details" page lists;
/// `--azure-roots` replaces them. Sources and fingerprints: `roots/azure/README.md`.
pub(crate) const BUILTIN_ROOTS: &[&[u8]] = &[
    include_bytes!("roots/azure/digicert-global-root-ca.pem"),
    include_bytes!("roots/azure/digicert-global-root-g2.pem"),
    include_bytes!("roots/azure/digicert-global-root-g3.pem"),
    include_bytes!("roots/azure/digicert-tls-ecc-p384-root-g5.pem"),
    include_bytes!("roots/azure/digicert-tls-rsa4096-root-g5.pem"),
    include_bytes!("roots/azure/microsoft-ecc-root-certificate-authority-2017.pem"),
    include_bytes!("roots/azure/microsoft-rsa-root-certificate-authority-2017.pem"),
];

/// Built-in intermediates: every current one (the 2026 G2 chain and the cross-signed Root G2)
/// and the expired ones the recorded documents chain through (an expired intermediate cannot
/// complete a chain at a later `now`); `--azure-intermediates` adds to them.
const BUILTIN_INTERMEDIATES: &[&[u8]] = &[
    include_bytes!("roots/azure/microsoft-azure-ecc-tls-issuing-ca-03.pem"),
    include_bytes!("roots/azure/microsoft-azure-ecc-tls-issuing-ca-04.pem"),
    include_bytes!("roots/azure/microsoft-azure-ecc-tls-issuing-ca-07.pem"),
    include_bytes!("roots/azure/microsoft-azure-ecc-tls-issuing-ca-08.pem"),
    include_bytes!("roots/azure/microsoft-azure-rsa-tls-issuing-ca-03.pem"),
    include_bytes!("roots/azure/microsoft-azure-rsa-tls-issuing-ca-04.pem"),
    include_bytes!("roots/azure/microsoft-azure-rsa-tls-issuing-ca-07.pem"),
    include_bytes!("roots/azure/microsoft-azure-rsa-tls-issuing-ca-08.pem"),
    include_bytes!("roots/azure/microsoft-azure-tls-issuing-ca-01.pem"),
    include_bytes!("roots/azure/microsoft-azure-tls-issuing-ca-02.pem"),
    include_bytes!("roots/azure/microsoft-azure-tls-issuing-ca-05.pem"),
    include_bytes!("roots/azure/microsoft-azure-tls-issuing-ca-06.pem"),
    include_bytes!("roots/azure/microsoft-rsa-tls-ca-01.pem"),
    include_bytes!("roots/azure/microsoft-rsa-tls-ca-02.pem"),
    include_bytes!("roots/azure/microsoft-tls-g2-rsa-ca-ocsp-02.pem"),
    include_bytes!("roots/azure/microsoft-tls-g2-rsa-ca-ocsp-04.pem"),
    include_bytes!("roots/azure/microsoft-tls-g2-rsa-ca-ocsp-06.pem"),
    include_bytes!("roots/azure/microsoft-tls-g2-rsa-ca-ocsp-08.pem"),
    include_bytes!("roots/azure/microsoft-tls-g2-rsa-ca-ocsp-10.pem"),
    include_bytes!("roots/azure/microsoft-tls-g2-rsa-ca-ocsp-12.pem"),
    include_bytes!("roots/azure/microsoft-tls-g2-rsa-ca-ocsp-14.pem"),
    include_bytes!("roots/azure/microsoft-tls-g2-rsa-ca-ocsp-16.pem"),
    include_bytes!("roots/azure/microsoft-tls-rsa-root-g2-xsign.pem"),
];

/// Where Azure trust comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureTrustConfig {
    /// `--azure-roots`: a PEM bundle replacing the built-in roots.
    pub roots: Option<PathBuf>,
    /// `--azure-intermediates`: a PEM bundle added to the built-in intermediates.
    pub intermediates: Option<PathBuf>,
    /// `--azure-allowed-subscription`: when non-empty, only these pass.
    pub allowed_subscriptions: Vec<String>,
    /// `--azure-fetch-issuers`: complete chains through AIA (see `crate::issuers`).
    pub fetch_issuers: bool,
}

/// Loaded Azure trust material.
#[derive(Clone)]
pub struct AzureTrust {
    roots: Vec<PinnedCa>,
    intermediates: Vec<PinnedCa>,
    allowed_subscriptions: HashSet<String>,
}

/// A root or an intermediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    Root,
    Intermediate,
}

impl CaKind {
    pub fn label(self) -> &'static str {
        match self {
            CaKind::Root => "root",
            CaKind::Intermediate => "intermediate",
        }
    }
}

/// One pinned CA certificate and where it came from.
#[derive(Clone)]
pub struct PinnedCa {
    pub kind: CaKind,
    pub source: Source,
    pub certificate: X509,
}

/// What a verified attested document says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureIdentity {
    pub instance_id: InstanceId,
    pub subscription_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttestedDocument {
    #[serde(default)]
    vm_id: String,
    #[serde(default)]
    subscription_id: String,
    time_stamp: TimeStamp,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeStamp {
    created_on: String,
    expires_on: String,
}

impl AzureTrust {
    pub fn load(config: &AzureTrustConfig, read: super::ReadFile) -> Result<Self, TrustError> {
        let roots = match &config.roots {
            Some(path) => read_bundle(path, CaKind::Root, read)?,
            None => builtin(BUILTIN_ROOTS, CaKind::Root)?,
        };
        let mut intermediates = builtin(BUILTIN_INTERMEDIATES, CaKind::Intermediate)?;
        if let Some(path) = &config.intermediates {
            intermediates.extend(read_bundle(path, CaKind::Intermediate, read)?);
        }
        Ok(Self {
            roots,
            intermediates,
            allowed_subscriptions: config.allowed_subscriptions.iter().cloned().collect(),
        })
    }

    /// Every pinned certificate, for expiry reporting and `agent-auth trust`.
    pub fn certificates(&self) -> impl Iterator<Item = &PinnedCa> {
        self.roots.iter().chain(self.intermediates.iter())
    }

    /// The issuer worth fetching for a document whose chain did not complete, or why none is
    /// (DESIGN.md 4: only after the signer's name has passed and when its issuer is not
    /// pinned). The PKCS#7 signature is checked first, so junk costs no fetch: a self-issued
    /// signer, a signer that is not Azure metadata, or one whose issuer is already pinned (then
    /// a fetch cannot help) yields none.
    pub fn issuer_to_fetch(&self, signature: &str) -> Result<IssuerRequest, IdentityError> {
        let (signer, _) = open_signed(signature)?;
        check_signer_name(&signer)?;
        let issuer = signer
            .issuer_name()
            .to_der()
            .map_err(|e| IdentityError::Malformed(format!("signer issuer: {e}")))?;
        let subject = signer
            .subject_name()
            .to_der()
            .map_err(|e| IdentityError::Malformed(format!("signer subject: {e}")))?;
        if issuer == subject {
            return Err(IdentityError::UntrustedChain(
                "the signer is self-issued".into(),
            ));
        }
        let pinned = self.certificates().any(|ca| {
            ca.certificate
                .subject_name()
                .to_der()
                .is_ok_and(|name| name == issuer)
        });
        if pinned {
            return Err(IdentityError::UntrustedChain(
                "the signer's issuer is pinned; fetching cannot complete the chain".into(),
            ));
        }
        let urls = signer
            .authority_info()
            .map(|access| {
                access
                    .iter()
                    .filter(|d| d.method().nid() == Nid::AD_CA_ISSUERS)
                    .filter_map(|d| d.location().uri().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(IssuerRequest { issuer, urls })
    }

    /// Whether `certificate` is signed by a pinned root or intermediate (its issuer's name and
    /// key): the only fetched certificates worth keeping, since no other can complete a chain.
    pub fn issued_by_pinned(&self, certificate: &X509) -> bool {
        let Ok(issuer) = certificate.issuer_name().to_der() else {
            return false;
        };
        self.certificates().any(|ca| {
            ca.certificate
                .subject_name()
                .to_der()
                .is_ok_and(|name| name == issuer)
                && ca
                    .certificate
                    .public_key()
                    .and_then(|key| certificate.verify(&key))
                    .unwrap_or(false)
        })
    }

    /// Verifies a base64 attested document as of `now`.
    pub fn verify(&self, signature: &str, now: SystemTime) -> Result<AzureIdentity, IdentityError> {
        self.verify_with(signature, now, &[])
    }

    /// As [`AzureTrust::verify`], with `extra` intermediates (fetched issuers) for the chain.
    pub fn verify_with(
        &self,
        signature: &str,
        now: SystemTime,
        extra: &[X509],
    ) -> Result<AzureIdentity, IdentityError> {
        let (signer, content) = open_signed(signature)?;
        let unix_now = super::unix_seconds(now);
        self.verify_chain(&signer, unix_now, extra)?;
        check_signer_name(&signer)?;
        let document: AttestedDocument = serde_json::from_slice(&content)
            .map_err(|e| IdentityError::Malformed(format!("attested content: {e}")))?;
        let created = parse_timestamp(&document.time_stamp.created_on)?;
        let expires = parse_timestamp(&document.time_stamp.expires_on)?;
        if expires + LEEWAY_SECONDS < unix_now {
            return Err(IdentityError::Rejected(format!(
                "expired at {}",
                document.time_stamp.expires_on
            )));
        }
        if created - LEEWAY_SECONDS > unix_now {
            return Err(IdentityError::Rejected(format!(
                "created in the future, {}",
                document.time_stamp.created_on
            )));
        }
        if !self.allowed_subscriptions.is_empty()
            && !self
                .allowed_subscriptions
                .contains(&document.subscription_id)
        {
            return Err(IdentityError::NotAllowed(format!(
                "subscription {}",
                document.subscription_id
            )));
        }
        let instance_id = InstanceId::new(document.vm_id).ok_or_else(|| {
            IdentityError::Rejected("empty vmId, or one with a control character".into())
        })?;
        Ok(AzureIdentity {
            instance_id,
            subscription_id: document.subscription_id,
        })
    }

    fn verify_chain(
        &self,
        signer: &X509,
        unix_now: i64,
        extra: &[X509],
    ) -> Result<(), IdentityError> {
        let bad = |e: openssl::error::ErrorStack| IdentityError::BadSignature(e.to_string());
        let store = self.store_at(unix_now).map_err(bad)?;
        let mut chain = Stack::new().map_err(bad)?;
        let pinned = self.intermediates.iter().map(|ca| &ca.certificate);
        for intermediate in pinned.chain(extra) {
            chain.push(intermediate.clone()).map_err(bad)?;
        }
        let mut context = X509StoreContext::new().map_err(bad)?;
        let outcome = context
            .init(&store, signer, &chain, |ctx| {
                let ok = ctx.verify_cert()?;
                Ok((ok, ctx.error()))
            })
            .map_err(bad)?;
        match outcome {
            (true, _) => Ok(()),
            (false, error) => Err(IdentityError::UntrustedChain(format!(
                "signer chain: {}",
                error.error_string()
            ))),
        }
    }

    fn store_at(&self, unix_now: i64) -> Result<X509Store, openssl::error::ErrorStack> {
        let mut builder = X509StoreBuilder::new()?;
        for root in &self.roots {
            builder.add_cert(root.certificate.clone())?;
        }
        let mut param = X509VerifyParam::new()?;
        param.set_time(unix_now as _);
        builder.set_param(&param)?;
        Ok(builder.build())
    }
}

/// Decodes a base64 attested document, checks its envelope strictly, verifies its signature
/// with the embedded signer and that the signer info names that signer exactly; returns the
/// signer and the content. Every reader of a document goes through here.
/// What to fetch for a signer whose chain did not complete: its issuer's name (DER) and the
/// signer's "CA Issuers" URLs.
#[derive(Debug, Clone)]
pub struct IssuerRequest {
    pub issuer: Vec<u8>,
    pub urls: Vec<String>,
}

fn open_signed(signature: &str) -> Result<(X509, Vec<u8>), IdentityError> {
    let der = super::decode_base64(signature)?;
    let envelope = super::pkcs7::check_envelope(&der)?;
    let pkcs7 =
        Pkcs7::from_der(&der).map_err(|e| IdentityError::Malformed(format!("PKCS#7: {e}")))?;
    let (signer, content) = signed_content(&pkcs7)?;
    envelope.check_signer(&signer)?;
    Ok((signer, content))
}

/// The largest RSA modulus accepted from a signer: Azure signs with RSA-2048 (and may move
/// to 3072 or 4096); a larger one only makes the signature check dearer.
const MAX_SIGNER_RSA_BITS: u32 = 4096;
/// The largest RSA public exponent accepted, in bits (65537 has 17): a caller-chosen
/// 3,071-bit exponent made one check cost 15 times an honest one.
const MAX_SIGNER_RSA_EXPONENT_BITS: u32 = 32;

/// The signer's key must be one an honest signature check is cheap for, judged before any
/// signature is checked: RSA of at most 4096 bits with a small exponent, or an EC key on
/// P-256 or P-384 (the signer is not trusted yet; its certificate could be anyone's).
fn check_signer_key(signer: &X509) -> Result<(), IdentityError> {
    use openssl::pkey::Id;
    let rejected = |why: String| IdentityError::Rejected(format!("signer key: {why}"));
    let key = signer
        .public_key()
        .map_err(|e| rejected(format!("unreadable ({e})")))?;
    match key.id() {
        Id::RSA => {
            let rsa = key
                .rsa()
                .map_err(|e| rejected(format!("unreadable RSA ({e})")))?;
            let (bits, exponent) = (rsa.n().num_bits(), rsa.e().num_bits());
            if !(2048..=MAX_SIGNER_RSA_BITS as i32).contains(&bits) {
                return Err(rejected(format!("RSA of {bits} bits")));
            }
            if exponent > MAX_SIGNER_RSA_EXPONENT_BITS as i32 {
                return Err(rejected(format!("RSA public exponent of {exponent} bits")));
            }
            Ok(())
        }
        Id::EC => {
            let curve = key.ec_key().ok().and_then(|ec| ec.group().curve_name());
            match curve {
                Some(Nid::X9_62_PRIME256V1 | Nid::SECP384R1) => Ok(()),
                other => Err(rejected(format!("EC curve {other:?}"))),
            }
        }
        other => Err(rejected(format!("type {other:?}"))),
    }
}

/// Verifies the PKCS#7 signature with its embedded signer (whose key is judged first); returns
/// the signer and the content.
fn signed_content(pkcs7: &Pkcs7) -> Result<(X509, Vec<u8>), IdentityError> {
    let bad = |e: openssl::error::ErrorStack| IdentityError::BadSignature(e.to_string());
    let none = Stack::new().map_err(bad)?;
    // The signer as the envelope names it, before any signature is checked.
    let named = pkcs7.signers(&none, Pkcs7Flags::empty()).map_err(bad)?;
    for signer in &named {
        check_signer_key(&signer.to_owned())?;
    }
    // The chain is checked separately against pinned trust; an empty store here only lets
    // OpenSSL check the signature itself (NOVERIFY skips its S/MIME chain check).
    let store = X509StoreBuilder::new().map_err(bad)?.build();
    let mut content = Vec::new();
    pkcs7
        .verify(
            &none,
            &store,
            None,
            Some(&mut content),
            Pkcs7Flags::NOVERIFY,
        )
        .map_err(bad)?;
    let signers = pkcs7.signers(&none, Pkcs7Flags::empty()).map_err(bad)?;
    if signers.len() != 1 {
        return Err(IdentityError::Rejected(format!(
            "{} signers, expected 1",
            signers.len()
        )));
    }
    let signer = signers
        .get(0)
        .map(|s| s.to_owned())
        .ok_or_else(|| IdentityError::Rejected("no signer".into()))?;
    Ok((signer, content))
}

fn check_signer_name(signer: &X509) -> Result<(), IdentityError> {
    let common_name = signer
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|entry| entry.data().to_string().ok())
        .unwrap_or_default();
    if !is_metadata_name(&common_name) {
        return Err(IdentityError::Rejected(format!(
            "signer CN {common_name:?} is not Azure metadata"
        )));
    }
    if let Some(names) = signer.subject_alt_names() {
        let dns: Vec<&str> = names.iter().filter_map(|n| n.dnsname()).collect();
        if !dns.is_empty() && !dns.iter().any(|name| is_metadata_name(name)) {
            return Err(IdentityError::Rejected(
                "no signer SAN is Azure metadata".into(),
            ));
        }
    }
    Ok(())
}

/// `^(.*\.)?metadata\.(azure\.(com|us|cn)|microsoftazure\.de)$`, as Coder checks it.
fn is_metadata_name(name: &str) -> bool {
    SIGNER_NAMES.iter().any(|suffix| {
        name == *suffix
            || name
                .strip_suffix(suffix)
                .is_some_and(|prefix| prefix.ends_with('.'))
    })
}

/// Parses IMDS's `MM/DD/YY HH:MM:SS -0000` into Unix seconds with the `time` crate: every
/// field two digits (four for the offset), a real calendar date (no 02/31), years 2000–2099.
pub(crate) fn parse_timestamp(value: &str) -> Result<i64, IdentityError> {
    use time::macros::format_description;
    let bad = || IdentityError::Malformed(format!("timestamp {value:?}"));
    // `time` cannot give a two-digit year a century: write it out first. Everything else is
    // checked by the format itself.
    let (date, rest) = value.split_at_checked(6).ok_or_else(bad)?;
    if !date.ends_with('/') {
        return Err(bad());
    }
    let full = format!("{date}20{rest}");
    let format = format_description!(
        "[month]/[day]/[year] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
    );
    time::OffsetDateTime::parse(&full, format)
        .map(|t| t.unix_timestamp())
        .map_err(|_| bad())
}

fn builtin(pems: &[&[u8]], kind: CaKind) -> Result<Vec<PinnedCa>, TrustError> {
    pems.iter()
        .map(|pem| {
            let certificate = X509::from_pem(pem).map_err(|e| TrustError::BadCertificate {
                what: format!("built-in Azure {}", kind.label()),
                reason: e.to_string(),
            })?;
            Ok(PinnedCa {
                kind,
                source: Source::BuiltIn,
                certificate,
            })
        })
        .collect()
}

fn read_bundle(
    path: &Path,
    kind: CaKind,
    read: super::ReadFile,
) -> Result<Vec<PinnedCa>, TrustError> {
    let pem = read(path)?;
    let certificates =
        super::pem::certificates(&pem).map_err(|reason| TrustError::BadCertificate {
            what: path.display().to_string(),
            reason,
        })?;
    if certificates.is_empty() {
        return Err(TrustError::BadCertificate {
            what: path.display().to_string(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certificates
        .into_iter()
        .map(|certificate| PinnedCa {
            kind,
            source: Source::File(path.to_owned()),
            certificate,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_timestamps_parse_to_unix_seconds() {
        // 2026-06-25T18:56:45Z
        assert_eq!(
            parse_timestamp("06/25/26 18:56:45 -0000").ok(),
            Some(1_782_413_805)
        );
        assert_eq!(
            parse_timestamp("06/25/26 20:56:45 +0200").ok(),
            Some(1_782_413_805)
        );
        // A leap day that exists.
        assert!(parse_timestamp("02/29/28 00:00:00 -0000").is_ok());
        for bad in [
            "",
            "06/25/26 18:56:45",
            "6/25/26 18:56:45 -0000",
            "13/25/26 18:56:45 -0000",
            "06/25/26 18:56:45 0000",
            "02/31/26 18:56:45 -0000",
            "02/29/26 00:00:00 -0000",
            "-1/25/26 18:56:45 -0000",
            "06/-5/26 18:56:45 -0000",
            "06/25/-6 18:56:45 -0000",
            "06/25/26 -1:56:45 -0000",
            "06/25/26 24:00:00 -0000",
            "06/25/26 18:56:45 -0000 ",
            "06/25/26\u{a0}18:56:45 -0000",
            "ü6/25/26 18:56:45 -0000",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signer_names_follow_coders_pattern() {
        for ok in [
            "metadata.azure.com",
            "eastus.metadata.azure.com",
            "metadata.azure.us",
            "metadata.azure.cn",
            "a.b.metadata.microsoftazure.de",
        ] {
            assert!(is_metadata_name(ok), "{ok}");
        }
        for bad in [
            "evilmetadata.azure.com",
            "metadata.azure.com.evil",
            "metadata.azure.org",
            "",
            "azure.com",
        ] {
            assert!(!is_metadata_name(bad), "{bad}");
        }
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap_or(std::time::UNIX_EPOCH)
    }

    /// Built-in trust plus the expired Baltimore root the 2022 document chains to.
    fn trust() -> AzureTrust {
        let mut trust =
            match AzureTrust::load(&AzureTrustConfig::default(), &crate::trust::read_file) {
                Ok(trust) => trust,
                Err(e) => panic!("{e}"),
            };
        let baltimore = include_bytes!("../../tests/fixtures/azure/baltimore-cybertrust-root.pem");
        trust
            .roots
            .extend(X509::from_pem(baltimore).map(|certificate| PinnedCa {
                kind: CaKind::Root,
                source: Source::BuiltIn,
                certificate,
            }));
        trust
    }

    const VECTORS: &[(&str, &str, &str, &str)] = &[
        (
            include_str!("../../tests/fixtures/azure/azure-attested-2022-regular.b64"),
            "bd8e7443-24a0-41f3-b949-8baf4fd1c573",
            "2022-04-19T02:27:21Z",
            "2022-04-19T07:29:00Z",
        ),
        (
            include_str!("../../tests/fixtures/azure/azure-attested-2023-govcloud.b64"),
            "990878d4-068a-4ac4-9ee9-1231d2218ef2",
            "2023-03-08T18:09:33Z",
            "2023-03-08T23:11:00Z",
        ),
        (
            include_str!("../../tests/fixtures/azure/azure-attested-2024-rsa.b64"),
            "960a4b4a-dab2-44ef-9b73-7753043b4f16",
            "2024-04-22T18:32:45Z",
            "2024-04-22T23:34:00Z",
        ),
        (
            include_str!("../../tests/fixtures/azure/azure-attested-2026-g2-regular.b64"),
            "dc18de58-292f-4794-9a5d-a4192bad0039",
            "2026-06-25T19:56:45Z",
            "2026-06-26T00:58:00Z",
        ),
    ];

    #[test]
    fn recorded_documents_verify_at_their_instants_and_fail_after_expires_on() {
        let trust = trust();
        for (document, vm_id, valid_at, expired_at) in VECTORS {
            let verified = trust
                .verify(document, at(valid_at))
                .map(|i| i.instance_id.to_string());
            assert_eq!(
                verified.map_err(|e| e.to_string()),
                Ok((*vm_id).to_owned()),
                "{vm_id} at {valid_at}"
            );
            assert!(
                matches!(
                    trust.verify(document, at(expired_at)),
                    Err(IdentityError::Rejected(_))
                ),
                "{vm_id} at {expired_at}"
            );
        }
    }

    #[test]
    fn the_2026_document_fails_once_its_leaf_expired() {
        assert!(matches!(
            trust().verify(VECTORS[3].0, at("2027-01-01T00:00:00Z")),
            Err(IdentityError::UntrustedChain(_))
        ));
    }

    #[test]
    fn builtin_trust_loads() {
        let trust = AzureTrust::load(&AzureTrustConfig::default(), &crate::trust::read_file);
        assert_eq!(
            trust.map(|t| (t.roots.len(), t.intermediates.len())).ok(),
            Some((7, 23))
        );
    }
}
