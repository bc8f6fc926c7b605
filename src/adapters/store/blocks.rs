//! Records packed into blocks: [`BLOCK_RECORDS`] consecutive records under one sled key.
//!
//! A record is first written under its own key (`r` + sequence), so it is durable the moment
//! the group commit flushes it. Once the indexer has persisted the segment that holds it, the
//! records of each whole block are moved under the block's key (`b` + the block's first
//! sequence): the block is written, then the single keys removed. One key per block rather than
//! per record is what keeps sled's page table (held in memory, one entry per tree node) from
//! growing with every record kept, and it gives zstd a block of similar records to work on.
//!
//! Reads take both forms: a record is looked for under its own key and then in its block. In
//! that order a read cannot miss a record being packed, since the block is written before the
//! single keys go; a scan that meets a record in both takes it once. Stores written before blocks existed (layout 2) hold only
//! single keys; they are read as they are, and the indexer packs their old records in the
//! background, block by block, oldest first.
//!
//! A block's value is the recording time of its first record (`i64` milliseconds, big-endian,
//! left uncompressed so a search by time reads it without decompressing the block), then one
//! zstd frame (the `zstd` crate, level 3) of: a `u32` count, then per record its `u64` sequence
//! and `u32` length (all big-endian), then the records' stored bytes one after another. A block of similar records compresses well; compressing here, in the
//! background, rather than turning on sled's own compression keeps zstd off the issuance
//! path (sled compresses every write it makes, which more than halved the durable append rate
//! here: docs/performance.md).

use std::collections::{HashMap, VecDeque};
use std::iter::Peekable;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use sled::IVec;

use crate::domain::audit::LeafData;

use super::error::{corrupt, read_error, write_error, StoreError};
use super::keys::{record_key, BLOCK_PREFIX};

/// Records per block.
pub(super) const BLOCK_RECORDS: u64 = 32;

/// zstd's level for blocks: its default, most of the higher levels' gain for little CPU (the
/// indexer packs in the background; reads decompress one block per record).
const ZSTD_LEVEL: i32 = 3;

/// A block decompresses to at most this (a corrupt length cannot make a read allocate more).
const MAX_BLOCK_BYTES: usize = 16 << 20;

const COUNT_LEN: usize = 4;
const ENTRY_LEN: usize = 12;
/// The first record's recording time, ahead of the compressed frame.
const TIME_LEN: usize = 8;

/// Decompressed blocks kept for pages (two generations of half this each): a page of 100
/// scattered records is up to 100 blocks, and an auditor pages the same recent ones again.
/// About 17 KiB each with istio-agent's records, so ~17 MiB at most.
const CACHED_BLOCKS: usize = 1_024;

/// The first sequence number of the block that holds `sequence` (sequences start at 1).
pub(super) fn block_start(sequence: u64) -> u64 {
    sequence.saturating_sub(1) / BLOCK_RECORDS * BLOCK_RECORDS + 1
}

pub(super) fn block_key(start: u64) -> [u8; 9] {
    let mut key = [BLOCK_PREFIX; 9];
    key[1..].copy_from_slice(&start.to_be_bytes());
    key
}

fn start_of_block_key(key: &[u8]) -> Option<u64> {
    (key.first() == Some(&BLOCK_PREFIX))
        .then(|| key.get(1..9)?.try_into().ok().map(u64::from_be_bytes))
        .flatten()
}

/// A block's records, in sequence order: each one's sequence and where its bytes are.
fn parse(value: &[u8]) -> Option<Vec<(u64, Range<usize>)>> {
    let count = u32::from_be_bytes(value.get(..COUNT_LEN)?.try_into().ok()?) as usize;
    let header_end = COUNT_LEN.checked_add(count.checked_mul(ENTRY_LEN)?)?;
    let header = value.get(COUNT_LEN..header_end)?;
    let mut at = header_end;
    let mut out = Vec::with_capacity(count);
    for entry in header.chunks_exact(ENTRY_LEN) {
        let sequence = u64::from_be_bytes(entry[..8].try_into().ok()?);
        let len = u32::from_be_bytes(entry[8..].try_into().ok()?) as usize;
        let end = at.checked_add(len)?;
        if end > value.len() || out.last().is_some_and(|(last, _)| *last >= sequence) {
            return None;
        }
        out.push((sequence, at..end));
        at = end;
    }
    (at == value.len()).then_some(out)
}

