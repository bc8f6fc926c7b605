//! The background indexer: persisting full tail segments as runs and merging runs (tiered
//! compaction).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::blocks;
use super::codec::RunId;
use super::error::{write_error, StoreError};
use super::index::{self, Run, TailSegment};
use super::keys::run_key;
use super::keys::META_WATERMARK;
use super::state::Inner;
use super::tiles;

impl Inner {
    pub(super) fn wake_indexer(&self) {
        let (flag, condvar) = &self.indexer_wake;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        condvar.notify_one();
    }

    /// The indexer thread: persists full tail segments as runs (with their Merkle tiles) and
    /// merges runs; retries after a failure.
    pub(super) fn run_indexer(&self) {
        let (flag, condvar) = &self.indexer_wake;
        loop {
            {
                let mut woken = flag.lock().unwrap_or_else(|p| p.into_inner());
                while !*woken && !self.commit.closed.load(Ordering::SeqCst) {
                    woken = condvar
                        .wait_timeout(woken, Duration::from_secs(30))
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                *woken = false;
            }
            if self.commit.closed.load(Ordering::SeqCst) {
                return;
            }
            let result = self.persist_ready_segments().and_then(|()| {
                // Merge until no tier is full (each merge may fill the next tier).
                let mut merged = true;
                while merged && !self.commit.closed.load(Ordering::SeqCst) {
                    merged = self.compact_once()?;
                }
                self.pack_blocks()
            });
            if let Err(error) = result {
                tracing::error!(%error, "index maintenance failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
                self.wake_indexer();
            }
        }
    }

    /// Writes every full tail segment as a run.
    pub(super) fn persist_ready_segments(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        let _one_at_a_time = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let (segment, watermark) = {
                let state = self.read_state();
                match state.frozen.front() {
                    Some(segment) => (segment.clone(), state.watermark),
                    None => return Ok(()),
                }
            };
            // The run must never point past durable records.
            self.db
                .flush()
                .map_err(|e| StoreError::Flush(Arc::new(e)))?;
            self.persist_segment(&segment, watermark)?;
        }
    }

    pub(super) fn persist_segment(
        &self,
        segment: &TailSegment,
        watermark: u64,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let id = RunId {
            first: segment.first,
            tier: 0,
        };
        let run = index::write_run(&self.index, id, segment)?;
        tiles::write_tiles(&self.tiles, watermark, segment.last(), &segment.leaves)?;
        let mut batch = sled::Batch::default();
        batch.insert(run_key(id), run.encode());
        batch.insert(META_WATERMARK, &segment.last().to_be_bytes());
        self.meta.apply_batch(batch).map_err(write_error)?;
        {
            let mut state = self.write_state();
            let mut runs = state.runs.as_ref().clone();
            runs.push(run);
            state.runs = Arc::new(runs);
            state.frozen.pop_front();
            state.watermark = segment.last();
        }
        tracing::debug!(
            first = segment.first,
            last = segment.last(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index segment persisted"
        );
        Ok(())
    }

    /// Packs the records of every whole block at or below the index watermark into their
    /// block (`blocks.rs`), oldest first; a store from before blocks is converted this way, a
    /// block at a time, stopping early when the store closes.
    pub(super) fn pack_blocks(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        let watermark = self.read_state().watermark;
        loop {
            let packed = self.packed.load(Ordering::SeqCst);
            let end = packed + blocks::BLOCK_RECORDS;
            if end > watermark || self.commit.closed.load(Ordering::SeqCst) {
                return Ok(());
            }
            {
                // Pruning rewrites blocks too.
                let _pruning = self.pruning.lock().unwrap_or_else(|p| p.into_inner());
                blocks::pack(&self.records, &self.blocks, packed + 1)?;
            }
            self.packed.store(end, Ordering::SeqCst);
        }
    }

    /// Merges the oldest [`index::COMPACTION_FANIN`] runs of a tier that has that many;
    /// returns whether it merged.
    pub(super) fn compact_once(&self) -> Result<bool, StoreError> {
        if self.read_only {
            return Ok(false);
        }
        let _one_at_a_time = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let runs = self.read_state().runs.clone();
        let Some(start) = (0..runs.len()).find(|&i| {
            runs.len() - i >= index::COMPACTION_FANIN
                && runs[i..i + index::COMPACTION_FANIN]
                    .iter()
                    .all(|run| run.id.tier == runs[i].id.tier)
        }) else {
            return Ok(false);
        };
        let group: Vec<Run> = runs[start..start + index::COMPACTION_FANIN].to_vec();
        let started = std::time::Instant::now();
        let merged = {
            let pruned = self.pruned_set();
            index::merge_runs(&self.index, &group, &|sequence| pruned.contains(sequence))?
        };
        let mut batch = sled::Batch::default();
        batch.insert(run_key(merged.id), merged.encode());
        for run in &group {
            batch.remove(run_key(run.id).to_vec());
        }
        self.meta.apply_batch(batch).map_err(write_error)?;
        let old = {
            let mut state = self.write_state();
            let mut next: Vec<Run> = Vec::with_capacity(runs.len());
            next.extend_from_slice(&runs[..start]);
            next.push(merged.clone());
            next.extend_from_slice(&runs[start + index::COMPACTION_FANIN..]);
            std::mem::replace(&mut state.runs, Arc::new(next))
        };
        drop(runs);
        // Queries that started before the swap may still read the old runs' pages.
        while Arc::strong_count(&old) > 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        for run in &group {
            index::delete_run(&self.index, run.id)?;
        }
        tracing::debug!(
            first = merged.id.first,
            last = merged.last,
            tier = merged.id.tier,
            entries = merged.entries,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index runs merged"
        );
        Ok(true)
    }
}
