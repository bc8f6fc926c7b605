//! Secondary indexes over the records: every audit query is a key lookup or key range here.
//!
//! sled costs ~6–10 µs and ~100 bytes of disk per key on this hardware, so one key per index
//! entry (13 per record) would cap ingest near 7k records/s and take tens of GB for 10 million
//! records. Instead entries are kept in memory for the newest records (the *tail*, rebuilt from
//! the records at start) and written in bulk, once per segment of records, as sorted *runs* of
//! compact pages (see [`super::codec`]); runs are merged in the background (tiered, fan-in
//! [`COMPACTION_FANIN`]) so a lookup touches few of them. Queries read the runs and the tail and
//! combine filters by intersecting sequence-ordered streams (leapfrog join), each of which seeks
//! by sequence number, so a selective filter never reads the entries of a broad one.

mod cursor;
mod plan;
mod runs;
mod state;

pub use self::cursor::*;
pub use self::plan::*;
pub(crate) use self::runs::*;
pub use self::state::*;
