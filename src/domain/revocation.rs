//! Revocation as the core sees it: the revocations in force, rebuilt from the revocation records
//! of the log (`meshroot revoke`), and what a CRL of each signing certificate lists.
//!
//! Two things follow from a revocation:
//! - the certificates' serials are listed in the CRL of the intermediate that signed them, until
//!   they expire (RFC 5280 §3.3: an entry may leave the CRL once the certificate expired);
//! - the identities are refused new certificates, until the block is lifted (a later record) or
//!   its time passes; and a revoked certificate never authenticates a renewal.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::SystemTime;

use crate::domain::record::{Outcome, Record, RevocationRecord};

/// RFC 5280 §5.3.1 CRLReason, by the names the CLI and records use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    pub(crate) const ALL: [Self; 7] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::CaCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key-compromise",
            Self::CaCompromise => "ca-compromise",
            Self::AffiliationChanged => "affiliation-changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation-of-operation",
            Self::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    /// A reason by name (the empty name is `unspecified`).
    pub fn parse(name: &str) -> Option<Self> {
        if name.is_empty() {
            return Some(Self::Unspecified);
        }
        Self::ALL.into_iter().find(|reason| reason.name() == name)
    }

    pub(crate) fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Self::Unspecified => R::Unspecified,
            Self::KeyCompromise => R::KeyCompromise,
            Self::CaCompromise => R::CaCompromise,
            Self::AffiliationChanged => R::AffiliationChanged,
            Self::Superseded => R::Superseded,
            Self::CessationOfOperation => R::CessationOfOperation,
            Self::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        }
    }
}

/// A revoked certificate, as its CRL entry and `audit show` need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub revoked_at: SystemTime,
    pub reason: Reason,
    pub intermediate_sha256: Vec<u8>,
    pub not_after: SystemTime,
    pub spiffe_id: String,
    pub mesh: String,
    /// The sequence number of the revocation record in this replica's log.
    pub sequence: u64,
}

/// An identity refused new certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub since: SystemTime,
    /// None: until lifted.
    pub until: Option<SystemTime>,
    pub reason: Reason,
    pub sequence: u64,
}

