//! Cross-certificates: a partner's root key certified under our root, name-constrained to the
//! partner's trust domain.
//!
//! A partner's root placed in a mesh's trust bundle would be trusted by every Envoy of the mesh
//! for every identity (Istio's default validator binds no root to a trust domain), so the
//! partner could mint `spiffe://b.example/...` and be believed. Instead, the mesh's bundle
//! carries a certificate with the partner root's subject and key, issued by our root, whose
//! `permittedSubtrees` allow URIs of the partner's trust domain only. A partner chain (leaf,
//! partner intermediates) then reaches our root only through it, and the verifiers that
//! enforce URI name constraints (Envoy's BoringSSL, Go's crypto/x509, OpenSSL) refuse any other
//! name. rustls-webpki (ztunnel) refuses every chain that carries a URI constraint: a mesh with
//! ztunnel gets no partner traffic through it (docs/meshes.md, "Partners outside the shared root").
//!
//! The subject and the subject key identifier are byte for byte the partner root's, so path
//! builders that match names (OpenSSL, Go) and key identifiers (OpenSSL's AKID check) find it.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyUsagePurpose, SerialNumber, SigningKey,
};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::domain::digest::sha256;
use crate::domain::identity::TrustDomain;
use crate::domain::signer::constraints::partner_name_constraints;

/// Why a cross-certificate could not be made or is not what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CrossError {
    #[error("the partner root cannot be parsed")]
    PartnerRoot,
    #[error(
        "the partner root's subject cannot be written again byte for byte (a multi-valued \
         name, or a BMP or universal string)"
    )]
    Subject,
    #[error("the partner certificate is not a CA")]
    NotCa,
    #[error("the cross-certificate cannot be parsed")]
    Unparsable,
    #[error("rcgen could not build the cross-certificate: {0}")]
    Build(String),
    #[error(
        "the cross-certificate's subject, key or key identifier differ from the partner root's"
    )]
    NotTheSameKey,
    #[error("no root of the mesh issued the cross-certificate (its signature verifies with none)")]
    NotOurs,
    #[error(
        "the cross-certificate's URI name constraints do not permit exactly {0} (found {1:?})"
    )]
    Constraints(String, Vec<String>),
    #[error("no randomness for the serial number")]
    Randomness,
}

/// A cross-certificate in force, and what it binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CrossCertified {
    pub certificate: CertificateDer<'static>,
    /// SHA-256 of the partner root's SubjectPublicKeyInfo (which partner root it stands for).
    pub partner_key_sha256: [u8; 32],
    pub not_after: SystemTime,
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, None if it does not parse.
pub(crate) fn key_sha256(der: &[u8]) -> Option<[u8; 32]> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| sha256(c.public_key().raw))
}

/// Certifies `partner_root`'s key under `issuer` (our root, `issuer_der` its certificate) for
/// URIs of `partner` only, valid from `now` (less a minute of clock skew) until the partner
/// root, our root or `lifetime` ends, whichever is first.
pub(crate) fn cross_certify(
    partner_root: &[u8],
    partner: &TrustDomain,
    (issuer, issuer_der): (&Issuer<'_, impl SigningKey>, &[u8]),
    lifetime: Duration,
    now: SystemTime,
) -> Result<CertificateDer<'static>, CrossError> {
    let (_, root) = X509Certificate::from_der(partner_root).map_err(|_| CrossError::PartnerRoot)?;
    if !root.is_ca() {
        return Err(CrossError::NotCa);
    }
    let (_, ours) = X509Certificate::from_der(issuer_der).map_err(|_| CrossError::Unparsable)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_of(&root)?;
    params.is_ca = match root.basic_constraints() {
        Ok(Some(bc)) => match bc.value.path_len_constraint {
            Some(len) => IsCa::Ca(BasicConstraints::Constrained(len.min(255) as u8)),
            None => IsCa::Ca(BasicConstraints::Unconstrained),
        },
        _ => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| CrossError::Randomness)?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let not_after = [
        crate::domain::clock::time_from_unix_seconds(root.validity().not_after.timestamp()).ok(),
        crate::domain::clock::time_from_unix_seconds(ours.validity().not_after.timestamp()).ok(),
        crate::domain::clock::later(now, lifetime).ok(),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(now);
    let not_before = now
        .checked_sub(Duration::from_secs(60))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    // The partner root's own name constraints (if any) are replaced by ours: URIs of its
    // trust domain, DNS names under it.
    params.name_constraints = None;
    params.custom_extensions =
        vec![partner_name_constraints(partner).map_err(|e| CrossError::Build(e.to_string()))?];
    params.use_authority_key_identifier_extension = true;
    if let Ok(Some(ski)) =
        root.get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
    {
        if let x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) =
            ski.parsed_extension()
        {
            params.key_identifier_method = KeyIdMethod::PreSpecified(id.0.to_vec());
        }
    }
    let key = rcgen::SubjectPublicKeyInfo::from_der(root.public_key().raw)
        .map_err(|e| CrossError::Build(e.to_string()))?;
    let certificate = params
        .signed_by(&key, issuer)
        .map_err(|e| CrossError::Build(e.to_string()))?;
    let der = certificate.der().clone();
    // What path builders match must be the partner root's, byte for byte.
    let (_, made) = X509Certificate::from_der(&der).map_err(|_| CrossError::Unparsable)?;
    let ski = |c: &X509Certificate<'_>| {
        c.get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .ok()
            .flatten()
            .map(|e| e.value.to_vec())
    };
    if made.subject().as_raw() != root.subject().as_raw()
        || made.public_key().raw != root.public_key().raw
        || (ski(&root).is_some() && ski(&made) != ski(&root))
    {
        return Err(CrossError::NotTheSameKey);
    }
    Ok(der)
}

