//! The index's state: the directory of persisted runs and the tail segments in memory, with
//! what a query reads from the tail.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use crate::adapters::store::codec::{self, RunId};
use crate::adapters::store::error::StoreError;
use crate::domain::audit::merkle::Hash;
use crate::domain::audit::{IndexKeys, IndexKind, Summary};

use super::plan::ValueSelector;

/// Runs of the same tier are merged when this many have gathered.
pub(crate) const COMPACTION_FANIN: usize = 8;
/// A prefix filter that expands to more distinct values than this in one run is refused.
pub(crate) const MAX_PREFIX_VALUES: usize = 4096;

/// An index entry: a record's sequence number and summary.
pub type Entry = (u64, Summary);

/// A persisted run of index pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub id: RunId,
    /// The last sequence number it covers (the first is `id.first`).
    pub last: u64,
    /// Entries written (all kinds).
    pub entries: u64,
    /// The distinct `Outcome` values in the run (few: `issued` and the denial reasons), so an
    /// "any denial" filter expands without reading pages.
    pub outcomes: Vec<Vec<u8>>,
    /// The distinct `Mesh` values (few), so a namespace filter without a mesh expands to one
    /// exact lookup per mesh.
    pub meshes: Vec<Vec<u8>>,
}

impl Run {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        codec::put_varint(&mut out, self.last);
        codec::put_varint(&mut out, self.entries);
        for list in [&self.outcomes, &self.meshes] {
            codec::put_varint(&mut out, list.len() as u64);
            for value in list {
                codec::put_varint(&mut out, value.len() as u64);
                out.extend_from_slice(value);
            }
        }
        out
    }

    pub fn decode(id: RunId, bytes: &[u8]) -> Option<Self> {
        let mut input = bytes;
        let last = codec::get_varint(&mut input)?;
        let entries = codec::get_varint(&mut input)?;
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let count = codec::get_varint(&mut input)?;
            for _ in 0..count {
                let len = codec::get_varint(&mut input)? as usize;
                if len > input.len() {
                    return None;
                }
                list.push(input[..len].to_vec());
                input = &input[len..];
            }
        }
        let [outcomes, meshes] = lists;
        Some(Self {
            id,
            last,
            entries,
            outcomes,
            meshes,
        })
    }
}

/// The index entries and Merkle leaves of a stretch of the newest records, in memory.
#[derive(Debug, Default)]
pub struct TailSegment {
    pub first: u64,
    /// Records added so far (sequence numbers `first .. first + len`).
    pub len: u64,
    /// `kind ‖ value` → entries (byte keys: an existing value is found without allocating,
    /// and the order is that of `(kind, value)`).
    pub entries: BTreeMap<Vec<u8>, Vec<Entry>>,
    pub leaves: Vec<Hash>,
}

impl TailSegment {
    pub(super) fn new(first: u64) -> Self {
        Self {
            first,
            ..Self::default()
        }
    }

    pub fn last(&self) -> u64 {
        self.first + self.len - 1
    }

    pub(super) fn push(&mut self, sequence: u64, keys: Option<&IndexKeys>, leaf: Hash) {
        debug_assert_eq!(sequence, self.first + self.len);
        if let Some(keys) = keys {
            let mut key = Vec::with_capacity(64);
            for (kind, value) in &keys.entries {
                key.clear();
                key.push(kind.code());
                key.extend_from_slice(value);
                match self.entries.get_mut(key.as_slice()) {
                    Some(list) => list.push((sequence, keys.summary)),
                    None => {
                        self.entries
                            .insert(key.clone(), vec![(sequence, keys.summary)]);
                    }
                }
            }
        }
        self.leaves.push(leaf);
        self.len += 1;
    }
}

/// Runs on disk, then the tail in memory: together they index every record.
#[derive(Debug)]
pub struct IndexState {
    pub runs: Arc<Vec<Run>>,
    /// Full tail segments waiting to be persisted, oldest first.
    pub frozen: VecDeque<Arc<TailSegment>>,
    /// The segment being filled.
    pub active: TailSegment,
    /// Every record up to this sequence number is in `runs` (and its leaf in the tiles).
    pub watermark: u64,
    pub segment_records: u64,
}

