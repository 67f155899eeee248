//! The PKCS#7 SignedData envelope, read strictly before OpenSSL verifies it.
//!
//! The signature covers the content (through the authenticated attributes) but not the
//! envelope around it: versions, the algorithm identifiers, unauthenticated attributes. OpenSSL
//! ignores several of those (a changed `digestEncryptionAlgorithm`, for one, still verifies),
//! so a verified blob would be malleable: a property test found one-bit changes that passed.
//! [`check_envelope`] accepts exactly the shape AWS and Azure send, with every field that the
//! signature does not cover pinned to its one valid value or a short list of algorithms.
//! BER (AWS's indefinite lengths) and DER (Azure) are both read.

use super::IdentityError;

const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
/// A list of DER-encoded OBJECT IDENTIFIER contents.
type Oids = &'static [&'static [u8]];

const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const SHA256_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const SHA384_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];

/// Each digest (Microsoft writes the RSA signature OIDs there, which OpenSSL reads as their
/// digest) with the signature algorithms that go with it. OpenSSL does not compare the two,
/// so a signature algorithm of another digest is refused here.
const ALGORITHMS: &[(Oids, Oids)] = &[
    (&[SHA256, SHA256_RSA], &[RSA, SHA256_RSA, SHA256_ECDSA]),
    (&[SHA384, SHA384_RSA], &[RSA, SHA384_RSA, SHA384_ECDSA]),
    (&[SHA512, SHA512_RSA], &[RSA, SHA512_RSA]),
];

/// Every digest OID of [`ALGORITHMS`].
const DIGESTS: &[&[u8]] = &[SHA256, SHA256_RSA, SHA384, SHA384_RSA, SHA512, SHA512_RSA];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const NULL: u8 = 0x05;
const OCTET_STRING: u8 = 0x04;
const CONSTRUCTED_OCTET_STRING: u8 = 0x24;
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_1: u8 = 0xa1;
/// Nesting deeper than this is not a PKCS#7 anyone sends.
const MAX_DEPTH: usize = 32;

/// One tag-length-value: `content` is the value (for an indefinite length, the nested values
/// without the end-of-contents marker).
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    /// The whole encoding, header included.
    raw: &'a [u8],
}

fn malformed(what: &str) -> IdentityError {
    IdentityError::Malformed(format!("PKCS#7 envelope: {what}"))
}

/// Reads one TLV; returns it and what follows.
fn read(input: &[u8], depth: usize) -> Result<(Tlv<'_>, &[u8]), IdentityError> {
    if depth > MAX_DEPTH {
        return Err(malformed("nested too deeply"));
    }
    let (&tag, rest) = input.split_first().ok_or_else(|| malformed("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(malformed("high tag numbers"));
    }
    let (&first, rest) = rest.split_first().ok_or_else(|| malformed("truncated"))?;
    if first == 0x80 {
        // Indefinite length (BER): constructed only; children up to end-of-contents.
        if tag & 0x20 == 0 {
            return Err(malformed("indefinite length on a primitive"));
        }
        let mut cursor = rest;
        loop {
            if cursor.starts_with(&[0, 0]) {
                let used = rest.len() - cursor.len();
                let total = input.len() - cursor.len() + 2;
                return Ok((
                    Tlv {
                        tag,
                        content: &rest[..used],
                        raw: &input[..total],
                    },
                    &cursor[2..],
                ));
            }
            let (_, after) = read(cursor, depth + 1)?;
            cursor = after;
        }
    }
    // Universal SEQUENCE and SET are always constructed; INTEGER, OID, NULL and BOOLEAN never.
    if matches!(tag, 0x10 | 0x11 | 0x21 | 0x22 | 0x25 | 0x26) {
        return Err(malformed("a universal type with the wrong form"));
    }
    let (length, rest) = if first & 0x80 == 0 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        // Minimal lengths only: the long form for 128 and up, no leading zero octet.
        if count == 0
            || count > 4
            || rest.len() < count
            || rest[0] == 0
            || (count == 1 && rest[0] < 0x80)
        {
            return Err(malformed("bad length"));
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return Err(malformed("truncated"));
    }
    let header = input.len() - rest.len();
    Ok((
        Tlv {
            tag,
            content: &rest[..length],
            raw: &input[..header + length],
        },
        &rest[length..],
    ))
}

/// Reads the TLV `tag` from the front of `input`.
fn expect(input: &[u8], tag: u8, depth: usize) -> Result<(&[u8], &[u8]), IdentityError> {
    let (tlv, rest) = read(input, depth)?;
    if tlv.tag != tag {
        return Err(malformed(&format!(
            "tag {:#04x} where {tag:#04x} belongs",
            tlv.tag
        )));
    }
    Ok((tlv.content, rest))
}

/// Every TLV of a constructed value's content.
fn children(content: &[u8], depth: usize) -> Result<Vec<Tlv<'_>>, IdentityError> {
    let mut out = Vec::new();
    let mut cursor = content;
    while !cursor.is_empty() {
        let (tlv, rest) = read(cursor, depth)?;
        out.push(tlv);
        cursor = rest;
    }
    Ok(out)
}

