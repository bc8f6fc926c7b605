//! The audit model, free of storage: which records a query selects, how a record is indexed, the
//! Merkle leaf that commits to a record, and opaque page tokens.
//!
//! The store (`store::index`) serves every [`Query`] from indexes; [`Query::matches`] states the
//! same selection record by record (used to filter live tails and as the oracle in tests).

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;

use crate::clock::{unix_millis, unix_seconds};
use crate::identity::SpiffeId;
use crate::merkle::{self, Hash};
use crate::record::{Outcome, Record};

pub mod verify;

/// Default number of records in a page.
/// Records per index segment (and per tier-0 run): the default of
/// `[audit] index_segment_records`.
pub const SEGMENT_RECORDS: u64 = 16_384;
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page a query may ask for.
pub const MAX_PAGE_SIZE: usize = 1000;

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
}

/// Issued, or denied (optionally for one reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeFilter {
    Issued,
    Denied { reason: Option<String> },
}

/// How long records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Issuance records are kept this long after their certificate expired.
    pub issued_after_expiry: Duration,
    /// Denial records are kept this long after they were recorded.
    pub denials: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            issued_after_expiry: Duration::from_secs(400 * 86_400),
            denials: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Why an audit request failed: the request was wrong, or the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("{0}")]
    Store(#[from] crate::record::StoreError),
    #[error("{0}")]
    NotFound(String),
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
    pub fn is_unfiltered(&self) -> bool {
        self == &Self::default()
    }

    /// Whether the query only selects issued certificates (a validity filter implies it).
    pub fn issued_only(&self) -> bool {
        self.serial.is_some()
            || self.valid_at.is_some()
            || self.expires_after.is_some()
            || self.expires_before.is_some()
            || self.outcome == Some(OutcomeFilter::Issued)
    }

    /// The `namespace/name` of a service-account filter.
    pub fn service_account_key(&self) -> Option<String> {
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
        if self.issued_only() && matches!(self.outcome, Some(OutcomeFilter::Denied { .. })) {
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
            (Some(OutcomeFilter::Issued), Outcome::Denied(_))
            | (Some(OutcomeFilter::Denied { .. }), Outcome::Issued(_)) => false,
        };
        if !outcome_ok {
            return false;
        }
        self.summary_matches(&keys.summary)
    }

    /// The part of the query that an index entry's [`Summary`] decides: outcome kind and
    /// validity.
    pub fn summary_matches(&self, summary: &Summary) -> bool {
        if self.issued_only() && summary.validity.is_none() {
            return false;
        }
        match &self.outcome {
            Some(OutcomeFilter::Denied { .. }) if summary.validity.is_some() => return false,
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

/// The indexes. Each entry is `(kind, value) → sequence`, so each filter is a key lookup or a
/// key range, never a scan of the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum IndexKind {
    /// Serial number bytes.
    Serial = 1,
    /// Issued SPIFFE ID, and the requested one when it differs (aliases, denials).
    SpiffeId = 2,
    Mesh = 3,
    TrustDomain = 4,
    /// `namespace ‖ 0x00 ‖ mesh`.
    Namespace = 5,
    /// `namespace/service-account ‖ 0x00 ‖ mesh`.
    ServiceAccount = 6,
    /// The prefixes of each SPIFFE ID up to its first and third `/`: `spiffe://td/` and
    /// `spiffe://td/ns/x/`.
    SpiffePrefix = 7,
    /// The caller's authenticated subject.
    Caller = 8,
    Cluster = 9,
    Pod = 10,
    /// `issued`, or `denied/<reason>`.
    Outcome = 11,
    /// NotAfter, as an order-preserving 8-byte key (issued certificates only).
    NotAfter = 12,
}

impl IndexKind {
    pub const ALL: [IndexKind; 12] = [
        Self::Serial,
        Self::SpiffeId,
        Self::Mesh,
        Self::TrustDomain,
        Self::Namespace,
        Self::ServiceAccount,
        Self::SpiffePrefix,
        Self::Caller,
        Self::Cluster,
        Self::Pod,
        Self::Outcome,
        Self::NotAfter,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.code() == code)
    }
}

/// Separates a namespace (or `namespace/account`) from its mesh in index values.
pub const MESH_SEPARATOR: u8 = 0;

/// The `Outcome` index value of issued certificates.
pub const OUTCOME_ISSUED: &str = "issued";
/// The prefix of `Outcome` index values of denials.
pub const OUTCOME_DENIED_PREFIX: &str = "denied/";

/// What an index entry carries besides the sequence number, so outcome and validity filters
/// need no record reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// `(NotBefore, NotAfter)` in Unix seconds, for issued certificates; None for denials.
    pub validity: Option<(i64, i64)>,
}

