//! Records of CA keys: which CA certificate was made, or taken into service, with which key,
//! and where that key is (a file, or a token's serial, key label and key id). `meshroot init`
//! records the root and each mesh's intermediate it makes; a server records each intermediate
//! it takes into service that its log does not name yet (after `rotate intermediate`, or a
//! cacerts Secret made elsewhere), before it signs anything with it.

use std::collections::HashSet;
use std::time::SystemTime;

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::pipeline::CertificateAuthority;
use crate::domain::digest::sha256;
use crate::domain::record::{
    CaKeyRecord, CallerRecord, KeyLocation, Outcome, Record, CA_KEY_IN_SERVICE,
};

/// `CaKeyRecord::role` of a root.
pub const ROLE_ROOT: &str = "root";
/// `CaKeyRecord::role` of an intermediate.
pub const ROLE_INTERMEDIATE: &str = "intermediate";

/// A CA certificate and where its key (and its signer's) is.
#[derive(Debug, Clone)]
pub struct CaCertificate<'a> {
    /// `CA_KEY_CREATED` or `CA_KEY_IN_SERVICE`.
    pub event: &'static str,
    /// [`ROLE_ROOT`] or [`ROLE_INTERMEDIATE`].
    pub role: &'static str,
    /// The mesh an intermediate serves (empty for the root).
    pub mesh: &'a str,
    /// The certificate (DER) and its issuer's (the root's own for a root).
    pub certificate: &'a [u8],
    pub issuer: &'a [u8],
    pub key: KeyLocation,
    pub signed_by: Option<KeyLocation>,
}

/// The record of `certificate`, recorded at `now`; None when it is not a certificate.
pub fn ca_key_record(certificate: CaCertificate<'_>, now: SystemTime) -> Option<Record> {
    let (_, parsed) = X509Certificate::from_der(certificate.certificate).ok()?;
    let validity = parsed.validity();
    let record = CaKeyRecord {
        event: certificate.event.to_owned(),
        role: certificate.role.to_owned(),
        mesh: certificate.mesh.to_owned(),
        certificate_sha256: sha256(certificate.certificate).to_vec(),
        issuer_sha256: sha256(certificate.issuer).to_vec(),
        subject: parsed.subject().to_string(),
        serial: parsed.raw_serial().to_vec(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        key: certificate.key,
        signed_by: certificate.signed_by,
    };
    Some(Record::new(
        String::new(),
        now,
        CallerRecord::default(),
        Outcome::CaKey(record),
    ))
}

/// The records a server writes before it signs with `authority`: one per mesh whose signing
/// certificate no record in `recorded` (certificate SHA-256s of CA key records) names.
pub fn unrecorded_signers(
    authority: &CertificateAuthority,
    recorded: &HashSet<Vec<u8>>,
    now: SystemTime,
) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    for (mesh, signer) in authority.mesh_signers() {
        let Some((certificate, issuer)) = signer.signing_certificate_and_issuer() else {
            continue;
        };
        let hash = sha256(certificate).to_vec();
        let named = |record: &Record| matches!(&record.outcome, Outcome::CaKey(ca) if ca.certificate_sha256 == hash && ca.mesh == mesh);
        if recorded.contains(&hash) || records.iter().any(named) {
            continue;
        }
        let role = if certificate == issuer {
            ROLE_ROOT
        } else {
            ROLE_INTERMEDIATE
        };
        records.extend(ca_key_record(
            CaCertificate {
                event: CA_KEY_IN_SERVICE,
                role,
                mesh,
                certificate,
                issuer,
                key: signer.key_location(),
                signed_by: None,
            },
            now,
        ));
    }
    records
}

/// The certificates CA key records name (what [`unrecorded_signers`] leaves out).
pub fn recorded_certificates(records: &[Record]) -> HashSet<Vec<u8>> {
    records
        .iter()
        .filter_map(|record| match &record.outcome {
            Outcome::CaKey(ca) => Some(ca.certificate_sha256.clone()),
            _ => None,
        })
        .collect()
}
