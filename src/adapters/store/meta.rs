//! What the store keeps in its `meta` tree besides the log's own state: each export sink's
//! cursor, the signing certificates of each mesh with the chain above them (so a root rotation
//! can tell what their certificates chain to long after they were rotated out), and the latest
//! CRL each signer signed.

use std::time::{Duration, SystemTime};

use super::error::{corrupt, read_error, write_error, StoreError};
use super::state::SledStore;

/// `signer/<mesh>/<SHA-256 of a signing certificate>` → that certificate and the intermediates above it
/// (DER, each with a u32 length): which roots the certificates it signed chain to, long after
/// it was rotated out.
const META_SIGNER_PREFIX: &[u8] = b"signer/";
/// `crl/<SHA-256 of a signing certificate>` → the latest CRL it signed (DER).
const META_CRL_PREFIX: &[u8] = b"crl/";
/// `export/<sink>` → the sink's cursor: the next sequence to ship and the size of the last
/// checkpoint shipped (two u64, big-endian).
const META_EXPORT_PREFIX: &[u8] = b"export/";

/// A kept CRL: the SHA-256 of the certificate that signed it, and its DER.
pub type SavedCrl = (Vec<u8>, Vec<u8>);

/// Where an export sink stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportCursor {
    /// The next sequence number to ship.
    pub next_sequence: u64,
    /// The tree size of the last checkpoint shipped (0: none).
    pub checkpoint_size: u64,
}

impl Default for ExportCursor {
    fn default() -> Self {
        Self {
            next_sequence: 1,
            checkpoint_size: 0,
        }
    }
}

impl SledStore {
    /// The cursor of export sink `sink` (the start of the log if it never shipped anything).
    pub fn export_cursor(&self, sink: &str) -> Result<ExportCursor, StoreError> {
        let key = [META_EXPORT_PREFIX, sink.as_bytes()].concat();
        let Some(value) = self.inner.meta.get(&key).map_err(read_error)? else {
            return Ok(ExportCursor::default());
        };
        match (value.get(..8), value.get(8..16)) {
            (Some(next), Some(checkpoint)) => Ok(ExportCursor {
                next_sequence: u64::from_be_bytes(next.try_into().unwrap_or_default()),
                checkpoint_size: u64::from_be_bytes(checkpoint.try_into().unwrap_or_default()),
            }),
            _ => Err(corrupt(&key)),
        }
    }

    /// How far export sink `sink` is behind the durable log: the records not shipped yet, and
    /// how long ago the oldest of them was recorded (zero when caught up).
    pub(crate) fn export_lag(
        &self,
        sink: &str,
        now: SystemTime,
    ) -> Result<(u64, Duration), StoreError> {
        let cursor = self.export_cursor(sink)?;
        let behind = (self.durable_sequence() + 1).saturating_sub(cursor.next_sequence);
        if behind == 0 {
            return Ok((0, Duration::ZERO));
        }
        let age = self
            .get(cursor.next_sequence)?
            .and_then(|record| now.duration_since(record.recorded_at).ok())
            .unwrap_or_default();
        Ok((behind, age))
    }

    /// Persists the cursor of export sink `sink` durably (after what it covers was shipped).
    pub(crate) fn set_export_cursor(
        &self,
        sink: &str,
        cursor: ExportCursor,
    ) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Err(StoreError::ReadOnly);
        }
        let key = [META_EXPORT_PREFIX, sink.as_bytes()].concat();
        let value = [
            cursor.next_sequence.to_be_bytes(),
            cursor.checkpoint_size.to_be_bytes(),
        ]
        .concat();
        self.inner.meta.insert(key, value).map_err(write_error)?;
        self.flush()
    }

    /// Remembers `mesh`'s signing certificate and the intermediates above it (`chain[0]`
    /// signs), so that a later root rotation can tell which root the certificates it signed
    /// chain to, even after it was rotated out.
    pub(crate) fn remember_signer(&self, mesh: &str, chain: &[Vec<u8>]) -> Result<(), StoreError> {
        let Some(signing) = chain.first() else {
            return Ok(());
        };
        if self.inner.read_only {
            return Ok(());
        }
        let key = signer_key(mesh, &crate::domain::digest::sha256(signing));
        let mut value = Vec::new();
        for der in chain {
            value.extend_from_slice(&u32::try_from(der.len()).unwrap_or(u32::MAX).to_be_bytes());
            value.extend_from_slice(der);
        }
        if self.inner.meta.get(&key).map_err(read_error)?.as_deref() == Some(value.as_slice()) {
            return Ok(());
        }
        self.inner.meta.insert(key, value).map_err(write_error)?;
        self.flush()
    }

    /// Keeps the latest CRL meshroot signed for a signing certificate (by its SHA-256), so the
    /// last CRL of an intermediate that was rotated out is still published after a restart,
    /// until its nextUpdate.
    pub(crate) fn save_crl(&self, signer_sha256: &[u8], der: &[u8]) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Ok(());
        }
        let key = [META_CRL_PREFIX, signer_sha256].concat();
        self.inner.meta.insert(key, der).map_err(write_error)?;
        Ok(())
    }

    /// Every kept CRL: (signer SHA-256, DER).
    pub(crate) fn saved_crls(&self) -> Result<Vec<SavedCrl>, StoreError> {
        self.inner
            .meta
            .scan_prefix(META_CRL_PREFIX)
            .map(|entry| {
                let (key, value) = entry.map_err(read_error)?;
                Ok((key[META_CRL_PREFIX.len()..].to_vec(), value.to_vec()))
            })
            .collect()
    }

    /// Forgets the kept CRL of a signer (its nextUpdate passed).
    pub(crate) fn forget_crl(&self, signer_sha256: &[u8]) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Ok(());
        }
        let key = [META_CRL_PREFIX, signer_sha256].concat();
        self.inner.meta.remove(key).map_err(write_error)?;
        Ok(())
    }

    /// Forgets a signer none of whose certificates is still valid.
    pub(crate) fn forget_signer(&self, mesh: &str, sha256: &[u8]) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Ok(());
        }
        self.inner
            .meta
            .remove(signer_key(mesh, sha256))
            .map_err(write_error)?;
        self.flush()
    }

    /// `mesh`'s remembered signing certificates: SHA-256 → chain (signing certificate first).
    pub fn signers(
        &self,
        mesh: &str,
    ) -> Result<std::collections::HashMap<Vec<u8>, Vec<Vec<u8>>>, StoreError> {
        let prefix = signer_key(mesh, &[]);
        let mut signers = std::collections::HashMap::new();
        for entry in self.inner.meta.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(read_error)?;
            let mut chain = Vec::new();
            let mut rest: &[u8] = &value;
            while rest.len() >= 4 {
                let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(der) = rest.get(4..4 + length) else {
                    break;
                };
                chain.push(der.to_vec());
                rest = &rest[4 + length..];
            }
            signers.insert(key[prefix.len()..].to_vec(), chain);
        }
        Ok(signers)
    }
}

fn signer_key(mesh: &str, sha256: &[u8]) -> Vec<u8> {
    let mut key = META_SIGNER_PREFIX.to_vec();
    key.extend_from_slice(mesh.as_bytes());
    key.push(b'/');
    key.extend_from_slice(sha256);
    key
}