/// The value of a block holding these records (in sequence order), compressed.
pub(super) fn seal<'a>(
    records: impl ExactSizeIterator<Item = (u64, &'a [u8])> + Clone,
) -> Result<Vec<u8>, StoreError> {
    // A first record without a readable header (a damaged store) sorts after every time, as
    // the record-level search takes it.
    let first_ms = records
        .clone()
        .next()
        .and_then(|(_, stored)| LeafData::parse_header(stored))
        .map_or(i64::MAX, |header| header.recorded_at_ms);
    let frame = zstd::bulk::compress(&encode(records), ZSTD_LEVEL).map_err(|error| {
        StoreError::Corrupt {
            key: format!("a block could not be compressed: {error}"),
        }
    })?;
    let mut value = Vec::with_capacity(TIME_LEN + frame.len());
    value.extend_from_slice(&first_ms.to_be_bytes());
    value.extend_from_slice(&frame);
    Ok(value)
}

/// The first block whose start is in `from ..= through`: its start and its first record's
/// recording time, read without decompressing it.
pub(super) fn first_block_from(
    records: &sled::Tree,
    from: u64,
    through: u64,
) -> Result<Option<(u64, i64)>, StoreError> {
    let Some((key, value)) = records
        .range(block_key(block_start(from))..=block_key(block_start(through)))
        .next()
        .transpose()
        .map_err(read_error)?
    else {
        return Ok(None);
    };
    let start = start_of_block_key(&key).ok_or_else(|| corrupt(&key))?;
    Ok(Some((start, first_time(&key, &value)?)))
}

/// The recording time of a block's first record, from its value (not decompressed).
fn first_time(key: &[u8], value: &[u8]) -> Result<i64, StoreError> {
    value
        .get(..TIME_LEN)
        .and_then(|bytes| bytes.try_into().ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| corrupt(key))
}

/// A block's records, uncompressed.
fn encode<'a>(records: impl ExactSizeIterator<Item = (u64, &'a [u8])> + Clone) -> Vec<u8> {
    let body: usize = records.clone().map(|(_, stored)| stored.len()).sum();
    let mut out = Vec::with_capacity(COUNT_LEN + records.len() * ENTRY_LEN + body);
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for (sequence, stored) in records.clone() {
        out.extend_from_slice(&sequence.to_be_bytes());
        out.extend_from_slice(&(stored.len() as u32).to_be_bytes());
    }
    for (_, stored) in records {
        out.extend_from_slice(stored);
    }
    out
}

/// The records of the block stored under `key`, as slices of its uncompressed value.
fn entries_of(key: &[u8], value: &IVec) -> Result<Vec<(u64, IVec)>, StoreError> {
    let frame = value.get(TIME_LEN..).ok_or_else(|| corrupt(key))?;
    let value =
        IVec::from(zstd::bulk::decompress(frame, MAX_BLOCK_BYTES).map_err(|_| corrupt(key))?);
    let entries = parse(&value).ok_or_else(|| corrupt(key))?;
    Ok(entries
        .into_iter()
        .map(|(sequence, range)| (sequence, value.subslice(range.start, range.len())))
        .collect())
}

/// The stored bytes of records (`sequences` in ascending order), each block decompressed once
/// however many of its records are asked for (a time range's page is a few blocks), and kept
/// in `cache` for the next page. Records at or below `packed` (every block through it was
/// packed before this read began) are read from their block only.
pub(super) fn get_sorted(
    records: &sled::Tree,
    cache: &BlockCache,
    packed: u64,
    sequences: &[u64],
) -> Result<Vec<Option<IVec>>, StoreError> {
    let mut out = Vec::with_capacity(sequences.len());
    let mut block: Option<(u64, Arc<Vec<Entry>>)> = None;
    for &sequence in sequences {
        if sequence > packed {
            if let Some(stored) = records.get(record_key(sequence)).map_err(read_error)? {
                out.push(Some(stored));
                continue;
            }
        }
        let start = block_start(sequence);
        if block.as_ref().map(|(at, _)| *at) != Some(start) {
            block = Some((start, cache.entries(records, start)?));
        }
        out.push(block.as_ref().and_then(|(_, entries)| {
            entries
                .binary_search_by_key(&sequence, |(at, _)| *at)
                .ok()
                .map(|at| entries[at].1.clone())
        }));
    }
    Ok(out)
}