/// A record's index entries and summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexKeys {
    pub entries: Vec<(IndexKind, Vec<u8>)>,
    pub summary: Summary,
}

impl IndexKeys {
    pub fn of(record: &Record) -> Self {
        let mut entries: Vec<(IndexKind, Vec<u8>)> = Vec::with_capacity(13);
        let mesh = match &record.outcome {
            Outcome::Issued(issued) => issued.mesh.as_str(),
            Outcome::Denied(denied) => denied.mesh.as_str(),
        };
        let mut push = |kind: IndexKind, value: &[u8]| {
            if value.is_empty() {
                return;
            }
            let value = match kind {
                IndexKind::Namespace | IndexKind::ServiceAccount => {
                    [value, &[MESH_SEPARATOR], mesh.as_bytes()].concat()
                }
                _ => value.to_vec(),
            };
            if !entries.iter().any(|(k, v)| *k == kind && *v == value) {
                entries.push((kind, value));
            }
        };
        let caller = &record.caller;
        push(IndexKind::Caller, caller.subject.as_bytes());
        push(IndexKind::Cluster, caller.cluster_id.as_bytes());
        push(IndexKind::Pod, caller.pod_name.as_bytes());
        let mut identities: Vec<&str> = Vec::with_capacity(2);
        let summary = match &record.outcome {
            Outcome::Issued(issued) => {
                push(IndexKind::Serial, &issued.serial);
                push(IndexKind::Mesh, issued.mesh.as_bytes());
                push(IndexKind::TrustDomain, issued.trust_domain.as_bytes());
                push(IndexKind::Namespace, issued.namespace.as_bytes());
                if !issued.namespace.is_empty() && !issued.service_account.is_empty() {
                    push(
                        IndexKind::ServiceAccount,
                        format!("{}/{}", issued.namespace, issued.service_account).as_bytes(),
                    );
                }
                push(IndexKind::Outcome, OUTCOME_ISSUED.as_bytes());
                push(
                    IndexKind::NotAfter,
                    &order_key(unix_seconds(issued.not_after)),
                );
                identities.push(&issued.spiffe_id);
                identities.push(&issued.requested_spiffe_id);
                Summary {
                    validity: Some((
                        unix_seconds(issued.not_before),
                        unix_seconds(issued.not_after),
                    )),
                }
            }
            Outcome::Denied(denied) => {
                push(IndexKind::Mesh, denied.mesh.as_bytes());
                push(
                    IndexKind::Outcome,
                    format!("{OUTCOME_DENIED_PREFIX}{}", denied.reason).as_bytes(),
                );
                identities.push(&denied.requested_spiffe_id);
                Summary { validity: None }
            }
        };
        let issued_id = match &record.outcome {
            Outcome::Issued(issued) => issued.spiffe_id.as_str(),
            Outcome::Denied(_) => "",
        };
        for identity in identities {
            push(IndexKind::SpiffeId, identity.as_bytes());
            for prefix in boundary_prefixes(identity) {
                push(IndexKind::SpiffePrefix, prefix.as_bytes());
            }
            if identity == issued_id {
                continue; // its parts are the record's own fields, pushed above
            }
            // The parts of an alias request's or a denial's identity.
            if let Ok(id) = SpiffeId::parse(identity) {
                push(
                    IndexKind::TrustDomain,
                    id.trust_domain().as_str().as_bytes(),
                );
                push(IndexKind::Namespace, id.namespace().as_bytes());
                push(
                    IndexKind::ServiceAccount,
                    format!("{}/{}", id.namespace(), id.service_account()).as_bytes(),
                );
            }
        }
        Self { entries, summary }
    }
}

/// Which `/` after `spiffe://` end the prefixes kept in [`IndexKind::SpiffePrefix`]: the
/// first (`spiffe://td/`, a trust domain) and the third (`spiffe://td/ns/x/`, an Istio
/// namespace).
const BOUNDARY_SLASHES: [usize; 2] = [1, 3];

/// The prefixes of `id` ending at a boundary slash (plain string positions, so an index
/// lookup agrees with `starts_with` for any URI).
fn boundary_prefixes(id: &str) -> impl Iterator<Item = &str> {
    let start = if id.starts_with("spiffe://") {
        9
    } else {
        id.len()
    };
    id.char_indices()
        .skip_while(move |(at, _)| *at < start)
        .filter(|(_, c)| *c == '/')
        .enumerate()
        .filter(|(n, _)| BOUNDARY_SLASHES.contains(&(n + 1)))
        .map(move |(_, (at, _))| &id[..=at])
}

/// The [`IndexKind::SpiffePrefix`] value equivalent to a SPIFFE ID prefix filter, when the
/// prefix ends at a boundary slash (`spiffe://td/`, `spiffe://td/ns/x/`).
pub fn boundary_prefix(prefix: &str) -> Option<String> {
    boundary_prefixes(prefix)
        .last()
        .filter(|boundary| boundary.len() == prefix.len())
        .map(str::to_owned)
}

