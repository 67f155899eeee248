//! The trust set: every cloud's pinned keys and certificates, swapped whole on reload.
//!
//! DESIGN.md 4, "Trust reload": SIGHUP re-reads every operator trust file (`--aws-certificate`,
//! `--aws-rsa2048-certificate`, `--azure-roots`, `--azure-intermediates`, a file `--gcp-jwks`)
//! and swaps the whole set atomically. A request takes one snapshot ([`TrustStore::current`])
//! and finishes on it, so requests in flight finish on the set they started with. A file that
//! does not parse keeps the previous set and is counted as an error; nothing here stops the
//! process.

pub mod jwks;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::JwksSource;
use crate::identity::aws::{AwsTrust, AwsTrustConfig};
use crate::identity::azure::{AzureTrust, AzureTrustConfig};
use crate::identity::{TrustError, unix_seconds};
use jwks::Jwks;

/// A certificate that expires within this many seconds is worth a warning.
pub const EXPIRY_WARNING_SECONDS: i64 = 30 * 86_400;

/// Where the trust set is read from: the operator's settings (built-ins are always there).
#[derive(Clone)]
pub struct TrustSources {
    pub aws: AwsTrustConfig,
    pub azure: AzureTrustConfig,
    pub gcp: GcpKeys,
}

/// The GCP keys: a file, read again on every reload, or a remote JWKS that keeps its own
/// background refresher (a reload keeps it as it is).
#[derive(Clone)]
pub enum GcpKeys {
    File(std::path::PathBuf),
    Remote(Arc<Jwks>),
}

impl GcpKeys {
    /// A file source as configured; a URL source as an unfetched JWKS (the caller starts its
    /// refresher when it serves).
    pub fn from_config(source: &JwksSource) -> Result<Self, crate::fetch::FetchError> {
        Ok(match source {
            JwksSource::File(path) => GcpKeys::File(path.clone()),
            JwksSource::Url(url) => GcpKeys::Remote(Arc::new(Jwks::from_url(
                url,
                crate::fetch::Fetcher::new(
                    crate::fetch::DEFAULT_TIMEOUT,
                    crate::fetch::DEFAULT_MAX_BYTES,
                )?,
            ))),
        })
    }
}

/// One consistent trust set.
pub struct TrustSet {
    pub aws: AwsTrust,
    pub azure: AzureTrust,
    /// The AWS and Azure certificates as listed and exported: derived once when the set is
    /// read (fingerprints and dates do not change under a set), not on every `/metrics` scrape.
    pub certificates: Vec<Pinned>,
    pub gcp_keys: Arc<Jwks>,
}

/// The current trust set and how to read it again.
pub struct TrustStore {
    current: ArcSwap<TrustSet>,
    sources: TrustSources,
}

impl TrustStore {
    /// Loads every source once.
    pub fn load(sources: TrustSources) -> Result<Self, TrustError> {
        let set = read_set(&sources)?;
        Ok(Self {
            current: ArcSwap::from_pointee(set),
            sources,
        })
    }

    /// The sources the set is read from.
    pub fn sources(&self) -> &TrustSources {
        &self.sources
    }

    /// The set a request uses from start to end.
    pub fn current(&self) -> Arc<TrustSet> {
        self.current.load_full()
    }

    /// Re-reads every operator file and swaps the set; on any error the previous set stays.
    /// Logs one line and counts `agent_auth_trust_reloads_total{result}` either way.
    pub fn reload(&self) -> Result<(), TrustError> {
        match read_set(&self.sources) {
            Ok(set) => {
                warn_expiring(&set.certificates, SystemTime::now());
                let certificates = set.certificates.len();
                let before = self.current().certificates.len();
                if certificates < before {
                    // A bundle cut exactly at a certificate boundary reads as a whole file.
                    tracing::warn!(
                        before,
                        certificates,
                        "trust reloaded with fewer certificates than before: if a file was cut \
                         short, write it whole and replace it by rename"
                    );
                }
                self.current.store(Arc::new(set));
                crate::metrics::record_trust_reload(true);
                tracing::info!(
                    certificates,
                    "trust reloaded: the new set serves every request from now on"
                );
                Ok(())
            }
            Err(error) => {
                crate::metrics::record_trust_reload(false);
                tracing::error!(%error, "trust reload failed: the previous trust set stays in use");
                Err(error)
            }
        }
    }
}

fn read_set(sources: &TrustSources) -> Result<TrustSet, TrustError> {
    let gcp_keys = match &sources.gcp {
        GcpKeys::File(path) => Arc::new(Jwks::from_file(path)?),
        GcpKeys::Remote(remote) => remote.clone(),
    };
    let aws = AwsTrust::load(&sources.aws, &read_file)?;
    let azure = AzureTrust::load(&sources.azure, &read_file)?;
    let certificates = describe_certificates(&aws, &azure);
    Ok(TrustSet {
        aws,
        azure,
        certificates,
        gcp_keys,
    })
}

