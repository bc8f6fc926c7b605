//! PKCS#10 certificate signing requests: PEM/DER → a typed [`CertificateRequest`].
//!
//! This module checks what makes a CSR *well formed and acceptable as a key*: size, encoding,
//! the self-signature (RFC 2986 §3), and the key type and size (RSA 2048–8192 bits, ECDSA P-256 or
//! P-384). What the CSR *asks for* (SANs, subject, extensions) is reported faithfully and judged
//! by `policy`, so every refusal there carries its own reason.

use crate::domain::digest::sha256;
use crate::domain::identity::AltNames;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::pem::{PemObject, SectionKind};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{self as oids, Oid};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as ParsedPublicKey;

/// CSRs larger than this (PEM text, bytes) are refused before any parsing.
pub(crate) const MAX_CSR_BYTES: usize = 32 * 1024;

const RSA_MIN_BITS: u32 = 2048;
const RSA_MAX_BITS: u32 = 8192;

/// Why a CSR could not be accepted as a well-formed request with an acceptable key.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is {size} bytes, more than the {MAX_CSR_BYTES}-byte limit")]
    TooLarge { size: usize },
    #[error("the CSR is not PEM: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("the PEM holds {found} blocks; expected exactly one CERTIFICATE REQUEST")]
    PemBlockCount { found: usize },
    #[error("the PEM block is not a CERTIFICATE REQUEST")]
    PemLabel,
    #[error("the CSR is not valid DER PKCS#10: {0}")]
    Der(String),
    #[error("trailing bytes after the CSR")]
    TrailingData,
    #[error("the CSR's extension request could not be parsed")]
    ExtensionRequest,
    #[error("signature algorithm {oid} is not supported")]
    SignatureAlgorithmUnsupported { oid: String },
    #[error("the CSR's signature does not verify with its own public key")]
    SignatureInvalid,
    #[error("key algorithm {oid} is not supported (RSA or ECDSA P-256/P-384 only)")]
    KeyAlgorithmUnsupported { oid: String },
    #[error("RSA key of {bits} bits is outside {RSA_MIN_BITS}..={RSA_MAX_BITS}")]
    RsaKeySize { bits: u32 },
    #[error("the public key could not be parsed")]
    PublicKeyMalformed,
}

impl CsrError {
    /// A stable, machine-readable reason for records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "csr-too-large",
            Self::Pem(_) | Self::PemBlockCount { .. } | Self::PemLabel => "csr-pem-invalid",
            Self::Der(_) | Self::TrailingData | Self::ExtensionRequest => "csr-der-invalid",
            Self::SignatureAlgorithmUnsupported { .. } => "csr-signature-algorithm-unsupported",
            Self::SignatureInvalid => "csr-signature-invalid",
            Self::KeyAlgorithmUnsupported { .. } | Self::PublicKeyMalformed => {
                "csr-key-unsupported"
            }
            Self::RsaKeySize { .. } => "csr-key-size",
        }
    }
}

/// The kind and size of a subject public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa { bits: u32 },
    EcdsaP256,
    EcdsaP384,
}

impl KeyAlgorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Rsa { .. } => "rsa",
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
        }
    }

    pub fn bits(&self) -> u32 {
        match self {
            Self::Rsa { bits } => *bits,
            Self::EcdsaP256 => 256,
            Self::EcdsaP384 => 384,
        }
    }
}

/// The subject public key of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPublicKey {
    /// DER SubjectPublicKeyInfo, as in the CSR.
    pub spki_der: Vec<u8>,
    pub algorithm: KeyAlgorithm,
}

/// How the CSR's subject looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// No attributes at all (ztunnel).
    Empty,
    /// Exactly one empty Organization, `O=` (istio-agent).
    EmptyOrganization,
    /// Anything else; `has_common_name` tells whether a CN is among it.
    Other { text: String, has_common_name: bool },
}

/// What a CSR asks for, read but not judged.
#[derive(Debug, Clone)]
pub struct CertificateRequest {
    /// SHA-256 of the CSR's DER encoding.
    pub der_sha256: [u8; 32],
    pub public_key: SubjectPublicKey,
    pub subject: Subject,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: usize,
    pub email_sans: usize,
    /// SAN entries of any other kind (otherName, directoryName, ...).
    pub other_sans: usize,
    /// Whether the SAN extension was marked critical (None: no SAN extension).
    pub san_critical: Option<bool>,
    /// BasicConstraints CA:TRUE, or key usages keyCertSign / cRLSign, were asked for.
    pub requests_ca: bool,
    /// Dotted OIDs of requested extensions other than SAN, KU, EKU and BasicConstraints.
    pub unknown_extensions: Vec<String>,
}

