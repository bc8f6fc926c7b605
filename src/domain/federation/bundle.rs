//! SPIFFE bundles: the document of the SPIFFE Trust Domain and Bundle specification (§4), which
//! meshroot serves for each of its trust domains and reads from partners.
//!
//! A bundle is an RFC 7517 JWK Set. Each X.509 authority is one key with `"use": "x509-svid"`
//! and exactly one certificate in `x5c`, besides the key's own parameters (`kty` and `crv`,
//! `x`, `y` or `n`, `e`), which must be the certificate's key (go-jose, which go-spiffe and
//! Istio read bundles with, refuses a key whose parameters differ from its certificate).
//! `spiffe_sequence` rises with every change; `spiffe_refresh_hint` says, in seconds, how often
//! to fetch again. Istio's fetcher (istio/istio `86c9f01fd73`, `pkg/spiffe/spiffe.go`
//! `RetrieveSpiffeBundleRootCerts`) takes the `x509-svid` keys, each with exactly one
//! certificate, and refuses a bundle without one.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::domain::digest::sha256;
use crate::domain::identity::TrustDomain;

/// The most a bundle document may hold (bytes): more is refused, not parsed.
pub(crate) const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// The most X.509 authorities a bundle may hold.
pub(crate) const MAX_AUTHORITIES: usize = 64;

/// Why a bundle document was refused. Never the partner's text: a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("the document is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("the document is not a JWK Set: {0}")]
    NotJwks(String),
    #[error("key {0}: an x509-svid key must carry exactly one certificate in x5c")]
    CertificateCount(usize),
    #[error("key {0}: x5c is not base64 DER of an X.509 certificate")]
    Certificate(usize),
    #[error("key {0}: the certificate is not a CA certificate")]
    NotCa(usize),
    #[error("key {0}: the key's parameters are not the certificate's key")]
    KeyMismatch(usize),
    #[error("key {0}: the certificate's key type cannot be a JWK here (EC P-256/384/521 or RSA)")]
    KeyType(usize),
    #[error("the bundle holds no X.509 authority (no key with \"use\": \"x509-svid\")")]
    NoAuthority,
    #[error("the bundle holds more than {MAX_AUTHORITIES} X.509 authorities")]
    TooMany,
}

/// One trust domain's X.509 authorities, as served or as fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeBundle {
    pub trust_domain: TrustDomain,
    /// The roots, in the order of the document.
    pub authorities: Vec<CertificateDer<'static>>,
    /// `spiffe_sequence` (0 when absent).
    pub sequence: u64,
    /// `spiffe_refresh_hint` (None when absent).
    pub refresh_hint: Option<Duration>,
}

#[derive(Serialize, Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

/// A JWK's key parameters, as derived from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyParameters {
    Ec {
        crv: &'static str,
        x: String,
        y: String,
    },
    Rsa {
        n: String,
        e: String,
    },
}

impl KeyParameters {
    fn of(certificate: &X509Certificate<'_>) -> Option<Self> {
        let spki = certificate.public_key();
        match spki.parsed().ok()? {
            PublicKey::EC(point) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())?
                    .to_id_string();
                let crv = match curve.as_str() {
                    "1.2.840.10045.3.1.7" => "P-256",
                    "1.3.132.0.34" => "P-384",
                    "1.3.132.0.35" => "P-521",
                    _ => return None,
                };
                let data = point.data();
                // Uncompressed: 0x04 || X || Y.
                if data.first() != Some(&4) || data.len() % 2 != 1 {
                    return None;
                }
                let half = (data.len() - 1) / 2;
                Some(Self::Ec {
                    crv,
                    x: URL_SAFE_NO_PAD.encode(&data[1..1 + half]),
                    y: URL_SAFE_NO_PAD.encode(&data[1 + half..]),
                })
            }
            PublicKey::RSA(rsa) => {
                let trim = |bytes: &[u8]| -> Vec<u8> {
                    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
                    bytes[start..].to_vec()
                };
                Some(Self::Rsa {
                    n: URL_SAFE_NO_PAD.encode(trim(rsa.modulus)),
                    e: URL_SAFE_NO_PAD.encode(trim(rsa.exponent)),
                })
            }
            _ => None,
        }
    }

    fn to_json(&self, certificate: &[u8]) -> serde_json::Value {
        let x5c = [STANDARD.encode(certificate)];
        match self {
            Self::Ec { crv, x, y } => serde_json::json!({
                "use": "x509-svid", "kty": "EC", "crv": crv, "x": x, "y": y, "x5c": x5c,
            }),
            Self::Rsa { n, e } => serde_json::json!({
                "use": "x509-svid", "kty": "RSA", "n": n, "e": e, "x5c": x5c,
            }),
        }
    }

    fn matches(&self, key: &serde_json::Value) -> bool {
        let field = |name: &str| key.get(name).and_then(|v| v.as_str());
        match self {
            Self::Ec { crv, x, y } => {
                field("kty") == Some("EC")
                    && field("crv") == Some(crv)
                    && field("x") == Some(x)
                    && field("y") == Some(y)
            }
            Self::Rsa { n, e } => {
                field("kty") == Some("RSA") && field("n") == Some(n) && field("e") == Some(e)
            }
        }
    }
}

