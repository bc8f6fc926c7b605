//! `meshroot.audit.v1.AuditService`: the audit API over the record store, on the admin
//! address. Store work runs on blocking threads, so a long query never stalls issuance.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::checkpoint::Checkpoint;
use crate::audit::{OutcomeFilter, Query, DEFAULT_PAGE_SIZE};
use crate::clock::{from_unix_millis, unix_millis};
use crate::pb::audit as api;
use crate::pb::audit::audit_service_server::{AuditService, AuditServiceServer};
use crate::store::AuditError;
use crate::store::{self, LogEntry, SledStore};

use super::{admin_identity_allowed, status_for_audit};

/// Entries read from the store per step of a watch.
const WATCH_CHUNK: usize = 512;

/// Who may use the audit API on a non-loopback admin address.
pub struct AdminAccess {
    /// `admin.allowed_identities`.
    pub allowed_identities: Vec<String>,
    /// The authority in force, whose identity anchors judge client certificates.
    pub current: Arc<crate::issuance::CurrentAuthority>,
}

/// The audit API over a store.
pub struct AuditApi {
    store: Arc<SledStore>,
    /// The audit key's verifier key, returned with checkpoints.
    verifier_key: Option<String>,
    /// When set, only clients whose certificate proves one of the allowed identities are served
    /// (the listener only checked that the client holds its certificate's key).
    access: Option<AdminAccess>,
    /// Ends live tails when the server shuts down.
    shutdown: watch::Receiver<bool>,
}

impl AuditApi {
    pub fn new(
        store: Arc<SledStore>,
        verifier_key: Option<String>,
        access: Option<AdminAccess>,
        shutdown: watch::Receiver<bool>,
    ) -> AuditServiceServer<Self> {
        AuditServiceServer::new(Self {
            store,
            verifier_key,
            access,
            shutdown,
        })
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match &self.access {
            None => Ok(()),
            Some(access) => {
                let ca = access.current.get();
                admin_identity_allowed(
                    request,
                    &access.allowed_identities,
                    ca.identity_anchors(),
                    ca.clock().now(),
                )
            }
        }
    }

    /// Runs store work on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SledStore) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(result) => result.map_err(|error| status_for_audit(&error)),
            Err(join) => {
                tracing::error!(error = %join, "audit request task failed");
                Err(status_for_audit(&AuditError::Store(
                    crate::store::StoreError::Closed,
                )))
            }
        }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_records(
        &self,
        request: Request<api::ListRecordsRequest>,
    ) -> Result<Response<api::ListRecordsResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let query = query_from_filter(request.filter.unwrap_or_default());
        if request.count_only {
            let count = self.blocking(move |store| store.count(&query)).await?;
            return Ok(Response::new(api::ListRecordsResponse {
                count,
                ..Default::default()
            }));
        }
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size as usize,
        };
        let token = (!request.page_token.is_empty()).then_some(request.page_token);
        let page = self
            .blocking(move |store| store.query(&query, page_size, token.as_deref()))
            .await?;
        Ok(Response::new(api::ListRecordsResponse {
            entries: page
                .records
                .iter()
                .map(|record| api::LogEntry {
                    sequence: record.sequence,
                    entry: Some(api::log_entry::Entry::Record(store::to_message(record))),
                    stored: Vec::new(),
                })
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            count: 0,
        }))
    }

    async fn get_record(
        &self,
        request: Request<api::GetRecordRequest>,
    ) -> Result<Response<api::LogEntry>, Status> {
        self.authorize(&request)?;
        let key = request.into_inner().key;
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
        let filter = request.filter.map(query_from_filter);
        if let Some(query) = &filter {
            query
                .validate()
                .map_err(|e| status_for_audit(&AuditError::Query(e)))?;
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
        let from_size = request.into_inner().from_size;
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
        let stats = self
            .blocking(|store| store.stats().map_err(AuditError::from))
            .await?;
        Ok(Response::new(api::GetStatsResponse {
            appended: stats.appended,
            records: stats.records,
            pruned: stats.pruned,
            oldest_sequence: stats.oldest_sequence,
            oldest_recorded_at_ms: stats.oldest_recorded_at.map(unix_millis),
            newest_recorded_at_ms: stats.newest_recorded_at.map(unix_millis),
            index_runs: stats.index_runs as u32,
            index_tail_records: stats.index_tail_records,
            checkpoints: stats.checkpoints as u64,
            latest_checkpoint_size: stats.latest_checkpoint_size,
            disk_bytes: stats.disk_bytes,
        }))
    }

    async fn list_signers(
        &self,
        request: Request<api::ListSignersRequest>,
    ) -> Result<Response<api::ListSignersResponse>, Status> {
        self.authorize(&request)?;
        let mesh = request.into_inner().mesh;
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
        None => Err(AuditError::Query(crate::audit::QueryError::Invalid(
            "give a sequence number or a serial".into(),
        ))),
    }
}

