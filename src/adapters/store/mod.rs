//! Issuance and denial records in sled: durable before any answer (group commit), indexed for
//! audits, and committed to by an append-only Merkle tree.
//!
//! Trees of the sled database:
//! - `records`: `r ‖ sequence (u64 BE)` → leaf header (see [`LeafData`]) ‖ protobuf record;
//! - `index`: runs of index pages (see [`index`] and [`codec`]);
//! - `tiles`: the Merkle tree's hashes (see [`tiles`]);
//! - `pruned`: `sequence` → leaf data of each record removed by retention;
//! - `checkpoints`: `tree size` → signed checkpoint note;
//! - `meta`: layout version, index watermark, run directory, pruning state.
//!
//! Appends are serialised (one writer at a time assigns the sequence number and inserts), so
//! sled's log holds records in sequence order and a crash leaves a prefix: no gaps. Durability:
//! an appender then waits until the flusher thread has completed a flush that started after its
//! insert; one flush serves every appender waiting (group commit). The indexes and Merkle tiles
//! are derived data: a background thread persists them per segment of records, and on start the
//! records after the last persisted segment are read again.

mod answers;
mod blocks;
mod bundles;
pub mod codec;
mod commit;
mod encoding;
mod error;
pub mod index;
mod indexer;
pub mod integrity;
mod keys;
mod meta;
mod open;
pub mod pruned;
mod query;
pub mod retention;
mod rotation;
mod state;
pub mod tiles;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::audit::checkpoint::AuditSigner;
use crate::domain::audit::merkle::{self, Hash};
use crate::domain::audit::{Page, Query, QueryError, MAX_PAGE_SIZE};
use crate::domain::record::{AppendFuture, Outcome, Record, RecordSink};

pub use self::answers::{InclusionProof, LogEntry, Stats};
pub use self::bundles::KeptPartnerBundle;
pub use self::encoding::{decode, encode, from_message, to_message};
use self::error::{read_error, write_error};
pub use self::error::{AuditError, StoreError};
use self::keys::checkpoint_entry;
pub use self::meta::{ExportCursor, SavedCrl};
#[cfg(test)]
use self::open::open_db;
pub use self::open::{prepare_next_start, StoreOptions};
pub use self::rotation::drops_a_root;
pub use self::state::SledStore;
use self::state::{Durability, Inner};
pub use crate::domain::audit::SEGMENT_RECORDS;

impl SledStore {
    /// Opens (or creates) the store for writing and starts its flusher and indexer threads.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens a store without writing to it (the server must be stopped: sled locks the store).
    /// Fails at once with [`StoreError::Locked`] while another process holds it.
    pub fn open_read_only(path: &Path) -> Result<Arc<Self>, StoreError> {
        Self::open_with(
            path,
            StoreOptions {
                read_only: true,
                lock_wait: Duration::ZERO,
                ..StoreOptions::default()
            },
        )
    }

    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Arc<Self>, StoreError> {
        let inner = Arc::new(Inner::open(path, &options)?);
        let store = Arc::new(Self {
            inner,
            workers: Mutex::new(Vec::new()),
        });
        if !options.read_only {
            store.inner.finish_interrupted_batch()?;
            store.spawn("meshroot-commit", |inner| inner.run_flusher())?;
            store.spawn("meshroot-index", |inner| inner.run_indexer())?;
            // Persist what the tail already holds beyond a segment (e.g. after a crash).
            store.inner.wake_indexer();
        }
        Ok(store)
    }

