//! SPIFFE bundles this replica keeps: the sequence it serves for each of its trust domains, and
//! the last good bundle fetched from each partner (so a restart with the partner down still
//! trusts it).

use std::time::SystemTime;

use crate::domain::federation::bundle::next_sequence;

use super::error::{corrupt, read_error, write_error, StoreError};
use super::state::SledStore;

/// `bundle-sequence/<trust domain>` → SHA-256 of the authorities last served (32 bytes), then
/// the sequence served for them (8 bytes, big-endian).
const META_BUNDLE_SEQUENCE_PREFIX: &[u8] = b"bundle-sequence/";

impl SledStore {
    /// The `spiffe_sequence` to serve for `trust_domain`'s bundle, whose authorities hash to
    /// `digest` and imply `content` (`federation::bundle::content_sequence`): kept durably, so
    /// it survives restarts and never falls.
    pub(crate) fn served_bundle_sequence(
        &self,
        trust_domain: &str,
        digest: [u8; 32],
        content: u64,
    ) -> Result<u64, StoreError> {
        let key = [META_BUNDLE_SEQUENCE_PREFIX, trust_domain.as_bytes()].concat();
        loop {
            let stored = self.inner.meta.get(&key).map_err(read_error)?;
            let previous = match &stored {
                None => None,
                Some(value) => {
                    let (last, sequence) =
                        value.split_at_checked(32).ok_or_else(|| corrupt(&key))?;
                    let last: [u8; 32] = last.try_into().map_err(|_| corrupt(&key))?;
                    let sequence: [u8; 8] = sequence.try_into().map_err(|_| corrupt(&key))?;
                    Some((last, u64::from_be_bytes(sequence)))
                }
            };
            let sequence = next_sequence(previous, digest, content);
            if previous == Some((digest, sequence)) || self.inner.read_only {
                return Ok(sequence);
            }
            let value = [digest.as_slice(), &sequence.to_be_bytes()].concat();
            let swapped = self
                .inner
                .meta
                .compare_and_swap(&key, stored, Some(value))
                .map_err(write_error)?;
            if swapped.is_ok() {
                self.flush()?;
                return Ok(sequence);
            }
            // Another request changed it first: read again.
        }
    }
}

/// `partner-bundle/<mesh>/<trust domain>` → when it was fetched (Unix milliseconds, 8 bytes,
/// big-endian), then the partner's bundle document as fetched.
const META_PARTNER_BUNDLE_PREFIX: &[u8] = b"partner-bundle/";

fn partner_key(mesh: &str, trust_domain: &str) -> Vec<u8> {
    [
        META_PARTNER_BUNDLE_PREFIX,
        mesh.as_bytes(),
        b"/",
        trust_domain.as_bytes(),
    ]
    .concat()
}

/// A partner's last good bundle document, and when it was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptPartnerBundle {
    pub document: Vec<u8>,
    pub fetched_at: SystemTime,
}

impl SledStore {
    /// The last good bundle fetched for `mesh`'s partner `trust_domain`, if any.
    pub(crate) fn partner_bundle(
        &self,
        mesh: &str,
        trust_domain: &str,
    ) -> Result<Option<KeptPartnerBundle>, StoreError> {
        let key = partner_key(mesh, trust_domain);
        let Some(value) = self.inner.meta.get(&key).map_err(read_error)? else {
            return Ok(None);
        };
        let (at, document) = value.split_at_checked(8).ok_or_else(|| corrupt(&key))?;
        let at: [u8; 8] = at.try_into().map_err(|_| corrupt(&key))?;
        Ok(Some(KeptPartnerBundle {
            document: document.to_vec(),
            fetched_at: crate::domain::clock::from_unix_millis(i64::from_be_bytes(at)),
        }))
    }

    /// Keeps `document` as `mesh`'s partner `trust_domain`'s last good bundle, durably.
    pub(crate) fn keep_partner_bundle(
        &self,
        mesh: &str,
        trust_domain: &str,
        kept: &KeptPartnerBundle,
    ) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Err(StoreError::ReadOnly);
        }
        let value = [
            crate::domain::clock::unix_millis(kept.fetched_at)
                .to_be_bytes()
                .as_slice(),
            &kept.document,
        ]
        .concat();
        self.inner
            .meta
            .insert(partner_key(mesh, trust_domain), value)
            .map_err(write_error)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::{OutcomeFilter, Query};
    use crate::domain::record::{CallerRecord, FederationRecord, Outcome, Record};

    #[test]
    fn the_served_sequence_is_kept_and_only_rises() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (old, new) = ([1u8; 32], [2u8; 32]);
        assert_eq!(
            store.served_bundle_sequence("b.example", old, 100).unwrap(),
            100
        );
        assert_eq!(
            store.served_bundle_sequence("b.example", old, 100).unwrap(),
            100
        );
        assert_eq!(
            store.served_bundle_sequence("b.example", new, 200).unwrap(),
            200
        );
        // Back to content whose number is lower: one more than the last served.
        assert_eq!(
            store.served_bundle_sequence("b.example", old, 100).unwrap(),
            201
        );
        // Another trust domain has its own.
        assert_eq!(
            store.served_bundle_sequence("a.example", old, 100).unwrap(),
            100
        );
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.served_bundle_sequence("b.example", old, 100).unwrap(),
            201
        );
    }

    #[test]
    fn a_partners_bundle_is_kept_per_mesh_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.partner_bundle("b", "p.example").unwrap(), None);
        let kept = KeptPartnerBundle {
            document: b"{\"keys\": []}".to_vec(),
            fetched_at: crate::domain::clock::from_unix_millis(1_800_000_000_123),
        };
        store.keep_partner_bundle("b", "p.example", &kept).unwrap();
        assert_eq!(store.partner_bundle("b", "p.example").unwrap(), Some(kept));
        assert_eq!(store.partner_bundle("a", "p.example").unwrap(), None);
    }

    #[test]
    fn partner_bundle_changes_are_found_by_their_outcome_and_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let record = Record::new(
            "r".into(),
            SystemTime::now(),
            CallerRecord::default(),
            Outcome::Federated(FederationRecord {
                mesh: "b".into(),
                trust_domain: "p.example".into(),
                sequence: 3,
                ..Default::default()
            }),
        );
        runtime.block_on(store.append_durable(record)).unwrap();
        for query in [
            Query {
                outcome: Some(OutcomeFilter::Federated),
                ..Query::default()
            },
            Query {
                trust_domain: Some("p.example".into()),
                ..Query::default()
            },
            Query {
                mesh: Some("b".into()),
                outcome: Some(OutcomeFilter::Federated),
                ..Query::default()
            },
        ] {
            assert_eq!(store.query_all(&query).unwrap().len(), 1, "{query:?}");
        }
        let issued = Query {
            outcome: Some(OutcomeFilter::Issued),
            ..Query::default()
        };
        assert!(store.query_all(&issued).unwrap().is_empty());
    }
}
