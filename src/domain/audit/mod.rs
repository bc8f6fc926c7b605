//! The audit log's model, free of storage and I/O: everything an auditor's question and its proof
//! are made of.
//!
//! - `query`: which records a [`Query`] selects, and page tokens; `keys`: the attributes a query
//!   filters on. The store (`store::index`) serves every query from indexes over those
//!   attributes; [`Query::matches`] states the same selection record by record.
//! - `leaf`: the Merkle leaf that commits to a record; `merkle`: RFC 6962 trees and proofs;
//!   `checkpoint`: signed tree heads (C2SP signed-note / tlog-checkpoint).
//! - `verify`: recomputing the tree from the entries and checking checkpoints; `proof`:
//!   checking one record's inclusion proof.
//! - `rotation`: which roots the certificates still in use chain to.

use std::time::Duration;

mod attributes;
pub mod checkpoint;
mod leaf;
pub mod merkle;
pub mod proof;
mod query;
pub mod rotation;
pub mod verify;

pub use self::attributes::{
    boundary_prefix, from_order_key, order_key, IndexKeys, IndexKind, Summary, MESH_SEPARATOR,
    OUTCOME_CA_KEY, OUTCOME_DENIED_PREFIX, OUTCOME_FEDERATED, OUTCOME_ISSUED, OUTCOME_REVOKED,
};
pub use self::leaf::{LeafData, LEAF_DATA_LEN, LEAF_HEADER_LEN, LEAF_VERSION};
pub use self::query::{
    parse_time, OutcomeFilter, Page, PageToken, Position, Query, QueryError, RevokedSerials,
};

/// Default number of records in a page.
/// Records per index segment (and per tier-0 run): the default of
/// `[audit] index_segment_records`.
pub const SEGMENT_RECORDS: u64 = 16_384;
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page a query may ask for.
pub(crate) const MAX_PAGE_SIZE: usize = 1000;

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

/// An issued record for `id` at `at` (seconds since the epoch), for tests.
#[cfg(test)]
pub(crate) fn example_record(id: &str, at: u64) -> crate::domain::record::Record {
    use crate::domain::identity::SpiffeId;
    use crate::domain::record::{CallerRecord, IssuedRecord, Outcome, Record};
    use std::time::UNIX_EPOCH;
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
            ca: None,
        }),
    }
}
