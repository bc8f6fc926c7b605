//! Where records live: one sled key per record while it is new, then packed, 16 to a key.
//!
//! sled keeps bookkeeping in memory for every key it holds, cache or not (~18 MiB per million
//! small keys measured here), so a log of tens of millions of records would grow the server
//! without bound. Once records are indexed (at or below the index watermark) the indexer packs
//! them into blocks of [`BLOCK_RECORDS`]:
//!
//! ```text
//! r ‖ sequence (u64 BE)          → stored record (leaf header ‖ protobuf)      newest records
//! b ‖ first sequence (u64 BE)    → (offset u8, length varint, stored record)*  packed, ≤ `packed`
//! pruned tree: sequence          → leaf data                                   removed records
//! ```
//!
//! Packing writes the block, then advances `packed`, then removes the single keys, so a reader
//! that looks for a record where `packed` says finds it; a reader that saw `packed` move during
//! its read reads again. Packing and pruning exclude each other (`layout` lock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::audit::LeafData;
use crate::record::StoreError;

use super::{codec, LogEntry};

/// Records per packed block.
pub const BLOCK_RECORDS: u64 = 16;

const SINGLE_PREFIX: u8 = b'r';
const BLOCK_PREFIX: u8 = b'b';

pub struct RecordFile {
    pub(super) tree: sled::Tree,
    pruned: sled::Tree,
    /// Every record up to here is in a block (a multiple of [`BLOCK_RECORDS`]).
    packed: AtomicU64,
    /// Packing and pruning change where records are; one at a time.
    layout: Mutex<()>,
}

impl RecordFile {
    pub fn new(tree: sled::Tree, pruned: sled::Tree, packed: u64) -> Self {
        Self {
            tree,
            pruned,
            packed: AtomicU64::new(packed),
            layout: Mutex::new(()),
        }
    }

