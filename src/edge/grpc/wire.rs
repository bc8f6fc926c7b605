//! The audit API's wire forms and the one conversion each way: a [`Query`] to and from its
//! `Filter` message, a log entry to its message, a root-use answer to counts. The CLI, the
//! server and the fuzz targets all convert here, so a field added to the filter is added once.

use super::record_messages::{record_from_message, record_message};
use crate::adapters::store::LogEntry;
use crate::domain::audit::{OutcomeFilter, Query};
use crate::domain::clock::{time_from_unix_millis, unix_millis};
use crate::domain::record::{CallerRecord, Outcome, Record, RevocationRecord};
use crate::issuance::revoke::RevokeError;
use crate::pb::audit as api;

impl From<api::prove_inclusion_request::Key> for api::get_record_request::Key {
    fn from(key: api::prove_inclusion_request::Key) -> Self {
        match key {
            api::prove_inclusion_request::Key::Sequence(s) => Self::Sequence(s),
            api::prove_inclusion_request::Key::Serial(s) => Self::Serial(s),
        }
    }
}

/// A log entry as the API sends it.
pub(crate) fn entry_message(entry: &LogEntry, include_stored: bool) -> api::LogEntry {
    match entry {
        LogEntry::Record { sequence, stored } => api::LogEntry {
            sequence: *sequence,
            entry: entry
                .record()
                .and_then(Result::ok)
                .map(|record| api::log_entry::Entry::Record(record_message(&record))),
            stored: if include_stored {
                stored.clone()
            } else {
                Vec::new()
            },
            member: String::new(),
        },
        LogEntry::Pruned { sequence, leaf } => api::LogEntry {
            sequence: *sequence,
            entry: Some(api::log_entry::Entry::PrunedLeaf(leaf.to_bytes().to_vec())),
            stored: Vec::new(),
            member: String::new(),
        },
    }
}

/// The query a filter message describes. Its times are range-checked here, at the boundary
/// (1970..=9999), and a serial is at most 20 bytes (RFC 5280 §4.1.2.2): a client's value is
/// refused, never echoed whole.
pub fn query_from_filter(filter: api::Filter) -> Result<Query, crate::domain::audit::QueryError> {
    let invalid = |what: String| crate::domain::audit::QueryError::Invalid(what);
    if filter.serial.len() > MAX_SERIAL_BYTES {
        return Err(invalid(format!(
            "a serial number is at most {MAX_SERIAL_BYTES} bytes (RFC 5280), this one {}",
            filter.serial.len()
        )));
    }
    let time = |name: &str, ms: Option<i64>| {
        ms.map(time_from_unix_millis)
            .transpose()
            .map_err(|e| invalid(format!("{name}: {e}")))
    };
    let text = |value: String| (!value.is_empty()).then_some(value);
    Ok(Query {
        since: time("since", filter.since_ms)?,
        until: time("until", filter.until_ms)?,
        valid_at: time("valid_at", filter.valid_at_ms)?,
        expires_after: time("expires_after", filter.expires_after_ms)?,
        expires_before: time("expires_before", filter.expires_before_ms)?,
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
        outcome: match api::Outcome::try_from(filter.outcome) {
            Ok(api::Outcome::Issued) => Some(OutcomeFilter::Issued),
            Ok(api::Outcome::Denied) => Some(OutcomeFilter::Denied {
                reason: text(filter.denial_reason),
            }),
            Ok(api::Outcome::Revoked) => Some(OutcomeFilter::Revoked),
            Ok(api::Outcome::Federated) => Some(OutcomeFilter::Federated),
            Ok(api::Outcome::CaKey) => Some(OutcomeFilter::CaKey),
            Ok(api::Outcome::Any) | Err(_) => None,
        },
        // The serials are filled in where the query runs (`with_revoked_serials`).
        revoked: filter
            .revoked
            .then(crate::domain::audit::RevokedSerials::default),
    })
}

/// The longest certificate serial number (RFC 5280 §4.1.2.2: at most 20 octets).
const MAX_SERIAL_BYTES: usize = 20;

