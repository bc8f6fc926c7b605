//! The check every leaf passes before it leaves: it verifies with rustls-webpki and names exactly
//! what was granted (as SPIRE's `credvalidator` does). A failure is an internal error, never the
//! client's fault.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::SigningError;
use crate::identity::{AltNames, SpiffeId};

/// What a leaf certifies.
#[derive(Debug, Clone, Copy)]
pub(super) enum LeafSubject<'a> {
    /// A workload: exactly one URI SAN, EKU serverAuth + clientAuth.
    Workload(&'a SpiffeId),
    /// A server: DNS SANs, EKU serverAuth; with a SPIFFE identity (istiod's certificate) also
    /// its URI SAN and EKU clientAuth.
    Server(&'a [String], Option<&'a SpiffeId>),
}

pub(super) fn verify_path(
    der: &CertificateDer<'_>,
    anchors: &[TrustAnchor<'_>],
    intermediates: &[CertificateDer<'_>],
    subject: LeafSubject<'_>,
    now: SystemTime,
) -> Result<(), SigningError> {
    let leaf = webpki::EndEntityCert::try_from(der).map_err(SigningError::Verify)?;
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let usage = match subject {
        LeafSubject::Workload(_) => webpki::KeyUsage::client_auth(),
        LeafSubject::Server(..) => webpki::KeyUsage::server_auth(),
    };
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        anchors,
        intermediates,
        UnixTime::since_unix_epoch(Duration::from_secs(seconds)),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(SigningError::Verify)
}

/// The leaf carries exactly the granted names, and a workload leaf also allows serverAuth.
pub(super) fn check_names(der: &[u8], subject: LeafSubject<'_>) -> Result<(), SigningError> {
    let (_, leaf) = X509Certificate::from_der(der).map_err(|_| SigningError::IdentityCheck)?;
    let AltNames { uris, dns, .. } = match AltNames::of_certificate(&leaf) {
        names if names.non_uri_dns() == 0 => names,
        _ => return Err(SigningError::IdentityCheck),
    };
    let server_auth = leaf.extensions().iter().any(|extension| {
        matches!(extension.parsed_extension(), ParsedExtension::ExtendedKeyUsage(eku) if eku.server_auth)
    });
    let names_match = match subject {
        LeafSubject::Workload(identity) => {
            dns.is_empty() && uris.len() == 1 && uris[0] == identity.to_string()
        }
        LeafSubject::Server(names, identity) => {
            let uri = identity.map(|identity| identity.to_string());
            uris == uri.iter().map(String::as_str).collect::<Vec<_>>()
                && dns == names.iter().map(String::as_str).collect::<Vec<_>>()
        }
    };
    if names_match && server_auth && leaf.subject().iter_attributes().next().is_none() {
        Ok(())
    } else {
        Err(SigningError::IdentityCheck)
    }
}
