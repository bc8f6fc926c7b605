//! Recomputing the audit log's Merkle tree from its entries and checking it against signed
//! checkpoints: what `meshroot audit verify` runs, on a store directory or on the entries a
//! running server streams (so a server never vouches for itself).
//!
//! What it detects, given a checkpoint covering the records:
//! - an edited record: its leaf hash changes, so every later root differs;
//! - a removed record: a gap in the sequence numbers (or a shorter log than a checkpoint);
//! - reordered or moved records: a record's leaf header names its own sequence number;
//! - an inserted record: the sequence numbers after it shift, so the roots differ;
//! - a record "pruned" while its certificate was still valid: the pruned leaf keeps NotAfter.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::domain::audit::merkle::{Frontier, Hash};
use crate::domain::audit::{LeafData, LEAF_HEADER_LEN};
use crate::domain::clock::format_time;
use crate::domain::digest::hex;
use crate::domain::digest::sha256;

/// At most this many problems are listed (all are counted).
const MAX_LISTED_PROBLEMS: usize = 20;

/// One entry of the log as the verifier sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum VerifyEntry<'a> {
    /// Stored bytes of a record: leaf header ‖ protobuf.
    Record(&'a [u8]),
    /// The leaf kept for a pruned record.
    Pruned(LeafData),
}

/// The verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Entries read (records and pruned leaves).
    pub entries: u64,
    pub pruned: u64,
    pub tree_size: u64,
    #[serde(serialize_with = "hex_hash")]
    pub root: Hash,
    /// Each checkpoint compared: its size and whether the recomputed root matched.
    pub checkpoints: Vec<CheckedCheckpoint>,
    /// Records after the largest checkpoint that matched (not yet covered by a signature).
    pub uncovered: u64,
    /// Notes about what was not checked (e.g. no audit key to check signatures).
    pub warnings: Vec<String>,
    pub problems: Vec<String>,
    pub problem_count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckedCheckpoint {
    pub size: u64,
    pub source: String,
    pub matched: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }
}

/// The largest run of missing records filled in to keep positions aligned, beyond the largest
/// checkpoint: 2^20 (a million zero leaves take milliseconds).
const MAX_GAP: u64 = 1 << 20;

/// Feeds entries in sequence order, then [`LogVerifier::finish`].
#[derive(Debug)]
pub(crate) struct LogVerifier {
    now: i64,
    frontier: Frontier,
    /// Tree size → (root, where the checkpoint came from).
    expected: BTreeMap<u64, (Hash, String)>,
    report: VerifyReport,
    /// Set once an entry is missing: later roots cannot match.
    broken_at: Option<u64>,
}

impl LogVerifier {
    pub fn new(now: SystemTime) -> Self {
        Self {
            now: crate::domain::clock::unix_seconds(now),
            frontier: Frontier::default(),
            expected: BTreeMap::new(),
            report: VerifyReport::default(),
            broken_at: None,
        }
    }

    /// A checkpoint (already signature-checked) the recomputed tree must agree with.
    pub fn expect(&mut self, size: u64, root: Hash, source: impl Into<String>) {
        self.expected.insert(size, (root, source.into()));
    }

    pub fn warn(&mut self, warning: impl Into<String>) {
        self.report.warnings.push(warning.into());
    }

    pub(crate) fn problem(&mut self, problem: impl Into<String>) {
        self.report.problem_count += 1;
        if self.report.problems.len() < MAX_LISTED_PROBLEMS {
            self.report.problems.push(problem.into());
        }
    }

    /// The next entry; `sequence` is where the store keeps it. Returns its leaf hash.
    pub fn push(&mut self, sequence: u64, entry: VerifyEntry<'_>) -> Option<Hash> {
        let expected = self.frontier.size() + 1;
        if sequence != expected {
            if sequence < expected {
                self.problem(format!("entry {sequence} appears twice or out of order"));
                return None;
            }
            // A gap is filled leaf by leaf to keep positions aligned: one past every checkpoint
            // by more than MAX_GAP is no log meshroot wrote (a forged sequence such as u64::MAX
            // once spun here for ever). It is named and skipped.
            let largest = self.expected.keys().next_back().copied().unwrap_or(0);
            if sequence - expected > MAX_GAP && sequence > largest.saturating_add(MAX_GAP) {
                self.problem(format!(
                    "entry {sequence} is {} records past the log's end (and past every checkpoint): forged or corrupt",
                    sequence - expected
                ));
                self.broken_at.get_or_insert(expected);
                return None;
            }
            self.problem(format!(
                "records {expected}..={} are missing (removed)",
                sequence - 1
            ));
            self.broken_at.get_or_insert(expected);
            // Keep positions aligned so later problems name the right records.
            while self.frontier.size() + 1 < sequence {
                self.frontier.push([0; 32]);
            }
        }
        self.report.entries += 1;
        let leaf = match entry {
            VerifyEntry::Record(stored) => {
                let Some(header) = LeafData::parse_header(stored) else {
                    self.problem(format!("record {sequence} is malformed"));
                    self.frontier.push([0; 32]);
                    return None;
                };
                LeafData {
                    record_sha256: sha256(&stored[LEAF_HEADER_LEN..]),
                    ..header
                }
            }
            VerifyEntry::Pruned(leaf) => {
                self.report.pruned += 1;
                if leaf.issued && leaf.not_after > self.now {
                    self.problem(format!(
                        "record {sequence} was removed while its certificate is valid (until {})",
                        format_time(crate::domain::clock::from_unix_seconds(leaf.not_after))
                    ));
                }
                leaf
            }
        };
        if leaf.sequence != sequence {
            self.problem(format!(
                "the record stored as {sequence} is record {} (reordered or moved)",
                leaf.sequence
            ));
        }
        let hash = leaf.leaf_hash();
        self.frontier.push(hash);
        self.check_checkpoint();
        Some(hash)
    }