/// The partner root's subject as rcgen writes names: each attribute with its string type, in
/// order (the result is compared byte for byte after signing).
fn subject_of(root: &X509Certificate<'_>) -> Result<DistinguishedName, CrossError> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut name = DistinguishedName::new();
    for rdn in root.subject().iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err(CrossError::Subject);
        };
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .ok_or(CrossError::Subject)?
            .collect();
        let data = attribute.attr_value().data;
        let text = std::str::from_utf8(data).map_err(|_| CrossError::Subject)?;
        let invalid = |_| CrossError::Subject;
        let value = match attribute.attr_value().header.tag() {
            Tag::PrintableString => DnValue::PrintableString(text.try_into().map_err(invalid)?),
            Tag::Ia5String => DnValue::Ia5String(text.try_into().map_err(invalid)?),
            Tag::T61String => DnValue::TeletexString(text.try_into().map_err(invalid)?),
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            _ => return Err(CrossError::Subject),
        };
        name.push(DnType::from_oid(&oid), value);
    }
    Ok(name)
}

/// The permitted URI hosts, and every other permitted or excluded name (DNS names as they are,
/// any other kind as a marker that never equals a trust domain), of a certificate's name
/// constraints.
fn permitted_names(certificate: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (mut uris, mut others) = (Vec::new(), Vec::new());
    for extension in certificate.extensions() {
        let ParsedExtension::NameConstraints(constraints) = extension.parsed_extension() else {
            continue;
        };
        for subtree in constraints.permitted_subtrees.iter().flatten() {
            match subtree.base {
                GeneralName::URI(host) => uris.push(host.to_ascii_lowercase()),
                GeneralName::DNSName(name) => others.push(name.to_ascii_lowercase()),
                _ => others.push(String::from("(another kind of name)")),
            }
        }
        if constraints.excluded_subtrees.is_some() {
            others.push(String::from("(excluded subtrees)"));
        }
    }
    (uris, others)
}

/// Checks a cross-certificate read from a file: one of `our_roots` signed it, it is a CA, and
/// its name constraints permit URIs of exactly `partner` (and DNS names under it, if any).
pub(crate) fn check_cross_certificate(
    der: &CertificateDer<'static>,
    partner: &TrustDomain,
    our_roots: &[CertificateDer<'static>],
) -> Result<CrossCertified, CrossError> {
    let (_, certificate) = X509Certificate::from_der(der).map_err(|_| CrossError::Unparsable)?;
    if !certificate.is_ca() {
        return Err(CrossError::NotCa);
    }
    let signed_by_ours = our_roots.iter().any(|root| {
        X509Certificate::from_der(root)
            .map(|(_, root)| {
                certificate
                    .verify_signature(Some(root.public_key()))
                    .is_ok()
            })
            .unwrap_or(false)
    });
    if !signed_by_ours {
        return Err(CrossError::NotOurs);
    }
    let (uris, others) = permitted_names(&certificate);
    if uris != [partner.to_string()] || others.iter().any(|name| name != partner.as_str()) {
        return Err(CrossError::Constraints(partner.to_string(), uris));
    }
    Ok(CrossCertified {
        certificate: der.clone(),
        partner_key_sha256: sha256(certificate.public_key().raw),
        not_after: crate::domain::clock::time_from_unix_seconds(
            certificate.validity().not_after.timestamp(),
        )
        .map_err(|_| CrossError::Unparsable)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{DnType, KeyPair};

    fn root(name: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(
            DnType::OrganizationName,
            DnValue::PrintableString(name.try_into().unwrap()),
        );
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        (der, Issuer::new(params, key))
    }

    #[test]
    fn a_cross_certificate_has_the_partner_roots_name_and_key_and_binds_its_trust_domain() {
        let (ours, issuer) = root("ours");
        let (partner_root, _) = root("partner");
        let partner = TrustDomain::new("p.example").unwrap();
        let now = SystemTime::now();
        let cross = cross_certify(
            &partner_root,
            &partner,
            (&issuer, &ours),
            Duration::from_secs(86_400),
            now,
        )
        .unwrap();
        let checked =
            check_cross_certificate(&cross, &partner, std::slice::from_ref(&ours)).unwrap();
        assert_eq!(Some(checked.partner_key_sha256), key_sha256(&partner_root));
        let (_, made) = X509Certificate::from_der(&cross).unwrap();
        let (_, original) = X509Certificate::from_der(&partner_root).unwrap();
        assert_eq!(made.subject().as_raw(), original.subject().as_raw());
        assert_eq!(
            permitted_names(&made),
            (vec!["p.example".to_owned()], vec!["p.example".to_owned()])
        );

        // Not ours: another root's signature.
        let (stranger, _) = root("stranger");
        assert_eq!(
            check_cross_certificate(&cross, &partner, &[stranger]),
            Err(CrossError::NotOurs)
        );
        // Ours, but for another trust domain than the partner's.
        let other = TrustDomain::new("q.example").unwrap();
        assert!(matches!(
            check_cross_certificate(&cross, &other, std::slice::from_ref(&ours)),
            Err(CrossError::Constraints(..))
        ));
        // A leaf is no partner root.
        let mut leaf = CertificateParams::new(vec!["leaf.example".into()]).unwrap();
        leaf.is_ca = IsCa::ExplicitNoCa;
        let leaf = leaf.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert_eq!(
            cross_certify(
                leaf.der(),
                &partner,
                (&issuer, &ours),
                Duration::from_secs(60),
                now
            ),
            Err(CrossError::NotCa)
        );
    }
}
