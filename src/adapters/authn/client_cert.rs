//! Client-certificate authentication (certificate renewal, VMs, the admin port's auditors).
//!
//! A certificate proves an identity of trust domain T only if it chains to an issuer authorized
//! for T ([`IdentityAnchors`]), never merely to a root of the trust bundle: the bundle handed to
//! workloads may hold partner roots (federation) and other meshes' intermediates share our root,
//! and neither may mint our identities (architecture.md, "Trust"). The issuers authorized for a
//! mesh's trust domain and its aliases are meshroot's own signing intermediates for that mesh,
//! current and previous; an extra root vouches only for the trust domains configured for it.
//!
//! The TLS layer proves the caller holds the certificate's key; the chain and the SPIFFE rules are
//! checked here, so that a refused certificate yields a recorded denial with a reason rather than
//! a failed handshake.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{
    AuthFuture, AuthOutcome, AuthRequest, Authenticator, AuthenticatorKind, AuthnError, Caller,
};
use crate::domain::clock::Clock;
use crate::domain::identity::{SpiffeId, TrustDomain};
use crate::domain::signer::constraints::{
    constraint_free_anchor, uri_constraints_of, UriConstraints,
};

/// The issuers authorized to vouch for identities, per trust domain. Authentication uses these
/// narrow anchors; the trust bundle handed to workloads is a different, wider set.
#[derive(Default)]
pub(crate) struct IdentityAnchors {
    by_trust_domain: HashMap<TrustDomain, Anchors>,
}

/// The issuers authorized for one trust domain, as webpki anchors, each with the URI name
/// constraints taken out of it (webpki refuses every URI under one; they are applied here).
#[derive(Default)]
struct Anchors {
    anchors: Vec<TrustAnchor<'static>>,
    uri_constraints: Vec<Option<UriConstraints>>,
    certificates: Vec<CertificateDer<'static>>,
}

impl IdentityAnchors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Authorizes `issuer` (a signing intermediate or a root, DER) to vouch for identities of
    /// `trust_domain`. A certificate webpki cannot use as an anchor is refused.
    pub(crate) fn authorize(
        &mut self,
        trust_domain: &TrustDomain,
        issuer: &CertificateDer<'_>,
    ) -> Result<(), AuthnError> {
        let (anchor, constraints) = constraint_free_anchor(issuer)
            .map_err(|e| AuthnError::ClientCertUntrusted(format!("unusable issuer: {e}")))?;
        let anchors = self
            .by_trust_domain
            .entry(trust_domain.clone())
            .or_default();
        if !anchors.anchors.contains(&anchor) {
            anchors.anchors.push(anchor);
            anchors.uri_constraints.push(constraints);
            anchors.certificates.push(issuer.clone().into_owned());
        }
        Ok(())
    }

    /// The identity a presented chain (leaf first) proves at `now`: exactly one SPIFFE URI SAN
    /// (SPIFFE X509-SVID §2), a client-auth leaf valid at `now`, chaining to an issuer authorized
    /// for that identity's trust domain.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<SpiffeId, AuthnError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(AuthnError::MissingCredentials);
        };
        let identity = spiffe_identity(leaf)?;
        self.verify_for(&identity, leaf, intermediates, now, Usage::Client)?;
        Ok(identity)
    }

    /// Whether `leaf` proves exactly `identity` at `now` for `usage`, issued directly by one of
    /// the authorized issuers (no intermediate between them is accepted). What the members
    /// accept of each other (see [`verify_member`]).
    pub(crate) fn verify_direct(
        &self,
        identity: &SpiffeId,
        leaf: &CertificateDer<'_>,
        now: SystemTime,
        usage: Usage,
    ) -> Result<(), AuthnError> {
        if &spiffe_identity(leaf)? != identity {
            return Err(AuthnError::ClientCertIdentity(format!(
                "the certificate does not name {identity}"
            )));
        }
        self.verify_for(identity, leaf, &[], now, usage)
    }

    fn verify_for(
        &self,
        identity: &SpiffeId,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: SystemTime,
        usage: Usage,
    ) -> Result<(), AuthnError> {
        let anchors = self
            .by_trust_domain
            .get(identity.trust_domain())
            .filter(|anchors| !anchors.anchors.is_empty())
            .ok_or_else(|| {
                AuthnError::ClientCertUntrusted(format!(
                    "no issuer is authorized for trust domain {}",
                    identity.trust_domain()
                ))
            })?;
        let end_entity = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| AuthnError::ClientCertUntrusted(e.to_string()))?;
        let seconds = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let time = UnixTime::since_unix_epoch(Duration::from_secs(seconds));
        let path = end_entity.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors.anchors,
            intermediates,
            time,
            usage.webpki(),
            None,
            None,
        );
        let constraints: Vec<UriConstraints> = match path {
            Ok(path) => anchors
                .anchors
                .iter()
                .position(|anchor| anchor == path.anchor())
                .and_then(|at| anchors.uri_constraints.get(at))
                .and_then(Option::clone)
                .into_iter()
                .collect(),
            // A presented intermediate under a URI constraint (a partner meshroot's, through an
            // extra root): webpki refuses every URI below it (and may report another failure of
            // its path search), so that one level is checked here.
            Err(_)
                if intermediates
                    .first()
                    .is_some_and(|issuer| uri_constraints_of(issuer).is_some()) =>
            {
                below_constrained(&end_entity, &intermediates[0], anchors, time, usage)?
            }
            Err(e) => return Err(AuthnError::ClientCertUntrusted(format!("{e:?}"))),
        };
        if let Some(outside) = constraints
            .iter()
            .find(|c| !c.permits(&identity.to_string()))
        {
            return Err(AuthnError::ClientCertUntrusted(format!(
                "{identity} is outside the name constraints of its issuer (URIs in {})",
                outside.permitted().join(", ")
            )));
        }
        Ok(())
    }
}

