//! What the store answers besides records: log entries for auditors, inclusion proofs and
//! statistics.

use std::time::SystemTime;

use crate::domain::audit::merkle::Hash;
use crate::domain::audit::LeafData;
use crate::domain::record::Record;

use super::error::StoreError;
use super::keys::{decode_stored, leaf_of_stored};

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
