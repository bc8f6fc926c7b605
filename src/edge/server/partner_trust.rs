//! What a mesh trusts of its partners (`[[mesh.partner]]`), from the bundles the store holds:
//! inside meshroot, each partner root vouches for the partner's trust domain only; for the
//! mesh's proxies, the configured cross-certificates join the published bundle (or, opted in
//! with `unprotected = true`, the partner's roots). Used when the authority is assembled, and
//! by the fetcher in `federation.rs` to check a new bundle before it is kept.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use crate::adapters::authn::client_cert::IdentityAnchors;
use crate::adapters::config::MeshConfig;
use crate::adapters::config::PartnerConfig;
use crate::adapters::store::SledStore;
use crate::domain::federation::bundle::SpiffeBundle;
use crate::domain::federation::cross::{check_cross_certificate, key_sha256, CrossCertified};
use crate::domain::federation::partner::HeldBundle;
use crate::domain::metrics::Metrics;
use crate::domain::signer::{self};

use super::error::ServeError;

/// The partner bundle `mesh` holds for `partner`, if a good one was ever fetched.
pub(super) fn held_bundle(
    store: &SledStore,
    mesh: &str,
    partner: &PartnerConfig,
) -> Option<(SpiffeBundle, SystemTime)> {
    let kept = match store.partner_bundle(mesh, partner.trust_domain.as_str()) {
        Ok(kept) => kept?,
        Err(error) => {
            tracing::error!(%mesh, partner = %partner.trust_domain, %error, "the held partner bundle cannot be read");
            return None;
        }
    };
    match SpiffeBundle::parse(partner.trust_domain.clone(), &kept.document) {
        Ok(bundle) => Some((bundle, kept.fetched_at)),
        Err(error) => {
            tracing::error!(%mesh, partner = %partner.trust_domain, %error, "the held partner bundle no longer parses; ignoring it");
            None
        }
    }
}

/// What `mesh`'s partners add to its published bundle (cross-certificates, or opted-in roots),
/// with each held partner root authorized to vouch for its trust domain in `anchors`, and the
/// partners' status in `metrics`.
pub(super) fn partner_trust(
    mesh: &MeshConfig,
    our_roots: &[CertificateDer<'static>],
    store: &SledStore,
    metrics: &Metrics,
    anchors: &mut IdentityAnchors,
    now: SystemTime,
) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let mut published = Vec::new();
    for partner in &mesh.partners {
        let held = held_bundle(store, &mesh.name, partner);
        let authorities: Vec<CertificateDer<'static>> = held
            .as_ref()
            .map(|(bundle, _)| bundle.authorities.clone())
            .unwrap_or_default();
        for root in &authorities {
            anchors
                .authorize(&partner.trust_domain, root)
                .map_err(|e| {
                    ServeError::Tls(format!(
                        "mesh {}: partner {}: {e}",
                        mesh.name, partner.trust_domain
                    ))
                })?;
        }
        let crossed = cross_certificates(mesh, partner, our_roots, now)?;
        let covered = |root: &CertificateDer<'static>| {
            key_sha256(root).is_some_and(|key| crossed.iter().any(|c| c.partner_key_sha256 == key))
        };
        let cross_certified = authorities.iter().filter(|root| covered(root)).count();
        if partner.unprotected {
            tracing::warn!(
                mesh = %mesh.name,
                partner = %partner.trust_domain,
                roots = authorities.len(),
                "unprotected = true: the partner's roots are published to the mesh's proxies as \
                 they are; any of them can vouch there for any identity, the mesh's own included"
            );
            published.extend(authorities.iter().cloned());
        } else {
            // Only for roots the partner still publishes: a root it withdrew (rotated out, or
            // compromised) stops being trusted here at the next fetch, whatever the file holds.
            let held_keys: Vec<[u8; 32]> = authorities
                .iter()
                .filter_map(|root| key_sha256(root))
                .collect();
            let (current, withdrawn): (Vec<&CrossCertified>, Vec<&CrossCertified>) = crossed
                .iter()
                .partition(|c| held_keys.contains(&c.partner_key_sha256));
            if !withdrawn.is_empty() {
                tracing::warn!(
                    mesh = %mesh.name,
                    partner = %partner.trust_domain,
                    left_out = withdrawn.len(),
                    "cross-certificates of roots the partner's held bundle does not hold (withdrawn, \
                     or none fetched yet) are not published"
                );
            }
            published.extend(current.iter().map(|c| c.certificate.clone()));
            let uncovered = authorities.len() - cross_certified;
            if uncovered > 0 {
                tracing::warn!(
                    mesh = %mesh.name,
                    partner = %partner.trust_domain,
                    uncovered,
                    "partner roots without a cross-certificate: the mesh's proxies refuse partner \
                     chains under them; run `meshroot partner certify` for the bundle held now"
                );
            }
        }
        metrics.partner(&mesh.name, partner.trust_domain.as_str(), |status| {
            status.bundle_url = partner.bundle_url.clone();
            status.unprotected = partner.unprotected;
            status.held = held.as_ref().map(|(bundle, fetched_at)| HeldBundle {
                sequence: bundle.sequence,
                authorities: bundle.authorities.len(),
                fetched_at: *fetched_at,
            });
            status.cross_certified = cross_certified;
        });
    }
    Ok(published)
}

/// The partner's cross-certificates in force: each one ours, confined to the partner's trust
/// domain; expired ones are left out (with a warning).
pub(super) fn cross_certificates(
    mesh: &MeshConfig,
    partner: &PartnerConfig,
    our_roots: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<Vec<CrossCertified>, ServeError> {
    let Some(path) = &partner.cross_certificates else {
        return Ok(Vec::new());
    };
    if !path.exists() {
        // Configured before `meshroot partner certify` ran: the partner is fetched and held,
        // and the mesh's proxies refuse its chains until the file appears (a reload follows).
        tracing::warn!(mesh = %mesh.name, partner = %partner.trust_domain, file = %path.display(), "no cross-certificates yet: run `meshroot partner certify`");
        return Ok(Vec::new());
    }
    let certificates =
        signer::files::certificates_required(path).map_err(|source| ServeError::CaMaterial {
            mesh: mesh.name.clone(),
            source,
        })?;
    let mut crossed = Vec::new();
    for certificate in &certificates {
        let checked = check_cross_certificate(certificate, &partner.trust_domain, our_roots)
            .map_err(|e| {
                ServeError::Tls(format!(
                    "mesh {}: partner {}: {}: {e}",
                    mesh.name,
                    partner.trust_domain,
                    path.display()
                ))
            })?;
        if checked.not_after <= now {
            tracing::warn!(mesh = %mesh.name, partner = %partner.trust_domain, file = %path.display(), "an expired cross-certificate is left out");
            continue;
        }
        crossed.push(checked);
    }
    Ok(crossed)
}
