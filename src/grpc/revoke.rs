//! `Revoke` on the audit API: select the unexpired certificates a filter names in every
//! member's log, then have every member record the revocation in its own log, take it into its
//! revocations in force (CRLs, refused identities) and publish its CRLs again. The answer names
//! the members that did not record it: the revocation is complete only when none is missing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::audit::AuditApi;
use super::cluster::{completeness, forward, gather, local, Route};
use super::status::status_for_revoke;
use super::wire::query_from_filter;
use crate::audit::{OutcomeFilter, Query};
use crate::digest::hex;
use crate::issuance::CurrentAuthority;
use crate::pb::audit as api;
use crate::pb::store as pb;
use crate::record::{
    client_text, CallerRecord, Outcome, Record, RevocationRecord, RevokedCertificate,
    CLIENT_TEXT_BYTES,
};
use crate::revocation::{pending, Reason};

/// More certificates than this in one revocation is refused: narrow the filter. (A revocation
/// travels to every member in one message, which must stay under gRPC's 4 MiB default.)
pub const MAX_REVOKED: usize = 20_000;

/// Why a revocation was refused or failed (mapped to a gRPC status in `status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("revocation is not served here")]
    NotServed,
    #[error("unknown reason {0:?}; one of {list}", list = Reason::ALL.map(Reason::name).join(", "))]
    UnknownReason(String),
    #[error(
        "a revocation needs a filter (--serial, --spiffe-id, --namespace, --caller, --pod, \
         --cluster, --since, --intermediate ...): refusing to revoke every certificate"
    )]
    NoFilter,
    #[error("a revocation selects issued certificates, not denials or revocations")]
    NotIssued,
    #[error("{0}")]
    InvalidFilter(String),
    #[error("lifting a block takes the identities only, no filter")]
    UnblockWithFilter,
    #[error("{0:?} is not a SPIFFE ID")]
    NotSpiffeId(String),
    #[error("{0}")]
    TimeOutOfRange(String),
    #[error("no unexpired certificate with serial {serial} in {place}")]
    SerialNotFound { serial: String, place: &'static str },
    #[error("the filter selects more than {MAX_REVOKED} certificates ({0} so far): narrow it")]
    TooMany(usize),
    #[error("internal error (request {0})")]
    NotRecorded(String),
    #[error("internal error")]
    Interrupted,
}

/// Resolves once the CRLs are published again: with why they do not reach Istio, if they do
/// not (a CA of a chain has no CRL).
pub type PublishFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<String>, String>> + Send + 'a>>;

/// Publishes the CRLs again after a revocation (the server's CRL keeper).
pub trait CrlPublisher: Send + Sync {
    fn publish(&self) -> PublishFuture<'_>;
}

/// What the audit API needs to revoke.
pub struct RevokeContext {
    pub current: Arc<CurrentAuthority>,
    pub publisher: Arc<dyn CrlPublisher>,
    /// `[revocation] block_for` (None: until lifted).
    pub block_for: Option<Duration>,
}

/// Who revoked, for the record.
pub(super) struct Actor {
    pub identity: Option<String>,
    pub peer: String,
}

