//! The export loop: ships each durable entry and signed checkpoint of the replica's log to its
//! sinks (`crate::export`), from the cursor persisted in the store, so a restart resumes where
//! the last acknowledged write ended and skips nothing. It runs beside the hot path: issuance
//! never waits for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::export::{Entry, ExportLine, JsonlSink};
use crate::store::{LogEntry, SledStore, StoreError};

/// The name of the JSON-lines sink's cursor in the store.
pub const JSONL_SINK: &str = "jsonl";
/// Entries shipped per write.
const BATCH: usize = 4096;
/// How long to wait before retrying a failed write, and at most between passes.
const RETRY: Duration = Duration::from_secs(1);

/// Ships the log to `sink` until shutdown; then one last pass.
pub(super) async fn export_loop(
    store: Arc<SledStore>,
    log: String,
    sink: JsonlSink,
    mut shutdown: watch::Receiver<bool>,
) {
    let sink = Arc::new(std::sync::Mutex::new(sink));
    let mut durable = store.subscribe();
    loop {
        let pass = {
            let (store, log, sink) = (store.clone(), log.clone(), sink.clone());
            tokio::task::spawn_blocking(move || {
                let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
                ship(&store, &log, &mut sink)
            })
            .await
        };
        let caught_up = match pass {
            Ok(Ok(caught_up)) => caught_up,
            Ok(Err(error)) => {
                tracing::error!(%error, "exporting the log failed; retrying");
                true
            }
            Err(error) => {
                tracing::error!(%error, "the export task failed; retrying");
                true
            }
        };
        if *shutdown.borrow() {
            return;
        }
        if caught_up {
            tokio::select! {
                _ = shutdown.wait_for(|stopped| *stopped) => {}
                _ = durable.changed() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
}

/// One pass: the next batch of durable entries, then the checkpoints they complete, then the
/// cursor. Returns whether the sink has caught up with the durable log.
fn ship(store: &SledStore, log: &str, sink: &mut JsonlSink) -> Result<bool, ShipError> {
    let mut cursor = store.export_cursor(JSONL_SINK)?;
    let durable = store.durable_sequence();
    let mut lines = Vec::new();
    if cursor.next_sequence <= durable {
        for entry in store.entries(cursor.next_sequence, durable, BATCH)? {
            let line = match &entry {
                LogEntry::Record { sequence, stored } => {
                    let record = entry.record().and_then(Result::ok);
                    ExportLine::entry(
                        log,
                        Entry::Record {
                            sequence: *sequence,
                            stored,
                            record: record.as_ref(),
                        },
                    )
                }
                LogEntry::Pruned { leaf, .. } => ExportLine::entry(log, Entry::Pruned(*leaf)),
            };
            match line {
                Some(line) => lines.push(line),
                None => tracing::error!(
                    sequence = entry.sequence(),
                    "a stored record too short for its leaf header: exported without it"
                ),
            }
            cursor.next_sequence = entry.sequence() + 1;
        }
    }
    let shipped = cursor.next_sequence - 1;
    for (size, note) in store.checkpoints()? {
        if size > cursor.checkpoint_size && size <= shipped {
            lines.push(ExportLine::checkpoint(log, &note));
            cursor.checkpoint_size = size;
        }
    }
    if lines.is_empty() {
        return Ok(true);
    }
    sink.write(
        &lines,
        lines.first().and_then(|l| l.sequence).unwrap_or(shipped),
    )?;
    store.set_export_cursor(JSONL_SINK, cursor)?;
    Ok(cursor.next_sequence > durable)
}
