//! Audit queries: which records a query selects ([`Query::matches`] states the selection record
//! by record; the store serves the same from its indexes), and opaque page tokens bound to the
//! query they came from.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;

use super::attributes::{IndexKeys, IndexKind, Summary, MESH_SEPARATOR};
use crate::domain::clock::{unix_millis, unix_seconds};
use crate::domain::record::{Outcome, Record};

/// Which records to select. Every filter that is set must hold (they combine with AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// The serial number of an issued certificate.
    pub serial: Option<Vec<u8>>,
    /// An exact SPIFFE ID: issued, or asked for (alias requests and denials).
    pub spiffe_id: Option<String>,
    /// A SPIFFE ID prefix, e.g. `spiffe://td/ns/payments/`.
    pub spiffe_id_prefix: Option<String>,
    pub mesh: Option<String>,
    pub trust_domain: Option<String>,
    pub namespace: Option<String>,
    /// A service account: `NAMESPACE/NAME`, or `NAME` together with `namespace`.
    pub service_account: Option<String>,
    /// The authenticated subject of the caller (e.g. `system:serviceaccount:ns:sa`).
    pub caller: Option<String>,
    /// The `clusterid` the caller sent.
    pub cluster_id: Option<String>,
    /// The caller's pod name (from the TokenReview).
    pub pod: Option<String>,
    /// Recorded at or after.
    pub since: Option<SystemTime>,
    /// Recorded before.
    pub until: Option<SystemTime>,
    /// Issued certificates valid at this instant (NotBefore <= T < NotAfter).
    pub valid_at: Option<SystemTime>,
    /// Issued certificates whose NotAfter is at or after this instant...
    pub expires_after: Option<SystemTime>,
    /// ...and before this one.
    pub expires_before: Option<SystemTime>,
    pub outcome: Option<OutcomeFilter>,
    /// Only issued certificates that were revoked: their serials, as the revocations known
    /// where the query runs name them (filled in there; `None` with this filter unset).
    pub revoked: Option<RevokedSerials>,
}

/// The serials of revoked certificates, for [`Query::revoked`]. Its `Debug` leaves the serials
/// out, so a page token stays valid when a revocation happens between pages.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RevokedSerials(pub std::sync::Arc<std::collections::BTreeSet<Vec<u8>>>);

impl std::fmt::Debug for RevokedSerials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RevokedSerials")
    }
}

/// Issued, or denied (optionally for one reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeFilter {
    Issued,
    Denied {
        reason: Option<String>,
    },
    /// Revocation records (`meshroot revoke`).
    Revoked,
    /// Partner bundle changes (`[[mesh.partner]]`).
    Federated,
    /// CA certificates made or taken into service, with where their keys are.
    CaKey,
}

/// Why a query was refused before it ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the page token is invalid or belongs to another query")]
    BadPageToken,
    #[error("{0}")]
    Invalid(String),
}

impl Query {
    /// True when no filter is set.
    pub(crate) fn is_unfiltered(&self) -> bool {
        self == &Self::default()
    }

    /// Whether the query only selects issued certificates (a validity filter implies it).
    pub(crate) fn issued_only(&self) -> bool {
        self.serial.is_some()
            || self.revoked.is_some()
            || self.valid_at.is_some()
            || self.expires_after.is_some()
            || self.expires_before.is_some()
            || self.outcome == Some(OutcomeFilter::Issued)
    }

    /// The `namespace/name` of a service-account filter.
    pub(crate) fn service_account_key(&self) -> Option<String> {
        let account = self.service_account.as_deref()?;
        match (account.split_once('/'), &self.namespace) {
            (Some(_), _) => Some(account.to_owned()),
            (None, Some(namespace)) => Some(format!("{namespace}/{account}")),
            (None, None) => None,
        }
    }

    /// Checks combinations that cannot be answered.
    pub fn validate(&self) -> Result<(), QueryError> {
        if let Some(account) = &self.service_account {
            if self.service_account_key().is_none() {
                return Err(QueryError::Invalid(format!(
                    "service account {account:?}: give it as NAMESPACE/NAME or with a namespace"
                )));
            }
        }
        if let (Some(account), Some(namespace)) = (&self.service_account, &self.namespace) {
            if let Some((account_namespace, _)) = account.split_once('/') {
                if account_namespace != namespace {
                    return Err(QueryError::Invalid(format!(
                        "service account {account:?} is not in namespace {namespace:?}"
                    )));
                }
            }
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if until < since {
                return Err(QueryError::Invalid("--until is before --since".into()));
            }
        }
        if self.issued_only()
            && matches!(
                self.outcome,
                Some(OutcomeFilter::Denied { .. } | OutcomeFilter::Revoked)
            )
        {
            return Err(QueryError::Invalid(
                "serial and validity filters select issued certificates, not denials".into(),
            ));
        }
        Ok(())
    }