/// Decompressed blocks, for pages of scattered records ([`CACHED_BLOCKS`] at most). Every
/// write of a block goes through [`BlockCache::forget`].
#[derive(Default)]
pub(super) struct BlockCache {
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// Counts block writes: a read that began before one does not fill the cache, so a block
    /// rewritten while it was read is never kept in its old form.
    writes: u64,
    recent: HashMap<u64, Arc<Vec<Entry>>>,
    older: HashMap<u64, Arc<Vec<Entry>>>,
}

impl CacheState {
    fn keep(&mut self, start: u64, entries: Arc<Vec<Entry>>) {
        self.recent.insert(start, entries);
        if self.recent.len() >= CACHED_BLOCKS / 2 {
            // The older generation goes whole: what was used since is in the recent one.
            self.older = std::mem::take(&mut self.recent);
        }
    }
}

impl BlockCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The records of the block starting at `start` (none if there is no such block).
    pub(super) fn entries(
        &self,
        records: &sled::Tree,
        start: u64,
    ) -> Result<Arc<Vec<Entry>>, StoreError> {
        let writes = {
            let mut state = self.lock();
            if let Some(hit) = state.recent.get(&start) {
                return Ok(Arc::clone(hit));
            }
            if let Some(hit) = state.older.remove(&start) {
                state.keep(start, Arc::clone(&hit));
                return Ok(hit);
            }
            state.writes
        };
        let key = block_key(start);
        let entries = Arc::new(match records.get(key).map_err(read_error)? {
            Some(value) => entries_of(&key, &value)?,
            None => return Ok(Arc::default()),
        });
        let mut state = self.lock();
        if state.writes == writes {
            state.keep(start, Arc::clone(&entries));
        }
        Ok(entries)
    }

    /// Called after the block starting at `start` is written or removed.
    fn forget(&self, start: u64) {
        let mut state = self.lock();
        state.writes += 1;
        state.recent.remove(&start);
        state.older.remove(&start);
    }
}

/// One record's stored bytes, under its own key or in its block.
pub(super) fn get(records: &sled::Tree, sequence: u64) -> Result<Option<IVec>, StoreError> {
    if let Some(stored) = records.get(record_key(sequence)).map_err(read_error)? {
        return Ok(Some(stored));
    }
    let key = block_key(block_start(sequence));
    let Some(value) = records.get(key).map_err(read_error)? else {
        return Ok(None);
    };
    Ok(entries_of(&key, &value)?
        .into_iter()
        .find(|(at, _)| *at == sequence)
        .map(|(_, stored)| stored))
}

/// A record's sequence and stored bytes.
type Entry = (u64, IVec);
type Stored = Result<Entry, StoreError>;
/// A block being rewritten: its first sequence, its records, whether they changed.
type Rewrite = (u64, Vec<Entry>, bool);

/// A record under its own key, from a scan of the tree.
fn single(entry: Result<(IVec, IVec), sled::Error>) -> Stored {
    let (key, value) = entry.map_err(read_error)?;
    let sequence = key
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(&key))?;
    Ok((sequence, value))
}

/// The records `from ..= to` in sequence order, from blocks and single keys merged.
pub(super) fn range(records: &sled::Tree, from: u64, to: u64) -> impl Iterator<Item = Stored> {
    let singles = records
        .range(record_key(from)..=record_key(to.max(from)))
        .map(single);
    let blocks = BlockEntries {
        blocks: records.range(block_key(block_start(from))..=block_key(block_start(to.max(from)))),
        pending: VecDeque::new(),
        from,
        to,
    };
    Merged {
        a: blocks.peekable(),
        b: singles.peekable(),
        to,
    }
}

