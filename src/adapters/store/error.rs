//! What goes wrong in the store, and in the audit queries it serves.

use std::sync::Arc;

use crate::domain::audit::QueryError;
use crate::domain::record::RecordError;

/// Why a record could not be stored or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the record store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("writing the record failed: {0}")]
    Write(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("making the record durable failed: {0}")]
    Flush(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("reading records failed: {0}")]
    Read(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("record {key} is corrupt or of an unknown format")]
    Corrupt { key: String },
    #[error("the record store is shut down")]
    Closed,
    #[error("the record store is open read-only")]
    ReadOnly,
    #[error("the prefix matches more than {values} distinct values; narrow it")]
    TooBroad { values: usize },
    #[error("the record store at {path} is in use by another process")]
    Locked { path: String },
    /// The audit key did not sign (it is in a token that is gone): no checkpoint was stored.
    #[error("signing the checkpoint failed: {0}")]
    Checkpoint(crate::domain::audit::checkpoint::CheckpointError),
    #[error("the record store at {path} has an unknown layout (version {version})")]
    UnknownLayout { path: String, version: String },
}

impl From<StoreError> for RecordError {
    fn from(error: StoreError) -> Self {
        RecordError::new(error)
    }
}

/// Why an audit request failed: the request was wrong, or the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
}

pub(super) fn read_error(error: sled::Error) -> StoreError {
    StoreError::Read(Arc::new(error))
}

pub(super) fn write_error(error: sled::Error) -> StoreError {
    StoreError::Write(Arc::new(error))
}

pub(super) fn corrupt(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
    }
}