/// An order-preserving 8-byte key for a signed number (big-endian with the sign bit flipped).
pub fn order_key(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`order_key`].
pub fn from_order_key(key: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// The leaf of the audit log's Merkle tree for one record: a fixed header (which stays
/// readable after the record is pruned, so verification can still tell an issuance from a
/// denial and when it expired) and the SHA-256 of the record's encoding.
///
/// ```text
/// leaf data = version (1) ‖ sequence (u64) ‖ recorded at ms (i64) ‖ kind (1: issued, 2: denied)
///             ‖ NotAfter s (i64, 0 for denials) ‖ SHA-256(record protobuf)     (big-endian)
/// leaf hash = SHA-256(0x00 ‖ leaf data)                                        (RFC 6962)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafData {
    pub sequence: u64,
    pub recorded_at_ms: i64,
    pub issued: bool,
    pub not_after: i64,
    pub record_sha256: Hash,
}

/// The leaf format version.
pub const LEAF_VERSION: u8 = 1;
/// Bytes of the leaf header (everything but the record hash).
pub const LEAF_HEADER_LEN: usize = 26;
/// Bytes of the leaf data.
pub const LEAF_DATA_LEN: usize = LEAF_HEADER_LEN + 32;

impl LeafData {
    /// The leaf of `record`, whose protobuf encoding is `encoded`.
    pub fn of(record: &Record, encoded: &[u8]) -> Self {
        let (issued, not_after) = match &record.outcome {
            Outcome::Issued(issued) => (true, unix_seconds(issued.not_after)),
            Outcome::Denied(_) => (false, 0),
        };
        Self {
            sequence: record.sequence,
            recorded_at_ms: unix_millis(record.recorded_at),
            issued,
            not_after,
            record_sha256: crate::digest::sha256(encoded),
        }
    }

    pub fn header(&self) -> [u8; LEAF_HEADER_LEN] {
        let mut out = [0u8; LEAF_HEADER_LEN];
        out[0] = LEAF_VERSION;
        out[1..9].copy_from_slice(&self.sequence.to_be_bytes());
        out[9..17].copy_from_slice(&self.recorded_at_ms.to_be_bytes());
        out[17] = if self.issued { 1 } else { 2 };
        out[18..26].copy_from_slice(&self.not_after.to_be_bytes());
        out
    }

    pub fn to_bytes(&self) -> [u8; LEAF_DATA_LEN] {
        let mut out = [0u8; LEAF_DATA_LEN];
        out[..LEAF_HEADER_LEN].copy_from_slice(&self.header());
        out[LEAF_HEADER_LEN..].copy_from_slice(&self.record_sha256);
        out
    }

