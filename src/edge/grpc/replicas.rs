//! The audit API across a `[replicas]`. A request is answered by the replica asked (`local`), by
//! one member (`scope.member`: forwarded), or by every member (the default with `[replicas]`):
//! the replica asked answers for itself and asks the others over the admin port, merges what
//! they say, and names every member that did not answer, so an incomplete answer never
//! passes for a complete one.

use std::future::Future;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Response, Status};

use super::audit_api::AuditApi;
use super::status::{cluster_request_invalid, member_unavailable, status_for_audit};
use super::wire::filter_from_query;
use crate::adapters::store::AuditError;
use crate::domain::audit::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::edge::replicas::{local_scope, Members, Missing};
use crate::pb::audit as api;
use crate::pb::audit::audit_service_client::AuditServiceClient;

/// Who answers a request.
pub(super) enum Route {
    /// The replica asked, alone (no `[replicas]`, or `scope.local`, or `scope.member` is it).
    Local,
    /// One other member.
    Forward(Arc<Members>, String),
    /// Every member.
    Cluster(Arc<Members>),
}

impl AuditApi {
    /// Where a request with `scope` goes.
    pub(super) fn route(&self, scope: Option<&api::Scope>) -> Result<Route, Status> {
        let scope = scope.cloned().unwrap_or_default();
        let Some(members) = self.members() else {
            if !scope.member.is_empty() {
                return Err(cluster_request_invalid(
                    "this replica has no [replicas]: it answers only for itself",
                ));
            }
            return Ok(Route::Local);
        };
        if scope.local {
            return Ok(Route::Local);
        }
        if scope.member.is_empty() {
            return Ok(Route::Cluster(members.clone()));
        }
        if !members.contains(&scope.member) {
            return Err(cluster_request_invalid(format!(
                "{:?} is not a member; the members are {}",
                scope.member,
                members.all().join(", ")
            )));
        }
        if members.is_this(&scope.member) {
            return Ok(Route::Local);
        }
        Ok(Route::Forward(members.clone(), scope.member))
    }
}

/// Asks one member, as a forwarded request (`scope.local` set by the caller of this).
pub(super) async fn forward<T, F, Fut>(members: &Members, member: &str, ask: F) -> Result<T, Status>
where
    F: Fn(AuditServiceClient<Channel>) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    members
        .ask(member, &ask)
        .await
        .map_err(|reason| member_unavailable(member, &reason))
}

/// Every member's answer: this replica's from `local`, the others' from `ask`; and the members
/// that did not answer.
pub(super) async fn gather<T, L, F, Fut>(
    members: &Members,
    local: L,
    ask: F,
) -> Result<(Vec<(String, T)>, Vec<Missing>), Status>
where
    L: Future<Output = Result<T, Status>>,
    F: Fn(AuditServiceClient<Channel>) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let (mine, theirs) = tokio::join!(local, members.ask_others(ask));
    let mut answers = Vec::new();
    if let Some(this) = members.this() {
        answers.push((this.to_owned(), mine?));
    }
    let mut missing = Vec::new();
    for (member, answer) in theirs {
        match answer {
            Ok(answer) => answers.push((member, answer)),
            Err(reason) => {
                tracing::warn!(%member, %reason, "a member did not answer a cluster audit request");
                missing.push(Missing { member, reason });
            }
        }
    }
    // Member order, as configured.
    let all = members.all();
    let order = |member: &str| all.iter().position(|m| m == member);
    answers.sort_by_key(|(member, _)| order(member));
    Ok((answers, missing))
}

/// Which members answered and which did not.
pub(super) fn completeness<T>(answers: &[(String, T)], missing: &[Missing]) -> api::Completeness {
    api::Completeness {
        answered: answers.iter().map(|(member, _)| member.clone()).collect(),
        missing: missing.iter().map(Missing::to_message).collect(),
    }
}

/// Where each member's part of a cluster-wide listing stands: its own page token, how many
/// records of that page were already returned, and whether it has no more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MemberCursor {
    pub(super) member: String,
    #[serde(default)]
    pub(super) token: String,
    #[serde(default)]
    pub(super) skip: u32,
    #[serde(default)]
    pub(super) done: bool,
    /// The member did not answer an earlier page of this listing: it is left out of the rest
    /// (so the listing ends), and every later page still says so.
    #[serde(default)]
    pub(super) missed: Option<String>,
}

