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
use crate::clock::Clock;
use crate::identity::{SpiffeId, TrustDomain};

/// The issuers authorized to vouch for identities, per trust domain. Authentication uses these
/// narrow anchors; the trust bundle handed to workloads is a different, wider set.
#[derive(Default)]
pub struct IdentityAnchors {
    by_trust_domain: HashMap<TrustDomain, Vec<TrustAnchor<'static>>>,
}

impl IdentityAnchors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Authorizes `issuer` (a signing intermediate or a root, DER) to vouch for identities of
    /// `trust_domain`. A certificate webpki cannot use as an anchor is refused.
    pub fn authorize(
        &mut self,
        trust_domain: &TrustDomain,
        issuer: &CertificateDer<'_>,
    ) -> Result<(), AuthnError> {
        let anchor = webpki::anchor_from_trusted_cert(issuer)
            .map_err(|e| AuthnError::ClientCertUntrusted(format!("unusable issuer: {e}")))?
            .to_owned();
        let anchors = self
            .by_trust_domain
            .entry(trust_domain.clone())
            .or_default();
        if !anchors.contains(&anchor) {
            anchors.push(anchor);
        }
        Ok(())
    }

    /// How many issuers are authorized for `trust_domain`.
    pub fn issuers_for(&self, trust_domain: &TrustDomain) -> usize {
        self.by_trust_domain.get(trust_domain).map_or(0, Vec::len)
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
        self.verify_for(&identity, leaf, intermediates, now)?;
        Ok(identity)
    }

    fn verify_for(
        &self,
        identity: &SpiffeId,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<(), AuthnError> {
        let anchors = self
            .by_trust_domain
            .get(identity.trust_domain())
            .filter(|anchors| !anchors.is_empty())
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
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                anchors,
                intermediates,
                UnixTime::since_unix_epoch(Duration::from_secs(seconds)),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| AuthnError::ClientCertUntrusted(format!("{e:?}")))?;
        Ok(())
    }
}

/// Authenticates CSR callers by client certificate, for the meshes that accept them.
pub struct ClientCertAuthenticator {
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
        self.anchors
            .verify_for(&identity, leaf, intermediates, self.clock.now())?;
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
fn spiffe_identity(leaf: &CertificateDer<'_>) -> Result<SpiffeId, AuthnError> {
    let (_, certificate) = X509Certificate::from_der(leaf)
        .map_err(|_| AuthnError::ClientCertUntrusted("the certificate cannot be parsed".into()))?;
    let uris = crate::identity::AltNames::of_certificate(&certificate).uris;
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
