//! The cluster-wide root-rotation gate. A trust bundle that drops a root this replica had
//! accepted (or any bundle, when it has accepted none: a new replica, or one on an empty
//! volume) is accepted only when every member says none of its unexpired certificates chains
//! to no root of the bundle. A member that does not answer refuses the bundle (fail closed),
//! and the refusal names it. `force_root_removal` overrides, as it does for one replica.

use super::*;
use crate::issuance::Hold;
use crate::members::{describe_missing, local_scope, Members, Missing};
use crate::pb::audit as api;

/// How often a replica started with an unconfirmed bundle asks the members again.
const GATE_RETRY: Duration = Duration::from_secs(2);

/// Why the cluster refused a trust bundle.
#[derive(Debug, thiserror::Error)]
pub enum GateRefusal {
    #[error(
        "mesh {mesh}: the trust bundle drops the root that {certificates} unexpired certificates \
         issued by member {member} chain to (the last expires {until}); keep that root in \
         root-cert.pem or extra_roots until then, or set force_root_removal = true for this mesh"
    )]
    InUse {
        mesh: String,
        member: String,
        certificates: u64,
        until: String,
    },
    #[error(
        "mesh {mesh}: the trust bundle drops a root, and these members did not say whether \
         certificates they issued still chain to it, so it is refused (fail closed): {missing}"
    )]
    Missing { mesh: String, missing: String },
}

/// Checks every mesh's bundle in `authority` with the other members (when it drops a root),
/// then records the bundles as accepted.
pub(super) async fn cluster_gate(
    config: &Config,
    authority: &CertificateAuthority,
    store: &Arc<SledStore>,
    members: &Members,
) -> Result<(), GateRefusal> {
    let mut accepted = Vec::new();
    for mesh in &config.meshes {
        let Some(signer) = authority.mesh_signer(&mesh.name) else {
            continue;
        };
        let bundle: Vec<Vec<u8>> = signer.roots().iter().map(|r| r.to_vec()).collect();
        let before = store.accepted_roots(&mesh.name).unwrap_or_default();
        if crate::store::drops_a_root(&before, &bundle) && !mesh.force_root_removal {
            check_members(&mesh.name, &bundle, members).await?;
        }
        accepted.push((mesh.name.clone(), bundle));
    }
    for (mesh, bundle) in accepted {
        if let Err(error) = store.set_accepted_roots(&mesh, &bundle) {
            tracing::warn!(%mesh, %error, "the accepted trust bundle could not be recorded");
        }
    }
    Ok(())
}

/// Asks every other member how many of its unexpired certificates of `mesh` chain to no root
/// of `bundle`.
async fn check_members(
    mesh: &str,
    bundle: &[Vec<u8>],
    members: &Members,
) -> Result<(), GateRefusal> {
    let answers = members
        .ask_others(|mut client| {
            let request = api::CountRootUseRequest {
                mesh: mesh.to_owned(),
                bundle: bundle.to_vec(),
                scope: local_scope(),
            };
            async move { client.count_root_use(request).await }
        })
        .await;
    let mut missing = Vec::new();
    for (member, answer) in answers {
        let usage = match answer {
            Ok(response) => response.into_inner().members.pop().unwrap_or_default(),
            Err(reason) => {
                missing.push(Missing { member, reason });
                continue;
            }
        };
        let stranded = usage.stranded.unwrap_or_default();
        if stranded.certificates > 0 {
            return Err(GateRefusal::InUse {
                mesh: mesh.to_owned(),
                member,
                certificates: stranded.certificates,
                until: stranded
                    .until_ms
                    .map(|ms| crate::clock::format_time(crate::clock::from_unix_millis(ms)))
                    .unwrap_or_else(|| "?".into()),
            });
        }
    }
    if !missing.is_empty() {
        return Err(GateRefusal::Missing {
            mesh: mesh.to_owned(),
            missing: describe_missing(&missing),
        });
    }
    Ok(())
}

/// At start: holds issuance (and the publication of the bundle) until the members confirm the
/// bundle, asking again every [`GATE_RETRY`]. A reload that passes the gate clears the hold too.
pub(super) fn confirm_at_start(
    config: Config,
    current: Arc<CurrentAuthority>,
    store: Arc<SledStore>,
    members: Arc<Members>,
    mut shutdown: watch::Receiver<bool>,
) {
    let holds = current.get().holds().clone();
    holds.set(
        Hold::ClusterGate,
        "confirming the trust bundle with the other members".into(),
    );
    tokio::spawn(async move {
        loop {
            if !holds.is_set(Hold::ClusterGate) {
                return;
            }
            let authority = current.get();
            match cluster_gate(&config, &authority, &store, &members).await {
                Ok(()) => {
                    holds.clear(Hold::ClusterGate);
                    return;
                }
                Err(refusal) => holds.set(Hold::ClusterGate, refusal.to_string()),
            }
            tokio::select! {
                _ = shutdown.wait_for(|stopped| *stopped) => return,
                _ = tokio::time::sleep(GATE_RETRY) => {}
            }
        }
    });
}
