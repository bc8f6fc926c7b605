//! The attributes of a record that queries filter on: which `(kind, value)` pairs a record has
//! ([`IndexKeys::of`]), and the order-preserving key of a number. Pure values: the store keeps
//! one index per kind over these pairs, and [`Query::matches`](super::Query::matches) is defined on them, so the
//! indexes and the record-by-record selection cannot disagree.

use crate::domain::clock::unix_seconds;
use crate::domain::identity::SpiffeId;
use crate::domain::record::{Outcome, Record};

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
    /// `issued`, `revoked`, `federated`, `ca-key`, or `denied/<reason>`.
    Outcome = 11,
    /// NotAfter, as an order-preserving 8-byte key (issued certificates only).
    NotAfter = 12,
}

impl IndexKind {
    pub(crate) const ALL: [IndexKind; 12] = [
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

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.code() == code)
    }
}

/// Separates a namespace (or `namespace/account`) from its mesh in index values.
pub const MESH_SEPARATOR: u8 = 0;

/// The `Outcome` index value of issued certificates.
pub const OUTCOME_ISSUED: &str = "issued";
/// The `Outcome` index value of revocations.
pub const OUTCOME_REVOKED: &str = "revoked";
pub const OUTCOME_FEDERATED: &str = "federated";
/// The `Outcome` index value of CA certificates made or taken into service.
pub const OUTCOME_CA_KEY: &str = "ca-key";
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
            Outcome::Federated(federated) => federated.mesh.as_str(),
            Outcome::CaKey(ca_key) => ca_key.mesh.as_str(),
            Outcome::Revoked(_) => "",
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
            Outcome::Revoked(revoked) => {
                push(IndexKind::Outcome, OUTCOME_REVOKED.as_bytes());
                for certificate in &revoked.certificates {
                    push(IndexKind::Mesh, certificate.mesh.as_bytes());
                    identities.push(&certificate.spiffe_id);
                }
                for identity in revoked.blocked.iter().chain(&revoked.unblocked) {
                    identities.push(identity);
                }
                Summary { validity: None }
            }
            Outcome::Federated(federated) => {
                push(IndexKind::Outcome, OUTCOME_FEDERATED.as_bytes());
                push(IndexKind::Mesh, federated.mesh.as_bytes());
                push(IndexKind::TrustDomain, federated.trust_domain.as_bytes());
                Summary { validity: None }
            }
            Outcome::CaKey(ca_key) => {
                push(IndexKind::Outcome, OUTCOME_CA_KEY.as_bytes());
                push(IndexKind::Mesh, ca_key.mesh.as_bytes());
                push(IndexKind::Serial, &ca_key.serial);
                Summary { validity: None }
            }
        };
        let issued_id = match &record.outcome {
            Outcome::Issued(issued) => issued.spiffe_id.as_str(),
            Outcome::Denied(_)
            | Outcome::Revoked(_)
            | Outcome::Federated(_)
            | Outcome::CaKey(_) => "",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::{example_record, LeafData, OutcomeFilter, Query};
    use crate::domain::record::DenialRecord;

    #[test]
    fn a_record_is_indexed_by_every_field_an_audit_asks_about() {
        let record = example_record("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
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
        let mut record = example_record("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
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
        let record = example_record("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
        let keys = IndexKeys::of(&record);
        for prefix in ["spiffe://a.example/", "spiffe://a.example/ns/shop/"] {
            assert!(keys
                .entries
                .contains(&(IndexKind::SpiffePrefix, prefix.as_bytes().to_vec())));
        }
    }

    #[test]
    fn leaf_data_round_trips_and_order_keys_sort_like_numbers() {
        let mut record = example_record("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
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
}