    /// Parses a header followed by the record hash.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != LEAF_DATA_LEN {
            return None;
        }
        let header = Self::parse_header(&bytes[..LEAF_HEADER_LEN])?;
        Some(Self {
            record_sha256: bytes[LEAF_HEADER_LEN..].try_into().ok()?,
            ..header
        })
    }

    /// Parses a header; the record hash is left zero.
    pub fn parse_header(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < LEAF_HEADER_LEN || bytes[0] != LEAF_VERSION {
            return None;
        }
        let issued = match bytes[17] {
            1 => true,
            2 => false,
            _ => return None,
        };
        Some(Self {
            sequence: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
            recorded_at_ms: i64::from_be_bytes(bytes[9..17].try_into().ok()?),
            issued,
            not_after: i64::from_be_bytes(bytes[18..26].try_into().ok()?),
            record_sha256: [0; 32],
        })
    }

    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&self.to_bytes())
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
    if let Some(age) = crate::clock::parse_duration(text) {
        return now.checked_sub(age);
    }
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = parsed.unix_timestamp_nanos();
    if nanos >= 0 {
        Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos as u64))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_nanos(nanos.unsigned_abs() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{CallerRecord, DenialRecord, IssuedRecord};
    use std::time::UNIX_EPOCH;

    pub(crate) fn issued(id: &str, at: u64) -> Record {
        let spiffe = SpiffeId::parse(id).unwrap();
        Record {
            sequence: 7,
            recorded_at: UNIX_EPOCH + Duration::from_secs(at),
            request_id: "r".into(),
            caller: CallerRecord {
                authenticator: "token-review".into(),
                subject: format!(
                    "system:serviceaccount:{}:{}",
                    spiffe.namespace(),
                    spiffe.service_account()
                ),
                cluster_id: "west".into(),
                pod_name: "cart-1".into(),
                ..CallerRecord::default()
            },
            outcome: Outcome::Issued(IssuedRecord {
                serial: vec![1, 0, 2],
                spiffe_id: id.into(),
                requested_spiffe_id: id.into(),
                dns_names: vec![],
                mesh: "a".into(),
                trust_domain: spiffe.trust_domain().to_string(),
                namespace: spiffe.namespace().into(),
                service_account: spiffe.service_account().into(),
                not_before: UNIX_EPOCH + Duration::from_secs(at - 120),
                not_after: UNIX_EPOCH + Duration::from_secs(at + 86400),
                key_algorithm: "rsa".into(),
                key_bits: 2048,
                public_key_sha256: vec![],
                csr_sha256: vec![],
                intermediate_sha256: vec![],
                certificate_sha256: vec![],
                requested_ttl_seconds: 86400,
            }),
        }
    }

    #[test]
    fn a_record_is_indexed_by_every_field_an_audit_asks_about() {
        let record = issued("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
        let keys = IndexKeys::of(&record);
        let value = |kind| {
            keys.entries
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            value(IndexKind::SpiffeId),
            ["spiffe://a.example/ns/shop/sa/cart"]
        );
        assert_eq!(value(IndexKind::ServiceAccount), ["shop/cart\0a"]);
        assert_eq!(value(IndexKind::Namespace), ["shop\0a"]);
        assert_eq!(value(IndexKind::TrustDomain), ["a.example"]);
        assert_eq!(
            value(IndexKind::Caller),
            ["system:serviceaccount:shop:cart"]
        );
        assert_eq!(value(IndexKind::Outcome), ["issued"]);
        assert_eq!(
            keys.summary.validity,
            Some((1_800_000_000 - 120, 1_800_086_400))
        );
    }

    #[test]
    fn denials_are_indexed_by_reason_and_the_identity_they_asked_for() {
        let mut record = issued("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
        record.outcome = Outcome::Denied(DenialRecord {
            reason: "identity-mismatch".into(),
            detail: String::new(),
            mesh: "a".into(),
            requested_spiffe_id: "spiffe://a.example/ns/bank/sa/vault".into(),
            csr_sha256: vec![],
            summary: None,
        });
        let keys = IndexKeys::of(&record);
        assert!(keys
            .entries
            .contains(&(IndexKind::Outcome, b"denied/identity-mismatch".to_vec())));
        assert!(keys
            .entries
            .contains(&(IndexKind::Namespace, b"bank\0a".to_vec())));
        assert_eq!(keys.summary.validity, None);
        let query = |outcome| Query {
            outcome: Some(outcome),
            ..Query::default()
        };
        assert!(query(OutcomeFilter::Denied { reason: None }).matches(&record));
        assert!(query(OutcomeFilter::Denied {
            reason: Some("identity-mismatch".into())
        })
        .matches(&record));
        assert!(!query(OutcomeFilter::Denied {
            reason: Some("token-expired".into())
        })
        .matches(&record));
        assert!(!query(OutcomeFilter::Issued).matches(&record));
    }

    #[test]
    fn validity_filters_follow_not_before_and_not_after() {
        let record = issued("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
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
        let record = issued("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
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
    fn spiffe_prefixes_at_istio_boundaries_use_the_prefix_index() {
        assert_eq!(
            boundary_prefix("spiffe://a.example/"),
            Some("spiffe://a.example/".into())
        );
        assert_eq!(
            boundary_prefix("spiffe://a.example/ns/shop/"),
            Some("spiffe://a.example/ns/shop/".into())
        );
        assert_eq!(boundary_prefix("spiffe://a.example/ns/shop/sa/"), None);
        assert_eq!(boundary_prefix("spiffe://a.example"), None);
        assert_eq!(boundary_prefix("spiffe://a.example/ns/sh"), None);
        let record = issued("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
        let keys = IndexKeys::of(&record);
        for prefix in ["spiffe://a.example/", "spiffe://a.example/ns/shop/"] {
            assert!(keys
                .entries
                .contains(&(IndexKind::SpiffePrefix, prefix.as_bytes().to_vec())));
        }
    }

    #[test]
    fn leaf_data_round_trips_and_order_keys_sort_like_numbers() {
        let mut record = issued("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
        record.sequence = 42;
        let leaf = LeafData::of(&record, b"encoded");
        assert_eq!(LeafData::parse(&leaf.to_bytes()), Some(leaf));
        assert_eq!(leaf.sequence, 42);
        assert!(leaf.issued);
        let mut keys: Vec<_> = [-5i64, 3, -1, 0, i64::MAX, i64::MIN]
            .iter()
            .map(|v| order_key(*v))
            .collect();
        keys.sort();
        let decoded: Vec<_> = keys.iter().map(|k| from_order_key(k).unwrap()).collect();
        assert_eq!(decoded, [i64::MIN, -5, -1, 0, 3, i64::MAX]);
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