/// Parses a PEM CSR as istio-agent and ztunnel send it and checks its signature and key.
pub fn parse_pem(pem: &str) -> Result<CertificateRequest, CsrError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge { size: pem.len() });
    }
    let mut sections = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        sections.push(section.map_err(CsrError::Pem)?);
    }
    if sections.len() != 1 {
        return Err(CsrError::PemBlockCount {
            found: sections.len(),
        });
    }
    let Some((kind, der)) = sections.pop() else {
        return Err(CsrError::PemBlockCount { found: 0 });
    };
    if kind != SectionKind::Csr {
        return Err(CsrError::PemLabel);
    }
    parse_der(&der)
}

/// Parses a DER CSR and checks its signature and key.
pub fn parse_der(der: &[u8]) -> Result<CertificateRequest, CsrError> {
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge { size: der.len() });
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData);
    }
    let info = &csr.certification_request_info;
    let public_key = read_public_key(info)?;
    verify_signature(&csr, &public_key.algorithm)?;

    let mut request = CertificateRequest {
        der_sha256: sha256(der),
        public_key,
        subject: read_subject(&info.subject),
        uri_sans: Vec::new(),
        dns_sans: Vec::new(),
        ip_sans: 0,
        email_sans: 0,
        other_sans: 0,
        san_critical: None,
        requests_ca: false,
        unknown_extensions: Vec::new(),
    };
    read_extensions(&csr, &mut request)?;
    Ok(request)
}

fn read_public_key(
    info: &x509_parser::certification_request::X509CertificationRequestInfo<'_>,
) -> Result<SubjectPublicKey, CsrError> {
    let spki = &info.subject_pki;
    let key_oid = &spki.algorithm.algorithm;
    let algorithm = if *key_oid == oids::OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(ParsedPublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => return Err(CsrError::PublicKeyMalformed),
        };
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(CsrError::RsaKeySize { bits });
        }
        KeyAlgorithm::Rsa { bits }
    } else if *key_oid == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(curve) if curve == oids::OID_EC_P256 => KeyAlgorithm::EcdsaP256,
            Some(curve) if curve == oids::OID_NIST_EC_P384 => KeyAlgorithm::EcdsaP384,
            Some(curve) => {
                return Err(CsrError::KeyAlgorithmUnsupported {
                    oid: curve.to_id_string(),
                })
            }
            None => return Err(CsrError::PublicKeyMalformed),
        }
    } else {
        return Err(CsrError::KeyAlgorithmUnsupported {
            oid: key_oid.to_id_string(),
        });
    };
    Ok(SubjectPublicKey {
        spki_der: spki.raw.to_vec(),
        algorithm,
    })
}

/// Bit length of a big-endian unsigned integer (leading zero bytes and bits ignored).
fn modulus_bits(modulus: &[u8]) -> u32 {
    let significant: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(first) => &modulus[first..],
        None => return 0,
    };
    let leading = significant[0].leading_zeros();
    (significant.len() as u32) * 8 - leading
}

/// RFC 2986 §4.2: the CSR is signed with the private key matching its own public key.
/// SHA-1 and RSA-PSS signatures are not accepted.
fn verify_signature(
    csr: &X509CertificationRequest<'_>,
    key: &KeyAlgorithm,
) -> Result<(), CsrError> {
    let sig_oid = &csr.signature_algorithm.algorithm;
    let unsupported = || CsrError::SignatureAlgorithmUnsupported {
        oid: sig_oid.to_id_string(),
    };
    let algorithm: &'static dyn VerificationAlgorithm = match key {
        KeyAlgorithm::Rsa { .. } => {
            if *sig_oid == oids::OID_PKCS1_SHA256WITHRSA {
                &signature::RSA_PKCS1_2048_8192_SHA256
            } else if *sig_oid == oids::OID_PKCS1_SHA384WITHRSA {
                &signature::RSA_PKCS1_2048_8192_SHA384
            } else if *sig_oid == oids::OID_PKCS1_SHA512WITHRSA {
                &signature::RSA_PKCS1_2048_8192_SHA512
            } else {
                return Err(unsupported());
            }
        }
        KeyAlgorithm::EcdsaP256 => ecdsa_algorithm(
            sig_oid,
            &signature::ECDSA_P256_SHA256_ASN1,
            &signature::ECDSA_P256_SHA384_ASN1,
        )
        .ok_or_else(unsupported)?,
        KeyAlgorithm::EcdsaP384 => ecdsa_algorithm(
            sig_oid,
            &signature::ECDSA_P384_SHA256_ASN1,
            &signature::ECDSA_P384_SHA384_ASN1,
        )
        .ok_or_else(unsupported)?,
    };
    let info = &csr.certification_request_info;
    let public_key =
        UnparsedPublicKey::new(algorithm, info.subject_pki.subject_public_key.as_ref());
    public_key
        .verify(info.raw, csr.signature_value.as_ref())
        .map_err(|_| CsrError::SignatureInvalid)
}

