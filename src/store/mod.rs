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

pub mod codec;
pub mod index;
pub mod integrity;
pub mod pruned;
pub mod retention;
pub mod tiles;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use prost::Message as _;
use tokio::sync::watch;

use crate::audit::checkpoint::AuditSigner;
use crate::audit::merkle::{self, Frontier, Hash};
use crate::audit::{
    AuditError, IndexKeys, LeafData, Page, PageToken, Position, Query, QueryError, LEAF_HEADER_LEN,
    MAX_PAGE_SIZE,
};
use crate::clock::{from_unix_millis, from_unix_seconds, unix_millis};
use crate::pb::store as pb;
use crate::record::{
    AppendFuture, CallerRecord, DenialRecord, IssuedRecord, Outcome, Record, RecordSink,
    RefusalSummary, StoreError, RECORD_VERSION,
};

use codec::RunId;
use index::{IndexState, Plan, Run, Snapshot, TailSegment};
use pruned::PrunedSet;
use tiles::TreeView;

pub use crate::audit::SEGMENT_RECORDS;
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
/// `signer/<mesh>/<SHA-256 of a signing certificate>` → that certificate and the intermediates above it
/// (DER, each with a u32 length): which roots the certificates it signed chain to, long after
/// it was rotated out.
const META_SIGNER_PREFIX: &[u8] = b"signer/";

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
    #[serde(serialize_with = "crate::record::serialize_optional_time")]
    pub oldest_recorded_at: Option<SystemTime>,
    #[serde(serialize_with = "crate::record::serialize_optional_time")]
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
    latency: crate::metrics::Histogram,
    durable: watch::Sender<Durability>,
}

#[derive(Debug, Clone, Default)]
struct Durability {
    /// Every record up to this sequence number is durable.
    through: u64,
    /// The latest failed flush: (its number, the highest sequence it covered, the error).
    failed: Option<(u64, u64, Arc<sled::Error>)>,
}

impl GroupCommit {
    /// Called by an appender after its record is in `written`.
    fn request_flush(&self) {
        // SeqCst pairs with `wait_for_work`: either this load sees the flusher idle, or the
        // flusher's check of `written` (after it set `idle`) sees this appender's record.
        if self.idle.load(Ordering::SeqCst) {
            self.wake_flusher();
        }
    }

    fn wake_flusher(&self) {
        let _sleep = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_one();
    }

    /// Blocks until there are records newer than the last flush (`unflushed` tells) and returns
    /// true, or returns false once the store is closing with none left.
    fn wait_for_work(&self, unflushed: impl Fn() -> bool) -> bool {
        let mut sleep = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        self.idle.store(true, Ordering::SeqCst);
        while !unflushed() && !self.closed.load(Ordering::SeqCst) {
            sleep = self.wake.wait(sleep).unwrap_or_else(|p| p.into_inner());
        }
        self.idle.store(false, Ordering::SeqCst);
        unflushed()
    }
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

    /// Remembers `mesh`'s signing certificate and the intermediates above it (`chain[0]`
    /// signs), so that a later root rotation can tell which root the certificates it signed
    /// chain to, even after it was rotated out.
    pub fn remember_signer(&self, mesh: &str, chain: &[Vec<u8>]) -> Result<(), StoreError> {
        let Some(signing) = chain.first() else {
            return Ok(());
        };
        if self.inner.read_only {
            return Ok(());
        }
        let key = signer_key(mesh, &crate::digest::sha256(signing));
        let mut value = Vec::new();
        for der in chain {
            value.extend_from_slice(&u32::try_from(der.len()).unwrap_or(u32::MAX).to_be_bytes());
            value.extend_from_slice(der);
        }
        if self.inner.meta.get(&key).map_err(read_error)?.as_deref() == Some(value.as_slice()) {
            return Ok(());
        }
        self.inner.meta.insert(key, value).map_err(write_error)?;
        self.flush()
    }