    /// Whether `record` is selected: the definition every index-served query must agree with.
    pub fn matches(&self, record: &Record) -> bool {
        let keys = IndexKeys::of(record);
        let has = |kind: IndexKind, value: &[u8]| {
            keys.entries
                .iter()
                .any(|(k, v)| *k == kind && v.as_slice() == value)
        };
        let text = |kind: IndexKind, value: &Option<String>| {
            value.as_ref().is_none_or(|v| has(kind, v.as_bytes()))
        };
        if let Some(serial) = &self.serial {
            if !has(IndexKind::Serial, serial) {
                return false;
            }
        }
        if let Some(RevokedSerials(serials)) = &self.revoked {
            if !serials.iter().any(|serial| has(IndexKind::Serial, serial)) {
                return false;
            }
        }
        if let Some(prefix) = &self.spiffe_id_prefix {
            if !keys
                .entries
                .iter()
                .any(|(k, v)| *k == IndexKind::SpiffeId && v.starts_with(prefix.as_bytes()))
            {
                return false;
            }
        }
        // Namespaces and service accounts are indexed with the record's mesh.
        let scoped = |kind: IndexKind, name: Option<String>| {
            name.is_none_or(|name| {
                let prefix = [name.as_bytes(), &[MESH_SEPARATOR]].concat();
                keys.entries
                    .iter()
                    .any(|(k, v)| *k == kind && v.starts_with(&prefix))
            })
        };
        if !(scoped(IndexKind::ServiceAccount, self.service_account_key())
            && scoped(IndexKind::Namespace, self.namespace.clone())
            && text(IndexKind::SpiffeId, &self.spiffe_id)
            && text(IndexKind::Mesh, &self.mesh)
            && text(IndexKind::TrustDomain, &self.trust_domain)
            && text(IndexKind::Caller, &self.caller)
            && text(IndexKind::Cluster, &self.cluster_id)
            && text(IndexKind::Pod, &self.pod))
        {
            return false;
        }
        let recorded = unix_millis(record.recorded_at);
        if self.since.is_some_and(|t| recorded < unix_millis(t))
            || self.until.is_some_and(|t| recorded >= unix_millis(t))
        {
            return false;
        }
        let outcome_ok = match (&self.outcome, &record.outcome) {
            (None, _) | (Some(OutcomeFilter::Issued), Outcome::Issued(_)) => true,
            (Some(OutcomeFilter::Denied { reason }), Outcome::Denied(denied)) => {
                reason.as_ref().is_none_or(|r| r == &denied.reason)
            }
            (Some(OutcomeFilter::Revoked), Outcome::Revoked(_))
            | (Some(OutcomeFilter::Federated), Outcome::Federated(_))
            | (Some(OutcomeFilter::CaKey), Outcome::CaKey(_)) => true,
            (Some(OutcomeFilter::Issued), _)
            | (Some(OutcomeFilter::Denied { .. }), _)
            | (Some(OutcomeFilter::Revoked), _)
            | (Some(OutcomeFilter::Federated), _)
            | (Some(OutcomeFilter::CaKey), _) => false,
        };
        if !outcome_ok {
            return false;
        }
        self.summary_matches(&keys.summary)
    }

    /// The part of the query that an index entry's [`Summary`] decides: outcome kind and
    /// validity.
    pub(crate) fn summary_matches(&self, summary: &Summary) -> bool {
        if self.issued_only() && summary.validity.is_none() {
            return false;
        }
        match &self.outcome {
            Some(OutcomeFilter::Denied { .. } | OutcomeFilter::Revoked)
                if summary.validity.is_some() =>
            {
                return false
            }
            _ => {}
        }
        let Some((not_before, not_after)) = summary.validity else {
            return true;
        };
        if let Some(at) = self.valid_at {
            let at = unix_seconds(at);
            if !(not_before <= at && at < not_after) {
                return false;
            }
        }
        if self
            .expires_after
            .is_some_and(|t| not_after < unix_seconds(t))
            || self
                .expires_before
                .is_some_and(|t| not_after >= unix_seconds(t))
        {
            return false;
        }
        true
    }

    /// A fingerprint of the filters, bound into page tokens.
    pub fn fingerprint(&self) -> [u8; 8] {
        let text = format!("{self:?}");
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest.as_ref()[..8]);
        out
    }
}

/// Where the next page starts, bound to the query it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub fingerprint: [u8; 8],
    pub position: Position,
}

/// A position in a query's result order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Position {
    /// Results in sequence order: the next sequence number.
    Sequence(u64),
    /// Results in expiry order (queries whose only filters are validity and outcome): the next
    /// `(NotAfter, sequence)`.
    Expiry(i64, u64),
}

