//! libpq connection strings in their two forms, as far as we need to read and rewrite them:
//! the URL (`postgres://user:password@host/db?key=value`) and the key=value string
//! (`host=h password='a b' dbname=d`). Used to redact passwords and to take out the TLS
//! parameters tokio-postgres does not know (`sslmode=verify-ca|verify-full`, `sslrootcert`).

use percent_encoding::percent_decode_str;

/// One `key=value` of a key=value string: the value as written and as meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub key: String,
    pub raw: String,
    pub value: String,
}

/// Splits a key=value string (values bare or single-quoted, `\` escapes). `None` when it is
/// not one (a key without `=`, an unterminated quote).
pub fn pairs(text: &str) -> Option<Vec<Pair>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_space(&mut i);
        if i >= chars.len() {
            return Some(out);
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        skip_space(&mut i);
        if key.is_empty() || chars.get(i) != Some(&'=') {
            return None;
        }
        i += 1;
        skip_space(&mut i);
        let (raw_start, mut value) = (i, String::new());
        if chars.get(i) == Some(&'\'') {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return None,
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        value.extend(chars.get(i + 1));
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = chars.get(i).filter(|c| !c.is_whitespace()) {
                if *c == '\\' {
                    value.extend(chars.get(i + 1));
                    i += 2;
                } else {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        let raw: String = chars[raw_start..i.min(chars.len())].iter().collect();
        out.push(Pair { key, raw, value });
    }
}

/// Writes pairs back as a key=value string.
pub fn join(pairs: &[Pair]) -> String {
    pairs
        .iter()
        .map(|p| format!("{}={}", p.key, p.raw))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `text` is the URL form.
pub fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Takes the parameters named in `keys` out of a URL or key=value string: returns the string
/// without them and their values (the last one wins, as in libpq).
pub fn take(text: &str, keys: &[&str]) -> Option<(String, Vec<(String, String)>)> {
    let mut taken = Vec::new();
    if is_url(text) {
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let Some((base, query)) = text.split_once('?') else {
            return Some((text.to_owned(), taken));
        };
        // Kept parameters stay exactly as written; taken ones are decoded.
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let (key, value) = p.split_once('=').unwrap_or((p, ""));
                let key = decode(key);
                if keys.contains(&key.as_str()) {
                    taken.push((key, decode(value)));
                    false
                } else {
                    true
                }
            })
            .collect();
        return Some(if kept.is_empty() {
            (base.to_owned(), taken)
        } else {
            (format!("{base}?{}", kept.join("&")), taken)
        });
    }
    let all = pairs(text)?;
    let kept: Vec<Pair> = all
        .into_iter()
        .filter_map(|p| {
            if keys.contains(&p.key.as_str()) {
                taken.push((p.key, p.value));
                None
            } else {
                Some(p)
            }
        })
        .collect();
    Some((join(&kept), taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_strings_split_with_quotes_and_escapes() {
        let parsed = pairs("host=h  password = 'a \\' b' x=\\ y").unwrap_or_default();
        let values: Vec<(&str, &str)> = parsed
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(values, [("host", "h"), ("password", "a ' b"), ("x", " y")]);
        assert!(pairs("host").is_none());
        assert!(pairs("password='open").is_none());
    }

    #[test]
    fn tls_parameters_are_taken_out_of_both_forms() {
        let keys = ["sslmode", "sslrootcert"];
        assert_eq!(
            take(
                "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem",
                &keys
            ),
            Some((
                "postgres://u@h/db?application_name=x".into(),
                vec![
                    ("sslmode".into(), "verify-full".into()),
                    ("sslrootcert".into(), "/ca.pem".into())
                ]
            ))
        );
        assert_eq!(
            take(
                "host=h sslmode=verify-ca sslrootcert='/a b.pem' dbname=d",
                &keys
            ),
            Some((
                "host=h dbname=d".into(),
                vec![
                    ("sslmode".into(), "verify-ca".into()),
                    ("sslrootcert".into(), "/a b.pem".into())
                ]
            ))
        );
    }
}
