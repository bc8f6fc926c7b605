//! CA material and its checks: the signing certificate is a valid CA now, its key matches, and
//! `cert-chain.pem` links it to a root of the bundle.

use std::time::SystemTime;

use crate::domain::signing_key::CaKey;
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::error::SigningError;

/// Loaded CA files, not yet checked.
pub struct CaMaterial {
    pub signing_certificate: CertificateDer<'static>,
    pub signing_key: CaKey,
    /// `cert-chain.pem`: from the signing certificate up to the root (may be empty).
    pub chain: Vec<CertificateDer<'static>>,
    /// `root-cert.pem` (one or several roots), then any extra roots for the bundle.
    pub roots: Vec<CertificateDer<'static>>,
}

/// Why CA material cannot serve. Messages name the file by its Istio `cacerts` name.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("ca-cert.pem cannot be parsed as an X.509 certificate")]
    SigningCertificateUnparsable,
    #[error("ca-cert.pem is not a CA certificate (BasicConstraints CA:TRUE is missing)")]
    NotCa,
    #[error("ca-cert.pem's KeyUsage does not allow certificate signing")]
    NoCertSignUsage,
    #[error("ca-key.pem does not match the public key of ca-cert.pem")]
    KeyMismatch,
    #[error("ca-cert.pem is not valid now (valid {not_before} to {not_after})")]
    NotValidNow {
        not_before: String,
        not_after: String,
    },
    #[error("cert-chain.pem: certificate {position} cannot be parsed")]
    ChainUnparsable { position: usize },
    #[error("cert-chain.pem: certificate {position} is not signed by the certificate after it")]
    ChainBroken { position: usize },
    #[error("root-cert.pem holds no certificate")]
    NoRoots,
    #[error("root-cert.pem: certificate {position} cannot be parsed")]
    RootUnparsable { position: usize },
    #[error("the chain from ca-cert.pem does not end at a root in root-cert.pem")]
    NoTrustedRoot,
    #[error(
        "ca-cert.pem may certify only URIs in {permitted} (its name constraints), so it cannot \
         sign for trust domain {trust_domain}: issue an intermediate that permits every trust \
         domain and alias of the mesh (`meshroot rotate intermediate --trust-domain …` once per \
         name) before adding {trust_domain}"
    )]
    OutsideNameConstraints {
        trust_domain: String,
        permitted: String,
    },
    #[error(
        "ca-cert.pem may not issue CA certificates (its pathLenConstraint is 0), and a cluster of \
         this mesh has cacerts = true: give the mesh an intermediate with --path-len 1 \
         (`meshroot rotate intermediate … --path-len 1`)"
    )]
    NoCaBelow,
    #[error("a probe certificate issued with this material does not verify: {0}")]
    Probe(#[source] SigningError),
}

/// The served intermediates: the signing certificate, then the certificates of `cert-chain.pem`
/// that are neither the signing certificate nor a root of the bundle. Empty when the signing
/// certificate is itself one of the roots.
pub(super) fn intermediates_of(
    signing: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    if roots.contains(signing) {
        return Ok(Vec::new());
    }
    let mut intermediates = vec![signing.clone()];
    for certificate in chain {
        if certificate != signing
            && !roots.contains(certificate)
            && !intermediates.contains(certificate)
        {
            intermediates.push(certificate.clone());
        }
    }
    Ok(intermediates)
}

/// Each served intermediate is signed by the next, and the last by a root of the bundle.
pub(super) fn check_links(
    intermediates: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), MaterialError> {
    let parsed = intermediates
        .iter()
        .enumerate()
        .map(|(position, der)| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|_| MaterialError::ChainUnparsable { position })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let parsed_roots = roots
        .iter()
        .enumerate()
        .map(|(position, der)| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|_| MaterialError::RootUnparsable { position })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (position, pair) in parsed.windows(2).enumerate() {
        if pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .is_err()
        {
            return Err(MaterialError::ChainBroken { position });
        }
    }
    if let Some(top) = parsed.last() {
        let anchored = parsed_roots
            .iter()
            .any(|root| top.verify_signature(Some(root.public_key())).is_ok());
        if !anchored {
            return Err(MaterialError::NoTrustedRoot);
        }
    }
    Ok(())
}

/// A certificate's time (x509-parser bounds it to years 0–9999), never a panic.
pub(super) fn to_system_time(unix_seconds: i64) -> SystemTime {
    crate::domain::clock::from_unix_seconds(unix_seconds)
}

/// The root that issued the topmost served intermediate (its subject names the top's issuer
/// and its key verifies the top's signature), or the signing certificate when it is a root.
pub(super) fn issuing_root(
    signing: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Option<CertificateDer<'static>> {
    let Some(top) = intermediates.last() else {
        return Some(signing.clone());
    };
    let (_, top) = X509Certificate::from_der(top).ok()?;
    roots
        .iter()
        .find(|root| {
            X509Certificate::from_der(root).is_ok_and(|(_, root)| {
                root.subject() == top.issuer()
                    && top.verify_signature(Some(root.public_key())).is_ok()
            })
        })
        .cloned()
}

/// The URI name constraints of the signing certificate, the intermediates above it, and the
/// root that issued the topmost of them.
pub(super) fn path_constraints(
    signing: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    issuing_root: Option<&CertificateDer<'static>>,
) -> Vec<super::constraints::UriConstraints> {
    // The served intermediates start with the signing certificate; none when it is a root.
    let path = if intermediates.is_empty() {
        std::slice::from_ref(signing)
    } else {
        intermediates
    };
    path.iter()
        .chain(issuing_root.filter(|root| !path.contains(root)))
        .filter_map(|der| super::constraints::uri_constraints_of(der))
        .collect()
}