/// The leaf verified by webpki under `issuer` (a presented intermediate, made a constraint-free
/// anchor), `issuer` a CA valid at `time` whose signature an authorized anchor makes; the URI
/// constraints of both, for the caller to apply. Refused when `issuer` constrains other name
/// forms than URIs (webpki's verdict stands then).
fn below_constrained(
    leaf: &webpki::EndEntityCert<'_>,
    issuer_der: &CertificateDer<'_>,
    anchors: &Anchors,
    time: UnixTime,
    usage: Usage,
) -> Result<Vec<UriConstraints>, AuthnError> {
    let refused = |why: &str| AuthnError::ClientCertUntrusted(why.to_owned());
    let (issuer_anchor, issuer_constraints) =
        constraint_free_anchor(issuer_der).map_err(|e| refused(&format!("{e:?}")))?;
    let issuer_constraints =
        issuer_constraints.ok_or_else(|| refused("NameConstraintViolation"))?;
    let (_, issuer) = X509Certificate::from_der(issuer_der)
        .map_err(|_| refused("the intermediate cannot be parsed"))?;
    let at = x509_parser::time::ASN1Time::from_timestamp(time.as_secs() as i64)
        .map_err(|_| refused("no valid time"))?;
    let signs_certificates = match issuer.key_usage() {
        Ok(Some(usage)) => usage.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    if !issuer.is_ca() || !signs_certificates || !issuer.validity().is_valid_at(at) {
        return Err(refused(
            "the intermediate is not a CA certificate valid now",
        ));
    }
    // The anchor must be allowed a CA below it (pathLenConstraint absent or at least 1).
    let vouching = anchors
        .certificates
        .iter()
        .position(|anchor_der| {
            X509Certificate::from_der(anchor_der).is_ok_and(|(_, anchor)| {
                let path_len = anchor
                    .basic_constraints()
                    .ok()
                    .flatten()
                    .and_then(|bc| bc.value.path_len_constraint);
                anchor.subject() == issuer.issuer()
                    && path_len != Some(0)
                    && issuer.verify_signature(Some(anchor.public_key())).is_ok()
            })
        })
        .ok_or_else(|| refused("UnknownIssuer"))?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[issuer_anchor],
        &[],
        time,
        usage.webpki(),
        None,
        None,
    )
    .map_err(|e| refused(&format!("{e:?}")))?;
    let mut constraints = vec![issuer_constraints];
    constraints.extend(
        anchors
            .uri_constraints
            .get(vouching)
            .and_then(Option::clone),
    );
    Ok(constraints)
}