/// The cursors of a cluster-wide page token, one per member in member order; a fresh listing
/// without a token.
pub(super) fn decode_cursors(token: &str, members: &Members) -> Result<Vec<MemberCursor>, Status> {
    if token.is_empty() {
        return Ok(members
            .all()
            .iter()
            .map(|member| MemberCursor {
                member: member.clone(),
                ..MemberCursor::default()
            })
            .collect());
    }
    let invalid =
        || cluster_request_invalid("the page token is not a cluster page token of this cluster");
    let bytes = BASE64.decode(token).map_err(|_| invalid())?;
    let cursors: Vec<MemberCursor> = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let named: Vec<String> = cursors.iter().map(|c| c.member.clone()).collect();
    if named != members.all() {
        return Err(cluster_request_invalid(
            "the cluster's membership changed since this page token: list again from the start",
        ));
    }
    if cursors.iter().any(|c| c.skip as usize >= MAX_PAGE_SIZE) {
        return Err(invalid());
    }
    Ok(cursors)
}

pub(super) fn encode_cursors(cursors: &[MemberCursor]) -> String {
    if cursors.iter().all(|c| c.done) {
        return String::new();
    }
    BASE64.encode(serde_json::to_vec(cursors).unwrap_or_default())
}

/// One member's candidates for the merged page: what its page holds past `skip`.
pub(super) struct Fetched {
    pub(super) entries: std::collections::VecDeque<api::LogEntry>,
    pub(super) next_token: String,
}

/// Merges the members' pages into one of at most `size` entries, oldest record first. A member
/// whose fetched candidates run out while it has more stops the page there (its next record
/// may be older than any other's), so the page may be short; the cursors say where each
/// member resumes. Members absent from `fetched` (missing) keep their cursor.
pub(super) fn merge_page(
    cursors: &mut [MemberCursor],
    fetched: &mut [(usize, Fetched)],
    size: usize,
) -> Vec<api::LogEntry> {
    let mut taken_from = vec![0u32; cursors.len()];
    let mut page = Vec::new();
    while page.len() < size {
        // A member with nothing left in hand but more to come: stop here.
        if fetched
            .iter()
            .any(|(_, f)| f.entries.is_empty() && !f.next_token.is_empty())
        {
            break;
        }
        let next = fetched
            .iter()
            .enumerate()
            .filter_map(|(slot, (index, f))| f.entries.front().map(|entry| (slot, *index, entry)))
            .min_by_key(|(_, index, entry)| (recorded_at(entry), *index, entry.sequence))
            .map(|(slot, index, _)| (slot, index));
        let Some((slot, index)) = next else {
            break;
        };
        if let Some(entry) = fetched[slot].1.entries.pop_front() {
            page.push(entry);
            taken_from[index] += 1;
        }
    }
    for (index, f) in fetched.iter() {
        let cursor = &mut cursors[*index];
        if f.entries.is_empty() {
            // Everything fetched was returned: resume at the member's next page.
            cursor.token = f.next_token.clone();
            cursor.skip = 0;
            cursor.done = f.next_token.is_empty();
        } else {
            cursor.skip += taken_from[*index];
        }
    }
    page
}

fn recorded_at(entry: &api::LogEntry) -> i64 {
    match &entry.entry {
        Some(api::log_entry::Entry::Record(record)) => record.recorded_at_ms,
        _ => i64::MAX,
    }
}

/// The forwarded form of a request's scope: only the member it is sent to.
pub(super) fn local() -> Option<api::Scope> {
    local_scope()
}

