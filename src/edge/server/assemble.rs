//! Assembling the certificate authority from a configuration: each mesh's signer, policy and
//! authenticators, the identity anchors, and the check that no root still in use is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use crate::adapters::authn::client_cert::{ClientCertAuthenticator, IdentityAnchors};
use crate::adapters::authn::impersonation::NodeAuthorizer;
use crate::adapters::authn::jwt::JwtAuthenticator;
use crate::adapters::authn::jwt::{self, TrustedIssuer};
use crate::adapters::authn::token_review::{ClusterApi, ReviewCluster, TokenReviewAuthenticator};
use crate::adapters::authn::{Authenticator, AuthenticatorChain, AuthenticatorKind};
use crate::adapters::config::{Config, MeshConfig};
use crate::adapters::store::SledStore;
use crate::domain::clock::Clock;
use crate::domain::identity::SpiffeId;
use crate::domain::identity::TrustDomain;
use crate::domain::metrics::Metrics;
use crate::domain::policy::MeshPolicy;
use crate::domain::signer::{self};
use crate::issuance::{CertificateAuthority, Mesh};

use super::duties::connect_cluster;
use super::error::ServeError;

/// Everything a config describes that can change without a restart: meshes (CA material,
/// trust domains, aliases, TTLs, bundles) and authentication.
pub(super) async fn build_authority(
    config: &Config,
    clock: Arc<dyn Clock>,
    store: Arc<SledStore>,
    metrics: Arc<Metrics>,
) -> Result<CertificateAuthority, ServeError> {
    let now = clock.now();
    let mut meshes = Vec::new();
    let mut issuers = Vec::new();
    let mut review_clusters = Vec::new();
    let mut cluster_apis: HashMap<String, Arc<dyn ClusterApi>> = HashMap::new();
    let mut client_cert_meshes = Vec::new();
    let mut anchors = IdentityAnchors::new();
    let member = config
        .replicas
        .as_ref()
        .and_then(|replicas| SpiffeId::parse(&replicas.identity).ok());
    let mut member_anchors = IdentityAnchors::new();
    for (index, mesh) in config.meshes.iter().enumerate() {
        let key = config.token_key(mesh).map_err(|source| ServeError::Token {
            mesh: mesh.name.clone(),
            source,
        })?;
        let authority = signer::files::load_signer(
            &mesh.name,
            mesh.trust_domain.clone(),
            &mesh.ca_dir,
            &mesh.extra_root_paths(),
            key,
            now,
        )
        .map_err(|source| ServeError::CaMaterial {
            mesh: mesh.name.clone(),
            source,
        })?
        .with_crl_distribution_point(config.revocation.crl_url.clone())
        .with_signature_sample(config.leaf_signature_sample);
        let partners = super::partner_trust::partner_trust(
            mesh,
            authority.roots(),
            &store,
            &metrics,
            &mut anchors,
            now,
        )?;
        let authority = authority.with_published(&partners);
        check_roots_in_use(&store, &mesh.name, &authority, now, mesh.force_root_removal)?;
        let trust_domains: Vec<TrustDomain> = std::iter::once(mesh.trust_domain.clone())
            .chain(mesh.trust_domain_aliases.iter().cloned())
            .collect();
        let invalid = |source| ServeError::CaMaterial {
            mesh: mesh.name.clone(),
            source: signer::files::CaFilesError::Invalid {
                dir: mesh.ca_dir.clone(),
                source,
            },
        };
        for trust_domain in &trust_domains {
            authority.check_permits(trust_domain).map_err(invalid)?;
        }
        if mesh
            .clusters
            .iter()
            .any(|cluster| cluster.cacerts.is_some())
        {
            authority.check_may_issue_ca().map_err(invalid)?;
        }
        if mesh.token_issuers.is_empty() && mesh.clusters.is_empty() && !mesh.client_cert_auth {
            tracing::warn!(
                mesh = %mesh.name,
                "no authentication configured: every request for this mesh will be refused"
            );
        }
        authorize_issuers(&mut anchors, &store, mesh, &trust_domains)?;
        if let (0, Some(member)) = (index, &member) {
            // Members are certified by the primary mesh's signing intermediates alone.
            authorize_own_intermediates(&mut member_anchors, &store, mesh, member.trust_domain())?;
        }
        if mesh.client_cert_auth {
            client_cert_meshes.push((mesh.name.clone(), trust_domains.clone()));
        }
        for cluster in &mesh.clusters {
            let api: Arc<dyn ClusterApi> = Arc::new(connect_cluster(cluster).await.map_err(
                |source| ServeError::Cluster {
                    mesh: mesh.name.clone(),
                    cluster: cluster.id.clone(),
                    source,
                },
            )?);
            cluster_apis.insert(cluster.id.clone(), api.clone());
            review_clusters.push(ReviewCluster {
                id: cluster.id.clone(),
                mesh: mesh.name.clone(),
                trust_domain: mesh.trust_domain.clone(),
                audiences: cluster.audiences.clone(),
                api,
                timeout: cluster.review_timeout,
                max_concurrent_reviews: cluster.max_concurrent_reviews,
                cache_ttl: cluster.review_cache_ttl,
            });
        }
        for issuer in &mesh.token_issuers {
            let keys = jwt::load_jwks(&issuer.jwks).map_err(|source| ServeError::Jwks {
                mesh: mesh.name.clone(),
                issuer: issuer.issuer.clone(),
                source,
            })?;
            issuers.push(TrustedIssuer {
                issuer: issuer.issuer.clone(),
                mesh: mesh.name.clone(),
                trust_domain: mesh.trust_domain.clone(),
                audiences: issuer.audiences.clone(),
                keys,
            });
        }
        tracing::info!(
            mesh = %mesh.name,
            trust_domain = %mesh.trust_domain,
            ca_dir = %mesh.ca_dir.display(),
            intermediates = authority.intermediates().len(),
            roots = authority.roots().len(),
            "CA material loaded"
        );
        meshes.push(Mesh {
            policy: MeshPolicy {
                mesh: mesh.name.clone(),
                trust_domain: mesh.trust_domain.clone(),
                trust_domain_aliases: mesh.trust_domain_aliases.clone(),
                alias_issuance: mesh.alias_issuance,
                default_ttl: mesh.default_ttl,
                max_ttl: mesh.max_ttl,
                signer_not_after: authority.signing_not_after(),
                reserved: member.iter().cloned().collect(),
            },
            signer: Arc::new(authority),
            node_accounts: mesh.trusted_node_accounts.clone(),
            trust_domains,
            clusters: mesh
                .clusters
                .iter()
                .map(|cluster| cluster.id.clone())
                .collect(),
            accepts: accepted_trust_domains(config, mesh),
        });
    }

    let mut jwt = Some(JwtAuthenticator::new(issuers, clock.clone()));
    let mut token_review = Some(
        TokenReviewAuthenticator::new(review_clusters, clock.clone()).with_metrics(metrics.clone()),
    );
    let anchors = Arc::new(anchors);
    let mut client_cert = Some(ClientCertAuthenticator::new(
        client_cert_meshes,
        anchors.clone(),
        clock.clone(),
    ));
    let mut authenticators: Vec<Box<dyn Authenticator>> = Vec::new();
    for kind in &config.authenticators {
        let next: Option<Box<dyn Authenticator>> = match kind {
            AuthenticatorKind::Jwt => jwt.take().map(|a| Box::new(a) as _),
            AuthenticatorKind::TokenReview => token_review.take().map(|a| Box::new(a) as _),
            AuthenticatorKind::ClientCert => client_cert.take().map(|a| Box::new(a) as _),
        };
        authenticators.extend(next);
    }
    let impersonation = NodeAuthorizer::new(cluster_apis, config.pod_cache_ttl, clock.clone());
    Ok(CertificateAuthority::new(
        meshes,
        AuthenticatorChain::new(authenticators),
        impersonation,
        store,
        clock,
    )
    .with_metrics(metrics)
    .with_identity_anchors(anchors)
    .with_member_anchors(Arc::new(member_anchors)))
}

