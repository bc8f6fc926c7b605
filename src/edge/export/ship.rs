//! The export loop: ships each durable entry and signed checkpoint of the replica's log to its
//! sinks (`crate::edge::export`), from the cursor persisted in the store, so a restart resumes where
//! the last acknowledged write ended and skips nothing. It runs beside the hot path: issuance
//! never waits for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::otlp::OtlpSink;
use crate::adapters::store::{ExportCursor, LogEntry, SledStore, StoreError};
use crate::edge::export::{Entry, ExportLine, JsonlSink};
use crate::edge::shutdown::unless_stopped;

/// The name of the JSON-lines sink's cursor in the store.
pub(crate) const JSONL_SINK: &str = "jsonl";
/// The name of the OTLP sink's cursor in the store.
pub(crate) const OTLP_SINK: &str = "otlp";
/// Entries shipped per batch.
const BATCH: usize = 4096;
/// How long new entries gather before the next batch is shipped (bounds the lag it adds).
const GATHER: Duration = Duration::from_millis(100);

/// How long to wait before retrying a failed batch, and at most between passes.
const RETRY: Duration = Duration::from_secs(1);

/// A place the log is shipped to, with its own cursor.
pub(crate) enum Sink {
    Jsonl(Arc<std::sync::Mutex<JsonlSink>>),
    Otlp(OtlpSink),
}

impl Sink {
    pub(crate) fn jsonl(sink: JsonlSink) -> Self {
        Self::Jsonl(Arc::new(std::sync::Mutex::new(sink)))
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Jsonl(_) => JSONL_SINK,
            Self::Otlp(_) => OTLP_SINK,
        }
    }

    /// Sends `lines`, the first entry among them being `start` (a batch of checkpoints alone
    /// still names its position in the log).
    async fn send(&mut self, log: &str, lines: Vec<ExportLine>, start: u64) -> Result<(), String> {
        match self {
            Self::Jsonl(sink) => {
                let sink = sink.clone();
                tokio::task::spawn_blocking(move || {
                    let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
                    sink.write(&lines, start)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("writing the export: {e}"))
            }
            Self::Otlp(sink) => sink.send(log, &lines).await.map_err(|e| e.to_string()),
        }
    }
}

