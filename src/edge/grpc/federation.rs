//! `GetFederation`: which trust domains each mesh accepts and the partner bundles this replica
//! holds, from the authority in force and its partner status.

use crate::domain::clock::unix_millis;
use crate::issuance::CertificateAuthority;
use crate::pb::audit as api;

/// This replica's view, meshes by name.
pub(super) fn federation(ca: &CertificateAuthority) -> api::GetFederationResponse {
    let partners = ca.metrics().partners();
    let mut meshes: Vec<api::MeshFederation> = ca
        .mesh_signers()
        .map(|(mesh, signer)| api::MeshFederation {
            mesh: mesh.to_owned(),
            trust_domain: signer.trust_domain().to_string(),
            accepts: ca
                .accepted_trust_domains(mesh)
                .iter()
                .map(|td| td.to_string())
                .collect(),
            partners: partners
                .iter()
                .filter(|((of, _), _)| of == mesh)
                .map(|((_, trust_domain), status)| api::PartnerState {
                    trust_domain: trust_domain.clone(),
                    bundle_url: status.bundle_url.clone(),
                    held: status.held.is_some(),
                    sequence: status.held.as_ref().map_or(0, |h| h.sequence),
                    authorities: status
                        .held
                        .as_ref()
                        .map_or(0, |h| u32::try_from(h.authorities).unwrap_or(u32::MAX)),
                    fetched_at_ms: status
                        .held
                        .as_ref()
                        .map_or(0, |h| unix_millis(h.fetched_at)),
                    cross_certified: u32::try_from(status.cross_certified).unwrap_or(u32::MAX),
                    unprotected: status.unprotected,
                    last_attempt_ms: status.last_attempt.map_or(0, unix_millis),
                    last_error: status.last_error.clone().unwrap_or_default(),
                    failures: status.failures,
                })
                .collect(),
        })
        .collect();
    meshes.sort_by(|a, b| a.mesh.cmp(&b.mesh));
    api::GetFederationResponse { meshes }
}