impl AuditApi {
    pub(super) async fn revoke_request(
        &self,
        request: api::RevokeRequest,
        identity: Option<String>,
        peer: String,
    ) -> Result<api::RevokeResponse, Status> {
        let actor = Actor { identity, peer };
        let Some(context) = self.revocation.as_ref() else {
            return Err(status_for_revoke(&RevokeError::NotServed));
        };
        if let Some(apply) = request.apply {
            // Between members: record what the member asked gathered, its times in range.
            check_times(&apply).map_err(|e| status_for_revoke(&e))?;
            let revocation = revocation_from_message(apply);
            return self.record_locally(context, revocation, &actor).await;
        }
        let reason = Reason::parse(&request.reason).ok_or_else(|| {
            status_for_revoke(&RevokeError::UnknownReason(client_text(
                &request.reason,
                64,
            )))
        })?;
        let now = context.current.get().clock().now();
        let revocation = if request.unblock.is_empty() {
            let query =
                revocation_query(request.filter.clone(), now).map_err(|e| status_for_revoke(&e))?;
            let (certificates, missing, answered) = self
                .select(&query, request.scope.as_ref(), &request)
                .await?;
            if certificates.is_empty() {
                if let Some(serial) = &query.serial {
                    return Err(status_for_revoke(&RevokeError::SerialNotFound {
                        serial: hex(serial),
                        place: if answered.len() > 1 {
                            "any member's log"
                        } else {
                            "the log"
                        },
                    }));
                }
            }
            let block_until = block_until(
                request.no_block,
                request.block_for_seconds,
                context.block_for,
                now,
            )
            .map_err(|e| status_for_revoke(&e))?;
            let revocation =
                new_revocation(certificates, reason, &request.comment, &query, block_until);
            if request.dry_run || revocation.certificates.is_empty() {
                return Ok(api::RevokeResponse {
                    certificates: revocation.certificates.iter().map(to_message).collect(),
                    blocked: revocation.blocked,
                    cluster: cluster_answer(answered, missing),
                    ..Default::default()
                });
            }
            revocation
        } else {
            if request.filter.is_some_and(|f| f != api::Filter::default()) {
                return Err(status_for_revoke(&RevokeError::UnblockWithFilter));
            }
            for identity in &request.unblock {
                if crate::identity::SpiffeId::parse(identity).is_err() {
                    return Err(status_for_revoke(&RevokeError::NotSpiffeId(client_text(
                        identity, 256,
                    ))));
                }
            }
            RevocationRecord {
                reason: reason.name().to_owned(),
                comment: client_text(&request.comment, CLIENT_TEXT_BYTES),
                unblocked: request.unblock.clone(),
                ..RevocationRecord::default()
            }
        };
        self.record_everywhere(context, revocation, request.scope.as_ref(), &actor)
            .await
    }

    /// The unexpired certificates `query` selects: in every member's log, the member named,
    /// or this one's; with the members that did not answer and those that did.
    async fn select(
        &self,
        query: &Query,
        scope: Option<&api::Scope>,
        request: &api::RevokeRequest,
    ) -> Result<
        (
            Vec<RevokedCertificate>,
            Vec<api::MissingMember>,
            Vec<String>,
        ),
        Status,
    > {
        let ask = |mut client: crate::pb::audit::audit_service_client::AuditServiceClient<
            tonic::transport::Channel,
        >| {
            let request = api::RevokeRequest {
                dry_run: true,
                scope: local(),
                unblock: Vec::new(),
                apply: None,
                ..request.clone()
            };
            async move {
                client
                    .revoke(request)
                    .await
                    .map(|r| r.into_inner().certificates)
            }
        };
        let from_messages = |member: &str, certificates: Vec<pb::RevokedCertificate>| {
            certificates
                .into_iter()
                .map(|c| RevokedCertificate {
                    member: member.to_owned(),
                    ..certificate_from_message(c)
                })
                .collect::<Vec<_>>()
        };
        match self.route(scope)? {
            Route::Local => Ok((self.select_locally(query).await?, Vec::new(), Vec::new())),
            Route::Forward(members, member) => {
                let found = forward(&members, &member, ask).await?;
                Ok((from_messages(&member, found), Vec::new(), vec![member]))
            }
            Route::Cluster(members) => {
                let mine = async {
                    self.select_locally(query)
                        .await
                        .map(|found| found.iter().map(to_message).collect())
                };
                let (answers, missing) = gather(&members, mine, ask).await?;
                let answered = answers.iter().map(|(m, _)| m.clone()).collect();
                let mut all = Vec::new();
                for (member, found) in answers {
                    all.extend(from_messages(&member, found));
                }
                if all.len() > MAX_REVOKED {
                    return Err(status_for_revoke(&RevokeError::TooMany(all.len())));
                }
                let missing = missing.iter().map(|m| m.to_message()).collect();
                Ok((all, missing, answered))
            }
        }
    }