/// One pinned certificate or key, as `agent-auth trust` and the expiry metric show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pinned {
    /// `aws`, `azure` or `gcp`.
    pub cloud: &'static str,
    /// AWS: `REGION FORM` (`default signature`); Azure: `root` or `intermediate`; GCP: `jwks`.
    pub role: String,
    /// The certificate's CN (else O); a GCP key's `kid`.
    pub subject: String,
    /// The metric's `subject` label: the region and form for AWS, the CN for Azure.
    pub label: String,
    /// notAfter as RFC 3339; none for a JWKS key.
    pub not_after: Option<String>,
    #[serde(skip)]
    pub not_after_unix: Option<i64>,
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
    /// `built-in` or the file it was read from.
    pub source: String,
    /// Whether it verifies logins now: false for a certificate past its notAfter, kept only
    /// so recorded documents replay (with `--insecure-verify-time`).
    pub in_force: bool,
}

/// Every pinned certificate and key of a set: AWS (by form, then region), Azure, then the GCP
/// keys in force (a remote JWKS changes under the set, so they are read now).
pub fn pinned(set: &TrustSet) -> Vec<Pinned> {
    let now = SystemTime::now();
    let mut out = set.certificates.clone();
    for p in &mut out {
        // An AWS signature verifies whatever the certificate's dates; an Azure chain does not.
        p.in_force = p.cloud == "aws" || !expired(p, now);
    }
    if let Some(keys) = set.gcp_keys.current() {
        let source = set.gcp_keys.source_label();
        for key in &keys.keys {
            let kid = key.common.key_id.clone().unwrap_or_default();
            out.push(Pinned {
                cloud: "gcp",
                role: "jwks".into(),
                subject: kid.clone(),
                label: kid,
                not_after: None,
                not_after_unix: None,
                sha256: String::new(),
                source: source.clone(),
                in_force: true,
            });
        }
    }
    out
}

/// The AWS and Azure certificates of a set, with their fingerprints and dates.
fn describe_certificates(aws: &AwsTrust, azure: &AzureTrust) -> Vec<Pinned> {
    let mut out = Vec::new();
    for pinned in aws.certificates() {
        let form = pinned.form.label();
        out.push(describe(
            "aws",
            format!("{} {form}", pinned.region),
            format!("ec2.amazonaws.com ({}, {form})", pinned.region),
            &pinned.certificate,
            pinned.source.to_string(),
        ));
    }
    for ca in azure.certificates() {
        let subject = crate::metrics::subject_label(&ca.certificate);
        out.push(describe(
            "azure",
            ca.kind.label().into(),
            subject,
            &ca.certificate,
            ca.source.to_string(),
        ));
    }
    out
}

fn describe(
    cloud: &'static str,
    role: String,
    label: String,
    certificate: &openssl::x509::X509Ref,
    source: String,
) -> Pinned {
    let not_after_unix = crate::metrics::not_after(certificate);
    let not_after = not_after_unix.and_then(|t| u64::try_from(t).ok()).map(|t| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t))
            .to_string()
    });
    let sha256 = certificate
        .digest(openssl::hash::MessageDigest::sha256())
        .map(|d| d.iter().map(|b| format!("{b:02X}")).collect())
        .unwrap_or_default();
    Pinned {
        cloud,
        role,
        subject: crate::metrics::subject_label(certificate),
        label,
        not_after,
        not_after_unix,
        sha256,
        source,
        in_force: true,
    }
}

/// Whether a pinned certificate is still valid but ends within [`EXPIRY_WARNING_SECONDS`].
/// Certificates that have already expired are not "expiring": several are kept on purpose
/// (AWS keys verify regardless of dates; old Azure intermediates replay recorded documents,
/// and cannot complete a chain at a later instant).
pub fn expiring_soon(pinned: &Pinned, now: SystemTime) -> bool {
    pinned.not_after_unix.is_some_and(|t| {
        let left = t - unix_seconds(now);
        (0..EXPIRY_WARNING_SECONDS).contains(&left)
    })
}

/// Whether a pinned certificate's notAfter has passed.
pub fn expired(pinned: &Pinned, now: SystemTime) -> bool {
    pinned.not_after_unix.is_some_and(|t| t < unix_seconds(now))
}

/// One line per certificate that expires within 30 days, for `agent-auth trust`.
pub fn expiry_warnings(pinned: &[Pinned], now: SystemTime) -> Vec<String> {
    pinned
        .iter()
        .filter(|p| expiring_soon(p, now))
        .map(|p| {
            format!(
                "{} {} ({}) expires {}, within 30 days",
                p.cloud,
                p.label,
                p.source,
                p.not_after.as_deref().unwrap_or("")
            )
        })
        .collect()
}

