//! The store's shared state: the sled trees, the writer's frontier, the group commit and the
//! in-memory index, held by the handle and by the flusher and indexer threads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::audit::merkle::Frontier;

use super::blocks::BlockCache;
use super::error::StoreError;
use super::index::IndexState;
use super::pruned::PrunedSet;

/// Flushes start at most this often (group commit).
pub(super) const COMMIT_INTERVAL: Duration = Duration::from_millis(2);
/// Pages with at least this many records are read on two threads.
pub(super) const PARALLEL_FETCH: usize = 32;
/// The store layout this code writes: 3 keeps records packed in blocks (`blocks.rs`).
pub(super) const LAYOUT: u32 = 3;
/// The layout before blocks (one key per record), read as it is and packed in the background.
pub(super) const LAYOUT_SINGLE_KEYS: u32 = 2;

/// The group-commit rendezvous between appenders and the flusher thread.
#[derive(Debug)]
pub(super) struct GroupCommit {
    /// Held while the flusher decides to sleep and by whoever wakes it, so no wake-up is lost.
    pub(super) sleep: Mutex<()>,
    pub(super) wake: Condvar,
    /// True while the flusher sleeps for want of work. Only then must an appender wake it: a
    /// condvar notification costs a system call, and a busy flusher looks for new records
    /// itself before it sleeps.
    pub(super) idle: AtomicBool,
    pub(super) closed: AtomicBool,
    /// Flushes started so far.
    pub(super) flushes: AtomicU64,
    /// How long each flush (sled's write-out and fsync) took.
    pub(super) latency: crate::domain::metrics::Histogram,
    pub(super) durable: watch::Sender<Durability>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Durability {
    /// Every record up to this sequence number is durable.
    pub(super) through: u64,
    /// The latest failed flush: (its number, the highest sequence it covered, the error).
    pub(super) failed: Option<(u64, u64, Arc<sled::Error>)>,
}

/// The state only the writer touches.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) next_sequence: u64,
    pub(super) last_recorded_ms: i64,
    pub(super) frontier: Frontier,
}

/// The shared state of a store (the background threads hold it too).
pub(super) struct Inner {
    pub(super) path: PathBuf,
    pub(super) db: sled::Db,
    pub(super) records: sled::Tree,
    pub(super) index: sled::Tree,
    pub(super) tiles: sled::Tree,
    pub(super) pruned: sled::Tree,
    pub(super) checkpoints: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(super) read_only: bool,
    pub(super) writer: Mutex<Writer>,
    /// The highest sequence number inserted (all below it are inserted too).
    pub(super) written: AtomicU64,
    /// Every block through this sequence number has been packed (`blocks.rs`).
    pub(super) packed: AtomicU64,
    /// Decompressed blocks pages read again.
    pub(super) blocks: BlockCache,
    pub(super) commit: GroupCommit,
    pub(super) state: RwLock<IndexState>,
    pub(super) pruned_set: RwLock<PrunedSet>,
    /// Wakes the indexer thread.
    pub(super) indexer_wake: (Mutex<bool>, Condvar),
    /// One index maintenance (segment write or merge) at a time.
    pub(super) maintenance: Mutex<()>,
    /// One pruning pass at a time.
    pub(super) pruning: Mutex<()>,
}

/// The sled-backed record store.
pub struct SledStore {
    pub(super) inner: Arc<Inner>,
    pub(super) workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .field("written", &self.inner.written.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub(super) fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn read_state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn pruned_set(&self) -> std::sync::RwLockReadGuard<'_, PrunedSet> {
        self.pruned_set.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) async fn wait_durable(
        &self,
        sequence: u64,
        flushes_before: u64,
    ) -> Result<(), StoreError> {
        let mut durable = self.commit.durable.subscribe();
        self.commit.request_flush();
        loop {
            {
                let state = durable.borrow_and_update();
                if state.through >= sequence {
                    return Ok(());
                }
                if let Some((flush, covered, error)) = &state.failed {
                    if *flush >= flushes_before && *covered >= sequence {
                        return Err(StoreError::Flush(error.clone()));
                    }
                }
            }
            if durable.changed().await.is_err() {
                return Err(StoreError::Closed);
            }
        }
    }
}