/// The first and the last record kept, from blocks and single keys.
pub(super) fn first_and_last(
    records: &sled::Tree,
) -> Result<(Option<Entry>, Option<Entry>), StoreError> {
    let first = range(records, 1, u64::MAX).next().transpose()?;
    let last_single = records
        .range(record_key(0)..)
        .next_back()
        .transpose()
        .map_err(read_error)?
        .and_then(|(key, value)| {
            let sequence = key.get(1..9)?.try_into().ok().map(u64::from_be_bytes)?;
            Some((sequence, value))
        });
    let last_block = match records
        .range(block_key(0)..=block_key(u64::MAX))
        .next_back()
        .transpose()
        .map_err(read_error)?
    {
        Some((key, value)) => entries_of(&key, &value)?.pop(),
        None => None,
    };
    let last = match (last_single, last_block) {
        (Some(single), Some(block)) => Some(if single.0 > block.0 { single } else { block }),
        (single, block) => single.or(block),
    };
    Ok((first, last))
}

/// The sequence after the last block written (1 if none): where packing resumes.
pub(super) fn packed_through(records: &sled::Tree) -> Result<u64, StoreError> {
    Ok(records
        .range(block_key(0)..=block_key(u64::MAX))
        .next_back()
        .transpose()
        .map_err(read_error)?
        .and_then(|(key, _)| start_of_block_key(&key))
        .map(|start| start + BLOCK_RECORDS - 1)
        .unwrap_or(0))
}

/// Packs the single-key records of the block starting at `start` into it;
/// returns how many it moved.
pub(super) fn pack(
    records: &sled::Tree,
    cache: &BlockCache,
    start: u64,
) -> Result<usize, StoreError> {
    let end = start + BLOCK_RECORDS - 1;
    let key = block_key(start);
    let singles: Vec<(u64, IVec)> = records
        .range(record_key(start)..=record_key(end))
        .map(single)
        .collect::<Result<_, StoreError>>()?;
    if singles.is_empty() {
        return Ok(0);
    }
    let mut all = match records.get(key).map_err(read_error)? {
        Some(value) => entries_of(&key, &value)?,
        None => Vec::new(),
    };
    all.extend(singles.iter().cloned());
    all.sort_unstable_by_key(|(sequence, _)| *sequence);
    all.dedup_by_key(|(sequence, _)| *sequence);
    // The block first, then the single keys: in between (or after a crash) a record is in both
    // places, which readers take as one, and packing the block again finishes the move. Not
    // one sled batch: sled 0.34 applies a batch under a lock every insert in the database
    // waits for, which stalled issuance (p99 doubled) while the indexer packed.
    records
        .insert(key, seal(all.iter().map(|(s, v)| (*s, v.as_ref())))?)
        .map_err(write_error)?;
    cache.forget(start);
    for (sequence, _) in &singles {
        records.remove(record_key(*sequence)).map_err(write_error)?;
    }
    Ok(singles.len())
}

/// Removes these records (sorted) from wherever they are kept; returns how many were there.
pub(super) fn remove(
    records: &sled::Tree,
    cache: &BlockCache,
    sequences: &[u64],
) -> Result<u64, StoreError> {
    let mut removed = 0;
    let mut block: Option<Rewrite> = None;
    let write_back = |block: Option<Rewrite>| -> Result<(), StoreError> {
        if let Some((start, entries, true)) = block {
            let key = block_key(start);
            if entries.is_empty() {
                records.remove(key).map_err(write_error)?;
            } else {
                records
                    .insert(key, seal(entries.iter().map(|(s, v)| (*s, v.as_ref())))?)
                    .map_err(write_error)?;
            }
            cache.forget(start);
        }
        Ok(())
    };
    for &sequence in sequences {
        if records
            .remove(record_key(sequence))
            .map_err(write_error)?
            .is_some()
        {
            removed += 1;
            continue;
        }
        let start = block_start(sequence);
        if block.as_ref().map(|(at, _, _)| *at) != Some(start) {
            write_back(block.take())?;
            let key = block_key(start);
            let entries = match records.get(key).map_err(read_error)? {
                Some(value) => entries_of(&key, &value)?,
                None => Vec::new(),
            };
            block = Some((start, entries, false));
        }
        if let Some((_, entries, changed)) = block.as_mut() {
            if let Ok(at) = entries.binary_search_by_key(&sequence, |(s, _)| *s) {
                entries.remove(at);
                *changed = true;
                removed += 1;
            }
        }
    }
    write_back(block)?;
    Ok(removed)
}

