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

mod bundles;
pub mod codec;
mod commit;
mod encoding;
mod error;
pub mod index;
mod indexer;
pub mod integrity;
mod meta;
mod open;
pub mod pruned;
mod query;
pub mod retention;
mod rotation;
pub mod tiles;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use prost::Message as _;
use tokio::sync::watch;

use crate::domain::audit::checkpoint::AuditSigner;
use crate::domain::audit::merkle::{self, Frontier, Hash};
use crate::domain::audit::{
    IndexKeys, LeafData, Page, PageToken, Position, Query, QueryError, LEAF_HEADER_LEN,
    MAX_PAGE_SIZE,
};
use crate::domain::clock::{from_unix_millis, from_unix_seconds, unix_millis};
use crate::domain::record::{
    AppendFuture, CallerRecord, DenialRecord, IssuedCa, IssuedRecord, Outcome, Record, RecordSink,
    RefusalSummary, RevocationRecord, RevokedCertificate, RECORD_VERSION,
};
use crate::pb::store as pb;

use codec::RunId;
use index::{IndexState, Plan, Run, Snapshot, TailSegment};
use pruned::PrunedSet;
use tiles::TreeView;

pub use self::bundles::KeptPartnerBundle;
pub use self::encoding::{decode, encode, from_message, to_message};
pub use self::error::{AuditError, StoreError};
pub use self::meta::{ExportCursor, SavedCrl};
#[cfg(test)]
use self::open::open_db;
pub use self::open::prepare_next_start;
use self::query::entries_between;
pub use self::rotation::drops_a_root;
pub use crate::domain::audit::SEGMENT_RECORDS;
/// Flushes start at most this often (group commit).
const COMMIT_INTERVAL: Duration = Duration::from_millis(2);
/// Pages with at least this many records are read on two threads.
const PARALLEL_FETCH: usize = 32;
/// The store layout this code reads and writes.
const LAYOUT: u32 = 2;

const RECORD_PREFIX: u8 = b'r';
const META_LAYOUT: &[u8] = b"layout";
const META_WATERMARK: &[u8] = b"index-watermark";
const META_RUN_PREFIX: &[u8] = b"run/";
const META_PRUNED_PREFIX: &[u8] = b"pruned-bits/";
/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Records per index segment (tests use small ones to exercise runs and compaction).
    pub segment_records: u64,
    /// Open without writing (the CLI on a stopped server's store).
    pub read_only: bool,
    /// How long to wait for the store's lock (sled releases it from a background thread after
    /// the last handle in this process is dropped); another process holding it is reported
    /// as [`StoreError::Locked`] after this.
    pub lock_wait: Duration,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            segment_records: SEGMENT_RECORDS,
            read_only: false,
            lock_wait: Duration::from_secs(2),
            cache_bytes: 1 << 30,
        }
    }
}

/// One entry of the log, as streamed to auditors: a record, or the leaf of a pruned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// The stored bytes: leaf header ‖ protobuf record.
    Record {
        sequence: u64,
        stored: Vec<u8>,
    },
    Pruned {
        sequence: u64,
        leaf: LeafData,
    },
}

impl LogEntry {
    pub fn sequence(&self) -> u64 {
        match self {
            Self::Record { sequence, .. } | Self::Pruned { sequence, .. } => *sequence,
        }
    }

    /// The leaf data this entry commits to (None if a stored record is malformed).
    pub fn leaf(&self) -> Option<LeafData> {
        match self {
            Self::Record { stored, .. } => leaf_of_stored(stored),
            Self::Pruned { leaf, .. } => Some(*leaf),
        }
    }

    /// The decoded record (None for a pruned one).
    pub fn record(&self) -> Option<Result<Record, StoreError>> {
        match self {
            Self::Record { sequence, stored } => Some(decode_stored(*sequence, stored)),
            Self::Pruned { .. } => None,
        }
    }
}

/// An inclusion proof of one record in a tree size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    pub leaf: LeafData,
    /// The record's protobuf encoding (absent once pruned): its SHA-256 is in the leaf.
    pub record: Option<Vec<u8>>,
    pub path: Vec<Hash>,
}

/// Sizes and ages, for `meshroot audit stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Sequence numbers assigned (records ever appended).
    pub appended: u64,
    /// Records present (appended minus pruned).
    pub records: u64,
    pub pruned: u64,
    pub oldest_sequence: Option<u64>,
    #[serde(serialize_with = "crate::domain::record::serialize_optional_time")]
    pub oldest_recorded_at: Option<SystemTime>,
    #[serde(serialize_with = "crate::domain::record::serialize_optional_time")]
    pub newest_recorded_at: Option<SystemTime>,
    pub index_runs: usize,
    pub index_tail_records: u64,
    pub checkpoints: usize,
    pub latest_checkpoint_size: Option<u64>,
    pub disk_bytes: u64,
}