    fn check_checkpoint(&mut self) {
        let size = self.frontier.size();
        let Some((root, source)) = self.expected.remove(&size) else {
            return;
        };
        let matched = self.broken_at.is_none() && self.frontier.root() == root;
        if !matched {
            self.problem(format!(
                "the records do not match checkpoint {source} (size {size}): a record was edited, removed, reordered or inserted"
            ));
        }
        self.report.checkpoints.push(CheckedCheckpoint {
            size,
            source,
            matched,
        });
    }

    pub fn finish(mut self) -> VerifyReport {
        let size = self.frontier.size();
        for (checkpoint_size, (_, source)) in std::mem::take(&mut self.expected) {
            self.problem(format!(
                "checkpoint {source} covers {checkpoint_size} records but the log holds {size}: records were removed from the end"
            ));
            self.report.checkpoints.push(CheckedCheckpoint {
                size: checkpoint_size,
                source,
                matched: false,
            });
        }
        let covered = self
            .report
            .checkpoints
            .iter()
            .filter(|c| c.matched)
            .map(|c| c.size)
            .max()
            .unwrap_or(0);
        self.report.uncovered = size.saturating_sub(covered);
        self.report.tree_size = size;
        self.report.root = self.frontier.root();
        self.report
    }
}

fn hex_hash<S: serde::Serializer>(hash: &Hash, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex(hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn stored(sequence: u64, body: &[u8]) -> Vec<u8> {
        let leaf = LeafData {
            sequence,
            recorded_at_ms: 1,
            issued: true,
            not_after: 10,
            record_sha256: [0; 32],
        };
        let mut out = leaf.header().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn root_of(entries: &[Vec<u8>]) -> (u64, Hash) {
        let mut verifier = LogVerifier::new(UNIX_EPOCH);
        for (i, entry) in entries.iter().enumerate() {
            verifier.push(i as u64 + 1, VerifyEntry::Record(entry));
        }
        let report = verifier.finish();
        (report.tree_size, report.root)
    }

    fn verify(entries: &[(u64, Vec<u8>)], checkpoint: (u64, Hash)) -> VerifyReport {
        let mut verifier = LogVerifier::new(UNIX_EPOCH + Duration::from_secs(100));
        verifier.expect(checkpoint.0, checkpoint.1, "test");
        for (sequence, entry) in entries {
            verifier.push(*sequence, VerifyEntry::Record(entry));
        }
        verifier.finish()
    }

    #[test]
    fn detects_edits_removals_reorderings_and_insertions() {
        let log: Vec<Vec<u8>> = (1..=6).map(|s| stored(s, &[s as u8; 40])).collect();
        let checkpoint = root_of(&log);
        let numbered = |log: &[Vec<u8>]| -> Vec<(u64, Vec<u8>)> {
            log.iter()
                .enumerate()
                .map(|(i, e)| (i as u64 + 1, e.clone()))
                .collect()
        };
        assert!(verify(&numbered(&log), checkpoint).ok());

        let mut edited = log.clone();
        edited[2][LEAF_HEADER_LEN + 3] ^= 1;
        assert!(!verify(&numbered(&edited), checkpoint).ok());

        let mut removed = numbered(&log);
        removed.remove(3);
        let report = verify(&removed, checkpoint);
        assert!(
            report.problems.iter().any(|p| p.contains("missing")),
            "{report:?}"
        );

        let mut reordered = numbered(&log);
        let (a, b) = (reordered[1].1.clone(), reordered[4].1.clone());
        reordered[1].1 = b;
        reordered[4].1 = a;
        let report = verify(&reordered, checkpoint);
        assert!(
            report.problems.iter().any(|p| p.contains("reordered")),
            "{report:?}"
        );

        let mut inserted = log.clone();
        inserted.insert(2, stored(3, b"forged"));
        for (i, entry) in inserted.iter_mut().enumerate().skip(3) {
            let body = entry.split_off(LEAF_HEADER_LEN);
            *entry = stored(i as u64 + 1, &body);
        }
        assert!(!verify(&numbered(&inserted), checkpoint).ok());

        let truncated = numbered(&log[..5]);
        let report = verify(&truncated, checkpoint);
        assert!(report
            .problems
            .iter()
            .any(|p| p.contains("removed from the end")));
    }

    #[test]
    fn a_pruned_record_of_a_still_valid_certificate_is_a_problem() {
        let leaf = |not_after| LeafData {
            sequence: 1,
            recorded_at_ms: 1,
            issued: true,
            not_after,
            record_sha256: [7; 32],
        };
        let mut verifier = LogVerifier::new(UNIX_EPOCH + Duration::from_secs(100));
        verifier.push(1, VerifyEntry::Pruned(leaf(50)));
        assert!(verifier.finish().ok());
        let mut verifier = LogVerifier::new(UNIX_EPOCH + Duration::from_secs(100));
        verifier.push(1, VerifyEntry::Pruned(leaf(500)));
        assert!(!verifier.finish().ok());
    }
}
