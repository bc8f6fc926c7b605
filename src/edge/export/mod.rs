//! Shipping the issuance log out of the replica, so records outlive its volume: every entry and
//! every signed checkpoint, at least once and in order, as JSON lines a log shipper (Fluent Bit,
//! Vector) picks up from rotated files.
//!
//! One line per log entry, then each checkpoint after the entries it covers:
//!
//! ```text
//! {"log":"<log name>","sequence":12,"leaf_hash":"<hex>","stored":"<base64>","record":{…}}
//! {"log":"<log name>","sequence":13,"leaf_hash":"<hex>","pruned_leaf":"<hex>"}
//! {"log":"<log name>","checkpoint":"<signed note>"}
//! ```
//!
//! `stored` is the record exactly as the log committed to it (leaf header ‖ protobuf), so the
//! export alone, with the verifier key, proves itself complete and unedited up to its last
//! checkpoint (`meshroot audit verify --export DIR`); `record` is the same record as readable
//! JSON for whoever searches the logs, and is not trusted by the verification.
//!
//! Delivery is at least once: a replica that stops between writing lines and persisting its
//! cursor writes them again after it restarts. Identical repeats are counted, never an error.

pub mod otlp;
pub mod ship;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::domain::audit::verify::VerifyEntry;
use crate::domain::audit::{LeafData, LEAF_HEADER_LEN};
use crate::domain::digest::{hex, parse_hex, sha256};
use crate::domain::record::Record;

/// The export files' names: `records-<first sequence, 20 digits>.jsonl`, so they sort in log
/// order.
const FILE_PREFIX: &str = "records-";
const FILE_SUFFIX: &str = ".jsonl";

/// One exported line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportLine {
    /// The log's name (the audit key's name, the checkpoints' origin).
    pub log: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_hash: Option<String>,
    /// Base64 of the stored record: leaf header ‖ protobuf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
    /// Hex of the leaf kept for a pruned record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_leaf: Option<String>,
    /// The record, readable (not used by verification). Kept as the JSON text it was written
    /// as: encoded once, straight from the record, with no intermediate JSON tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Box<serde_json::value::RawValue>>,
    /// A signed checkpoint (C2SP signed note).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// A log entry, as the exporter is given it.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// The stored bytes of a record, and the record decoded from them when it decodes.
    Record {
        sequence: u64,
        stored: &'a [u8],
        record: Option<&'a Record>,
    },
    /// The leaf kept for a pruned record.
    Pruned(LeafData),
}

impl ExportLine {
    /// The line of a log entry, or None for stored bytes too short to hold a leaf header.
    pub fn entry(log: &str, entry: Entry<'_>) -> Option<Self> {
        let line = |sequence, leaf: LeafData| Self {
            log: log.to_owned(),
            sequence: Some(sequence),
            leaf_hash: Some(hex(&leaf.leaf_hash())),
            stored: None,
            pruned_leaf: None,
            record: None,
            checkpoint: None,
        };
        match entry {
            Entry::Record {
                sequence,
                stored,
                record,
            } => {
                let header = LeafData::parse_header(stored)?;
                let leaf = LeafData {
                    record_sha256: sha256(&stored[LEAF_HEADER_LEN..]),
                    ..header
                };
                Some(Self {
                    stored: Some(BASE64.encode(stored)),
                    record: record.and_then(|r| {
                        serde_json::value::RawValue::from_string(serde_json::to_string(r).ok()?)
                            .ok()
                    }),
                    ..line(sequence, leaf)
                })
            }
            Entry::Pruned(leaf) => Some(Self {
                pruned_leaf: Some(hex(&leaf.to_bytes())),
                ..line(leaf.sequence, leaf)
            }),
        }
    }

    /// The line of a signed checkpoint.
    pub fn checkpoint(log: &str, note: &str) -> Self {
        Self {
            log: log.to_owned(),
            sequence: None,
            leaf_hash: None,
            stored: None,
            pruned_leaf: None,
            record: None,
            checkpoint: Some(note.to_owned()),
        }
    }
}

/// Rotated JSON-lines files in one directory. Each write is appended and fsynced before it
/// returns, so a cursor persisted after it never runs ahead of the files.
#[derive(Debug)]
pub(crate) struct JsonlSink {
    dir: PathBuf,
    max_file_bytes: u64,
    current: Option<(fs::File, u64)>,
}

impl JsonlSink {
    pub fn new(dir: &Path, max_file_bytes: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            max_file_bytes,
            current: None,
        }
    }

    /// Appends `lines`, which start at sequence `first_sequence` of the log (it names a new
    /// file when one is opened).
    pub fn write(&mut self, lines: &[ExportLine], first_sequence: u64) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut text, line).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        let rotate = match &self.current {
            Some((_, size)) => *size > 0 && size + text.len() as u64 > self.max_file_bytes,
            None => true,
        };
        if rotate {
            fs::create_dir_all(&self.dir)?;
            let path = self
                .dir
                .join(format!("{FILE_PREFIX}{first_sequence:020}{FILE_SUFFIX}"));
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let size = file.metadata()?.len();
            // The new file's directory entry must survive a crash too.
            fs::File::open(&self.dir)?.sync_all()?;
            self.current = Some((file, size));
        }
        let Some((file, size)) = &mut self.current else {
            return Ok(());
        };
        file.write_all(&text)?;
        file.sync_data()?;
        *size += text.len() as u64;
        Ok(())
    }
}