/// What `mesh` accepts besides itself: each accepted mesh's trust domain and aliases, then each
/// partner's trust domain.
fn accepted_trust_domains(config: &Config, mesh: &MeshConfig) -> Vec<TrustDomain> {
    let mut accepts: Vec<TrustDomain> = mesh
        .accepts
        .iter()
        .filter_map(|name| config.mesh(name))
        .flat_map(|other| {
            std::iter::once(other.trust_domain.clone()).chain(other.trust_domain_aliases.clone())
        })
        .collect();
    accepts.extend(mesh.partners.iter().map(|p| p.trust_domain.clone()));
    accepts
}

/// Authorizes the issuers that may vouch for `mesh`'s trust domains (and aliases): every signing
/// intermediate the store remembers for the mesh (the current one was just remembered, earlier
/// ones are kept while certificates they signed are valid), and no root. Each extra root
/// vouches only for the trust domains configured for it.
pub(super) fn authorize_issuers(
    anchors: &mut IdentityAnchors,
    store: &SledStore,
    mesh: &MeshConfig,
    trust_domains: &[TrustDomain],
) -> Result<(), ServeError> {
    let tls =
        |e: crate::adapters::authn::AuthnError| ServeError::Tls(format!("mesh {}: {e}", mesh.name));
    for trust_domain in trust_domains {
        authorize_own_intermediates(anchors, store, mesh, trust_domain)?;
    }
    for root in &mesh.extra_roots {
        if root.vouches_for.is_empty() {
            continue;
        }
        let certificates = signer::files::certificates_required(&root.path).map_err(|source| {
            ServeError::CaMaterial {
                mesh: mesh.name.clone(),
                source,
            }
        })?;
        for certificate in &certificates {
            for trust_domain in &root.vouches_for {
                anchors.authorize(trust_domain, certificate).map_err(tls)?;
            }
        }
    }
    Ok(())
}

