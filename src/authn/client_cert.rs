//! Client-certificate authentication (certificate renewal, VMs): a caller presenting a valid,
//! unexpired certificate that chains to the roots of a mesh that accepts client certificates, and
//! carries exactly one SPIFFE URI SAN (Istio form) in that mesh's trust domain, is that identity.
//!
//! The TLS layer proves the caller holds the certificate's key; the chain and the SPIFFE rules are
//! checked here, per mesh, so that a refused certificate yields a recorded denial with a reason
//! rather than a failed handshake.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{
    AuthFuture, AuthOutcome, AuthRequest, Authenticator, AuthenticatorKind, AuthnError, Caller,
};
use crate::clock::Clock;
use crate::identity::{SpiffeId, TrustDomain};

/// A mesh that accepts client certificates.
pub struct ClientCertMesh {
    pub mesh: String,
    /// The mesh's trust domain and its aliases.
    pub trust_domains: Vec<TrustDomain>,
    pub roots: Vec<CertificateDer<'static>>,
}

struct Mesh {
    mesh: String,
    trust_domains: Vec<TrustDomain>,
    anchors: Vec<TrustAnchor<'static>>,
}

pub struct ClientCertAuthenticator {
    meshes: Vec<Mesh>,
    clock: Arc<dyn Clock>,
}

impl ClientCertAuthenticator {
    /// Roots that webpki cannot use as anchors are skipped (they were already parsed when the
    /// mesh's CA material was loaded).
    pub fn new(meshes: Vec<ClientCertMesh>, clock: Arc<dyn Clock>) -> Self {
        let meshes = meshes
            .into_iter()
            .map(|mesh| Mesh {
                anchors: mesh
                    .roots
                    .iter()
                    .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
                    .map(|anchor| anchor.to_owned())
                    .collect(),
                mesh: mesh.mesh,
                trust_domains: mesh.trust_domains,
            })
            .collect();
        Self { meshes, clock }
    }

    /// Authenticates a presented chain (leaf first).
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<Caller, AuthnError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(AuthnError::MissingCredentials);
        };
        let identity = spiffe_identity(leaf)?;
        let mesh = self
            .meshes
            .iter()
            .find(|mesh| mesh.trust_domains.contains(identity.trust_domain()))
            .ok_or_else(|| {
                AuthnError::ClientCertTrustDomain(identity.trust_domain().as_str().to_owned())
            })?;
        let end_entity = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| AuthnError::ClientCertUntrusted(e.to_string()))?;
        let seconds = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &mesh.anchors,
                intermediates,
                UnixTime::since_unix_epoch(Duration::from_secs(seconds)),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| AuthnError::ClientCertUntrusted(format!("{e:?}")))?;
        Ok(Caller {
            authenticator: AuthenticatorKind::ClientCert,
            mesh: mesh.mesh.clone(),
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
    let uris = crate::keys::uri_sans(&certificate);
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