    /// The unexpired certificates `query` selects in this replica's log.
    async fn select_locally(&self, query: &Query) -> Result<Vec<RevokedCertificate>, Status> {
        let store = self.store().clone();
        let query = query.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = store.query(&query, crate::audit::MAX_PAGE_SIZE, token.as_deref())?;
                found.extend(page.records.into_iter().filter_map(revoked_certificate));
                if found.len() > MAX_REVOKED {
                    return Ok(Err(found.len()));
                }
                match page.next_page_token {
                    Some(next) => token = Some(next),
                    None => return Ok(Ok(found)),
                }
            }
        })
        .await
        .map_err(|_| status_for_revoke(&RevokeError::Interrupted))?
        .map_err(|error: crate::store::AuditError| super::status_for_audit(&error))?;
        found.map_err(|count| status_for_revoke(&RevokeError::TooMany(count)))
    }

    /// Has every member (the member named, or this replica) record `revocation`.
    async fn record_everywhere(
        &self,
        context: &RevokeContext,
        revocation: RevocationRecord,
        scope: Option<&api::Scope>,
        actor: &Actor,
    ) -> Result<api::RevokeResponse, Status> {
        let message = revocation_to_message(&revocation);
        let ask = |mut client: crate::pb::audit::audit_service_client::AuditServiceClient<
            tonic::transport::Channel,
        >| {
            let request = api::RevokeRequest {
                apply: Some(message.clone()),
                scope: local(),
                ..Default::default()
            };
            async move { client.revoke(request).await.map(|r| r.into_inner()) }
        };
        let (answers, missing) = match self.route(scope)? {
            Route::Local => (
                vec![(
                    String::new(),
                    self.record_locally(context, revocation.clone(), actor)
                        .await?,
                )],
                Vec::new(),
            ),
            Route::Forward(members, member) => {
                let answer = forward(&members, &member, ask).await?;
                (vec![(member, answer)], Vec::new())
            }
            Route::Cluster(members) => {
                gather(
                    &members,
                    self.record_locally(context, revocation.clone(), actor),
                    ask,
                )
                .await?
            }
        };
        let already_revoked = answers
            .iter()
            .map(|(_, answer)| answer.already_revoked)
            .max()
            .unwrap_or_default();
        let mut warnings: Vec<String> = Vec::new();
        for (member, answer) in &answers {
            for warning in &answer.warnings {
                let warning = match member.as_str() {
                    "" => warning.clone(),
                    member => format!("{member}: {warning}"),
                };
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
        }
        let cluster = (!answers.iter().all(|(m, _)| m.is_empty()) || !missing.is_empty())
            .then(|| completeness(&answers, &missing));
        Ok(api::RevokeResponse {
            certificates: revocation.certificates.iter().map(to_message).collect(),
            blocked: revocation.blocked.clone(),
            recorded: answers.into_iter().map(|(member, _)| member).collect(),
            already_revoked,
            warnings,
            cluster,
        })
    }

    /// Records `revocation` in this replica's log (leaving out what it already has), takes it
    /// into the revocations in force, and publishes the CRLs again.
    async fn record_locally(
        &self,
        context: &RevokeContext,
        revocation: RevocationRecord,
        actor: &Actor,
    ) -> Result<api::RevokeResponse, Status> {
        let caller = CallerRecord {
            authenticator: "admin".into(),
            subject: actor.identity.clone().unwrap_or_else(|| "loopback".into()),
            spiffe_id: actor.identity.clone().unwrap_or_default(),
            peer_address: actor.peer.clone(),
            ..CallerRecord::default()
        };
        let recorded = record_revocation(self.store(), context, revocation, caller)
            .await
            .map_err(|e| status_for_revoke(&e))?;
        Ok(api::RevokeResponse {
            recorded: vec![String::new()],
            already_revoked: recorded.already_revoked,
            warnings: recorded.warning.into_iter().collect(),
            ..Default::default()
        })
    }
}

/// What recording a revocation did.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Its sequence number; None when it changed nothing (all of it was in force already).
    pub sequence: Option<u64>,
    /// Certificates that were revoked already.
    pub already_revoked: u64,
    /// Why the CRLs do not reach Istio, if they do not.
    pub warning: Option<String>,
}