/// What a certificate is presented for: a TLS client (CSR renewals, the admin API), or a
/// server (a member answering another member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
}

impl Usage {
    fn webpki(self) -> webpki::KeyUsage {
        match self {
            Self::Client => webpki::KeyUsage::client_auth(),
            Self::Server => webpki::KeyUsage::server_auth(),
        }
    }
}

/// The one rule by which members of a `[replicas]` accept each other, as clients on the admin
/// API and as servers answering a member: the leaf names exactly the member identity, is
/// valid now for `usage`, was signed directly by one of meshroot's own signing intermediates
/// (`member_anchors`: no extra root, no cluster intermediate below ours, no other mesh's), and
/// is not revoked. The CSR API never issues the member identity (the policy reserves it), so
/// only meshroot itself holds such a certificate.
pub(crate) fn verify_member(
    leaf: &CertificateDer<'_>,
    member: &SpiffeId,
    member_anchors: &IdentityAnchors,
    revocations: &crate::domain::revocation::Revocations,
    now: SystemTime,
    usage: Usage,
) -> Result<(), AuthnError> {
    member_anchors.verify_direct(member, leaf, now, usage)?;
    refuse_revoked(leaf, revocations)
}

/// Refuses a leaf whose serial was revoked (`meshroot revoke`).
pub(crate) fn refuse_revoked(
    leaf: &CertificateDer<'_>,
    revocations: &crate::domain::revocation::Revocations,
) -> Result<(), AuthnError> {
    let serial = crate::domain::signer::check::serial_of(leaf).ok_or_else(|| {
        AuthnError::ClientCertUntrusted("the certificate cannot be parsed".into())
    })?;
    match revocations.revoked(&serial) {
        None => Ok(()),
        Some(revoked) => Err(AuthnError::ClientCertRevoked {
            serial: crate::domain::digest::hex(&serial),
            at: crate::domain::clock::format_time(revoked.revoked_at),
            reason: revoked.reason.name(),
        }),
    }
}

/// Authenticates CSR callers by client certificate, for the meshes that accept them.
pub(crate) struct ClientCertAuthenticator {
    /// Trust domain (and alias) → the mesh that accepts client certificates in it.
    meshes: HashMap<TrustDomain, String>,
    anchors: Arc<IdentityAnchors>,
    clock: Arc<dyn Clock>,
}

impl ClientCertAuthenticator {
    /// `meshes` lists, for each mesh with `client_cert_auth`, its name and trust domains.
    pub fn new(
        meshes: impl IntoIterator<Item = (String, Vec<TrustDomain>)>,
        anchors: Arc<IdentityAnchors>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let meshes = meshes
            .into_iter()
            .flat_map(|(mesh, trust_domains)| {
                trust_domains
                    .into_iter()
                    .map(move |trust_domain| (trust_domain, mesh.clone()))
            })
            .collect();
        Self {
            meshes,
            anchors,
            clock,
        }
    }

    /// Authenticates a presented chain (leaf first).
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<Caller, AuthnError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(AuthnError::MissingCredentials);
        };
        let identity = spiffe_identity(leaf)?;
        let mesh = self.meshes.get(identity.trust_domain()).ok_or_else(|| {
            AuthnError::ClientCertTrustDomain(identity.trust_domain().as_str().to_owned())
        })?;
        self.anchors.verify_for(
            &identity,
            leaf,
            intermediates,
            self.clock.now(),
            Usage::Client,
        )?;
        Ok(Caller {
            authenticator: AuthenticatorKind::ClientCert,
            mesh: mesh.clone(),
            subject: identity.to_string(),
            identity,
            issuer: String::new(),
            cluster: String::new(),
            pod: None,
        })
    }
}

