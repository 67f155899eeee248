//! The typed values of settings. Each type parses itself from the text an operator writes
//! (`FromStr`, used by clap for flags and env vars and by serde for the TOML file) and prints
//! itself back the same way (`Display`, used by `--check-config`), so a value is validated
//! once, by its type, wherever it came from.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// Serialize with `Display` and deserialize through `FromStr`, so the file takes exactly the
/// text a flag takes.
macro_rules! via_text {
    ($($type:ty),* $(,)?) => {$(
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

via_text!(
    Span,
    ListenAddr,
    SchemaMode,
    LogFormat,
    LogFilter,
    HttpUrl,
    RegionFile,
    AccountId,
    AssumeRole,
    ExistingFile,
    JwksSource,
    NonEmpty,
    OnError,
    Pooler,
    Size,
);

/// A duration longer than zero, written like `500ms`, `2s` or `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let duration = humantime::parse_duration(text.trim())
            .map_err(|e| format!("{e} (use a duration such as 500ms or 2s)"))?;
        if duration.is_zero() {
            return Err("must be longer than zero".into());
        }
        Ok(Self(duration))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl From<Span> for Duration {
    fn from(span: Span) -> Duration {
        span.0
    }
}

/// An amount of memory, written like `96MiB`, `1GiB` or a number of bytes; at least 16 MiB
/// (the one such setting is `--memory-budget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let size: bytesize::ByteSize = text
            .trim()
            .parse()
            .map_err(|e| format!("{e} (use a size such as 96MiB or 1GiB)"))?;
        if size.as_u64() < crate::listen::budget::MIN_BUDGET {
            return Err(format!("{text:?} is less than 16MiB"));
        }
        Ok(Self(size.as_u64()))
    }
}

impl fmt::Display for Size {
    /// In the largest binary unit that divides it (`96MiB`), else in bytes: read back exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        match UNITS.iter().find(|(unit, _)| self.0.is_multiple_of(*unit)) {
            Some((unit, name)) => write!(f, "{}{name}", self.0 / unit),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Where the gRPC listener binds: `HOST:PORT`, or `unix:/absolute/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(Self::Unix(PathBuf::from(path))),
            Some(_) => Err("a unix socket path must be absolute (unix:/path)".into()),
            None => parse_socket(text).map(Self::Tcp),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `HOST:PORT` with an IP host.
pub fn parse_socket(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("expected HOST:PORT with an IP host, found {text:?}"))
}

/// `--schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaMode {
    /// The service's own migrations create the tables.
    Owned,
    /// The control plane's tables; no migrations, no writes, a start-up check.
    Coder,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// `--cloud-check-on-error`.
pub use crate::cloud::OnError;

/// `--db-pooler`.
pub use crate::store::Pooler;

/// An enum written as one of a few lower-case words.
macro_rules! words {
    ($type:ty { $($word:literal => $variant:expr),* $(,)? }) => {
        impl FromStr for $type {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text.trim() {
                    $($word => Ok($variant),)*
                    other => Err(format!(
                        "expected {}, found {other:?}",
                        [$($word),*].join(" or ")
                    )),
                }
            }
        }
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                $(if *self == $variant { return f.write_str($word); })*
                Ok(())
            }
        }
    };
}

words!(SchemaMode { "owned" => SchemaMode::Owned, "coder" => SchemaMode::Coder });
words!(LogFormat { "json" => LogFormat::Json, "text" => LogFormat::Text });
words!(OnError { "closed" => OnError::Closed, "open" => OnError::Open });
words!(Pooler {
    "none" => Pooler::None,
    "session" => Pooler::Session,
    "transaction" => Pooler::Transaction,
    "transaction-prepared" => Pooler::TransactionPrepared,
});
words!(Flag { "true" => Flag(true), "false" => Flag(false) });

/// A boolean written exactly `true` or `false` (figment and clap would take `yes`, `on`, `1`);
/// a TOML boolean in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flag(pub bool);

