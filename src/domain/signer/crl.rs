//! CRLs signed by a mesh's signing certificate (rcgen writes them): X.509 v2 with a CRL number,
//! the authority key identifier of the signing certificate, thisUpdate/nextUpdate, and per entry
//! the revocation date and reason.

use std::time::SystemTime;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::error::SigningError;
use super::MeshSigner;
use crate::domain::clock::unix_millis;
use crate::domain::revocation::CrlEntry;

impl MeshSigner {
    /// A CRL of this signer listing `entries`, valid from `this_update` to `next_update`. Its
    /// CRL number is thisUpdate in Unix milliseconds: it grows with every CRL any replica signs,
    /// without the replicas agreeing on a counter.
    pub(crate) fn sign_crl(
        &self,
        entries: &[CrlEntry],
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<Vec<u8>, SigningError> {
        sign(
            &self.issuer,
            &self.signing_certificate,
            entries,
            this_update,
            next_update,
        )
    }
}

/// A CRL signed by another CA whose key meshroot holds: a cluster's istiod intermediate (the
/// plug-in path), whose `cacerts` must carry a CRL from it too. `certificate` is its DER, `key`
/// its PEM key.
pub(crate) fn sign_crl_as(
    certificate: &[u8],
    key_pem: &str,
    entries: &[CrlEntry],
    this_update: SystemTime,
    next_update: SystemTime,
) -> Result<Vec<u8>, SigningError> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(SigningError::Build)?;
    let der = rustls_pki_types::CertificateDer::from(certificate.to_vec());
    let issuer = rcgen::Issuer::from_ca_cert_der(&der, key).map_err(SigningError::Build)?;
    sign(&issuer, certificate, entries, this_update, next_update)
}

fn sign(
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    signing_certificate: &[u8],
    entries: &[CrlEntry],
    this_update: SystemTime,
    next_update: SystemTime,
) -> Result<Vec<u8>, SigningError> {
    {
        let number = unix_millis(this_update).max(1) as u64;
        let params = CertificateRevocationListParams {
            this_update: time::OffsetDateTime::from(this_update),
            next_update: time::OffsetDateTime::from(next_update),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|entry| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&entry.serial),
                    revocation_time: time::OffsetDateTime::from(entry.revoked_at),
                    reason_code: Some(entry.reason.to_rcgen()),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: match subject_key_identifier(signing_certificate) {
                Some(ski) => KeyIdMethod::PreSpecified(ski),
                None => KeyIdMethod::Sha256,
            },
        };
        let crl = params.signed_by(issuer).map_err(SigningError::signing)?;
        Ok(crl.der().to_vec())
    }
}

/// The signing certificate's subjectKeyIdentifier, which the CRL's authorityKeyIdentifier must
/// repeat so verifiers pair them.
fn subject_key_identifier(der: &[u8]) -> Option<Vec<u8>> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    certificate
        .extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0.to_vec()),
            _ => None,
        })
}
