//! Pure verifiers of cloud instance-identity evidence.
//!
//! Each verifier is a function of `(evidence, trust material, now)` and returns either the
//! verified instance or an [`IdentityError`]. The error carries the real cause for logs and
//! metrics; callers only ever see the cloud's fixed "Invalid ... identity." message.
//! Nothing in this module touches the database, the network, a file or the clock: clippy's
//! `disallowed_methods` (clock reads, listed in `clippy.toml`) is denied here, and the tidy
//! test `tidy::the_verifiers_do_no_io` fails on any I/O name. Trust material is loaded by
//! [`crate::trust`], which hands the verifiers bytes and parsed keys.
#![deny(clippy::disallowed_methods)]

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod pem;
mod pkcs7;

use std::fmt;
use std::path::PathBuf;

/// Reads an operator's trust file. The loaders take it as an argument ([`crate::trust::read_file`]
/// in the service), so this module does no I/O of its own.
pub type ReadFile<'a> = &'a dyn Fn(&std::path::Path) -> Result<Vec<u8>, TrustError>;

/// The cloud a piece of evidence came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cloud {
    Aws,
    Google,
    Azure,
}

impl Cloud {
    /// The bounded label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Google => "gcp",
            Cloud::Azure => "azure",
        }
    }

    /// The only message a caller sees when this cloud's evidence fails (DESIGN.md 3.1).
    pub fn invalid_identity_message(self) -> &'static str {
        match self {
            Cloud::Aws => "Invalid AWS identity.",
            Cloud::Google => "Invalid GCP identity.",
            Cloud::Azure => "Invalid Azure identity.",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A cloud instance id that came out of verified evidence. It is never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// Wraps a verified id; `None` for an empty one, which must never be looked up, and for one
    /// with a control character (NUL is no text to PostgreSQL, and no cloud or template writes
    /// one): signed evidence with such an id is invalid, and costs no statement.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        if id.is_empty() || id.chars().any(char::is_control) {
            None
        } else {
            Some(Self(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a pinned certificate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    BuiltIn,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::BuiltIn => f.write_str("built-in"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A failure to load trust material at start-up (never seen by callers).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not a usable PEM certificate: {reason}")]
    BadCertificate { what: String, reason: String },
}

/// Why evidence failed. The `Display` text is for logs only, never for the caller.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("evidence does not decode: {0}")]
    Malformed(String),
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    #[error("no trusted key for {0}")]
    NoTrustedKey(String),
    #[error("signer does not chain to a pinned root: {0}")]
    UntrustedChain(String),
    #[error("evidence is not acceptable: {0}")]
    Rejected(String),
    #[error("account or project is not allowed: {0}")]
    NotAllowed(String),
    #[error("the cloud API rules the instance out: {0}")]
    NotLive(String),
}

/// Seconds since the Unix epoch (negative before it), for comparing with token and document
/// timestamps.
pub fn unix_seconds(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Decodes standard base64 after removing all ASCII whitespace, as every cloud's evidence may
/// carry line breaks (IMDS returns the AWS signature on several lines).
pub fn decode_base64(input: &str) -> Result<Vec<u8>, IdentityError> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let decoded = match input.bytes().position(|b| b.is_ascii_whitespace()) {
        Some(first) => {
            let mut compact = Vec::with_capacity(input.len());
            compact.extend_from_slice(&input.as_bytes()[..first]);
            compact.extend(
                input.as_bytes()[first..]
                    .iter()
                    .filter(|b| !b.is_ascii_whitespace()),
            );
            engine.decode(compact)
        }
        None => engine.decode(input),
    };
    decoded.map_err(|e| IdentityError::Malformed(format!("base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_with_embedded_newlines_decodes() {
        assert_eq!(
            decode_base64("aGVs\nbG8=\r\n").ok(),
            Some(b"hello".to_vec())
        );
    }

    #[test]
    fn base64_garbage_is_malformed() {
        assert!(matches!(
            decode_base64("not base64!"),
            Err(IdentityError::Malformed(_))
        ));
    }

    #[test]
    fn empty_instance_id_is_refused() {
        assert!(InstanceId::new("").is_none());
    }

    /// The third review's finding 9: a verified id with NUL reached PostgreSQL (INTERNAL,
    /// "invalid byte sequence").
    #[test]
    fn an_id_with_a_control_character_is_no_instance() {
        assert_eq!(
            InstanceId::new("i-0123456789abcdef0").map(|id| id.to_string()),
            Some("i-0123456789abcdef0".to_owned())
        );
        for bad in [
            "i-01\0",
            "\0",
            "i-\u{1b}[31m",
            "i-\n1",
            "i-\u{7f}",
            "i-\u{85}",
        ] {
            assert!(InstanceId::new(bad).is_none(), "{bad:?}");
        }
    }
}