impl From<api::prove_inclusion_request::Key> for api::get_record_request::Key {
    fn from(key: api::prove_inclusion_request::Key) -> Self {
        match key {
            api::prove_inclusion_request::Key::Sequence(s) => Self::Sequence(s),
            api::prove_inclusion_request::Key::Serial(s) => Self::Serial(s),
        }
    }
}

/// A log entry as the API sends it.
pub fn entry_message(entry: &LogEntry, include_stored: bool) -> api::LogEntry {
    match entry {
        LogEntry::Record { sequence, stored } => api::LogEntry {
            sequence: *sequence,
            entry: entry
                .record()
                .and_then(Result::ok)
                .map(|record| api::log_entry::Entry::Record(store::to_message(&record))),
            stored: if include_stored {
                stored.clone()
            } else {
                Vec::new()
            },
        },
        LogEntry::Pruned { sequence, leaf } => api::LogEntry {
            sequence: *sequence,
            entry: Some(api::log_entry::Entry::PrunedLeaf(leaf.to_bytes().to_vec())),
            stored: Vec::new(),
        },
    }
}

/// The query a filter message describes.
pub fn query_from_filter(filter: api::Filter) -> Query {
    let text = |value: String| (!value.is_empty()).then_some(value);
    Query {
        serial: (!filter.serial.is_empty()).then_some(filter.serial),
        spiffe_id: text(filter.spiffe_id),
        spiffe_id_prefix: text(filter.spiffe_id_prefix),
        mesh: text(filter.mesh),
        trust_domain: text(filter.trust_domain),
        namespace: text(filter.namespace),
        service_account: text(filter.service_account),
        caller: text(filter.caller),
        cluster_id: text(filter.cluster_id),
        pod: text(filter.pod),
        since: filter.since_ms.map(from_unix_millis),
        until: filter.until_ms.map(from_unix_millis),
        valid_at: filter.valid_at_ms.map(from_unix_millis),
        expires_after: filter.expires_after_ms.map(from_unix_millis),
        expires_before: filter.expires_before_ms.map(from_unix_millis),
        outcome: match api::Outcome::try_from(filter.outcome) {
            Ok(api::Outcome::Issued) => Some(OutcomeFilter::Issued),
            Ok(api::Outcome::Denied) => Some(OutcomeFilter::Denied {
                reason: text(filter.denial_reason),
            }),
            Ok(api::Outcome::Any) | Err(_) => None,
        },
    }
}

/// The filter message of a query (for clients).
pub fn filter_from_query(query: &Query) -> api::Filter {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let (outcome, denial_reason) = match &query.outcome {
        None => (api::Outcome::Any, String::new()),
        Some(OutcomeFilter::Issued) => (api::Outcome::Issued, String::new()),
        Some(OutcomeFilter::Denied { reason }) => (api::Outcome::Denied, text(reason)),
    };
    api::Filter {
        serial: query.serial.clone().unwrap_or_default(),
        spiffe_id: text(&query.spiffe_id),
        spiffe_id_prefix: text(&query.spiffe_id_prefix),
        mesh: text(&query.mesh),
        trust_domain: text(&query.trust_domain),
        namespace: text(&query.namespace),
        service_account: text(&query.service_account),
        caller: text(&query.caller),
        cluster_id: text(&query.cluster_id),
        pod: text(&query.pod),
        since_ms: query.since.map(unix_millis),
        until_ms: query.until.map(unix_millis),
        valid_at_ms: query.valid_at.map(unix_millis),
        expires_after_ms: query.expires_after.map(unix_millis),
        expires_before_ms: query.expires_before.map(unix_millis),
        outcome: outcome as i32,
        denial_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn filters_and_queries_convert_both_ways() {
        let query = Query {
            serial: Some(vec![1, 2]),
            namespace: Some("shop".into()),
            service_account: Some("cart".into()),
            since: Some(UNIX_EPOCH + Duration::from_millis(1_800_000_000_123)),
            valid_at: Some(UNIX_EPOCH + Duration::from_secs(1_800_000_100)),
            outcome: Some(OutcomeFilter::Denied {
                reason: Some("token-expired".into()),
            }),
            ..Query::default()
        };
        assert_eq!(query_from_filter(filter_from_query(&query)), query);
        assert_eq!(query_from_filter(api::Filter::default()), Query::default());
    }
}