impl PageToken {
    pub fn encode(&self) -> String {
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&self.fingerprint);
        match self.position {
            Position::Sequence(sequence) => {
                bytes.push(1);
                bytes.extend_from_slice(&sequence.to_be_bytes());
            }
            Position::Expiry(not_after, sequence) => {
                bytes.push(2);
                bytes.extend_from_slice(&not_after.to_be_bytes());
                bytes.extend_from_slice(&sequence.to_be_bytes());
            }
        }
        BASE64URL.encode(bytes)
    }

    /// Decodes a token and checks that it was made for `query`.
    pub fn decode(text: &str, query: &Query) -> Result<Self, QueryError> {
        let bytes = BASE64URL
            .decode(text.trim())
            .map_err(|_| QueryError::BadPageToken)?;
        let fingerprint: [u8; 8] = bytes
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .ok_or(QueryError::BadPageToken)?;
        if bytes.first() != Some(&1) || fingerprint != query.fingerprint() {
            return Err(QueryError::BadPageToken);
        }
        let number = |range: std::ops::Range<usize>| {
            bytes
                .get(range)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .ok_or(QueryError::BadPageToken)
        };
        let position = match (bytes.get(9), bytes.len()) {
            (Some(1), 18) => Position::Sequence(u64::from_be_bytes(number(10..18)?)),
            (Some(2), 26) => Position::Expiry(
                i64::from_be_bytes(number(10..18)?),
                u64::from_be_bytes(number(18..26)?),
            ),
            _ => return Err(QueryError::BadPageToken),
        };
        Ok(Self {
            fingerprint,
            position,
        })
    }
}

/// One page of results.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub records: Vec<Record>,
    /// Present when more results may follow.
    pub next_page_token: Option<String>,
}

/// Parses a time given as RFC 3339 (`2026-11-28T10:00:00Z`), `now`, or an age before now
/// (`90m`, `1h`, `7d`).
pub fn parse_time(text: &str, now: SystemTime) -> Option<SystemTime> {
    let text = text.trim();
    if text == "now" {
        return Some(now);
    }
    if let Some(age) = crate::domain::clock::parse_duration(text) {
        return now.checked_sub(age);
    }
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let seconds = crate::domain::clock::time_from_unix_seconds(parsed.unix_timestamp()).ok()?;
    seconds.checked_add(Duration::from_nanos(u64::from(parsed.nanosecond())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::example_record;
    use std::time::UNIX_EPOCH;

    #[test]
    fn validity_filters_follow_not_before_and_not_after() {
        let record = example_record("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let valid_at = |s| Query {
            valid_at: Some(at(s)),
            ..Query::default()
        };
        assert!(valid_at(1_800_000_000).matches(&record));
        assert!(valid_at(1_800_000_000 - 120).matches(&record));
        assert!(!valid_at(1_800_000_000 - 121).matches(&record));
        assert!(!valid_at(1_800_086_400).matches(&record));
        let expiring = Query {
            expires_after: Some(at(1_800_086_400)),
            expires_before: Some(at(1_800_086_401)),
            ..Query::default()
        };
        assert!(expiring.matches(&record));
        assert!(!Query {
            expires_before: Some(at(1_800_086_400)),
            ..Query::default()
        }
        .matches(&record));
    }

    #[test]
    fn service_account_filters_with_and_without_a_namespace() {
        let record = example_record("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
        let by = |namespace: Option<&str>, account: &str| Query {
            namespace: namespace.map(Into::into),
            service_account: Some(account.into()),
            ..Query::default()
        };
        assert!(by(Some("shop"), "cart").matches(&record));
        assert!(by(None, "shop/cart").matches(&record));
        assert!(by(None, "cart").validate().is_err());
        assert!(!by(Some("bank"), "cart").matches(&record));
        assert!(by(Some("bank"), "shop/cart").validate().is_err());
    }

    #[test]
    fn page_tokens_are_bound_to_their_query() {
        let query = Query {
            namespace: Some("shop".into()),
            ..Query::default()
        };
        let token = PageToken {
            fingerprint: query.fingerprint(),
            position: Position::Expiry(-3, 9),
        };
        let text = token.encode();
        assert_eq!(PageToken::decode(&text, &query), Ok(token));
        let other = Query {
            namespace: Some("bank".into()),
            ..Query::default()
        };
        assert_eq!(
            PageToken::decode(&text, &other),
            Err(QueryError::BadPageToken)
        );
        assert_eq!(
            PageToken::decode("not a token", &query),
            Err(QueryError::BadPageToken)
        );
    }

    #[test]
    fn times_parse_as_rfc3339_now_or_an_age() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_time("now", now), Some(now));
        assert_eq!(
            parse_time("1h", now),
            Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000 - 3600))
        );
        assert_eq!(
            parse_time("2027-01-15T08:00:00Z", now),
            Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        );
        assert_eq!(parse_time("yesterday", now), None);
    }
}