    pub fn packed(&self) -> u64 {
        self.packed.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Stores a new record under its own key.
    pub fn insert(&self, sequence: u64, stored: Vec<u8>) -> Result<(), StoreError> {
        self.tree
            .insert(single_key(sequence), stored)
            .map_err(write_error)?;
        Ok(())
    }

    /// The stored bytes of a record (None if it does not exist or was pruned).
    pub fn get(&self, sequence: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if sequence > self.packed() {
            if let Some(stored) = self.tree.get(single_key(sequence)).map_err(read_error)? {
                return Ok(Some(stored.to_vec()));
            }
            // Packed meanwhile: the single key goes only after `packed` passed it.
            if sequence > self.packed() {
                return Ok(None);
            }
        }
        let first = block_first(sequence);
        Ok(self
            .tree
            .get(block_key(first))
            .map_err(read_error)?
            .and_then(|block| {
                decode_block(first, &block)
                    .into_iter()
                    .find(|(s, _)| *s == sequence)
                    .map(|(_, stored)| stored.to_vec())
            }))
    }

    /// Log entries `from ..= to` in order (records, and the leaves of pruned ones), at most
    /// `limit`.
    pub fn entries(&self, from: u64, to: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        loop {
            // A pack that moved `packed` meanwhile may have removed single keys this read
            // expected: read again (packs are rare and short, so this ends).
            let packed = self.packed();
            let entries = self.entries_at(packed, from, to, limit)?;
            if self.packed() == packed {
                return Ok(entries);
            }
        }
    }

    fn entries_at(
        &self,
        packed: u64,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        // Packed records first (blocks overlapping the range), then single keys above
        // `packed`: a single key at or below it is a block's copy about to be removed.
        if from <= packed {
            let last = to.min(packed);
            for block in self
                .tree
                .range(block_key(block_first(from))..=block_key(block_first(last)))
            {
                let (key, value) = block.map_err(read_error)?;
                let first = sequence_of(&key).ok_or_else(|| corrupt("block key"))?;
                for (sequence, stored) in decode_block(first, &value) {
                    if (from..=last).contains(&sequence) {
                        records.push((sequence, stored.to_vec()));
                    }
                }
                if records.len() >= limit {
                    break;
                }
            }
        }
        if to > packed && records.len() < limit {
            let start = from.max(packed + 1);
            for entry in self.tree.range(single_key(start)..=single_key(to)) {
                let (key, value) = entry.map_err(read_error)?;
                let sequence = sequence_of(&key).ok_or_else(|| corrupt("record key"))?;
                records.push((sequence, value.to_vec()));
                if records.len() >= limit {
                    break;
                }
            }
        }
        // Merge in the pruned leaves of the range covered so far.
        let covered_to = if records.len() >= limit {
            records.last().map(|(s, _)| *s).unwrap_or(to)
        } else {
            to
        };
        let mut pruned = Vec::new();
        for entry in self
            .pruned
            .range(from.to_be_bytes()..=covered_to.to_be_bytes())
        {
            let (key, value) = entry.map_err(read_error)?;
            let sequence = key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt("pruned key"))?;
            let leaf = LeafData::parse(&value).ok_or(StoreError::Corrupt {
                key: format!("pruned leaf {sequence}"),
            })?;
            pruned.push((sequence, leaf));
        }
        let (mut records, mut pruned) = (
            records.into_iter().peekable(),
            pruned.into_iter().peekable(),
        );
        while out.len() < limit {
            let take_record = match (records.peek(), pruned.peek()) {
                (None, None) => break,
                (Some((r, _)), Some((p, _))) => r <= p,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if take_record {
                let Some((sequence, stored)) = records.next() else {
                    break;
                };
                if pruned.peek().is_some_and(|(p, _)| *p == sequence) {
                    // Both present: the record wins; verification reports the inconsistency.
                    pruned.next();
                }
                out.push(LogEntry::Record { sequence, stored });
            } else if let Some((sequence, leaf)) = pruned.next() {
                out.push(LogEntry::Pruned { sequence, leaf });
            }
        }
        Ok(out)
    }

    /// The first record (not a pruned leaf) at or after `from`, up to `to`.
    pub fn first_record(&self, from: u64, to: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let mut next = from;
        while next <= to {
            let entries = self.entries(next, to, 256)?;
            let Some(last) = entries.last().map(LogEntry::sequence) else {
                return Ok(None);
            };
            for entry in entries {
                if let LogEntry::Record { sequence, stored } = entry {
                    return Ok(Some((sequence, stored)));
                }
            }
            next = last + 1;
        }
        Ok(None)
    }

    /// The last record (not a pruned leaf) at or before `to`.
    pub fn last_record(&self, to: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        loop {
            let packed = self.packed();
            let found = self.last_record_at(packed, to)?;
            if self.packed() == packed {
                return Ok(found);
            }
        }
    }

    fn last_record_at(&self, packed: u64, to: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        if to > packed {
            if let Some((key, value)) = self
                .tree
                .range(single_key(packed + 1)..=single_key(to))
                .next_back()
                .transpose()
                .map_err(read_error)?
            {
                let sequence = sequence_of(&key).ok_or_else(|| corrupt("record key"))?;
                return Ok(Some((sequence, value.to_vec())));
            }
        }
        let last = to.min(packed);
        for block in self
            .tree
            .range(block_key(0)..=block_key(block_first(last.max(1))))
            .rev()
        {
            let (key, value) = block.map_err(read_error)?;
            let first = sequence_of(&key).ok_or_else(|| corrupt("block key"))?;
            if let Some((sequence, stored)) = decode_block(first, &value)
                .into_iter()
                .rev()
                .find(|(s, _)| *s <= last)
            {
                return Ok(Some((sequence, stored.to_vec())));
            }
        }
        Ok(None)
    }

    /// Packs every complete block of records up to `through` (records there are indexed and
    /// durable). Returns the new packed mark.
    pub fn pack(
        &self,
        through: u64,
        meta: &sled::Tree,
        meta_key: &[u8],
    ) -> Result<u64, StoreError> {
        let target = through - through % BLOCK_RECORDS;
        let _layout = self.layout.lock().unwrap_or_else(|p| p.into_inner());
        let mut packed = self.packed();
        while packed < target {
            let first = packed + 1;
            let last = packed + BLOCK_RECORDS;
            let mut block = Vec::new();
            for entry in self.tree.range(single_key(first)..=single_key(last)) {
                let (key, value) = entry.map_err(read_error)?;
                let sequence = sequence_of(&key).ok_or_else(|| corrupt("record key"))?;
                push_block_entry(&mut block, sequence - first, &value);
            }
            if !block.is_empty() {
                self.tree
                    .insert(block_key(first), block)
                    .map_err(write_error)?;
            }
            meta.insert(meta_key, &last.to_be_bytes())
                .map_err(write_error)?;
            self.packed.store(last, Ordering::SeqCst);
            // One by one: a sled batch takes a lock that every append then waits on.
            for sequence in first..=last {
                self.tree
                    .remove(single_key(sequence))
                    .map_err(write_error)?;
            }
            packed = last;
        }
        Ok(packed)
    }

    /// Removes records, keeping each one's leaf first (a record is never gone without its
    /// leaf). Returns the sequence numbers now pruned (removed now or before), and how many
    /// were removed now.
    pub fn prune(&self, sequences: &[u64]) -> Result<(Vec<u64>, u64), StoreError> {
        let _layout = self.layout.lock().unwrap_or_else(|p| p.into_inner());
        let packed = self.packed();
        let mut gone = Vec::with_capacity(sequences.len());
        let mut removed = 0u64;
        for &sequence in sequences {
            match self.get(sequence)? {
                Some(stored) => {
                    let leaf = super::leaf_of_stored(&stored).ok_or(StoreError::Corrupt {
                        key: format!("record {sequence}"),
                    })?;
                    self.pruned
                        .insert(sequence.to_be_bytes(), leaf.to_bytes().to_vec())
                        .map_err(write_error)?;
                    gone.push(sequence);
                    removed += 1;
                }
                None => {
                    if self
                        .pruned
                        .contains_key(sequence.to_be_bytes())
                        .map_err(read_error)?
                    {
                        gone.push(sequence);
                    }
                }
            }
        }
        gone.sort_unstable();
        gone.dedup();
        // Single keys go one by one; each block is rewritten once without its pruned records.
        let mut blocks: Vec<u64> = Vec::new();
        for &sequence in &gone {
            if sequence <= packed {
                let first = block_first(sequence);
                if blocks.last() != Some(&first) {
                    blocks.push(first);
                }
            } else {
                self.tree
                    .remove(single_key(sequence))
                    .map_err(write_error)?;
            }
        }
        for first in blocks {
            let Some(block) = self.tree.get(block_key(first)).map_err(read_error)? else {
                continue;
            };
            let mut kept = Vec::new();
            for (sequence, stored) in decode_block(first, &block) {
                if gone.binary_search(&sequence).is_err() {
                    push_block_entry(&mut kept, sequence - first, stored);
                }
            }
            if kept.is_empty() {
                self.tree.remove(block_key(first)).map_err(write_error)?;
            } else {
                self.tree
                    .insert(block_key(first), kept)
                    .map_err(write_error)?;
            }
        }
        Ok((gone, removed))
    }
}

/// The first sequence number of the block holding `sequence` (sequence numbers start at 1).
fn block_first(sequence: u64) -> u64 {
    sequence.saturating_sub(1) / BLOCK_RECORDS * BLOCK_RECORDS + 1
}

fn push_block_entry(block: &mut Vec<u8>, offset: u64, stored: &[u8]) {
    block.push(offset as u8);
    codec::put_varint(block, stored.len() as u64);
    block.extend_from_slice(stored);
}

/// The records of a block; a malformed tail is dropped (verification then reports them
/// missing).
fn decode_block(first: u64, block: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut input = block;
    while let Some((&offset, rest)) = input.split_first() {
        input = rest;
        let Some(len) = codec::get_varint(&mut input).map(|l| l as usize) else {
            break;
        };
        if len > input.len() {
            break;
        }
        out.push((first + u64::from(offset), &input[..len]));
        input = &input[len..];
    }
    out
}

pub fn single_key(sequence: u64) -> [u8; 9] {
    prefixed(SINGLE_PREFIX, sequence)
}

fn block_key(first: u64) -> [u8; 9] {
    prefixed(BLOCK_PREFIX, first)
}

fn prefixed(prefix: u8, sequence: u64) -> [u8; 9] {
    let mut key = [prefix; 9];
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn sequence_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

fn read_error(error: sled::Error) -> StoreError {
    StoreError::Read(Arc::new(error))
}

fn write_error(error: sled::Error) -> StoreError {
    StoreError::Write(Arc::new(error))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt { key: what.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::LeafData;

    fn stored(sequence: u64) -> Vec<u8> {
        let leaf = LeafData {
            sequence,
            recorded_at_ms: sequence as i64,
            issued: true,
            not_after: 0,
            record_sha256: [0; 32],
        };
        let mut out = leaf.header().to_vec();
        out.extend_from_slice(&sequence.to_be_bytes().repeat(3));
        out
    }

    #[test]
    fn packed_records_read_like_single_ones_and_prune_out_of_their_block() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        let file = RecordFile::new(db.open_tree("r").unwrap(), db.open_tree("p").unwrap(), 0);
        for sequence in 1..=40 {
            file.insert(sequence, stored(sequence)).unwrap();
        }
        // Only whole blocks are packed: 1..=32.
        assert_eq!(file.pack(37, &meta, b"packed").unwrap(), 32);
        assert_eq!(file.packed(), 32);
        assert!(file.tree.get(single_key(5)).unwrap().is_none());
        for sequence in 1..=40 {
            assert_eq!(
                file.get(sequence).unwrap(),
                Some(stored(sequence)),
                "{sequence}"
            );
        }
        let all = file.entries(1, 100, usize::MAX).unwrap();
        assert_eq!(
            all.iter().map(LogEntry::sequence).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<_>>()
        );
        assert_eq!(
            file.entries(15, 18, 2)
                .unwrap()
                .iter()
                .map(LogEntry::sequence)
                .collect::<Vec<_>>(),
            [15, 16]
        );
        // Pruning from a block and from single keys; the leaves stay, in order.
        let (gone, removed) = file.prune(&[35, 3, 17, 18]).unwrap();
        assert_eq!((gone, removed), (vec![3, 17, 18, 35], 4));
        assert_eq!(file.get(3).unwrap(), None);
        assert_eq!(file.get(4).unwrap(), Some(stored(4)));
        let kinds: Vec<(u64, bool)> = file
            .entries(1, 40, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| (e.sequence(), matches!(e, LogEntry::Record { .. })))
            .filter(|(s, _)| [2, 3, 4, 17, 35].contains(s))
            .collect();
        assert_eq!(
            kinds,
            [(2, true), (3, false), (4, true), (17, false), (35, false)]
        );
        assert_eq!(file.first_record(17, 40).unwrap().map(|(s, _)| s), Some(19));
        assert_eq!(file.last_record(40).unwrap().map(|(s, _)| s), Some(40));
        assert_eq!(file.last_record(18).unwrap().map(|(s, _)| s), Some(16));
        // A second pass is idempotent.
        assert_eq!(file.prune(&[3]).unwrap(), (vec![3], 0));
        // A single key left beside its block (a pack interrupted by a crash) is read once.
        file.tree.insert(single_key(8), stored(8)).unwrap();
        assert_eq!(
            file.entries(7, 9, usize::MAX)
                .unwrap()
                .iter()
                .map(LogEntry::sequence)
                .collect::<Vec<_>>(),
            [7, 8, 9]
        );
    }
}