impl Block {
    pub(crate) fn in_force(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CrlEntry {
    pub serial: Vec<u8>,
    pub revoked_at: SystemTime,
    pub reason: Reason,
}

#[derive(Debug, Default)]
struct State {
    serials: HashMap<Vec<u8>, Revoked>,
    blocks: BTreeMap<String, Block>,
    /// When each lifted block was lifted (so an older block copied from another member does
    /// not come back).
    lifted: BTreeMap<String, SystemTime>,
}

/// The revocations in force on this replica. Cheap to ask on every request.
#[derive(Debug, Default)]
pub struct Revocations {
    state: RwLock<State>,
    /// Bumped by every change, so CRL keepers know to sign again.
    generation: AtomicU64,
}

impl Revocations {
    /// Built from a log's revocation records, oldest first.
    pub(crate) fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let revocations = Self::default();
        for record in records {
            revocations.apply(record);
        }
        revocations
    }

    /// Takes a stored revocation record into account; true if anything changed.
    pub fn apply(&self, record: &Record) -> bool {
        let Outcome::Revoked(revoked) = &record.outcome else {
            return false;
        };
        let reason = Reason::parse(&revoked.reason).unwrap_or(Reason::Unspecified);
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for certificate in &revoked.certificates {
            if state.serials.contains_key(&certificate.serial) {
                continue; // the first revocation of a serial stands
            }
            state.serials.insert(
                certificate.serial.clone(),
                Revoked {
                    revoked_at: record.recorded_at,
                    reason,
                    intermediate_sha256: certificate.intermediate_sha256.clone(),
                    not_after: certificate.not_after,
                    spiffe_id: certificate.spiffe_id.clone(),
                    mesh: certificate.mesh.clone(),
                    sequence: record.sequence,
                },
            );
            changed = true;
        }
        for identity in &revoked.blocked {
            state.lifted.remove(identity);
            state.blocks.insert(
                identity.clone(),
                Block {
                    since: record.recorded_at,
                    until: revoked.blocked_until,
                    reason,
                    sequence: record.sequence,
                },
            );
            changed = true;
        }
        for identity in &revoked.unblocked {
            changed |= state.blocks.remove(identity).is_some();
            state.lifted.insert(identity.clone(), record.recorded_at);
        }
        if changed {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        changed
    }

    /// Changes so far (a counter).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The revocation of a certificate, if it was revoked.
    pub fn revoked(&self, serial: &[u8]) -> Option<Revoked> {
        self.read().serials.get(serial).cloned()
    }

    /// Whether any identity is blocked (so the hot path skips the lookup when none is).
    pub(crate) fn any_blocks(&self) -> bool {
        !self.read().blocks.is_empty()
    }

    /// The block in force on an identity at `now`.
    pub fn blocked(&self, identity: &str, now: SystemTime) -> Option<Block> {
        let state = self.read();
        if state.blocks.is_empty() {
            return None;
        }
        state
            .blocks
            .get(identity)
            .filter(|block| block.in_force(now))
            .cloned()
    }

    /// Identities refused at `now`, with their blocks.
    pub fn blocks(&self, now: SystemTime) -> Vec<(String, Block)> {
        self.read()
            .blocks
            .iter()
            .filter(|(_, block)| block.in_force(now))
            .map(|(id, block)| (id.clone(), block.clone()))
            .collect()
    }

    /// The entries of the CRL of the signing certificate with this SHA-256: its revoked
    /// certificates not yet expired at `now`, in serial order.
    pub(crate) fn crl_entries(&self, intermediate_sha256: &[u8], now: SystemTime) -> Vec<CrlEntry> {
        let state = self.read();
        let mut entries: Vec<CrlEntry> = state
            .serials
            .iter()
            .filter(|(_, r)| r.intermediate_sha256 == intermediate_sha256 && r.not_after > now)
            .map(|(serial, r)| CrlEntry {
                serial: serial.clone(),
                revoked_at: r.revoked_at,
                reason: r.reason,
            })
            .collect();
        entries.sort_by(|a, b| a.serial.cmp(&b.serial));
        entries
    }

    /// Revoked certificates not yet expired at `now`.
    pub fn unexpired(&self, now: SystemTime) -> usize {
        self.read()
            .serials
            .values()
            .filter(|r| r.not_after > now)
            .count()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a revocation asks for, before it is recorded: the record's outcome once the serials
/// already revoked are left out. None when it would change nothing.
pub fn pending(
    revocations: &Revocations,
    mut wanted: RevocationRecord,
) -> Option<RevocationRecord> {
    wanted
        .certificates
        .retain(|certificate| revocations.revoked(&certificate.serial).is_none());
    {
        let state = revocations.read();
        // A block already in force until lifted, or until the same time, is not asked again.
        wanted.blocked.retain(|identity| {
            state
                .blocks
                .get(identity)
                .is_none_or(|block| block.until.is_some() && block.until != wanted.blocked_until)
        });
        wanted
            .unblocked
            .retain(|identity| state.blocks.contains_key(identity));
    }
    let nothing =
        wanted.certificates.is_empty() && wanted.blocked.is_empty() && wanted.unblocked.is_empty();
    (!nothing).then_some(wanted)
}

/// What of another member's revocation `record` this replica lacks, as a revocation to record
/// here (None: nothing). Blocks and lifts apply in time order: an older block does not undo a
/// newer lift here, nor an older lift a newer block.
pub(crate) fn pending_copy(revocations: &Revocations, record: &Record) -> Option<RevocationRecord> {
    let Outcome::Revoked(revoked) = &record.outcome else {
        return None;
    };
    let mut copy = revoked.clone();
    {
        let state = revocations.read();
        copy.blocked.retain(|identity| {
            state
                .lifted
                .get(identity)
                .is_none_or(|lifted| *lifted < record.recorded_at)
        });
        copy.unblocked.retain(|identity| {
            state
                .blocks
                .get(identity)
                .is_some_and(|block| block.since < record.recorded_at)
        });
    }
    pending(revocations, copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::{CallerRecord, RevokedCertificate};
    use std::time::{Duration, UNIX_EPOCH};

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn revocation(sequence: u64, when: u64, revoked: RevocationRecord) -> Record {
        Record {
            sequence,
            ..Record::new(
                "r".into(),
                at(when),
                CallerRecord::default(),
                Outcome::Revoked(revoked),
            )
        }
    }

    fn certificate(serial: u8, signer: u8, not_after: u64) -> RevokedCertificate {
        RevokedCertificate {
            serial: vec![serial],
            intermediate_sha256: vec![signer],
            not_after: at(not_after),
            spiffe_id: "spiffe://td/ns/shop/sa/cart".into(),
            mesh: "a".into(),
            member: String::new(),
        }
    }

    #[test]
    fn crl_entries_are_per_signer_and_leave_when_the_certificate_expires() {
        let revocations = Revocations::from_records(&[revocation(
            5,
            1_000,
            RevocationRecord {
                reason: "key-compromise".into(),
                certificates: vec![
                    certificate(2, 1, 5_000),
                    certificate(1, 1, 9_000),
                    certificate(3, 2, 9_000),
                ],
                ..RevocationRecord::default()
            },
        )]);
        let entries = revocations.crl_entries(&[1], at(2_000));
        assert_eq!(
            entries.iter().map(|e| e.serial.clone()).collect::<Vec<_>>(),
            vec![vec![1], vec![2]]
        );
        assert_eq!(entries[0].reason, Reason::KeyCompromise);
        assert_eq!(entries[0].revoked_at, at(1_000));
        assert_eq!(revocations.crl_entries(&[1], at(6_000)).len(), 1);
        assert_eq!(revocations.unexpired(at(6_000)), 2);
        assert_eq!(revocations.revoked(&[3]).map(|r| r.sequence), Some(5));
    }

    #[test]
    fn a_block_holds_until_lifted_or_its_time_passes() {
        let id = "spiffe://td/ns/shop/sa/cart";
        let revocations = Revocations::default();
        let before = revocations.generation();
        revocations.apply(&revocation(
            1,
            100,
            RevocationRecord {
                blocked: vec![id.into()],
                blocked_until: Some(at(500)),
                ..RevocationRecord::default()
            },
        ));
        assert!(revocations.generation() > before);
        assert!(revocations.blocked(id, at(200)).is_some());
        assert!(revocations.blocked(id, at(500)).is_none());
        assert!(revocations
            .blocked("spiffe://td/ns/shop/sa/other", at(200))
            .is_none());
        revocations.apply(&revocation(
            2,
            300,
            RevocationRecord {
                blocked: vec![id.into()],
                ..RevocationRecord::default()
            },
        ));
        assert!(revocations.blocked(id, at(10_000)).is_some());
        revocations.apply(&revocation(
            3,
            400,
            RevocationRecord {
                unblocked: vec![id.into()],
                ..RevocationRecord::default()
            },
        ));
        assert!(revocations.blocked(id, at(450)).is_none());
    }

    #[test]
    fn copies_from_another_member_apply_in_time_order() {
        let id = "spiffe://td/ns/shop/sa/cart";
        let block_at = |sequence, when| {
            revocation(
                sequence,
                when,
                RevocationRecord {
                    certificates: vec![certificate(sequence as u8, 1, 9_000)],
                    blocked: vec![id.into()],
                    ..RevocationRecord::default()
                },
            )
        };
        let lift_at = |sequence, when| {
            revocation(
                sequence,
                when,
                RevocationRecord {
                    unblocked: vec![id.into()],
                    ..RevocationRecord::default()
                },
            )
        };
        // Here: blocked at 100, lifted at 300.
        let here = Revocations::from_records(&[block_at(1, 100), lift_at(2, 300)]);
        // Another member's block from 200 (before the lift): its certificate, not the block.
        let copy = pending_copy(&here, &block_at(7, 200)).unwrap();
        assert!(copy.blocked.is_empty());
        assert_eq!(copy.certificates.len(), 1);
        // A block from 400 (after the lift) is taken.
        let copy = pending_copy(&here, &block_at(8, 400)).unwrap();
        assert_eq!(copy.blocked, [id]);
        here.apply(&revocation(9, 400, copy));
        // An older lift does not undo it; a newer one does.
        assert_eq!(pending_copy(&here, &lift_at(3, 350)), None);
        assert!(pending_copy(&here, &lift_at(4, 500)).is_some());
        // What is here already is not copied again.
        assert_eq!(pending_copy(&here, &block_at(1, 100)), None);
    }

    #[test]
    fn a_revocation_of_what_is_already_revoked_changes_nothing() {
        let revocations = Revocations::from_records(&[revocation(
            1,
            100,
            RevocationRecord {
                certificates: vec![certificate(1, 1, 900)],
                ..RevocationRecord::default()
            },
        )]);
        let again = RevocationRecord {
            certificates: vec![certificate(1, 1, 900)],
            ..RevocationRecord::default()
        };
        assert_eq!(pending(&revocations, again), None);
        let more = RevocationRecord {
            certificates: vec![certificate(1, 1, 900), certificate(2, 1, 900)],
            ..RevocationRecord::default()
        };
        let left = pending(&revocations, more).map(|r| r.certificates.len());
        assert_eq!(left, Some(1));
        assert_eq!(Reason::parse("key-compromise"), Some(Reason::KeyCompromise));
        assert_eq!(Reason::parse(""), Some(Reason::Unspecified));
        assert_eq!(Reason::parse("bogus"), None);
    }
}