impl IndexState {
    pub fn new(runs: Vec<Run>, watermark: u64, segment_records: u64) -> Self {
        Self {
            runs: Arc::new(runs),
            frozen: VecDeque::new(),
            active: TailSegment::new(watermark + 1),
            watermark,
            segment_records: segment_records.max(1),
        }
    }

    /// Adds the next record (or, for a pruned one, only its leaf).
    pub fn push(&mut self, sequence: u64, keys: Option<&IndexKeys>, leaf: Hash) {
        if self.active.len == self.segment_records {
            let next = TailSegment::new(sequence);
            let full = std::mem::replace(&mut self.active, next);
            self.frozen.push_back(Arc::new(full));
        }
        self.active.push(sequence, keys, leaf);
    }

    /// The number of records in the tail.
    pub(crate) fn tail_len(&self) -> u64 {
        self.frozen.iter().map(|s| s.len).sum::<u64>() + self.active.len
    }

    /// Leaf hashes of sequence numbers `from..=to`, all in the tail.
    pub(crate) fn tail_leaves(&self, from: u64, to: u64) -> Option<Vec<Hash>> {
        let mut out = Vec::with_capacity((to + 1).saturating_sub(from) as usize);
        for segment in self.frozen.iter().map(Arc::as_ref).chain([&self.active]) {
            if segment.len == 0 {
                continue;
            }
            let lo = from.max(segment.first);
            let hi = to.min(segment.last());
            if lo <= hi {
                let start = (lo - segment.first) as usize;
                let end = (hi - segment.first) as usize;
                out.extend_from_slice(&segment.leaves[start..=end]);
            }
        }
        (out.len() as u64 == (to + 1).saturating_sub(from)).then_some(out)
    }

    /// The tail's entries of `kind` whose value is in `values` (or starts with `prefix`), merged
    /// in sequence order.
    pub(super) fn tail_entries(&self, kind: IndexKind, selector: &ValueSelector) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for segment in self.frozen.iter().map(Arc::as_ref).chain([&self.active]) {
            match selector {
                ValueSelector::Values(values) => {
                    for value in values {
                        let key = [&[kind.code()], value.as_slice()].concat();
                        if let Some(entries) = segment.entries.get(key.as_slice()) {
                            out.extend_from_slice(entries);
                        }
                    }
                }
                ValueSelector::Prefix(prefix) => {
                    let start = [&[kind.code()], prefix.as_slice()].concat();
                    for (key, entries) in segment
                        .entries
                        .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Unbounded))
                    {
                        if !key.starts_with(&start) {
                            break;
                        }
                        out.extend_from_slice(entries);
                    }
                }
            }
        }
        out.sort_unstable_by_key(|(sequence, _)| *sequence);
        out.dedup_by_key(|(sequence, _)| *sequence);
        out
    }

    /// The tail's `NotAfter` entries with keys in `[lo, hi)`, in `(NotAfter, sequence)` order.
    pub(super) fn tail_expiry(&self, lo: &[u8; 8], hi: &[u8; 8]) -> Vec<(Vec<u8>, Entry)> {
        let mut out = Vec::new();
        let kind = IndexKind::NotAfter.code();
        let (start, end) = ([&[kind], &lo[..]].concat(), [&[kind], &hi[..]].concat());
        for segment in self.frozen.iter().map(Arc::as_ref).chain([&self.active]) {
            for (key, entries) in segment.entries.range::<[u8], _>((
                Bound::Included(start.as_slice()),
                Bound::Excluded(end.as_slice()),
            )) {
                let value = key[1..].to_vec();
                out.extend(entries.iter().map(|entry| (value.clone(), *entry)));
            }
        }
        out.sort_by(|a, b| (&a.0, a.1 .0).cmp(&(&b.0, b.1 .0)));
        out
    }
}

pub(super) fn next_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

pub(super) fn read_error(error: sled::Error) -> StoreError {
    StoreError::Read(Arc::new(error))
}

pub(super) fn corrupt(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: format!("index page {key:?}"),
    }
}
