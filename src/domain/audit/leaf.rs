//! The Merkle leaf that commits to one record.

use super::merkle::{self, Hash};
use crate::domain::clock::{unix_millis, unix_seconds};
use crate::domain::record::{Outcome, Record};

/// The leaf of the audit log's Merkle tree for one record: a fixed header (which stays
/// readable after the record is pruned, so verification can still tell an issuance from a
/// denial and when it expired) and the SHA-256 of the record's encoding.
///
/// ```text
/// leaf data = version (1) ‖ sequence (u64) ‖ recorded at ms (i64) ‖ kind (1: issued, 2: denied)
///             ‖ NotAfter s (i64, 0 for denials) ‖ SHA-256(record protobuf)     (big-endian)
/// leaf hash = SHA-256(0x00 ‖ leaf data)                                        (RFC 6962)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafData {
    pub sequence: u64,
    pub recorded_at_ms: i64,
    pub issued: bool,
    pub not_after: i64,
    pub record_sha256: Hash,
}

/// The leaf format version.
pub const LEAF_VERSION: u8 = 1;
/// Bytes of the leaf header (everything but the record hash).
pub const LEAF_HEADER_LEN: usize = 26;
/// Bytes of the leaf data.
pub const LEAF_DATA_LEN: usize = LEAF_HEADER_LEN + 32;

impl LeafData {
    /// The leaf of `record`, whose protobuf encoding is `encoded`.
    pub fn of(record: &Record, encoded: &[u8]) -> Self {
        let (issued, not_after) = match &record.outcome {
            Outcome::Issued(issued) => (true, unix_seconds(issued.not_after)),
            // A revocation is not an issuance: its leaf reads like a denial's.
            Outcome::Denied(_)
            | Outcome::Revoked(_)
            | Outcome::Federated(_)
            | Outcome::CaKey(_) => (false, 0),
        };
        Self {
            sequence: record.sequence,
            recorded_at_ms: unix_millis(record.recorded_at),
            issued,
            not_after,
            record_sha256: crate::domain::digest::sha256(encoded),
        }
    }

    pub fn header(&self) -> [u8; LEAF_HEADER_LEN] {
        let mut out = [0u8; LEAF_HEADER_LEN];
        out[0] = LEAF_VERSION;
        out[1..9].copy_from_slice(&self.sequence.to_be_bytes());
        out[9..17].copy_from_slice(&self.recorded_at_ms.to_be_bytes());
        out[17] = if self.issued { 1 } else { 2 };
        out[18..26].copy_from_slice(&self.not_after.to_be_bytes());
        out
    }

    pub fn to_bytes(&self) -> [u8; LEAF_DATA_LEN] {
        let mut out = [0u8; LEAF_DATA_LEN];
        out[..LEAF_HEADER_LEN].copy_from_slice(&self.header());
        out[LEAF_HEADER_LEN..].copy_from_slice(&self.record_sha256);
        out
    }

    /// Parses a header followed by the record hash.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != LEAF_DATA_LEN {
            return None;
        }
        let header = Self::parse_header(&bytes[..LEAF_HEADER_LEN])?;
        Some(Self {
            record_sha256: bytes[LEAF_HEADER_LEN..].try_into().ok()?,
            ..header
        })
    }

    /// Parses a header; the record hash is left zero.
    pub(crate) fn parse_header(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < LEAF_HEADER_LEN || bytes[0] != LEAF_VERSION {
            return None;
        }
        let issued = match bytes[17] {
            1 => true,
            2 => false,
            _ => return None,
        };
        Some(Self {
            sequence: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
            recorded_at_ms: i64::from_be_bytes(bytes[9..17].try_into().ok()?),
            issued,
            not_after: i64::from_be_bytes(bytes[18..26].try_into().ok()?),
            record_sha256: [0; 32],
        })
    }

    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&self.to_bytes())
    }
}
