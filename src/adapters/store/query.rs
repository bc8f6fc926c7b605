//! Reading: audit queries served from the indexes, records and log entries by sequence, tree
//! views and inclusion proofs, statistics.

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::domain::audit::merkle::{self};
use crate::domain::audit::{
    LeafData, Page, PageToken, Position, Query, QueryError, LEAF_HEADER_LEN, MAX_PAGE_SIZE,
};
use crate::domain::clock::{from_unix_millis, unix_millis};
use crate::domain::record::Record;

use super::answers::{InclusionProof, LogEntry, Stats};
use super::blocks;
use super::error::{corrupt, read_error, AuditError, StoreError};
use super::index::{self, Plan, Snapshot};
use super::keys::{decode_stored, leaf_of_stored};
use super::state::{Inner, PARALLEL_FETCH};
use super::tiles::TreeView;

impl Inner {
    pub(super) fn query(
        &self,
        query: &Query,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page, AuditError> {
        query.validate()?;
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let start = page_token
            .map(|token| PageToken::decode(token, query))
            .transpose()?
            .map(|token| token.position);
        let mut positions = Vec::with_capacity(page_size + 1);
        self.run_query(query, start, &mut |position| {
            positions.push(position);
            positions.len() <= page_size
        })?;
        let next_page_token = positions.get(page_size).map(|position| {
            PageToken {
                fingerprint: query.fingerprint(),
                position: *position,
            }
            .encode()
        });
        let sequences: Vec<u64> = positions
            .iter()
            .take(page_size)
            .map(|position| match position {
                Position::Sequence(sequence) | Position::Expiry(_, sequence) => *sequence,
            })
            .collect();
        Ok(Page {
            records: self.fetch(&sequences)?,
            next_page_token,
        })
    }

    /// The records with these sequence numbers, in the order given (a record pruned since the
    /// query found it is simply left out). Reads them in sequence order, which sled serves
    /// faster, and large pages on two threads: a page's records are scattered over the log.
    pub(super) fn fetch(&self, sequences: &[u64]) -> Result<Vec<Record>, StoreError> {
        let mut sorted: Vec<(usize, u64)> = sequences.iter().copied().enumerate().collect();
        sorted.sort_unstable_by_key(|(_, sequence)| *sequence);
        let read = |part: &[(usize, u64)]| -> Result<Vec<(usize, Record)>, StoreError> {
            let in_order: Vec<u64> = part.iter().map(|(_, sequence)| *sequence).collect();
            let packed = self.packed.load(Ordering::SeqCst);
            let stored = blocks::get_sorted(&self.records, &self.blocks, packed, &in_order)?;
            let mut out = Vec::with_capacity(part.len());
            for ((at, sequence), stored) in part.iter().zip(stored) {
                if let Some(stored) = stored {
                    out.push((*at, decode_stored(*sequence, &stored)?));
                }
            }
            Ok(out)
        };
        let mut found = if sorted.len() >= PARALLEL_FETCH {
            let (first, second) = sorted.split_at(sorted.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| read(second));
                let mut found = read(first)?;
                found.extend(other.join().unwrap_or(Err(StoreError::Closed))?);
                Ok::<_, StoreError>(found)
            })?
        } else {
            read(&sorted)?
        };
        found.sort_unstable_by_key(|(at, _)| *at);
        Ok(found.into_iter().map(|(_, record)| record).collect())
    }

    pub(super) fn count(&self, query: &Query) -> Result<u64, AuditError> {
        query.validate()?;
        let plan = index::plan(query);
        if plan == Plan::Sequence {
            let (lo, hi) = self.sequence_bounds(query)?;
            let span = (hi + 1).saturating_sub(lo);
            return Ok(span - self.pruned_set().count_in(lo, hi).min(span));
        }
        let mut count = 0u64;
        self.run_query(query, None, &mut |_| {
            count += 1;
            true
        })?;
        Ok(count)
    }

    /// Walks the matches of `query` in result order from `start`.
    pub(super) fn run_query(
        &self,
        query: &Query,
        start: Option<Position>,
        visit: &mut dyn FnMut(Position) -> bool,
    ) -> Result<(), AuditError> {
        let plan = index::plan(query);
        let (lo, hi) = self.sequence_bounds(query)?;
        if plan == Plan::Sequence {
            let from = match start {
                Some(Position::Sequence(next)) => next.max(lo),
                _ => lo,
            };
            for entry in blocks::range(&self.records, from, hi) {
                let (sequence, _) = entry?;
                if !visit(Position::Sequence(sequence)) {
                    break;
                }
            }
            return Ok(());
        }
        let snapshot = Snapshot::take(&self.index, &self.read_state(), &plan);
        let pruned = self.pruned_set();
        index::walk(
            &snapshot,
            &plan,
            lo,
            hi,
            start,
            &|sequence, summary| !pruned.contains(sequence) && query.summary_matches(summary),
            visit,
        )?;
        Ok(())
    }

    /// The sequence numbers a query's time range covers.
    pub(super) fn sequence_bounds(&self, query: &Query) -> Result<(u64, u64), StoreError> {
        let last = self.written.load(Ordering::SeqCst);
        let lo = match query.since {
            Some(since) => self.first_sequence_at_or_after(unix_millis(since), last)?,
            None => 1,
        };
        let hi = match query.until {
            Some(until) => self
                .first_sequence_at_or_after(unix_millis(until), last)?
                .saturating_sub(1),
            None => last,
        };
        Ok((lo, hi.min(last)))
    }

    /// The smallest sequence number recorded at or after `millis` (`last + 1` if none): a
    /// binary search over the records, whose times never decrease, narrowed first by
    /// [`Inner::block_bounds`].
    pub(super) fn first_sequence_at_or_after(
        &self,
        millis: i64,
        last: u64,
    ) -> Result<u64, StoreError> {
        let (mut lo, mut hi) = self.block_bounds(millis, last)?;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at_or_after = match blocks::range(&self.records, mid, last).next().transpose()? {
                // The header alone: the recording time (a damaged one sorts last).
                Some((_, stored)) => LeafData::parse_header(&stored)
                    .map(|header| header.recorded_at_ms >= millis)
                    .unwrap_or(true),
                // Only pruned records from `mid` on: nothing there.
                None => true,
            };
            if at_or_after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// The sequence numbers (`lo .. hi`) between which the first record at or after `millis`
    /// lies, from the packed blocks' first records' times, which are read without
    /// decompressing a block: one block, or the records not packed yet.
    fn block_bounds(&self, millis: i64, last: u64) -> Result<(u64, u64), StoreError> {
        let packed_blocks = self.packed.load(Ordering::SeqCst).min(last) / blocks::BLOCK_RECORDS;
        if packed_blocks == 0 {
            return Ok((1, last + 1));
        }
        let start_of = |block: u64| block * blocks::BLOCK_RECORDS + 1;
        let through = start_of(packed_blocks - 1);
        // The first kept block at or after `block`, if it starts at or after `millis`.
        let probe = |block: u64| blocks::first_block_from(&self.records, start_of(block), through);
        let (mut lo, mut hi) = (0, packed_blocks);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match probe(mid)? {
                Some((_, first_ms)) if first_ms < millis => lo = mid + 1,
                _ => hi = mid,
            }
        }
        // Block `lo - 1` (kept, or the probe would have gone past it) starts before `millis`:
        // the answer is in it, or is the first record of the next kept block, or after the
        // packed blocks.
        let from = start_of(lo.saturating_sub(1));
        let to = match (lo < packed_blocks)
            .then(|| probe(lo))
            .transpose()?
            .flatten()
        {
            Some((start, _)) => start + blocks::BLOCK_RECORDS,
            None => last + 1,
        };
        Ok((from, to.min(last + 1)))
    }

    pub(super) fn get(&self, sequence: u64) -> Result<Option<Record>, StoreError> {
        match blocks::get(&self.records, sequence)? {
            Some(stored) => decode_stored(sequence, &stored).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn entries(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        entries_between(&self.records, &self.pruned, from, to, limit)
    }

    /// The tree as of `size` records (at most the records appended).
    pub(super) fn tree_view(&self, size: u64) -> Result<TreeView<'_>, AuditError> {
        let state = self.read_state();
        let last = self.written.load(Ordering::SeqCst);
        if size > last {
            return Err(AuditError::Query(QueryError::Invalid(format!(
                "the log holds {last} records, not {size}"
            ))));
        }
        let watermark = state.watermark.min(size);
        let tail = if size > watermark {
            state
                .tail_leaves(watermark + 1, size)
                .ok_or_else(|| StoreError::Corrupt {
                    key: "in-memory Merkle leaves".into(),
                })?
        } else {
            Vec::new()
        };
        Ok(TreeView {
            tiles: &self.tiles,
            watermark,
            tail,
        })
    }

    pub(super) fn prove_inclusion(
        &self,
        sequence: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, AuditError> {
        if sequence == 0 || sequence > tree_size {
            return Err(AuditError::Query(QueryError::Invalid(format!(
                "record {sequence} is not in a tree of {tree_size} records"
            ))));
        }
        let entry = self
            .entries(sequence, sequence, 1)?
            .into_iter()
            .next()
            .ok_or_else(|| AuditError::NotFound(format!("no record {sequence}")))?;
        let leaf = entry.leaf().ok_or(StoreError::Corrupt {
            key: format!("record {sequence}"),
        })?;
        let view = self.tree_view(tree_size)?;
        let path = merkle::inclusion_proof(&view, sequence - 1, tree_size)?.unwrap_or_default();
        let record = match entry {
            LogEntry::Record { stored, .. } => Some(stored[LEAF_HEADER_LEN..].to_vec()),
            LogEntry::Pruned { .. } => None,
        };
        Ok(InclusionProof {
            leaf_index: sequence - 1,
            tree_size,
            leaf,
            record,
            path,
        })
    }

    pub(super) fn stats(&self) -> Result<Stats, StoreError> {
        let appended = self.written.load(Ordering::SeqCst);
        let pruned = self.pruned_set().len();
        let (first, last) = blocks::first_and_last(&self.records)?;
        let oldest =
            first.and_then(|(sequence, stored)| Some((sequence, leaf_of_stored(&stored)?)));
        let newest = last.and_then(|(_, stored)| leaf_of_stored(&stored));
        let state = self.read_state();
        let latest = self.checkpoints.last().map_err(read_error)?;
        Ok(Stats {
            appended,
            records: appended - pruned.min(appended),
            pruned,
            oldest_sequence: oldest.map(|(sequence, _)| sequence),
            oldest_recorded_at: oldest.map(|(_, leaf)| from_unix_millis(leaf.recorded_at_ms)),
            newest_recorded_at: newest.map(|leaf| from_unix_millis(leaf.recorded_at_ms)),
            index_runs: state.runs.len(),
            index_tail_records: state.tail_len(),
            checkpoints: self.checkpoints.len(),
            latest_checkpoint_size: latest
                .and_then(|(key, _)| key.as_ref().try_into().ok().map(u64::from_be_bytes)),
            disk_bytes: directory_size(&self.path),
        })
    }
}

/// Log entries `from ..= to`, merging the records and the pruned leaves, at most `limit`.
pub(super) fn entries_between(
    records: &sled::Tree,
    pruned: &sled::Tree,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<LogEntry>, StoreError> {
    if from > to {
        return Ok(Vec::new());
    }
    let keyed = |entry: Result<(sled::IVec, sled::IVec), sled::Error>, skip: usize| {
        let (key, value) = entry.map_err(read_error)?;
        let sequence = key
            .get(skip..)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| corrupt(&key))?;
        Ok::<_, StoreError>((sequence, value))
    };
    let mut present = blocks::range(records, from, to).peekable();
    let mut removed = pruned
        .range(from.to_be_bytes()..=to.to_be_bytes())
        .map(|entry| keyed(entry, 0))
        .peekable();
    let mut out = Vec::new();
    while out.len() < limit {
        let next_record = peek_sequence(&mut present)?;
        let next_pruned = peek_sequence(&mut removed)?;
        let take_record = match (next_record, next_pruned) {
            (None, None) => break,
            (Some(record), Some(pruned)) => record <= pruned,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_record {
            let Some(Ok((sequence, stored))) = present.next() else {
                break;
            };
            if next_pruned == Some(sequence) {
                // Both present: the record wins; verification reports the inconsistency.
                removed.next();
            }
            out.push(LogEntry::Record {
                sequence,
                stored: stored.to_vec(),
            });
        } else {
            let Some(Ok((sequence, bytes))) = removed.next() else {
                break;
            };
            let leaf = LeafData::parse(&bytes).ok_or(StoreError::Corrupt {
                key: format!("pruned leaf {sequence}"),
            })?;
            out.push(LogEntry::Pruned { sequence, leaf });
        }
    }
    Ok(out)
}

/// The sequence number of the next entry, taking an error out of the iterator.
pub(super) fn peek_sequence<I>(
    entries: &mut std::iter::Peekable<I>,
) -> Result<Option<u64>, StoreError>
where
    I: Iterator<Item = Result<(u64, sled::IVec), StoreError>>,
{
    match entries.peek() {
        None => Ok(None),
        Some(Ok((sequence, _))) => Ok(Some(*sequence)),
        Some(Err(_)) => match entries.next() {
            Some(Err(error)) => Err(error),
            _ => Ok(None),
        },
    }
}

/// Bytes in the files under `path`.
pub(super) fn directory_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