impl SpiffeBundle {
    /// The document (§4): one `x509-svid` key per authority. Fails only for a key type a JWK
    /// cannot carry here.
    pub fn to_json(&self) -> Result<String, BundleError> {
        let mut keys = Vec::with_capacity(self.authorities.len());
        for (index, der) in self.authorities.iter().enumerate() {
            let (_, certificate) =
                X509Certificate::from_der(der).map_err(|_| BundleError::Certificate(index))?;
            let parameters = KeyParameters::of(&certificate).ok_or(BundleError::KeyType(index))?;
            keys.push(parameters.to_json(der));
        }
        let document = Document {
            keys,
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint.map(|hint| hint.as_secs()),
        };
        serde_json::to_string_pretty(&document).map_err(|e| BundleError::NotJwks(e.to_string()))
    }

    /// Reads a partner's document for `trust_domain`, as strictly as Istio's fetcher and
    /// go-jose together: every `x509-svid` key carries one CA certificate whose key its
    /// parameters are; at least one. Other keys (`jwt-svid`) are ignored.
    pub fn parse(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge);
        }
        let document: Document = serde_json::from_slice(bytes).map_err(|e| {
            BundleError::NotJwks(format!("line {}, column {}", e.line(), e.column()))
        })?;
        let mut authorities = Vec::new();
        for (index, key) in document.keys.iter().enumerate() {
            if key.get("use").and_then(|u| u.as_str()) != Some("x509-svid") {
                continue;
            }
            let certificates = key
                .get("x5c")
                .and_then(|x5c| x5c.as_array())
                .ok_or(BundleError::CertificateCount(index))?;
            let [encoded] = certificates.as_slice() else {
                return Err(BundleError::CertificateCount(index));
            };
            let der = encoded
                .as_str()
                .and_then(|text| STANDARD.decode(text).ok())
                .ok_or(BundleError::Certificate(index))?;
            let (rest, certificate) =
                X509Certificate::from_der(&der).map_err(|_| BundleError::Certificate(index))?;
            if !rest.is_empty() {
                return Err(BundleError::Certificate(index));
            }
            if !certificate.is_ca() {
                return Err(BundleError::NotCa(index));
            }
            let parameters = KeyParameters::of(&certificate).ok_or(BundleError::KeyType(index))?;
            if !parameters.matches(key) {
                return Err(BundleError::KeyMismatch(index));
            }
            if authorities.len() == MAX_AUTHORITIES {
                return Err(BundleError::TooMany);
            }
            authorities.push(CertificateDer::from(der));
        }
        if authorities.is_empty() {
            return Err(BundleError::NoAuthority);
        }
        Ok(Self {
            trust_domain,
            authorities,
            sequence: document.spiffe_sequence.unwrap_or(0),
            refresh_hint: document.spiffe_refresh_hint.map(Duration::from_secs),
        })
    }

    /// What identifies the authorities (not the sequence or hint): SHA-256 over their
    /// SHA-256s, in order.
    pub fn authorities_sha256(&self) -> [u8; 32] {
        authorities_sha256(&self.authorities)
    }
}

