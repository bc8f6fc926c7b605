//! The cluster-wide root-rotation gate. A trust bundle that drops a root this replica had
//! accepted (or any bundle, when it has accepted none: a new replica, or one on an empty
//! volume) is accepted only when every member says none of its unexpired certificates chains
//! to no root of the bundle. A member that does not answer refuses the bundle (fail closed),
//! and the refusal names it. `force_root_removal` overrides, as it does for one replica.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::adapters::config::Config;
use crate::adapters::store::SledStore;
use crate::edge::replicas::Members;
use crate::edge::replicas::{describe_missing, local_scope, Missing};
use crate::edge::shutdown::unless_stopped;
use crate::issuance::Hold;
use crate::issuance::{CertificateAuthority, CurrentAuthority};
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
        if crate::adapters::store::drops_a_root(&before, &bundle) && !mesh.force_root_removal {
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
                    .map(|ms| {
                        crate::domain::clock::format_time(crate::domain::clock::from_unix_millis(
                            ms,
                        ))
                    })
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
    (background, mut shutdown): (&TaskTracker, watch::Receiver<bool>),
) {
    let holds = current.get().holds().clone();
    holds.set(
        Hold::ClusterGate,
        "confirming the trust bundle with the other members".into(),
    );
    background.spawn(async move {
        loop {
            if !holds.is_set(Hold::ClusterGate) {
                return;
            }
            let authority = current.get();
            match unless_stopped(
                &mut shutdown,
                cluster_gate(&config, &authority, &store, &members),
            )
            .await
            {
                None => return,
                Some(Ok(())) => {
                    holds.clear(Hold::ClusterGate);
                    return;
                }
                Some(Err(refusal)) => holds.set(Hold::ClusterGate, refusal.to_string()),
            }
            tokio::select! {
                _ = shutdown.wait_for(|stopped| *stopped) => return,
                _ = tokio::time::sleep(GATE_RETRY) => {}
            }
        }
    });
}

/// How often a replica hands its latest checkpoint to the other members, and learns the newest
/// they hold for it; sooner while some member has not answered yet.
const EXCHANGE_RETRY: Duration = Duration::from_secs(2);