/// Exactly one URI SAN, an Istio SPIFFE ID (SPIFFE X509-SVID §2: one URI SAN).
pub(super) fn spiffe_identity(leaf: &CertificateDer<'_>) -> Result<SpiffeId, AuthnError> {
    let (_, certificate) = X509Certificate::from_der(leaf)
        .map_err(|_| AuthnError::ClientCertUntrusted("the certificate cannot be parsed".into()))?;
    let uris = crate::domain::identity::AltNames::of_certificate(&certificate).uris;
    let [uri] = uris.as_slice() else {
        return Err(AuthnError::ClientCertIdentity(format!(
            "{} URI SANs, expected exactly one",
            uris.len()
        )));
    };
    SpiffeId::parse(uri).map_err(|e| AuthnError::ClientCertIdentity(format!("{uri:?}: {e}")))
}

impl Authenticator for ClientCertAuthenticator {
    fn kind(&self) -> AuthenticatorKind {
        AuthenticatorKind::ClientCert
    }

    fn authenticate<'a>(&'a self, request: &'a AuthRequest) -> AuthFuture<'a> {
        let outcome = if self.meshes.is_empty() || request.peer_certificates.is_empty() {
            AuthOutcome::NotApplicable
        } else {
            match self.verify(&request.peer_certificates) {
                Ok(caller) => AuthOutcome::Authenticated(caller),
                // A certificate of a trust domain served without client-certificate
                // authentication is not this authenticator's to judge; a token may still be.
                Err(error @ AuthnError::ClientCertTrustDomain(_)) => AuthOutcome::Declined(error),
                Err(error) => AuthOutcome::Failed(error),
            }
        };
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };

