//! Runs on disk: writing a tail segment as a run, merging runs (tiered compaction), deleting
//! them and listing what is stored.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use crate::adapters::store::codec::{decode_page, entry_key, kind_prefix, PageWriter, RunId};
use crate::adapters::store::error::StoreError;
use crate::domain::audit::{IndexKind, Summary};

use super::state::{corrupt, next_prefix, read_error, Run, TailSegment};

/// Writes the entries of a tail segment as a run; returns its directory entry.
pub(crate) fn write_run(
    index: &sled::Tree,
    id: RunId,
    segment: &TailSegment,
) -> Result<Run, StoreError> {
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
pub(crate) fn merge_runs(
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
pub(crate) fn delete_run(index: &sled::Tree, run: RunId) -> Result<(), StoreError> {
    for key in index.scan_prefix(run.prefix()).keys() {
        let key = key.map_err(read_error)?;
        index
            .remove(key)
            .map_err(|e| StoreError::Write(Arc::new(e)))?;
    }
    Ok(())
}

/// Run prefixes present in the index tree (one seek per run).
pub(crate) fn stored_runs(index: &sled::Tree) -> Result<Vec<RunId>, StoreError> {
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