/// Authorizes every signing intermediate the store remembers for `mesh` (the current one was
/// just remembered, earlier ones are kept while certificates they signed are valid) to vouch
/// for `trust_domain`.
fn authorize_own_intermediates(
    anchors: &mut IdentityAnchors,
    store: &SledStore,
    mesh: &MeshConfig,
    trust_domain: &TrustDomain,
) -> Result<(), ServeError> {
    for chain in store.signers(&mesh.name)?.values() {
        let Some(signing) = chain.first() else {
            continue;
        };
        anchors
            .authorize(trust_domain, &CertificateDer::from(signing.as_slice()))
            .map_err(|e| ServeError::Tls(format!("mesh {}: {e}", mesh.name)))?;
    }
    Ok(())
}

/// Remembers the mesh's signer, then refuses a trust bundle that no longer holds the root
/// of unexpired certificates meshroot issued (they would fail every handshake), unless forced.
/// Signers under a dropped root whose certificates have all expired are forgotten.
pub(super) fn check_roots_in_use(
    store: &SledStore,
    mesh: &str,
    authority: &crate::domain::signer::MeshSigner,
    now: SystemTime,
    force: bool,
) -> Result<(), ServeError> {
    use crate::domain::audit::rotation::{self, InUse};
    use crate::domain::audit::{OutcomeFilter, Query};
    store.remember_signer(mesh, &authority.signer_chain())?;
    let bundle: Vec<Vec<u8>> = authority.roots().iter().map(|r| r.to_vec()).collect();
    let stranded = rotation::stranded_signers(&store.signers(mesh)?, &bundle);
    if stranded.is_empty() {
        return Ok(());
    }
    let query = Query {
        mesh: Some(mesh.to_owned()),
        expires_after: Some(now),
        outcome: Some(OutcomeFilter::Issued),
        ..Query::default()
    };
    let mut in_use = InUse::default();
    let mut still_signing = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let page = store.query(&query, 4096, token.as_deref())?;
        for record in &page.records {
            if let crate::domain::record::Outcome::Issued(issued) = &record.outcome {
                if issued.not_after > now && stranded.contains(&issued.intermediate_sha256) {
                    in_use.add(issued.not_after);
                    still_signing.insert(issued.intermediate_sha256.clone());
                }
            }
        }
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    for signer in stranded.iter().filter(|s| !still_signing.contains(*s)) {
        store.forget_signer(mesh, signer)?;
    }
    let Some(until) = in_use.until else {
        return Ok(());
    };
    let until = crate::domain::clock::format_time(until);
    if force {
        tracing::warn!(
            mesh,
            certificates = in_use.certificates,
            until = %until,
            "force_root_removal: loading a trust bundle that the root of unexpired certificates is not in; they fail verification until they are renewed"
        );
        return Ok(());
    }
    Err(ServeError::RootsInUse {
        mesh: mesh.to_owned(),
        certificates: in_use.certificates,
        until,
    })
}
