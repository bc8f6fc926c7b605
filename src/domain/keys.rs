//! Private keys: generation for `init` and the request client, loading from the PEM forms Istio
//! users have (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`), and PEM
//! encoding of certificates.
//!
//! *ring* signs only with PKCS#8 keys, so PKCS#1 and SEC1 keys are wrapped into a PKCS#8
//! PrivateKeyInfo (RFC 5208 §5) before use.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rcgen::KeyPair;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::der_parser::ber::BerObjectContent;
use x509_parser::der_parser::der::parse_der;
use x509_parser::oid_registry as oids;

/// The library that signs certificates (rcgen's backend).
pub(crate) const SIGNING_BACKEND: &str = if cfg!(feature = "aws-lc") {
    "aws-lc"
} else {
    "ring"
};

/// The key types meshroot generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    #[value(name = "rsa-2048")]
    Rsa2048,
    #[value(name = "rsa-4096")]
    Rsa4096,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        })
    }
}

/// Why a key could not be generated or loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no private key PEM block found")]
    NoKey,
    #[error("the PEM is malformed: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("the key is not an RSA (2048-8192 bit) or ECDSA P-256/P-384 private key")]
    Unsupported,
    #[error("key generation failed")]
    Generation,
}

impl KeyType {
    /// Generates a new private key of this type.
    pub fn generate(&self) -> Result<KeyPair, KeyError> {
        match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|_| KeyError::Generation),
            Self::Rsa2048 => generate_rsa(2048),
            Self::Rsa4096 => generate_rsa(4096),
        }
    }
}

fn generate_rsa(bits: usize) -> Result<KeyPair, KeyError> {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|_| KeyError::Generation)?;
    let der = key.to_pkcs8_der().map_err(|_| KeyError::Generation)?;
    let pkcs8 = PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
        .map_err(|_| KeyError::Generation)
}

/// Loads the first private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key_pem(pem: &[u8]) -> Result<KeyPair, KeyError> {
    let mut found = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(KeyError::Pem)?;
        if matches!(
            kind,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        ) {
            found = Some((kind, der));
            break;
        }
    }
    let (kind, der) = found.ok_or(KeyError::NoKey)?;
    let pkcs8 = match kind {
        SectionKind::RsaPrivateKey => wrap_pkcs8(&algorithm_identifier_rsa(), &der),
        SectionKind::EcPrivateKey => wrap_pkcs8(&algorithm_identifier_ec(sec1_curve(&der)?), &der),
        _ => der,
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    KeyPair::try_from(&key).map_err(|_| KeyError::Unsupported)
}

/// PEM text (RFC 7468) with 64-character lines and a final newline.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// PEM of one certificate.
pub fn certificate_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// A CRL (DER) as PEM (`X509 CRL`).
pub(crate) fn crl_pem(der: &[u8]) -> String {
    pem_encode("X509 CRL", der)
}

/// All CRLs in a PEM text, in order (DER).
pub(crate) fn parse_crls_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, KeyError> {
    rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(pem)
        .map(|crl| crl.map(|der| der.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(KeyError::Pem)
}

/// All certificates in a PEM text, in order.
pub fn parse_certificates_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(KeyError::Pem)
}

/// SEC1 §C.4 ECPrivateKey: the curve comes from the optional `[0] parameters` field.
fn sec1_curve(der: &[u8]) -> Result<&'static [u8], KeyError> {
    let (_, key) = parse_der(der).map_err(|_| KeyError::Unsupported)?;
    let fields = key.as_sequence().map_err(|_| KeyError::Unsupported)?;
    for field in fields {
        if field.header.is_contextspecific() && field.header.tag().0 == 0 {
            let curve = match &field.content {
                BerObjectContent::Unknown(any) => parse_der(any.data)
                    .ok()
                    .and_then(|(_, inner)| inner.as_oid().ok().cloned()),
                BerObjectContent::OID(oid) => Some(oid.clone()),
                _ => None,
            };
            return match curve {
                Some(oid) if oid == oids::OID_EC_P256 => Ok(OID_P256_DER),
                Some(oid) if oid == oids::OID_NIST_EC_P384 => Ok(OID_P384_DER),
                _ => Err(KeyError::Unsupported),
            };
        }
    }
    Err(KeyError::Unsupported)
}

// DER encodings of the OIDs used in PKCS#8 AlgorithmIdentifiers.
const OID_RSA_ENCRYPTION_DER: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC_PUBLIC_KEY_DER: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256_DER: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384_DER: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const DER_NULL: &[u8] = &[0x05, 0x00];

fn algorithm_identifier_rsa() -> Vec<u8> {
    der_tlv(0x30, &[OID_RSA_ENCRYPTION_DER, DER_NULL].concat())
}

fn algorithm_identifier_ec(curve: &[u8]) -> Vec<u8> {
    der_tlv(0x30, &[OID_EC_PUBLIC_KEY_DER, curve].concat())
}

/// RFC 5208 §5: PrivateKeyInfo ::= SEQUENCE { version 0, algorithm, privateKey OCTET STRING }.
fn wrap_pkcs8(algorithm: &[u8], private_key: &[u8]) -> Vec<u8> {
    let version = [0x02, 0x01, 0x00];
    let octets = der_tlv(0x04, private_key);
    der_tlv(0x30, &[&version[..], algorithm, &octets].concat())
}

pub(crate) fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn pem_lines_are_64_chars_and_end_with_newline() {
        let pem = pem_encode("CERTIFICATE", &[0u8; 100]);
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        let back = parse_certificates_pem(pem.as_bytes()).unwrap();
        assert_eq!(back[0].as_ref(), &[0u8; 100][..]);
    }

    #[test]
    fn der_lengths_use_long_form_above_127() {
        assert_eq!(der_tlv(0x04, &[1; 3])[..2], [0x04, 3]);
        assert_eq!(der_tlv(0x04, &[1; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der_tlv(0x04, &[1; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn loads_pkcs8_ec_key_and_rejects_non_keys() {
        let key = KeyType::EcdsaP256.generate().unwrap();
        let loaded = load_private_key_pem(key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(
            loaded.subject_public_key_info(),
            key.subject_public_key_info()
        );
        assert!(matches!(
            load_private_key_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(KeyError::NoKey)
        ));
    }
}
