//! The one test PKI: every generated key and X.509 certificate of the tests, self-signed or
//! issued, for the AWS keys, Azure chains, the GCP signing keys and their JWKs, gRPC TLS/mTLS
//! and the database's TLS (test `tidy::only_the_test_pki_generates_keys`).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::{Value, json};

/// A fresh RSA key.
pub fn rsa(bits: u32) -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
}

/// A fresh RSA key with the public exponent `e` (decimal), for keys no honest signer has.
pub fn rsa_with_exponent(bits: u32, e: &str) -> PKey<Private> {
    let exponent = openssl::bn::BigNum::from_dec_str(e).unwrap();
    PKey::from_rsa(Rsa::generate_with_e(bits, &exponent).unwrap()).unwrap()
}

/// An RS256 signing key with its JWK.
pub struct GcpKey {
    kid: String,
    der: Vec<u8>,
    pub jwk: Value,
}

impl GcpKey {
    pub fn generate(kid: &str) -> Self {
        let key = rsa(2048);
        let rsa = key.rsa().unwrap();
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwk = json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": b64(rsa.n().to_vec()), "e": b64(rsa.e().to_vec()),
        });
        Self {
            kid: kid.into(),
            der: rsa.private_key_to_der().unwrap(),
            jwk,
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(&self.der)).unwrap()
    }
}

/// What goes into a certificate. [`Spec::new`] is a 30-day end-entity certificate.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub cn: &'a str,
    /// basicConstraints CA:TRUE (critical).
    pub ca: bool,
    /// notBefore and notAfter, in days from now (negative: in the past).
    pub days: (i64, i64),
    /// subjectAltName DNS names and IP addresses.
    pub dns: &'a [&'a str],
    pub ips: &'a [&'a str],
    /// An authorityInfoAccess "CA Issuers" URL.
    pub aia: Option<&'a str>,
}

impl<'a> Spec<'a> {
    pub fn new(cn: &'a str) -> Self {
        Self {
            cn,
            ca: false,
            days: (0, 30),
            dns: &[],
            ips: &[],
            aia: None,
        }
    }
}

/// A certificate for `key`, signed by `issuer` (certificate and key), or self-signed.
#[allow(deprecated)] // X509Extension::new_nid: openssl has no builder for authorityInfoAccess
pub fn certificate(
    spec: &Spec,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", spec.cn).unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let serial = openssl::bn::BigNum::from_u32(uuid::Uuid::new_v4().as_u128() as u32 >> 1)
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    builder.set_serial_number(&serial).unwrap();
    builder.set_subject_name(&name).unwrap();
    builder
        .set_issuer_name(issuer.map(|(cert, _)| cert.subject_name()).unwrap_or(&name))
        .unwrap();
    builder.set_pubkey(key).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    builder
        .set_not_before(&Asn1Time::from_unix(now + spec.days.0 * 86_400).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::from_unix(now + spec.days.1 * 86_400).unwrap())
        .unwrap();
    if spec.ca {
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    }
    if !spec.dns.is_empty() || !spec.ips.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for dns in spec.dns {
            san.dns(dns);
        }
        for ip in spec.ips {
            san.ip(ip);
        }
        let san = san
            .build(&builder.x509v3_context(issuer.map(|(cert, _)| &**cert), None))
            .unwrap();
        builder.append_extension(san).unwrap();
    }
    if let Some(url) = spec.aia {
        let extension = openssl::x509::X509Extension::new_nid(
            None,
            None,
            openssl::nid::Nid::INFO_ACCESS,
            &format!("caIssuers;URI:{url}"),
        )
        .unwrap();
        builder.append_extension(extension).unwrap();
    }
    let signer = issuer.map(|(_, key)| key).unwrap_or(key);
    builder.sign(signer, MessageDigest::sha256()).unwrap();
    builder.build()
}

/// A CA (self-signed) and the certificates it issues.
pub struct Ca {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Ca {
    pub fn new(cn: &str) -> Self {
        let key = rsa(2048);
        let cert = certificate(
            &Spec {
                ca: true,
                ..Spec::new(cn)
            },
            &key,
            None,
        );
        Self { cert, key }
    }

    /// A certificate for a fresh key, signed by this CA: (certificate PEM, key PEM).
    pub fn issue(&self, spec: &Spec) -> (Vec<u8>, Vec<u8>) {
        let key = rsa(2048);
        let cert = certificate(spec, &key, Some((&self.cert, &self.key)));
        (
            cert.to_pem().unwrap(),
            key.private_key_to_pem_pkcs8().unwrap(),
        )
    }
}
