//! `meshroot audit verify` on a store directory: recompute the Merkle tree from every record
//! and pruned leaf, check each stored checkpoint's signature and root (and any checkpoint the
//! auditor brings), and compare each leaf with the hash stored when it was appended, which
//! names the records that were edited.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use crate::domain::audit::checkpoint::AuditVerifier;
use crate::domain::audit::verify::{LogVerifier, VerifyEntry, VerifyReport};

use super::answers::LogEntry;
use super::error::StoreError;
use super::state::SledStore;
use super::tiles;

/// Entries read per step.
const CHUNK: usize = 8_192;

impl SledStore {
    /// Verifies the whole log. `verifier` checks checkpoint signatures (without it, roots are
    /// still compared but the report warns); `external` are checkpoint notes from elsewhere
    /// (e.g. the one last published), which must carry a valid signature.
    pub fn verify(
        &self,
        verifier: Option<&AuditVerifier>,
        external: &[(String, String)],
        now: SystemTime,
    ) -> Result<VerifyReport, StoreError> {
        let inner = &self.inner;
        let mut log = LogVerifier::new(now);
        if verifier.is_none() {
            log.warn("no audit verifier key: checkpoint signatures were not checked");
        }
        for (size, note) in self.checkpoints()? {
            expect_checkpoint(
                &mut log,
                verifier,
                &note,
                &format!("stored #{size}"),
                Some(size),
            );
        }
        for (label, note) in external {
            match verifier {
                Some(_) => expect_checkpoint(&mut log, verifier, note, label, None),
                None => log.problem(format!(
                    "checkpoint {label} cannot be checked without the audit verifier key"
                )),
            }
        }
        let watermark = inner.read_state().watermark;
        let last = inner.written.load(Ordering::SeqCst);
        // Beyond the last sequence number the store knows, pick up anything else stored.
        let mut from = 1;
        loop {
            let entries = self.entries(from, u64::MAX, CHUNK)?;
            let Some(end) = entries.last().map(LogEntry::sequence) else {
                break;
            };
            let stored_leaves = if from <= watermark {
                match tiles::stored_leaves(&inner.tiles, from - 1, end.min(watermark)) {
                    Ok(leaves) => Some(leaves),
                    Err(error) => {
                        log.problem(format!(
                            "the stored leaf hashes from {from} are unreadable: {error}"
                        ));
                        None
                    }
                }
            } else {
                None
            };
            for entry in &entries {
                let sequence = entry.sequence();
                let hash = match entry {
                    LogEntry::Record { stored, .. } => {
                        log.push(sequence, VerifyEntry::Record(stored))
                    }
                    LogEntry::Pruned { leaf, .. } => log.push(sequence, VerifyEntry::Pruned(*leaf)),
                };
                if let (Some(hash), Some(stored)) = (hash, &stored_leaves) {
                    let at = sequence.checked_sub(from).map(|i| i as usize);
                    if let Some(expected) = at.and_then(|i| stored.get(i)) {
                        if *expected != hash {
                            log.problem(format!(
                                "record {sequence} differs from the leaf hash stored when it was appended (edited)"
                            ));
                        }
                    }
                }
            }
            from = end + 1;
        }
        if from <= last {
            log.problem(format!(
                "records {from}..={last} are missing from the end of the log"
            ));
        }
        Ok(log.finish())
    }
}

fn expect_checkpoint(
    log: &mut LogVerifier,
    verifier: Option<&AuditVerifier>,
    note: &str,
    label: &str,
    stored_size: Option<u64>,
) {
    let checkpoint = match verifier {
        Some(verifier) => match verifier.open_checkpoint(note) {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                log.problem(format!("checkpoint {label}: {error}"));
                return;
            }
        },
        None => match crate::domain::audit::checkpoint::Checkpoint::parse_unverified(note) {
            Some(checkpoint) => checkpoint,
            None => {
                log.problem(format!("checkpoint {label} is malformed"));
                return;
            }
        },
    };
    if stored_size.is_some_and(|size| size != checkpoint.size) {
        log.problem(format!(
            "checkpoint {label} is stored under another tree size ({})",
            checkpoint.size
        ));
    }
    log.expect(checkpoint.size, checkpoint.root, label);
}
