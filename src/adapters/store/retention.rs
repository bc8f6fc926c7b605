//! Retention: records of certificates long expired, and old denials, are removed in the
//! background. A removed record's Merkle leaf data stays (in the `pruned` tree), so the log
//! still verifies and proofs of other records still work; the pruned bitmap hides it from
//! queries until a merge drops its index entries.
//!
//! Each batch is first written down (`prune-batch` in the meta tree) and cleared when done, so
//! a crash in the middle is finished at the next start: a record is never lost without its
//! leaf, and never half-removed.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

pub use crate::domain::audit::RetentionPolicy;
use crate::domain::audit::{OutcomeFilter, Position, Query};
use crate::domain::clock::unix_seconds;

use super::blocks;
use super::codec;
use super::error::StoreError;
use super::error::{read_error, write_error};
use super::keys::leaf_of_stored;
use super::keys::META_PRUNED_PREFIX;
use super::state::{Inner, SledStore};

/// Records removed per batch (each batch is one meta write before and after).
const BATCH: usize = 2_000;
const META_BATCH: &[u8] = b"prune-batch";
const META_ISSUED_THROUGH: &[u8] = b"prune-issued-through";
const META_DENIED_THROUGH: &[u8] = b"prune-denied-through";

/// What a pruning pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PruneReport {
    pub issued: u64,
    pub denied: u64,
}

impl SledStore {
    /// Removes the records `policy` no longer keeps, as of `now`. Runs beside issuance: it
    /// takes no lock an append needs, and works in small batches.
    pub(crate) fn prune(
        &self,
        policy: &RetentionPolicy,
        now: SystemTime,
    ) -> Result<PruneReport, StoreError> {
        self.inner.prune(policy, now)
    }
}

impl Inner {
    fn prune(&self, policy: &RetentionPolicy, now: SystemTime) -> Result<PruneReport, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let _one_at_a_time = self.pruning.lock().unwrap_or_else(|p| p.into_inner());
        self.finish_interrupted_batch()?;
        let mut report = PruneReport::default();

        // Issuances whose certificate expired before the cutoff, in expiry order, from where
        // the last pass stopped.
        let issued_cutoff = now
            .checked_sub(policy.issued_after_expiry)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let issued_from = self.meta_i64(META_ISSUED_THROUGH)?;
        let expired = Query {
            expires_after: issued_from.map(crate::domain::clock::from_unix_seconds),
            expires_before: Some(issued_cutoff),
            ..Query::default()
        };
        report.issued = self.prune_matches(&expired, None)?;
        self.meta
            .insert(
                META_ISSUED_THROUGH,
                &unix_seconds(issued_cutoff).to_be_bytes(),
            )
            .map_err(write_error)?;

        // Denials recorded before the cutoff.
        let denied_cutoff = now
            .checked_sub(policy.denials)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let old_denials = Query {
            outcome: Some(OutcomeFilter::Denied { reason: None }),
            until: Some(denied_cutoff),
            ..Query::default()
        };
        let denied_from = self
            .meta_i64(META_DENIED_THROUGH)?
            .map(|through| Position::Sequence(through as u64 + 1));
        report.denied = self.prune_matches(&old_denials, denied_from)?;
        let (_, through) = self.sequence_bounds(&old_denials)?;
        self.meta
            .insert(META_DENIED_THROUGH, &through.to_be_bytes())
            .map_err(write_error)?;
        self.db
            .flush()
            .map_err(|e| StoreError::Flush(Arc::new(e)))?;
        if report != PruneReport::default() {
            tracing::info!(
                issued = report.issued,
                denied = report.denied,
                "records past retention pruned"
            );
        }
        Ok(report)
    }

    /// Prunes every record `query` selects from `start` on, a batch at a time.
    fn prune_matches(&self, query: &Query, mut start: Option<Position>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            let mut next = None;
            self.run_query(query, start, &mut |position| {
                if batch.len() == BATCH {
                    next = Some(position);
                    return false;
                }
                batch.push(match position {
                    Position::Sequence(sequence) | Position::Expiry(_, sequence) => sequence,
                });
                true
            })
            .map_err(|error| match error {
                super::error::AuditError::Store(error) => error,
                other => StoreError::Corrupt {
                    key: other.to_string(),
                },
            })?;
            total += self.prune_batch(&batch)?;
            match next {
                Some(position) => start = Some(position),
                None => return Ok(total),
            }
            if self.commit.closed.load(Ordering::SeqCst) {
                return Ok(total);
            }
        }
    }

    /// Keeps each record's leaf, removes the record, marks it pruned.
    fn prune_batch(&self, sequences: &[u64]) -> Result<u64, StoreError> {
        if sequences.is_empty() {
            return Ok(0);
        }
        let mut listed = Vec::new();
        for sequence in sequences {
            codec::put_varint(&mut listed, *sequence);
        }
        self.meta.insert(META_BATCH, listed).map_err(write_error)?;
        let removed = self.remove(sequences)?;
        self.meta.remove(META_BATCH).map_err(write_error)?;
        Ok(removed)
    }

    fn remove(&self, sequences: &[u64]) -> Result<u64, StoreError> {
        // First every leaf, then the records: a record is never gone without its leaf.
        let mut gone = Vec::with_capacity(sequences.len());
        for &sequence in sequences {
            if let Some(stored) = blocks::get(&self.records, sequence)? {
                let leaf = leaf_of_stored(&stored).ok_or(StoreError::Corrupt {
                    key: format!("record {sequence}"),
                })?;
                self.pruned
                    .insert(sequence.to_be_bytes(), leaf.to_bytes().to_vec())
                    .map_err(write_error)?;
                gone.push(sequence);
            } else if self
                .pruned
                .contains_key(sequence.to_be_bytes())
                .map_err(read_error)?
            {
                gone.push(sequence);
            }
        }
        let mut in_order = gone.clone();
        in_order.sort_unstable();
        let removed = blocks::remove(&self.records, &self.blocks, &in_order)?;
        let chunks: BTreeSet<u64> = {
            let mut set = self.pruned_set.write().unwrap_or_else(|p| p.into_inner());
            gone.iter().map(|s| set.insert(*s)).collect()
        };
        let set = self.pruned_set();
        for chunk in chunks {
            let mut key = META_PRUNED_PREFIX.to_vec();
            key.extend_from_slice(&chunk.to_be_bytes());
            self.meta
                .insert(key, set.chunk_bytes(chunk))
                .map_err(write_error)?;
        }
        Ok(removed)
    }

    /// Completes a batch a crash interrupted (at start, and before each pass).
    pub(super) fn finish_interrupted_batch(&self) -> Result<(), StoreError> {
        let Some(listed) = self.meta.get(META_BATCH).map_err(read_error)? else {
            return Ok(());
        };
        let mut input = listed.as_ref();
        let mut sequences = Vec::new();
        while !input.is_empty() {
            sequences.push(codec::get_varint(&mut input).ok_or(StoreError::Corrupt {
                key: "prune-batch".into(),
            })?);
        }
        tracing::info!(
            records = sequences.len(),
            "finishing a pruning batch interrupted by a restart"
        );
        self.remove(&sequences)?;
        self.meta.remove(META_BATCH).map_err(write_error)?;
        Ok(())
    }

    fn meta_i64(&self, key: &[u8]) -> Result<Option<i64>, StoreError> {
        Ok(self
            .meta
            .get(key)
            .map_err(read_error)?
            .and_then(|bytes| bytes.as_ref().try_into().ok().map(i64::from_be_bytes)))
    }
}