/// The records of the blocks in a key range, limited to `from ..= to`.
struct BlockEntries {
    blocks: sled::Iter,
    pending: VecDeque<(u64, IVec)>,
    from: u64,
    to: u64,
}

impl Iterator for BlockEntries {
    type Item = Stored;

    fn next(&mut self) -> Option<Stored> {
        loop {
            if let Some(entry) = self.pending.pop_front() {
                return Some(Ok(entry));
            }
            let (key, value) = match self.blocks.next()? {
                Ok(entry) => entry,
                Err(error) => return Some(Err(read_error(error))),
            };
            match entries_of(&key, &value) {
                Ok(entries) => self.pending.extend(
                    entries
                        .into_iter()
                        .filter(|(sequence, _)| (self.from..=self.to).contains(sequence)),
                ),
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

/// Two sequence-ordered streams of records as one (a record in both, mid-packing, once).
struct Merged<A: Iterator<Item = Stored>, B: Iterator<Item = Stored>> {
    a: Peekable<A>,
    b: Peekable<B>,
    to: u64,
}

impl<A: Iterator<Item = Stored>, B: Iterator<Item = Stored>> Iterator for Merged<A, B> {
    type Item = Stored;

    fn next(&mut self) -> Option<Stored> {
        let next_a = match self.a.peek() {
            Some(Err(_)) => return self.a.next(),
            Some(Ok((sequence, _))) => Some(*sequence),
            None => None,
        };
        let next_b = match self.b.peek() {
            Some(Err(_)) => return self.b.next(),
            Some(Ok((sequence, _))) => Some(*sequence),
            None => None,
        };
        let item = match (next_a, next_b) {
            (None, None) => return None,
            (Some(a), Some(b)) if b < a => self.b.next(),
            (Some(a), Some(b)) if a == b => {
                // A record being packed: in its block and still under its own key.
                self.b.next();
                self.a.next()
            }
            (Some(_), _) => self.a.next(),
            (None, Some(_)) => self.b.next(),
        };
        match item {
            Some(Ok((sequence, _))) if sequence > self.to => None,
            other => other,
        }
    }
}

/// Writes one record's stored bytes where it is kept (in its block if there is one): for
/// tests that damage a store behind its back.
#[cfg(test)]
pub(super) fn overwrite(records: &sled::Tree, sequence: u64, stored: &[u8]) {
    let key = block_key(block_start(sequence));
    match records.get(key).unwrap() {
        Some(value) => {
            let mut entries: Vec<(u64, Vec<u8>)> = entries_of(&key, &value)
                .unwrap()
                .into_iter()
                .filter(|(at, _)| *at != sequence)
                .map(|(at, v)| (at, v.to_vec()))
                .collect();
            entries.push((sequence, stored.to_vec()));
            entries.sort_by_key(|(at, _)| *at);
            records
                .insert(
                    key,
                    seal(entries.iter().map(|(s, v)| (*s, v.as_slice()))).unwrap(),
                )
                .unwrap();
        }
        None => {
            records.insert(record_key(sequence), stored).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("records").unwrap()
    }

    fn put(records: &sled::Tree, sequence: u64) {
        records
            .insert(
                record_key(sequence),
                format!("record {sequence}").as_bytes(),
            )
            .unwrap();
    }

    fn sequences(records: &sled::Tree, from: u64, to: u64) -> Vec<u64> {
        range(records, from, to).map(|e| e.unwrap().0).collect()
    }

    #[test]
    fn packed_and_single_records_read_the_same() {
        let records = tree();
        for sequence in 1..=100 {
            put(&records, sequence);
        }
        // A move a crash interrupted: the block written, one single key left behind. Readers
        // see the record once; packing again finishes the move.
        let left = records.get(record_key(40)).unwrap().unwrap();
        assert_eq!(pack(&records, &BlockCache::default(), 33).unwrap(), 32);
        records.insert(record_key(40), left).unwrap();
        assert_eq!(sequences(&records, 38, 42), vec![38, 39, 40, 41, 42]);
        assert_eq!(pack(&records, &BlockCache::default(), 33).unwrap(), 1);
        assert_eq!(
            pack(&records, &BlockCache::default(), 33).unwrap(),
            0,
            "nothing left to pack"
        );
        assert_eq!(records.len(), 100 - 32 + 1);
        for sequence in [1, 33, 36, 64, 65, 100] {
            assert_eq!(
                get(&records, sequence).unwrap().unwrap().as_ref(),
                format!("record {sequence}").as_bytes()
            );
        }
        assert_eq!(get(&records, 101).unwrap(), None);
        let many = get_sorted(
            &records,
            &BlockCache::default(),
            0,
            &[1, 34, 64, 65, 90, 101],
        )
        .unwrap();
        let found: Vec<bool> = many.iter().map(Option::is_some).collect();
        assert_eq!(found, [true, true, true, true, true, false]);
        assert_eq!(many[2].as_deref(), Some(&b"record 64"[..]));
        assert_eq!(sequences(&records, 1, 100), (1..=100).collect::<Vec<_>>());
        assert_eq!(sequences(&records, 40, 70), (40..=70).collect::<Vec<_>>());
        assert_eq!(sequences(&records, 64, 64), vec![64]);
        let (first, last) = first_and_last(&records).unwrap();
        assert_eq!((first.unwrap().0, last.unwrap().0), (1, 100));
        assert_eq!(packed_through(&records).unwrap(), 64);
        // Packed in order (as the indexer does), what is known packed is read from its block
        // alone: the same answers.
        assert_eq!(pack(&records, &BlockCache::default(), 1).unwrap(), 32);
        assert_eq!(
            get_sorted(
                &records,
                &BlockCache::default(),
                64,
                &[1, 34, 64, 65, 90, 101]
            )
            .unwrap(),
            many
        );
    }

    #[test]
    fn removing_from_a_block_rewrites_it_and_an_emptied_block_goes() {
        let records = tree();
        for sequence in 1..=64 {
            put(&records, sequence);
        }
        pack(&records, &BlockCache::default(), 1).unwrap();
        pack(&records, &BlockCache::default(), 33).unwrap();
        assert_eq!(
            remove(&records, &BlockCache::default(), &[2, 3, 40]).unwrap(),
            3
        );
        assert_eq!(
            remove(&records, &BlockCache::default(), &[2]).unwrap(),
            0,
            "already gone"
        );
        assert_eq!(get(&records, 2).unwrap(), None);
        assert_eq!(sequences(&records, 1, 5), vec![1, 4, 5]);
        let all: Vec<u64> = (1..=32).collect();
        assert_eq!(remove(&records, &BlockCache::default(), &all).unwrap(), 30);
        assert!(!records.contains_key(block_key(1)).unwrap());
        assert_eq!(sequences(&records, 1, 64).len(), 31);
        // The last block's last record is the newest.
        let (first, last) = first_and_last(&records).unwrap();
        assert_eq!((first.unwrap().0, last.unwrap().0), (33, 64));
    }

    #[test]
    fn a_damaged_block_is_reported_not_read_past() {
        let records = tree();
        records.insert(block_key(1), &[0, 0, 0, 9, 1][..]).unwrap();
        assert!(matches!(get(&records, 1), Err(StoreError::Corrupt { .. })));
        // Well compressed, but its records' header claims more than is there.
        let short = zstd::bulk::compress(&[0, 0, 0, 9, 1], 3).unwrap();
        records.insert(block_key(1), short).unwrap();
        assert!(matches!(get(&records, 1), Err(StoreError::Corrupt { .. })));
        assert!(range(&records, 1, 10).next().unwrap().is_err());
        assert_eq!(
            parse(&encode([(5u64, &b"x"[..])].into_iter())),
            Some(vec![(5, 12 + 4..12 + 5)])
        );
        // Out of order or trailing bytes: refused.
        let mut two = encode([(5u64, &b"x"[..]), (4u64, &b"y"[..])].into_iter());
        assert_eq!(parse(&two), None);
        two = encode([(5u64, &b"x"[..])].into_iter());
        two.push(0);
        assert_eq!(parse(&two), None);
    }
}