/// The filter message of a query (for clients).
pub fn filter_from_query(query: &Query) -> api::Filter {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let (outcome, denial_reason) = match &query.outcome {
        None => (api::Outcome::Any, String::new()),
        Some(OutcomeFilter::Issued) => (api::Outcome::Issued, String::new()),
        Some(OutcomeFilter::Denied { reason }) => (api::Outcome::Denied, text(reason)),
        Some(OutcomeFilter::Revoked) => (api::Outcome::Revoked, String::new()),
        Some(OutcomeFilter::Federated) => (api::Outcome::Federated, String::new()),
        Some(OutcomeFilter::CaKey) => (api::Outcome::CaKey, String::new()),
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
        revoked: query.revoked.is_some(),
    }
}

/// A CountRootUse answer as counts: the sum over the members that answered, and each member's
/// own (`rotate plan` prints both; the status page the sum).
pub(crate) fn cluster_bundle_use(
    response: &api::CountRootUseResponse,
    roots: usize,
) -> (
    crate::domain::audit::rotation::BundleUse,
    Vec<(String, crate::domain::audit::rotation::BundleUse)>,
) {
    use crate::domain::audit::rotation::{BundleUse, InUse};
    let in_use = |r: Option<&api::RootUse>| InUse {
        certificates: r.map_or(0, |r| r.certificates),
        until: r
            .and_then(|r| r.until_ms)
            .map(crate::domain::clock::from_unix_millis),
    };
    let mut total = BundleUse {
        per_root: vec![InUse::default(); roots],
        ..BundleUse::default()
    };
    let mut members = Vec::new();
    for member in &response.members {
        let usage = BundleUse {
            per_root: member.per_root.iter().map(|r| in_use(Some(r))).collect(),
            stranded: in_use(member.stranded.as_ref()),
            unknown: in_use(member.unknown.as_ref()),
        };
        total.merge(&usage);
        if !member.member.is_empty() {
            members.push((member.member.clone(), usage));
        }
    }
    (total, members)
}

/// A revocation handed over by a member: its block's end and its certificates' expiry are
/// times from outside, checked here (1970..=9999; a block of 0 lasts until lifted).
pub fn check_times(message: &api::Revocation) -> Result<(), RevokeError> {
    let out_of_range = |what: &str, e: crate::domain::clock::TimeRangeError| {
        RevokeError::TimeOutOfRange(format!("{what}: {e}"))
    };
    if message.blocked_until_ms != 0 {
        crate::domain::clock::time_from_unix_millis(message.blocked_until_ms)
            .map_err(|e| out_of_range("blocked_until_ms", e))?;
    }
    for certificate in &message.certificates {
        crate::domain::clock::time_from_unix_seconds(certificate.not_after)
            .map_err(|e| out_of_range("not_after", e))?;
    }
    Ok(())
}

/// A revocation from a member's message (its times checked first with [`check_times`]).
pub fn revocation_from_message(message: api::Revocation) -> RevocationRecord {
    let record = api::Record {
        version: crate::domain::record::RECORD_VERSION,
        outcome: Some(api::record::Outcome::Revoked(message)),
        ..Default::default()
    };
    match record_from_message(record).map(|r| r.outcome) {
        Some(Outcome::Revoked(revocation)) => revocation,
        _ => RevocationRecord::default(),
    }
}

/// A revocation as members hand it to each other (`RevokeRequest.apply`).
pub(crate) fn revocation_to_message(revocation: &RevocationRecord) -> api::Revocation {
    let record = Record::new(
        String::new(),
        std::time::UNIX_EPOCH,
        CallerRecord::default(),
        Outcome::Revoked(revocation.clone()),
    );
    match record_message(&record).outcome {
        Some(api::record::Outcome::Revoked(message)) => message,
        _ => api::Revocation::default(),
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
        assert_eq!(query_from_filter(filter_from_query(&query)), Ok(query));
        assert_eq!(
            query_from_filter(api::Filter::default()),
            Ok(Query::default())
        );
    }
}
