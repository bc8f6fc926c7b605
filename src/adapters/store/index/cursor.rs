//! Reading a plan: a snapshot of the runs and the tail, sequence-ordered streams per source
//! joined by leapfrog, value cursors over run pages, and the NotAfter walk.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use crate::adapters::store::codec::{
    decode_page, entry_key, kind_prefix, value_prefix_key, IndexPage, RunId,
};
use crate::adapters::store::error::StoreError;
use crate::domain::audit::{order_key, IndexKind, Position, Summary, MESH_SEPARATOR};

use super::plan::{Plan, Source, SourceSpec, ValueSelector};
use super::state::{corrupt, next_prefix, read_error, Entry, IndexState, Run, MAX_PREFIX_VALUES};

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

    fn load(&mut self, page: &IndexPage, complete_from: u64) {
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
        let not_after = crate::domain::audit::from_order_key(&value).unwrap_or_default();
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
