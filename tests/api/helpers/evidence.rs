//! Evidence: the recorded AWS vector and AWS-style documents signed with generated keys.

use super::*;

/// Recorded AWS vector (exact bytes; see tests/fixtures/aws).
pub const RECORDED_DOCUMENT: &str = include_str!("../../fixtures/aws/us-east-1-document.json");
pub const RECORDED_SIGNATURE: &str = include_str!("../../fixtures/aws/us-east-1-signature.txt");
pub const RECORDED_INSTANCE: &str = "i-076e9b91f7c420782";

/// An AWS-style signing key with its self-signed certificate written to a PEM file.
pub struct AwsKey {
    key: PKey<Private>,
    pub certificate: X509,
    pub pem_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl AwsKey {
    /// `bits` 1024 mimics AWS's legacy `signature` keys; 2048 its `rsa2048` ones.
    pub fn generate(bits: u32) -> Self {
        let key = crate::pki::rsa(bits);
        let certificate = crate::pki::certificate(
            &crate::pki::Spec {
                days: (0, 365),
                ..crate::pki::Spec::new("ec2.amazonaws.com")
            },
            &key,
            None,
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pem_path = dir.path().join("aws.pem");
        std::fs::write(
            &pem_path,
            certificate.to_pem().unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Self {
            key,
            certificate,
            pem_path,
            _dir: dir,
        }
    }

    /// `REGION=PATH` for `--aws-certificate`.
    pub fn flag(&self, region: &str) -> String {
        format!("{region}={}", self.pem_path.display())
    }

    /// Base64 RSA PKCS#1 v1.5 SHA-256 over the document, wrapped at 64 columns as IMDS does.
    pub fn sign(&self, document: &str) -> String {
        let mut signer =
            Signer::new(MessageDigest::sha256(), &self.key).unwrap_or_else(|e| panic!("{e}"));
        signer
            .update(document.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        wrap64(&signer.sign_to_vec().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Base64 PKCS#7 SignedData over the document, like IMDS `/rsa2048`: no certificates,
    /// detached or with the content attached.
    pub fn sign_pkcs7(&self, document: &str, detached: bool) -> String {
        use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
        use openssl::stack::Stack;
        let mut flags = Pkcs7Flags::BINARY | Pkcs7Flags::NOCERTS;
        if detached {
            flags |= Pkcs7Flags::DETACHED;
        }
        let certs = Stack::new().unwrap_or_else(|e| panic!("{e}"));
        let pkcs7 = Pkcs7::sign(
            &self.certificate,
            &self.key,
            &certs,
            document.as_bytes(),
            flags,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        wrap64(&pkcs7.to_der().unwrap_or_else(|e| panic!("{e}")))
    }
}

fn wrap64(bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    b64.as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An instance identity document in IMDS's own layout.
pub fn aws_document(instance_id: &str, region: &str, account: &str) -> String {
    format!(
        "{{\n  \"accountId\" : \"{account}\",\n  \"architecture\" : \"x86_64\",\n  \"availabilityZone\" : \"{region}a\",\n  \"imageId\" : \"ami-0c02fb55956c7d316\",\n  \"instanceId\" : \"{instance_id}\",\n  \"instanceType\" : \"t3.micro\",\n  \"pendingTime\" : \"2026-11-01T10:00:00Z\",\n  \"privateIp\" : \"10.0.0.12\",\n  \"region\" : \"{region}\",\n  \"version\" : \"2017-09-30\"\n}}"
    )
}

pub fn aws_request(document: &str, signature: &str, agent_name: &str) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        identity: Some(pb::authenticate_request::Identity::Aws(
            pb::AwsInstanceIdentity {
                document: document.into(),
                signature: signature.into(),
                rsa2048: String::new(),
            },
        )),
        agent_name: agent_name.into(),
    }
}

/// A fresh random EC2 instance id.
pub fn instance_id() -> String {
    format!("i-{}", &Uuid::new_v4().simple().to_string()[..17])
}

/// A login for `instance` with a document signed by `key` (us-east-1).
pub fn request(key: &AwsKey, instance: &str) -> pb::AuthenticateRequest {
    let document = aws_document(instance, "us-east-1", "123456789012");
    aws_request(&document, &key.sign(&document), "")
}