/// The `agent-auth trust` output: an aligned table, or a JSON array.
pub fn listing(pinned: &[Pinned], json: bool) -> Result<String, serde_json::Error> {
    if json {
        return serde_json::to_string_pretty(pinned).map(|text| text + "\n");
    }
    let now = SystemTime::now();
    let header = ["CLOUD", "ROLE", "SUBJECT", "NOT AFTER", "SHA-256", "SOURCE"];
    let rows: Vec<[String; 6]> = pinned
        .iter()
        .map(|p| {
            let mut not_after = p.not_after.clone().unwrap_or_else(|| "-".into());
            if !p.in_force {
                not_after.push_str(" (expired: replay only)");
            } else if expired(p, now) {
                not_after.push_str(" (expired; AWS verifies regardless)");
            } else if expiring_soon(p, now) {
                not_after.push_str(" (expires within 30 days)");
            }
            [
                p.cloud.to_owned(),
                p.role.clone(),
                p.subject.clone(),
                not_after,
                if p.sha256.is_empty() {
                    "-".into()
                } else {
                    p.sha256.clone()
                },
                p.source.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    Ok(out)
}

/// Logs one warning per certificate that expires within 30 days.
pub fn warn_expiring(pinned: &[Pinned], now: SystemTime) {
    for p in pinned.iter().filter(|p| expiring_soon(p, now)) {
        tracing::warn!(
            cloud = p.cloud,
            subject = %p.label,
            not_after = p.not_after.as_deref().unwrap_or(""),
            "pinned certificate expires within 30 days"
        );
    }
}

/// Logs one INFO line per trust source, so an operator sees what the process trusts.
pub fn log_sources(set: &TrustSet, sources: &TrustSources) {
    let pinned = pinned(set);
    let count = |cloud: &str, builtin: bool| {
        pinned
            .iter()
            .filter(|p| p.cloud == cloud && (p.source == "built-in") == builtin)
            .count()
    };
    tracing::info!(
        built_in = count("aws", true),
        from_files = count("aws", false),
        "AWS trust: certificates of every region for both proof forms"
    );
    tracing::info!(
        built_in = count("azure", true),
        from_files = count("azure", false),
        replaced_roots = sources.azure.roots.is_some(),
        "Azure trust: pinned roots and intermediates"
    );
    match &sources.gcp {
        GcpKeys::File(path) => tracing::info!(
            file = %path.display(),
            keys = count("gcp", false),
            "GCP trust: JWKS from a file"
        ),
        GcpKeys::Remote(jwks) => tracing::info!(
            url = jwks.source_label(),
            "GCP trust: JWKS fetched in the background (GCP logins wait for the first fetch)"
        ),
    }
    warn_expiring(&pinned, SystemTime::now());
}

/// Where the GCP keys come from and how fresh they are (a remote JWKS is fetched now); a
/// warning when GCP has no key to verify with.
pub async fn gcp_summary(jwks: &Jwks) -> Result<String, String> {
    let source = jwks.source_label();
    let max_age = jwks
        .fetch_now()
        .await
        .map_err(|e| format!("gcp: cannot fetch the JWKS from {source}: {e}"))?;
    let keys = jwks.current().map_or(0, |set| set.keys.len());
    let modified = std::fs::metadata(&source).and_then(|m| m.modified());
    let freshness = match (max_age, modified) {
        (Some(max_age), _) => format!(
            "fetched now; the server keeps it {} (max-age) and refetches on an unknown kid",
            humantime::format_duration(max_age)
        ),
        (None, Ok(modified)) => {
            let age = Duration::from_secs(modified.elapsed().unwrap_or_default().as_secs());
            let freshness = format!(
                "a file, modified {} ({} ago), read at start-up and on SIGHUP",
                humantime::format_rfc3339_seconds(modified),
                humantime::format_duration(age)
            );
            if keys == 0 {
                // An empty file is how an operator turns GCP off: said, not warned about.
                return Ok(format!(
                    "gcp: no key in {source} ({freshness}): GCP logins are refused (GCP is off)"
                ));
            }
            freshness
        }
        (None, Err(_)) => "fetched now (no max-age: the server refetches hourly)".to_owned(),
    };
    if keys == 0 {
        return Err(format!(
            "gcp: the JWKS from {source} holds no key: every GCP login would be refused"
        ));
    }
    Ok(format!("gcp: {keys} JWKS keys from {source}: {freshness}"))
}

/// One line: what verifies logins now, and what is kept only to replay recorded documents.
pub fn in_force_summary(pinned: &[Pinned]) -> String {
    let count = |cloud: &str, in_force: bool| {
        pinned
            .iter()
            .filter(|p| p.cloud == cloud && p.in_force == in_force)
            .count()
    };
    format!(
        "in force: {} AWS certificates, {} Azure certificates, {} GCP keys; kept only to replay \
         recorded documents (expired, never trusted for a new login): {} Azure certificates",
        count("aws", true),
        count("azure", true),
        count("gcp", true),
        count("azure", false)
    )
}

/// Reads an operator's trust file: the only file read of trust material (the verifiers in
/// [`crate::identity`] read none).
///
/// Opened non-blocking, and only a regular file is read: a FIFO (or a device) at a trust path
/// would otherwise hang the reload, and with it every later SIGHUP and the shutdown. Read until
/// two reads [`SETTLE`] apart agree, so a file being rewritten in place is never taken half
/// written (at most [`READS`] reads; replace trust files by rename, which is atomic).
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, crate::identity::TrustError> {
    let mut last = read_once(path)?;
    for _ in 1..READS {
        std::thread::sleep(SETTLE);
        let again = read_once(path)?;
        if again == last {
            return Ok(again);
        }
        last = again;
    }
    Err(crate::identity::TrustError::Read {
        path: path.to_owned(),
        source: std::io::Error::other(
            "the file kept changing while it was read (replace trust files by rename)",
        ),
    })
}

/// How long apart two reads of a trust file must agree.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);
/// Reads of a changing trust file before it is given up on.
const READS: usize = 20;

fn read_once(path: &std::path::Path) -> Result<Vec<u8>, crate::identity::TrustError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let error = |source| crate::identity::TrustError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(error)?;
    let meta = file.metadata().map_err(error)?;
    if !meta.file_type().is_file() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(error)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The third review's finding 8: during a rewrite in place, a reload read the file half
    /// written (3,692 of 4,912 logins of the dropped root failed). A file is taken only once
    /// two reads agree.
    #[test]
    fn a_file_being_rewritten_is_read_only_once_it_is_whole() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roots.pem");
        let whole = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".repeat(40);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&whole[..whole.len() / 2]).unwrap();
        let rest = whole[whole.len() / 2..].to_vec();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(SETTLE / 2);
            file.write_all(&rest).unwrap();
        });
        let read = read_file(&path).unwrap();
        writer.join().unwrap();
        assert_eq!(read.len(), whole.len(), "read half a file being written");
    }

    const JWKS_A: &str = r#"{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid":"a","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;

    fn sources(gcp: std::path::PathBuf) -> TrustSources {
        TrustSources {
            aws: AwsTrustConfig::default(),
            azure: AzureTrustConfig::default(),
            gcp: GcpKeys::File(gcp),
        }
    }

    fn kids(store: &TrustStore) -> Vec<String> {
        store
            .current()
            .gcp_keys
            .current()
            .map(|set| {
                set.keys
                    .iter()
                    .filter_map(|k| k.common.key_id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_reload_rereads_a_gcp_jwks_file_and_a_broken_one_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("jwks.json");
        let write = |text: &str| std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        write(r#"{"keys":[]}"#);
        let store = TrustStore::load(sources(path.clone())).unwrap_or_else(|e| panic!("{e}"));
        assert!(kids(&store).is_empty());
        let before = store.current();
        write(JWKS_A);
        assert!(store.reload().is_ok());
        assert_eq!(kids(&store), ["a"]);
        // A request that started before the reload still holds the old set.
        assert!(before.gcp_keys.current().is_some_and(|k| k.keys.is_empty()));
        write("{ not json");
        let failed = store.reload();
        assert!(
            matches!(&failed, Err(TrustError::BadCertificate { what, .. }) if what.contains("jwks.json")),
            "{:?}",
            failed.err()
        );
        assert_eq!(kids(&store), ["a"]);
    }

    #[test]
    fn every_built_in_certificate_is_listed_once_with_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, JWKS_A).unwrap_or_else(|e| panic!("{e}"));
        let store = TrustStore::load(sources(path)).unwrap_or_else(|e| panic!("{e}"));
        let listed = pinned(&store.current());
        assert_eq!(listed.iter().filter(|p| p.cloud == "aws").count(), 78);
        assert_eq!(listed.iter().filter(|p| p.cloud == "azure").count(), 30);
        assert_eq!(listed.iter().filter(|p| p.cloud == "gcp").count(), 1);
        let labels: std::collections::BTreeSet<&str> = listed
            .iter()
            .filter(|p| p.cloud == "aws")
            .map(|p| p.label.as_str())
            .collect();
        assert_eq!(labels.len(), 78);
        assert!(labels.contains("ec2.amazonaws.com (mx-central-1, rsa2048)"));
    }
}
