//! `Revoke` on the audit API: select the unexpired certificates a filter names in every
//! member's log, then have every member record the revocation in its own log, take it into its
//! revocations in force (CRLs, refused identities) and publish its CRLs again. The answer names
//! the members that did not record it: the revocation is complete only when none is missing.

use tonic::Status;

use super::audit_api::AuditApi;
use super::record_messages::{revoked_certificate_from_message, revoked_certificate_message};
use super::replicas::{completeness, forward, gather, local, Route};
use super::status::status_for_revoke;
use super::wire::{check_times, query_from_filter, revocation_from_message, revocation_to_message};
use crate::domain::audit::Query;
use crate::domain::digest::hex;
use crate::domain::record::{client_text, CallerRecord, RevocationRecord, RevokedCertificate};
use crate::domain::revocation::Reason;
use crate::issuance::revoke::{
    block_until, new_revocation, revocation_query, select, unblock, RevokeContext, RevokeError,
    SelectError, MAX_REVOKED,
};
use crate::pb::audit as api;

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
            let query = request
                .filter
                .clone()
                .map(query_from_filter)
                .transpose()
                .map_err(|e| status_for_revoke(&RevokeError::InvalidFilter(e.to_string())))?
                .unwrap_or_default();
            let query = revocation_query(query, now).map_err(|e| status_for_revoke(&e))?;
            let (certificates, missing, answered) = self
                .select_everywhere(&query, request.scope.as_ref(), &request)
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
                    certificates: revocation
                        .certificates
                        .iter()
                        .map(revoked_certificate_message)
                        .collect(),
                    blocked: revocation.blocked,
                    replicas: cluster_answer(answered, missing),
                    ..Default::default()
                });
            }
            revocation
        } else {
            if request.filter.is_some_and(|f| f != api::Filter::default()) {
                return Err(status_for_revoke(&RevokeError::UnblockWithFilter));
            }
            unblock(&request.unblock, reason, &request.comment)
                .map_err(|e| status_for_revoke(&e))?
        };
        self.record_everywhere(context, revocation, request.scope.as_ref(), &actor)
            .await
    }

    /// The unexpired certificates `query` selects: in every member's log, the member named,
    /// or this one's; with the members that did not answer and those that did.
    async fn select_everywhere(
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
        let from_messages = |member: &str, certificates: Vec<api::RevokedCertificate>| {
            certificates
                .into_iter()
                .map(|c| RevokedCertificate {
                    member: member.to_owned(),
                    ..revoked_certificate_from_message(c)
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
                        .map(|found| found.iter().map(revoked_certificate_message).collect())
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
        tokio::task::spawn_blocking(move || {
            select(&query, |query, size, token| store.query(query, size, token))
        })
        .await
        .map_err(|_| status_for_revoke(&RevokeError::Interrupted))?
        .map_err(|error| match error {
            SelectError::Log(error) => super::status_for_audit(&error),
            SelectError::TooMany(count) => status_for_revoke(&RevokeError::TooMany(count)),
        })
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
            certificates: revocation
                .certificates
                .iter()
                .map(revoked_certificate_message)
                .collect(),
            blocked: revocation.blocked.clone(),
            recorded: answers.into_iter().map(|(member, _)| member).collect(),
            already_revoked,
            warnings,
            replicas: cluster,
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
        let recorded = context
            .record(self.store().as_ref(), revocation, caller)
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

fn cluster_answer(
    answered: Vec<String>,
    missing: Vec<api::MissingMember>,
) -> Option<api::Completeness> {
    (!answered.is_empty() || !missing.is_empty()).then_some(api::Completeness { answered, missing })
}
