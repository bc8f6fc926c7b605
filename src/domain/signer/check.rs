//! The checks a leaf passes before it leaves (as SPIRE's `credvalidator` does): on every leaf, a
//! check of its encoded bytes against what was granted ([`check_profile`]); on every leaf of an
//! RSA signer and a sample of an ECDSA signer's, a verification of its signature and path with
//! rustls-webpki ([`verify_path`]). A failure is an internal error, never the client's fault.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::constraints::UriConstraints;
use super::error::SigningError;
use crate::domain::identity::{AltNames, SpiffeId};

/// A certificate's serial number, as encoded (the bytes records keep); None if it cannot be
/// parsed.
pub fn serial_of(der: &[u8]) -> Option<Vec<u8>> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    Some(certificate.raw_serial().to_vec())
}

/// What a leaf certifies.
#[derive(Debug, Clone, Copy)]
pub(super) enum LeafSubject<'a> {
    /// A workload: exactly one URI SAN, EKU serverAuth + clientAuth.
    Workload(&'a SpiffeId),
    /// A server: DNS SANs, EKU serverAuth; with a SPIFFE identity (istiod's certificate) also
    /// its URI SAN and EKU clientAuth.
    Server(&'a [String], Option<&'a SpiffeId>),
}

/// What every leaf of one signer must show, taken from its signing certificate when the signer
/// is built.
#[derive(Debug, Clone)]
pub(super) struct LeafProfile {
    /// The signing certificate's subject, as encoded: every leaf's issuer.
    issuer: Vec<u8>,
    /// The signing certificate's key identifier: every leaf's authority key identifier.
    key_identifier: Vec<u8>,
    /// The signature algorithm of the signing key, when meshroot knows its OID.
    signature_algorithm: Option<x509_parser::der_parser::oid::Oid<'static>>,
    /// The URI name constraints on the path from the signing certificate to its root.
    constraints: Vec<UriConstraints>,
    /// The CRL distribution point every workload leaf names, if any.
    crl_distribution_point: Option<String>,
}

impl LeafProfile {
    /// The profile of leaves signed with `signing` (DER) by a key of `algorithm`, under
    /// `constraints`.
    pub(super) fn new(
        signing: &X509Certificate<'_>,
        algorithm: &'static rcgen::SignatureAlgorithm,
        constraints: Vec<UriConstraints>,
    ) -> Self {
        // rcgen names the issuer's key by its subject key identifier, or (none) by the first
        // 20 bytes of the SHA-256 of its public key.
        let key_identifier = signing
            .extensions()
            .iter()
            .find_map(|extension| match extension.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| {
                crate::domain::digest::sha256(signing.public_key().raw)[..20].to_vec()
            });
        Self {
            issuer: signing.subject().as_raw().to_vec(),
            key_identifier,
            signature_algorithm: signature_oid(algorithm),
            constraints,
            crl_distribution_point: None,
        }
    }

    pub(super) fn with_crl_distribution_point(mut self, url: Option<String>) -> Self {
        self.crl_distribution_point = url;
        self
    }

    pub(super) fn constraints(&self) -> &[UriConstraints] {
        &self.constraints
    }
}

/// The OID of the signature algorithm rcgen signs with for `algorithm`.
fn signature_oid(
    algorithm: &'static rcgen::SignatureAlgorithm,
) -> Option<x509_parser::der_parser::oid::Oid<'static>> {
    use x509_parser::oid_registry as oids;
    let known = [
        (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            oids::OID_SIG_ECDSA_WITH_SHA256,
        ),
        (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            oids::OID_SIG_ECDSA_WITH_SHA384,
        ),
        (&rcgen::PKCS_RSA_SHA256, oids::OID_PKCS1_SHA256WITHRSA),
        (&rcgen::PKCS_RSA_SHA384, oids::OID_PKCS1_SHA384WITHRSA),
        (&rcgen::PKCS_RSA_SHA512, oids::OID_PKCS1_SHA512WITHRSA),
        (&rcgen::PKCS_ED25519, oids::OID_SIG_ED25519),
    ];
    known
        .into_iter()
        .find(|(known, _)| *known == algorithm)
        .map(|(_, oid)| oid)
}

/// What one leaf was meant to be: the grant, as the signer encoded it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Expected<'a> {
    pub subject: LeafSubject<'a>,
    pub serial: &'a [u8],
    /// The certified key's SubjectPublicKeyInfo (DER): the CSR's.
    pub public_key: &'a [u8],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The extensions of an issued leaf, by OID: each exactly once, with this criticality.