impl serde::Serialize for Flag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Flag {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bool(bool),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bool(value) => Ok(Self(value)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A `tracing` filter such as `info` or `agent_auth=debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(pub String);

impl FromStr for LogFilter {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        tracing_subscriber::EnvFilter::try_new(text).map_err(|e| e.to_string())?;
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Text that is not empty once trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonEmpty(pub String);

impl FromStr for NonEmpty {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" => Err("must not be empty".into()),
            text => Ok(Self(text.to_owned())),
        }
    }
}

impl fmt::Display for NonEmpty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(pub String);

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let url = text.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "expected an http:// or https:// URL, found {text:?}"
            ));
        }
        url.parse::<hyper::Uri>().map_err(|e| e.to_string())?;
        Ok(Self(url.to_owned()))
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A path to a file that exists when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingFile(pub PathBuf);

impl FromStr for ExistingFile {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let path = Path::new(text.trim());
        if path.is_file() {
            Ok(Self(path.to_owned()))
        } else {
            Err(format!("{} is not a readable file", path.display()))
        }
    }
}

impl fmt::Display for ExistingFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// `REGION=PEM_PATH`: an operator's AWS certificate for one region (or `default`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionFile {
    pub region: String,
    pub path: PathBuf,
}

impl FromStr for RegionFile {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (region, path) = text
            .split_once('=')
            .map(|(r, p)| (r.trim(), p.trim()))
            .filter(|(r, p)| !r.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("expected REGION=PEM_PATH, found {text:?}"))?;
        let ExistingFile(path) = path.parse()?;
        Ok(Self {
            region: region.to_owned(),
            path,
        })
    }
}

impl fmt::Display for RegionFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.region, self.path.display())
    }
}

/// An AWS account id: 12 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountId(pub String);

/// `--aws-allowed-account any`: every account, accepted knowingly (an INFO line at start-up
/// instead of the replay warning).
pub const ANY_ACCOUNT: &str = "any";

impl FromStr for AccountId {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let id = text.trim();
        if is_account_id(id) {
            Ok(Self(id.to_owned()))
        } else if id.eq_ignore_ascii_case(ANY_ACCOUNT) {
            Ok(Self(ANY_ACCOUNT.to_owned()))
        } else {
            Err(format!(
                "expected a 12-digit account id (or `{ANY_ACCOUNT}`), found {id:?}"
            ))
        }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_account_id(value: &str) -> bool {
    value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit())
}

/// `ACCOUNT=arn:…`: the role to assume for instances of one AWS account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    pub account: String,
    pub arn: String,
}

impl FromStr for AssumeRole {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().split_once('=') {
            Some((account, arn)) if is_account_id(account) && arn.starts_with("arn:") => Ok(Self {
                account: account.to_owned(),
                arn: arn.to_owned(),
            }),
            _ => Err(format!(
                "expected ACCOUNT=arn:aws:iam::ACCOUNT:role/NAME, found {text:?}"
            )),
        }
    }
}

impl fmt::Display for AssumeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.account, self.arn)
    }
}

/// Where the GCP signing keys come from: a URL or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

impl FromStr for JwksSource {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with("https://") || text.starts_with("http://") {
            let HttpUrl(url) = text.parse()?;
            Ok(Self::Url(url))
        } else if text.is_empty() {
            Err("expected a URL or a file".into())
        } else {
            let ExistingFile(path) = text.parse()?;
            Ok(Self::File(path))
        }
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => f.write_str(url),
            Self::File(path) => path.display().fmt(f),
        }
    }
}

/// An RFC 3339 instant (`--insecure-verify-time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant(pub SystemTime);

impl FromStr for Instant {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_rfc3339_weak(text.trim())
            .map(Self)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_what_they_parse() {
        for text in ["1s", "20ms", "1m 30s"] {
            assert_eq!(text.parse::<Span>().map(|s| s.to_string()), Ok(text.into()));
        }
        for text in ["127.0.0.1:50051", "unix:/run/a.sock", "[::1]:9"] {
            assert_eq!(
                text.parse::<ListenAddr>().map(|a| a.to_string()),
                Ok(text.into())
            );
        }
        for text in ["owned", "coder"] {
            assert_eq!(
                text.parse::<SchemaMode>().map(|s| s.to_string()),
                Ok(text.into())
            );
        }
        assert_eq!(
            "123456789012=arn:aws:iam::123456789012:role/ro"
                .parse::<AssumeRole>()
                .map(|r| r.to_string()),
            Ok("123456789012=arn:aws:iam::123456789012:role/ro".into())
        );
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        assert!("0s".parse::<Span>().is_err());
        assert!("soon".parse::<Span>().is_err());
        assert!("unix:run/a.sock".parse::<ListenAddr>().is_err());
        assert!("nowhere".parse::<ListenAddr>().is_err());
        assert_eq!(
            "yes".parse::<Flag>(),
            Err("expected true or false, found \"yes\"".into())
        );
        assert!("12".parse::<AccountId>().is_err());
        assert!("localhost:5000".parse::<HttpUrl>().is_err());
        assert!("nokey".parse::<RegionFile>().is_err());
        assert!("us-east-1=/no/such.pem".parse::<RegionFile>().is_err());
        assert!("123=arn:aws:iam::123:role/x".parse::<AssumeRole>().is_err());
        assert!(" ".parse::<NonEmpty>().is_err());
        assert!("/no/such/jwks.json".parse::<JwksSource>().is_err());
    }
}