/// An AlgorithmIdentifier whose OID is one of `allowed` and whose parameters are absent or
/// NULL; returns the OID.
fn algorithm<'a>(
    tlv: &Tlv<'a>,
    allowed: &[&[u8]],
    depth: usize,
) -> Result<&'a [u8], IdentityError> {
    if tlv.tag != SEQUENCE {
        return Err(malformed("algorithm is not a SEQUENCE"));
    }
    let (oid, rest) = expect(tlv.content, OID, depth)?;
    if !allowed.contains(&oid) {
        return Err(malformed("unexpected algorithm"));
    }
    match children(rest, depth)?.as_slice() {
        [] => Ok(oid),
        [parameters] if parameters.tag == NULL && parameters.content.is_empty() => Ok(oid),
        _ => Err(malformed("unexpected algorithm parameters")),
    }
}

fn version_one(content: &[u8]) -> Result<(), IdentityError> {
    if content == [1] {
        Ok(())
    } else {
        Err(malformed("version is not 1"))
    }
}

/// What the envelope says beyond the signature: whether the content is attached, and who the
/// single SignerInfo says signed (its issuerAndSerialNumber, as written).
pub struct Envelope<'a> {
    /// The SignedData carries its content (else it is detached).
    pub attached: bool,
    /// The issuer Name, its whole DER encoding.
    issuer: &'a [u8],
    /// The serial INTEGER's content octets.
    serial: &'a [u8],
}

impl Envelope<'_> {
    /// Whether `certificate` is the one named, byte for byte: OpenSSL finds the signer by a
    /// canonical (case-folding) comparison of names, so a changed letter in the issuer would
    /// otherwise still verify.
    pub fn check_signer(&self, certificate: &openssl::x509::X509Ref) -> Result<(), IdentityError> {
        let named = certificate
            .issuer_name()
            .to_der()
            .is_ok_and(|issuer| issuer == self.issuer);
        let minimal = match self.serial {
            [] => false,
            [first, ..] if first & 0x80 != 0 => false,
            [0, second, ..] => second & 0x80 != 0,
            _ => true,
        };
        let serial = certificate
            .serial_number()
            .to_bn()
            .ok()
            .zip(openssl::bn::BigNum::from_slice(self.serial).ok())
            .is_some_and(|(cert, named)| cert == named);
        if named && minimal && serial {
            Ok(())
        } else {
            Err(IdentityError::BadSignature(
                "the signer info does not name the signer certificate exactly".into(),
            ))
        }
    }
}

/// Walks every constructed value of the whole tree, so the form and length rules of [`read`]
/// hold everywhere (OpenSSL re-encodes what it parses before checking a signature, so a
/// tolerated odd encoding inside signed attributes would still verify).
fn well_formed(input: &[u8], depth: usize) -> Result<(), IdentityError> {
    let mut cursor = input;
    while !cursor.is_empty() {
        let (tlv, rest) = read(cursor, depth)?;
        if tlv.tag & 0x20 != 0 {
            well_formed(tlv.content, depth + 1)?;
        }
        cursor = rest;
    }
    Ok(())
}