/// Loss and rollback detection: hands this replica's latest signed checkpoint to every other
/// member (they keep the newest per member and log) and checks its own log against the newest
/// each one holds for it. A log shorter than, or inconsistent with, a checkpoint it had
/// committed to is never silently continued: issuance is held (not ready, with the reason)
/// until the volume is restored or the replica starts a new log under a new name.
pub(super) async fn exchange_checkpoints_loop(
    members: Arc<Members>,
    store: Arc<SledStore>,
    (log, verifier): (
        String,
        Option<crate::domain::audit::checkpoint::AuditVerifier>,
    ),
    (current, kube): (Arc<CurrentAuthority>, Option<CheckpointObject>),
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(this) = members.this().map(str::to_owned) else {
        tracing::warn!("this replica does not know its own member name: it cannot hand its checkpoints to the others");
        return;
    };
    // Until the first exchange, the log is not known to be whole: no issuance.
    current.get().holds().set(
        Hold::LogRollback,
        "checking this log against the checkpoints the other members hold for it".into(),
    );
    loop {
        let exchange = exchange_checkpoints(
            &members,
            &this,
            &store,
            (&log, verifier.as_ref()),
            (&current, kube.as_ref()),
        );
        let Some(everyone_answered) = unless_stopped(&mut shutdown, exchange).await else {
            return;
        };
        let wait = if everyone_answered {
            interval
        } else {
            EXCHANGE_RETRY.min(interval)
        };
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One exchange; returns whether every member answered.
async fn exchange_checkpoints(
    members: &Members,
    this: &str,
    store: &Arc<SledStore>,
    (log, verifier): (
        &str,
        Option<&crate::domain::audit::checkpoint::AuditVerifier>,
    ),
    (current, kube): (&CurrentAuthority, Option<&CheckpointObject>),
) -> bool {
    use crate::domain::audit::checkpoint::Checkpoint;
    let note = match store.latest_checkpoint() {
        Ok(latest) => latest.map(|(_, note)| note).unwrap_or_default(),
        Err(error) => {
            tracing::warn!(%error, "reading the latest checkpoint to share failed");
            return false;
        }
    };
    let answers = members
        .ask_others(|mut client| {
            let request = api::ShareCheckpointRequest {
                member: this.to_owned(),
                log: log.to_owned(),
                note: note.clone(),
            };
            async move { client.share_checkpoint(request).await }
        })
        .await;
    let (size, _) = store.tree_head();
    let mut everyone = true;
    let mut problems = Vec::new();
    let mut held_by: Vec<(String, String)> = Vec::new();
    for (member, answer) in answers {
        match answer {
            Ok(response) => held_by.push((format!("member {member}"), response.into_inner().note)),
            Err(reason) => {
                tracing::debug!(%member, %reason, "a member did not take this replica's checkpoint");
                everyone = false;
            }
        }
    }
    // The Kubernetes API keeps one too: what it holds is checked, then this replica's latest
    // is kept there (never over a larger checkpoint of the same log).
    if let Some(object) = kube {
        match object.exchange(this, &note).await {
            Ok(held) => held_by.push((
                format!(
                    "the ConfigMap {}",
                    crate::adapters::kubernetes::replica_set::CHECKPOINTS_CONFIGMAP
                ),
                held,
            )),
            Err(error) => {
                tracing::warn!(%error, "the checkpoint could not be kept in the Kubernetes API");
                everyone = false;
            }
        }
    }
    for (member, held) in held_by {
        if held.is_empty() {
            continue;
        }
        let checkpoint = match verifier {
            Some(verifier) => verifier.open_checkpoint(&held).ok(),
            None => Checkpoint::parse_unverified(&held),
        };
        let Some(checkpoint) = checkpoint.filter(|c| c.origin == log) else {
            tracing::warn!(%member, "a member holds a checkpoint for this replica that does not verify; ignored");
            continue;
        };
        if checkpoint.size > size {
            problems.push(format!(
                "{member} holds this log's signed checkpoint of {} records, but the log has {size}: its volume was lost or restored from an older copy",
                checkpoint.size
            ));
        } else if store.root_at(checkpoint.size).ok() != Some(checkpoint.root) {
            problems.push(format!(
                "the log's first {} records do not hash to the signed checkpoint {member} holds: its volume holds a different history",
                checkpoint.size
            ));
        }
    }
    let holds = current.get().holds().clone();
    if problems.is_empty() {
        holds.clear(Hold::LogRollback);
    } else {
        holds.set(
            Hold::LogRollback,
            format!(
                "{}; restore the volume, or start a new log under a new name (docs/operations/run-several-replicas.md)",
                problems.join("; ")
            ),
        );
    }
    tracing::debug!(
        members = members.all().len(),
        everyone,
        "checkpoint shared with the members"
    );
    // No checkpoint yet (the first is written at start): share again soon.
    everyone && !note.is_empty()
}

/// This replica's entry in the checkpoints ConfigMap of its own Kubernetes API.
#[derive(Clone)]
pub(super) struct CheckpointObject {
    pub(super) cluster: crate::adapters::kubernetes::KubeCluster,
    pub(super) namespace: String,
}

impl CheckpointObject {
    /// Returns the checkpoint kept for `member` (empty: none), then keeps `note` there unless
    /// what is kept is a larger checkpoint of the same log.
    async fn exchange(&self, member: &str, note: &str) -> Result<String, String> {
        use crate::adapters::kubernetes::replica_set::{
            checkpoint_key, record_checkpoint, recorded_checkpoint,
        };
        use crate::domain::audit::checkpoint::Checkpoint;
        let key = checkpoint_key(member);
        let held = recorded_checkpoint(self.cluster.client(), &self.namespace, &key)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if let Some(mine) = Checkpoint::parse_unverified(note) {
            let keep = |existing: &str| {
                Checkpoint::parse_unverified(existing)
                    .is_some_and(|kept| kept.origin == mine.origin && kept.size > mine.size)
            };
            record_checkpoint(self.cluster.client(), &self.namespace, &key, note, keep)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(held)
    }
}

/// Ordinals looked for among the ConfigMap's keys.
const MAX_ORDINAL: u32 = 256;

/// How often the StatefulSet's replica count is read again.
const STATEFULSET_POLL: Duration = Duration::from_secs(5);

/// Follows the StatefulSet's `spec.replicas`: a scale-up adds its new ordinals as members at
/// once; a scale-down removes none (their volumes, and records, are kept). A replica that ever
/// kept a checkpoint in the ConfigMap stays a member, across restarts too, until an operator
/// deletes its key there and lowers `[replicas] replicas`.
pub(super) async fn follow_statefulset(
    members: Arc<Members>,
    cluster: crate::adapters::kubernetes::KubeCluster,
    set: crate::adapters::config::StatefulSetMembers,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::adapters::kubernetes::replica_set::{
        checkpoint_key, recorded_keys, statefulset_replicas,
    };
    loop {
        let asked = unless_stopped(
            &mut shutdown,
            futures_util::future::join(
                statefulset_replicas(cluster.client(), &set.namespace, &set.name),
                recorded_keys(cluster.client(), &set.namespace),
            ),
        );
        let Some((replicas, kept)) = asked.await else {
            return;
        };
        let running = match replicas {
            Ok(Some(replicas)) => replicas,
            Ok(None) => {
                tracing::warn!(statefulset = %set.name, "the StatefulSet was not found; the configured members stay");
                0
            }
            Err(error) => {
                tracing::warn!(statefulset = %set.name, %error, "reading the StatefulSet failed; the members stay as they are");
                0
            }
        };
        // Replicas scaled away, whose checkpoints the API keeps.
        let kept = kept.unwrap_or_default();
        let ordinals = set.members(MAX_ORDINAL);
        let recorded = kept
            .iter()
            .filter_map(|key| ordinals.iter().position(|m| checkpoint_key(m) == *key))
            .map(|i| i as u32 + 1)
            .max()
            .unwrap_or(0);
        members.grow(set.members(running.max(recorded)));
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(STATEFULSET_POLL) => {}
        }
    }
}

/// With `[replicas]`: at start and every `interval`, reads every other member's revocation
/// records and records here what this replica lacks (a revocation made while it was down or
/// unreachable), so a revocation reaches every member even when the command could not.
pub(super) async fn sync_revocations_loop(
    members: Arc<Members>,
    store: Arc<SledStore>,
    context: crate::issuance::revoke::RevokeContext,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let sync = sync_revocations(&members, &store, &context);
        if unless_stopped(&mut shutdown, sync).await.is_none() {
            return;
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One pass over the other members.
async fn sync_revocations(
    members: &Members,
    store: &Arc<SledStore>,
    context: &crate::issuance::revoke::RevokeContext,
) {
    use crate::pb::audit as api;
    let fetch =
        |mut client: crate::pb::audit::audit_service_client::AuditServiceClient<
            tonic::transport::Channel,
        >| async move {
            let mut records = Vec::new();
            let mut page_token = String::new();
            loop {
                let response = client
                    .list_records(api::ListRecordsRequest {
                        filter: Some(api::Filter {
                            outcome: api::Outcome::Revoked as i32,
                            ..api::Filter::default()
                        }),
                        page_size: crate::domain::audit::MAX_PAGE_SIZE as u32,
                        page_token,
                        count_only: false,
                        scope: crate::edge::replicas::local_scope(),
                    })
                    .await?
                    .into_inner();
                records.extend(response.entries.into_iter().filter_map(
                    |entry| match entry.entry {
                        Some(api::log_entry::Entry::Record(record)) => {
                            crate::edge::grpc::record_messages::record_from_message(record)
                        }
                        _ => None,
                    },
                ));
                if response.next_page_token.is_empty() {
                    return Ok(records);
                }
                page_token = response.next_page_token;
            }
        };
    for member in members.others() {
        let records = match members.ask(&member, &fetch).await {
            Ok(records) => records,
            Err(reason) => {
                tracing::debug!(%member, %reason, "could not read a member's revocations; later");
                continue;
            }
        };
        for record in records {
            let ca = context.current.get();
            let Some(mut copy) = crate::domain::revocation::pending_copy(ca.revocations(), &record)
            else {
                continue;
            };
            copy.comment = crate::domain::record::client_text(
                &format!(
                    "{} (from member {member}, its record {})",
                    copy.comment, record.sequence
                ),
                crate::domain::record::CLIENT_TEXT_BYTES,
            );
            let caller = crate::domain::record::CallerRecord {
                authenticator: "member".into(),
                subject: format!("member:{member}"),
                peer_address: member.clone(),
                ..crate::domain::record::CallerRecord::default()
            };
            match context.record(store.as_ref(), copy, caller).await {
                Ok(recorded) => {
                    if recorded.sequence.is_some() {
                        tracing::warn!(%member, their_record = record.sequence, "a revocation this replica had missed is now recorded here");
                    }
                }
                Err(error) => {
                    tracing::error!(%member, %error, "a missed revocation could not be recorded; later");
                    return;
                }
            }
        }
    }
}

/// Records each mesh's bundle as accepted (one replica: the local check is the whole gate).
pub(super) fn record_accepted_bundles(ca: &CertificateAuthority, store: &SledStore) {
    for (mesh, signer) in ca.mesh_signers() {
        let bundle: Vec<Vec<u8>> = signer.roots().iter().map(|r| r.to_vec()).collect();
        if let Err(error) = store.set_accepted_roots(mesh, &bundle) {
            tracing::warn!(%mesh, %error, "the accepted trust bundle could not be recorded");
        }
    }
}
