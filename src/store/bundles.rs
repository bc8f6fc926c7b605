//! SPIFFE bundles this replica keeps: the sequence it serves for each of its trust domains, and
//! the last good bundle fetched from each partner (so a restart with the partner down still
//! trusts it).

use super::*;
use crate::federation::bundle::next_sequence;

/// `bundle-sequence/<trust domain>` → SHA-256 of the authorities last served (32 bytes), then
/// the sequence served for them (8 bytes, big-endian).
const META_BUNDLE_SEQUENCE_PREFIX: &[u8] = b"bundle-sequence/";

impl SledStore {
    /// The `spiffe_sequence` to serve for `trust_domain`'s bundle, whose authorities hash to
    /// `digest` and imply `content` (`federation::bundle::content_sequence`): kept durably, so
    /// it survives restarts and never falls.
    pub fn served_bundle_sequence(
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
    pub fn partner_bundle(
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
            fetched_at: crate::clock::from_unix_millis(i64::from_be_bytes(at)),
        }))
    }

    /// Keeps `document` as `mesh`'s partner `trust_domain`'s last good bundle, durably.
    pub fn keep_partner_bundle(
        &self,
        mesh: &str,
        trust_domain: &str,
        kept: &KeptPartnerBundle,
    ) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Err(StoreError::ReadOnly);
        }
        let value = [
            crate::clock::unix_millis(kept.fetched_at)
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
