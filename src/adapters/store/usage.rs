//! What the store and its volume measure, for the capacity forecast (`domain::capacity`).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::domain::capacity::StoreUsage;
use crate::domain::clock::unix_millis;

use super::blocks;
use super::error::{read_error, StoreError};
use super::keys::leaf_of_stored;
use super::query::directory_size;
use super::state::SledStore;

const DAY: Duration = Duration::from_secs(86_400);

impl SledStore {
    /// The store's bytes and records, the records appended in the last day (or since the
    /// oldest record kept, if younger), and the volume's size and free space, as of `now`.
    pub fn usage(&self, now: SystemTime) -> Result<StoreUsage, StoreError> {
        let inner = &self.inner;
        let last = inner.written.load(Ordering::SeqCst);
        let oldest_ms = blocks::range(&inner.records, 1, last)
            .next()
            .transpose()?
            .and_then(|(_, stored)| leaf_of_stored(&stored))
            .map(|leaf| leaf.recorded_at_ms);
        let oldest_age = oldest_ms
            .map(|ms| Duration::from_millis(unix_millis(now).saturating_sub(ms).max(0) as u64))
            .unwrap_or_default();
        let observed = oldest_age.min(DAY);
        let since = unix_millis(now.checked_sub(observed).unwrap_or(now));
        let first_recent = inner.first_sequence_at_or_after(since, last)?;
        let io = |error: std::io::Error| read_error(sled::Error::Io(error));
        Ok(StoreUsage {
            store_bytes: directory_size(&inner.path),
            records: self.len(),
            recent_records: (last + 1).saturating_sub(first_recent),
            observed,
            oldest_age,
            volume_bytes: fs2::total_space(&inner.path).map_err(io)?,
            volume_free_bytes: fs2::available_space(&inner.path).map_err(io)?,
        })
    }
}