impl AuditApi {
    /// A count, or a page merged in time order, over every member's log.
    pub(super) async fn cluster_list(
        &self,
        members: &Members,
        request: api::ListRecordsRequest,
    ) -> Result<api::ListRecordsResponse, Status> {
        if request.count_only {
            let (answers, missing) =
                gather(members, self.local_list(request.clone()), |mut client| {
                    let request = api::ListRecordsRequest {
                        scope: local(),
                        ..request.clone()
                    };
                    async move { client.list_records(request).await.map(Response::into_inner) }
                })
                .await?;
            return Ok(api::ListRecordsResponse {
                count: answers.iter().map(|(_, r)| r.count).sum(),
                replicas: Some(completeness(&answers, &missing)),
                ..Default::default()
            });
        }
        let size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => (size as usize).min(crate::domain::audit::MAX_PAGE_SIZE),
        };
        let mut cursors = decode_cursors(&request.page_token, members)?;
        // Each member's page from where it stands, past what was already returned.
        let asks = cursors
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.done)
            .map(|(index, cursor)| {
                let member_request = api::ListRecordsRequest {
                    filter: request.filter.clone(),
                    page_size: (size + cursor.skip as usize)
                        .min(crate::domain::audit::MAX_PAGE_SIZE)
                        as u32,
                    page_token: cursor.token.clone(),
                    count_only: false,
                    scope: local(),
                };
                let (member, skip) = (cursor.member.clone(), cursor.skip as usize);
                async move {
                    let answer = if members.is_this(&member) {
                        self.local_list(member_request)
                            .await
                            .map_err(|s| s.message().to_owned())
                    } else {
                        members
                            .ask(&member, &|mut client: AuditServiceClient<
                                tonic::transport::Channel,
                            >| {
                                let request = member_request.clone();
                                async move {
                                    client.list_records(request).await.map(Response::into_inner)
                                }
                            })
                            .await
                    };
                    (index, member, skip, answer)
                }
            });
        let mut fetched = Vec::new();
        let (mut answered, mut missing) = (Vec::new(), Vec::new());
        for (index, member, skip, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(response) => {
                    let mut entries: std::collections::VecDeque<api::LogEntry> =
                        response.entries.into_iter().skip(skip).collect();
                    for entry in &mut entries {
                        entry.member = member.clone();
                    }
                    fetched.push((
                        index,
                        Fetched {
                            entries,
                            next_token: response.next_page_token,
                        },
                    ));
                    answered.push((member, ()));
                }
                Err(reason) => {
                    tracing::warn!(%member, %reason, "a member did not answer a cluster audit listing");
                    if let Some(cursor) = cursors.get_mut(index) {
                        cursor.done = true;
                        cursor.missed = Some(reason);
                    }
                }
            }
        }
        // Members that did not answer this page or an earlier one: the listing goes on without
        // them, and says so on every page.
        for cursor in &cursors {
            if let Some(reason) = &cursor.missed {
                missing.push(crate::edge::replicas::Missing {
                    member: cursor.member.clone(),
                    reason: reason.clone(),
                });
            }
        }
        let entries = merge_page(&mut cursors, &mut fetched, size);
        // Members with nothing to return this time, already finished, count as answered.
        for cursor in cursors.iter().filter(|c| c.done && c.missed.is_none()) {
            if !answered.iter().any(|(m, _)| *m == cursor.member)
                && !missing.iter().any(|m| m.member == cursor.member)
            {
                answered.push((cursor.member.clone(), ()));
            }
        }
        Ok(api::ListRecordsResponse {
            entries,
            next_page_token: encode_cursors(&cursors),
            count: 0,
            replicas: Some(completeness(&answered, &missing)),
        })
    }

    /// A record by serial, from whichever member's log holds it.
    pub(super) async fn cluster_get_record(
        &self,
        members: &Members,
        request: api::GetRecordRequest,
    ) -> Result<Response<api::LogEntry>, Status> {
        let Some(api::get_record_request::Key::Serial(serial)) = request.key.clone() else {
            return Err(super::status::cluster_request_invalid(
                "a sequence number names a record in one member's log: name the member too \
                 (scope.member, `--replica`)",
            ));
        };
        let query = crate::domain::audit::Query {
            serial: Some(serial),
            ..crate::domain::audit::Query::default()
        };
        let filter = filter_from_query(&query);
        let listed = self
            .cluster_list(
                members,
                api::ListRecordsRequest {
                    filter: Some(filter),
                    page_size: 1,
                    ..Default::default()
                },
            )
            .await?;
        match listed.entries.into_iter().next() {
            Some(entry) => Ok(Response::new(entry)),
            None => {
                let missing = listed.replicas.map(|c| c.missing).unwrap_or_default();
                match missing.is_empty() {
                    true => Err(status_for_audit(&AuditError::NotFound(
                        "no certificate with this serial on any member".into(),
                    ))),
                    false => Err(super::status::member_unavailable(
                        &missing
                            .iter()
                            .map(|m| m.member.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        "the record may be in its log",
                    )),
                }
            }
        }
    }
}

