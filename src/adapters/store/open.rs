//! Opening a store: the sled database (waiting out a previous handle's lock), the layout
//! check, and rebuilding the in-memory state (tail index, tree, pruned set) from disk.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::audit::merkle::Frontier;
use crate::domain::audit::IndexKeys;
use crate::domain::audit::SEGMENT_RECORDS;

use super::blocks::{self, BlockCache};
use super::codec::RunId;
use super::error::{corrupt, read_error, StoreError};
use super::index::{self, IndexState, Run};
use super::keys::{META_LAYOUT, META_PRUNED_PREFIX, META_RUN_PREFIX, META_WATERMARK};
use super::pruned::PrunedSet;
use super::query::entries_between;
use super::state::{Durability, GroupCommit, Inner, Writer, LAYOUT, LAYOUT_SINGLE_KEYS};
use super::tiles::TreeView;

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

impl Inner {
    pub(super) fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
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
            Some(version) if version.as_ref() == LAYOUT_SINGLE_KEYS.to_be_bytes() => {
                // A store from before blocks: read as it is; once this build writes blocks
                // into it, an older build must not open it.
                if !options.read_only {
                    meta.insert(META_LAYOUT, &LAYOUT.to_be_bytes())
                        .map_err(open_error)?;
                    tracing::info!(
                        path = %path.display(),
                        "record store from an earlier version: its records are packed into \
                         blocks in the background"
                    );
                }
            }
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
        // The last block again: a crash may have left its move half done (`blocks::pack`).
        let packed = blocks::packed_through(&records)?.saturating_sub(blocks::BLOCK_RECORDS);
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
            packed: AtomicU64::new(packed),
            blocks: BlockCache::default(),
            commit: GroupCommit {
                sleep: Mutex::new(()),
                idle: AtomicBool::new(false),
                wake: Condvar::new(),
                closed: AtomicBool::new(false),
                flushes: AtomicU64::new(0),
                latency: crate::domain::metrics::Histogram::default(),
                durable,
            },
            state: RwLock::new(state),
            pruned_set: RwLock::new(pruned_set),
            indexer_wake: (Mutex::new(false), Condvar::new()),
            maintenance: Mutex::new(()),
            pruning: Mutex::new(()),
        })
    }
}

/// Opens and closes the stopped store's sled database once more, after the server that wrote
/// it has let it go, so that the next start is quick; returns how long that took.
///
/// sled 0.34 writes its snapshot of the page table only while opening a database: it reads
/// the last snapshot and then replays every log entry written since, which is every record
/// written since the previous start (6.4 s for 10 million records here, against 0.6 s with
/// a fresh snapshot). Doing it at a clean shutdown moves that replay out of the next start.
/// The open is sled's own recovery (crash-safe: a snapshot is written to a temporary file and
/// renamed), so an interruption leaves the store as a crash would.
pub fn prepare_next_start(
    path: &Path,
    cache_bytes: u64,
    lock_wait: Duration,
) -> Result<Duration, StoreError> {
    let started = std::time::Instant::now();
    let db = open_db(path, lock_wait, cache_bytes).map_err(|e| {
        if is_lock_contention(&e) {
            StoreError::Locked {
                path: path.display().to_string(),
            }
        } else {
            StoreError::Open {
                path: path.display().to_string(),
                source: Arc::new(e),
            }
        }
    })?;
    drop(db);
    Ok(started.elapsed())
}

/// Opens sled, waiting briefly if the lock is still held by this process's previous handle
/// (sled releases it from a background thread after the last handle is dropped).
pub(super) fn open_db(
    path: &Path,
    lock_wait: Duration,
    cache_bytes: u64,
) -> Result<sled::Db, sled::Error> {
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
pub(super) fn is_lock_contention(error: &sled::Error) -> bool {
    match error {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}
