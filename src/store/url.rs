//! A PostgreSQL connection string (URL or libpq key=value) as the service carries it: read
//! once where it enters (`PostgresUrl::parse`), and shown, by `Debug` and `Display` alike,
//! only with every password replaced by [`REDACTED`]. The raw text leaves only through
//! [`PostgresUrl::expose`] (for a config file a tool writes for a child server).

use std::fmt;
use std::path::PathBuf;

/// A checked PostgreSQL connection string; printing it never shows a password.
#[derive(Clone)]
pub struct PostgresUrl {
    text: String,
    parsed: Parsed,
}

impl PostgresUrl {
    /// Reads `text` the way libpq does; the error never contains the password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed = parse(text).map_err(|e| format!("{e} (in {})", redact_postgres_url(text)))?;
        Ok(Self {
            text: text.to_owned(),
            parsed,
        })
    }

    /// What the driver reads: tokio-postgres's settings and the TLS parameters it does not
    /// know.
    pub fn parsed(&self) -> &Parsed {
        &self.parsed
    }

    /// The text as given, password and all.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

/// A connection string read the way libpq reads it: tokio-postgres's settings, and the TLS
/// parameters it does not know.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// Parses a URL or key=value string; the message never contains the password.
pub fn parse(url: &str) -> Result<Parsed, String> {
    let (rest, taken) = super::conninfo::take(url, &["sslmode", "sslrootcert"])
        .ok_or_else(|| "not a PostgreSQL URL or key=value connection string".to_owned())?;
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    for (key, value) in taken {
        match key.as_str() {
            "sslmode" => mode = SslMode::parse(&value)?,
            _ => root_cert = Some(PathBuf::from(value)),
        }
    }
    let config = rest
        .parse::<tokio_postgres::Config>()
        .map_err(|e| e.to_string())?;
    Ok(Parsed {
        config,
        mode,
        root_cert,
    })
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_postgres_url(&self.text))
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

impl std::str::FromStr for PostgresUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

/// What stands in for a password wherever a URL or conninfo is printed or logged.
pub const REDACTED: &str = "REDACTED";

/// A PostgreSQL URL (`postgres://user:password@host/db?password=…`) or libpq key=value
/// string (`password=… host=…`) with every password replaced by [`REDACTED`].
pub fn redact_postgres_url(value: &str) -> String {
    match value.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, hosts)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:{REDACTED}@{hosts}"),
                    None => format!("{userinfo}@{hosts}"),
                },
                None => authority.to_owned(),
            };
            let tail = match tail.split_once('?') {
                Some((path, query)) => {
                    let query: Vec<String> = query
                        .split('&')
                        .map(|pair| match pair.split_once('=') {
                            Some((key, _)) if is_secret_key(key) => format!("{key}={REDACTED}"),
                            _ => pair.to_owned(),
                        })
                        .collect();
                    format!("{path}?{}", query.join("&"))
                }
                None => tail.to_owned(),
            };
            format!("{scheme}://{authority}{tail}")
        }
        None => redact_conninfo(value),
    }
}

/// Keys whose values are secrets, in any case: `password` and `sslpassword` (the client key's
/// passphrase).
fn is_secret_key(key: &str) -> bool {
    let key = key.trim();
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword")
}

/// `password=…` (and `sslpassword=…`, in any case) in a libpq key=value string becomes
/// `password=REDACTED`; a string that does not split into pairs is redacted whole.
fn redact_conninfo(value: &str) -> String {
    use super::conninfo;
    match conninfo::pairs(value) {
        Some(mut pairs) => {
            for pair in pairs.iter_mut().filter(|p| is_secret_key(&p.key)) {
                pair.raw = REDACTED.into();
            }
            conninfo::join(&pairs)
        }
        None => REDACTED.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls_and_conninfo_strings() {
        let cases = [
            (
                "postgres://u:pw@h:5432/db?sslmode=require",
                "postgres://u:REDACTED@h:5432/db?sslmode=require",
            ),
            (
                "postgres://u:p%40w@h1,h2/db",
                "postgres://u:REDACTED@h1,h2/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?password=pw&x=1",
                "postgres://h/db?password=REDACTED&x=1",
            ),
            ("postgres://u:p@w@h/db", "postgres://u:REDACTED@h/db"),
            (
                "host=h password=pw dbname=d",
                "host=h password=REDACTED dbname=d",
            ),
            (
                "host=h password = 'p w\\' x' dbname=d",
                "host=h password=REDACTED dbname=d",
            ),
            ("password=", "password=REDACTED"),
            (
                "host=h PASSWORD=x user=u sslpassword=k",
                "host=h PASSWORD=REDACTED user=u sslpassword=REDACTED",
            ),
            (
                "postgres://h/db?Password=pw&sslpassword=k",
                "postgres://h/db?Password=REDACTED&sslpassword=REDACTED",
            ),
            ("host=h", "host=h"),
        ];
        for (input, expected) in cases {
            assert_eq!(super::redact_postgres_url(input), expected, "{input}");
        }
    }

    #[test]
    fn a_postgres_url_never_shows_its_password_in_debug_or_display_or_errors() {
        for (text, secret) in [
            ("postgres://u:hunter2@h/db?application_name=a", "hunter2"),
            ("host=h password=k2k2 dbname=d", "k2k2"),
        ] {
            let url = PostgresUrl::parse(text).unwrap();
            for shown in [
                format!("{url}"),
                format!("{url:?}"),
                format!("{:?}", Some(&url)),
            ] {
                assert!(!shown.contains(secret), "{shown}");
                assert!(shown.contains("REDACTED"), "{shown}");
            }
            assert_eq!(url.expose(), text);
        }
        let error = PostgresUrl::parse("postgres://u:hunter2@h/db?sslmode=sometimes").unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("sslmode"), "{error}");
    }
}
