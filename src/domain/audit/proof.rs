//! Inclusion proofs of single records, as `meshroot audit prove` writes them and
//! `meshroot audit check-proof` checks them: a record, its Merkle leaf, the RFC 6962 audit path
//! to a tree head, and the signed checkpoint (C2SP `tlog-checkpoint`) of that tree.

use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::checkpoint::{AuditVerifier, CheckpointError};
use super::merkle::{self, Hash};
use super::LeafData;
use crate::domain::digest::{parse_hex, sha256};

/// The `format` of a proof document.
pub(crate) const PROOF_FORMAT: &str = "meshroot-inclusion-proof/v1";

/// An inclusion proof as `meshroot audit prove` writes it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ProofDocument {
    pub format: String,
    pub sequence: u64,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Hex of the 58-byte leaf data.
    pub leaf_data: String,
    /// Base64 of the protobuf record (null once pruned).
    pub record: Option<String>,
    /// Hex hashes, leaf side first (RFC 6962 PATH).
    pub audit_path: Vec<String>,
    /// The signed checkpoint of `tree_size`.
    pub checkpoint: String,
}

/// Why a proof does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("unknown proof format {0:?}")]
    UnknownFormat(String),
    #[error("leaf_data is not hex")]
    LeafNotHex,
    #[error("leaf_data is not a meshroot leaf")]
    LeafMalformed,
    #[error("the leaf belongs to another record")]
    LeafOfAnotherRecord,
    #[error("record is not base64")]
    RecordNotBase64,
    #[error("the record does not hash to the leaf")]
    RecordMismatch,
    #[error("an audit path hash is malformed")]
    PathMalformed,
    #[error("{0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the proof is for a tree of {proof} records, the checkpoint covers {checkpoint}")]
    TreeSizeMismatch { proof: u64, checkpoint: u64 },
    #[error("{0}")]
    Inclusion(#[from] merkle::ProofError),
}

/// What a proof that holds proves: this record is in this signed tree.
#[derive(Debug, Clone)]
pub(crate) struct ProvenInclusion {
    pub sequence: u64,
    pub issued: bool,
    pub recorded_at: SystemTime,
    /// The record's bytes (protobuf), checked against the leaf; None once pruned.
    pub record: Option<Vec<u8>>,
    /// The checkpoint's log name, tree size and root.
    pub origin: String,
    pub tree_size: u64,
    pub root: Hash,
}

/// Checks a proof document: the record hashes to its leaf, and the leaf is in the tree of a
/// signed checkpoint: the one in the document, or `published` (a copy the auditor trusts, of
/// the same tree size).
pub(crate) fn check_inclusion(
    document: &ProofDocument,
    verifier: &AuditVerifier,
    published: Option<&str>,
) -> Result<ProvenInclusion, ProofError> {
    if document.format != PROOF_FORMAT {
        return Err(ProofError::UnknownFormat(document.format.clone()));
    }
    let leaf_bytes = parse_hex(&document.leaf_data).ok_or(ProofError::LeafNotHex)?;
    let leaf = LeafData::parse(&leaf_bytes).ok_or(ProofError::LeafMalformed)?;
    if leaf.sequence != document.sequence || document.leaf_index + 1 != document.sequence {
        return Err(ProofError::LeafOfAnotherRecord);
    }
    let record = match &document.record {
        None => None,
        Some(encoded) => {
            let bytes = BASE64
                .decode(encoded)
                .map_err(|_| ProofError::RecordNotBase64)?;
            if sha256(&bytes) != leaf.record_sha256 {
                return Err(ProofError::RecordMismatch);
            }
            Some(bytes)
        }
    };
    let path: Vec<Hash> = document
        .audit_path
        .iter()
        .map(|h| {
            parse_hex(h)
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .ok_or(ProofError::PathMalformed)
        })
        .collect::<Result<_, _>>()?;
    let checkpoint = verifier.open_checkpoint(published.unwrap_or(&document.checkpoint))?;
    if checkpoint.size != document.tree_size {
        return Err(ProofError::TreeSizeMismatch {
            proof: document.tree_size,
            checkpoint: checkpoint.size,
        });
    }
    merkle::verify_inclusion(
        &leaf.leaf_hash(),
        document.leaf_index,
        document.tree_size,
        &path,
        &checkpoint.root,
    )?;
    Ok(ProvenInclusion {
        sequence: document.sequence,
        issued: leaf.issued,
        recorded_at: crate::domain::clock::from_unix_millis(leaf.recorded_at_ms),
        record,
        origin: checkpoint.origin,
        tree_size: checkpoint.size,
        root: checkpoint.root,
    })
}