    /// An intermediate whose URIs are constrained to a.example, and a client leaf from it.
    fn constrained_issuer() -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.custom_extensions.push(
            crate::domain::signer::constraints::uri_name_constraints(&[TrustDomain::new(
                "a.example",
            )
            .unwrap()])
            .unwrap(),
        );
        let der = params.self_signed(&key).unwrap().der().clone();
        (der, Issuer::new(params, key))
    }

    fn client_leaf(issuer: &Issuer<'_, KeyPair>, uri: &str) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    #[test]
    fn a_constrained_intermediate_vouches_only_inside_its_constraint() {
        let (issuer_der, issuer) = constrained_issuer();
        let mut anchors = IdentityAnchors::new();
        // Authorized for an alias its constraint does not permit (an intermediate issued before
        // the alias was added): the constraint still wins.
        for td in ["a.example", "alias.example"] {
            anchors
                .authorize(&TrustDomain::new(td).unwrap(), &issuer_der)
                .unwrap();
        }
        let now = SystemTime::now();
        let inside = client_leaf(&issuer, "spiffe://a.example/ns/shop/sa/cart");
        assert_eq!(
            anchors.verify(&[inside], now).unwrap().to_string(),
            "spiffe://a.example/ns/shop/sa/cart"
        );
        let outside = client_leaf(&issuer, "spiffe://alias.example/ns/shop/sa/cart");
        let error = anchors.verify(&[outside], now).unwrap_err().to_string();
        assert!(error.contains("outside the name constraints"), "{error}");
    }

    /// A root (pathlen `root_path_len`), a URI-constrained intermediate below it, as a partner's
    /// chain through an extra root.
    fn partner_chain(
        root_path_len: Option<u8>,
    ) -> (
        CertificateDer<'static>,
        CertificateDer<'static>,
        Issuer<'static, KeyPair>,
    ) {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::default();
        root_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "partner root");
        root_params.is_ca = IsCa::Ca(match root_path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "partner intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.custom_extensions.push(
            crate::domain::signer::constraints::uri_name_constraints(&[TrustDomain::new(
                "partner.example",
            )
            .unwrap()])
            .unwrap(),
        );
        let intermediate = params.signed_by(&key, &root_issuer).unwrap();
        (
            root.der().clone(),
            intermediate.der().clone(),
            Issuer::new(params, key),
        )
    }

    #[test]
    fn a_partner_chain_through_a_constrained_intermediate_is_checked_one_level_down() {
        let partner = TrustDomain::new("partner.example").unwrap();
        let now = SystemTime::now();
        let (root, intermediate, issuer) = partner_chain(None);
        let mut anchors = IdentityAnchors::new();
        anchors.authorize(&partner, &root).unwrap();
        let leaf = client_leaf(&issuer, "spiffe://partner.example/ns/vm/sa/a");
        assert_eq!(
            anchors
                .verify(&[leaf, intermediate.clone()], now)
                .unwrap()
                .to_string(),
            "spiffe://partner.example/ns/vm/sa/a"
        );

        // Its constraint still binds: an identity outside it is refused.
        let other = TrustDomain::new("other.example").unwrap();
        anchors.authorize(&other, &root).unwrap();
        let outside = client_leaf(&issuer, "spiffe://other.example/ns/vm/sa/a");
        let error = anchors
            .verify(&[outside, intermediate], now)
            .unwrap_err()
            .to_string();
        assert!(error.contains("outside the name constraints"), "{error}");

        // A root that may not have a CA below it (pathlen 0) vouches for none.
        let (root, intermediate, issuer) = partner_chain(Some(0));
        let mut anchors = IdentityAnchors::new();
        anchors.authorize(&partner, &root).unwrap();
        let leaf = client_leaf(&issuer, "spiffe://partner.example/ns/vm/sa/a");
        assert!(anchors.verify(&[leaf, intermediate], now).is_err());
    }

    /// Issue 30, N2 and N13: a member is proven only by a leaf that our own intermediate signed
    /// directly. A cluster intermediate below it (istiod's, on the plug-in path) may mint the
    /// member identity, and the wider anchors accept that chain; the member rule does not.
    #[test]
    fn a_member_certificate_is_accepted_only_straight_from_our_own_intermediate() {
        let td = TrustDomain::new("partner.example").unwrap();
        let member =
            SpiffeId::parse("spiffe://partner.example/ns/istio-system/sa/meshroot").unwrap();
        let now = SystemTime::now();
        // Stand-ins: the "root" of partner_chain is our mesh intermediate (it may certify a CA),
        // its constrained intermediate a cluster intermediate kept for istiod.
        let (ours, cluster_intermediate, cluster_issuer) = partner_chain(None);
        let mut anchors = IdentityAnchors::new();
        anchors.authorize(&td, &ours).unwrap();
        let minted = client_leaf(&cluster_issuer, &member.to_string());
        let chain = [minted.clone(), cluster_intermediate];
        assert_eq!(
            anchors.verify(&chain, now).unwrap(),
            member,
            "the wide rule accepts it"
        );
        let revocations = crate::domain::revocation::Revocations::default();
        let refused = verify_member(&minted, &member, &anchors, &revocations, now, Usage::Client);
        assert!(refused.is_err(), "{refused:?}");

        // Signed straight by an authorized issuer: a member (for the usage it carries).
        let mut anchors = IdentityAnchors::new();
        let (issuer_der, issuer) = constrained_issuer();
        let a = TrustDomain::new("a.example").unwrap();
        anchors.authorize(&a, &issuer_der).unwrap();
        let member = SpiffeId::parse("spiffe://a.example/ns/istio-system/sa/meshroot").unwrap();
        let leaf = client_leaf(&issuer, &member.to_string());
        verify_member(&leaf, &member, &anchors, &revocations, now, Usage::Client).unwrap();
        assert!(
            verify_member(&leaf, &member, &anchors, &revocations, now, Usage::Server).is_err(),
            "a client-auth-only leaf is no server"
        );
        let other = SpiffeId::parse("spiffe://a.example/ns/istio-system/sa/other").unwrap();
        let other_leaf = client_leaf(&issuer, &other.to_string());
        assert!(verify_member(
            &other_leaf,
            &member,
            &anchors,
            &revocations,
            now,
            Usage::Client
        )
        .is_err());
    }
}
