//! What the rotation gate asks of one replica's store: which roots its unexpired certificates
//! chain to, and which trust bundle it last accepted.

use std::time::SystemTime;

use crate::domain::audit::rotation::{self, BundleUse};
use crate::domain::audit::{OutcomeFilter, Query};

use super::error::{read_error, write_error, AuditError, StoreError};
use super::state::SledStore;

/// `accepted-root/<mesh>/<SHA-256>` → a root (DER) of the last trust bundle this replica
/// accepted for the mesh: a later bundle without it drops a root.
const META_ACCEPTED_ROOT_PREFIX: &[u8] = b"accepted-root/";

fn accepted_prefix(mesh: &str) -> Vec<u8> {
    [META_ACCEPTED_ROOT_PREFIX, mesh.as_bytes(), b"/"].concat()
}

impl SledStore {
    /// How the unexpired certificates of `mesh` in this log chain to the roots of `bundle`.
    pub(crate) fn bundle_use(
        &self,
        mesh: &str,
        bundle: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<BundleUse, AuditError> {
        let signers = self.signers(mesh)?;
        let query = Query {
            mesh: Some(mesh.to_owned()),
            expires_after: Some(now),
            outcome: Some(OutcomeFilter::Issued),
            ..Query::default()
        };
        let mut usage = BundleUse {
            per_root: vec![Default::default(); bundle.len()],
            ..BundleUse::default()
        };
        let mut token: Option<String> = None;
        loop {
            let page = self.query(&query, 4096, token.as_deref())?;
            usage.merge(&rotation::bundle_use(&page.records, &signers, bundle, now));
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => return Ok(usage),
            }
        }
    }

    /// The roots of the last trust bundle accepted for `mesh` (empty: none recorded).
    pub(crate) fn accepted_roots(&self, mesh: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner
            .meta
            .scan_prefix(accepted_prefix(mesh))
            .map(|entry| entry.map(|(_, der)| der.to_vec()).map_err(read_error))
            .collect()
    }

    /// Records `bundle` as the last accepted for `mesh` (no-op when read-only or unchanged).
    pub(crate) fn set_accepted_roots(
        &self,
        mesh: &str,
        bundle: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Ok(());
        }
        let mut current = self.accepted_roots(mesh)?;
        let mut wanted = bundle.to_vec();
        current.sort();
        wanted.sort();
        wanted.dedup();
        if current == wanted {
            return Ok(());
        }
        let prefix = accepted_prefix(mesh);
        let mut batch = sled::Batch::default();
        for entry in self.inner.meta.scan_prefix(&prefix) {
            let (key, _) = entry.map_err(read_error)?;
            batch.remove(key);
        }
        for root in &wanted {
            batch.insert(
                [prefix.as_slice(), &crate::domain::digest::sha256(root)].concat(),
                root.as_slice(),
            );
        }
        self.inner.meta.apply_batch(batch).map_err(write_error)?;
        self.flush()
    }
}

/// `member-checkpoint/<member>\0<log>` → the newest signed checkpoint (note) another member
/// handed over for its log: what that member's log had committed to, kept off its volume.
const META_MEMBER_CHECKPOINT_PREFIX: &[u8] = b"member-checkpoint/";

impl SledStore {
    /// How many logs of member `member` have a kept checkpoint here, and whether `log` is
    /// one of them.
    pub(crate) fn member_logs(&self, member: &str, log: &str) -> Result<(usize, bool), StoreError> {
        let prefix = [META_MEMBER_CHECKPOINT_PREFIX, member.as_bytes(), b"\0"].concat();
        let (mut count, mut known) = (0, false);
        for entry in self.inner.meta.scan_prefix(&prefix) {
            let (key, _) = entry.map_err(read_error)?;
            count += 1;
            known |= key.get(prefix.len()..) == Some(log.as_bytes());
        }
        Ok((count, known))
    }

    /// Keeps `note` as member `member`'s checkpoint of log `log` if it is newer (a larger tree)
    /// than the one kept; returns the newest kept (this one or the older-but-larger one).
    pub(crate) fn keep_member_checkpoint(
        &self,
        member: &str,
        log: &str,
        note: Option<(u64, String)>,
    ) -> Result<Option<(u64, String)>, StoreError> {
        let key = [
            META_MEMBER_CHECKPOINT_PREFIX,
            member.as_bytes(),
            b"\0",
            log.as_bytes(),
        ]
        .concat();
        let kept = self
            .inner
            .meta
            .get(&key)
            .map_err(read_error)?
            .and_then(|value| {
                let size = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
                let note = String::from_utf8(value.get(8..)?.to_vec()).ok()?;
                Some((size, note))
            });
        match (kept, note) {
            (Some(kept), Some(new)) if kept.0 >= new.0 => Ok(Some(kept)),
            (_, Some((size, note))) if !self.inner.read_only => {
                let value = [size.to_be_bytes().as_slice(), note.as_bytes()].concat();
                self.inner.meta.insert(key, value).map_err(write_error)?;
                self.flush()?;
                Ok(Some((size, note)))
            }
            (kept, _) => Ok(kept),
        }
    }
}

/// Whether `bundle` lacks a root of `accepted` (or nothing was accepted before: unknown).
pub fn drops_a_root(accepted: &[Vec<u8>], bundle: &[Vec<u8>]) -> bool {
    accepted.is_empty() || accepted.iter().any(|root| !bundle.contains(root))
}
