//! Query planning: which indexes answer a query, as a lookup, a range or a join of sources.

use crate::domain::audit::{
    boundary_prefix, order_key, IndexKind, OutcomeFilter, Query, MESH_SEPARATOR,
    OUTCOME_DENIED_PREFIX, OUTCOME_ISSUED, OUTCOME_REVOKED,
};

/// Which values of an index kind a filter selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ValueSelector {
    Values(Vec<Vec<u8>>),
    Prefix(Vec<u8>),
}

/// One filter as an index lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Source {
    pub(super) kind: IndexKind,
    pub(super) selector: ValueSelector,
}

/// How a query is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Intersect index streams; results in sequence order.
    Join(Vec<SourceSpec>),
    /// Walk the `NotAfter` index over `[lo, hi)`; results in expiry order.
    Expiry { lo: [u8; 8], hi: [u8; 8] },
    /// No index filter: walk the records in the sequence range.
    Sequence,
}

/// A source of a [`Plan::Join`], public for tests and `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec(pub(super) Source);

/// Chooses the indexes that answer `query`.
pub fn plan(query: &Query) -> Plan {
    let mut sources = Vec::new();
    let exact = |kind: IndexKind, value: &[u8]| Source {
        kind,
        selector: ValueSelector::Values(vec![value.to_vec()]),
    };
    if let Some(serial) = &query.serial {
        sources.push(exact(IndexKind::Serial, serial));
    }
    if let Some(id) = &query.spiffe_id {
        sources.push(exact(IndexKind::SpiffeId, id.as_bytes()));
    }
    let text_filters = [
        (IndexKind::TrustDomain, &query.trust_domain),
        (IndexKind::Caller, &query.caller),
        (IndexKind::Cluster, &query.cluster_id),
        (IndexKind::Pod, &query.pod),
    ];
    for (kind, value) in text_filters {
        if let Some(value) = value {
            sources.push(exact(kind, value.as_bytes()));
        }
    }
    // Namespaces and service accounts are indexed with their mesh (`name \0 mesh`): with a
    // mesh filter one exact value (which also decides the mesh), without it one per mesh.
    let scoped = [
        (IndexKind::Namespace, query.namespace.clone()),
        (IndexKind::ServiceAccount, query.service_account_key()),
    ];
    let mut mesh_decided = false;
    for (kind, name) in scoped {
        let Some(name) = name else { continue };
        let mut value = name.into_bytes();
        value.push(MESH_SEPARATOR);
        match &query.mesh {
            Some(mesh) => {
                value.extend_from_slice(mesh.as_bytes());
                sources.push(exact(kind, &value));
                mesh_decided = true;
            }
            None => sources.push(Source {
                kind,
                selector: ValueSelector::Prefix(value),
            }),
        }
    }
    if let (Some(mesh), false) = (&query.mesh, mesh_decided) {
        sources.push(exact(IndexKind::Mesh, mesh.as_bytes()));
    }
    if let Some(Some(reason)) = query.outcome.as_ref().map(|o| match o {
        OutcomeFilter::Denied { reason } => reason.as_ref(),
        OutcomeFilter::Issued
        | OutcomeFilter::Revoked
        | OutcomeFilter::Federated
        | OutcomeFilter::CaKey => None,
    }) {
        sources.push(exact(
            IndexKind::Outcome,
            format!("{OUTCOME_DENIED_PREFIX}{reason}").as_bytes(),
        ));
    }
    if let Some(crate::domain::audit::RevokedSerials(serials)) = &query.revoked {
        sources.push(Source {
            kind: IndexKind::Serial,
            selector: ValueSelector::Values(serials.iter().cloned().collect()),
        });
    }
    if query.outcome == Some(OutcomeFilter::Revoked) {
        sources.push(exact(IndexKind::Outcome, OUTCOME_REVOKED.as_bytes()));
    }
    if query.outcome == Some(OutcomeFilter::Federated) {
        sources.push(exact(
            IndexKind::Outcome,
            crate::domain::audit::OUTCOME_FEDERATED.as_bytes(),
        ));
    }
    if query.outcome == Some(OutcomeFilter::CaKey) {
        sources.push(exact(
            IndexKind::Outcome,
            crate::domain::audit::OUTCOME_CA_KEY.as_bytes(),
        ));
    }
    if let Some(prefix) = &query.spiffe_id_prefix {
        match boundary_prefix(prefix) {
            Some(boundary) => sources.push(exact(IndexKind::SpiffePrefix, boundary.as_bytes())),
            None => sources.push(Source {
                kind: IndexKind::SpiffeId,
                selector: ValueSelector::Prefix(prefix.as_bytes().to_vec()),
            }),
        }
    }
    if sources.is_empty() {
        let validity = query.valid_at.is_some()
            || query.expires_after.is_some()
            || query.expires_before.is_some();
        if validity {
            // NotAfter > T for "valid at T" (whole seconds): NotAfter >= T + 1.
            let mut lo = i64::MIN;
            if let Some(at) = query.valid_at {
                lo = lo.max(crate::domain::clock::unix_seconds(at).saturating_add(1));
            }
            if let Some(after) = query.expires_after {
                lo = lo.max(crate::domain::clock::unix_seconds(after));
            }
            // Bounds that cross select nothing: an empty range, never an inverted one.
            let hi = query
                .expires_before
                .map(crate::domain::clock::unix_seconds)
                .unwrap_or(i64::MAX)
                .max(lo);
            return Plan::Expiry {
                lo: order_key(lo),
                hi: order_key(hi),
            };
        }
        match &query.outcome {
            Some(OutcomeFilter::Issued) => sources.push(Source {
                kind: IndexKind::Outcome,
                selector: ValueSelector::Values(vec![OUTCOME_ISSUED.as_bytes().to_vec()]),
            }),
            Some(OutcomeFilter::Denied { reason: None }) => sources.push(Source {
                kind: IndexKind::Outcome,
                selector: ValueSelector::Prefix(OUTCOME_DENIED_PREFIX.as_bytes().to_vec()),
            }),

            _ => return Plan::Sequence,
        }
    }
    Plan::Join(sources.into_iter().map(SourceSpec).collect())
}
