//! The one strict reader of PEM certificate files, for every cloud's trust (a pure function:
//! the bytes come from `crate::trust::read_file`).
//!
//! A file is taken only whole: every PEM section a certificate, each with its END line, and
//! nothing but blank space after the last. A file cut anywhere is refused: inside a
//! certificate (no END line), inside a BEGIN line (which OpenSSL would read as one certificate
//! fewer, silently), or after one whole certificate and into the next (which
//! `X509::from_pem` reads as the first alone). A cut exactly at a certificate boundary leaves a
//! whole file with fewer certificates: only the writer can prevent that (replace trust files by
//! rename; docs/trust.md), and the reader never reads a file mid-write (it reads until two reads
//! agree).

use openssl::x509::X509;

/// Every certificate of a PEM file, in order, or why the file is not whole.
pub fn certificates(pem: &[u8]) -> Result<Vec<X509>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let blocks = pem
        .windows(b"-----BEGIN ".len())
        .filter(|w| *w == b"-----BEGIN ")
        .count();
    if blocks == 0 {
        return Err(if pem.iter().all(u8::is_ascii_whitespace) {
            "the file is empty: no PEM certificate in it".into()
        } else {
            "not PEM: no \"-----BEGIN CERTIFICATE-----\" line in it".into()
        });
    }
    // After the last END line only blank space may follow: a file cut inside the next
    // certificate's BEGIN line is otherwise read (by OpenSSL too) as one certificate fewer.
    let tail = pem
        .windows(b"-----END ".len())
        .rposition(|w| w == b"-----END ")
        .map(|end| {
            let line_end = pem[end..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(pem.len(), |n| end + n);
            &pem[line_end..]
        })
        .unwrap_or(pem);
    if tail.iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(
            "text after the last whole certificate: the file is truncated, cut short inside the \
             next one (or holds something else after it)"
                .into(),
        );
    }
    let ders = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("damaged or truncated PEM ({e})"))?;
    if ders.len() != blocks {
        return Err(format!(
            "the file holds {blocks} PEM sections but only {} whole certificates (truncated, or \
             a section that is not a certificate)",
            ders.len()
        ));
    }
    ders.iter()
        .enumerate()
        .map(|(i, der)| {
            X509::from_der(der).map_err(|e| format!("certificate {} does not parse: {e}", i + 1))
        })
        .collect()
}

/// The one certificate of a PEM file that must hold exactly one.
pub fn certificate(pem: &[u8]) -> Result<X509, String> {
    let mut all = certificates(pem)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        n => Err(format!("the file holds {n} certificates; one is expected")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::azure::BUILTIN_ROOTS;

    #[test]
    fn a_bundle_cut_short_is_refused_not_loaded_with_fewer_roots() {
        let whole: Vec<u8> = BUILTIN_ROOTS
            .iter()
            .take(3)
            .flat_map(|pem| pem.to_vec())
            .collect();
        assert_eq!(certificates(&whole).map(|c| c.len()), Ok(3));
        // Cut inside the third certificate, just after its BEGIN line, and inside that line
        // (which OpenSSL reads as two certificates, silently).
        let third = whole.len() - BUILTIN_ROOTS[2].len();
        for cut in [whole.len() - 40, third + 30, third + 16, third + 3] {
            let error = certificates(&whole[..cut]).map(|c| c.len());
            assert!(error.is_err(), "cut at {cut}: {error:?}");
        }
        // A section that is not a certificate.
        let mut with_key = whole.clone();
        with_key
            .extend_from_slice(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(certificates(&with_key).is_err());
    }

    /// The third review's finding 8: an AWS certificate file holding one whole certificate and
    /// half of another was accepted (`X509::from_pem` reads the first); random bytes were
    /// called "truncated".
    #[test]
    fn a_single_certificate_file_must_hold_one_whole_certificate_and_nothing_else() {
        let one = BUILTIN_ROOTS[0];
        assert!(certificate(one).is_ok());
        let mut and_half = one.to_vec();
        and_half.extend_from_slice(&BUILTIN_ROOTS[1][..BUILTIN_ROOTS[1].len() / 2]);
        assert!(certificate(&and_half).is_err());
        let two = [BUILTIN_ROOTS[0], BUILTIN_ROOTS[1]].concat();
        assert!(certificate(&two).unwrap_err().contains("one is expected"));
        assert!(
            certificates(b"\x8f\x01garbage")
                .unwrap_err()
                .starts_with("not PEM")
        );
        assert!(certificates(b"  \n").unwrap_err().contains("empty"));
    }
}