/// SHA-256 over the SHA-256 of each certificate, in order.
pub fn authorities_sha256(authorities: &[CertificateDer<'_>]) -> [u8; 32] {
    let digests: Vec<u8> = authorities
        .iter()
        .flat_map(|der| sha256(der).to_vec())
        .collect();
    sha256(&digests)
}

/// The sequence number a bundle's content implies: the latest NotBefore plus the earliest, in
/// Unix seconds. Every replica computes the same number from the same roots, and both moves
/// of a rotation raise it: adding a newer root raises the latest, retiring the oldest raises the
/// earliest. (A change that lowers it, such as withdrawing the newest root, gets the previous
/// number plus one from the store instead.)
pub fn content_sequence(authorities: &[CertificateDer<'_>]) -> u64 {
    let not_befores: Vec<u64> = authorities
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok())
        .map(|(_, c)| u64::try_from(c.validity().not_before.timestamp()).unwrap_or(0))
        .collect();
    let latest = not_befores.iter().copied().max().unwrap_or(0);
    let earliest = not_befores.iter().copied().min().unwrap_or(0);
    latest.saturating_add(earliest)
}

/// The sequence to serve for a bundle whose authorities hash to `digest`, given the last one
/// served (`previous`: its digest and sequence): unchanged for the same authorities, else the
/// larger of the content's number and the previous plus one, so it only ever rises.
pub(crate) fn next_sequence(
    previous: Option<([u8; 32], u64)>,
    digest: [u8; 32],
    content: u64,
) -> u64 {
    match previous {
        Some((last, sequence)) if last == digest => sequence,
        Some((_, sequence)) => content.max(sequence.saturating_add(1)),
        None => content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn ca(key: &KeyPair, not_before_year: i32) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(not_before_year, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_before_year + 10, 1, 1);
        params.self_signed(key).unwrap().der().clone()
    }

    fn bundle(authorities: Vec<CertificateDer<'static>>) -> SpiffeBundle {
        SpiffeBundle {
            trust_domain: TrustDomain::new("b.example").unwrap(),
            authorities,
            sequence: 7,
            refresh_hint: Some(Duration::from_secs(300)),
        }
    }

    #[test]
    fn a_served_bundle_reads_back_with_its_keys_sequence_and_hint() {
        let ec = ca(&KeyPair::generate().unwrap(), 2026);
        let p384 = ca(
            &KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            2026,
        );
        let served = bundle(vec![ec, p384]);
        let json = served.to_json().unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["keys"][0]["use"], "x509-svid");
        assert_eq!(value["keys"][0]["crv"], "P-256");
        assert_eq!(value["keys"][1]["crv"], "P-384");
        assert_eq!(value["spiffe_sequence"], 7);
        assert_eq!(value["spiffe_refresh_hint"], 300);
        let read = SpiffeBundle::parse(served.trust_domain.clone(), json.as_bytes()).unwrap();
        assert_eq!(read, served);
    }

    #[test]
    fn documents_istio_or_go_jose_would_refuse_are_refused() {
        let root = ca(&KeyPair::generate().unwrap(), 2026);
        let json = bundle(vec![root.clone()]).to_json().unwrap();
        let td = || TrustDomain::new("b.example").unwrap();
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        // Two certificates in one key.
        value["keys"][0]["x5c"] =
            serde_json::json!([STANDARD.encode(&root), STANDARD.encode(&root)]);
        assert_eq!(
            SpiffeBundle::parse(td(), value.to_string().as_bytes()),
            Err(BundleError::CertificateCount(0))
        );
        // Parameters of another key.
        let other = ca(&KeyPair::generate().unwrap(), 2026);
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["keys"][0]["x5c"] = serde_json::json!([STANDARD.encode(&other)]);
        assert_eq!(
            SpiffeBundle::parse(td(), value.to_string().as_bytes()),
            Err(BundleError::KeyMismatch(0))
        );
        // Only JWT authorities.
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["keys"][0]["use"] = "jwt-svid".into();
        assert_eq!(
            SpiffeBundle::parse(td(), value.to_string().as_bytes()),
            Err(BundleError::NoAuthority)
        );
        // A leaf is no authority.
        let mut params = CertificateParams::new(vec!["leaf.example".into()]).unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        let leaf = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let document = bundle(vec![leaf.der().clone()]).to_json().unwrap();
        assert_eq!(
            SpiffeBundle::parse(td(), document.as_bytes()),
            Err(BundleError::NotCa(0))
        );
        assert!(matches!(
            SpiffeBundle::parse(td(), b"{\"keys\": 3}"),
            Err(BundleError::NotJwks(_))
        ));
        assert_eq!(
            SpiffeBundle::parse(td(), &vec![b' '; MAX_BUNDLE_BYTES + 1]),
            Err(BundleError::TooLarge)
        );
    }

    #[test]
    fn both_moves_of_a_rotation_raise_the_sequence_and_nothing_lowers_it() {
        let old = ca(&KeyPair::generate().unwrap(), 2020);
        let new = ca(&KeyPair::generate().unwrap(), 2026);
        let before = content_sequence(std::slice::from_ref(&old));
        let during = content_sequence(&[old.clone(), new.clone()]);
        let after = content_sequence(std::slice::from_ref(&new));
        assert!(
            before < during && during < after,
            "{before} {during} {after}"
        );
        // Served numbers: the content's, the same on every replica, while it rises...
        let digest = |roots: &[CertificateDer<'static>]| authorities_sha256(roots);
        let only_old = digest(std::slice::from_ref(&old));
        let both = digest(&[old.clone(), new.clone()]);
        let first = next_sequence(None, only_old, before);
        let second = next_sequence(Some((only_old, first)), both, during);
        assert_eq!((first, second), (before, during));
        // ...unchanged for the same roots, and one more when the content's number would fall.
        assert_eq!(next_sequence(Some((only_old, 9)), only_old, 1), 9);
        let withdrawn = next_sequence(Some((both, during)), only_old, before);
        assert_eq!(withdrawn, during + 1);
    }
}
