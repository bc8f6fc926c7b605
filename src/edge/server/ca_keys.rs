//! Before a server signs with a CA certificate, its log names it: where the key is (a file, or
//! a token's serial, key label and key id). At start and at each reload, the intermediates the
//! log does not name yet are recorded, durably, before the authority that signs with them
//! serves; a reload that cannot record them is refused, and the previous authority serves on.

use std::time::SystemTime;

use crate::adapters::store::SledStore;
use crate::domain::audit::{OutcomeFilter, Query};
use crate::domain::record::Outcome;
use crate::issuance::ca_key::{recorded_certificates, unrecorded_signers};
use crate::issuance::CertificateAuthority;

use super::error::ServeError;

/// Records each signing certificate of `authority` that no CA key record names yet.
pub(super) async fn record_ca_keys(
    authority: &CertificateAuthority,
    store: &SledStore,
    now: SystemTime,
) -> Result<(), ServeError> {
    let recorded = store.query_all(&Query {
        outcome: Some(OutcomeFilter::CaKey),
        ..Query::default()
    })?;
    for record in unrecorded_signers(authority, &recorded_certificates(&recorded), now) {
        let sequence = store.append_durable(record.clone()).await?;
        if let Outcome::CaKey(ca) = &record.outcome {
            tracing::info!(
                sequence,
                mesh = %ca.mesh,
                subject = %ca.subject,
                key = %ca.key,
                "a CA certificate taken into service is recorded with where its key is"
            );
        }
    }
    Ok(())
}