    /// Forgets a signer none of whose certificates is still valid.
    pub fn forget_signer(&self, mesh: &str, sha256: &[u8]) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Ok(());
        }
        self.inner
            .meta
            .remove(signer_key(mesh, sha256))
            .map_err(write_error)?;
        self.flush()
    }

    /// `mesh`'s remembered signing certificates: SHA-256 → chain (signing certificate first).
    pub fn signers(
        &self,
        mesh: &str,
    ) -> Result<std::collections::HashMap<Vec<u8>, Vec<Vec<u8>>>, StoreError> {
        let prefix = signer_key(mesh, &[]);
        let mut signers = std::collections::HashMap::new();
        for entry in self.inner.meta.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(read_error)?;
            let mut chain = Vec::new();
            let mut rest: &[u8] = &value;
            while rest.len() >= 4 {
                let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(der) = rest.get(4..4 + length) else {
                    break;
                };
                chain.push(der.to_vec());
                rest = &rest[4 + length..];
            }
            signers.insert(key[prefix.len()..].to_vec(), chain);
        }
        Ok(signers)
    }

    /// True while the latest flush failed (until one succeeds): appends are not durable now.
    pub fn flush_failing(&self) -> bool {
        self.inner.commit.durable.borrow().failed.is_some()
    }

    /// Waits until a write to the store fails (a flush, or inserting a record): a full disk
    /// or an I/O error. sled does not recover from such a failure in the same process, so the
    /// server stops and exits for its supervisor to restart it (README, "Limits and
    /// hardening").
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
    pub fn commit_latency(&self) -> &crate::metrics::Histogram {
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
        self.inner.query(query, page_size, page_token)
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
        Box::pin(self.append_durable(record))
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
    fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let display = path.display().to_string();
        let open_error = |e: sled::Error| {
            if is_lock_contention(&e) {
                StoreError::Locked {
                    path: display.clone(),
                }
            } else {
                StoreError::Open {
                    path: display.clone(),
                    source: Arc::new(e),
                }
            }
        };
        if options.read_only && !path.join("db").exists() {
            return Err(StoreError::Open {
                path: display.clone(),
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no record store there",
                )),
            });
        }
        let db = open_db(path, options.lock_wait, options.cache_bytes).map_err(open_error)?;
        let tree = |name: &str| db.open_tree(name).map_err(open_error);
        let (records, index, tiles, pruned, checkpoints, meta) = (
            tree("records")?,
            tree("index")?,
            tree("tiles")?,
            tree("pruned")?,
            tree("checkpoints")?,
            tree("meta")?,
        );
        match meta.get(META_LAYOUT).map_err(open_error)? {
            Some(version) if version.as_ref() == LAYOUT.to_be_bytes() => {}
            Some(version) => {
                return Err(StoreError::UnknownLayout {
                    path: display,
                    version: format!("{:?}", version.as_ref()),
                })
            }
            None if records.is_empty() => {
                if !options.read_only {
                    meta.insert(META_LAYOUT, &LAYOUT.to_be_bytes())
                        .map_err(open_error)?;
                }
            }
            None => {
                return Err(StoreError::UnknownLayout {
                    path: display,
                    version: "1 (from a development build; start with a new store)".into(),
                })
            }
        }

        // The run directory, then drop index pages of runs it does not list (a merge or a
        // segment write interrupted by a crash).
        let mut runs = Vec::new();
        for entry in meta.scan_prefix(META_RUN_PREFIX) {
            let (key, value) = entry.map_err(read_error)?;
            let id = RunId::from_prefix(&key[META_RUN_PREFIX.len()..]).ok_or(corrupt(&key))?;
            runs.push(Run::decode(id, &value).ok_or(corrupt(&key))?);
        }
        runs.sort_by_key(|run| run.id.first);
        if !options.read_only {
            for stored in index::stored_runs(&index)? {
                if !runs.iter().any(|run| run.id == stored) {
                    tracing::info!(
                        run = stored.first,
                        tier = stored.tier,
                        "removing pages of an unfinished index run"
                    );
                    index::delete_run(&index, stored)?;
                }
            }
        }
        let watermark = match meta.get(META_WATERMARK).map_err(read_error)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt(META_WATERMARK))?,
            ),
            None => 0,
        };
        let mut pruned_set = PrunedSet::default();
        for entry in meta.scan_prefix(META_PRUNED_PREFIX) {
            let (key, value) = entry.map_err(read_error)?;
            let chunk = key
                .get(META_PRUNED_PREFIX.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or(corrupt(&key))?;
            if !pruned_set.load_chunk(chunk, &value) {
                return Err(corrupt(&key));
            }
        }

        let mut state = IndexState::new(runs, watermark, options.segment_records);
        // The records after the watermark: their index entries and leaves go back into the
        // tail; the last one tells the next sequence number and time.
        let mut last_sequence = watermark;
        let mut last_recorded_ms = i64::MIN;
        let mut tail = Vec::new();
        loop {
            // A chunk at a time: after a long outage of the indexer the tail may be large.
            tail.clear();
            tail.extend(entries_between(
                &records,
                &pruned,
                last_sequence + 1,
                u64::MAX,
                8_192,
            )?);
            if tail.is_empty() {
                break;
            }
            for entry in &tail {
                let sequence = entry.sequence();
                if sequence != last_sequence + 1 {
                    // Records were removed behind meshroot's back. A server must not go on
                    // appending to a damaged log; a reader still opens it, to verify and query.
                    if !options.read_only {
                        return Err(StoreError::Corrupt {
                            key: format!(
                                "records {}..{sequence} are missing (run `meshroot audit verify`)",
                                last_sequence + 1
                            ),
                        });
                    }
                    tracing::warn!(
                        from = last_sequence + 1,
                        to = sequence - 1,
                        "records are missing"
                    );
                    while last_sequence + 1 < sequence {
                        last_sequence += 1;
                        state.push(last_sequence, None, [0; 32]);
                    }
                }
                let leaf = entry.leaf().ok_or(StoreError::Corrupt {
                    key: format!("record {sequence}"),
                })?;
                let keys = match entry.record() {
                    Some(record) => Some(IndexKeys::of(&record?)),
                    None => None,
                };
                state.push(sequence, keys.as_ref(), leaf.leaf_hash());
                last_sequence = sequence;
                last_recorded_ms = leaf.recorded_at_ms;
            }
        }
        if last_sequence == watermark && watermark > 0 {
            // Everything is in runs: the newest record tells the time.
            if let Some(entry) = entries_between(&records, &pruned, watermark, watermark, 1)?
                .into_iter()
                .next()
            {
                last_recorded_ms = entry.leaf().map(|l| l.recorded_at_ms).unwrap_or(i64::MIN);
            }
        }
        let frontier = {
            let view = TreeView {
                tiles: &tiles,
                watermark,
                tail: state
                    .tail_leaves(watermark + 1, last_sequence)
                    .unwrap_or_default(),
            };
            Frontier::of(&view, last_sequence)?
        };
        let (durable, _) = watch::channel(Durability {
            through: last_sequence,
            failed: None,
        });
        Ok(Self {
            path: path.to_owned(),
            db,
            records,
            index,
            tiles,
            pruned,
            checkpoints,
            meta,
            read_only: options.read_only,
            writer: Mutex::new(Writer {
                next_sequence: last_sequence + 1,
                last_recorded_ms,
                frontier,
            }),
            written: AtomicU64::new(last_sequence),
            commit: GroupCommit {
                sleep: Mutex::new(()),
                idle: AtomicBool::new(false),
                wake: Condvar::new(),
                closed: AtomicBool::new(false),
                flushes: AtomicU64::new(0),
                latency: crate::metrics::Histogram::default(),
                durable,
            },
            state: RwLock::new(state),
            pruned_set: RwLock::new(pruned_set),
            indexer_wake: (Mutex::new(false), Condvar::new()),
            maintenance: Mutex::new(()),
            pruning: Mutex::new(()),
        })
    }

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

    /// Assigns the next sequence number and inserts the record (not yet durable).
    fn append(&self, mut record: Record) -> Result<u64, StoreError> {
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

    /// The flusher thread: one `Db::flush` (write-out + fsync) at a time, each covering every
    /// record inserted before it started, then wakes the appenders waiting for it. A plain
    /// thread rather than a tokio task: a busy runtime must not delay durability (and sled's
    /// `flush_async` was seen to hang on a one-worker runtime).
    fn run_flusher(&self) {
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

    fn wake_indexer(&self) {
        let (flag, condvar) = &self.indexer_wake;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        condvar.notify_one();
    }

    /// The indexer thread: persists full tail segments as runs (with their Merkle tiles) and
    /// merges runs; retries after a failure.
    fn run_indexer(&self) {
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
                Ok(())
            });
            if let Err(error) = result {
                tracing::error!(%error, "index maintenance failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
                self.wake_indexer();
            }
        }
    }

    /// Writes every full tail segment as a run.
    fn persist_ready_segments(&self) -> Result<(), StoreError> {
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

    fn persist_segment(&self, segment: &TailSegment, watermark: u64) -> Result<(), StoreError> {
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

    /// Merges the oldest [`index::COMPACTION_FANIN`] runs of a tier that has that many;
    /// returns whether it merged.
    fn compact_once(&self) -> Result<bool, StoreError> {
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

    fn query(
        &self,
        query: &Query,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page, AuditError> {
        query.validate()?;
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let start = page_token
            .map(|token| PageToken::decode(token, query))
            .transpose()?
            .map(|token| token.position);
        let mut positions = Vec::with_capacity(page_size + 1);
        self.run_query(query, start, &mut |position| {
            positions.push(position);
            positions.len() <= page_size
        })?;
        let next_page_token = positions.get(page_size).map(|position| {
            PageToken {
                fingerprint: query.fingerprint(),
                position: *position,
            }
            .encode()
        });
        let sequences: Vec<u64> = positions
            .iter()
            .take(page_size)
            .map(|position| match position {
                Position::Sequence(sequence) | Position::Expiry(_, sequence) => *sequence,
            })
            .collect();
        Ok(Page {
            records: self.fetch(&sequences)?,
            next_page_token,
        })
    }

    /// The records with these sequence numbers, in the order given (a record pruned since the
    /// query found it is simply left out). Reads them in sequence order, which sled serves
    /// faster, and large pages on two threads: a page's records are scattered over the log.
    fn fetch(&self, sequences: &[u64]) -> Result<Vec<Record>, StoreError> {
        let mut sorted: Vec<(usize, u64)> = sequences.iter().copied().enumerate().collect();
        sorted.sort_unstable_by_key(|(_, sequence)| *sequence);
        let read = |part: &[(usize, u64)]| -> Result<Vec<(usize, Record)>, StoreError> {
            let mut out = Vec::with_capacity(part.len());
            for (at, sequence) in part {
                if let Some(record) = self.get(*sequence)? {
                    out.push((*at, record));
                }
            }
            Ok(out)
        };
        let mut found = if sorted.len() >= PARALLEL_FETCH {
            let (first, second) = sorted.split_at(sorted.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| read(second));
                let mut found = read(first)?;
                found.extend(other.join().unwrap_or(Err(StoreError::Closed))?);
                Ok::<_, StoreError>(found)
            })?
        } else {
            read(&sorted)?
        };
        found.sort_unstable_by_key(|(at, _)| *at);
        Ok(found.into_iter().map(|(_, record)| record).collect())
    }

    fn count(&self, query: &Query) -> Result<u64, AuditError> {
        query.validate()?;
        let plan = index::plan(query);
        if plan == Plan::Sequence {
            let (lo, hi) = self.sequence_bounds(query)?;
            let span = (hi + 1).saturating_sub(lo);
            return Ok(span - self.pruned_set().count_in(lo, hi).min(span));
        }
        let mut count = 0u64;
        self.run_query(query, None, &mut |_| {
            count += 1;
            true
        })?;
        Ok(count)
    }

    /// Walks the matches of `query` in result order from `start`.
    fn run_query(
        &self,
        query: &Query,
        start: Option<Position>,
        visit: &mut dyn FnMut(Position) -> bool,
    ) -> Result<(), AuditError> {
        let plan = index::plan(query);
        let (lo, hi) = self.sequence_bounds(query)?;
        if plan == Plan::Sequence {
            let from = match start {
                Some(Position::Sequence(next)) => next.max(lo),
                _ => lo,
            };
            for key in self
                .records
                .range(record_key(from)..=record_key(hi.max(from)))
                .keys()
            {
                let key = key.map_err(read_error)?;
                let Some(sequence) = sequence_of_record_key(&key) else {
                    continue;
                };
                if sequence > hi || !visit(Position::Sequence(sequence)) {
                    break;
                }
            }
            return Ok(());
        }
        let snapshot = Snapshot::take(&self.index, &self.read_state(), &plan);
        let pruned = self.pruned_set();
        index::walk(
            &snapshot,
            &plan,
            lo,
            hi,
            start,
            &|sequence, summary| !pruned.contains(sequence) && query.summary_matches(summary),
            visit,
        )?;
        Ok(())
    }

    /// The sequence numbers a query's time range covers.
    fn sequence_bounds(&self, query: &Query) -> Result<(u64, u64), StoreError> {
        let last = self.written.load(Ordering::SeqCst);
        let lo = match query.since {
            Some(since) => self.first_sequence_at_or_after(unix_millis(since), last)?,
            None => 1,
        };
        let hi = match query.until {
            Some(until) => self
                .first_sequence_at_or_after(unix_millis(until), last)?
                .saturating_sub(1),
            None => last,
        };
        Ok((lo, hi.min(last)))
    }

    /// The smallest sequence number recorded at or after `millis` (`last + 1` if none): a
    /// binary search over the records, whose times never decrease.
    fn first_sequence_at_or_after(&self, millis: i64, last: u64) -> Result<u64, StoreError> {
        let (mut lo, mut hi) = (1u64, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at_or_after = match self
                .records
                .range(record_key(mid)..=record_key(last))
                .next()
                .transpose()
                .map_err(read_error)?
            {
                Some((_, stored)) => leaf_of_stored(&stored)
                    .map(|leaf| leaf.recorded_at_ms >= millis)
                    .unwrap_or(true),
                // Only pruned records from `mid` on: nothing there.
                None => true,
            };
            if at_or_after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    fn get(&self, sequence: u64) -> Result<Option<Record>, StoreError> {
        match self.records.get(record_key(sequence)).map_err(read_error)? {
            Some(stored) => decode_stored(sequence, &stored).map(Some),
            None => Ok(None),
        }
    }

    fn entries(&self, from: u64, to: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        entries_between(&self.records, &self.pruned, from, to, limit)
    }

    /// The tree as of `size` records (at most the records appended).
    fn tree_view(&self, size: u64) -> Result<TreeView<'_>, AuditError> {
        let state = self.read_state();
        let last = self.written.load(Ordering::SeqCst);
        if size > last {
            return Err(AuditError::Query(QueryError::Invalid(format!(
                "the log holds {last} records, not {size}"
            ))));
        }
        let watermark = state.watermark.min(size);
        let tail = if size > watermark {
            state
                .tail_leaves(watermark + 1, size)
                .ok_or_else(|| StoreError::Corrupt {
                    key: "in-memory Merkle leaves".into(),
                })?
        } else {
            Vec::new()
        };
        Ok(TreeView {
            tiles: &self.tiles,
            watermark,
            tail,
        })
    }

    fn prove_inclusion(&self, sequence: u64, tree_size: u64) -> Result<InclusionProof, AuditError> {
        if sequence == 0 || sequence > tree_size {
            return Err(AuditError::Query(QueryError::Invalid(format!(
                "record {sequence} is not in a tree of {tree_size} records"
            ))));
        }
        let entry = self
            .entries(sequence, sequence, 1)?
            .into_iter()
            .next()
            .ok_or_else(|| AuditError::NotFound(format!("no record {sequence}")))?;
        let leaf = entry.leaf().ok_or(StoreError::Corrupt {
            key: format!("record {sequence}"),
        })?;
        let view = self.tree_view(tree_size)?;
        let path = merkle::inclusion_proof(&view, sequence - 1, tree_size)?.unwrap_or_default();
        let record = match entry {
            LogEntry::Record { stored, .. } => Some(stored[LEAF_HEADER_LEN..].to_vec()),
            LogEntry::Pruned { .. } => None,
        };
        Ok(InclusionProof {
            leaf_index: sequence - 1,
            tree_size,
            leaf,
            record,
            path,
        })
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        let appended = self.written.load(Ordering::SeqCst);
        let pruned = self.pruned_set().len();
        let oldest = self
            .records
            .first()
            .map_err(read_error)?
            .and_then(|(key, stored)| {
                Some((sequence_of_record_key(&key)?, leaf_of_stored(&stored)?))
            });
        let newest = self
            .records
            .last()
            .map_err(read_error)?
            .and_then(|(_, stored)| leaf_of_stored(&stored));
        let state = self.read_state();
        let latest = self.checkpoints.last().map_err(read_error)?;
        Ok(Stats {
            appended,
            records: appended - pruned.min(appended),
            pruned,
            oldest_sequence: oldest.map(|(sequence, _)| sequence),
            oldest_recorded_at: oldest.map(|(_, leaf)| from_unix_millis(leaf.recorded_at_ms)),
            newest_recorded_at: newest.map(|leaf| from_unix_millis(leaf.recorded_at_ms)),
            index_runs: state.runs.len(),
            index_tail_records: state.tail_len(),
            checkpoints: self.checkpoints.len(),
            latest_checkpoint_size: latest
                .and_then(|(key, _)| key.as_ref().try_into().ok().map(u64::from_be_bytes)),
            disk_bytes: directory_size(&self.path),
        })
    }
}

/// Opens sled, waiting briefly if the lock is still held by this process's previous handle
/// (sled releases it from a background thread after the last handle is dropped).
fn open_db(path: &Path, lock_wait: Duration, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + lock_wait;
    loop {
        let result = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Durability comes from our own group commit; no background flush timer needed.
            .flush_every_ms(None)
            .open();
        match result {
            Err(error) if is_lock_contention(&error) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether sled could not take the store's file lock. sled 0.34 reports it as an `Other` I/O
/// error whose text carries the `WouldBlock` of `flock`, so the text is all there is to go by.
fn is_lock_contention(error: &sled::Error) -> bool {
    match error {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
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

/// Log entries `from ..= to`, merging the records and the pruned leaves, at most `limit`.
fn entries_between(
    records: &sled::Tree,
    pruned: &sled::Tree,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<LogEntry>, StoreError> {
    if from > to {
        return Ok(Vec::new());
    }
    let keyed = |entry: Result<(sled::IVec, sled::IVec), sled::Error>, skip: usize| {
        let (key, value) = entry.map_err(read_error)?;
        let sequence = key
            .get(skip..)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| corrupt(&key))?;
        Ok::<_, StoreError>((sequence, value))
    };
    let mut present = records
        .range(record_key(from)..=record_key(to))
        .map(|entry| keyed(entry, 1))
        .peekable();
    let mut removed = pruned
        .range(from.to_be_bytes()..=to.to_be_bytes())
        .map(|entry| keyed(entry, 0))
        .peekable();
    let mut out = Vec::new();
    while out.len() < limit {
        let next_record = peek_sequence(&mut present)?;
        let next_pruned = peek_sequence(&mut removed)?;
        let take_record = match (next_record, next_pruned) {
            (None, None) => break,
            (Some(record), Some(pruned)) => record <= pruned,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_record {
            let Some(Ok((sequence, stored))) = present.next() else {
                break;
            };
            if next_pruned == Some(sequence) {
                // Both present: the record wins; verification reports the inconsistency.
                removed.next();
            }
            out.push(LogEntry::Record {
                sequence,
                stored: stored.to_vec(),
            });
        } else {
            let Some(Ok((sequence, bytes))) = removed.next() else {
                break;
            };
            let leaf = LeafData::parse(&bytes).ok_or(StoreError::Corrupt {
                key: format!("pruned leaf {sequence}"),
            })?;
            out.push(LogEntry::Pruned { sequence, leaf });
        }
    }
    Ok(out)
}

/// The sequence number of the next entry, taking an error out of the iterator.
fn peek_sequence<I>(entries: &mut std::iter::Peekable<I>) -> Result<Option<u64>, StoreError>
where
    I: Iterator<Item = Result<(u64, sled::IVec), StoreError>>,
{
    match entries.peek() {
        None => Ok(None),
        Some(Ok((sequence, _))) => Ok(Some(*sequence)),
        Some(Err(_)) => match entries.next() {
            Some(Err(error)) => Err(error),
            _ => Ok(None),
        },
    }
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
        record_sha256: crate::digest::sha256(&stored[LEAF_HEADER_LEN..]),
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

fn signer_key(mesh: &str, sha256: &[u8]) -> Vec<u8> {
    let mut key = META_SIGNER_PREFIX.to_vec();
    key.extend_from_slice(mesh.as_bytes());
    key.push(b'/');
    key.extend_from_slice(sha256);
    key
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

/// The protobuf encoding of a record (format `meshroot.store.v1.Record`).
pub fn encode(record: &Record) -> Vec<u8> {
    to_message(record).encode_to_vec()
}

/// A record as its protobuf message.
pub fn to_message(record: &Record) -> pb::Record {
    let caller = &record.caller;
    let outcome = match &record.outcome {
        Outcome::Issued(issued) => pb::record::Outcome::Issued(pb::Issuance {
            serial: issued.serial.clone(),
            spiffe_id: issued.spiffe_id.clone(),
            requested_spiffe_id: issued.requested_spiffe_id.clone(),
            mesh: issued.mesh.clone(),
            trust_domain: issued.trust_domain.clone(),
            namespace: issued.namespace.clone(),
            service_account: issued.service_account.clone(),
            not_before: crate::clock::unix_seconds(issued.not_before),
            not_after: crate::clock::unix_seconds(issued.not_after),
            key_algorithm: issued.key_algorithm.clone(),
            key_bits: issued.key_bits,
            public_key_sha256: issued.public_key_sha256.clone(),
            csr_sha256: issued.csr_sha256.clone(),
            intermediate_sha256: issued.intermediate_sha256.clone(),
            requested_ttl_seconds: issued.requested_ttl_seconds,
            certificate_sha256: issued.certificate_sha256.clone(),
            dns_names: issued.dns_names.clone(),
        }),
        Outcome::Denied(denied) => pb::record::Outcome::Denied(pb::Denial {
            reason: denied.reason.clone(),
            detail: denied.detail.clone(),
            mesh: denied.mesh.clone(),
            requested_spiffe_id: denied.requested_spiffe_id.clone(),
            csr_sha256: denied.csr_sha256.clone(),
            summary: denied.summary.as_ref().map(|summary| pb::RefusalSummary {
                count: summary.count,
                first_at_ms: unix_millis(summary.first_at),
                last_at_ms: unix_millis(summary.last_at),
            }),
        }),
    };
    pb::Record {
        version: RECORD_VERSION,
        sequence: record.sequence,
        recorded_at_ms: unix_millis(record.recorded_at),
        request_id: record.request_id.clone(),
        caller: Some(pb::Caller {
            authenticator: caller.authenticator.clone(),
            issuer: caller.issuer.clone(),
            subject: caller.subject.clone(),
            cluster_id: caller.cluster_id.clone(),
            peer_address: caller.peer_address.clone(),
            spiffe_id: caller.spiffe_id.clone(),
            pod_name: caller.pod_name.clone(),
            pod_uid: caller.pod_uid.clone(),
        }),
        outcome: Some(outcome),
    }
}

/// Decodes a protobuf record; None if it is malformed or of a newer format.
pub fn decode(bytes: &[u8]) -> Option<Record> {
    from_message(pb::Record::decode(bytes).ok()?)
}

/// A record from its protobuf message; None if it is incomplete or of a newer format.
pub fn from_message(record: pb::Record) -> Option<Record> {
    if record.version == 0 || record.version > RECORD_VERSION {
        return None;
    }
    let caller = record.caller.unwrap_or_default();
    let outcome = match record.outcome? {
        pb::record::Outcome::Issued(issued) => Outcome::Issued(IssuedRecord {
            serial: issued.serial,
            spiffe_id: issued.spiffe_id,
            requested_spiffe_id: issued.requested_spiffe_id,
            dns_names: issued.dns_names,
            mesh: issued.mesh,
            trust_domain: issued.trust_domain,
            namespace: issued.namespace,
            service_account: issued.service_account,
            not_before: from_unix_seconds(issued.not_before),
            not_after: from_unix_seconds(issued.not_after),
            key_algorithm: issued.key_algorithm,
            key_bits: issued.key_bits,
            public_key_sha256: issued.public_key_sha256,
            csr_sha256: issued.csr_sha256,
            intermediate_sha256: issued.intermediate_sha256,
            certificate_sha256: issued.certificate_sha256,
            requested_ttl_seconds: issued.requested_ttl_seconds,
        }),
        pb::record::Outcome::Denied(denied) => Outcome::Denied(DenialRecord {
            reason: denied.reason,
            detail: denied.detail,
            mesh: denied.mesh,
            requested_spiffe_id: denied.requested_spiffe_id,
            csr_sha256: denied.csr_sha256,
            summary: denied.summary.map(|summary| RefusalSummary {
                count: summary.count,
                first_at: from_unix_millis(summary.first_at_ms),
                last_at: from_unix_millis(summary.last_at_ms),
            }),
        }),
    };
    Some(Record {
        sequence: record.sequence,
        recorded_at: from_unix_millis(record.recorded_at_ms),
        request_id: record.request_id,
        caller: CallerRecord {
            authenticator: caller.authenticator,
            issuer: caller.issuer,
            subject: caller.subject,
            cluster_id: caller.cluster_id,
            peer_address: caller.peer_address,
            spiffe_id: caller.spiffe_id,
            pod_name: caller.pod_name,
            pod_uid: caller.pod_uid,
        },
        outcome,
    })
}

#[cfg(test)]
mod tests;
