//! Revoking certificates, the use case: which certificates a filter selects, the revocation
//! record made of them (and of the identities it blocks), recording it durably (leaving out
//! what is in force already), taking it into the revocations in force, and publishing the CRLs
//! again through the [`CrlPublisher`] port. The audit API's `Revoke` handler, `meshroot revoke`
//! on a stopped store and a replica copying a revocation it missed all call this module; the
//! handler adds only the asking of other members.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::current::CurrentAuthority;
use crate::domain::audit::{OutcomeFilter, Page, Query};
use crate::domain::clock::{format_time, from_unix_millis, unix_millis};
use crate::domain::digest::hex;
use crate::domain::record::{
    client_text, CallerRecord, Outcome, Record, RecordSink, RevocationRecord, RevokedCertificate,
    CLIENT_TEXT_BYTES,
};
use crate::domain::revocation::{pending, Reason, Revocations};

/// More certificates than this in one revocation is refused: narrow the filter. (A revocation
/// travels to every member in one message, which must stay under gRPC's 4 MiB default.)
pub(crate) const MAX_REVOKED: usize = 20_000;

/// Why a revocation was refused or failed (mapped to a gRPC status in `grpc/status.rs`).
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
pub(crate) type PublishFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<String>, String>> + Send + 'a>>;

/// Publishes the CRLs again after a revocation (the server's CRL keeper).
pub(crate) trait CrlPublisher: Send + Sync {
    fn publish(&self) -> PublishFuture<'_>;
}

/// What a running replica revokes with.
pub(crate) struct RevokeContext {
    pub current: Arc<CurrentAuthority>,
    pub publisher: Arc<dyn CrlPublisher>,
    /// `[revocation] block_for` (None: until lifted).
    pub block_for: Option<Duration>,
}

impl RevokeContext {
    /// Records `revocation` in `log` as asked by `caller`, takes it into the authority's
    /// revocations in force, and publishes the CRLs again.
    pub async fn record(
        &self,
        log: &dyn RecordSink,
        revocation: RevocationRecord,
        caller: CallerRecord,
    ) -> Result<Recorded, RevokeError> {
        let ca = self.current.get();
        record_revocation(
            log,
            ca.revocations(),
            Some(self.publisher.as_ref()),
            (ca.new_request_id().to_string(), ca.clock().now()),
            revocation,
            caller,
        )
        .await
    }
}

/// The issued, unexpired certificates a revocation's filter selects. A filter is required.
pub(crate) fn revocation_query(mut query: Query, now: SystemTime) -> Result<Query, RevokeError> {
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

/// Why selecting failed: the log could not answer, or the filter selects too many.
#[derive(Debug)]
pub enum SelectError<E> {
    Log(E),
    TooMany(usize),
}

/// The certificates `query` (from [`revocation_query`]) selects, read page by page with
/// `page` (a store's query).
pub fn select<E>(
    query: &Query,
    mut page: impl FnMut(&Query, usize, Option<&str>) -> Result<Page, E>,
) -> Result<Vec<RevokedCertificate>, SelectError<E>> {
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let next = page(query, crate::domain::audit::MAX_PAGE_SIZE, token.as_deref())
            .map_err(SelectError::Log)?;
        found.extend(next.records.into_iter().filter_map(revoked_certificate));
        if found.len() > MAX_REVOKED {
            return Err(SelectError::TooMany(found.len()));
        }
        match next.next_page_token {
            Some(next) => token = Some(next),
            None => return Ok(found),
        }
    }
}