/// A forwarded listing, each entry labelled with the member it came from.
pub(super) fn labelled(
    mut response: api::ListRecordsResponse,
    member: &str,
) -> api::ListRecordsResponse {
    for entry in &mut response.entries {
        entry.member = member.to_owned();
    }
    response
}

/// The cluster's stats: the sums, and each member's own.
pub(super) fn sum_stats(
    answers: Vec<(String, api::GetStatsResponse)>,
    missing: &[crate::edge::replicas::Missing],
) -> api::GetStatsResponse {
    let cluster = completeness(&answers, missing);
    let mut total = api::GetStatsResponse::default();
    for (_, stats) in &answers {
        total.appended += stats.appended;
        total.records += stats.records;
        total.pruned += stats.pruned;
        total.index_runs += stats.index_runs;
        total.index_tail_records += stats.index_tail_records;
        total.checkpoints += stats.checkpoints;
        total.disk_bytes += stats.disk_bytes;
        total.oldest_recorded_at_ms =
            min_some(total.oldest_recorded_at_ms, stats.oldest_recorded_at_ms);
        total.newest_recorded_at_ms = total.newest_recorded_at_ms.max(stats.newest_recorded_at_ms);
    }
    total.members = answers
        .into_iter()
        .map(|(member, stats)| api::MemberStats {
            member,
            stats: Some(stats),
        })
        .collect();
    total.replicas = Some(cluster);
    total
}

fn min_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64, at: i64) -> api::LogEntry {
        api::LogEntry {
            sequence,
            entry: Some(api::log_entry::Entry::Record(api::Record {
                sequence,
                recorded_at_ms: at,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn cursor(member: &str) -> MemberCursor {
        MemberCursor {
            member: member.into(),
            ..MemberCursor::default()
        }
    }

    #[test]
    fn pages_merge_in_time_order_and_stop_where_a_member_may_have_older_records() {
        let mut cursors = vec![cursor("a"), cursor("b")];
        // a's page: t=1, t=5, and more after; b's page: t=2, t=3, t=9, and no more.
        let mut fetched = vec![
            (
                0,
                Fetched {
                    entries: [entry(1, 1), entry(2, 5)].into(),
                    next_token: "a-next".into(),
                },
            ),
            (
                1,
                Fetched {
                    entries: [entry(1, 2), entry(2, 3), entry(3, 9)].into(),
                    next_token: String::new(),
                },
            ),
        ];
        let page = merge_page(&mut cursors, &mut fetched, 10);
        let times: Vec<i64> = page.iter().map(recorded_at).collect();
        // After t=5, a has nothing in hand but more to come: t=9 waits for a's next page.
        assert_eq!(times, [1, 2, 3, 5]);
        assert_eq!(cursors[0].token, "a-next");
        assert_eq!((cursors[0].skip, cursors[0].done), (0, false));
        // b's page was partly returned: it resumes on the same page past 2 records.
        assert_eq!(
            (cursors[1].token.as_str(), cursors[1].skip, cursors[1].done),
            ("", 2, false)
        );
    }

    #[test]
    fn a_full_page_keeps_the_rest_for_the_next() {
        let mut cursors = vec![cursor("a")];
        let mut fetched = vec![(
            0,
            Fetched {
                entries: [entry(1, 1), entry(2, 2), entry(3, 3)].into(),
                next_token: String::new(),
            },
        )];
        let page = merge_page(&mut cursors, &mut fetched, 2);
        assert_eq!(page.len(), 2);
        assert_eq!((cursors[0].skip, cursors[0].done), (2, false));
        assert!(!encode_cursors(&cursors).is_empty());
        cursors[0].done = true;
        assert_eq!(encode_cursors(&cursors), "");
    }
}
