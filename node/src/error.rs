//! Errors of the engine: [`RaftError`] (defined with the wire protocol in
//! `raftkit-proto`), the status every `done` and every request gets, and
//! [`StorageError`], what storage backends report.

use std::io;
use std::path::PathBuf;

pub use raftkit_proto::error::{PeerId, RaftError};

impl From<StorageError> for RaftError {
    fn from(e: StorageError) -> Self {
        RaftError::Storage(e.to_string())
    }
}

/// What a storage backend reports.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Data that was acknowledged as durable is damaged. Never skipped silently.
    #[error("corruption in {path} at byte {offset}: {reason}")]
    Corruption {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The storage URI or its options are wrong.
    #[error("invalid storage uri {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    /// The caller asked for something the storage cannot do (for example an
    /// append that would leave a gap).
    #[error("invalid storage operation: {0}")]
    Invalid(String),
    /// The requested entries were removed by log compaction.
    #[error("log entry {0} was compacted")]
    Compacted(u64),
    /// The requested entries are beyond the end of the log.
    #[error("log entry {index} is beyond the last index {last}")]
    Unavailable { index: u64, last: u64 },
}

impl StorageError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Lets `?` attach context to I/O results: `file.sync_all().ctx("fsync log")?`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::io(context(), e))
    }
}