/// Records `revocation` in `store` (leaving out what is in force already), as asked by
/// `caller`; takes it into the revocations in force, and publishes the CRLs again.
pub async fn record_revocation(
    store: &crate::store::SledStore,
    context: &RevokeContext,
    revocation: RevocationRecord,
    caller: CallerRecord,
) -> Result<Recorded, RevokeError> {
    let ca = context.current.get();
    let asked = revocation.certificates.len();
    let Some(revocation) = pending(ca.revocations(), revocation) else {
        return Ok(Recorded {
            already_revoked: asked as u64,
            ..Recorded::default()
        });
    };
    let already_revoked = (asked - revocation.certificates.len()) as u64;
    let request_id = ca.new_request_id().to_string();
    let mut record = Record::new(
        request_id.clone(),
        ca.clock().now(),
        caller,
        Outcome::Revoked(revocation),
    );
    record.sequence = store
        .append_durable(record.clone())
        .await
        .map_err(|error| {
            tracing::error!(%request_id, %error, "a revocation could not be recorded");
            RevokeError::NotRecorded(request_id.clone())
        })?;
    ca.revocations().apply(&record);
    if let Outcome::Revoked(revoked) = &record.outcome {
        tracing::warn!(
            request_id,
            sequence = record.sequence,
            certificates = revoked.certificates.len(),
            blocked = ?revoked.blocked,
            unblocked = ?revoked.unblocked,
            reason = %revoked.reason,
            by = %record.caller.subject,
            "revocation recorded"
        );
    }
    let warning = match context.publisher.publish().await {
        Ok(problem) => problem.map(|p| format!("the CRLs do not reach Istio: {p}")),
        Err(error) => {
            // The revocation stands (recorded and in force); the keeper retries the CRLs.
            tracing::error!(%error, "the CRLs could not be published after a revocation; retrying");
            Some("the CRLs could not be published yet; the server retries (see its log)".into())
        }
    };
    Ok(Recorded {
        sequence: Some(record.sequence),
        already_revoked,
        warning,
    })
}

/// A revoked certificate's entry, from its issuance record.
pub fn revoked_certificate(record: Record) -> Option<RevokedCertificate> {
    match record.outcome {
        Outcome::Issued(issued) => Some(RevokedCertificate {
            serial: issued.serial,
            intermediate_sha256: issued.intermediate_sha256,
            not_after: issued.not_after,
            spiffe_id: issued.spiffe_id,
            mesh: issued.mesh,
            member: String::new(),
        }),
        _ => None,
    }
}

/// Whether and until when the identities are refused: None (no block), Some(None) (until
/// lifted) or Some(Some(time)).
pub fn block_until(
    no_block: bool,
    block_for_seconds: i64,
    configured: Option<Duration>,
    now: std::time::SystemTime,
) -> Result<Option<Option<std::time::SystemTime>>, RevokeError> {
    let until = |duration: Duration| {
        crate::clock::later(now, duration).map_err(|e| RevokeError::TimeOutOfRange(e.to_string()))
    };
    Ok(match (no_block, block_for_seconds) {
        (true, _) => None,
        (false, 0) => Some(configured.map(until).transpose()?),
        (false, seconds) => {
            let duration = crate::clock::duration_from_seconds(seconds)
                .map_err(|e| RevokeError::TimeOutOfRange(format!("block_for_seconds: {e}")))?;
            Some(Some(until(duration)?))
        }
    })
}

/// The revocation of `certificates`, blocking their identities as `block` says.
pub fn new_revocation(
    certificates: Vec<RevokedCertificate>,
    reason: Reason,
    comment: &str,
    query: &Query,
    block: Option<Option<std::time::SystemTime>>,
) -> RevocationRecord {
    let mut blocked: Vec<String> = match block {
        None => Vec::new(),
        Some(_) => certificates
            .iter()
            .filter(|c| !c.spiffe_id.is_empty())
            .map(|c| c.spiffe_id.clone())
            .collect(),
    };
    blocked.sort();
    blocked.dedup();
    RevocationRecord {
        reason: reason.name().to_owned(),
        comment: client_text(comment, CLIENT_TEXT_BYTES),
        selector: describe(query),
        certificates,
        blocked_until: block.flatten(),
        blocked,
        unblocked: Vec::new(),
    }
}

/// The issued, unexpired certificates a revocation's filter selects. A filter is required.
pub fn revocation_query(
    filter: Option<api::Filter>,
    now: std::time::SystemTime,
) -> Result<Query, RevokeError> {
    let mut query = filter
        .map(query_from_filter)
        .transpose()
        .map_err(|e| RevokeError::InvalidFilter(e.to_string()))?
        .unwrap_or_default();
    if query.is_unfiltered() {
        return Err(RevokeError::NoFilter);
    }
    match &query.outcome {
        None | Some(OutcomeFilter::Issued) => {}
        Some(_) => return Err(RevokeError::NotIssued),
    }
    query.outcome = Some(OutcomeFilter::Issued);
    query.expires_after = Some(query.expires_after.map_or(now, |t| t.max(now)));
    query
        .validate()
        .map_err(|e| RevokeError::InvalidFilter(e.to_string()))?;
    Ok(query)
}