const AUTHORITY_KEY_ID: &[u64] = &[2, 5, 29, 35];
const SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];
const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
const CRL_DISTRIBUTION_POINTS: &[u64] = &[2, 5, 29, 31];

/// Checks, on its encoded bytes, that a freshly signed leaf is exactly what was granted: it
/// parses as the Istio leaf profile; its serial, validity and key are the grant's; its issuer
/// name and authority key identifier are the signing certificate's (whose own path to the
/// bundle was verified when the signer was built), so it chains by name to the served bundle;
/// its only names are the granted ones, within the URI name constraints of its path; its
/// extensions are the profile's, each once, with the profile's criticality. This runs on every
/// leaf; the signature itself is verified by [`verify_path`] (every leaf of an RSA signer, a
/// sample of an ECDSA signer's: see `MeshSigner`). A failure is an internal error, never the
/// client's fault.
pub(super) fn check_profile(
    der: &[u8],
    profile: &LeafProfile,
    expected: &Expected<'_>,
) -> Result<(), SigningError> {
    let (rest, leaf) =
        X509Certificate::from_der(der).map_err(|_| SigningError::Profile("unparsable"))?;
    let fail = |what| Err(SigningError::Profile(what));
    if !rest.is_empty() {
        return fail("trailing bytes");
    }
    let tbs = &leaf.tbs_certificate;
    if tbs.version != x509_parser::x509::X509Version::V3 {
        return fail("not version 3");
    }
    if tbs.signature != leaf.signature_algorithm
        || profile
            .signature_algorithm
            .as_ref()
            .is_some_and(|oid| *oid != leaf.signature_algorithm.algorithm)
    {
        return fail("signature algorithm");
    }
    if tbs.raw_serial() != expected.serial {
        return fail("serial number");
    }
    let seconds = |time: SystemTime| crate::domain::clock::unix_seconds(time);
    if tbs.validity.not_before.timestamp() != seconds(expected.not_before)
        || tbs.validity.not_after.timestamp() != seconds(expected.not_after)
    {
        return fail("validity");
    }
    if tbs.issuer.as_raw() != profile.issuer.as_slice() {
        return fail("issuer name");
    }
    if tbs.subject.iter_attributes().next().is_some() {
        return fail("a subject");
    }
    if tbs.subject_pki.raw != expected.public_key {
        return fail("public key");
    }
    if tbs.issuer_uid.is_some() || tbs.subject_uid.is_some() {
        return fail("unique identifiers");
    }
    check_extensions(&leaf, profile, expected.subject)?;
    check_names(&leaf, expected.subject, &profile.constraints)
}

/// The profile's extensions, each once with its criticality, and their values.
fn check_extensions(
    leaf: &X509Certificate<'_>,
    profile: &LeafProfile,
    subject: LeafSubject<'_>,
) -> Result<(), SigningError> {
    let workload = matches!(subject, LeafSubject::Workload(_));
    let client_auth = matches!(
        subject,
        LeafSubject::Workload(_) | LeafSubject::Server(_, Some(_))
    );
    let crl_point = profile
        .crl_distribution_point
        .as_deref()
        .filter(|_| workload);
    let mut wanted: Vec<(&[u64], bool)> = vec![
        (AUTHORITY_KEY_ID, false),
        (SUBJECT_ALT_NAME, true),
        (KEY_USAGE, true),
        (EXTENDED_KEY_USAGE, false),
        (SUBJECT_KEY_ID, false),
        (BASIC_CONSTRAINTS, true),
    ];
    if crl_point.is_some() {
        wanted.push((CRL_DISTRIBUTION_POINTS, false));
    }
    let extensions = leaf.extensions();
    if extensions.len() != wanted.len() {
        return Err(SigningError::Profile("the set of extensions"));
    }
    for extension in extensions {
        let arcs: Option<Vec<u64>> = extension.oid.iter().map(|arcs| arcs.collect());
        let position = arcs.and_then(|arcs| wanted.iter().position(|(oid, _)| *oid == arcs));
        let Some(position) = position else {
            return Err(SigningError::Profile("an extension outside the profile"));
        };
        let (_, critical) = wanted.swap_remove(position);
        if extension.critical != critical {
            return Err(SigningError::Profile("an extension's criticality"));
        }
        let valid = match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0) == Some(&profile.key_identifier[..])
                    && aki.authority_cert_issuer.is_none()
                    && aki.authority_cert_serial.is_none()
            }
            ParsedExtension::SubjectKeyIdentifier(ski) => !ski.0.is_empty(),
            ParsedExtension::SubjectAlternativeName(_) => true,
            ParsedExtension::KeyUsage(usage) => {
                usage.digital_signature() && usage.key_encipherment() && usage.flags == 0b101
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                eku.server_auth
                    && eku.client_auth == client_auth
                    && !eku.any
                    && !eku.code_signing
                    && !eku.email_protection
                    && !eku.time_stamping
                    && !eku.ocsp_signing
                    && eku.other.is_empty()
            }
            ParsedExtension::BasicConstraints(constraints) => {
                !constraints.ca && constraints.path_len_constraint.is_none()
            }
            ParsedExtension::CRLDistributionPoints(points) => {
                use x509_parser::extensions::{DistributionPointName, GeneralName};
                let uris: Vec<&str> = points
                    .iter()
                    .flat_map(|point| match &point.distribution_point {
                        Some(DistributionPointName::FullName(names)) => names.as_slice(),
                        _ => &[],
                    })
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) => Some(*uri),
                        _ => None,
                    })
                    .collect();
                crl_point.is_some_and(|url| uris == [url]) && points.len() == 1
            }
            _ => false,
        };
        if !valid {
            return Err(SigningError::Profile("an extension's value"));
        }
    }
    Ok(())
}

