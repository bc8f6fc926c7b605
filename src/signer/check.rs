//! The check every leaf passes before it leaves: it verifies with rustls-webpki and names exactly
//! what was granted (as SPIRE's `credvalidator` does). A failure is an internal error, never the
//! client's fault.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::constraints::UriConstraints;
use super::SigningError;
use crate::identity::{AltNames, SpiffeId};

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

/// Verifies a freshly signed leaf with rustls-webpki against `signing` (the certificate that
/// signed it, as the anchor), then checks that it names exactly what was granted and that its
/// URIs satisfy the URI name constraints on its path (`constraints`, which webpki cannot apply):
/// a leaf that fails any never leaves.
pub(super) fn check_leaf(
    der: &CertificateDer<'_>,
    signing: &TrustAnchor<'_>,
    constraints: &[UriConstraints],
    subject: LeafSubject<'_>,
    now: SystemTime,
) -> Result<(), SigningError> {
    verify_path(der, std::slice::from_ref(signing), &[], subject, now)?;
    check_names(der, subject, constraints)
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

/// The leaf carries exactly the granted names, and a workload leaf also allows serverAuth.
fn check_names(
    der: &[u8],
    subject: LeafSubject<'_>,
    constraints: &[UriConstraints],
) -> Result<(), SigningError> {
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
    if !uris
        .iter()
        .all(|uri| constraints.iter().all(|c| c.permits(uri)))
    {
        return Err(SigningError::NameConstraint);
    }
    if names_match && server_auth && leaf.subject().iter_attributes().next().is_none() {
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
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };

    const GRANTED: &str = "spiffe://a.example/ns/shop/sa/cart";

    /// A change to the leaf's parameters.
    type Edit<'a> = Box<dyn FnOnce(&mut CertificateParams) + 'a>;

    fn now() -> SystemTime {
        SystemTime::now()
    }

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
                .map(|td| crate::identity::TrustDomain::new(td).unwrap())
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

    /// A workload leaf as the signer builds it, with `edit` applied first: what a policy or
    /// encoding bug could produce.
    fn leaf(
        issuer: &Issuer<'_, KeyPair>,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(GRANTED.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn check(
        der: &CertificateDer<'_>,
        anchor_der: &CertificateDer<'_>,
    ) -> Result<(), SigningError> {
        check_granted(der, anchor_der, GRANTED)
    }

    fn check_granted(
        der: &CertificateDer<'_>,
        anchor_der: &CertificateDer<'_>,
        granted: &str,
    ) -> Result<(), SigningError> {
        let (anchor, constraints) =
            super::super::constraints::constraint_free_anchor(anchor_der).unwrap();
        let granted = SpiffeId::parse(granted).unwrap();
        let constraints: Vec<_> = constraints.into_iter().collect();
        check_leaf(
            der,
            &anchor,
            &constraints,
            LeafSubject::Workload(&granted),
            now(),
        )
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
            &leaf(&issuer, |_| {}),
            &[anchor],
            &[],
            LeafSubject::Workload(&SpiffeId::parse(GRANTED).unwrap()),
            now(),
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
            ("no names", Box::new(|p| p.subject_alt_names.clear())),
            (
                "a subject",
                Box::new(|p| p.distinguished_name.push(DnType::CommonName, "cart")),
            ),
            (
                "no serverAuth",
                Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]),
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

    #[test]
    fn a_leaf_signed_by_another_key_is_refused() {
        let (anchor, _) = ca();
        let (_, stranger) = ca();
        let result = check(&leaf(&stranger, |_| {}), &anchor);
        assert!(matches!(result, Err(SigningError::Verify(_))), "{result:?}");
    }
}