/// Accepts exactly one SignedData with version 1, one digest algorithm, `data` content, no
/// CRLs, and one SignerInfo of version 1 with that digest, a known signature algorithm and no
/// unauthenticated attributes, with nothing after it. The signature itself, the certificates
/// and the authenticated attributes are OpenSSL's to verify.
pub fn check_envelope(der: &[u8]) -> Result<Envelope<'_>, IdentityError> {
    let depth = 1;
    well_formed(der, depth)?;
    let (content_info, trailing) = expect(der, SEQUENCE, depth)?;
    if !trailing.is_empty() {
        return Err(malformed("bytes after the PKCS#7"));
    }
    let (content_type, rest) = expect(content_info, OID, depth + 1)?;
    if content_type != SIGNED_DATA {
        return Err(malformed("not SignedData"));
    }
    let (explicit, rest) = expect(rest, CONTEXT_0, depth + 1)?;
    if !rest.is_empty() {
        return Err(malformed("bytes after the content"));
    }
    let (signed_data, rest) = expect(explicit, SEQUENCE, depth + 2)?;
    if !rest.is_empty() {
        return Err(malformed("bytes after SignedData"));
    }
    let depth = depth + 3;
    let (version, rest) = expect(signed_data, INTEGER, depth)?;
    version_one(version)?;
    let (digests, rest) = expect(rest, SET, depth)?;
    let digest = match children(digests, depth + 1)?.as_slice() {
        [one] => algorithm(one, DIGESTS, depth + 1)?,
        _ => return Err(malformed("not exactly one digest algorithm")),
    };
    let (inner, rest) = expect(rest, SEQUENCE, depth)?;
    let (inner_type, content) = expect(inner, OID, depth + 1)?;
    if inner_type != DATA {
        return Err(malformed("content is not data"));
    }
    // Detached (nothing), or [0] holding one OCTET STRING: primitive, or (BER) constructed
    // of primitive chunks only.
    if !content.is_empty() {
        let (explicit, rest) = expect(content, CONTEXT_0, depth + 1)?;
        if !rest.is_empty() {
            return Err(malformed("bytes after the content"));
        }
        let (octets, rest) = read(explicit, depth + 2)?;
        let chunks_ok = match octets.tag {
            OCTET_STRING => true,
            CONSTRUCTED_OCTET_STRING => children(octets.content, depth + 3)?
                .iter()
                .all(|chunk| chunk.tag == OCTET_STRING),
            _ => false,
        };
        if !chunks_ok || !rest.is_empty() {
            return Err(malformed("content is not one OCTET STRING"));
        }
    }
    let mut fields = children(rest, depth)?;
    let signer_infos = fields
        .pop()
        .filter(|f| f.tag == SET)
        .ok_or_else(|| malformed("no signer infos"))?;
    match fields.as_slice() {
        [] => {}
        [certificates] if certificates.tag == CONTEXT_0 => {}
        _ => {
            return Err(malformed(
                "unexpected fields (CRLs?) before the signer infos",
            ));
        }
    }
    let signer = match children(signer_infos.content, depth + 1)?.as_slice() {
        [one] if one.tag == SEQUENCE => one.content,
        _ => return Err(malformed("not exactly one signer")),
    };
    let depth = depth + 2;
    let (version, rest) = expect(signer, INTEGER, depth)?;
    version_one(version)?;
    let (issuer_and_serial, rest) = expect(rest, SEQUENCE, depth)?;
    let envelope = match children(issuer_and_serial, depth + 1)?.as_slice() {
        [issuer, serial] if issuer.tag == SEQUENCE && serial.tag == INTEGER => Envelope {
            attached: !content.is_empty(),
            issuer: issuer.raw,
            serial: serial.content,
        },
        _ => return Err(malformed("issuerAndSerialNumber")),
    };
    let fields = children(rest, depth)?;
    let (signer_digest, rest) = match fields.split_first() {
        Some((first, rest)) => (algorithm(first, DIGESTS, depth + 1)?, rest),
        None => return Err(malformed("no signer digest")),
    };
    if signer_digest != digest {
        return Err(malformed("signer digest differs from the SignedData's"));
    }
    let rest = match rest.split_first() {
        Some((attributes, rest)) if attributes.tag == CONTEXT_0 => rest,
        _ => rest,
    };
    match rest {
        [signature_algorithm, signature] if signature.tag == OCTET_STRING => {
            let allowed = ALGORITHMS
                .iter()
                .find(|(digests, _)| digests.contains(&digest))
                .map(|(_, signatures)| *signatures)
                .unwrap_or(&[]);
            algorithm(signature_algorithm, allowed, depth + 1)?;
            Ok(envelope)
        }
        [_, _, unauthenticated] if unauthenticated.tag == CONTEXT_1 => {
            Err(malformed("unauthenticated attributes"))
        }
        _ => Err(malformed("unexpected signer fields")),
    }
}