/// Verifies `der` for its usage through `intermediates` to one of `anchors`.
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

/// The leaf carries exactly the granted names, within the URI name constraints of its path.
fn check_names(
    leaf: &X509Certificate<'_>,
    subject: LeafSubject<'_>,
    constraints: &[UriConstraints],
) -> Result<(), SigningError> {
    let names = AltNames::of_certificate(leaf);
    // IP addresses only on a server certificate, and only those it names.
    if names.emails + names.others > 0 || names.ips.len() != names.ip_addresses {
        return Err(SigningError::IdentityCheck);
    }
    let AltNames { uris, dns, ips, .. } = names;
    let names_match = match subject {
        LeafSubject::Workload(identity) => {
            dns.is_empty() && ips.is_empty() && uris.len() == 1 && uris[0] == identity.to_string()
        }
        LeafSubject::Server(names, identity) => {
            let uri = identity.map(|identity| identity.to_string());
            let (want_ips, want_dns): (Vec<&String>, Vec<&String>) = names
                .iter()
                .partition(|name| name.parse::<std::net::IpAddr>().is_ok());
            uris == uri.iter().map(String::as_str).collect::<Vec<_>>()
                && dns == want_dns.iter().map(|n| n.as_str()).collect::<Vec<_>>()
                && ips
                    == want_ips
                        .iter()
                        .filter_map(|n| n.parse().ok())
                        .collect::<Vec<std::net::IpAddr>>()
        }
    };
    if !uris
        .iter()
        .all(|uri| constraints.iter().all(|c| c.permits(uri)))
    {
        return Err(SigningError::NameConstraint);
    }
    if names_match {
        Ok(())
    } else {
        Err(SigningError::IdentityCheck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType,
    };

    const GRANTED: &str = "spiffe://a.example/ns/shop/sa/cart";

    /// A change to the leaf's parameters.
    type Edit<'a> = Box<dyn FnOnce(&mut CertificateParams) + 'a>;

    /// A CA, as a trust anchor and an issuer.
    fn ca() -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        constrained_ca(&[])
    }

    /// A CA whose URIs are constrained to `trust_domains` (none: unconstrained).
    fn constrained_ca(
        trust_domains: &[&str],
    ) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        if !trust_domains.is_empty() {
            let trust_domains: Vec<_> = trust_domains
                .iter()
                .map(|td| crate::domain::identity::TrustDomain::new(td).unwrap())
                .collect();
            params
                .custom_extensions
                .push(super::super::constraints::uri_name_constraints(&trust_domains).unwrap());
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let certificate = params.self_signed(&key).unwrap();
        let der = certificate.der().clone();
        (der, Issuer::new(params, key))
    }

    const SERIAL: [u8; 16] = [0x41; 16];

    fn validity() -> (SystemTime, SystemTime) {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        (not_before, not_before + Duration::from_secs(86_400))
    }

    /// A leaf and the grant it was meant to carry out.
    struct Minted {
        der: CertificateDer<'static>,
        public_key: Vec<u8>,
    }

    /// A workload leaf as the signer builds it for [`GRANTED`], [`SERIAL`] and [`validity`],
    /// with `edit` applied first: what a policy or encoding bug could produce.
    fn leaf(issuer: &Issuer<'_, KeyPair>, edit: impl FnOnce(&mut CertificateParams)) -> Minted {
        let (not_before, not_after) = validity();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&SERIAL));
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![SanType::URI(GRANTED.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        Minted {
            der: params.signed_by(&key, issuer).unwrap().der().clone(),
            public_key: key.subject_public_key_info(),
        }
    }

    fn check(minted: &Minted, anchor_der: &CertificateDer<'_>) -> Result<(), SigningError> {
        check_granted(minted, anchor_der, GRANTED)
    }

    /// What the signer does with every leaf it verifies: the profile, then the signature.
    fn check_granted(
        minted: &Minted,
        anchor_der: &CertificateDer<'_>,
        granted: &str,
    ) -> Result<(), SigningError> {
        let granted = SpiffeId::parse(granted).unwrap();
        let (not_before, not_after) = validity();
        let expected = Expected {
            subject: LeafSubject::Workload(&granted),
            serial: &SERIAL,
            public_key: &minted.public_key,
            not_before,
            not_after,
        };
        check_expected(minted, anchor_der, &expected)
    }

    fn check_expected(
        minted: &Minted,
        anchor_der: &CertificateDer<'_>,
        expected: &Expected<'_>,
    ) -> Result<(), SigningError> {
        let (anchor, constraints) =
            super::super::constraints::constraint_free_anchor(anchor_der).unwrap();
        let (_, parsed) = X509Certificate::from_der(anchor_der).unwrap();
        let profile = LeafProfile::new(
            &parsed,
            &rcgen::PKCS_ECDSA_P256_SHA256,
            constraints.into_iter().collect(),
        );
        check_profile(&minted.der, &profile, expected)?;
        let at = validity().0 + Duration::from_secs(60);
        verify_path(&minted.der, &[anchor], &[], expected.subject, at)
    }

    #[test]
    fn under_a_uri_constraint_only_the_permitted_trust_domain_passes() {
        let (anchor, issuer) = constrained_ca(&["a.example"]);
        assert!(check(&leaf(&issuer, |_| {}), &anchor).is_ok());

        let other = "spiffe://b.example/ns/shop/sa/cart";
        let minted = leaf(&issuer, |p| {
            p.subject_alt_names = vec![SanType::URI(other.try_into().unwrap())]
        });
        let result = check_granted(&minted, &anchor, other);
        assert!(
            matches!(result, Err(SigningError::NameConstraint)),
            "{result:?}"
        );
    }

    /// Why the constraints are applied here: webpki, given the constrained certificate as it is,
    /// refuses even a leaf its constraint permits. If webpki learns URI constraints, this fails,
    /// and meshroot can hand the constraints back to it.
    #[test]
    fn webpki_alone_refuses_every_uri_under_a_uri_constraint() {
        let (anchor_der, issuer) = constrained_ca(&["a.example"]);
        let anchor = webpki::anchor_from_trusted_cert(&anchor_der).unwrap();
        let result = verify_path(
            &leaf(&issuer, |_| {}).der,
            &[anchor],
            &[],
            LeafSubject::Workload(&SpiffeId::parse(GRANTED).unwrap()),
            validity().0 + Duration::from_secs(60),
        );
        assert!(
            matches!(
                result,
                Err(SigningError::Verify(webpki::Error::NameConstraintViolation))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn a_leaf_as_granted_passes() {
        let (anchor, issuer) = ca();
        assert!(check(&leaf(&issuer, |_| {}), &anchor).is_ok());
    }

    #[test]
    fn a_leaf_whose_names_differ_from_the_grant_is_refused() {
        let (anchor, issuer) = ca();
        let other = |uri: &str| SanType::URI(uri.try_into().unwrap());
        let edits: Vec<(&str, Edit<'_>)> = vec![
            (
                "another identity",
                Box::new(|p| {
                    p.subject_alt_names = vec![other("spiffe://a.example/ns/bank/sa/vault")]
                }),
            ),
            (
                "a second URI",
                Box::new(|p| {
                    p.subject_alt_names
                        .push(other("spiffe://a.example/ns/bank/sa/vault"))
                }),
            ),
            (
                "a DNS name too",
                Box::new(|p| {
                    p.subject_alt_names
                        .push(SanType::DnsName("cart.shop".try_into().unwrap()))
                }),
            ),
        ];
        for (what, edit) in edits {
            let result = check(&leaf(&issuer, edit), &anchor);
            assert!(
                matches!(result, Err(SigningError::IdentityCheck)),
                "a leaf with {what}: {result:?}"
            );
        }
    }

    /// Every way a leaf can differ from the profile or the grant, as an encoding or policy bug
    /// could make it, is refused by the check every leaf passes (the signature is fine).
    #[test]
    fn a_leaf_off_the_profile_or_the_grant_is_refused() {
        let (anchor, issuer) = ca();
        let extension = |oid: &[u64], critical: bool| {
            let mut extension = rcgen::CustomExtension::from_oid_content(oid, vec![0x05, 0x00]);
            extension.set_criticality(critical);
            extension
        };
        let edits: Vec<(&str, &str, Edit<'_>)> = vec![
            (
                "no names",
                "the set of extensions",
                Box::new(|p| p.subject_alt_names.clear()),
            ),
            (
                "a subject",
                "a subject",
                Box::new(|p| p.distinguished_name.push(DnType::CommonName, "cart")),
            ),
            (
                "no serverAuth",
                "an extension's value",
                Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]),
            ),
            (
                "codeSigning too",
                "an extension's value",
                Box::new(|p| {
                    p.extended_key_usages
                        .push(ExtendedKeyUsagePurpose::CodeSigning)
                }),
            ),
            (
                "keyCertSign",
                "an extension's value",
                Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            ),
            (
                "CA:true",
                "an extension's value",
                Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            ),
            (
                "no authority key identifier",
                "the set of extensions",
                Box::new(|p| p.use_authority_key_identifier_extension = false),
            ),
            (
                "no basic constraints",
                "the set of extensions",
                Box::new(|p| p.is_ca = IsCa::NoCa),
            ),
            (
                "an extra extension",
                "the set of extensions",
                Box::new(move |p| p.custom_extensions.push(extension(&[1, 2, 3, 4], false))),
            ),
            (
                "a CRL distribution point nobody configured",
                "the set of extensions",
                Box::new(|p| {
                    p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                        uris: vec!["https://ca.example/crl".into()],
                    }]
                }),
            ),
            (
                "another serial",
                "serial number",
                Box::new(|p| p.serial_number = Some(rcgen::SerialNumber::from_slice(&[7; 16]))),
            ),
            (
                "a longer validity",
                "validity",
                Box::new(|p| p.not_after += time::Duration::days(1)),
            ),
        ];
        for (what, why, edit) in edits {
            let result = check(&leaf(&issuer, edit), &anchor);
            assert!(
                matches!(result, Err(SigningError::Profile(reason)) if reason == why),
                "a leaf with {what}: {result:?}"
            );
        }
        // A duplicated extension: the second basic constraints replaces another extension,
        // so the count is right but one of the profile's is missing.
        let duplicated = leaf(&issuer, |p| {
            p.use_authority_key_identifier_extension = false;
            p.custom_extensions.push(extension(&[2, 5, 29, 19], true));
        });
        let result = check(&duplicated, &anchor);
        assert!(
            matches!(result, Err(SigningError::Profile(_))),
            "{result:?}"
        );

        // The key certified is not the CSR's.
        let mut other_key = leaf(&issuer, |_| {});
        other_key.public_key = KeyPair::generate().unwrap().subject_public_key_info();
        let result = check(&other_key, &anchor);
        assert!(
            matches!(result, Err(SigningError::Profile("public key"))),
            "{result:?}"
        );
    }

    #[test]
    fn a_leaf_of_another_issuer_is_refused_before_its_signature_is_checked() {
        let (anchor, _) = ca();
        let (_, stranger) = ca();
        let result = check(&leaf(&stranger, |_| {}), &anchor);
        assert!(
            matches!(result, Err(SigningError::Profile("an extension's value"))),
            "same name, another key identifier: {result:?}"
        );
    }

    /// A leaf exactly as granted but with a faulty signature (what a fault in the signing key's
    /// arithmetic produces) passes the profile and fails the verification.
    #[test]
    fn a_faulty_signature_passes_the_profile_and_fails_verification() {
        let (anchor, issuer) = ca();
        let mut minted = leaf(&issuer, |_| {});
        let mut der = minted.der.to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        minted.der = CertificateDer::from(der);
        let result = check(&minted, &anchor);
        assert!(
            matches!(
                result,
                Err(SigningError::Verify(
                    webpki::Error::InvalidSignatureForPublicKey
                ))
            ),
            "{result:?}"
        );
    }
}
