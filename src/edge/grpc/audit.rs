//! `meshroot.audit.v1.AuditService`: the audit API over the record store, on the admin
//! address. Store work runs on blocking threads, so a long query never stalls issuance.

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::adapters::authn::admin::Right;
use crate::adapters::store::AuditError;
use crate::adapters::store::{LogEntry, SledStore};
use crate::domain::audit::checkpoint::{check_shared, Checkpoint, MAX_SHARED_LOGS_PER_MEMBER};
use crate::domain::audit::Query;
use crate::domain::record::client_text;
use crate::pb::audit as api;
use crate::pb::audit::audit_service_client::AuditServiceClient;
use crate::pb::audit::audit_service_server::AuditService;

use super::audit_api::AuditApi;
use super::replicas::{completeness, forward, gather, labelled, local, sum_stats, Route};
use super::status_for_audit;
use super::wire::{entry_message, query_from_filter};

/// Entries read from the store per step of a watch.
const WATCH_CHUNK: usize = 512;

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn revoke(
        &self,
        request: Request<api::RevokeRequest>,
    ) -> Result<Response<api::RevokeResponse>, Status> {
        let actor = self.authorized_identity(&request, Right::Revoke)?;
        // What to record, as gathered by another member: only members may hand it over (an
        // operator's request goes through the selection, which this skips).
        if request.get_ref().apply.is_some() {
            self.authorize_member(&request)?;
        }
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        self.revoke_request(request.into_inner(), actor, peer)
            .await
            .map(Response::new)
    }

    async fn list_records(
        &self,
        request: Request<api::ListRecordsRequest>,
    ) -> Result<Response<api::ListRecordsResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        // A bad filter is the caller's mistake, refused here rather than by every member.
        if let Some(filter) = &request.filter {
            query_from_filter(filter.clone())
                .map_err(|e| status_for_audit(&AuditError::Query(e)))?;
        }
        let response = match self.route(request.scope.as_ref())? {
            Route::Local => self.local_list(request).await?,
            Route::Forward(members, member) => {
                let response = forward(&members, &member, |mut client| {
                    let request = api::ListRecordsRequest {
                        scope: local(),
                        ..request.clone()
                    };
                    async move { client.list_records(request).await }
                })
                .await?
                .into_inner();
                labelled(response, &member)
            }
            Route::Cluster(members) => self.cluster_list(&members, request).await?,
        };
        Ok(Response::new(response))
    }

    async fn get_record(
        &self,
        request: Request<api::GetRecordRequest>,
    ) -> Result<Response<api::LogEntry>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        match self.route(request.scope.as_ref())? {
            Route::Local => {}
            Route::Forward(members, member) => {
                let entry = forward(&members, &member, |mut client| {
                    let request = api::GetRecordRequest {
                        scope: local(),
                        ..request.clone()
                    };
                    async move { client.get_record(request).await }
                })
                .await?
                .into_inner();
                return Ok(Response::new(api::LogEntry { member, ..entry }));
            }
            Route::Cluster(members) => return self.cluster_get_record(&members, request).await,
        }
        let key = request.key;
        let entry = self
            .blocking(move |store| {
                let sequence = sequence_for(store, key)?;
                store
                    .entries(sequence, sequence, 1)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| AuditError::NotFound(format!("no record {sequence}")))
            })
            .await?;
        Ok(Response::new(entry_message(&entry, true)))
    }

    type WatchRecordsStream = ReceiverStream<Result<api::LogEntry, Status>>;

    async fn watch_records(
        &self,
        request: Request<api::WatchRecordsRequest>,
    ) -> Result<Response<Self::WatchRecordsStream>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        // A live tail follows one log: the replica asked, or the member named.
        if let Route::Forward(members, member) = self.route(request.scope.as_ref())? {
            let stream = forward(&members, &member, |mut client| {
                let request = api::WatchRecordsRequest {
                    scope: local(),
                    ..request.clone()
                };
                async move { client.watch_records(request).await }
            })
            .await?
            .into_inner();
            return Ok(Response::new(relay(stream, member, self.shutdown.clone())));
        }
        let filter = request
            .filter
            .map(query_from_filter)
            .transpose()
            .map_err(|e| status_for_audit(&AuditError::Query(e)))?;
        if let Some(query) = &filter {
            query
                .validate()
                .map_err(|e| status_for_audit(&AuditError::Query(e)))?;
            if query.revoked.is_some() {
                // A certificate is revoked after its record was written: a tail cannot say.
                return Err(status_for_audit(&AuditError::Query(
                    crate::domain::audit::QueryError::Invalid(
                        "the revoked-only filter is for listing, not for a live tail".into(),
                    ),
                )));
            }
        }
        let (sender, receiver) = mpsc::channel(64);
        let store = self.store.clone();
        let mut shutdown = self.shutdown.clone();
        let to = match request.to_sequence {
            0 => u64::MAX,
            to => to,
        };
        tokio::spawn(async move {
            let mut durable = store.subscribe();
            let mut next = request.from_sequence.max(1);
            loop {
                let through = durable.current().min(to);
                while next <= through {
                    let chunk_store = store.clone();
                    let from = next;
                    let entries = tokio::task::spawn_blocking(move || {
                        chunk_store.entries(from, through, WATCH_CHUNK)
                    })
                    .await;
                    let entries = match entries {
                        Ok(Ok(entries)) => entries,
                        Ok(Err(error)) => {
                            let _ = sender
                                .send(Err(status_for_audit(&AuditError::Store(error))))
                                .await;
                            return;
                        }
                        Err(_) => return,
                    };
                    let Some(last) = entries.last().map(LogEntry::sequence) else {
                        break;
                    };
                    for entry in &entries {
                        if !wanted(entry, filter.as_ref(), request.include_pruned) {
                            continue;
                        }
                        let message = entry_message(entry, request.include_stored);
                        if sender.send(Ok(message)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    next = last + 1;
                }
                if next > to {
                    return;
                }
                tokio::select! {
                    changed = durable.changed() => if changed.is_none() { return },
                    _ = shutdown.wait_for(|stopped| *stopped) => return,
                    _ = sender.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_checkpoint(
        &self,
        request: Request<api::GetCheckpointRequest>,
    ) -> Result<Response<api::GetCheckpointResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        if let Route::Forward(members, member) = self.route(request.scope.as_ref())? {
            return forward(&members, &member, |mut client| {
                let request = api::GetCheckpointRequest {
                    scope: local(),
                    ..request.clone()
                };
                async move { client.get_checkpoint(request).await }
            })
            .await;
        }
        let from_size = request.from_size;
        let verifier_key = self.verifier_key.clone().unwrap_or_default();
        self.blocking(move |store| {
            let (size, note) = store
                .latest_checkpoint()?
                .ok_or_else(|| AuditError::NotFound("no checkpoint has been written yet".into()))?;
            let root = Checkpoint::parse_unverified(&note)
                .map(|checkpoint| checkpoint.root)
                .unwrap_or_default();
            let consistency_proof = if from_size > 0 && from_size <= size {
                store.prove_consistency(from_size, size)?
            } else {
                Vec::new()
            };
            Ok(api::GetCheckpointResponse {
                note,
                size,
                root_hash: root.to_vec(),
                consistency_proof: consistency_proof.iter().map(|h| h.to_vec()).collect(),
                verifier_key,
            })
        })
        .await
        .map(Response::new)
    }

    async fn prove_inclusion(
        &self,
        request: Request<api::ProveInclusionRequest>,
    ) -> Result<Response<api::ProveInclusionResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        if let Route::Forward(members, member) = self.route(request.scope.as_ref())? {
            return forward(&members, &member, |mut client| {
                let request = api::ProveInclusionRequest {
                    scope: local(),
                    ..request.clone()
                };
                async move { client.prove_inclusion(request).await }
            })
            .await;
        }
        self.blocking(move |store| {
            let sequence = sequence_for(store, request.key.map(Into::into))?;
            let (tree_size, checkpoint_note) = match request.tree_size {
                0 => {
                    let (size, note) = store.latest_checkpoint()?.ok_or_else(|| {
                        AuditError::NotFound("no checkpoint has been written yet".into())
                    })?;
                    (size, note)
                }
                size => {
                    let note = store
                        .checkpoints()?
                        .into_iter()
                        .find(|(s, _)| *s == size)
                        .map(|(_, note)| note)
                        .unwrap_or_default();
                    (size, note)
                }
            };
            if sequence > tree_size {
                return Err(AuditError::NotFound(format!(
                    "record {sequence} is newer than the checkpoint of {tree_size} records; \
                     ask again after the next checkpoint"
                )));
            }
            let proof = store.prove_inclusion(sequence, tree_size)?;
            Ok(api::ProveInclusionResponse {
                leaf_index: proof.leaf_index,
                tree_size: proof.tree_size,
                leaf_data: proof.leaf.to_bytes().to_vec(),
                record: proof.record.unwrap_or_default(),
                audit_path: proof.path.iter().map(|h| h.to_vec()).collect(),
                checkpoint_note,
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_stats(
        &self,
        request: Request<api::GetStatsRequest>,
    ) -> Result<Response<api::GetStatsResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let response = match self.route(request.scope.as_ref())? {
            Route::Local => self.local_stats().await?,
            Route::Forward(members, member) => {
                forward(&members, &member, |mut client| async move {
                    client
                        .get_stats(api::GetStatsRequest { scope: local() })
                        .await
                })
                .await?
                .into_inner()
            }
            Route::Cluster(members) => {
                let (answers, missing) =
                    gather(&members, self.local_stats(), |mut client| async move {
                        client
                            .get_stats(api::GetStatsRequest { scope: local() })
                            .await
                            .map(Response::into_inner)
                    })
                    .await?;
                sum_stats(answers, &missing)
            }
        };
        Ok(Response::new(response))
    }

    async fn list_signers(
        &self,
        request: Request<api::ListSignersRequest>,
    ) -> Result<Response<api::ListSignersResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        if let Route::Forward(members, member) = self.route(request.scope.as_ref())? {
            return forward(&members, &member, |mut client| {
                let request = api::ListSignersRequest {
                    scope: local(),
                    ..request.clone()
                };
                async move { client.list_signers(request).await }
            })
            .await;
        }
        let mesh = request.mesh;
        let signers = self
            .blocking(move |store| store.signers(&mesh).map_err(AuditError::from))
            .await?;
        let mut signers: Vec<api::Signer> = signers
            .into_iter()
            .map(|(sha256, chain)| api::Signer { sha256, chain })
            .collect();
        signers.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(Response::new(api::ListSignersResponse { signers }))
    }

    async fn get_federation(
        &self,
        request: Request<api::GetFederationRequest>,
    ) -> Result<Response<api::GetFederationResponse>, Status> {
        self.authorize(&request)?;
        // An API without the authority (a store opened by the CLI) has no meshes to report.
        Ok(Response::new(match &self.revocation {
            Some(context) => super::federation::federation(&context.current.get()),
            None => api::GetFederationResponse::default(),
        }))
    }

    async fn get_replicas(
        &self,
        request: Request<api::GetReplicasRequest>,
    ) -> Result<Response<api::GetReplicasResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(match self.members() {
            None => api::GetReplicasResponse::default(),
            Some(members) => api::GetReplicasResponse {
                members: members.all(),
                this_member: members.this().unwrap_or_default().to_owned(),
            },
        }))
    }

    /// The old name of GetReplicas (a client of the previous release), answered the same.
    async fn get_cluster(
        &self,
        request: Request<api::GetReplicasRequest>,
    ) -> Result<Response<api::GetReplicasResponse>, Status> {
        self.get_replicas(request).await
    }

    async fn share_checkpoint(
        &self,
        request: Request<api::ShareCheckpointRequest>,
    ) -> Result<Response<api::ShareCheckpointResponse>, Status> {
        self.authorize_member(&request)?;
        let request = request.into_inner();
        let invalid = |what: &str| {
            status_for_audit(&AuditError::Query(
                crate::domain::audit::QueryError::Invalid(what.to_owned()),
            ))
        };
        let Some(members) = self.members() else {
            return Err(invalid("this replica has no [replicas]"));
        };
        if !members.contains(&request.member) {
            return Err(invalid("not a member of this cluster"));
        }
        // Signed by the audit key, of the named log, within bounds (issue 30, N4).
        let note = check_shared(&request.log, &request.note, self.verifier.as_ref()).map_err(
            |error| {
                tracing::warn!(%error, member = %client_text(&request.member, 256), "a shared checkpoint was refused");
                invalid(&error.to_string())
            },
        )?;
        let (member, log) = (request.member, request.log);
        let kept = self
            .blocking(move |store| {
                let (logs, known) = store.member_logs(&member, &log)?;
                if !known && note.is_some() && logs >= MAX_SHARED_LOGS_PER_MEMBER {
                    return Err(AuditError::Query(
                        crate::domain::audit::QueryError::Invalid(format!(
                            "this member already keeps {logs} logs' checkpoints for {member}"
                        )),
                    ));
                }
                store
                    .keep_member_checkpoint(&member, &log, note)
                    .map_err(AuditError::from)
            })
            .await?;
        Ok(Response::new(api::ShareCheckpointResponse {
            note: kept.map(|(_, note)| note).unwrap_or_default(),
        }))
    }

    async fn count_root_use(
        &self,
        request: Request<api::CountRootUseRequest>,
    ) -> Result<Response<api::CountRootUseResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let ask = |mut client: AuditServiceClient<tonic::transport::Channel>| {
            let request = api::CountRootUseRequest {
                scope: local(),
                ..request.clone()
            };
            async move {
                client
                    .count_root_use(request)
                    .await
                    .map(Response::into_inner)
            }
        };
        let this = self
            .members()
            .and_then(|m| m.this().map(str::to_owned))
            .unwrap_or_default();
        let response = match self.route(request.scope.as_ref())? {
            Route::Local => api::CountRootUseResponse {
                members: vec![self.local_root_use(&request, this).await?],
                replicas: None,
            },
            Route::Forward(members, member) => forward(&members, &member, ask).await?,
            Route::Cluster(members) => {
                let (answers, missing) = gather(
                    &members,
                    self.local_root_use(&request, this),
                    |client| async {
                        let mut response = ask(client).await?;
                        Ok(response.members.pop().unwrap_or_default())
                    },
                )
                .await?;
                let cluster = completeness(&answers, &missing);
                api::CountRootUseResponse {
                    members: answers
                        .into_iter()
                        .map(|(member, usage)| api::MemberRootUse { member, ..usage })
                        .collect(),
                    replicas: Some(cluster),
                }
            }
        };
        Ok(Response::new(response))
    }
}

/// Relays a member's live tail, each entry labelled with the member.
fn relay(
    mut stream: tonic::Streaming<api::LogEntry>,
    member: String,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<Result<api::LogEntry, Status>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                _ = shutdown.wait_for(|stopped| *stopped) => return,
                _ = sender.closed() => return,
            };
            let item = match next {
                Ok(Some(entry)) => Ok(api::LogEntry {
                    member: member.clone(),
                    ..entry
                }),
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let end = item.is_err();
            if sender.send(item).await.is_err() || end {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// Whether a watch sends this entry.
fn wanted(entry: &LogEntry, filter: Option<&Query>, include_pruned: bool) -> bool {
    match (entry, filter) {
        (LogEntry::Pruned { .. }, None) => include_pruned,
        (LogEntry::Pruned { .. }, Some(_)) => false,
        (LogEntry::Record { .. }, None) => true,
        (LogEntry::Record { .. }, Some(query)) => entry
            .record()
            .and_then(Result::ok)
            .is_some_and(|record| query.matches(&record)),
    }
}

fn sequence_for(
    store: &SledStore,
    key: Option<api::get_record_request::Key>,
) -> Result<u64, AuditError> {
    match key {
        Some(api::get_record_request::Key::Sequence(sequence)) => Ok(sequence),
        Some(api::get_record_request::Key::Serial(serial)) => {
            let query = Query {
                serial: Some(serial),
                ..Query::default()
            };
            store
                .query(&query, 1, None)?
                .records
                .first()
                .map(|record| record.sequence)
                .ok_or_else(|| AuditError::NotFound("no certificate with this serial".into()))
        }
        None => Err(AuditError::Query(
            crate::domain::audit::QueryError::Invalid("give a sequence number or a serial".into()),
        )),
    }
}
