//! Secondary indexes over the records: every audit query is a key lookup or key range here.
//!
//! sled costs ~6–10 µs and ~100 bytes of disk per key on this hardware, so one key per index
//! entry (13 per record) would cap ingest near 7k records/s and take tens of GB for 10 million
//! records. Instead entries are kept in memory for the newest records (the *tail*, rebuilt from
//! the records at start) and written in bulk, once per segment of records, as sorted *runs* of
//! compact pages (see [`super::codec`]); runs are merged in the background (tiered, fan-in
//! [`COMPACTION_FANIN`]) so a lookup touches few of them. Queries read the runs and the tail and
//! combine filters by intersecting sequence-ordered streams (leapfrog join), each of which seeks
//! by sequence number, so a selective filter never reads the entries of a broad one.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use crate::audit::merkle::Hash;
use crate::audit::{
    boundary_prefix, order_key, IndexKeys, IndexKind, OutcomeFilter, Position, Query, Summary,
    MESH_SEPARATOR, OUTCOME_DENIED_PREFIX, OUTCOME_ISSUED,
};
use crate::record::StoreError;

use super::codec::{
    self, decode_page, entry_key, kind_prefix, value_prefix_key, Page, PageWriter, RunId,
};

/// Runs of the same tier are merged when this many have gathered.
pub const COMPACTION_FANIN: usize = 8;
/// A prefix filter that expands to more distinct values than this in one run is refused.
pub const MAX_PREFIX_VALUES: usize = 4096;

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
    fn new(first: u64) -> Self {
        Self {
            first,
            ..Self::default()
        }
    }

    pub fn last(&self) -> u64 {
        self.first + self.len - 1
    }

    fn push(&mut self, sequence: u64, keys: Option<&IndexKeys>, leaf: Hash) {
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
    pub fn tail_len(&self) -> u64 {
        self.frozen.iter().map(|s| s.len).sum::<u64>() + self.active.len
    }

    /// Leaf hashes of sequence numbers `from..=to`, all in the tail.
    pub fn tail_leaves(&self, from: u64, to: u64) -> Option<Vec<Hash>> {
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
    fn tail_entries(&self, kind: IndexKind, selector: &ValueSelector) -> Vec<Entry> {
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
    fn tail_expiry(&self, lo: &[u8; 8], hi: &[u8; 8]) -> Vec<(Vec<u8>, Entry)> {
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

/// Which values of an index kind a filter selects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueSelector {
    Values(Vec<Vec<u8>>),
    Prefix(Vec<u8>),
}

/// One filter as an index lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    kind: IndexKind,
    selector: ValueSelector,
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
pub struct SourceSpec(Source);

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
        OutcomeFilter::Issued => None,
    }) {
        sources.push(exact(
            IndexKind::Outcome,
            format!("{OUTCOME_DENIED_PREFIX}{reason}").as_bytes(),
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
                lo = lo.max(crate::clock::unix_seconds(at).saturating_add(1));
            }
            if let Some(after) = query.expires_after {
                lo = lo.max(crate::clock::unix_seconds(after));
            }
            let hi = query
                .expires_before
                .map(crate::clock::unix_seconds)
                .unwrap_or(i64::MAX);
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

/// What a query reads: the runs and the tail as they were when it started.
pub struct Snapshot<'a> {
    pub index: &'a sled::Tree,
    pub runs: Arc<Vec<Run>>,
    tails: Vec<Vec<Entry>>,
    tail_expiry: Vec<(Vec<u8>, Entry)>,
}

impl<'a> Snapshot<'a> {
    /// Takes the runs and copies the tail entries the plan needs (under the state's read lock,
    /// briefly).
    pub fn take(index: &'a sled::Tree, state: &IndexState, plan: &Plan) -> Self {
        let (tails, tail_expiry) = match plan {
            Plan::Join(sources) => (
                sources
                    .iter()
                    .map(|SourceSpec(source)| state.tail_entries(source.kind, &source.selector))
                    .collect(),
                Vec::new(),
            ),
            Plan::Expiry { lo, hi } => (Vec::new(), state.tail_expiry(lo, hi)),
            Plan::Sequence => (Vec::new(), Vec::new()),
        };
        Self {
            index,
            runs: state.runs.clone(),
            tails,
            tail_expiry,
        }
    }
}

/// Walks the matches of a plan, calling `visit(sequence)` for each in result order until it
/// returns false. `lo..=hi` bounds the sequence numbers; `start` resumes a previous page;
/// `keep` decides the entries the indexes cannot (pruned records, validity).
pub fn walk(
    snapshot: &Snapshot<'_>,
    plan: &Plan,
    lo: u64,
    hi: u64,
    start: Option<Position>,
    keep: &dyn Fn(u64, &Summary) -> bool,
    visit: &mut dyn FnMut(Position) -> bool,
) -> Result<(), StoreError> {
    match plan {
        Plan::Join(sources) => {
            let from = match start {
                Some(Position::Sequence(next)) => next.max(lo),
                _ => lo,
            };
            let mut streams = sources
                .iter()
                .zip(&snapshot.tails)
                .map(|(SourceSpec(source), tail)| {
                    SeqStream::new(snapshot.index, &snapshot.runs, source, tail)
                })
                .collect::<Vec<_>>();
            leapfrog(&mut streams, from, hi, keep, visit)
        }
        Plan::Expiry {
            lo: key_lo,
            hi: key_hi,
        } => {
            let from = match start {
                Some(Position::Expiry(not_after, sequence)) => {
                    (order_key(not_after).max(*key_lo), sequence)
                }
                _ => (*key_lo, 0),
            };
            expiry_walk(snapshot, from, key_hi, lo, hi, keep, visit)
        }
        Plan::Sequence => Ok(()),
    }
}

fn leapfrog(
    streams: &mut [SeqStream<'_>],
    from: u64,
    hi: u64,
    keep: &dyn Fn(u64, &Summary) -> bool,
    visit: &mut dyn FnMut(Position) -> bool,
) -> Result<(), StoreError> {
    if streams.is_empty() {
        return Ok(());
    }
    let mut candidate = from;
    'outer: while candidate <= hi {
        let mut target = candidate;
        let mut summary = Summary::default();
        let mut agreed = 0;
        let mut i = 0;
        while agreed < streams.len() {
            let Some((sequence, found)) = streams[i].seek(target)? else {
                break 'outer;
            };
            if sequence == target {
                agreed += 1;
            } else {
                target = sequence;
                agreed = 1;
            }
            summary = found;
            i = (i + 1) % streams.len();
        }
        if target > hi {
            break;
        }
        candidate = target + 1;
        if keep(target, &summary) && !visit(Position::Sequence(target)) {
            break;
        }
    }
    Ok(())
}

/// The entries of one source across the runs, then the tail, in sequence order.
struct SeqStream<'a> {
    index: &'a sled::Tree,
    runs: &'a [Run],
    source: &'a Source,
    tail: &'a [Entry],
    run: usize,
    cursors: Option<Vec<ValueCursor>>,
}

impl<'a> SeqStream<'a> {
    fn new(index: &'a sled::Tree, runs: &'a [Run], source: &'a Source, tail: &'a [Entry]) -> Self {
        Self {
            index,
            runs,
            source,
            tail,
            run: 0,
            cursors: None,
        }
    }

    /// The first entry at or after `target`. Targets never decrease.
    fn seek(&mut self, target: u64) -> Result<Option<Entry>, StoreError> {
        while let Some(run) = self.runs.get(self.run) {
            if run.last < target {
                self.run += 1;
                self.cursors = None;
                continue;
            }
            if self.cursors.is_none() {
                self.cursors = Some(self.open_cursors(run)?);
            }
            let mut best: Option<Entry> = None;
            for cursor in self.cursors.iter_mut().flatten() {
                if let Some(found) = cursor.seek(self.index, target)? {
                    if best.is_none_or(|(sequence, _)| found.0 < sequence) {
                        best = Some(found);
                    }
                }
            }
            if best.is_some() {
                return Ok(best);
            }
            self.run += 1;
            self.cursors = None;
        }
        let at = self
            .tail
            .partition_point(|(sequence, _)| *sequence < target);
        Ok(self.tail.get(at).copied())
    }

    fn open_cursors(&self, run: &Run) -> Result<Vec<ValueCursor>, StoreError> {
        let values = match &self.source.selector {
            ValueSelector::Values(values) => values.clone(),
            ValueSelector::Prefix(prefix) => match self.source.kind {
                IndexKind::Outcome => run
                    .outcomes
                    .iter()
                    .filter(|value| value.starts_with(prefix))
                    .cloned()
                    .collect(),
                // `namespace \0 mesh`: one value per mesh of the run (and none).
                IndexKind::Namespace | IndexKind::ServiceAccount
                    if prefix.last() == Some(&MESH_SEPARATOR) =>
                {
                    std::iter::once(prefix.clone())
                        .chain(
                            run.meshes
                                .iter()
                                .map(|mesh| [prefix.as_slice(), mesh].concat()),
                        )
                        .collect()
                }
                kind => values_with_prefix(self.index, run.id, kind, prefix)?,
            },
        };
        Ok(values
            .into_iter()
            .map(|value| ValueCursor::new(run.id, self.source.kind, value))
            .collect())
    }
}

/// The entries of one value in one run, read page by page.
struct ValueCursor {
    run: RunId,
    kind: IndexKind,
    value: Vec<u8>,
    /// Entries of `value` loaded from one page, and the lowest sequence number from which the
    /// buffer is complete.
    buffer: Vec<Entry>,
    complete_from: u64,
    loaded: bool,
    exhausted: bool,
}

impl ValueCursor {
    fn new(run: RunId, kind: IndexKind, value: Vec<u8>) -> Self {
        Self {
            run,
            kind,
            value,
            buffer: Vec::new(),
            complete_from: u64::MAX,
            loaded: false,
            exhausted: false,
        }
    }

    fn seek(&mut self, index: &sled::Tree, target: u64) -> Result<Option<Entry>, StoreError> {
        if self.exhausted {
            return Ok(None);
        }
        if let Some(found) = self.buffered(target) {
            return Ok(Some(found));
        }
        // Load the page that holds (value, target), then the following ones while the value
        // continues.
        let key = entry_key(self.run, self.kind, &self.value, target);
        let prefix = kind_prefix(self.run, self.kind);
        let page = match index
            .range(prefix.as_slice()..=key.as_slice())
            .next_back()
            .transpose()
            .map_err(read_error)?
        {
            Some(page) => Some(page),
            None => index
                .scan_prefix(&prefix)
                .next()
                .transpose()
                .map_err(read_error)?,
        };
        let Some((mut page_key, mut bytes)) = page else {
            self.exhausted = true;
            return Ok(None);
        };
        loop {
            let page = decode_page(&bytes).ok_or_else(|| corrupt(&page_key))?;
            // This page holds the position (value, target) or, on later rounds, the entries
            // right after it: every entry of the value from `target` up to the page's last one
            // is in it (targets never decrease).
            self.load(&page, target);
            if let Some(found) = self.buffered(target) {
                return Ok(Some(found));
            }
            let past_value = page
                .values
                .last()
                .is_some_and(|last| last.as_slice() > self.value.as_slice());
            if past_value {
                self.exhausted = true;
                return Ok(None);
            }
            // The value may continue on the next page.
            let next = index
                .range::<&[u8], _>((Bound::Excluded(page_key.as_ref()), Bound::Unbounded))
                .next()
                .transpose()
                .map_err(read_error)?;
            match next {
                Some((key, value)) if key.starts_with(&prefix) => {
                    page_key = key;
                    bytes = value;
                }
                _ => {
                    self.exhausted = true;
                    return Ok(None);
                }
            }
        }
    }

    fn load(&mut self, page: &Page, complete_from: u64) {
        self.buffer.clear();
        for entry in &page.entries {
            if page.value(entry) == self.value.as_slice() {
                self.buffer.push((entry.sequence, entry.summary));
            }
        }
        self.complete_from = complete_from;
        self.loaded = true;
    }

    /// The first buffered entry at or after `target`, if the buffer is complete there.
    fn buffered(&self, target: u64) -> Option<Entry> {
        if !self.loaded || target < self.complete_from {
            return None;
        }
        let at = self.buffer.partition_point(|(s, _)| *s < target);
        self.buffer.get(at).copied()
    }
}

/// The distinct values of `kind` starting with `prefix` in a run, skipping from value to value
/// (two page reads per value, however many entries it has).
fn values_with_prefix(
    index: &sled::Tree,
    run: RunId,
    kind: IndexKind,
    prefix: &[u8],
) -> Result<Vec<Vec<u8>>, StoreError> {
    let kind_key = kind_prefix(run, kind);
    let kind_end = next_prefix(&kind_key).unwrap_or_else(|| vec![0xff; kind_key.len() + 1]);
    let start = value_prefix_key(run, kind, prefix);
    let last_at_or_before = |key: &[u8], floor: &[u8]| {
        index
            .range(floor..=key)
            .next_back()
            .transpose()
            .map_err(read_error)
    };
    let mut current = match last_at_or_before(&start, &kind_key)? {
        Some(page) => Some(page),
        None => index
            .range(start.as_slice()..kind_end.as_slice())
            .next()
            .transpose()
            .map_err(read_error)?,
    };
    let mut values: Vec<Vec<u8>> = Vec::new();
    while let Some((key, bytes)) = current {
        let page = decode_page(&bytes).ok_or_else(|| corrupt(&key))?;
        for value in &page.values {
            if value.starts_with(prefix) {
                if values.last() != Some(value) {
                    values.push(value.clone());
                }
            } else if value.as_slice() > prefix {
                return Ok(values);
            }
        }
        if values.len() > MAX_PREFIX_VALUES {
            return Err(StoreError::TooBroad {
                values: values.len(),
            });
        }
        let Some(last) = page.values.last() else {
            break;
        };
        // Next: the page holding the first entry after every entry of `last`: either the
        // first page that starts beyond `last`, or the page just before it.
        let after_last = entry_key(run, kind, last, u64::MAX);
        let beyond = index
            .range::<&[u8], _>((
                Bound::Excluded(after_last.as_slice()),
                Bound::Excluded(kind_end.as_slice()),
            ))
            .next()
            .transpose()
            .map_err(read_error)?;
        let limit = beyond
            .as_ref()
            .map(|(k, _)| k.to_vec())
            .unwrap_or_else(|| kind_end.clone());
        let before = index
            .range::<&[u8], _>((
                Bound::Excluded(key.as_ref()),
                Bound::Excluded(limit.as_slice()),
            ))
            .next_back()
            .transpose()
            .map_err(read_error)?;
        current = before.or(beyond);
    }
    Ok(values)
}

/// Walks `NotAfter` entries in `(NotAfter, sequence)` order from `from` to `hi`, merging the
/// runs and the tail.
fn expiry_walk(
    snapshot: &Snapshot<'_>,
    from: ([u8; 8], u64),
    hi: &[u8; 8],
    seq_lo: u64,
    seq_hi: u64,
    keep: &dyn Fn(u64, &Summary) -> bool,
    visit: &mut dyn FnMut(Position) -> bool,
) -> Result<(), StoreError> {
    let mut cursors: Vec<ExpiryCursor> = snapshot
        .runs
        .iter()
        .map(|run| ExpiryCursor::run(snapshot.index, run.id, from, *hi))
        .collect();
    let tail: Vec<(Vec<u8>, Entry)> = snapshot
        .tail_expiry
        .iter()
        .filter(|(value, (sequence, _))| (value.as_slice(), *sequence) >= (&from.0[..], from.1))
        .cloned()
        .collect();
    cursors.push(ExpiryCursor::Memory(tail.into()));
    let mut heap = BinaryHeap::new();
    for (i, cursor) in cursors.iter_mut().enumerate() {
        if let Some((value, entry)) = cursor.next()? {
            heap.push(Reverse((value, entry.0, i, entry.1.validity)));
        }
    }
    while let Some(Reverse((value, sequence, i, validity))) = heap.pop() {
        if let Some((next_value, entry)) = cursors[i].next()? {
            heap.push(Reverse((next_value, entry.0, i, entry.1.validity)));
        }
        if sequence < seq_lo || sequence > seq_hi || !keep(sequence, &Summary { validity }) {
            continue;
        }
        let not_after = crate::audit::from_order_key(&value).unwrap_or_default();
        if !visit(Position::Expiry(not_after, sequence)) {
            break;
        }
    }
    Ok(())
}

enum ExpiryCursor {
    Run {
        pages: Box<sled::Iter>,
        page: VecDeque<(Vec<u8>, Entry)>,
        from: ([u8; 8], u64),
        hi: [u8; 8],
        done: bool,
    },
    Memory(VecDeque<(Vec<u8>, Entry)>),
}

impl ExpiryCursor {
    fn run(index: &sled::Tree, run: RunId, from: ([u8; 8], u64), hi: [u8; 8]) -> Self {
        let kind = kind_prefix(run, IndexKind::NotAfter);
        let start = entry_key(run, IndexKind::NotAfter, &from.0, from.1);
        // Start at the page holding `from` (the last page starting at or before it).
        let first = index
            .range(kind.as_slice()..=start.as_slice())
            .next_back()
            .and_then(Result::ok)
            .map(|(key, _)| key.to_vec())
            .unwrap_or(kind.clone());
        let end = next_prefix(&kind).unwrap_or_else(|| vec![0xff; kind.len() + 1]);
        Self::Run {
            pages: Box::new(index.range(first..end)),
            page: VecDeque::new(),
            from,
            hi,
            done: false,
        }
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, Entry)>, StoreError> {
        match self {
            Self::Memory(entries) => Ok(entries.pop_front()),
            Self::Run {
                pages,
                page,
                from,
                hi,
                done,
                ..
            } => loop {
                if let Some((value, entry)) = page.pop_front() {
                    if value.as_slice() >= &hi[..] {
                        *done = true;
                        page.clear();
                        return Ok(None);
                    }
                    if (value.as_slice(), entry.0) < (&from.0[..], from.1) {
                        continue;
                    }
                    return Ok(Some((value, entry)));
                }
                if *done {
                    return Ok(None);
                }
                match pages.next().transpose().map_err(read_error)? {
                    None => {
                        *done = true;
                        return Ok(None);
                    }
                    Some((key, bytes)) => {
                        let decoded = decode_page(&bytes).ok_or_else(|| corrupt(&key))?;
                        for entry in &decoded.entries {
                            page.push_back((
                                decoded.value(entry).to_vec(),
                                (entry.sequence, entry.summary),
                            ));
                        }
                    }
                }
            },
        }
    }
}

/// Writes the entries of a tail segment as a run; returns its directory entry.
pub fn write_run(index: &sled::Tree, id: RunId, segment: &TailSegment) -> Result<Run, StoreError> {
    let mut entries = 0u64;
    let (mut outcomes, mut meshes) = (Vec::new(), Vec::new());
    let mut current: Option<(IndexKind, PageWriter)> = None;
    for (key, list) in &segment.entries {
        let Some((kind, value)) = key
            .split_first()
            .and_then(|(code, value)| Some((IndexKind::from_code(*code)?, value)))
        else {
            continue;
        };
        if current.as_ref().is_none_or(|(k, _)| *k != kind) {
            if let Some((k, mut writer)) = current.take() {
                flush_pages(index, id, k, &mut writer)?;
            }
            current = Some((kind, PageWriter::default()));
        }
        match kind {
            IndexKind::Outcome => outcomes.push(value.to_vec()),
            IndexKind::Mesh => meshes.push(value.to_vec()),
            _ => {}
        }
        if let Some((kind, writer)) = current.as_mut() {
            for (sequence, summary) in list {
                entries += 1;
                if let Some(page) = writer.push(value, *sequence, *summary) {
                    put_page(index, id, *kind, page)?;
                }
            }
        }
    }
    if let Some((kind, mut writer)) = current {
        flush_pages(index, id, kind, &mut writer)?;
    }
    Ok(Run {
        id,
        last: segment.last(),
        entries,
        outcomes,
        meshes,
    })
}

fn flush_pages(
    index: &sled::Tree,
    run: RunId,
    kind: IndexKind,
    writer: &mut PageWriter,
) -> Result<(), StoreError> {
    if let Some(page) = writer.finish() {
        put_page(index, run, kind, page)?;
    }
    Ok(())
}

fn put_page(
    index: &sled::Tree,
    run: RunId,
    kind: IndexKind,
    (value, sequence, bytes): (Vec<u8>, u64, Vec<u8>),
) -> Result<(), StoreError> {
    index
        .insert(entry_key(run, kind, &value, sequence), bytes)
        .map_err(|e| StoreError::Write(Arc::new(e)))?;
    Ok(())
}

/// Merges `runs` (consecutive, oldest first) into one run of the next tier, dropping entries
/// `drop` says are gone (pruned records).
pub fn merge_runs(
    index: &sled::Tree,
    runs: &[Run],
    drop: &dyn Fn(u64) -> bool,
) -> Result<Run, StoreError> {
    let first = runs.first().map(|r| r.id).ok_or(StoreError::Corrupt {
        key: "empty merge".into(),
    })?;
    let id = RunId {
        first: first.first,
        tier: first.tier + 1,
    };
    let mut entries = 0u64;
    let (mut outcomes, mut meshes): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
    for kind in IndexKind::ALL {
        let mut streams: Vec<PageStream> = runs
            .iter()
            .map(|run| PageStream::new(index, kind_prefix(run.id, kind)))
            .collect();
        let mut heap = BinaryHeap::new();
        for (i, stream) in streams.iter_mut().enumerate() {
            if let Some((value, sequence, summary)) = stream.next()? {
                heap.push(Reverse((value, sequence, i, summary.validity)));
            }
        }
        let mut writer = PageWriter::default();
        while let Some(Reverse((value, sequence, i, validity))) = heap.pop() {
            if let Some((next_value, next_sequence, summary)) = streams[i].next()? {
                heap.push(Reverse((next_value, next_sequence, i, summary.validity)));
            }
            if drop(sequence) {
                continue;
            }
            let small = match kind {
                IndexKind::Outcome => Some(&mut outcomes),
                IndexKind::Mesh => Some(&mut meshes),
                _ => None,
            };
            if let Some(list) = small {
                if list.last() != Some(&value) {
                    list.push(value.clone());
                }
            }
            entries += 1;
            if let Some(page) = writer.push(&value, sequence, Summary { validity }) {
                put_page(index, id, kind, page)?;
            }
        }
        flush_pages(index, id, kind, &mut writer)?;
    }
    Ok(Run {
        id,
        last: runs.last().map(|r| r.last).unwrap_or(first.first),
        entries,
        outcomes,
        meshes,
    })
}

/// Every entry of one kind of one run, in key order.
struct PageStream {
    pages: sled::Iter,
    page: VecDeque<(Vec<u8>, u64, Summary)>,
}

impl PageStream {
    fn new(index: &sled::Tree, prefix: Vec<u8>) -> Self {
        Self {
            pages: index.scan_prefix(prefix),
            page: VecDeque::new(),
        }
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, u64, Summary)>, StoreError> {
        loop {
            if let Some(entry) = self.page.pop_front() {
                return Ok(Some(entry));
            }
            let Some((key, bytes)) = self.pages.next().transpose().map_err(read_error)? else {
                return Ok(None);
            };
            let decoded = decode_page(&bytes).ok_or_else(|| corrupt(&key))?;
            for entry in &decoded.entries {
                self.page
                    .push_back((decoded.value(entry).to_vec(), entry.sequence, entry.summary));
            }
        }
    }
}

/// Deletes every page of a run.
pub fn delete_run(index: &sled::Tree, run: RunId) -> Result<(), StoreError> {
    for key in index.scan_prefix(run.prefix()).keys() {
        let key = key.map_err(read_error)?;
        index
            .remove(key)
            .map_err(|e| StoreError::Write(Arc::new(e)))?;
    }
    Ok(())
}

/// Run prefixes present in the index tree (one seek per run).
pub fn stored_runs(index: &sled::Tree) -> Result<Vec<RunId>, StoreError> {
    let mut out = Vec::new();
    let mut from: Vec<u8> = Vec::new();
    while let Some((key, _)) = index
        .range(from.as_slice()..)
        .next()
        .transpose()
        .map_err(read_error)?
    {
        let Some(id) = RunId::from_prefix(&key) else {
            break;
        };
        out.push(id);
        // The next possible run prefix.
        match next_prefix(&id.prefix()) {
            Some(next) => from = next,
            None => break,
        }
    }
    Ok(out)
}

fn next_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

fn read_error(error: sled::Error) -> StoreError {
    StoreError::Read(Arc::new(error))
}

fn corrupt(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: format!("index page {key:?}"),
    }
}
