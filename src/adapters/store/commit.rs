//! Appending with group commit: each append writes its record and leaf, then waits for a
//! flush that covers it; one flusher thread batches the flushes (every record durable before
//! its answer).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::domain::audit::{IndexKeys, LeafData, LEAF_HEADER_LEN};
use crate::domain::clock::{from_unix_millis, unix_millis};
use crate::domain::record::Record;

use super::encoding::encode;
use super::error::StoreError;
use super::keys::record_key;
use super::state::{GroupCommit, Inner, COMMIT_INTERVAL};

impl GroupCommit {
    /// Called by an appender after its record is in `written`.
    pub(super) fn request_flush(&self) {
        // SeqCst pairs with `wait_for_work`: either this load sees the flusher idle, or the
        // flusher's check of `written` (after it set `idle`) sees this appender's record.
        if self.idle.load(Ordering::SeqCst) {
            self.wake_flusher();
        }
    }

    pub(super) fn wake_flusher(&self) {
        let _sleep = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_one();
    }

    /// Blocks until there are records newer than the last flush (`unflushed` tells) and returns
    /// true, or returns false once the store is closing with none left.
    pub(super) fn wait_for_work(&self, unflushed: impl Fn() -> bool) -> bool {
        let mut sleep = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        self.idle.store(true, Ordering::SeqCst);
        while !unflushed() && !self.closed.load(Ordering::SeqCst) {
            sleep = self.wake.wait(sleep).unwrap_or_else(|p| p.into_inner());
        }
        self.idle.store(false, Ordering::SeqCst);
        unflushed()
    }
}

impl Inner {
    /// Assigns the next sequence number and inserts the record (not yet durable).
    pub(super) fn append(&self, mut record: Record) -> Result<u64, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        // Index keys depend on neither the sequence number nor the time: outside the lock.
        let keys = IndexKeys::of(&record);
        let mut writer = self.lock_writer();
        let sequence = writer.next_sequence;
        record.sequence = sequence;
        // Recording times never go backwards, so time ranges are sequence ranges.
        let recorded_ms = unix_millis(record.recorded_at).max(writer.last_recorded_ms);
        record.recorded_at = from_unix_millis(recorded_ms);
        let encoded = encode(&record);
        let leaf = LeafData::of(&record, &encoded);
        let mut stored = Vec::with_capacity(LEAF_HEADER_LEN + encoded.len());
        stored.extend_from_slice(&leaf.header());
        stored.extend_from_slice(&encoded);
        if let Err(error) = self.records.insert(record_key(sequence), stored) {
            // Counted as a failed write, like a failed flush: the server stops on it.
            let error = Arc::new(error);
            let flush = self.commit.flushes.load(Ordering::SeqCst);
            let written = self.written.load(Ordering::SeqCst);
            self.commit.durable.send_modify(|state| {
                state.failed = Some((flush, written, error.clone()));
            });
            return Err(StoreError::Write(error));
        }
        writer.next_sequence += 1;
        writer.last_recorded_ms = recorded_ms;
        let leaf_hash = leaf.leaf_hash();
        writer.frontier.push(leaf_hash);
        let segment_full = {
            let mut state = self.write_state();
            state.push(sequence, Some(&keys), leaf_hash);
            !state.frozen.is_empty()
        };
        self.written.store(sequence, Ordering::SeqCst);
        drop(writer);
        if segment_full {
            self.wake_indexer();
        }
        Ok(sequence)
    }

    /// The flusher thread: one `Db::flush` (write-out + fsync) at a time, each covering every
    /// record inserted before it started, then wakes the appenders waiting for it. A plain
    /// thread rather than a tokio task: a busy runtime must not delay durability (and sled's
    /// `flush_async` was seen to hang on a one-worker runtime).
    pub(super) fn run_flusher(&self) {
        let mut last_start: Option<std::time::Instant> = None;
        let mut last_batch = 0u64;
        // The newest record a flush has covered, successful or not (a failed flush is retried
        // when the next record arrives, never in a loop), from what was durable at open
        // (records appended before this thread ran did not wake it).
        let mut attempted = self.commit.durable.borrow().through;
        while self
            .commit
            .wait_for_work(|| self.written.load(Ordering::SeqCst) > attempted)
        {
            // Under load (the previous flush served several appenders), at most one flush per
            // COMMIT_INTERVAL: the appends of the interval gather into one flush, since sled's
            // flush costs CPU beyond the fsync itself. A lone appender is flushed at once.
            if let (Some(last), true) = (last_start, last_batch > 1) {
                let since = last.elapsed();
                if since < COMMIT_INTERVAL {
                    std::thread::sleep(COMMIT_INTERVAL - since);
                }
            }
            // Only this thread flushes, so what is durable never passes `attempted`, and
            // `wait_for_work` returned because `written` did: this flush covers new records.
            let covered = self.written.load(Ordering::SeqCst);
            let before = self.commit.durable.borrow().through;
            attempted = covered;
            last_batch = covered.saturating_sub(before);
            last_start = Some(std::time::Instant::now());
            let flush = self.commit.flushes.fetch_add(1, Ordering::SeqCst);
            let result = self.db.flush();
            if let Some(started) = last_start {
                self.commit.latency.observe(started.elapsed());
            }
            self.commit.durable.send_modify(|state| match result {
                Ok(_) => {
                    state.through = state.through.max(covered);
                    state.failed = None;
                }
                Err(error) => {
                    tracing::error!(%error, "record store flush failed");
                    state.failed = Some((flush, covered, Arc::new(error)));
                }
            });
        }
    }
}