fn ecdsa_algorithm(
    sig_oid: &Oid<'_>,
    with_sha256: &'static signature::EcdsaVerificationAlgorithm,
    with_sha384: &'static signature::EcdsaVerificationAlgorithm,
) -> Option<&'static dyn VerificationAlgorithm> {
    if *sig_oid == oids::OID_SIG_ECDSA_WITH_SHA256 {
        Some(with_sha256)
    } else if *sig_oid == oids::OID_SIG_ECDSA_WITH_SHA384 {
        Some(with_sha384)
    } else {
        None
    }
}

fn read_subject(subject: &x509_parser::x509::X509Name<'_>) -> Subject {
    let attributes: Vec<_> = subject.iter_attributes().collect();
    match attributes.as_slice() {
        [] => Subject::Empty,
        [only]
            if *only.attr_type() == oids::OID_X509_ORGANIZATION_NAME
                && only.as_slice().is_empty() =>
        {
            Subject::EmptyOrganization
        }
        _ => Subject::Other {
            text: subject.to_string(),
            has_common_name: subject.iter_common_name().next().is_some(),
        },
    }
}

fn read_extensions(
    csr: &X509CertificationRequest<'_>,
    request: &mut CertificateRequest,
) -> Result<(), CsrError> {
    let mut seen_request = false;
    for attribute in csr.certification_request_info.iter_attributes() {
        let extensions = match attribute.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(extension_request) => {
                &extension_request.extensions
            }
            // challengePassword and other attributes do not affect the certificate.
            _ => {
                if attribute.oid == oids::OID_PKCS9_EXTENSION_REQUEST {
                    return Err(CsrError::ExtensionRequest);
                }
                continue;
            }
        };
        if seen_request {
            return Err(CsrError::ExtensionRequest);
        }
        seen_request = true;
        for extension in extensions {
            match extension.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    request.san_critical = Some(extension.critical);
                    let mut names = AltNames::default();
                    names.add(&san.general_names);
                    request
                        .uri_sans
                        .extend(names.uris.iter().map(|uri| (*uri).to_owned()));
                    request
                        .dns_sans
                        .extend(names.dns.iter().map(|dns| (*dns).to_owned()));
                    request.ip_sans += names.ip_addresses;
                    request.email_sans += names.emails;
                    request.other_sans += names.others;
                }
                ParsedExtension::BasicConstraints(constraints) => {
                    request.requests_ca |= constraints.ca;
                }
                ParsedExtension::KeyUsage(usage) => {
                    request.requests_ca |= usage.key_cert_sign() || usage.crl_sign();
                }
                ParsedExtension::ExtendedKeyUsage(_) => {}
                ParsedExtension::ParseError { .. } => return Err(CsrError::ExtensionRequest),
                _ => request
                    .unknown_extensions
                    .push(extension.oid.to_id_string()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_ignores_leading_zeros() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[0x00, 0x00]), 0);
    }

    #[test]
    fn refuses_oversized_csr_before_parsing() {
        let huge = "A".repeat(MAX_CSR_BYTES + 1);
        assert!(matches!(
            parse_pem(&huge),
            Err(CsrError::TooLarge { size }) if size == MAX_CSR_BYTES + 1
        ));
    }

    #[test]
    fn refuses_text_that_is_not_pem() {
        let err = parse_pem("hello").err();
        assert_eq!(err.map(|e| e.reason()), Some("csr-pem-invalid"));
    }

    #[test]
    fn refuses_a_certificate_in_place_of_a_csr() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(parse_pem(pem), Err(CsrError::PemLabel)));
    }

    #[test]
    fn refuses_pem_wrapped_garbage() {
        let pem = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(parse_pem(pem), Err(CsrError::Der(_))));
    }
}
