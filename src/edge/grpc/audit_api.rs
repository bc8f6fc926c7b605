//! The audit API's state (the store, who may ask, the other replicas) and what this replica
//! answers from its own log. The service (`audit.rs`) routes each call here, or across the
//! replicas (`replicas.rs`), which in turn ask here for this replica's part.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::{Request, Status};

use crate::adapters::authn::admin::{AdminRoles, Judges, Right};
use crate::adapters::store::AuditError;
use crate::adapters::store::SledStore;
use crate::domain::audit::checkpoint::AuditVerifier;
use crate::domain::audit::DEFAULT_PAGE_SIZE;
use crate::domain::clock::unix_millis;
use crate::edge::replicas::Members;
use crate::pb::audit as api;
use crate::pb::audit::audit_service_server::AuditServiceServer;

use super::wire::query_from_filter;
use super::{admin_identity_allowed, status_for_audit};

/// Who may use the audit API on a non-loopback admin address (`authn::admin`).
pub(crate) struct AdminAccess {
    /// Readers, revokers and the member identity.
    pub roles: AdminRoles,
    /// The authority in force, whose identity anchors and revocations judge client
    /// certificates.
    pub current: Arc<crate::issuance::CurrentAuthority>,
}

/// The audit API over a store.
pub(crate) struct AuditApi {
    pub(super) store: Arc<SledStore>,
    /// The audit key's verifier key, returned with checkpoints.
    pub(super) verifier_key: Option<String>,
    /// The same, parsed: checks the checkpoints members share.
    pub(super) verifier: Option<AuditVerifier>,
    /// When set, only clients whose certificate proves one of the allowed identities are served
    /// (the listener only checked that the client holds its certificate's key).
    pub(super) access: Option<AdminAccess>,
    /// Ends live tails when the server shuts down.
    pub(super) shutdown: watch::Receiver<bool>,
    /// The other replicas, with `[replicas]`.
    pub(super) members: Option<Arc<Members>>,
    /// What revocations need: the authority in force (its revocations and clock), the CRL
    /// publisher, and the configured block duration.
    pub(super) revocation: Option<crate::issuance::revoke::RevokeContext>,
}

impl AuditApi {
    pub fn new(
        store: Arc<SledStore>,
        verifier_key: Option<String>,
        access: Option<AdminAccess>,
        shutdown: watch::Receiver<bool>,
        members: Option<Arc<Members>>,
        revocation: Option<crate::issuance::revoke::RevokeContext>,
    ) -> Arc<Self> {
        let verifier = verifier_key
            .as_deref()
            .and_then(|key| AuditVerifier::parse(key).ok());
        Arc::new(Self {
            store,
            verifier,
            verifier_key,
            access,
            shutdown,
            members,
            revocation,
        })
    }

    /// The gRPC service over a shared API (the status page asks the same one).
    pub fn service(api: Arc<Self>) -> AuditServiceServer<Self> {
        AuditServiceServer::from_arc(api)
    }

    pub(super) fn store(&self) -> &Arc<SledStore> {
        &self.store
    }

    pub(super) fn members(&self) -> Option<&Arc<Members>> {
        self.members.as_ref()
    }

    pub(super) fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.authorized_identity(request, Right::Read).map(|_| ())
    }

    /// The identity a request proved, if it holds `right` (None on a loopback admin address,
    /// where no client certificate is asked for).
    pub(crate) fn authorized_identity<T>(
        &self,
        request: &Request<T>,
        right: Right,
    ) -> Result<Option<String>, Status> {
        match &self.access {
            None => Ok(None),
            Some(access) => {
                let ca = access.current.get();
                let judges = Judges {
                    anchors: ca.identity_anchors(),
                    member_anchors: ca.member_anchors(),
                    revocations: ca.revocations(),
                    now: ca.clock().now(),
                };
                admin_identity_allowed(request, &access.roles, &judges, right).map(Some)
            }
        }
    }

    /// Members only, for what only members may say.
    pub(super) fn authorize_member<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.authorized_identity(request, Right::Member).map(|_| ())
    }

    /// Runs store work on a blocking thread.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SledStore) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(result) => result.map_err(|error| status_for_audit(&error)),
            Err(join) => {
                tracing::error!(error = %join, "audit request task failed");
                Err(status_for_audit(&AuditError::Store(
                    crate::adapters::store::StoreError::Closed,
                )))
            }
        }
    }
}

impl AuditApi {
    /// One page (or the count) of this replica's own records.
    pub(super) async fn local_list(
        &self,
        request: api::ListRecordsRequest,
    ) -> Result<api::ListRecordsResponse, Status> {
        let query = query_from_filter(request.filter.unwrap_or_default())
            .map_err(|e| status_for_audit(&AuditError::Query(e)))?;
        if request.count_only {
            let count = self.blocking(move |store| store.count(&query)).await?;
            return Ok(api::ListRecordsResponse {
                count,
                ..Default::default()
            });
        }
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size as usize,
        };
        let token = (!request.page_token.is_empty()).then_some(request.page_token);
        let page = self
            .blocking(move |store| store.query(&query, page_size, token.as_deref()))
            .await?;
        Ok(api::ListRecordsResponse {
            entries: page
                .records
                .iter()
                .map(|record| api::LogEntry {
                    sequence: record.sequence,
                    entry: Some(api::log_entry::Entry::Record(
                        super::record_messages::record_message(record),
                    )),
                    ..Default::default()
                })
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            ..Default::default()
        })
    }

    pub(super) async fn local_stats(&self) -> Result<api::GetStatsResponse, Status> {
        let stats = self
            .blocking(|store| store.stats().map_err(AuditError::from))
            .await?;
        Ok(api::GetStatsResponse {
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
            ..Default::default()
        })
    }

    /// This replica's count of certificates per root of the request's bundle.
    pub(super) async fn local_root_use(
        &self,
        request: &api::CountRootUseRequest,
        member: String,
    ) -> Result<api::MemberRootUse, Status> {
        let (mesh, bundle) = (request.mesh.clone(), request.bundle.clone());
        let now = match &self.access {
            Some(access) => access.current.get().clock().now(),
            None => std::time::SystemTime::now(),
        };
        let usage = self
            .blocking(move |store| store.bundle_use(&mesh, &bundle, now))
            .await?;
        let root_use = |in_use: &crate::domain::audit::rotation::InUse| api::RootUse {
            certificates: in_use.certificates,
            until_ms: in_use.until.map(unix_millis),
        };
        Ok(api::MemberRootUse {
            member,
            per_root: usage.per_root.iter().map(root_use).collect(),
            stranded: Some(root_use(&usage.stranded)),
            unknown: Some(root_use(&usage.unknown)),
        })
    }
}