/// The group-commit rendezvous between appenders and the flusher thread.
#[derive(Debug)]
struct GroupCommit {
    /// Held while the flusher decides to sleep and by whoever wakes it, so no wake-up is lost.
    sleep: Mutex<()>,
    wake: Condvar,
    /// True while the flusher sleeps for want of work. Only then must an appender wake it: a
    /// condvar notification costs a system call, and a busy flusher looks for new records
    /// itself before it sleeps.
    idle: AtomicBool,
    closed: AtomicBool,
    /// Flushes started so far.
    flushes: AtomicU64,
    /// How long each flush (sled's write-out and fsync) took.
    latency: crate::domain::metrics::Histogram,
    durable: watch::Sender<Durability>,
}

#[derive(Debug, Clone, Default)]
struct Durability {
    /// Every record up to this sequence number is durable.
    through: u64,
    /// The latest failed flush: (its number, the highest sequence it covered, the error).
    failed: Option<(u64, u64, Arc<sled::Error>)>,
}

/// The state only the writer touches.
#[derive(Debug)]
struct Writer {
    next_sequence: u64,
    last_recorded_ms: i64,
    frontier: Frontier,
}

/// The shared state of a store (the background threads hold it too).
struct Inner {
    path: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    index: sled::Tree,
    tiles: sled::Tree,
    pruned: sled::Tree,
    checkpoints: sled::Tree,
    meta: sled::Tree,
    read_only: bool,
    writer: Mutex<Writer>,
    /// The highest sequence number inserted (all below it are inserted too).
    written: AtomicU64,
    commit: GroupCommit,
    state: RwLock<IndexState>,
    pruned_set: RwLock<PrunedSet>,
    /// Wakes the indexer thread.
    indexer_wake: (Mutex<bool>, Condvar),
    /// One index maintenance (segment write or merge) at a time.
    maintenance: Mutex<()>,
    /// One pruning pass at a time.
    pruning: Mutex<()>,
}

/// The sled-backed record store.
pub struct SledStore {
    inner: Arc<Inner>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .field("written", &self.inner.written.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

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
    pub fn flush_failing(&self) -> bool {
        self.inner.commit.durable.borrow().failed.is_some()
    }

    /// Waits until a write to the store fails (a flush, or inserting a record): a full disk
    /// or an I/O error. sled does not recover from such a failure in the same process, so the
    /// server stops and exits for its supervisor to restart it (docs/hardening.md).
    pub async fn write_failure(&self) -> StoreError {
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
    pub fn commit_latency(&self) -> &crate::domain::metrics::Histogram {
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
    pub fn durable_sequence(&self) -> u64 {
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
        let note = signer.sign_checkpoint(size, root);
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
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
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
    pub fn tree_head(&self) -> (u64, Hash) {
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
    pub fn prove_consistency(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, AuditError> {
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
        Ok(())
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

impl Inner {
    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn pruned_set(&self) -> std::sync::RwLockReadGuard<'_, PrunedSet> {
        self.pruned_set.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn wait_durable(&self, sequence: u64, flushes_before: u64) -> Result<(), StoreError> {
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

/// Bytes in the files under `path`.
fn directory_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn checkpoint_entry(key: &[u8], value: &[u8]) -> Result<(u64, String), StoreError> {
    let size = key
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(key))?;
    let note = String::from_utf8(value.to_vec()).map_err(|_| corrupt(key))?;
    Ok((size, note))
}

fn run_key(id: RunId) -> Vec<u8> {
    let mut key = META_RUN_PREFIX.to_vec();
    key.extend_from_slice(&id.prefix());
    key
}

fn record_key(sequence: u64) -> [u8; 9] {
    let mut key = [RECORD_PREFIX; 9];
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn sequence_of_record_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// The leaf of a stored record: its header and the SHA-256 of its protobuf part.
fn leaf_of_stored(stored: &[u8]) -> Option<LeafData> {
    let header = LeafData::parse_header(stored)?;
    Some(LeafData {
        record_sha256: crate::domain::digest::sha256(&stored[LEAF_HEADER_LEN..]),
        ..header
    })
}

fn decode_stored(sequence: u64, stored: &[u8]) -> Result<Record, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: format!("record {sequence}"),
    };
    if stored.len() < LEAF_HEADER_LEN {
        return Err(corrupt());
    }
    decode(&stored[LEAF_HEADER_LEN..]).ok_or_else(corrupt)
}

fn read_error(error: sled::Error) -> StoreError {
    StoreError::Read(Arc::new(error))
}

fn write_error(error: sled::Error) -> StoreError {
    StoreError::Write(Arc::new(error))
}

fn corrupt(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
    }
}

#[cfg(test)]
mod tests;