/// A revoked certificate's entry, from its issuance record.
pub(crate) fn revoked_certificate(record: Record) -> Option<RevokedCertificate> {
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
/// lifted) or Some(Some(time)). `block_for_seconds` 0 takes `configured`.
pub fn block_until(
    no_block: bool,
    block_for_seconds: i64,
    configured: Option<Duration>,
    now: SystemTime,
) -> Result<Option<Option<SystemTime>>, RevokeError> {
    let until = |duration: Duration| {
        crate::domain::clock::later(now, duration)
            .map_err(|e| RevokeError::TimeOutOfRange(e.to_string()))
    };
    Ok(match (no_block, block_for_seconds) {
        (true, _) => None,
        (false, 0) => Some(configured.map(until).transpose()?),
        (false, seconds) => {
            let duration = crate::domain::clock::duration_from_seconds(seconds)
                .map_err(|e| RevokeError::TimeOutOfRange(format!("block_for_seconds: {e}")))?;
            Some(Some(until(duration)?))
        }
    })
}

/// The revocation of `certificates`, blocking their identities as `block` says.
pub(crate) fn new_revocation(
    certificates: Vec<RevokedCertificate>,
    reason: Reason,
    comment: &str,
    query: &Query,
    block: Option<Option<SystemTime>>,
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

/// Lifting the block of `identities` (the certificates revoked stay revoked).
pub fn unblock(
    identities: &[String],
    reason: Reason,
    comment: &str,
) -> Result<RevocationRecord, RevokeError> {
    for identity in identities {
        if crate::domain::identity::SpiffeId::parse(identity).is_err() {
            return Err(RevokeError::NotSpiffeId(client_text(identity, 256)));
        }
    }
    Ok(RevocationRecord {
        reason: reason.name().to_owned(),
        comment: client_text(comment, CLIENT_TEXT_BYTES),
        unblocked: identities.to_vec(),
        ..RevocationRecord::default()
    })
}

/// The filter, for people (kept in the record): each field given, as `name=value`, times to
/// the millisecond as the audit API carries them.
fn describe(query: &Query) -> String {
    let mut parts = Vec::new();
    let mut text = |name: &str, value: Option<&str>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            parts.push(format!("{name}={value}"));
        }
    };
    text("serial", query.serial.as_deref().map(hex).as_deref());
    text("spiffe_id", query.spiffe_id.as_deref());
    text("spiffe_id_prefix", query.spiffe_id_prefix.as_deref());
    text("mesh", query.mesh.as_deref());
    text("trust_domain", query.trust_domain.as_deref());
    text("namespace", query.namespace.as_deref());
    text("service_account", query.service_account.as_deref());
    text("caller", query.caller.as_deref());
    text("cluster", query.cluster_id.as_deref());
    text("pod", query.pod.as_deref());
    let time = |t: Option<SystemTime>| t.map(|t| format_time(from_unix_millis(unix_millis(t))));
    text("since", time(query.since).as_deref());
    text("until", time(query.until).as_deref());
    client_text(&parts.join(" "), CLIENT_TEXT_BYTES)
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

/// Records `revocation` in `log` (leaving out what `revocations` has in force already) as asked
/// by `caller`, under `(request id, now)`; takes it into `revocations`, and publishes the CRLs
/// again when there is a `publisher` (a stopped store has none: the server publishes at start).
pub(crate) async fn record_revocation(
    log: &dyn RecordSink,
    revocations: &Revocations,
    publisher: Option<&dyn CrlPublisher>,
    (request_id, now): (String, SystemTime),
    revocation: RevocationRecord,
    caller: CallerRecord,
) -> Result<Recorded, RevokeError> {
    let asked = revocation.certificates.len();
    let Some(revocation) = pending(revocations, revocation) else {
        return Ok(Recorded {
            already_revoked: asked as u64,
            ..Recorded::default()
        });
    };
    let already_revoked = (asked - revocation.certificates.len()) as u64;
    let mut record = Record::new(
        request_id.clone(),
        now,
        caller,
        Outcome::Revoked(revocation),
    );
    record.sequence = log.append(record.clone()).await.map_err(|error| {
        tracing::error!(%request_id, %error, "a revocation could not be recorded");
        RevokeError::NotRecorded(request_id.clone())
    })?;
    revocations.apply(&record);
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
    let warning = match publisher {
        None => None,
        Some(publisher) => match publisher.publish().await {
            Ok(problem) => problem.map(|p| format!("the CRLs do not reach Istio: {p}")),
            Err(error) => {
                // The revocation stands (recorded and in force); the keeper retries the CRLs.
                tracing::error!(%error, "the CRLs could not be published after a revocation; retrying");
                Some("the CRLs could not be published yet; the server retries (see its log)".into())
            }
        },
    };
    Ok(Recorded {
        sequence: Some(record.sequence),
        already_revoked,
        warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::UNIX_EPOCH;

    use crate::domain::record::{AppendFuture, IssuedRecord};

    /// A log in memory.
    #[derive(Default)]
    struct Log(Mutex<Vec<Record>>);

    impl RecordSink for Log {
        fn append(&self, mut record: Record) -> AppendFuture<'_> {
            Box::pin(async move {
                let mut records = self.0.lock().unwrap_or_else(|p| p.into_inner());
                record.sequence = records.len() as u64 + 1;
                records.push(record);
                Ok(records.len() as u64)
            })
        }
    }

    fn issued(serial: u8, spiffe_id: &str) -> Record {
        Record::new(
            format!("r{serial}"),
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            CallerRecord::default(),
            Outcome::Issued(IssuedRecord {
                serial: vec![serial],
                spiffe_id: spiffe_id.into(),
                requested_spiffe_id: spiffe_id.into(),
                dns_names: Vec::new(),
                mesh: "a".into(),
                trust_domain: "a".into(),
                namespace: "x".into(),
                service_account: "y".into(),
                not_before: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                not_after: UNIX_EPOCH + Duration::from_secs(1_800_086_400),
                key_algorithm: "ECDSA".into(),
                key_bits: 256,
                public_key_sha256: Vec::new(),
                csr_sha256: Vec::new(),
                intermediate_sha256: vec![1; 32],
                certificate_sha256: Vec::new(),
                requested_ttl_seconds: 0,
                ca: None,
            }),
        )
    }

    #[test]
    fn a_revocation_needs_a_filter_of_issued_certificates_still_valid() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            revocation_query(Query::default(), now),
            Err(RevokeError::NoFilter)
        );
        let denials = Query {
            namespace: Some("shop".into()),
            outcome: Some(OutcomeFilter::Denied { reason: None }),
            ..Query::default()
        };
        assert_eq!(revocation_query(denials, now), Err(RevokeError::NotIssued));
        let query = revocation_query(
            Query {
                namespace: Some("shop".into()),
                ..Query::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(query.outcome, Some(OutcomeFilter::Issued));
        assert_eq!(query.expires_after, Some(now));
    }

    #[test]
    fn selection_pages_through_and_stops_past_the_limit() {
        let query = Query::default();
        let pages = |count: usize| {
            move |_: &Query, _: usize, token: Option<&str>| -> Result<Page, ()> {
                let at: usize = token.map_or(0, |t| t.parse().unwrap_or(0));
                let end = (at + 1000).min(count);
                Ok(Page {
                    records: (at..end).map(|i| issued((i % 250) as u8, "x")).collect(),
                    next_page_token: (end < count).then(|| end.to_string()),
                })
            }
        };
        assert_eq!(
            select(&query, pages(2500)).map(|f| f.len()).ok(),
            Some(2500)
        );
        assert!(matches!(
            select(&query, pages(MAX_REVOKED + 10)),
            Err(SelectError::TooMany(n)) if n > MAX_REVOKED
        ));
        assert!(matches!(
            select(
                &query,
                |_: &Query, _: usize, _: Option<&str>| Err::<Page, _>("down")
            ),
            Err(SelectError::Log("down"))
        ));
    }

    #[test]
    fn the_revocation_blocks_each_identity_once_and_describes_its_filter() {
        let query = Query {
            serial: Some(vec![0xab]),
            cluster_id: Some("west".into()),
            since: Some(UNIX_EPOCH + Duration::from_micros(1_800_000_000_999_500)),
            ..Query::default()
        };
        let certificates = ["spiffe://a/ns/x/sa/y", "spiffe://a/ns/x/sa/y", ""]
            .iter()
            .enumerate()
            .filter_map(|(i, id)| revoked_certificate(issued(i as u8, id)))
            .collect();
        let revocation =
            new_revocation(certificates, Reason::KeyCompromise, "c", &query, Some(None));
        assert_eq!(revocation.blocked, ["spiffe://a/ns/x/sa/y"]);
        assert_eq!(revocation.blocked_until, None);
        assert_eq!(
            revocation.selector,
            "serial=ab cluster=west since=2027-01-15T08:00:00.999Z"
        );
        assert!(unblock(&["not an id".into()], Reason::Unspecified, "").is_err());
    }

    #[tokio::test]
    async fn recording_leaves_out_what_is_in_force_and_applies_the_rest() {
        let log = Log::default();
        let revocations = Revocations::default();
        let one = |serial| revoked_certificate(issued(serial, "spiffe://a/ns/x/sa/y")).unwrap();
        let revocation = |serials: &[u8]| RevocationRecord {
            reason: "key-compromise".into(),
            certificates: serials.iter().map(|s| one(*s)).collect(),
            ..RevocationRecord::default()
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = record_revocation(
            &log,
            &revocations,
            None,
            ("r1".into(), now),
            revocation(&[1, 2]),
            CallerRecord::default(),
        )
        .await
        .unwrap();
        assert_eq!((first.sequence, first.already_revoked), (Some(1), 0));
        let second = record_revocation(
            &log,
            &revocations,
            None,
            ("r2".into(), now),
            revocation(&[2, 3]),
            CallerRecord::default(),
        )
        .await
        .unwrap();
        assert_eq!((second.sequence, second.already_revoked), (Some(2), 1));
        let again = record_revocation(
            &log,
            &revocations,
            None,
            ("r3".into(), now),
            revocation(&[1, 3]),
            CallerRecord::default(),
        )
        .await
        .unwrap();
        assert_eq!((again.sequence, again.already_revoked), (None, 2));
        let records = log.0.lock().unwrap();
        match &records[1].outcome {
            Outcome::Revoked(r) => assert_eq!(r.certificates, [one(3)]),
            other => panic!("{other:?}"),
        }
    }
}