/// Ships the log to `sink` until shutdown, then makes one last pass.
pub(crate) async fn export_loop(
    store: Arc<SledStore>,
    (log, readable): (String, bool),
    mut sink: Sink,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = sink.name();
    let mut durable = store.subscribe();
    loop {
        let batch = {
            let (store, log) = (store.clone(), log.clone());
            tokio::task::spawn_blocking(move || next_batch(&store, &log, name, readable)).await
        };
        let caught_up = match batch {
            Ok(Ok(Batch {
                lines,
                start,
                cursor,
                caught_up,
            })) if !lines.is_empty() => {
                match unless_stopped(&mut shutdown, sink.send(&log, lines, start)).await {
                    // Stopped before the sink answered: the cursor stays, and the batch is sent
                    // again after the restart (at least once).
                    None => return,
                    Some(Ok(())) => {
                        let store = store.clone();
                        let saved = tokio::task::spawn_blocking(move || {
                            store.set_export_cursor(name, cursor)
                        })
                        .await;
                        match saved {
                            Ok(Ok(())) => caught_up,
                            Ok(Err(error)) => {
                                tracing::error!(sink = name, %error, "the export cursor could not be saved; the batch will be sent again");
                                true
                            }
                            Err(error) => {
                                tracing::error!(sink = name, %error, "the export task failed");
                                true
                            }
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(sink = name, %error, "exporting a batch failed; retrying");
                        true
                    }
                }
            }
            Ok(Ok(_)) => true,
            Ok(Err(error)) => {
                tracing::error!(sink = name, %error, "reading the log to export failed; retrying");
                true
            }
            Err(error) => {
                tracing::error!(sink = name, %error, "the export task failed; retrying");
                true
            }
        };
        if *shutdown.borrow() {
            return;
        }
        if caught_up {
            let grew = tokio::select! {
                _ = shutdown.wait_for(|stopped| *stopped) => false,
                _ = durable.changed() => true,
                _ = tokio::time::sleep(RETRY) => false,
            };
            // Under load the log grows every group commit (milliseconds): gather what arrives
            // within a moment into one batch, one write and one fsync, not one per commit.
            if grew {
                tokio::select! {
                    _ = shutdown.wait_for(|stopped| *stopped) => {}
                    _ = tokio::time::sleep(GATHER) => {}
                }
            }
        }
    }
}

/// `fail_closed_lag_records` / `fail_closed_lag`: holds issuance (UNAVAILABLE, retried by
/// clients) while any sink is further behind than the bound, like a blocking audit device. It
/// looks at every durable write and at least every [`GUARD_INTERVAL`], so a burst can pass the
/// bound by the records made durable in one look.
pub(crate) async fn fail_closed_guard(
    store: Arc<SledStore>,
    sinks: Vec<&'static str>,
    (max_records, max_age): (Option<u64>, Option<std::time::Duration>),
    current: Arc<crate::issuance::CurrentAuthority>,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::issuance::Hold;
    let mut durable = store.subscribe();
    loop {
        let ca = current.get();
        let now = ca.clock().now();
        let mut over = Vec::new();
        for sink in &sinks {
            match store.export_lag(sink, now) {
                Ok((behind, age)) => {
                    if max_records.is_some_and(|max| behind > max) {
                        over.push(format!(
                            "{sink} is {behind} records behind (bound {})",
                            max_records.unwrap_or_default()
                        ));
                    } else if max_age.is_some_and(|max| age > max) {
                        over.push(format!(
                            "{sink}'s oldest unshipped record is {}s old",
                            age.as_secs()
                        ));
                    }
                }
                Err(error) => over.push(format!("{sink}: its cursor cannot be read ({error})")),
            }
        }
        match over.is_empty() {
            true => ca.holds().clear(Hold::ExportLag),
            false => ca.holds().set(
                Hold::ExportLag,
                format!("fail-closed export: {}", over.join("; ")),
            ),
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = durable.changed() => {}
            _ = tokio::time::sleep(GUARD_INTERVAL) => {}
        }
    }
}

/// How often the fail-closed guard looks at the lag without a write.
const GUARD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The next lines to ship and the cursor once they are shipped.
struct Batch {
    lines: Vec<ExportLine>,
    /// The cursor's next sequence before the batch: where its lines start in the log.
    start: u64,
    cursor: ExportCursor,
    /// Whether these lines reach the durable end of the log.
    caught_up: bool,
}

/// The next batch of durable entries after `sink`'s cursor, then the checkpoints they complete.
fn next_batch(
    store: &SledStore,
    log: &str,
    sink: &str,
    readable: bool,
) -> Result<Batch, StoreError> {
    let mut cursor = store.export_cursor(sink)?;
    let start = cursor.next_sequence;
    let durable = store.durable_sequence();
    let mut lines = Vec::new();
    if cursor.next_sequence <= durable {
        for entry in store.entries(cursor.next_sequence, durable, BATCH)? {
            let line = match &entry {
                LogEntry::Record { sequence, stored } => {
                    // Decoded only for the readable copy; `stored` is what the log committed to.
                    let record = match readable {
                        true => entry.record().and_then(Result::ok),
                        false => None,
                    };
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
    Ok(Batch {
        lines,
        start,
        cursor,
        caught_up: cursor.next_sequence > durable,
    })
}

/// The configured export sinks.
pub(crate) fn export_sinks(config: &crate::adapters::config::ExportConfig) -> Vec<Sink> {
    let mut sinks = Vec::new();
    if let Some(dir) = &config.jsonl_dir {
        sinks.push(Sink::jsonl(JsonlSink::new(
            dir,
            config.jsonl_max_file_bytes,
        )));
    }
    if let Some(endpoint) = &config.otlp_endpoint {
        sinks.push(Sink::Otlp(OtlpSink::new(endpoint)));
    }
    sinks
}