    fn spawn(&self, name: &str, run: fn(&Inner)) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&inner))
            .map_err(|e| StoreError::Open {
                path: self.inner.path.display().to_string(),
                source: Arc::new(e),
            })?;
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        Ok(())
    }

    /// Appends a record and waits until it is durable; returns its sequence number.
    pub async fn append_durable(&self, record: Record) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let flushes_before = inner.commit.flushes.load(Ordering::SeqCst);
        let sequence = inner.append(record)?;
        inner.wait_durable(sequence, flushes_before).await?;
        Ok(sequence)
    }

    /// Flushes everything synchronously (shutdown, CLI).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::Flush(Arc::new(e)))
    }

    /// True while the latest flush failed (until one succeeds): appends are not durable now.
    pub(crate) fn flush_failing(&self) -> bool {
        self.inner.commit.durable.borrow().failed.is_some()
    }

    /// Waits until a write to the store fails (a flush, or inserting a record): a full disk
    /// or an I/O error. sled does not recover from such a failure in the same process, so the
    /// server stops and exits for its supervisor to restart it (docs/hardening.md).
    pub(crate) async fn write_failure(&self) -> StoreError {
        let mut durable = self.inner.commit.durable.subscribe();
        let failed = match durable.wait_for(|state| state.failed.is_some()).await {
            Ok(state) => state.failed.as_ref().map(|(_, _, error)| error.clone()),
            Err(_) => None,
        };
        match failed {
            Some(error) => StoreError::Flush(error),
            // The store was closed: no write failed.
            None => std::future::pending().await,
        }
    }

    /// How long group-commit flushes took (for `/metrics`).
    pub(crate) fn commit_latency(&self) -> &crate::domain::metrics::Histogram {
        &self.inner.commit.latency
    }

    /// How many group-commit flushes have started (each covers every append waiting for it).
    pub fn flushes(&self) -> u64 {
        self.inner.commit.flushes.load(Ordering::SeqCst)
    }

    /// The highest sequence number appended.
    pub fn last_sequence(&self) -> u64 {
        self.inner.written.load(Ordering::SeqCst)
    }

    /// The highest sequence number known durable.
    pub(crate) fn durable_sequence(&self) -> u64 {
        if self.inner.read_only {
            return self.last_sequence();
        }
        self.inner.commit.durable.borrow().through
    }

    /// Resolves (with the new durable sequence number) when more records become durable.
    pub fn subscribe(&self) -> DurableWatch {
        DurableWatch(self.inner.commit.durable.subscribe())
    }

    /// Number of records present (appended minus pruned).
    pub fn len(&self) -> u64 {
        self.last_sequence() - self.inner.pruned_set().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One page of the records `query` selects, in its stable order.
    pub fn query(
        &self,
        query: &Query,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page, AuditError> {
        let query = self.with_revoked_serials(query)?;
        self.inner.query(&query, page_size, page_token)
    }

    /// Every revocation record (`meshroot revoke`), oldest first. They are few, and never
    /// pruned: the revocations in force are rebuilt from them.
    pub fn revocations(&self) -> Result<Vec<Record>, AuditError> {
        self.query_all(&Query {
            outcome: Some(crate::domain::audit::OutcomeFilter::Revoked),
            ..Query::default()
        })
    }

    /// `query` with the serials its revoked-only filter stands for: those this log's
    /// revocation records name.
    fn with_revoked_serials<'q>(
        &self,
        query: &'q Query,
    ) -> Result<std::borrow::Cow<'q, Query>, AuditError> {
        if query.revoked.is_none() {
            return Ok(std::borrow::Cow::Borrowed(query));
        }
        let mut serials = std::collections::BTreeSet::new();
        for record in self.revocations()? {
            if let Outcome::Revoked(revoked) = record.outcome {
                serials.extend(revoked.certificates.into_iter().map(|c| c.serial));
            }
        }
        Ok(std::borrow::Cow::Owned(Query {
            revoked: Some(crate::domain::audit::RevokedSerials(Arc::new(serials))),
            ..query.clone()
        }))
    }

    /// Every record `query` selects (all pages).
    pub fn query_all(&self, query: &Query) -> Result<Vec<Record>, AuditError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.query(query, MAX_PAGE_SIZE, token.as_deref())?;
            out.extend(page.records);
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// How many records `query` selects.
    pub fn count(&self, query: &Query) -> Result<u64, AuditError> {
        let query = &*self.with_revoked_serials(query)?;
        self.inner.count(query)
    }

    /// The record with this sequence number (None if there is none, or it was pruned).
    pub fn get(&self, sequence: u64) -> Result<Option<Record>, StoreError> {
        self.inner.get(sequence)
    }

    /// The log entries `from ..= to` (records and pruned leaves) in order, at most `limit`.
    pub fn entries(&self, from: u64, to: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.inner.entries(from, to, limit)
    }

    /// Signs and stores a checkpoint of every durable record, unless the last one already
    /// covers them; returns the note of the latest checkpoint.
    pub async fn checkpoint(&self, signer: &AuditSigner) -> Result<String, StoreError> {
        let inner = &self.inner;
        let (size, root) = {
            let writer = inner.lock_writer();
            (writer.frontier.size(), writer.frontier.root())
        };
        if let Some((latest, note)) = self.latest_checkpoint()? {
            if latest == size {
                return Ok(note);
            }
        }
        if size > 0 && !inner.read_only {
            let flushes_before = inner.commit.flushes.load(Ordering::SeqCst);
            inner.wait_durable(size, flushes_before).await?;
        }
        let note = signer
            .sign_checkpoint(size, root)
            .map_err(StoreError::Checkpoint)?;
        if !inner.read_only {
            inner
                .checkpoints
                .insert(size.to_be_bytes(), note.as_bytes())
                .map_err(write_error)?;
            self.flush()?;
        }
        Ok(note)
    }

    /// The latest stored checkpoint: `(tree size, note)`.
    pub(crate) fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.inner
            .checkpoints
            .last()
            .map_err(read_error)?
            .map(|(key, value)| checkpoint_entry(&key, &value))
            .transpose()
    }

    /// Every stored checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        self.inner
            .checkpoints
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(read_error)?;
                checkpoint_entry(&key, &value)
            })
            .collect()
    }

    /// The current tree size and root hash (including records not yet checkpointed).
    pub(crate) fn tree_head(&self) -> (u64, Hash) {
        let writer = self.inner.lock_writer();
        (writer.frontier.size(), writer.frontier.root())
    }

    /// An inclusion proof of record `sequence` in the tree of `tree_size` records.
    pub fn prove_inclusion(
        &self,
        sequence: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, AuditError> {
        self.inner.prove_inclusion(sequence, tree_size)
    }

    /// A consistency proof between two tree sizes (RFC 6962 §2.1.2).
    pub(crate) fn prove_consistency(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, AuditError> {
        let view = self.inner.tree_view(new_size)?;
        merkle::consistency_proof(&view, old_size, new_size)?.ok_or_else(|| {
            AuditError::Query(QueryError::Invalid(format!(
                "tree size {old_size} is larger than {new_size}"
            )))
        })
    }

    /// The root hash of the tree of the first `size` records.
    pub fn root_at(&self, size: u64) -> Result<Hash, AuditError> {
        let view = self.inner.tree_view(size)?;
        Ok(merkle::root(&view, size)?)
    }

    pub fn stats(&self) -> Result<Stats, StoreError> {
        self.inner.stats()
    }

    /// Persists every full index segment now (tests, benchmarks; the indexer does it in the
    /// background).
    pub fn persist_index(&self) -> Result<(), StoreError> {
        self.inner.persist_ready_segments()?;
        let mut merged = true;
        while merged {
            merged = self.inner.compact_once()?;
        }
        self.inner.pack_blocks()
    }
}

/// Waits for records to become durable.
pub struct DurableWatch(watch::Receiver<Durability>);

impl DurableWatch {
    /// The highest durable sequence number now.
    pub fn current(&mut self) -> u64 {
        self.0.borrow_and_update().through
    }

    /// Waits until it changes; None once the store is closed.
    pub async fn changed(&mut self) -> Option<u64> {
        self.0.changed().await.ok()?;
        Some(self.0.borrow_and_update().through)
    }
}

impl RecordSink for SledStore {
    fn append(&self, record: Record) -> AppendFuture<'_> {
        Box::pin(async move { Ok(self.append_durable(record).await?) })
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        let inner = &self.inner;
        inner.commit.closed.store(true, Ordering::SeqCst);
        inner.commit.wake_flusher();
        inner.wake_indexer();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for worker in workers {
            let _ = worker.join();
        }
        if !inner.read_only {
            if let Err(error) = inner.db.flush() {
                tracing::error!(%error, "final flush of the record store failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;
mod usage;
