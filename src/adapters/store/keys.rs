//! The keys of the store's trees and the stored form of a record: the leaf header, then the
//! record's protobuf.

use crate::domain::audit::{LeafData, LEAF_HEADER_LEN};
use crate::domain::record::Record;

use super::codec::RunId;
use super::encoding::decode;
use super::error::{corrupt, StoreError};

pub(super) const RECORD_PREFIX: u8 = b'r';
pub(super) const BLOCK_PREFIX: u8 = b'b';
pub(super) const META_LAYOUT: &[u8] = b"layout";
pub(super) const META_WATERMARK: &[u8] = b"index-watermark";
pub(super) const META_RUN_PREFIX: &[u8] = b"run/";
pub(super) const META_PRUNED_PREFIX: &[u8] = b"pruned-bits/";

pub(super) fn checkpoint_entry(key: &[u8], value: &[u8]) -> Result<(u64, String), StoreError> {
    let size = key
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(key))?;
    let note = String::from_utf8(value.to_vec()).map_err(|_| corrupt(key))?;
    Ok((size, note))
}

pub(super) fn run_key(id: RunId) -> Vec<u8> {
    let mut key = META_RUN_PREFIX.to_vec();
    key.extend_from_slice(&id.prefix());
    key
}

pub(super) fn record_key(sequence: u64) -> [u8; 9] {
    let mut key = [RECORD_PREFIX; 9];
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// The leaf of a stored record: its header and the SHA-256 of its protobuf part.
pub(super) fn leaf_of_stored(stored: &[u8]) -> Option<LeafData> {
    let header = LeafData::parse_header(stored)?;
    Some(LeafData {
        record_sha256: crate::domain::digest::sha256(&stored[LEAF_HEADER_LEN..]),
        ..header
    })
}

pub(super) fn decode_stored(sequence: u64, stored: &[u8]) -> Result<Record, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: format!("record {sequence}"),
    };
    if stored.len() < LEAF_HEADER_LEN {
        return Err(corrupt());
    }
    decode(&stored[LEAF_HEADER_LEN..]).ok_or_else(corrupt)
}