/// What an export directory holds, read back for verification.
#[derive(Debug, Default)]
pub struct ExportContents {
    /// The log's name, from the lines (every line must name the same log).
    pub log: Option<String>,
    /// Entries by sequence number.
    pub entries: BTreeMap<u64, StoredEntry>,
    /// Signed checkpoints, in the order they were exported.
    pub checkpoints: Vec<String>,
    seen_checkpoints: std::collections::HashSet<String>,
    /// Lines exported again, identical (at-least-once delivery).
    pub duplicates: u64,
    /// What is wrong with the export itself: unreadable lines, two different entries for one
    /// sequence, lines of another log.
    pub problems: Vec<String>,
}

/// One exported entry, as the verifier takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEntry {
    Record(Vec<u8>),
    Pruned(LeafData),
}

impl StoredEntry {
    pub(crate) fn as_verify_entry(&self) -> VerifyEntry<'_> {
        match self {
            Self::Record(stored) => VerifyEntry::Record(stored),
            Self::Pruned(leaf) => VerifyEntry::Pruned(*leaf),
        }
    }
}

/// Reads every export file of `dir`, in log order.
pub fn read_dir(dir: &Path) -> std::io::Result<ExportContents> {
    read_dir_checked(dir, &|_, _| true)
}

/// [`read_dir`], also checking each line's readable `record` against its `stored` bytes with
/// `readable(stored, record_json)`: a line whose readable copy is not the decoding of what the
/// log committed to is named (log search engines index `record`, so a rewrite there would
/// mislead every search while the log itself verifies).
pub(crate) fn read_dir_checked(
    dir: &Path,
    readable: &dyn Fn(&[u8], &str) -> bool,
) -> std::io::Result<ExportContents> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(FILE_SUFFIX))
        })
        .collect();
    files.sort();
    let mut contents = ExportContents::default();
    for path in files {
        let text = fs::read_to_string(&path)?;
        let name = path.display().to_string();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            contents.add(line, &format!("{name}:{}", number + 1), readable);
        }
    }
    Ok(contents)
}

impl ExportContents {
    fn add(&mut self, text: &str, at: &str, readable: &dyn Fn(&[u8], &str) -> bool) {
        let line: ExportLine = match serde_json::from_str(text) {
            Ok(line) => line,
            Err(_) => return self.problems.push(format!("{at}: not an export line")),
        };
        match &self.log {
            None => self.log = Some(line.log.clone()),
            Some(log) if *log != line.log => {
                return self
                    .problems
                    .push(format!("{at}: a line of log {:?}, not {log:?}", line.log))
            }
            Some(_) => {}
        }
        if let Some(note) = line.checkpoint {
            if self.seen_checkpoints.insert(note.clone()) {
                self.checkpoints.push(note);
            } else {
                self.duplicates += 1;
            }
            return;
        }
        let entry = match (&line.stored, &line.pruned_leaf) {
            (Some(stored), None) => BASE64.decode(stored).ok().map(StoredEntry::Record),
            (None, Some(leaf)) => parse_hex(leaf)
                .and_then(|bytes| LeafData::parse(&bytes))
                .map(StoredEntry::Pruned),
            _ => None,
        };
        let (Some(sequence), Some(entry)) = (line.sequence, entry) else {
            return self.problems.push(format!("{at}: a malformed entry"));
        };
        if let (StoredEntry::Record(stored), Some(record)) = (&entry, &line.record) {
            let body = stored.get(LEAF_HEADER_LEN..).unwrap_or_default();
            if !readable(body, record.get()) {
                self.problems.push(format!(
                    "{at}: record {sequence}'s readable copy (\"record\") is not what the log holds (\"stored\")"
                ));
            }
        }
        match self.entries.get(&sequence) {
            None => {
                self.entries.insert(sequence, entry);
            }
            Some(seen) if *seen == entry => self.duplicates += 1,
            Some(_) => self.problems.push(format!(
                "{at}: record {sequence} was exported twice with different contents"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::example_record;

    fn stored(sequence: u64) -> Vec<u8> {
        let mut record = example_record("spiffe://a.example/ns/shop/sa/cart", 1_800_000_000);
        record.sequence = sequence;
        let body = format!("record {sequence}").into_bytes();
        let leaf = LeafData::of(&record, &body);
        [&leaf.to_bytes()[..LEAF_HEADER_LEN], &body].concat()
    }

    #[test]
    fn written_lines_read_back_with_identical_repeats_counted_and_conflicts_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = JsonlSink::new(dir.path(), 1 << 20);
        let line = |sequence| {
            let bytes = stored(sequence);
            ExportLine::entry(
                "log",
                Entry::Record {
                    sequence,
                    stored: &bytes,
                    record: None,
                },
            )
            .unwrap()
        };
        sink.write(
            &[line(1), line(2), ExportLine::checkpoint("log", "note")],
            1,
        )
        .unwrap();
        // At least once: a restart writes record 2 again, then goes on.
        sink.write(&[line(2), line(3)], 2).unwrap();
        let contents = read_dir(dir.path()).unwrap();
        assert_eq!(contents.log.as_deref(), Some("log"));
        assert_eq!(
            contents.entries.keys().copied().collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(contents.entries[&3], StoredEntry::Record(stored(3)));
        assert_eq!(contents.checkpoints, ["note"]);
        assert_eq!(contents.duplicates, 1);
        assert!(contents.problems.is_empty(), "{:?}", contents.problems);

        // A different record under a sequence already exported, a line of another log, and
        // a line that is not JSON are each named.
        let mut other = line(3);
        other.stored = Some(BASE64.encode(stored(4)));
        let mut foreign = line(5);
        foreign.log = "another".into();
        sink.write(&[other, foreign], 4).unwrap();
        let path = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("not json\n");
        std::fs::write(&path, text).unwrap();
        let problems = read_dir(dir.path()).unwrap().problems;
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("record 3 was exported twice with different contents"));
        assert!(problems[1].contains("a line of log \"another\""));
        assert!(problems[2].contains("not an export line"));
    }
}