fn cluster_answer(
    answered: Vec<String>,
    missing: Vec<api::MissingMember>,
) -> Option<api::Completeness> {
    (!answered.is_empty() || !missing.is_empty()).then_some(api::Completeness { answered, missing })
}

/// The filter, for people (kept in the record).
fn describe(query: &Query) -> String {
    let filter = super::wire::filter_from_query(query);
    let mut parts = Vec::new();
    let mut text = |name: &str, value: &str| {
        if !value.is_empty() {
            parts.push(format!("{name}={value}"));
        }
    };
    text("serial", &hex(&filter.serial));
    text("spiffe_id", &filter.spiffe_id);
    text("spiffe_id_prefix", &filter.spiffe_id_prefix);
    text("mesh", &filter.mesh);
    text("trust_domain", &filter.trust_domain);
    text("namespace", &filter.namespace);
    text("service_account", &filter.service_account);
    text("caller", &filter.caller);
    text("cluster", &filter.cluster_id);
    text("pod", &filter.pod);
    let time = |ms: Option<i64>| {
        ms.map(|ms| crate::clock::format_time(crate::clock::from_unix_millis(ms)))
            .unwrap_or_default()
    };
    text("since", &time(filter.since_ms));
    text("until", &time(filter.until_ms));
    client_text(&parts.join(" "), CLIENT_TEXT_BYTES)
}

pub fn to_message(c: &RevokedCertificate) -> pb::RevokedCertificate {
    pb::RevokedCertificate {
        serial: c.serial.clone(),
        intermediate_sha256: c.intermediate_sha256.clone(),
        not_after: crate::clock::unix_seconds(c.not_after),
        spiffe_id: c.spiffe_id.clone(),
        mesh: c.mesh.clone(),
        member: c.member.clone(),
    }
}

pub fn certificate_from_message(c: pb::RevokedCertificate) -> RevokedCertificate {
    RevokedCertificate {
        serial: c.serial,
        intermediate_sha256: c.intermediate_sha256,
        not_after: crate::clock::from_unix_seconds(c.not_after),
        spiffe_id: c.spiffe_id,
        mesh: c.mesh,
        member: c.member,
    }
}

fn revocation_to_message(revocation: &RevocationRecord) -> pb::Revocation {
    let record = Record::new(
        String::new(),
        std::time::UNIX_EPOCH,
        CallerRecord::default(),
        Outcome::Revoked(revocation.clone()),
    );
    match crate::store::to_message(&record).outcome {
        Some(pb::record::Outcome::Revoked(message)) => message,
        _ => pb::Revocation::default(),
    }
}

/// A revocation handed over by a member: its block's end and its certificates' expiry are
/// times from outside, checked here (1970..=9999; a block of 0 lasts until lifted).
pub fn check_times(message: &pb::Revocation) -> Result<(), RevokeError> {
    let out_of_range = |what: &str, e: crate::clock::TimeRangeError| {
        RevokeError::TimeOutOfRange(format!("{what}: {e}"))
    };
    if message.blocked_until_ms != 0 {
        crate::clock::time_from_unix_millis(message.blocked_until_ms)
            .map_err(|e| out_of_range("blocked_until_ms", e))?;
    }
    for certificate in &message.certificates {
        crate::clock::time_from_unix_seconds(certificate.not_after)
            .map_err(|e| out_of_range("not_after", e))?;
    }
    Ok(())
}

pub fn revocation_from_message(message: pb::Revocation) -> RevocationRecord {
    let record = pb::Record {
        version: crate::record::RECORD_VERSION,
        outcome: Some(pb::record::Outcome::Revoked(message)),
        ..Default::default()
    };
    match crate::store::from_message(record).map(|r| r.outcome) {
        Some(Outcome::Revoked(revocation)) => revocation,
        _ => RevocationRecord::default(),
    }
}
